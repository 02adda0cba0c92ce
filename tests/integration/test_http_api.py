"""
The HTTP API over the real server (``twistd -n rustorium`` on a loopback
port): prices from a publish key reach WebSocket subscribers (across the
two nodes of a cluster too), stale ones move nothing, keys and scopes are
enforced, connections are closed by id and by revoking their key, bad input
gets its documented 4xx and leaves the server up, no key is ever logged,
every answer matches docs/openapi.yaml, and schemathesis finds nothing.
"""

import os
import signal
import subprocess
import time
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import orjson
import pytest
from websockets.exceptions import InvalidStatus

from tests.integration.client import Client
from tests.integration.conftest import BIN, environment
from tests.integration.test_cluster import Cluster, ready
from tests.integration.test_postgresql import own_postgres  # noqa: F401
from tests.openapi import validate
from tests.redis_server import redis_server  # noqa: F401
from tests.services import postgres_url  # noqa: F401

EXTERNAL = ("--market-source", "external", "--tick-interval", "0.2")


class Http:
    """
    A client of one server's HTTP API, checking every answer against the
    OpenAPI document.
    """

    def __init__(self, port: int, key: str | None = None) -> None:
        self.base = f"http://127.0.0.1:{port}/api/v1"
        self.key = key

    def call(self, method: str, path: str, body: object = None, key: str | None = "default",
             raw: bytes | None = None, check: bool = True) -> tuple[int, dict, dict]:
        key = self.key if key == "default" else key
        data = raw if raw is not None else (None if body is None else orjson.dumps(body))
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        request = Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urlopen(request, timeout=20) as response:
                status, answer_headers, payload = response.status, response.headers, response.read()
        except HTTPError as e:
            status, answer_headers, payload = e.code, e.headers, e.read()
        answer = orjson.loads(payload)
        headers = dict(answer_headers.items())
        if check:
            validate(method, path.partition("?")[0], status, answer, headers)
        return status, answer, headers


def create_key(database: str, *args: str) -> str:
    result = subprocess.run(
        [str(BIN / "rustorium"), "keys", "create", "--database", database, *args],
        env=environment(), capture_output=True, check=True, text=True,
    )
    return result.stdout.splitlines()[-1]


def price_updates(client: Client, count: int, timeout: float = 10.0) -> list[dict]:
    found = []
    while len(found) < count:
        message = client.until(lambda m: m["type"] == "update"
                               and m["data"]["channel"] == "market_data", timeout)
        found.append(message["data"])
    return found


@pytest.fixture
def node(start_server):
    """
    A single node whose prices come only from the API, with an admin and a
    publish key.
    """
    server = start_server(*EXTERNAL, "--key-check-interval", "3600")
    server.admin = create_key(server.database, "--name", "ops", "--scope", "admin")
    server.publish = create_key(server.database, "--name", "feed", "--scope", "publish")
    return server


def post_prices(http: Http, *prices: tuple[str, str, int], key: str | None = None) -> dict:
    status, answer, _ = http.call("POST", "/prices", {"prices": [
        {"symbol": symbol, "price": price, "seq": seq} for symbol, price, seq in prices
    ]}, key=key or http.key)
    assert status == 200, answer
    return answer


class TestSingleNode:
    def test_a_stale_seq_does_not_move_the_price(self, node):
        """
        A price reaches a market_data subscriber; a later post with a lower
        or equal seq is counted stale and moves nothing, for live
        subscribers nor for the snapshot a new one gets.
        """
        http = Http(node.port, node.publish)
        with Client(node.url, node.demo_key()) as client:
            client.request("subscribe", {"channel": "market_data", "symbols": ["MTK/USD"]})
            assert post_prices(http, ("MTK/USD", "2.5", 10)) == {"accepted": 1, "stale": 0}
            (first,) = price_updates(client, 1)
            assert first["price"] == "2.5" and first["change_24h"] == "0"
            assert post_prices(http, ("MTK/USD", "1", 9), ("MTK/USD", "1", 10)) == {
                "accepted": 0, "stale": 2}
            assert post_prices(http, ("MTK/USD", "3", 11)) == {"accepted": 1, "stale": 0}
            (second,) = price_updates(client, 1)
            assert second["price"] == "3" and second["change_24h"] == "20"
        with Client(node.url, node.demo_key()) as late:
            late.request("subscribe", {"channel": "market_data", "symbols": ["MTK/USD"]})
            (snapshot,) = price_updates(late, 1)
            assert snapshot["price"] == "3"

    def test_a_restart_keeps_the_prices_and_their_order(self, node, start_server):
        """
        A single node keeps the last posted price of each market in its
        database: after a restart a new subscriber gets it at once, and an
        older seq is still stale.
        """
        http = Http(node.port, node.publish)
        assert post_prices(http, ("RST/USD", "7.5", 40)) == {"accepted": 1, "stale": 0}
        node.stop()
        again = start_server(*EXTERNAL, port=node.port)
        http = Http(again.port, node.publish)
        with Client(again.url, node.demo_key()) as client:
            client.request("subscribe", {"channel": "market_data", "symbols": ["RST/USD"]})
            (snapshot,) = price_updates(client, 1)
            assert snapshot["price"] == "7.5"
            assert post_prices(http, ("RST/USD", "1", 39)) == {"accepted": 0, "stale": 1}

    def test_keys_and_scopes(self, node):
        """
        No key: 401; a client key: 403 on every operation; a publish key
        only publishes; a publish or admin key opens no WebSocket session.
        """
        http = Http(node.port)
        body = {"prices": [{"symbol": "MTK/USD", "price": "1", "seq": 1}]}
        status, answer, headers = http.call("POST", "/prices", body, key=None)
        assert (status, answer["error"]["code"]) == (401, "unauthorized")
        assert headers["WWW-Authenticate"].startswith("Bearer")
        client_key = node.demo_key()
        for method, path in (("POST", "/prices"), ("GET", "/info"), ("GET", "/keys")):
            status, answer, _ = http.call(method, path, body if method == "POST" else None,
                                          key=client_key)
            assert (status, answer["error"]["code"]) == (403, "forbidden")
        assert http.call("GET", "/info", key=node.publish)[0] == 403
        assert http.call("GET", "/info", key=node.admin)[0] == 200
        for key in (node.publish, node.admin):
            with pytest.raises(InvalidStatus) as raised:
                Client(node.url, key)
            assert raised.value.response.status_code == 403

    def test_close_a_connection_by_id(self, node):
        http = Http(node.port, node.admin)
        with Client(node.url, node.demo_key()) as client:
            client.request("subscribe", {"channel": "market_data", "symbols": ["MTK/USD"]})
            _, listed, _ = http.call("GET", "/connections?key=demo")
            (connection,) = listed["connections"]
            assert connection["subscriptions"][0]["symbols"] == ["MTK/USD"]
            status, answer, _ = http.call("POST", f"/connections/{connection['id']}/close",
                                          {"code": 4000, "reason": "moved to a new plan"})
            assert status == 200 and answer["closed"]
            assert client.wait_closed() == (4000, "moved to a new plan")
        status, answer, _ = http.call("POST", f"/connections/{connection['id']}/close",
                                      {"code": 4000})
        assert (status, answer["error"]["code"]) == (404, "not_found")

    def test_revoking_a_key_by_api_closes_its_connections(self, node):
        """
        Revoking a key through the API closes its open connections with
        4001 at once (the periodic key check is an hour away here), and the
        key is refused from then on.
        """
        http = Http(node.port, node.admin)
        status, created, _ = http.call("POST", "/keys", {"name": "doomed", "scope": "client"})
        assert status == 201
        with Client(node.url, created["key"]) as one, Client(node.url, created["key"]) as two:
            one.request("ping")
            two.request("ping")
            status, revoked, _ = http.call("DELETE", f"/keys/{created['id']}")
            assert status == 200 and revoked["connections_closed"] == 2
            assert one.wait_closed()[0] == 4001
            assert two.wait_closed()[0] == 4001
        with pytest.raises(InvalidStatus):
            Client(node.url, created["key"])
        status, answer, _ = http.call("DELETE", f"/keys/{created['id']}")
        assert (status, answer["error"]["code"]) == (409, "conflict")

    def test_look_at_the_cluster_and_the_ledger(self, node):
        http = Http(node.port, node.admin)
        with Client(node.url, node.demo_key()) as client:
            client.request("subscribe", {"channel": "market_data", "symbols": ["MTK/USD"]})
            reply = client.request("execute_transaction", {
                "from": "0xa11ce00000000000000000000000000000000001",
                "to": "0xb0b0000000000000000000000000000000000002",
                "amount": "1.5", "token_id": "0x00000000000000000000000000000000004d544b"})
            transaction_id = reply["data"]["transaction_id"]
            post_prices(Http(node.port, node.publish), ("MTK/USD", "1.1", 1), ("MTK/USD", "1.2", 2))
            price_updates(client, 2)
            deadline = time.monotonic() + 10
            while True:
                _, info, _ = http.call("GET", "/info")
                if info["totals"]["connections"] == 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert info["totals"]["subscriptions"]["market_data"] == 1
            assert info["market_source"] == "external"
            _, history, _ = http.call("GET", "/history/market_data/MTK/USD?limit=1")
            assert [u["data"]["price"] for u in history["updates"]] == ["1.1"]
            _, rest, _ = http.call("GET", f"/history/market_data/MTK%2FUSD?since={history['next']}")
            assert [u["data"]["price"] for u in rest["updates"]] == ["1.2"]
        _, found, _ = http.call("GET", f"/transactions/{transaction_id}")
        assert found["amount"] == "1.5"
        _, listed, _ = http.call(
            "GET", "/addresses/0xb0b0000000000000000000000000000000000002/transactions")
        assert [t["transaction_id"] for t in listed["transactions"]] == [transaction_id]

    def test_bad_input_gets_its_4xx_and_the_server_stays_up(self, node):
        """
        Malformed JSON, wrong types, unknown symbols, non-decimal prices,
        10,000 prices at once and a body over the limit: each its
        documented 4xx, nothing applied, and the server answers after.
        """
        http = Http(node.port, node.publish)
        cases = [
            (b'{"prices": [', 400, "invalid_request"),
            (b"\xff\xfe\x00", 400, "invalid_request"),
            (b"[]", 400, "invalid_request"),
            (b'{"prices": "MTK/USD"}', 400, "invalid_params"),
            (b'{"prices": [{"symbol": 1, "price": "1", "seq": 1}]}', 400, "invalid_params"),
            (b'{"prices": [{"symbol": "MTK/USD", "price": 1.5, "seq": 1}]}', 400,
             "invalid_params"),
            (b'{"prices": [{"symbol": "MTK/USD", "price": "1", "seq": "1"}]}', 400,
             "invalid_params"),
            (b'{"prices": [{"symbol": "DOGE/USD", "price": "1", "seq": 1}]}', 400,
             "invalid_params"),
        ]
        for price in ("1e5", "-1", "1,5", "0x10", "NaN", "Infinity", " 1", "1.123456789", "0"):
            cases.append((orjson.dumps({"prices": [{"symbol": "MTK/USD", "price": price,
                                                    "seq": 1}]}), 400, "invalid_params"))
        many = {"prices": [{"symbol": "MTK/USD", "price": "1", "seq": n} for n in range(10_000)]}
        cases.append((orjson.dumps(many), 400, "invalid_params"))
        cases.append((b'{"prices": [' + b'{"symbol": "MTK/USD"},' * 100_000 + b"{}]}", 413,
                      "payload_too_large"))
        for raw, status, code in cases:
            got, answer, _ = http.call("POST", "/prices", raw=raw)
            assert (got, answer["error"]["code"]) == (status, code), raw[:80]
        _, answer, _ = http.call("POST", "/prices", raw=orjson.dumps(many))
        assert answer["error"]["field"] == "prices"
        assert post_prices(http, ("MTK/USD", "1", 1)) == {"accepted": 1, "stale": 0}
        assert node.process.poll() is None

    def test_keys_never_appear_in_logs_or_answers(self, node):
        http = Http(node.port, node.admin)
        _, created, _ = http.call("POST", "/keys", {"name": "bot", "scope": ["client"]})
        secret = created["key"]
        _, listed, _ = http.call("GET", "/keys")
        assert secret not in orjson.dumps(listed).decode()
        assert all("key" not in k for k in listed["keys"])
        with Client(node.url, secret) as client:
            client.request("ping")
            _, connections, _ = http.call("GET", "/connections")
        assert secret not in orjson.dumps(connections).decode()
        http.call("GET", "/info", key="rk_" + "x" * 43)
        http.call("GET", "/info", key=secret)
        node.stop()
        log = node.output()
        for key in (secret, node.admin, node.publish, "rk_" + "x" * 43):
            assert key not in log

    def test_answers_match_the_document_under_schemathesis(self, start_server, tmp_path):
        """
        schemathesis (bounded in examples and time) runs every operation but
        revoking keys (which could revoke its own) against a live server:
        no failure of any check, no 5xx. positive_data_acceptance is left
        out: a static document cannot say which markets a server has, that
        a price is more than zero, or which names each channel takes, and
        those are refused with their documented 400 or 404.
        """
        server = start_server(*EXTERNAL, "--http-rate-limit", "100000",
                              "--http-rate-burst", "100000")
        admin = create_key(server.database, "--name", "schemathesis", "--scope", "admin")
        seed = os.environ.get("RUSTORIUM_SCHEMATHESIS_SEED", "1")
        result = subprocess.run(
            [str(BIN / "schemathesis"), "run",
             f"http://127.0.0.1:{server.port}/api/v1/openapi.json",
             "-H", f"Authorization: Bearer {admin}",
             "--exclude-operation-id", "revokeKey",
             "--checks", "all", "--exclude-checks", "positive_data_acceptance",
             "--max-examples", "20", "--seed", seed,
             "--request-timeout", "10", "--workers", "1"],
            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=environment(),
        )
        assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
        assert " 5" not in _statuses(result.stdout)
        assert server.process.poll() is None
        assert "Traceback" not in server.output()


def _statuses(output: str) -> str:
    """
    The HTTP statuses schemathesis quotes in its report (none on success).
    """
    return " ".join(line.split("]")[0] for line in output.splitlines() if line.startswith("[5"))


@pytest.fixture
def cluster(tmp_path, redis_server, postgres_url):  # noqa: F811
    cluster = Cluster(tmp_path, redis_server.url, postgres_url)
    yield cluster
    cluster.stop()


def test_a_posted_price_reaches_another_node_and_operators_steer_any_node(cluster):
    """
    Two nodes on one Redis and one PostgreSQL, prices from the API only: a
    price posted to node A with a publish key reaches a market_data
    subscriber of node B (and a stale one does not); node A lists B's
    connection, closes it by id with the code given, and revoking a key
    through A closes its connection on B with 4001.
    """
    a = cluster.start("node-a", *EXTERNAL, "--key-check-interval", "3600")
    b = cluster.start("node-b", *EXTERNAL, "--key-check-interval", "3600")
    database = cluster.database
    admin = create_key(database, "--name", "ops", "--scope", "admin")
    publish = create_key(database, "--name", "feed", "--scope", "publish")
    viewer = create_key(database, "--name", "viewer")
    on_a = Http(a.port, admin)
    with Client(b.url, viewer) as client:
        ready(client)
        client.request("subscribe", {"channel": "market_data", "symbols": ["STK/USD"]})
        assert post_prices(Http(a.port, publish), ("STK/USD", "42.5", 7)) == {
            "accepted": 1, "stale": 0}
        (update,) = price_updates(client, 1, timeout=15)
        assert update["symbol"] == "STK/USD" and update["price"] == "42.5"
        assert post_prices(Http(b.port, publish), ("STK/USD", "1", 7)) == {
            "accepted": 0, "stale": 1}
        assert post_prices(Http(b.port, publish), ("STK/USD", "43", 8)) == {
            "accepted": 1, "stale": 0}
        (update,) = price_updates(client, 1, timeout=15)
        assert update["price"] == "43"
        _, listed, _ = on_a.call("GET", "/connections?key=viewer")
        assert len(listed["connections"]) == 1, listed
        (connection,) = listed["connections"]
        assert connection["node"] == "node-b" and listed["unanswered"] == []
        status, closed, _ = on_a.call("POST", f"/connections/{connection['id']}/close",
                                      {"code": 4100, "reason": "rebalancing"})
        assert status == 200 and closed["node"] == "node-b"
        assert client.wait_closed() == (4100, "rebalancing")
    with Client(b.url, viewer) as client:
        ready(client)
        _, listed, _ = on_a.call("GET", "/keys")
        (viewer_id,) = [k["id"] for k in listed["keys"] if k["name"] == "viewer"]
        status, revoked, _ = on_a.call("DELETE", f"/keys/{viewer_id}")
        assert status == 200 and revoked["connections_closed"] == 1
        assert client.wait_closed()[0] == 4001
    _, info, _ = on_a.call("GET", "/info")
    assert {n["name"] for n in info["nodes"]} == {"node-a", "node-b"}
    assert sum(n.get("runs_market", False) for n in info["nodes"]) == 1


def test_the_feed_tool_replays_a_csv_into_subscribers(node, tmp_path):
    """
    ``rustorium feed prices`` sends a CSV's prices through the API to a
    market_data subscriber, in order; replaying the same file again is
    all stale and moves nothing.
    """
    path = tmp_path / "prices.csv"
    path.write_text("timestamp,symbol,price\n"
                    + "".join(f"2026-11-26T10:00:{s:02d}Z,MTK/USD,1.{s:02d}\n" for s in range(20)))
    command = [str(BIN / "rustorium"), "feed", "prices", str(path),
               "--url", f"http://127.0.0.1:{node.port}", "--batch", "7"]
    env = {**environment(), "RUSTORIUM_API_KEY": node.publish}
    with Client(node.url, node.demo_key()) as client:
        client.request("subscribe", {"channel": "market_data", "symbols": ["MTK/USD"]})
        first = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        assert "Sent 20 prices: 20 accepted, 0 stale." in first.stderr
        prices = [u["price"] for u in price_updates(client, 20)]
        assert prices == [f"1.{s:02d}".rstrip("0").rstrip(".") for s in range(20)]
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert "Sent 20 prices: 0 accepted, 20 stale." in again.stderr
        with pytest.raises(TimeoutError):
            client.until(lambda m: m["type"] == "update", timeout=1.0)


def test_503_while_the_database_is_down(start_server, own_postgres):  # noqa: F811
    """
    While PostgreSQL is down the API answers 503 (keys cannot be checked),
    at once and in the documented shape; once it is back, it serves again.
    """
    url = own_postgres.fresh_database()
    server = start_server(*EXTERNAL, database=url)
    admin = create_key(url, "--name", "ops", "--scope", "admin")
    http = Http(server.port, admin)
    assert http.call("GET", "/keys")[0] == 200
    own_postgres.kill()
    status, answer, _ = http.call("GET", "/keys")
    assert (status, answer["error"]["code"]) == (503, "unavailable")
    own_postgres.restart()
    deadline = time.monotonic() + 20
    while http.call("GET", "/keys")[0] != 200:
        assert time.monotonic() < deadline, "still unavailable after the database came back"
        time.sleep(0.2)
    assert server.process.poll() is None


def test_prices_go_on_when_the_node_running_the_market_dies(cluster):
    """
    The node that publishes posted prices is SIGKILLed; the other takes the
    market over, publishes the latest accepted price at once, and then
    every price posted to it.
    """
    a = cluster.start("node-a", *EXTERNAL)
    b = cluster.start("node-b", *EXTERNAL)
    admin = create_key(cluster.database, "--name", "ops", "--scope", "admin")
    publish = create_key(cluster.database, "--name", "feed", "--scope", "publish")
    viewer = create_key(cluster.database, "--name", "viewer")
    deadline = time.monotonic() + 20
    while True:
        _, info, _ = Http(a.port, admin).call("GET", "/info")
        leaders = [n["name"] for n in info["nodes"] if n.get("runs_market")]
        if len(info["nodes"]) == 2 and leaders:
            break
        assert time.monotonic() < deadline, info
        time.sleep(0.2)
    nodes = {"node-a": a, "node-b": b}
    leader = nodes.pop(leaders[0])
    (survivor,) = nodes.values()
    assert post_prices(Http(survivor.port, publish), ("MTK/USD", "5", 1))["accepted"] == 1
    leader.stop(signal.SIGKILL)
    assert post_prices(Http(survivor.port, publish), ("MTK/USD", "6", 2))["accepted"] == 1
    with Client(survivor.url, viewer) as client:
        ready(client)
        client.request("subscribe", {"channel": "market_data", "symbols": ["MTK/USD"]})
        seen = [u["price"] for u in price_updates(client, 1, timeout=20)]
        while seen[-1] != "6":
            seen += [u["price"] for u in price_updates(client, 1, timeout=20)]
        assert post_prices(Http(survivor.port, publish), ("MTK/USD", "7", 3))["accepted"] == 1
        (update,) = price_updates(client, 1, timeout=20)
        assert update["price"] == "7"
