"""
Faults planted in a copy of a recorded history or ledger, to show the
checker is not blind: each must make it fail.
"""

import attrs

from tests.faults.cluster import LedgerSnapshot, StoredTransaction
from tests.faults.history import History


def _updates_after_resume(history: History) -> list[int]:
    """
    Indexes of the updates a client received right after a C{reconnect}
    that said C{recovered: true} (the first of each such connection).
    """
    found = []
    watching: dict[tuple, bool] = {}
    for index, event in enumerate(history.events):
        if event["kind"] != "received":
            continue
        connection = (event["client"], event["conn"])
        message = event["message"]
        if message["type"] == "reconnect_confirmation" and message["data"]["recovered"]:
            watching[connection] = True
        elif message["type"] == "update" and watching.pop(connection, False):
            found.append(index)
    return found


def drop_replayed_update(history: History) -> History:
    """
    The history with the first update replayed after a recovered
    C{reconnect} removed: as if the replay had skipped it.
    """
    copy = history.copy()
    (index, *_) = _updates_after_resume(copy)
    del copy.events[index]
    return copy


def drop_live_update(history: History, client: str = "client-0") -> History:
    """
    The history with one update in the middle of a client's stream removed.
    """
    copy = history.copy()
    updates = [i for i, e in enumerate(copy.events) if e["kind"] == "received"
               and e["client"] == client and e["message"]["type"] == "update"]
    del copy.events[updates[len(updates) // 2]]
    return copy


def duplicate_update(history: History, client: str = "client-0") -> History:
    """
    The history with one of a client's updates received a second time.
    """
    copy = history.copy()
    updates = [i for i, e in enumerate(copy.events) if e["kind"] == "received"
               and e["client"] == client and e["message"]["type"] == "update"]
    index = updates[len(updates) // 2]
    copy.events.insert(index + 1, dict(copy.events[index]))
    return copy


def swap_updates(history: History, client: str = "client-0") -> History:
    """
    The history with two of a client's updates received in the wrong order.
    """
    copy = history.copy()
    updates = [i for i, e in enumerate(copy.events) if e["kind"] == "received"
               and e["client"] == client and e["message"]["type"] == "update"]
    a, b = updates[len(updates) // 2], updates[len(updates) // 2 + 1]
    copy.events[a], copy.events[b] = copy.events[b], copy.events[a]
    return copy


def apply_twice(ledger: LedgerSnapshot) -> LedgerSnapshot:
    """
    The ledger with one confirmed transfer stored and applied a second time
    under the same idempotency key, balances moved accordingly: what a
    retry that made a new transaction would leave.
    """
    original = next(t for t in ledger.transactions
                    if t.status == "confirmed" and t.idempotency_key)
    again = attrs.evolve(original, seq=max(t.seq for t in ledger.transactions) + 1,
                         transaction_id="0x" + "ee" * 32,
                         block_number=max(t.block_number or 0 for t in ledger.transactions))
    balances = dict(ledger.balances)
    for address, sign in ((original.sender, -1), (original.recipient, 1)):
        amount, pending = balances[(address, original.token_id)]
        balances[(address, original.token_id)] = (amount + sign * original.amount, pending)
    return attrs.evolve(ledger, transactions=[*ledger.transactions, again], balances=balances)


def lose_acknowledged(ledger: LedgerSnapshot, transaction_id: str) -> LedgerSnapshot:
    """
    The ledger without one acknowledged transfer (and its effect).
    """
    gone: StoredTransaction = next(t for t in ledger.transactions
                                   if t.transaction_id == transaction_id)
    balances = dict(ledger.balances)
    for address, sign in ((gone.sender, 1), (gone.recipient, -1)):
        amount, pending = balances[(address, gone.token_id)]
        balances[(address, gone.token_id)] = (amount + sign * gone.amount, pending)
    return attrs.evolve(ledger, transactions=[t for t in ledger.transactions if t is not gone],
                        balances=balances)
