"""
The HTTP API, resource by resource, over in-memory requests on a fake
clock: routing, keys and scopes, rate limits, bad bodies, and each
operation through the application layer, every answer checked against
docs/openapi.yaml.
"""

from io import BytesIO

import attrs
import orjson
import pytest
from twisted.internet.defer import fail, succeed
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from rustorium.broker.interface import BrokerUnavailable
from rustorium.httpapi import ROUTES, HttpApi, load_document
from rustorium.prices import ExternalMarketService
from rustorium.storage.keys import ApiKey
from rustorium.web import LimitedRequest
from tests.helpers import ALICE, BOB, KEY, MTK, make_server, open_session, send
from tests.openapi import DOCUMENT, document, validate

ADMIN_KEY = "rk_admin"
PUBLISH_KEY = "rk_publish"
CLIENT_KEY = "rk_client"


class Request(DummyRequest):
    """
    An in-memory request to C{/api/v1/...}.
    """

    def __init__(self, method: str, path: str, body: bytes = b"", key: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        path, _, query = path.partition("?")
        super().__init__([segment.encode() for segment in path.lstrip("/").split("/")])
        self.method = method.encode()
        self.path = b"/api/v1" + path.encode()
        self.content = BytesIO(body)
        self.channel = DummyChannel()
        self.closed_connection = False
        for pair in filter(None, query.split("&")):
            name, _, value = pair.partition("=")
            self.addArg(name.encode(), value.encode())
        self.requestHeaders = Headers()
        if key is not None:
            self.requestHeaders.addRawHeader(b"authorization", f"Bearer {key}".encode())
        for name, value in (headers or {}).items():
            self.requestHeaders.addRawHeader(name.encode(), value.encode())

    def loseConnection(self) -> None:
        self.closed_connection = True


@attrs.frozen
class Answer:
    status: int
    body: object
    headers: dict[str, str]


class Api:
    """
    The HTTP API of an in-memory server (external prices), with an admin,
    a publish and a client key.
    """

    def __init__(self, clock, **settings) -> None:
        settings.setdefault("market_source", "external")
        self.clock = clock
        self.server = make_server(clock, **settings)
        self.app = self.server.app
        keys = self.server.keys.keys
        keys[ADMIN_KEY] = ApiKey(10, "ops", frozenset(), "t", None, frozenset({"admin"}))
        keys[PUBLISH_KEY] = ApiKey(11, "feed", frozenset(), "t", None, frozenset({"publish"}))
        keys[CLIENT_KEY] = attrs.evolve(KEY, scopes=frozenset({"client"}))
        self.market = ExternalMarketService(
            self.app.catalog, self.app.publish, clock, 1.0, lambda token: 0,
            self.app.broker.latest_prices,
        )
        self.app.on_prices = self.market.prices_received
        self.app.describe_node = lambda: {
            "name": "test-node", "address": "ws://127.0.0.1:8765/v1", "version": "0.1.0",
            "started": "2026-01-01T00:00:00.000000Z", "connections": len(self.server.sessions),
        }
        self.market.startService()
        self.resource = HttpApi(self.server)

    def call(self, method: str, path: str, body: object = None, key: str | None = ADMIN_KEY,
             raw: bytes | None = None, check: bool = True, **headers: str) -> Answer:
        payload = raw if raw is not None else (b"" if body is None else orjson.dumps(body))
        request = Request(method, path, payload, key, headers)
        assert self.resource.render(request) is NOT_DONE_YET
        self.clock.advance(0)
        assert request.finished == 1, f"{method} {path} was not answered"
        answer = Answer(
            request.responseCode or 200,
            orjson.loads(b"".join(request.written)),
            {k.decode().lower(): v[0].decode()
             for k, v in request.responseHeaders.getAllRawHeaders()},
        )
        assert answer.headers["content-type"] == "application/json"
        if check and answer.status != 405 and not path.startswith("/nowhere"):
            validate(method, path.partition("?")[0], answer.status, answer.body, answer.headers)
        return answer


@pytest.fixture
def api(clock):
    return Api(clock)


def error(answer: Answer) -> tuple[int, str]:
    return answer.status, answer.body["error"]["code"]


class TestDocument:
    def test_shipped_with_the_package(self):
        """
        The package's copy is docs/openapi.yaml, and it is served as JSON.
        """
        assert load_document() == document()

    def test_served(self, api):
        answer = api.call("GET", "/openapi.json", key=None)
        assert answer.status == 200
        assert answer.body == document()

    def test_every_route_is_documented_and_every_operation_served(self):
        routes = {(r.method.lower(), "/" + r.path.replace("{name*}", "{name}")) for r in ROUTES}
        documented = {(method, path) for path, item in document()["paths"].items()
                      for method in item}
        assert routes == documented

    def test_is_openapi_3_1(self):
        assert document()["openapi"] == "3.1.0"
        assert DOCUMENT.name == "openapi.yaml"


class TestRefusals:
    def test_unknown_path(self, api):
        answer = api.call("GET", "/nowhere")
        assert error(answer) == (404, "not_found")

    def test_wrong_method(self, api):
        answer = api.call("PUT", "/keys")
        assert error(answer) == (405, "method_not_allowed")
        assert answer.headers["allow"] == "GET, POST"

    def test_no_key(self, api):
        answer = api.call("GET", "/info", key=None)
        assert error(answer) == (401, "unauthorized")
        assert answer.headers["www-authenticate"].startswith("Bearer")

    @pytest.mark.parametrize("header", ["Basic cms6eA==", "Bearer", "bearer  "])
    def test_malformed_authorization(self, api, header):
        assert error(api.call("GET", "/info", key=None, authorization=header)) == (
            401, "unauthorized")

    def test_unknown_key(self, api):
        assert error(api.call("GET", "/info", key="rk_nobody")) == (401, "unauthorized")

    def test_revoked_key(self, api):
        api.server.keys.revoked.add(10)
        assert error(api.call("GET", "/info")) == (401, "unauthorized")

    @pytest.mark.parametrize(("key", "path", "method"), [
        (CLIENT_KEY, "/info", "GET"),
        (PUBLISH_KEY, "/info", "GET"),
        (PUBLISH_KEY, "/keys", "GET"),
        (CLIENT_KEY, "/prices", "POST"),
    ])
    def test_scope(self, api, key, path, method):
        """
        A client key may use none of the HTTP API; a publish key only
        publish.
        """
        answer = api.call(method, path, {"prices": [{"symbol": "MTK/USD", "price": "1",
                                                      "seq": 1}]}, key=key)
        assert error(answer) == (403, "forbidden")

    def test_admin_may_publish(self, api):
        answer = api.call("POST", "/prices",
                          {"prices": [{"symbol": "MTK/USD", "price": "1", "seq": 1}]})
        assert answer.body == {"accepted": 1, "stale": 0}

    def test_keys_cannot_be_checked(self, api, logged_errors):
        api.server.keys.authenticate = lambda key: fail(OSError("database gone"))
        assert error(api.call("GET", "/info")) == (503, "unavailable")
        assert len(logged_errors) == 1
        logged_errors.clear()

    def test_starting(self, api):
        api.server.ready = False
        assert error(api.call("GET", "/info")) == (503, "unavailable")
        assert api.call("GET", "/openapi.json", key=None).status == 200

    def test_broker_unreachable(self, api):
        api.server.broker_ready = False
        assert error(api.call("GET", "/keys")) == (503, "unavailable")

    def test_broker_fails_meanwhile(self, api):
        api.app.broker.nodes = lambda: fail(BrokerUnavailable("down"))
        assert error(api.call("GET", "/info")) == (503, "unavailable")

    def test_rate_limit(self, clock):
        """
        Past its bucket a key gets 429 with Retry-After (whole seconds) and
        retry_after; other keys are not affected; it refills with time.
        """
        api = Api(clock, http_rate_limit=2.0, http_rate_burst=3)
        assert [api.call("GET", "/keys").status for _ in range(3)] == [200] * 3
        answer = api.call("GET", "/keys")
        assert error(answer) == (429, "rate_limit_exceeded")
        assert answer.headers["retry-after"] == "1"
        assert answer.body["error"]["retry_after"] == 0.5
        assert api.call("POST", "/prices", {"prices": [{"symbol": "MTK/USD", "price": "1",
                                                         "seq": 1}]},
                        key=PUBLISH_KEY).status == 200
        clock.advance(0.5)
        assert api.call("GET", "/keys").status == 200

    def test_body_too_large(self, api):
        request = Request("POST", "/prices", b"{}", PUBLISH_KEY)
        request.body_too_large = True
        api.resource.render(request)
        assert request.responseCode == 413
        assert orjson.loads(b"".join(request.written))["error"]["code"] == "payload_too_large"
        assert request.closed_connection

    def test_body_too_large_in_a_site_that_buffers(self, clock):
        api = Api(clock, http_max_body=100)
        answer = api.call("POST", "/keys", {"name": "x" * 100})
        assert error(answer) == (413, "payload_too_large")

    @pytest.mark.parametrize("raw", [b"", b"{", b"[1, 2]", b'"prices"', b"\xff\xfe", b"null"])
    def test_body_not_an_object(self, api, raw):
        answer = api.call("POST", "/prices", raw=raw, key=PUBLISH_KEY)
        assert error(answer) == (400, "invalid_request")

    def test_a_failure_is_logged_and_answered_500(self, api, logged_errors):
        def broken():
            raise RuntimeError("bug")

        api.app.cluster_info = broken
        answer = api.call("GET", "/info")
        assert error(answer) == (500, "internal_error")
        assert "bug" not in answer.body["error"]["message"]
        assert len(logged_errors) == 1
        logged_errors.clear()


def test_answers_are_counted_for_metrics(api):
    from prometheus_client import generate_latest

    from rustorium.metrics import make_registry

    api.call("GET", "/info")
    api.call("GET", "/info", key=None)
    api.call("GET", "/nowhere")
    text = generate_latest(make_registry(api.server)).decode()
    assert 'rustorium_http_responses_total{operation="info",status="200"} 1.0' in text
    assert 'rustorium_http_responses_total{operation="info",status="401"} 1.0' in text
    assert 'rustorium_http_responses_total{operation="unknown",status="404"} 1.0' in text


class TestPrices:
    def test_accepted_prices_reach_subscribers(self, api):
        """
        Accepted prices are published at once as market_data and
        token_updates updates; stale ones are counted and move nothing.
        """
        session, connection = open_session(api.server)
        send(session, {"id": "1", "type": "subscribe",
                       "data": {"channel": "market_data", "symbols": ["MTK/USD"]}})
        send(session, {"id": "2", "type": "subscribe",
                       "data": {"channel": "token_updates", "token_id": MTK.token_id}})
        connection.take()
        answer = api.call("POST", "/prices", {"prices": [
            {"symbol": "MTK/USD", "price": "1.25", "seq": 17},
            {"symbol": "MTK/USD", "price": "9", "seq": 16},
        ]}, key=PUBLISH_KEY)
        assert answer.body == {"accepted": 1, "stale": 1}
        updates = [m["data"] for m in connection.take()]
        assert [(u["channel"], u["price"]) for u in updates] == [
            ("market_data", "1.25"), ("token_updates", "1.25")]
        answer = api.call("POST", "/prices", {"prices": [
            {"symbol": "MTK/USD", "price": "2", "seq": 17}]}, key=PUBLISH_KEY)
        assert answer.body == {"accepted": 0, "stale": 1}
        assert connection.take() == []

    def test_bad_batches_name_the_field(self, api):
        answer = api.call("POST", "/prices", {"prices": [
            {"symbol": "MTK/USD", "price": "1", "seq": 1},
            {"symbol": "NOPE/USD", "price": "1", "seq": 1}]}, key=PUBLISH_KEY)
        assert error(answer) == (400, "invalid_params")
        assert answer.body["error"]["field"] == "prices[1].symbol"
        assert api.app.broker.latest_prices().result == {}

    def test_refused_when_simulated(self, clock):
        api = Api(clock, market_source="simulator")
        answer = api.call("POST", "/prices",
                          {"prices": [{"symbol": "MTK/USD", "price": "1", "seq": 1}]},
                          key=PUBLISH_KEY)
        assert error(answer) == (409, "conflict")
        assert "--market-source external" in answer.body["error"]["message"]


class TestConnections:
    def test_list_and_close(self, api):
        """
        Connections are listed with their key and subscriptions (filtered
        by key name); closing one by id closes it with the code given.
        """
        session, connection = open_session(api.server)
        other_key = ApiKey(5, "other", frozenset(), "t")
        _, other = open_session(api.server, other_key)
        send(session, {"id": "1", "type": "subscribe",
                       "data": {"channel": "transaction_updates", "address": ALICE}})
        listed = api.call("GET", "/connections").body
        assert listed["unanswered"] == [] and not listed["truncated"]
        assert [c["key_name"] for c in listed["connections"]] == ["test", "other"]
        mine = listed["connections"][0]
        assert mine["node"] == "test-node" and mine["id"].endswith("@test-node")
        assert mine["subscriptions"][0]["address"] == ALICE
        assert [c["key_name"] for c in
                api.call("GET", "/connections?key=other").body["connections"]] == ["other"]
        assert api.call("GET", "/connections?limit=1").body["truncated"]
        answer = api.call("POST", f"/connections/{mine['id']}/close",
                          {"code": 4000, "reason": "maintenance"})
        assert answer.body == {"id": mine["id"], "node": "test-node", "closed": True,
                               "code": 4000}
        assert connection.closed == (4000, "maintenance")
        assert other.closed is None
        again = api.call("POST", f"/connections/{mine['id']}/close", {"code": 4000})
        assert error(again) == (404, "not_found")

    @pytest.mark.parametrize("connection_id", [
        "cab12cd-1@elsewhere", "nonsense", "c1", "cx@test-node", "c1@test-node",
        "cab12cd-1@test-node",
    ])
    def test_close_unknown(self, api, connection_id):
        answer = api.call("POST", f"/connections/{connection_id}/close", {"code": 4000})
        assert error(answer) == (404, "not_found")

    @pytest.mark.parametrize(("body", "field"), [
        ({}, "code"), ({"code": 1000}, "code"), ({"code": "4000"}, "code"),
        ({"code": True}, "code"), ({"code": 4000, "reason": "x" * 124}, "reason"),
        ({"code": 4000, "reason": 5}, "reason"), ({"code": 4000, "why": "x"}, "why"),
    ])
    def test_close_refused(self, api, body, field):
        answer = api.call("POST", "/connections/c1@test-node/close", body)
        assert error(answer) == (400, "invalid_params")
        assert answer.body["error"]["field"] == field

    @pytest.mark.parametrize("query", ["limit=0", "limit=10001", "limit=x", "limit=-1",
                                       "limit=00000000000000000000001", "key="])
    def test_list_refused(self, api, query):
        assert error(api.call("GET", f"/connections?{query}")) == (400, "invalid_params")


class TestKeys:
    def test_create_list_revoke(self, api):
        """
        A new key is answered once with the key itself; listings never show
        a key; revoking closes its connections with 4001, and revoking again
        is a conflict.
        """
        created = api.call("POST", "/keys", {"name": "bot", "scope": ["client", "admin"],
                                             "addresses": [ALICE.upper().replace("0X", "0x")]})
        assert created.status == 201
        assert created.body["scopes"] == ["client", "admin"]
        assert created.body["addresses"] == [ALICE]
        secret = created.body["key"]
        listed = api.call("GET", "/keys").body["keys"]
        assert [k["name"] for k in listed][-1] == "bot"
        assert secret not in orjson.dumps(listed).decode()
        assert all("key" not in k for k in listed)
        assert api.call("GET", "/info", key=secret).status == 200
        record = api.server.keys.keys[secret]
        _, connection = open_session(api.server, record)
        revoked = api.call("DELETE", f"/keys/{record.key_id}")
        assert revoked.body["connections_closed"] == 1
        assert revoked.body["revoked_at"] is not None
        assert connection.closed == (4001, "API key revoked")
        assert error(api.call("DELETE", f"/keys/{record.key_id}")) == (409, "conflict")
        assert error(api.call("GET", "/info", key=secret)) == (401, "unauthorized")

    def test_defaults_to_a_client_key(self, api):
        created = api.call("POST", "/keys", {}).body
        assert created["scopes"] == ["client"] and created["name"] == "key"
        assert api.call("POST", "/keys", {"scope": "publish"}).body["scopes"] == ["publish"]

    @pytest.mark.parametrize("key_id", ["999", "0", "x", "1.5", "-1"])
    def test_revoke_unknown(self, api, key_id):
        assert error(api.call("DELETE", f"/keys/{key_id}")) == (404, "not_found")

    @pytest.mark.parametrize(("body", "field"), [
        ({"name": ""}, "name"), ({"name": 7}, "name"), ({"name": "x" * 101}, "name"),
        ({"scope": "root"}, "scope"), ({"scope": []}, "scope"), ({"scope": [1]}, "scope"),
        ({"addresses": "0x1"}, "addresses"), ({"addresses": ["alice"]}, "addresses[0]"),
        ({"secret": "x"}, "secret"),
    ])
    def test_create_refused(self, api, body, field):
        answer = api.call("POST", "/keys", body)
        assert error(answer) == (400, "invalid_params")
        assert answer.body["error"]["field"] == field

    def test_keys_are_never_logged(self, api):
        events = []
        globalLogPublisher.addObserver(events.append)
        try:
            secret = api.call("POST", "/keys", {"name": "bot"}).body["key"]
            api.call("GET", "/keys")
            api.call("GET", "/info", key=secret)
            api.call("GET", "/info", key="rk_wrong_key_guessed")
        finally:
            globalLogPublisher.removeObserver(events.append)
        text = "\n".join(formatEvent(e) + repr(e) for e in events)
        assert "Created API key" in text
        assert secret not in text and "rk_wrong" not in text and ADMIN_KEY not in text


class TestHistory:
    def test_pages(self, api):
        """
        The retained updates of a watched key, oldest first, a page at a
        time.
        """
        session, _connection = open_session(api.server)
        send(session, {"id": "1", "type": "subscribe",
                       "data": {"channel": "market_data", "symbols": ["MTK/USD"]}})
        for seq in range(5):
            api.call("POST", "/prices", {"prices": [
                {"symbol": "MTK/USD", "price": str(seq + 1), "seq": seq}]}, key=PUBLISH_KEY)
        page = api.call("GET", "/history/market_data/MTK/USD?limit=3").body
        assert [u["data"]["price"] for u in page["updates"]] == ["1", "2", "3"]
        assert page["lost"] is None
        rest = api.call("GET", f"/history/market_data/mtk%2Fusd?since={page['next']}").body
        assert [u["data"]["price"] for u in rest["updates"]] == ["4", "5"]
        assert rest["next"] is None and rest["name"] == "MTK/USD"

    @pytest.mark.parametrize(("path", "status", "code"), [
        ("/history/prices/MTK/USD", 404, "not_found"),
        ("/history/market_data/NOPE/USD", 404, "not_found"),
        ("/history/token_updates/0x" + "9" * 40, 404, "not_found"),
        ("/history/transaction_updates/alice", 404, "not_found"),
        ("/history/transaction_updates/" + ALICE + "?since=7", 400, "invalid_params"),
        ("/history/transaction_updates/" + ALICE + "?limit=1001", 400, "invalid_params"),
    ])
    def test_refused(self, api, path, status, code):
        assert error(api.call("GET", path)) == (status, code)

    def test_an_address_never_watched_has_none(self, api):
        page = api.call("GET", f"/history/transaction_updates/{BOB}").body
        assert page["updates"] == [] and page["next"] is None


class TestLedger:
    def test_transactions(self, api):
        """
        A transfer is found by id and among its addresses' transactions,
        newest first; unknown and malformed ids are refused.
        """
        session, connection = open_session(api.server)
        for n in range(3):
            send(session, {"id": str(n), "type": "execute_transaction", "data": {
                "from": ALICE, "to": BOB, "amount": str(n + 1), "token_id": MTK.token_id}})
        ids = [m["data"]["transaction_id"] for m in connection.take()
               if m["type"] == "transaction_response"]
        found = api.call("GET", f"/transactions/{ids[0]}").body
        assert found["from"] == ALICE and found["amount"] == "1"
        listed = api.call("GET", f"/addresses/{BOB}/transactions?limit=2").body
        assert [t["transaction_id"] for t in listed["transactions"]] == ids[:0:-1]
        assert error(api.call("GET", "/transactions/0x" + "0" * 64)) == (404, "not_found")
        assert error(api.call("GET", "/transactions/nope")) == (400, "invalid_params")
        assert error(api.call("GET", "/addresses/nope/transactions")) == (400, "invalid_params")


class TestInfo:
    def test_info(self, api):
        open_session(api.server)
        info = api.call("GET", "/info").body
        assert info["node"] == "test-node"
        assert info["market_source"] == "external"
        assert info["totals"]["nodes"] == 1
        assert info["block_height"] == 0 and info["pending_transactions"] == 0


class TestLimitedRequest:
    def request(self):
        channel = DummyChannel()
        channel.site = Site(Resource())
        channel.site.max_body = 10
        return LimitedRequest(channel)

    def test_within(self):
        request = self.request()
        request.gotLength(None)
        request.handleContentChunk(b"0123456789")
        assert not request.body_too_large
        request.content.seek(0)
        assert request.content.read() == b"0123456789"

    def test_declared_too_long(self):
        request = self.request()
        request.gotLength(11)
        request.handleContentChunk(b"0" * 11)
        assert request.body_too_large
        assert request.content.getvalue() == b""

    def test_chunked_too_long(self):
        """
        A body of no declared length is dropped once past the limit.
        """
        request = self.request()
        request.gotLength(None)
        for _ in range(100):
            request.handleContentChunk(b"012")
        assert request.body_too_large
        assert request.content.getvalue() == b""


class TestCluster:
    """
    Questions about connections between the nodes, over control messages
    (here a fake bus between two in-memory servers on one clock).
    """

    def pair(self, clock, answering: bool = True):
        a, b = Api(clock), Api(clock)
        b.app.node = "node-b"
        apps = {"test-node": a.app, "node-b": b.app}

        def linked(app):
            def send_to_node(node, message):
                target = apps.get(node)
                if target is None:
                    return succeed(0)
                if answering or node == "test-node":
                    clock.callLater(0.01, target._control, orjson.loads(orjson.dumps(message)))
                return succeed(1)

            app.broker.send_to_node = send_to_node
            app.broker.nodes = lambda: succeed([{"name": name, "address": "", "version": "x",
                                                 "started": "2026-01-01T00:00:00.000000Z",
                                                 "connections": 0} for name in apps])

        for app in apps.values():
            linked(app)
        return a, b

    def call(self, clock, api, method, path, body=None):
        request = Request(method, path, orjson.dumps(body) if body is not None else b"",
                          ADMIN_KEY)
        api.resource.render(request)
        clock.advance(0.01)
        clock.advance(0.01)
        if not request.finished:
            clock.advance(5)
        answer = orjson.loads(b"".join(request.written))
        validate(method, path.partition("?")[0], request.responseCode or 200, answer)
        return request.responseCode or 200, answer

    def test_list_and_close_on_another_node(self, clock):
        a, b = self.pair(clock)
        session, connection = open_session(b.server)
        _, listed = self.call(clock, a, "GET", "/connections")
        assert [c["id"] for c in listed["connections"]] == [session.connection_id]
        assert listed["connections"][0]["node"] == "node-b"
        _status, closed = self.call(clock, a, "POST",
                                   f"/connections/{session.connection_id}/close",
                                   {"code": 4100, "reason": "moved"})
        assert closed["closed"] and closed["node"] == "node-b"
        assert connection.closed == (4100, "moved")

    def test_revoking_closes_the_keys_connections_everywhere(self, clock):
        a, b = self.pair(clock)
        _, here = open_session(a.server)
        _, there = open_session(b.server)
        status, revoked = self.call(clock, a, "DELETE", f"/keys/{KEY.key_id}")
        assert status == 200 and revoked["connections_closed"] == 2
        assert here.closed == there.closed == (4001, "API key revoked")

    def test_a_node_that_does_not_answer(self, clock):
        a, b = self.pair(clock, answering=False)
        open_session(b.server)
        _status, listed = self.call(clock, a, "GET", "/connections")
        assert listed == {"connections": [], "truncated": False, "unanswered": ["node-b"]}
