"""
The checker on small histories written by hand: each property it claims
to check fails a history that breaks it, and passes one that keeps it.
(L{tests.faults.test_node_faults} also plants faults in a recorded one.)
"""

import attrs
import pytest

from rustorium.hub import channel_key
from tests.faults.checker import check_ledger, check_streams
from tests.faults.cluster import (
    SENDERS,
    SINKS,
    TOKENS,
    LedgerSnapshot,
    Published,
    RedisDump,
    StoredTransaction,
)
from tests.faults.history import History

FLT = TOKENS[0]
SYMBOLS = [t.market for t in TOKENS]
A, B = SENDERS[0], SINKS[0]
MARKETS = {"channel": "market_data", "symbols": SYMBOLS}
WATCH_A = {"channel": "transaction_updates", "address": A}


def tick(n: int, symbol: str = SYMBOLS[0], price: str | None = None) -> dict:
    return {"channel": "market_data", "symbol": symbol, "price": price or f"{n}.0",
            "timestamp": f"t{n}"}


def event(n: int, status: str = "pending", transaction: str | None = None) -> dict:
    return {"channel": "transaction_updates", "transaction_id": transaction or f"0x{n:064x}",
            "status": status, "from": A, "to": B, "amount": "1", "token_id": FLT.token_id,
            "timestamp": f"t{n}"}


def keys_of(data: dict) -> list[str]:
    if data["channel"] == "market_data":
        return [channel_key("market_data", data["symbol"])]
    return [channel_key("transaction_updates", data["from"]),
            channel_key("transaction_updates", data["to"])]


class Script:
    """
    Writes a history: one client's connections, what it sent and received,
    and what Redis kept.
    """

    def __init__(self) -> None:
        self.history = History()
        self.published: list[Published] = []
        self.t = 0.0
        self.conn = 0

    def _record(self, kind: str, **fields) -> dict:
        self.t += 0.01
        event = {"t": self.t, "kind": kind, **fields}
        self.history.events.append(event)
        return event

    def publish(self, n: int, data: dict) -> int:
        for key in keys_of(data):
            self.published.append(Published(n, key, data))
        return n

    def connect(self, client: str = "c") -> None:
        self.conn += 1
        self._record("connect", client=client, conn=self.conn, node="ws://node")

    def receive(self, message: dict, client: str = "c") -> None:
        self._record("received", client=client, conn=self.conn, message=message)

    def update(self, n: int, data: dict, client: str = "c") -> None:
        self.receive({"id": f"msg_{n}", "type": "update", "data": data}, client)

    def subscribe(self, subscription_id: str, description: dict, client: str = "c") -> None:
        request = {"id": f"s-{subscription_id}", "type": "subscribe", "data": description}
        self._record("sent", client=client, conn=self.conn, message=request)
        self.receive({"id": request["id"], "type": "subscription_confirmation",
                      "data": {"status": "subscribed", "subscription_id": subscription_id,
                               **description}}, client)

    def live(self, client: str = "c") -> None:
        self._record("live", client=client, conn=self.conn)

    def close(self, by: str = "server", code: int = 1006, client: str = "c") -> None:
        self._record("closed", client=client, conn=self.conn, code=code, reason="", by=by)

    def reconnect(self, last: int, entries: list[dict], client: str = "c") -> None:
        request = {"id": f"r-{self.conn}", "type": "reconnect",
                   "data": {"last_message_id": f"msg_{last}",
                            "subscriptions": [e["subscription_id"] for e in entries]}}
        self._record("sent", client=client, conn=self.conn, message=request)
        recovered = all(e["status"] == "resumed" and e["recovered"] for e in entries)
        self.receive({"id": request["id"], "type": "reconnect_confirmation",
                      "data": {"recovered": recovered, "replayed": 0,
                               "subscriptions": entries}}, client)

    def stop(self) -> None:
        self._record("stop")

    def check(self):
        return check_streams(self.history, [RedisDump(self.published, "e", 0)])


def started(script: Script, client: str = "c") -> None:
    """
    A client that follows address A and the markets, its current state in
    (msg_10 and msg_11), then live.
    """
    script.connect(client)
    script.subscribe("sub_a", WATCH_A, client)
    script.subscribe("sub_m", MARKETS, client)
    script.update(10, tick(1), client)
    script.update(11, tick(2, SYMBOLS[1]), client)
    script.live(client)


def test_a_complete_stream_passes():
    script = Script()
    started(script)
    for n in range(12, 20):
        script.update(script.publish(n, event(n)), event(n))
    script.close(by="client")
    script.stop()
    report = script.check()
    assert report.violations == []
    assert report.figures["updates lost"] == 0


def test_one_update_dropped_is_caught():
    script = Script()
    started(script)
    for n in range(12, 20):
        script.publish(n, event(n))
        if n != 15:
            script.update(n, event(n))
    script.close(by="client")
    script.stop()
    (violation,) = script.check().violations
    assert "never received msg_15" in violation


def test_an_update_twice_or_out_of_order_is_caught():
    script = Script()
    started(script)
    for n in (12, 13, 13, 15, 14):
        script.publish(n, event(n))
        script.update(n, event(n))
    violations = script.check().violations
    assert any("msg_13 twice" in v for v in violations)
    assert any("msg_14 after msg_15" in v for v in violations)


def test_recovered_true_over_a_gap_is_caught():
    """
    A reconnect says recovered: true, but the replay skipped an update.
    """
    script = Script()
    started(script)
    script.update(script.publish(12, event(12)), event(12))
    script.close()
    for n in (13, 14, 15):
        script.publish(n, event(n))
    script.connect()
    script.reconnect(12, [{"subscription_id": "sub_a", "status": "resumed", "recovered": True,
                           **WATCH_A},
                          {"subscription_id": "sub_m", "status": "resumed", "recovered": True,
                           **MARKETS}])
    script.update(13, event(13))
    script.update(15, event(15))
    violations = script.check().violations
    assert len(violations) == 1 and "never received msg_14" in violations[0]
    assert "said recovered: true" in violations[0]


def test_recovered_false_allows_the_gap_it_reports():
    """
    recovered: false with the lost range: the updates in it are not owed
    (and a span that lost nothing is counted, not failed).
    """
    script = Script()
    started(script)
    script.update(script.publish(12, event(12)), event(12))
    script.close()
    script.publish(13, event(13))
    script.connect()
    script.reconnect(12, [{"subscription_id": "sub_a", "status": "resumed", "recovered": False,
                           "lost": {"from": "msg_13", "to": "msg_14"}, **WATCH_A},
                          {"subscription_id": "sub_m", "status": "resumed", "recovered": True,
                           **MARKETS}])
    script.update(script.publish(15, event(15)), event(15))
    report = script.check()
    assert report.violations == []
    assert report.figures["recovered %"] == 0.0

    honest = Script()
    started(honest)
    honest.update(honest.publish(12, event(12)), event(12))
    honest.connect()
    honest.reconnect(12, [{"subscription_id": "sub_a", "status": "resumed", "recovered": False,
                           "lost": {"from": "msg_13", "to": "msg_13"}, **WATCH_A}])
    assert honest.check().figures["unrecovered where nothing was missed"] == 1


def test_recovered_true_must_match_its_subscriptions():
    script = Script()
    started(script)
    script.connect()
    script.reconnect(11, [{"subscription_id": "sub_a", "status": "expired"}])
    message = script.history.events[-1]["message"]
    message["data"]["recovered"] = True
    (violation,) = script.check().violations
    assert "reconnect said recovered: True" in violation


def test_an_expired_subscription_is_owed_nothing_until_made_again():
    script = Script()
    started(script)
    script.close()
    script.publish(12, event(12))
    script.connect()
    script.reconnect(11, [{"subscription_id": "sub_a", "status": "expired"},
                          {"subscription_id": "sub_m", "status": "resumed", "recovered": True,
                           **MARKETS}])
    script.subscribe("sub_a2", WATCH_A)
    script.subscribe("sub_m", MARKETS)
    # The current state sent again: a fresh number for an old value.
    script.update(20, tick(2, SYMBOLS[1]))
    script.update(script.publish(21, event(21)), event(21))
    report = script.check()
    assert report.violations == []


def test_current_state_is_not_owed_to_others():
    """
    The current state sent to one client (its own number, an old value)
    is not an update another client missed.
    """
    script = Script()
    script.publish(5, tick(5))
    started(script, "c")
    started(script, "d")
    script.update(30, tick(5), "d")  # d's current state after a later subscribe
    for client in ("c", "d"):
        script.update(script.publish(31, event(31)), event(31), client)
    assert script.check().violations == []


def test_the_same_id_with_other_data_is_caught():
    script = Script()
    started(script)
    script.publish(12, event(12))
    script.update(12, {**event(12), "status": "confirmed"})
    assert any("elsewhere as" in v for v in script.check().violations)


def test_a_status_published_twice_is_caught():
    script = Script()
    started(script)
    for n in (12, 13):
        script.update(script.publish(n, event(n, transaction="0x" + "ab" * 32)),
                      event(n, transaction="0x" + "ab" * 32))
    assert any("published pending 2 times" in v for v in script.check().violations)


# The ledger.


def genesis() -> dict:
    return {(a, t.token_id): t.balance * 10**t.decimals for t in TOKENS for a in SENDERS}


def ledger(*transactions: StoredTransaction) -> LedgerSnapshot:
    balances = {place: (amount, 0) for place, amount in genesis().items()}
    for t in transactions:
        for address, sign in ((t.sender, -1), (t.recipient, 1)):
            amount, pending = balances.get((address, t.token_id), (0, 0))
            if t.status == "confirmed":
                amount += sign * t.amount
            elif sign < 0:
                pending += t.amount
            balances[(address, t.token_id)] = (amount, pending)
    supply = {t.token_id: t.balance * 10**t.decimals * len(SENDERS) for t in TOKENS}
    return LedgerSnapshot(list(transactions), balances, supply, genesis(), [(1, 0.0)])


def stored(n: int, amount: int = 1_000_000, key: str | None = None, sender: str = A,
           status: str = "confirmed") -> StoredTransaction:
    return StoredTransaction(n, f"0x{n:064x}", sender, B, FLT.token_id, amount, status,
                             key or f"s-{n}", 1 if status == "confirmed" else None)


def sent(*ops) -> History:
    """
    A sender's history: for each op (number, replies), one attempt per
    reply (a reply of None: the connection was lost).
    """
    history = History()
    for n, replies in ops:
        request = {"from": A, "to": B, "amount": "1", "token_id": FLT.token_id,
                   "idempotency_key": f"s-{n}"}
        for attempt, reply in enumerate(replies, 1):
            history.record("invoke", sender="s", op=n, attempt=attempt, node="x",
                           request=request)
            if reply is None:
                history.record("lost", sender="s", op=n, attempt=attempt, error="gone")
            elif reply.startswith("0x"):
                history.record("reply", sender="s", op=n, attempt=attempt, message={
                    "type": "transaction_response",
                    "data": {"transaction_id": reply, "status": "pending"}})
            else:
                history.record("reply", sender="s", op=n, attempt=attempt, message={
                    "type": "error", "data": {"code": reply, "message": ""}})
    return history


def tx(n: int) -> str:
    return f"0x{n:064x}"


def test_a_consistent_ledger_passes():
    history = sent((1, [tx(1)]), (2, [None, tx(2)]), (3, ["insufficient_funds"]),
                   (4, ["internal_error", tx(4)]), (5, [None]))
    report = check_ledger(history, ledger(stored(1), stored(2), stored(4)))
    assert report.violations == []
    assert report.figures["acknowledged"] == 3
    assert report.figures["retried"] == 2
    assert report.figures["unknown outcome"] == 1


@pytest.mark.parametrize("snapshot, history, expected", [
    (ledger(stored(1)), sent((1, [tx(1)]), (2, [tx(2)])), "acknowledged as"),
    (ledger(stored(1), attrs.evolve(stored(2), idempotency_key="s-1")), sent((1, [tx(1)])),
     "applied 2 times"),
    (ledger(stored(1)), sent((1, [None, tx(9)])), "not stored"),
    (ledger(stored(1)), sent((1, ["insufficient_funds"])), "refused with insufficient_funds"),
    (ledger(stored(1)), History(), "never sent"),
    (ledger(stored(1, status="pending")), sent((1, [tx(1)])), "never confirmed"),
    (ledger(stored(1, amount=500 * 10**6)), sent((1, [tx(1)])), "overspends"),
], ids=["lost", "twice", "other-id", "refused-applied", "phantom", "pending", "overspend"])
def test_a_broken_ledger_is_caught(snapshot, history, expected):
    violations = check_ledger(history, snapshot).violations
    assert any(expected in v for v in violations), violations


def test_balances_that_do_not_follow_the_transfers_are_caught():
    snapshot = ledger(stored(1))
    amount, pending = snapshot.balances[(B, FLT.token_id)]
    broken = attrs.evolve(snapshot, balances={**snapshot.balances,
                                              (B, FLT.token_id): (amount + 1, pending)})
    violations = check_ledger(sent((1, [tx(1)])), broken).violations
    assert any("confirmed transfers make" in v for v in violations)
    assert any("not its supply" in v for v in violations)
