"""
The operator console's server side, over in-memory HTTP connections on a
fake clock: the page and its headers (Content-Security-Policy), sign-in
with an admin key only, the session cookie's attributes, 401 for every
data call without a session, CSRF and Origin checks on every change, the
session's expiry and its end when its key is revoked, the event stream
(overview every second, prices, transaction updates) and the admin key
never written to a log line or a page.
"""

import re

import attrs
import orjson
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyChannel

from rustorium.broker.interface import Publication
from rustorium.console import Console, Monitor, SessionStore
from rustorium.console.monitor import Rates, describe_messages, overview
from rustorium.console.security import set_session_cookie
from rustorium.console.sessions import COOKIE
from rustorium.hub import Update
from rustorium.storage.keys import ApiKey
from tests.helpers import ALICE, BOB, KEY, MTK, make_server, open_session, send

ADMIN_KEY = "rk_console_admin_0123456789abcdefghijklmnopqrstuvw"
CLIENT_KEY = "rk_console_client_0123456789abcdefghijklmnopqrstuv"
LIFETIME = 3600.0
HOST = "127.0.0.1:8765"
ORIGIN = f"http://{HOST}"


@attrs.frozen
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def json(self) -> dict:
        return orjson.loads(self.body)


def parse(raw: bytes) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
    return Response(status, headers, body)


class Stream:
    """
    An open event stream: the events received so far.
    """

    def __init__(self, transport: StringTransport, clock) -> None:
        self._transport = transport
        self._clock = clock
        self._read = 0
        raw = transport.value()
        self.response = parse(raw)
        self._read = raw.index(b"\r\n\r\n") + 4

    def events(self) -> list[tuple[str, object]]:
        """
        The events received since the last call.
        """
        raw = self._transport.value()
        new, self._read = raw[self._read:], len(raw)
        found = []
        for block in new.decode("utf-8").split("\n\n"):
            kind = re.search(r"^event: (.*)$", block, re.M)
            data = re.search(r"^data: (.*)$", block, re.M)
            if kind and data:
                found.append((kind.group(1), orjson.loads(data.group(1))))
        return found

    def pause(self) -> None:
        """
        The browser stops reading: its connection pauses what writes to it.
        """
        self._transport.producer.pauseProducing()

    def resume(self) -> None:
        self._transport.producer.resumeProducing()

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events()]

    @property
    def closed(self) -> bool:
        return self._transport.disconnecting


class Browser:
    """
    A browser of the console: HTTP/1.0 requests over in-memory
    connections to a real C{twisted.web} site, keeping its cookies.
    """

    def __init__(self, site: Site, clock) -> None:
        self._site = site
        self._clock = clock
        self.cookies: dict[str, str] = {}

    def _send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]):
        channel = self._site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        channel.callLater = self._clock.callLater
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        channel.makeConnection(transport)
        lines = [f"{method} {path} HTTP/1.0", f"Host: {HOST}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if self.cookies:
            lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        channel.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        self._clock.advance(0)
        return transport

    def request(self, method: str, path: str, body: object = None, *, raw: bytes | None = None,
                **headers: str) -> Response:
        headers = {name.replace("_", "-"): value for name, value in headers.items()}
        if body is not None:
            raw = orjson.dumps(body)
            headers.setdefault("Content-Type", "application/json")
        transport = self._send(method, path, raw, headers)
        response = parse(transport.value())
        for cookie in response.all("set-cookie"):
            name, _, rest = cookie.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in cookie or not value:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return response

    def get(self, path: str, **headers: str) -> Response:
        return self.request("GET", path, **headers)

    def sign_in(self, key: str = ADMIN_KEY) -> Response:
        return self.request("POST", "/admin/session", {"key": key}, Origin=ORIGIN)

    def csrf(self) -> str:
        return self.get("/admin/session").json()["csrf"]

    def stream(self, query: str = "topics=overview") -> Stream:
        return Stream(self._send("GET", f"/admin/events?{query}", None, {}), self._clock)


class Rig:
    """
    An in-memory server with the console mounted at /admin, an admin and a
    client key.
    """

    def __init__(self, clock) -> None:
        self.clock = clock
        self.server = server = make_server(clock)
        self.app = app = server.app
        keys = server.keys.keys
        keys[ADMIN_KEY] = ApiKey(10, "ops", frozenset(), "t", None, frozenset({"admin"}))
        keys[CLIENT_KEY] = attrs.evolve(KEY, scopes=frozenset({"client"}))
        messages = describe_messages(server.counters, app.fanout)
        app.describe_node = lambda: {
            "name": "test-node", "address": "ws://127.0.0.1:8765/v1", "version": "0.1.0",
            "started": "2026-01-01T00:00:00.000000Z", "connections": len(server.sessions),
            "uptime": clock.seconds() - 1_700_000_000, "messages": messages(),
        }
        self.sessions = SessionStore(clock, LIFETIME)
        self.monitor = Monitor(server, self.sessions, clock, key_check_interval=5.0)
        self.monitor.startService()
        root = Resource()
        root.putChild(b"admin", Console(server, self.sessions, self.monitor))
        self.site = Site(root)
        self.site.timeOut = None

    def browser(self) -> Browser:
        return Browser(self.site, self.clock)


@pytest.fixture
def rig(clock):
    rig = Rig(clock)
    yield rig
    rig.monitor.stopService()


@pytest.fixture
def signed_in(rig):
    browser = rig.browser()
    assert browser.sign_in().status == 200
    return browser


DATA_CALLS = [
    ("GET", "/admin/api/v1/info"),
    ("GET", "/admin/api/v1/connections"),
    ("GET", "/admin/api/v1/keys"),
    ("POST", "/admin/api/v1/keys"),
    ("DELETE", "/admin/api/v1/keys/10"),
    ("POST", "/admin/api/v1/connections/c1-1@test-node/close"),
    ("GET", f"/admin/api/v1/addresses/{ALICE}/transactions"),
    ("GET", "/admin/api/v1/transactions/0x" + "ab" * 32),
    ("GET", "/admin/api/v1/openapi.json"),
    ("GET", "/admin/api/v1/nowhere"),
    ("GET", "/admin/events"),
    ("GET", "/admin/session"),
]


class TestThePage:
    @pytest.mark.parametrize("path", ["/admin/", "/admin/overview", "/admin/markets",
                                      "/admin/transactions", "/admin/keys",
                                      "/admin/connections"])
    def test_each_view_serves_the_page(self, rig, path):
        """
        Every view's URL serves the one page, with no data in it: a
        bookmark or a reload of any view works.
        """
        response = rig.browser().get(path)
        assert response.status == 200
        assert response.header("content-type") == "text/html; charset=utf-8"
        assert b'<label for="admin-key">Admin key</label>' in response.body
        assert b'type="password"' in response.body
        assert b'<base href="/admin/">' in response.body

    def test_security_headers(self, rig):
        """
        The policy allows scripts, styles and connections from this
        origin only: no inline script or style, no framing.
        """
        for path in ("/admin/", "/admin/static/js/main.js", "/admin/api/v1/info",
                     "/admin/session", "/admin/nowhere"):
            response = rig.browser().get(path)
            policy = response.header("content-security-policy")
            assert policy is not None, path
            rules = dict(rule.strip().split(" ", 1) for rule in policy.split(";"))
            assert rules["default-src"] == "'none'"
            assert rules["script-src"] == "'self'"
            assert rules["style-src"] == "'self'"
            assert rules["connect-src"] == "'self'"
            assert rules["frame-ancestors"] == "'none'"
            assert "unsafe" not in policy
            assert response.header("x-content-type-options") == "nosniff"

    def test_no_inline_script_or_style(self, rig):
        """
        The page has no inline script, event handler or style attribute
        (the policy would refuse them).
        """
        html = rig.browser().get("/admin/").body.decode()
        assert re.findall(r"<script[^>]*>", html) == [
            '<script type="module" src="static/js/main.js">'
        ]
        assert "</script>" in html and "<script>" not in html
        assert not re.search(r"\son[a-z]+=", html)
        assert " style=" not in html and "<style" not in html

    def test_static_files(self, rig):
        """
        The scripts are served as JavaScript (a module needs it), with an
        ETag; the vendored chart library comes with its licence.
        """
        browser = rig.browser()
        script = browser.get("/admin/static/js/main.js")
        assert script.status == 200
        assert script.header("content-type") == "text/javascript; charset=utf-8"
        etag = script.header("etag")
        assert browser.get("/admin/static/js/main.js", If_None_Match=etag).status == 304
        assert browser.get("/admin/static/vendor/uplot/uPlot.esm.js").status == 200
        assert b"MIT" in browser.get("/admin/static/vendor/uplot/LICENSE").body
        assert browser.get("/admin/static/nothing.js").status == 404
        assert browser.get("/admin/static/index.html").status == 404

    def test_without_the_slash(self, rig):
        response = rig.browser().get("/admin")
        assert response.status == 302
        assert response.header("location") == "/admin/"


class TestSignIn:
    @pytest.mark.parametrize("method,path", DATA_CALLS)
    def test_every_data_call_needs_a_session(self, rig, method, path):
        """
        Without a session, every call and the event stream get 401, and
        nothing is done.
        """
        response = rig.browser().request(method, path, Origin=ORIGIN)
        assert response.status == 401
        assert response.json()["error"]["code"] == "unauthorized"

    def test_a_bearer_key_is_not_a_session(self, rig):
        """
        The console's API takes the session only: an admin key in
        Authorization gets 401 there (it has /api/v1/ for that).
        """
        response = rig.browser().get("/admin/api/v1/info",
                                     Authorization=f"Bearer {ADMIN_KEY}")
        assert response.status == 401

    def test_an_admin_key_opens_a_session(self, rig):
        """
        The cookie is HttpOnly, SameSite=Strict, for the console's path,
        and expires; the answer carries the CSRF token, never the key.
        """
        browser = rig.browser()
        response = browser.sign_in()
        assert response.status == 200
        body = response.json()
        assert body["key_name"] == "ops" and len(body["csrf"]) >= 32
        assert ADMIN_KEY not in response.body.decode()
        (cookie,) = response.all("set-cookie")
        attributes = [part.strip() for part in cookie.split(";")]
        assert attributes[0].startswith("rustorium_console=")
        assert ADMIN_KEY not in cookie
        assert "HttpOnly" in attributes
        assert "SameSite=strict" in attributes
        assert "Path=/admin/" in attributes
        assert f"Max-Age={int(LIFETIME)}" in attributes
        assert "Secure" not in attributes  # plain HTTP here
        assert browser.get("/admin/api/v1/info").status == 200
        assert browser.get("/admin/session").json()["csrf"] == body["csrf"]

    def test_secure_under_tls(self):
        """
        Over TLS the cookie is also Secure.
        """
        request = http.Request(DummyChannel())
        request.isSecure = lambda: True
        set_session_cookie(request, "token", 60, "/admin/")
        (cookie,) = request.cookies
        assert b"; Secure" in cookie and b"; HttpOnly" in cookie

    def test_other_keys_are_refused(self, rig):
        """
        A client key gets 403 saying the console needs an admin key; an
        unknown one 401; neither gets a cookie.
        """
        browser = rig.browser()
        refused = browser.sign_in(CLIENT_KEY)
        assert refused.status == 403
        assert "admin" in refused.json()["error"]["message"]
        assert refused.all("set-cookie") == []
        unknown = browser.sign_in("rk_nothing_of_the_sort_0123456789")
        assert unknown.status == 401
        assert unknown.json()["error"]["message"] == "unknown or revoked API key"
        assert browser.cookies == {}
        assert browser.get("/admin/api/v1/info").status == 401

    def test_a_revoked_admin_key_is_refused(self, rig):
        rig.server.keys.revoked.add(10)
        assert rig.browser().sign_in().status == 401

    def test_sign_in_only_from_this_origin_and_as_json(self, rig):
        """
        Another site's page cannot sign a browser in (login CSRF), nor can
        a plain form post.
        """
        browser = rig.browser()
        foreign = browser.request("POST", "/admin/session", {"key": ADMIN_KEY},
                                  Origin="https://evil.example")
        assert foreign.status == 403
        cross = browser.request("POST", "/admin/session", {"key": ADMIN_KEY},
                                Sec_Fetch_Site="cross-site")
        assert cross.status == 403
        form = browser.request("POST", "/admin/session", raw=f"key={ADMIN_KEY}".encode(),
                               Origin=ORIGIN, Content_Type="application/x-www-form-urlencoded")
        assert form.status == 415
        assert browser.cookies == {}

    def test_sign_in_attempts_are_rate_limited(self, rig):
        browser = rig.browser()
        statuses = [browser.sign_in("rk_wrong_key_0123456789abcdef").status for _ in range(25)]
        assert statuses[:20] == [401] * 20
        assert statuses[-1] == 429
        rig.clock.advance(10)
        assert browser.sign_in().status == 200

    def test_the_session_expires(self, rig, signed_in):
        rig.clock.advance(LIFETIME - 1)
        assert signed_in.get("/admin/api/v1/info").status == 200
        rig.clock.advance(1)
        assert signed_in.get("/admin/api/v1/info").status == 401
        assert signed_in.get("/admin/session").status == 401

    def test_revoking_the_key_ends_the_session(self, rig, signed_in):
        """
        The next call after the admin key is revoked gets 401, and the
        session is gone.
        """
        rig.server.keys.revoked.add(10)
        assert signed_in.get("/admin/api/v1/info").status == 401
        rig.server.keys.revoked.clear()
        assert signed_in.get("/admin/api/v1/info").status == 401
        assert len(rig.sessions) == 0

    def test_sign_out(self, rig, signed_in):
        """
        Signing out needs the CSRF token; then the cookie is cleared and
        the session gone.
        """
        token = signed_in.get("/admin/session").json()["csrf"]
        assert signed_in.request("DELETE", "/admin/session", Origin=ORIGIN).status == 403
        cookie = dict(signed_in.cookies)
        response = signed_in.request("DELETE", "/admin/session", Origin=ORIGIN,
                                     X_CSRF_Token=token)
        assert response.status == 200
        assert "Max-Age=0" in response.header("set-cookie")
        assert signed_in.cookies == {}
        signed_in.cookies = cookie  # a copy kept by an attacker is worth nothing
        assert signed_in.get("/admin/api/v1/info").status == 401


class TestChanges:
    def test_a_change_needs_the_csrf_token(self, rig, signed_in):
        """
        Creating a key without the token, with a wrong one, or from
        another origin is refused (403) and makes nothing; with it, it
        works.
        """
        body = {"name": "made-here", "scope": "client"}
        before = len(rig.server.keys.keys)
        refused = [
            signed_in.request("POST", "/admin/api/v1/keys", body, Origin=ORIGIN),
            signed_in.request("POST", "/admin/api/v1/keys", body, Origin=ORIGIN,
                              X_CSRF_Token="forged"),
            signed_in.request("POST", "/admin/api/v1/keys", body, Origin="https://evil.example",
                              X_CSRF_Token=signed_in.csrf()),
        ]
        assert [r.status for r in refused] == [403, 403, 403]
        assert all(r.json()["error"]["code"] == "forbidden" for r in refused)
        assert len(rig.server.keys.keys) == before
        made = signed_in.request("POST", "/admin/api/v1/keys", body, Origin=ORIGIN,
                                 X_CSRF_Token=signed_in.csrf())
        assert made.status == 201
        assert made.json()["name"] == "made-here" and made.json()["key"].startswith("rk_")

    def test_revoke_and_disconnect(self, rig, signed_in):
        """
        The console's actions are the HTTP API's: a connection closed by
        id with the chosen code, a key revoked.
        """
        _, connection = open_session(rig.server, rig.server.keys.keys[CLIENT_KEY])
        (connection_id,) = rig.app.connections
        token = signed_in.csrf()
        listed = signed_in.get("/admin/api/v1/connections").json()["connections"]
        assert [c["id"] for c in listed] == [connection_id]
        closed = signed_in.request("POST", f"/admin/api/v1/connections/{connection_id}/close",
                                   {"code": 4100, "reason": "maintenance"}, Origin=ORIGIN,
                                   X_CSRF_Token=token)
        assert closed.status == 200
        assert connection.closed == (4100, "maintenance")
        revoked = signed_in.request("DELETE", f"/admin/api/v1/keys/{KEY.key_id}",
                                    Origin=ORIGIN, X_CSRF_Token=token)
        assert revoked.status == 200 and revoked.json()["revoked_at"]


class TestEvents:
    def test_overview_every_second(self, rig, signed_in):
        """
        A stream starts with the catalog and the chart's past, then sends
        the overview every second: a new connection shows at the next one.
        """
        rig.clock.advance(1)
        stream = signed_in.stream("topics=overview")
        assert stream.response.status == 200
        assert stream.response.header("content-type") == "text/event-stream; charset=utf-8"
        events = dict(stream.events())
        assert sorted(events["hello"]["markets"]) == ["MTK/USD", "RST/USD", "STK/USD"]
        assert len(events["history"]["samples"]) == 2
        assert events["overview"]["connections"] == 0
        open_session(rig.server)
        rig.clock.advance(1)
        (kind, data), = stream.events()
        assert kind == "overview"
        assert data["connections"] == 1
        assert data["nodes"][0]["name"] == "test-node"
        assert {"subscriptions", "messages_in", "messages_out", "block_height",
                "pending_transactions"} <= set(data)

    def test_message_rates(self, rig, signed_in):
        """
        Messages in and out per second: a client's pings in, the pongs out.
        """
        session, _ = open_session(rig.server)
        stream = signed_in.stream("topics=overview")
        rig.clock.advance(1)
        stream.events()
        for _ in range(4):
            send(session, {"type": "ping", "id": 1, "data": {}})
        rig.clock.advance(1)
        ((_, data),) = stream.events()
        assert (data["messages_in"], data["messages_out"]) == (4.0, 4.0)

    def test_prices_are_streamed_conflated(self, rig, signed_in):
        """
        The markets topic starts with each market's recent prices, then
        sends new ones, the newest of each market at most five times a
        second; the console's own taps are not counted as deliveries.
        """
        publish_price(rig, "1.5")
        rig.clock.advance(1)
        # While no console shows the markets, a price is kept unparsed.
        assert isinstance(rig.monitor.prices["MTK/USD"][-1][1], Update)
        stream = signed_in.stream("topics=markets")
        markets = {m["symbol"]: m for m in dict(stream.events())["markets"]["markets"]}
        assert markets["MTK/USD"]["last"]["price"] == "1.5"
        assert markets["MTK/USD"]["points"][-1][1] == "1.5"
        publish_price(rig, "1.6")
        publish_price(rig, "1.7")
        assert stream.kinds() == []
        rig.clock.advance(0.2)
        ((kind, prices),) = stream.events()
        assert kind == "prices" and [p["price"] for p in prices] == ["1.7"]
        assert rig.server.app.fanout.deliveries["market_data"] == 3
        assert describe_messages(rig.server.counters, rig.app.fanout)()["out"] == 0

    def test_transactions_of_watched_addresses(self, rig, signed_in):
        """
        A stream watching an address gets its transfers' updates, pending
        then confirmed; another address's stream gets nothing.
        """
        stream = signed_in.stream(f"address={BOB}")
        other = signed_in.stream("address=0x" + "cd" * 20)
        assert [kind for kind, _ in stream.events()] == ["hello", "watching"]
        other.events()
        session, _ = open_session(rig.server)
        send(session, {"type": "execute_transaction", "id": 1, "data": {
            "from": ALICE, "to": BOB, "amount": "1", "token_id": MTK.token_id}})
        rig.clock.advance(0)
        rig.server.ledger.produce_block()
        rig.clock.advance(0)
        statuses = [data["status"] for kind, data in stream.events() if kind == "transaction"]
        assert statuses == ["pending", "confirmed"]
        assert [k for k, _ in other.events() if k == "transaction"] == []

    def test_a_slow_reader_is_not_buffered_for(self, rig, signed_in, monkeypatch):
        """
        While the browser does not read, overviews and prices are not
        queued for it, transaction updates are (then sent in order); past
        the bound the stream is closed.
        """
        stream = signed_in.stream(f"topics=overview,markets&address={BOB}")
        stream.events()
        stream.pause()
        publish_price(rig, "2")
        rig.clock.advance(1)
        session, _ = open_session(rig.server)
        transfer = {"from": ALICE, "to": BOB, "amount": "1", "token_id": MTK.token_id}
        send(session, {"type": "execute_transaction", "id": 1, "data": transfer})
        rig.clock.advance(0)
        rig.server.ledger.produce_block()
        rig.clock.advance(1)
        assert stream.events() == []
        stream.resume()
        assert [(k, d["status"]) for k, d in stream.events()] == [
            ("transaction", "pending"), ("transaction", "confirmed")]
        rig.clock.advance(1)
        assert stream.kinds() == ["overview"]
        monkeypatch.setattr("rustorium.console.events.MAX_HELD", 1)
        stream.pause()
        send(session, {"type": "execute_transaction", "id": 2, "data": transfer})
        rig.clock.advance(0)
        rig.server.ledger.produce_block()
        rig.clock.advance(0)
        assert stream.closed and rig.monitor.streams == set()

    def test_bad_requests(self, rig, signed_in):
        assert signed_in.get("/admin/events?topics=secrets").status == 400
        assert signed_in.get("/admin/events?address=0x12").status == 400

    def test_the_stream_ends_with_the_session(self, rig, signed_in):
        """
        Signing out (or the key's revocation, found at the next key
        check) ends the open streams with a signed-out event.
        """
        stream = signed_in.stream("topics=markets")
        stream.events()
        rig.server.keys.revoked.add(10)
        rig.clock.advance(5)
        rig.clock.advance(1)
        assert "signed-out" in stream.kinds()
        assert stream.closed
        assert rig.monitor.streams == set()
        assert rig.app.fanout.subscriber_count(
            "transaction_updates:" + BOB) == 0

    def test_streams_close_when_the_service_stops(self, rig, signed_in):
        stream = signed_in.stream(f"topics=overview&address={BOB}")
        rig.monitor.stopService()
        assert stream.closed
        assert not rig.app.fanout.has("transaction_updates:" + BOB)
        assert not rig.app.fanout.has("market_data:MTK/USD")
        rig.monitor.startService()


def publish_price(rig: Rig, price: str) -> None:
    rig.app.broker.publish([Publication("market_data", "market_data:MTK/USD", {
        "symbol": "MTK/USD", "price": price, "change_24h": "0", "volume_24h": "0"})])


def test_the_key_is_never_logged(rig):
    """
    Signing in (well and badly), working and signing out write log lines,
    none holding the key.
    """
    lines = []
    globalLogPublisher.addObserver(lines.append)
    try:
        browser = rig.browser()
        browser.sign_in(CLIENT_KEY)
        browser.sign_in("rk_" + ADMIN_KEY[3:-1])
        browser.sign_in()
        browser.get("/admin/api/v1/keys")
        token = browser.csrf()
        browser.request("DELETE", "/admin/session", Origin=ORIGIN, X_CSRF_Token=token)
    finally:
        globalLogPublisher.removeObserver(lines.append)
    text = "\n".join(formatEvent(event) + repr(event) for event in lines)
    assert "Console sign-in with API key 10 (ops)" in text
    assert ADMIN_KEY not in text and CLIENT_KEY not in text
    assert browser.cookies == {} and COOKIE.decode() not in text


class TestSessions:
    def test_expiry_and_ending(self, clock):
        store = SessionStore(clock, 10)
        token, session = store.open(1, "ops")
        assert store.find(token) is session and store.alive(session)
        assert store.find("other") is None and store.find(None) is None
        clock.advance(10)
        assert store.find(token) is None and not store.alive(session)
        token, session = store.open(1, "ops")
        other, _ = store.open(2, "ci")
        assert store.end_key(1) == 1
        assert store.find(token) is None and session.ended
        assert store.find(other) is not None

    def test_bounded(self, clock):
        store = SessionStore(clock, 10, limit=3)
        tokens = [store.open(1, "ops")[0] for _ in range(5)]
        assert len(store) == 3
        assert [store.find(t) is not None for t in tokens] == [False, False, True, True, True]

    def test_csrf(self, clock):
        _, session = SessionStore(clock, 10).open(1, "ops")
        assert session.check_csrf(session.csrf)
        assert not session.check_csrf(None) and not session.check_csrf(session.csrf[:-1])


class TestRates:
    def test_from_announced_totals(self):
        rates = Rates()
        node = {"name": "a", "uptime": 10.0, "messages": {"in": 100, "out": 1000}}
        assert rates.update([node])["a"].rate_in == 0
        node = {**node, "uptime": 12.0, "messages": {"in": 120, "out": 1400}}
        found = rates.update([node])["a"]
        assert (found.rate_in, found.rate_out) == (10.0, 200.0)
        assert rates.update([node])["a"] == found  # not announced again: kept
        restarted = {**node, "uptime": 1.0, "messages": {"in": 5, "out": 5}}
        assert rates.update([restarted])["a"].rate_in == 0

    def test_overview_sums_the_nodes(self):
        info = {"node": "a", "timestamp": "t", "market_source": "simulator",
                "nodes": [{"name": "a", "connections": 2}, {"name": "b", "connections": 3}],
                "totals": {"connections": 5, "subscriptions": {"market_data": 4,
                                                                "token_updates": 1}},
                "block_height": 7, "pending_transactions": 1}
        rates = {"a": _rate(1, 10), "b": _rate(2, 20)}
        data = overview(info, rates, 100.0)
        assert (data["connections"], data["subscriptions"]) == (5, 5)
        assert (data["messages_in"], data["messages_out"]) == (3, 30)
        assert [n["messages_out"] for n in data["nodes"]] == [10, 20]


def _rate(rate_in: float, rate_out: float):
    from rustorium.console.monitor import NodeRate

    return NodeRate(0, 0, 0, rate_in, rate_out)


def test_every_file_is_package_data():
    """
    Every file of the console's static/ directory is matched by a
    setup.cfg package_data pattern, so a plain ``pip install .`` ships it
    (.ci/run also checks the installed package serves them).
    """
    import configparser
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    config = configparser.ConfigParser()
    config.read(root / "setup.cfg")
    patterns = config["options.package_data"]["rustorium.console"].split()
    static = root / "rustorium" / "console"
    files = {p for p in (static / "static").rglob("*") if p.is_file()}
    shipped = {p for pattern in patterns for p in static.glob(pattern)}
    assert static / "static" / "vendor" / "uplot" / "uPlot.esm.js" in shipped
    assert sorted(p.relative_to(static).as_posix() for p in files - shipped) == []


def test_the_console_can_be_left_out(tmp_path):
    """
    The service mounts the console at /admin unless ``console = false``.
    """
    from twisted.internet.testing import MemoryReactorClock

    from rustorium.service import makeService

    def site_children(console: bool) -> tuple[object, dict]:
        reactor = MemoryReactorClock()
        reactor.advance(1_700_000_000)
        service = makeService(
            {"listen": ["tcp:0:interface=127.0.0.1"], "console": console,
             "database": f"sqlite:{tmp_path / f'{console}.db'}"},
            reactor,
        )
        return service.console, service.site.resource.children

    console, children = site_children(True)
    assert isinstance(console, Console) and children[b"admin"] is console
    console, children = site_children(False)
    assert console is None and b"admin" not in children
