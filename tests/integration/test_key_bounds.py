"""
What one API key can take from the real server, however many connections
it opens: its message rate, its parked subscriptions, its resumed
subscriptions per connection, and its transfers once revoked. Each attack
is bounded in connections, messages and time, on loopback only.
"""

import subprocess
import time

from tests.integration.client import Client, http_get
from tests.integration.conftest import BIN, environment
from tests.integration.test_operations import metric

ALICE = "0xa11ce00000000000000000000000000000000001"
CAROL = "0x" + "c" * 40
MTK = "0x00000000000000000000000000000000004d544b"


def address(n: int) -> str:
    return f"0x{n:040x}"


def ping_burst(clients: list[Client], per_connection: int) -> list[dict]:
    """
    Send C{per_connection} pings on each connection (within the
    connection's own burst) before reading any answer; return every answer.
    """
    for client in clients:
        for n in range(per_connection):
            client.send({"id": n, "type": "ping"})
    return [client.receive() for client in clients for _ in range(per_connection)]


def test_rate_limit_per_key_across_connections(start_server):
    """
    40 connections of one key sending 10 messages each (each within its own
    connection's limit) get no more answered than the key's burst and its
    refill; the rest are refused with rate_limit_exceeded naming the key's
    limit. Reconnecting at once brings no fresh burst. (A key limit of 20/s,
    burst 100, so that a slow machine cannot blur the bound.)
    """
    server = start_server("--key-rate-limit", "20", "--key-rate-burst", "100")
    key = server.demo_key()
    clients = [Client(server.url, key) for _ in range(40)]
    assert clients[0].request("server_info")["data"]["limits"]["key_rate_burst"] == 100
    started = time.monotonic()
    answers = ping_burst(clients, 9)
    elapsed = time.monotonic() - started
    pongs = [a for a in answers if a["type"] == "pong"]
    refused = [a for a in answers if a["type"] == "error"]
    assert len(pongs) + len(refused) == 360
    assert len(pongs) <= 100 + 20 * elapsed + 1, (len(pongs), elapsed)
    assert refused, "the key sent 360 messages at once and none was refused"
    assert all(e["data"]["code"] == "rate_limit_exceeded" for e in refused)
    assert all("more than 20 messages per second from this API key" in e["data"]["message"]
               for e in refused)
    assert all(e["data"]["retry_after"] > 0 for e in refused)

    for client in clients:
        client.close()
    clients = [Client(server.url, key) for _ in range(40)]
    try:
        again = ping_burst(clients, 10)
    finally:
        for client in clients:
            client.close()
    elapsed = time.monotonic() - started
    answered = len(pongs) + sum(a["type"] == "pong" for a in again)
    # One burst in all (the server_info took one token), and the refill
    # since the first ping.
    assert answered <= 99 + 20 * elapsed + 1, (answered, elapsed)


def detached(server) -> float:
    return metric(http_get(f"http://127.0.0.1:{server.port}/metrics").decode(),
                  "rustorium_subscriptions_detached")


def wait_detached(server, count: float, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while detached(server) != count:
        assert time.monotonic() < deadline, f"{detached(server)} detached, not {count}"
        time.sleep(0.02)


def test_detached_subscriptions_capped_per_key(start_server):
    """
    A key that subscribes and hangs up again and again keeps at most
    max-detached-per-key subscriptions waiting: its oldest expire first, so
    a reconnect finds the newest resumed and the oldest expired.
    """
    server = start_server("--max-detached-per-key", "5")
    key = server.demo_key()
    batches = []
    for batch in range(3):
        with Client(server.url, key) as client:
            ids = []
            for n in range(4):
                reply = client.request("subscribe", {"channel": "transaction_updates",
                                                     "address": address(batch * 4 + n)},
                                       request_id=n)
                ids.append(reply["data"]["subscription_id"])
            batches.append(ids)
        wait_detached(server, min(5, 4 * (batch + 1)))
    with Client(server.url, key) as client:
        assert client.request("server_info")["data"]["limits"]["max_detached_per_key"] == 5
        reply = client.request("reconnect", {"subscriptions": [i for b in batches for i in b]})
    status = {e["subscription_id"]: e["status"] for e in reply["data"]["subscriptions"]}
    assert [status[i] for i in batches[0]] == ["expired"] * 4
    assert [status[i] for i in batches[2]] == ["resumed"] * 4
    assert list(status.values()).count("resumed") == 5


def test_reconnect_past_the_subscription_limit(start_server):
    """
    A reconnect naming more subscriptions than a connection may hold
    resumes up to the limit and reports the rest not_resumed (not expired):
    they stay resumable, and a second connection resumes them.
    """
    server = start_server("--max-subscriptions", "3")
    key = server.demo_key()
    ids = []
    for first, count in ((0, 3), (3, 2)):
        with Client(server.url, key) as client:
            for n in range(first, first + count):
                reply = client.request("subscribe", {"channel": "transaction_updates",
                                                     "address": address(n)}, request_id=n)
                ids.append(reply["data"]["subscription_id"])
    wait_detached(server, 5)
    with Client(server.url, key) as client:
        reply = client.request("reconnect", {"subscriptions": ids})
        entries = reply["data"]["subscriptions"]
        assert [e["status"] for e in entries] == ["resumed"] * 3 + ["not_resumed"] * 2
        assert all(e["reason"] == "subscription_limit" for e in entries[3:])
        assert reply["data"]["recovered"] is False
        with Client(server.url, key) as second:
            rest = second.request("reconnect", {"subscriptions": ids[3:]})
            assert [e["status"] for e in rest["data"]["subscriptions"]] == ["resumed"] * 2
            assert detached(server) == 0


def test_revoked_key_gets_no_transfer_accepted(start_server):
    """
    A client sends transfers one after another while `rustorium keys
    revoke` runs. Once the command has returned, none of its transfers is
    acknowledged, although the key check that closes its connection is far
    off (30 s): the commit itself refuses a revoked key.
    """
    server = start_server("--key-check-interval", "30", "--block-interval", "60")
    key = server.create_key("--name", "doomed", "--address", ALICE)
    transfer = {"from": ALICE, "to": CAROL, "amount": "0.001", "token_id": MTK}
    with Client(server.url, key) as client:
        assert client.request("execute_transaction", transfer)["type"] == "transaction_response"
        revoke = subprocess.Popen(
            [str(BIN / "rustorium"), "keys", "revoke", "--database", server.database, "2"],
            env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        after_revoke = []
        deadline = time.monotonic() + 30
        n = 0
        while len(after_revoke) < 10:
            assert time.monotonic() < deadline, "revoke did not finish"
            returned = revoke.poll() is not None
            n += 1
            reply = client.request("execute_transaction", transfer, request_id=n)
            if returned:
                after_revoke.append(reply)
            # Under the connection's rate limit (10 per second).
            time.sleep(0.11)
        assert revoke.wait() == 0
    assert [r["type"] for r in after_revoke] == ["error"] * 10, after_revoke
    assert all(r["data"]["code"] == "forbidden" for r in after_revoke)
    assert "revoked" in after_revoke[0]["data"]["message"]
