"""
The real server over real sockets: authentication, subscriptions, limits,
heartbeats and restarts, seen from outside.
"""

import signal
import subprocess
import time
from urllib.error import HTTPError

import pytest
from websockets.exceptions import InvalidStatus

from tests.integration.client import Client, http_get
from tests.integration.conftest import BIN, environment

MTK = "0x00000000000000000000000000000000004d544b"
CLEAN_EXIT = (0, -signal.SIGTERM)
"""twistd stops cleanly on SIGTERM, then exits by the same signal."""


def message_number(message: dict) -> int:
    return int(message["id"][4:])


class TestHandshake:
    @pytest.mark.parametrize("key", [None, "rk_not_a_key"])
    def test_refused_without_valid_key(self, server, key):
        """
        No key or an unknown key: HTTP 401 before any session.
        """
        with pytest.raises(InvalidStatus) as raised:
            Client(server.url, key)
        assert raised.value.response.status_code == 401

    def test_bearer_header(self, server):
        headers = {"Authorization": f"Bearer {server.demo_key()}"}
        with Client(server.url, additional_headers=headers) as client:
            assert client.request("ping")["type"] == "pong"

    def test_other_path(self, server):
        with pytest.raises(InvalidStatus) as raised:
            Client(server.url.replace("/v1", "/v2"), server.demo_key())
        assert raised.value.response.status_code == 404

    @pytest.mark.parametrize("path", ["/", "/healthz", "/v1/x"])
    def test_handshake_on_a_wrong_path(self, server, path):
        """
        A WebSocket handshake anywhere but /v1 (pages included, where a
        plain GET answers 200) is refused with 404 naming /v1.
        """
        with pytest.raises(InvalidStatus) as raised:
            Client(f"ws://127.0.0.1:{server.port}{path}", server.demo_key())
        response = raised.value.response
        assert response.status_code == 404
        assert "/v1" in response.reason_phrase

    @pytest.mark.parametrize("with_key", [False, True])
    def test_plain_get_of_the_api(self, server, with_key):
        """
        A plain HTTP GET of /v1, with a key or without, is refused with 426
        Upgrade Required and an Upgrade header, not a status page.
        """
        url = f"http://127.0.0.1:{server.port}/v1"
        if with_key:
            url += f"?api_key={server.demo_key()}"
        with pytest.raises(HTTPError) as raised:
            http_get(url)
        assert raised.value.code == 426
        assert raised.value.headers["Upgrade"].lower() == "websocket"
        body = raised.value.read().decode()
        assert "WebSocket" in body and "<html" not in body.lower()

    def test_key_created_while_running(self, server):
        """
        A key made with `rustorium keys create` while the server runs works
        at once.
        """
        key = server.create_key("--name", "late")
        with Client(server.url, key) as client:
            assert client.request("ping")["type"] == "pong"

    def test_key_never_logged(self, server):
        """
        Neither the demo key (after its one announcement) nor any key a
        client presents appears in the log, refused or accepted.
        """
        key = server.create_key("--name", "secret")
        with Client(server.url, key) as client:
            client.request("ping")
        with pytest.raises(InvalidStatus):
            Client(server.url, "rk_canary_canary_canary")
        http_get(f"http://127.0.0.1:{server.port}/?api_key=rk_canary_in_web_log")
        time.sleep(0.3)
        log = server.output()
        assert key not in log
        assert "rk_canary" not in log
        assert log.count(server.demo_key()) == 2  # the announcement and its URL


class TestTraffic:
    def test_subscribe_and_updates(self, server):
        with Client(server.url, server.demo_key()) as client:
            confirmation = client.request(
                "subscribe", {"channel": "market_data", "symbols": ["MTK/USD", "STK/USD"]}
            )
            assert confirmation["type"] == "subscription_confirmation"
            assert confirmation["data"]["status"] == "subscribed"
            updates = [client.until(lambda m: m["type"] == "update") for _ in range(6)]
            assert {u["data"]["symbol"] for u in updates} == {"MTK/USD", "STK/USD"}
            numbers = [message_number(u) for u in updates]
            assert numbers == sorted(numbers)

    def test_commands(self, server):
        with Client(server.url, server.demo_key()) as client:
            info = client.request("get_token_info", {"token_id": MTK})
            assert info["data"] == {"token_id": MTK, "name": "My Token", "symbol": "MTK",
                                    "total_supply": "1000000", "decimals": 18}
            assert client.request("server_info")["data"]["limits"]["max_subscriptions"] == 100
            error = client.request("get_token_info", {"token_id": "0x" + "0" * 40})
            assert error["data"]["code"] == "not_found"

    def test_rate_limit(self, server):
        """
        A burst of 15 messages gets 10 answers and 5 rate_limit_exceeded
        errors with retry_after; the connection stays open.
        """
        with Client(server.url, server.demo_key()) as client:
            for n in range(15):
                client.send({"id": n, "type": "ping"})
            replies = [client.receive() for _ in range(15)]
            kinds = [r["type"] for r in replies]
            assert kinds.count("pong") == 10
            errors = [r for r in replies if r["type"] == "error"]
            assert len(errors) == 5
            assert all(e["data"]["code"] == "rate_limit_exceeded" for e in errors)
            assert all(e["data"]["retry_after"] > 0 for e in errors)
            time.sleep(0.2)
            assert client.request("ping")["type"] == "pong"

    def test_oversized_message(self, server):
        with Client(server.url, server.demo_key(), max_size=None) as client:
            client.send('{"type": "ping", "data": {"pad": "' + "x" * 70000 + '"}}')
            code, _ = client.wait_closed()
            assert code == 1009


class TestLifecycle:
    def test_heartbeats_and_silence_timeout(self, start_server):
        """
        With a 1 s heartbeat, a client that answers stays connected; one
        that does not is closed with 4100 after three intervals.
        """
        server = start_server("--heartbeat-interval", "1")
        key = server.demo_key()
        with Client(server.url, key) as answering, Client(server.url, key) as silent:
            started = time.monotonic()
            while time.monotonic() - started < 4.5:
                beat = answering.until(lambda m: m["type"] == "heartbeat")
                assert set(beat) == {"type", "data"}
                answering.send({"type": "heartbeat_response",
                                "data": {"timestamp": beat["data"]["timestamp"]}})
            code, reason = silent.wait_closed()
            assert code == 4100, reason
            assert 3 <= time.monotonic() - started
            assert answering.request("ping")["type"] == "pong"

    def test_revoked_key_is_cut(self, start_server):
        server = start_server("--key-check-interval", "0.2")
        server.demo_key()  # key 1, made once listening
        key = server.create_key("--name", "doomed")
        with Client(server.url, key) as client:
            client.request("ping")
            subprocess.run([str(BIN / "rustorium"), "keys", "revoke", "--database",
                            server.database, "2"], env=environment(), check=True,
                           capture_output=True)
            code, _ = client.wait_closed()
            assert code == 4001
        with pytest.raises(InvalidStatus):
            Client(server.url, key)

    def test_message_ids_increase_across_restarts(self, start_server):
        server = start_server("--tick-interval", "0.1")
        key = server.demo_key()
        with Client(server.url, key) as client:
            client.request("subscribe", {"channel": "market_data", "symbols": ["MTK/USD"]})
            before = message_number(client.until(lambda m: m["type"] == "update"))
        assert server.stop() in CLEAN_EXIT
        again = start_server("--tick-interval", "0.1", port=server.port)
        with Client(again.url, key) as client:
            client.request("subscribe", {"channel": "market_data", "symbols": ["MTK/USD"]})
            after = message_number(client.until(lambda m: m["type"] == "update"))
        assert after > before

    def test_sigterm_closes_with_shutdown_code(self, start_server):
        server = start_server()
        with Client(server.url, server.demo_key()) as client:
            client.request("ping")
            server.process.terminate()
            code, _ = client.wait_closed()
            assert code == 4200
        assert server.process.wait(10) in CLEAN_EXIT
