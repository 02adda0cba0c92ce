"""
transaction_updates through the real server as protocol.rst describes
them: each status once per connection, live and replayed, whatever the
number of the connection's subscriptions that cover it; no current state
after subscribe; and the other promises of the subscribe and reconnect
sections (fresh ids for current state, one entry per repeated id).
"""

from tests.integration.client import Client

ALICE = "0xa11ce00000000000000000000000000000000001"
CAROL = "0x" + "c" * 40
MTK = "0x00000000000000000000000000000000004d544b"
TRANSFER = {"from": ALICE, "to": CAROL, "amount": "1.5", "token_id": MTK}


def number(message: dict) -> int:
    return int(message["id"][4:])


def flush(client: Client) -> None:
    """
    Receive until the answer to a ping: anything the server sent before it
    has then arrived.
    """
    client.request("ping", request_id="flush")


def events(client: Client) -> list[tuple[str, str]]:
    return [(m["data"]["transaction_id"], m["data"]["status"]) for m in client.received
            if m["type"] == "update" and m["data"]["channel"] == "transaction_updates"]


def follow_both(client: Client) -> list[str]:
    return [client.request("subscribe", {"channel": "transaction_updates", "address": a},
                           request_id=a)["data"]["subscription_id"]
            for a in (ALICE, CAROL)]


def test_both_ends_followed_each_status_once(start_server):
    """
    A connection following both the sender and the recipient receives
    pending and confirmed once each, with one id per status.
    """
    server = start_server("--block-interval", "0.3")
    with Client(server.url, server.demo_key()) as client:
        follow_both(client)
        transaction_id = client.request("execute_transaction", TRANSFER)["data"]["transaction_id"]
        client.until(lambda m: m["type"] == "update" and m["data"]["status"] == "confirmed")
        flush(client)
        assert events(client) == [(transaction_id, "pending"), (transaction_id, "confirmed")]
        ids = [m["id"] for m in client.received if m["type"] == "update"]
        assert len(set(ids)) == len(ids) == 2


def test_replay_sends_each_status_once(start_server):
    """
    Resuming subscriptions of both ends replays each status once, and the
    counts in the confirmation say so.
    """
    server = start_server("--block-interval", "0.3")
    key = server.demo_key()
    with Client(server.url, key) as first:
        subscription_ids = follow_both(first)
    with Client(server.url, key) as other:
        other.request("subscribe", {"channel": "transaction_updates", "address": CAROL})
        transaction_id = other.request("execute_transaction", TRANSFER)["data"]["transaction_id"]
        other.until(lambda m: m["type"] == "update" and m["data"]["status"] == "confirmed")
    with Client(server.url, key) as client:
        reply = client.request("reconnect", {"subscriptions": subscription_ids})
        assert reply["data"]["replayed"] == 2, reply
        assert [s["replayed"] for s in reply["data"]["subscriptions"]] == [2, 2]
        flush(client)
        assert events(client) == [(transaction_id, "pending"), (transaction_id, "confirmed")]


def test_no_current_state_for_transaction_updates(start_server):
    """
    Subscribing to an address that has had transactions sends the
    confirmation and nothing else: transaction updates are events, and
    none is replayed as current state.
    """
    server = start_server("--block-interval", "0.3")
    with Client(server.url, server.demo_key()) as client:
        client.request("subscribe", {"channel": "transaction_updates", "address": CAROL})
        client.request("execute_transaction", TRANSFER)
        client.until(lambda m: m["type"] == "update" and m["data"]["status"] == "confirmed")
    with Client(server.url, server.demo_key()) as client:
        client.request("subscribe", {"channel": "transaction_updates", "address": CAROL})
        flush(client)
        assert [m["type"] for m in client.received] == ["subscription_confirmation", "pong"]


def test_current_state_has_a_fresh_id(server):
    """
    The current state sent after a later subscription carries an id above
    every one received before it (with the value's own timestamp).
    """
    with Client(server.url, server.demo_key()) as client:
        client.request("subscribe", {"channel": "market_data", "symbols": ["MTK/USD"]})
        for _ in range(3):
            client.until(lambda m: m["type"] == "update")
        client.request("subscribe", {"channel": "market_data", "symbols": ["STK/USD"]},
                       request_id="stk")
        current = client.until(lambda m: m["type"] == "update"
                               and m["data"]["symbol"] == "STK/USD")
        before = [number(m) for m in client.received[:-1] if m["type"] == "update"]
        assert number(current) > max(before)


def test_reconnect_reports_a_repeated_id_once(server):
    key = server.demo_key()
    with Client(server.url, key) as first:
        subscription_id = first.request(
            "subscribe", {"channel": "transaction_updates", "address": CAROL}
        )["data"]["subscription_id"]
    with Client(server.url, key) as client:
        reply = client.request("reconnect", {"subscriptions": [subscription_id, "sub_gone",
                                                               subscription_id]})
        assert [(e["subscription_id"], e["status"]) for e in reply["data"]["subscriptions"]] \
            == [(subscription_id, "resumed"), ("sub_gone", "expired")]
