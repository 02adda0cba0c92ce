"""
Operators' view of the real server: health, metrics, logs and shutdown.
"""

import json
import re
import signal
import subprocess
import time
from urllib.error import HTTPError

from tests.integration.client import Client, http_get
from tests.integration.conftest import BIN, environment

CLEAN_EXIT = (0, -signal.SIGTERM)


def metric(text: str, name: str, **labels: str) -> float:
    """
    The value of one sample in Prometheus text format.
    """
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.escape(name) + (r"\{" + re.escape(label_text) + r"\}" if labels else "")
    match = re.search(rf"^{pattern} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} {labels} not in metrics:\n{text}"
    return float(match.group(1))


def test_healthz(server):
    body = json.loads(http_get(f"http://127.0.0.1:{server.port}/healthz"))
    assert body["status"] == "ok"
    assert body["version"]


def test_metrics_follow_traffic(server):
    """
    /metrics counts connections, subscriptions per channel, messages in and
    out per type, errors per code, rate-limited messages and deliveries.
    """
    base = f"http://127.0.0.1:{server.port}/metrics"
    with Client(server.url, server.demo_key()) as client:
        client.request("subscribe", {"channel": "market_data", "symbols": ["MTK/USD"]})
        client.until(lambda m: m["type"] == "update")  # the snapshot
        client.until(lambda m: m["type"] == "update")  # a live one
        client.request("get_token_info", {"token_id": "0x" + "9" * 40})
        for n in range(12):
            client.send({"id": n, "type": "ping"})
        for _ in range(12):
            client.until(lambda m: m["type"] in ("pong", "error"))
        text = http_get(base).decode()
        assert metric(text, "rustorium_connections") == 1
        assert metric(text, "rustorium_subscriptions", channel="market_data") == 1
        assert metric(text, "rustorium_messages_received_total", type="subscribe") == 1
        assert metric(text, "rustorium_replies_sent_total", type="subscription_confirmation") == 1
        assert metric(text, "rustorium_errors_total", code="not_found") == 1
        assert metric(text, "rustorium_rate_limited_total") >= 1
        assert metric(text, "rustorium_updates_delivered_total", channel="market_data") >= 1
        assert metric(text, "rustorium_fan_out_seconds_count") >= 1
        assert metric(text, "rustorium_block_height") == 0
        assert metric(text, "process_resident_memory_bytes") > 0
    time.sleep(0.3)
    text = http_get(base).decode()
    assert metric(text, "rustorium_connections") == 0
    assert metric(text, "rustorium_subscriptions_detached") == 1


def test_connection_log_lines(server):
    """
    One line per connection open and close, with the peer and key name,
    never the key.
    """
    key = server.demo_key()
    with Client(server.url, key) as client:
        client.request("ping")
    time.sleep(0.3)
    log = server.output()
    opened = [line for line in log.splitlines() if "Connection opened" in line]
    closed = [line for line in log.splitlines() if "Connection closed" in line]
    assert len(opened) == len(closed) == 1
    assert "key demo" in opened[0] and "127.0.0.1" in opened[0]
    assert "closed by the client" in closed[0] and "code 1000" in closed[0]
    assert key not in opened[0] + closed[0]


def test_revoked_connection_log_lines(start_server):
    """
    A connection cut because its key was revoked (with `rustorium keys
    revoke`) logs why, and its close line shows the code the server sent
    (4001), not the one the client answered with.
    """
    server = start_server("--key-check-interval", "0.2")
    server.demo_key()  # key 1, made once listening
    key = server.create_key("--name", "doomed")
    with Client(server.url, key) as client:
        client.request("ping")
        subprocess.run([str(BIN / "rustorium"), "keys", "revoke", "--database",
                        server.database, "2"], env=environment(), check=True,
                       capture_output=True)
        assert client.wait_closed()[0] == 4001
    deadline = time.monotonic() + 5
    while "Connection closed" not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = server.output().splitlines()
    [revoked] = [line for line in lines if "revoked" in line and "Closing" in line]
    assert "key doomed" in revoked and "127.0.0.1" in revoked
    [closed] = [line for line in lines if "Connection closed" in line]
    assert "closed by the server" in closed and "code 4001" in closed


def test_unknown_page(server):
    try:
        http_get(f"http://127.0.0.1:{server.port}/nope")
    except HTTPError as e:
        assert e.code == 404
    else:
        raise AssertionError("expected 404")


def test_graceful_shutdown(start_server):
    """
    SIGTERM closes every connection with 4200, keeps every accepted
    transaction, and exits within the bound; the restarted server confirms
    what was pending.
    """
    server = start_server("--block-interval", "60")
    key = server.demo_key()
    clients = [Client(server.url, key) for _ in range(5)]
    try:
        ids = []
        for n, client in enumerate(clients):
            reply = client.request("execute_transaction", {
                "from": "0xa11ce00000000000000000000000000000000001",
                "to": "0x" + "c" * 40, "amount": str(n + 1),
                "token_id": "0x00000000000000000000000000000000004d544b"})
            ids.append(reply["data"]["transaction_id"])
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        codes = [client.wait_closed()[0] for client in clients]
        assert codes == [4200] * 5
        assert server.process.wait(15) in CLEAN_EXIT
        assert time.monotonic() - started < 10
    finally:
        for client in clients:
            client.close()
    assert "Shutting down: closing 5 connections" in server.output()
    again = start_server("--block-interval", "0.2", port=server.port)
    with Client(again.url, key) as client:
        for transaction_id in ids:
            deadline = time.monotonic() + 5
            while True:
                status = client.request("get_transaction", {"transaction_id": transaction_id})
                if status["data"]["status"] == "confirmed" or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            assert status["data"]["status"] == "confirmed"


def test_json_logs(start_server):
    """
    With the JSON observer every line of the output is one JSON object (no
    RFC 7464 record separators), and a presented key never appears.
    """
    server = start_server(twistd_args=("--logger=rustorium.logs.json_observer",))
    key = server.create_key("--name", "json")
    with Client(server.url, key) as client:
        client.request("ping")
    time.sleep(0.3)
    output = server.output()
    lines = output.splitlines()
    assert len(lines) > 5
    events = [json.loads(line) for line in lines]
    assert all(isinstance(event, dict) for event in events)
    assert any(e.get("log_format", "").startswith("Connection opened") for e in events)
    assert key not in output
