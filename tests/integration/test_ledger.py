"""
The ledger through the real server: transfers end to end, and crash
safety: SIGKILL right after a burst of acknowledged transfers loses none
and applies none twice.
"""

import signal

from rustorium.storage import engine_from_url, run_blocking
from tests.integration.client import Client

ALICE = "0xa11ce00000000000000000000000000000000001"
BOB = "0xb0b0000000000000000000000000000000000002"
CAROL = "0x" + "c" * 40
MTK = "0x00000000000000000000000000000000004d544b"
FAST = ("--rate-limit", "5000", "--rate-burst", "5000",
        "--key-rate-limit", "5000", "--key-rate-burst", "5000")


def number(message):
    return int(message["id"][4:])


def test_transfer_end_to_end(start_server):
    server = start_server("--block-interval", "0.3")
    with Client(server.url, server.demo_key()) as client:
        client.request("subscribe", {"channel": "transaction_updates", "address": CAROL})
        reply = client.request("execute_transaction",
                               {"from": ALICE, "to": CAROL, "amount": "12.5", "token_id": MTK})
        assert reply["type"] == "transaction_response"
        assert reply["data"]["status"] == "pending"
        transaction_id = reply["data"]["transaction_id"]
        confirmed = client.until(lambda m: m["type"] == "update"
                                 and m["data"]["status"] == "confirmed")
        assert confirmed["data"]["transaction_id"] == transaction_id
        balance = client.request("get_balance", {"address": CAROL, "token_id": MTK})
        assert balance["data"] == {"address": CAROL, "token_id": MTK,
                                   "balance": "12.5", "available": "12.5"}
        found = client.request("get_transaction", {"transaction_id": transaction_id})
        assert found["data"]["status"] == "confirmed"
        refused = client.request("execute_transaction",
                                 {"from": CAROL, "to": ALICE, "amount": "1", "token_id": MTK})
        assert refused["data"]["code"] == "forbidden"


def test_sigkill_after_acknowledgements(start_server, database_url):
    """
    Every acknowledged transaction is confirmed exactly once after a
    SIGKILL and restart, balances add up, and message ids keep increasing
    (on SQLite and on PostgreSQL).
    """
    server = start_server("--block-interval", "60", *FAST, database=database_url)
    key = server.demo_key()
    acknowledged = {}
    with Client(server.url, key) as client:
        client.request("subscribe", {"channel": "transaction_updates", "address": CAROL})
        for n in range(300):
            sender = ALICE if n % 2 else BOB
            client.send({"id": n, "type": "execute_transaction",
                         "data": {"from": sender, "to": CAROL, "amount": f"{n + 1}.25",
                                  "token_id": MTK, "idempotency_key": f"burst-{n}"}})
        last_number = 0
        while len(acknowledged) < 300:
            message = client.receive(10)
            if message["type"] == "transaction_response":
                acknowledged[message["id"]] = message["data"]["transaction_id"]
            elif message["type"] == "update":
                last_number = max(last_number, number(message))
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(10)

    again = start_server("--block-interval", "0.2", *FAST, port=server.port,
                         database=database_url)
    with Client(again.url, key) as client:
        client.request("subscribe", {"channel": "transaction_updates", "address": CAROL})
        for request_id, transaction_id in list(acknowledged.items())[:20]:
            reply = client.request("execute_transaction",
                                   {"from": ALICE if request_id % 2 else BOB, "to": CAROL,
                                    "amount": f"{request_id + 1}.25", "token_id": MTK,
                                    "idempotency_key": f"burst-{request_id}"})
            assert reply["data"]["transaction_id"] == transaction_id
        client.request("execute_transaction",
                       {"from": ALICE, "to": CAROL, "amount": "0.5", "token_id": MTK})
        update = client.until(lambda m: m["type"] == "update")
        assert number(update) > last_number
        client.until(lambda m: m["type"] == "update" and m["data"]["status"] == "confirmed")
        while client.request("get_transaction", {"transaction_id": acknowledged[299]})[
                "data"]["status"] != "confirmed":
            pass
        balances = {a: client.request("get_balance", {"address": a, "token_id": MTK})["data"]
                    for a in (ALICE, BOB, CAROL)}

    def stored(cursor):
        cursor.execute("SELECT transaction_id, status, block_number, amount FROM transactions")
        return cursor.fetchall()

    rows = run_blocking(engine_from_url(database_url), stored)
    by_id = {}
    for transaction_id, status, block, amount in rows:
        assert transaction_id not in by_id, "a transaction was stored twice"
        by_id[transaction_id] = (status, block, int(amount))
    for transaction_id in acknowledged.values():
        status, block, _ = by_id[transaction_id]
        assert status == "confirmed" and block is not None
    assert all(status == "confirmed" for status, _, _ in by_id.values())
    sent = sum(amount for _, _, amount in by_id.values())
    in_units = {a: _units(b["balance"]) for a, b in balances.items()}
    assert sum(in_units.values()) == 1_000_000 * 10**18
    assert in_units[CAROL] == sent
    assert all(b["balance"] == b["available"] for b in balances.values())


def _units(text: str) -> int:
    whole, _, fraction = text.partition(".")
    return int(whole) * 10**18 + int(fraction.ljust(18, "0") or 0)
