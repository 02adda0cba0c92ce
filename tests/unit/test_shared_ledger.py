"""
The cluster's ledger, where the database guards the money: on a real
database (SQLite and a throwaway PostgreSQL, one transaction per call, run
at once), with the reactor's clock faked.
"""

import pytest
from twisted.internet.defer import Deferred, fail, succeed

from rustorium.bootstrap import create_demo_key, prepare_database
from rustorium.errors import RequestError
from rustorium.requests import ExecuteTransaction
from rustorium.shared_ledger import PENDING_GRACE, SharedLedger
from rustorium.storage import IDatabaseEngine, engine_from_url, run_blocking
from rustorium.storage.keys import ApiKey
from rustorium.storage.ledger import find_transaction
from rustorium.storage.shared_ledger import (
    ACCEPTED,
    INSUFFICIENT,
    POSTGRESQL,
    SQLITE,
    Transfer,
    accept_transfers,
    read_balance,
    write_next_block,
)
from tests.helpers import ALICE, BOB, MTK, STK, demo_catalog

CAROL = "0x" + "c" * 40
ONE = 10**18


class ImmediateDatabase:
    """
    L{rustorium.storage.Database} run at once: each interaction in one
    transaction on a connection of its own, the result already fired.
    """

    def __init__(self, engine: IDatabaseEngine) -> None:
        self.engine = engine

    def run(self, interaction, *args):
        return succeed(run_blocking(self.engine, interaction, *args))


def dialect(engine):
    return SQLITE if engine.name == "sqlite" else POSTGRESQL


@pytest.fixture
def engine(database_url):
    engine = engine_from_url(database_url)
    prepare_database(engine, None)
    run_blocking(engine, create_demo_key)  # as the service does once listening
    return engine


@pytest.fixture
def announced():
    return []


def make_ledger(engine, clock, announced, block_interval=2.0):
    return SharedLedger(
        demo_catalog(), ImmediateDatabase(engine), dialect(engine), clock,
        lambda rows: announced.extend((r.transaction_id, r.status) for r in rows),
        block_interval,
    )


@pytest.fixture
def ledger(engine, clock, announced):
    return make_ledger(engine, clock, announced)


def alice_key(engine) -> ApiKey:
    """
    The demo key's record (it controls Alice and Bob).
    """
    def read(txn):
        txn.execute("SELECT key_id FROM api_keys")
        return txn.fetchone()[0]

    return ApiKey(run_blocking(engine, read), "demo", frozenset({ALICE, BOB}), "t")


def transfer(amount="1", sender=ALICE, recipient=CAROL, token=MTK, key=None):
    return ExecuteTransaction(sender, recipient, amount, token.token_id, key)


def result(d):
    outcome = []
    d.addBoth(outcome.append)
    assert outcome, "the Deferred has not fired"
    if isinstance(outcome[0], Exception) or hasattr(outcome[0], "value"):
        return outcome[0].value
    return outcome[0]


def test_accepts_a_covered_transfer_and_reserves_it(ledger, engine, clock, announced):
    row = result(ledger.submit(alice_key(engine), transfer("10")))
    assert (row.status, row.amount, row.sender) == ("pending", 10 * ONE, ALICE)
    assert result(ledger.balance(ALICE, MTK.token_id)) == (600_000 * ONE, 599_990 * ONE)
    assert result(ledger.find(row.transaction_id)).status == "pending"
    clock.advance(0)
    assert announced == [(row.transaction_id, "pending")]


def test_refuses_what_the_available_balance_does_not_cover(ledger, engine):
    key = alice_key(engine)
    assert result(ledger.submit(key, transfer("599999"))).status == "pending"
    error = result(ledger.submit(key, transfer("2")))
    assert isinstance(error, RequestError) and error.code == "insufficient_funds"
    assert "available balance of " + ALICE + " is 1 MTK" in error.message


def test_two_nodes_never_overspend_one_address(engine, clock, announced):
    """
    Two ledgers (two nodes) on one database, each with its own memory:
    together they accept no more than the balance.
    """
    key = alice_key(engine)
    first = make_ledger(engine, clock, announced)
    second = make_ledger(engine, clock, announced)
    outcomes = [
        result(node.submit(key, transfer("100000", token=STK)))
        for _ in range(10) for node in (first, second)
    ]
    accepted = [o for o in outcomes if not isinstance(o, Exception)]
    assert len(accepted) == 10, "1,000,000 STK at 100,000 each"
    assert {o.code for o in outcomes if isinstance(o, Exception)} == {"insufficient_funds"}
    assert result(first.balance(ALICE, STK.token_id)) == (10**14, 0)


def test_an_idempotency_key_gives_one_transaction_on_every_node(engine, clock, announced):
    key = alice_key(engine)
    first = make_ledger(engine, clock, announced)
    second = make_ledger(engine, clock, announced)
    one = result(first.submit(key, transfer("5", key="order-1")))
    two = result(second.submit(key, transfer("5", key="order-1")))
    assert one.transaction_id == two.transaction_id
    assert result(first.balance(ALICE, MTK.token_id))[1] == 599_995 * ONE
    error = result(second.submit(key, transfer("6", key="order-1")))
    assert error.code == "invalid_params" and one.transaction_id in error.message


def test_an_idempotency_key_may_be_used_again_after_a_day(ledger, engine, clock):
    key = alice_key(engine)
    one = result(ledger.submit(key, transfer("5", key="k")))
    clock.advance(24 * 3600 + 1)
    two = result(ledger.submit(key, transfer("5", key="k")))
    assert one.transaction_id != two.transaction_id


def test_a_refused_transfer_does_not_use_up_its_idempotency_key(ledger, engine):
    key = alice_key(engine)
    error = result(ledger.submit(key, transfer("700000", key="k")))
    assert error.code == "insufficient_funds"
    assert result(ledger.submit(key, transfer("5", key="k"))).status == "pending"


def test_a_revoked_key_gets_nothing_accepted(ledger, engine):
    key = alice_key(engine)
    run_blocking(engine, lambda txn: txn.execute("UPDATE api_keys SET revoked_at = 'now'"))
    error = result(ledger.submit(key, transfer("1")))
    assert error.code == "forbidden"
    assert result(ledger.balance(ALICE, MTK.token_id)) == (600_000 * ONE, 600_000 * ONE)


def test_a_block_confirms_settled_transfers_in_order(ledger, engine, clock, announced):
    key = alice_key(engine)
    rows = [result(ledger.submit(key, transfer(str(n)))) for n in (1, 2, 3)]
    clock.advance(0)
    assert result(ledger.produce_block()) is None, "younger than the grace period"
    clock.advance(PENDING_GRACE + 0.01)
    late = result(ledger.submit(key, transfer("4", recipient=BOB)))
    assert result(ledger.produce_block()) == 1
    assert announced[-3:] == [(r.transaction_id, "confirmed") for r in rows]
    assert result(ledger.balance(ALICE, MTK.token_id)) == (599_994 * ONE, 599_990 * ONE)
    assert result(ledger.balance(CAROL, MTK.token_id)) == (6 * ONE, 6 * ONE)
    assert ledger.volume_24h(MTK.token_id) == 6 * ONE
    assert ledger.pending_count == 1
    assert result(ledger.find(late.transaction_id)).status == "pending"


def test_a_block_fails_a_transfer_its_confirmed_balance_does_not_cover(
    ledger, engine, clock, announced
):
    """
    The guard behind the reservations: a pending transfer that the sender's
    confirmed balance no longer covers (here made so by hand) is settled
    as failed, moving nothing, while the others of its block confirm.
    """
    key = alice_key(engine)
    covered = result(ledger.submit(key, transfer("1", sender=BOB)))
    uncovered = result(ledger.submit(key, transfer("5")))
    run_blocking(engine, lambda txn: txn.execute(
        "UPDATE balances SET amount = '0' WHERE address = ? AND token_id = ?",
        (ALICE, MTK.token_id)))
    clock.advance(PENDING_GRACE + 0.01)
    assert result(ledger.produce_block()) == 1
    assert announced[-2:] == [(covered.transaction_id, "confirmed"),
                              (uncovered.transaction_id, "failed")]
    stored = result(ledger.find(uncovered.transaction_id))
    assert (stored.status, stored.reason, stored.block_number) == (
        "failed", "insufficient confirmed balance", 1)
    assert result(ledger.find(covered.transaction_id)).status == "confirmed"
    assert result(ledger.balance(ALICE, MTK.token_id)) == (0, 0)
    assert result(ledger.balance(CAROL, MTK.token_id)) == (ONE, ONE)


def test_no_second_block_within_half_an_interval(engine, clock, announced):
    """
    A node that still believes it writes the blocks cannot write one right
    after another node did.
    """
    key = alice_key(engine)
    first = make_ledger(engine, clock, announced)
    second = make_ledger(engine, clock, announced)
    result(first.submit(key, transfer("1")))
    clock.advance(PENDING_GRACE + 0.01)
    assert result(first.produce_block()) == 1
    result(first.submit(key, transfer("1")))
    clock.advance(PENDING_GRACE + 0.01)
    assert result(second.produce_block()) is None
    clock.advance(0.5)
    assert result(second.produce_block()) == 2


def test_a_new_market_node_reads_the_days_volume(engine, clock, announced):
    key = alice_key(engine)
    writer = make_ledger(engine, clock, announced)
    result(writer.submit(key, transfer("7")))
    clock.advance(PENDING_GRACE + 0.01)
    result(writer.produce_block())
    reader = make_ledger(engine, clock, announced)
    assert reader.volume_24h(MTK.token_id) == 0
    result(reader.load_volume())
    assert reader.volume_24h(MTK.token_id) == 7 * ONE


class HeldDatabase(ImmediateDatabase):
    """
    Interactions wait until the test releases them, in order.
    """

    def __init__(self, engine):
        super().__init__(engine)
        self.held = []

    def run(self, interaction, *args):
        d = Deferred()
        self.held.append((d, interaction, args))
        return d

    def release(self):
        while self.held:
            d, interaction, args = self.held.pop(0)
            d.callback(run_blocking(self.engine, interaction, *args))


def test_a_repeat_sent_while_the_first_is_stored_gets_the_same_transaction(
    engine, clock, announced
):
    database = HeldDatabase(engine)
    ledger = SharedLedger(demo_catalog(), database, dialect(engine), clock,
                          lambda rows: None, 2.0)
    key = alice_key(engine)
    first = ledger.submit(key, transfer("5", key="k"))
    again = ledger.submit(key, transfer("5", key="k"))
    with pytest.raises(RequestError, match="being used for another transaction"):
        ledger.submit(key, transfer("6", key="k"))
    assert not first.called and not again.called
    database.release()
    assert result(first).transaction_id == result(again).transaction_id
    assert len(database.held) == 0


def test_a_failed_commit_answers_internal_error(engine, clock, logged_errors):
    class Broken(ImmediateDatabase):
        def run(self, interaction, *args):
            return fail(OSError("disk I/O error"))

    ledger = SharedLedger(demo_catalog(), Broken(engine), dialect(engine), clock,
                          lambda rows: None, 2.0)
    error = result(ledger.submit(alice_key(engine), transfer("1")))
    assert error.code == "internal_error"
    assert [e["log_failure"].type for e in logged_errors] == [OSError]
    logged_errors.clear()


def test_one_batch_of_several_senders_tokens_and_keys(engine):
    """
    One commit's batch mixing senders, tokens, an address without a
    balance and idempotency keys of any text (PostgreSQL takes it in
    array statements, SQLite row by row; a repeated key never shares a
    batch with its first use, L{SharedLedger} holds it back): each
    transfer gets the outcome it would alone, in order, and the block that
    confirms them moves the balances, creating the new recipients' rows.
    """
    key_id = alice_key(engine).key_id
    odd = 'a,b "c" {d} \\e\'f'
    batch = [
        Transfer("0x" + "1" * 64, ALICE, CAROL, MTK.token_id, 5 * ONE, key_id, odd, 1.0),
        Transfer("0x" + "2" * 64, BOB, ALICE, MTK.token_id, 7 * ONE, key_id, None,
                 1767225600.123456),
        Transfer("0x" + "3" * 64, ALICE, BOB, STK.token_id, 3 * 10**8, key_id, "k2", 2.0),
        Transfer("0x" + "4" * 64, CAROL, ALICE, MTK.token_id, 1, key_id, None, 2.5),
        Transfer("0x" + "5" * 64, ALICE, CAROL, STK.token_id, 999_998 * 10**8, key_id, "k3",
                 3.0),
        Transfer("0x" + "6" * 64, BOB, CAROL, MTK.token_id, 400_000 * ONE, key_id, None, 3.5),
    ]
    outcomes = run_blocking(engine, accept_transfers, dialect(engine), batch, 0.0)
    assert [o.kind for o in outcomes] == [ACCEPTED, ACCEPTED, ACCEPTED, INSUFFICIENT,
                                          INSUFFICIENT, INSUFFICIENT]
    rows = [o.row for o in outcomes[:3]]
    assert [r.transaction_id for r in rows] == [t.transaction_id for t in batch[:3]]
    assert rows[0].seq < rows[1].seq < rows[2].seq, "numbered in the batch's order"
    assert (rows[0].idempotency_key, rows[0].submitted_at) == (odd, 1.0)
    assert rows[2].amount == 3 * 10**8
    stored = [run_blocking(engine, find_transaction, r.transaction_id) for r in rows]
    assert stored == rows, "stored as given: keys, amounts and times exact"
    assert outcomes[4].available == 999_997 * 10**8
    assert outcomes[5].available == 399_993 * ONE
    assert run_blocking(engine, read_balance, ALICE, MTK.token_id) == (
        600_000 * ONE, 599_995 * ONE)
    assert run_blocking(engine, read_balance, BOB, MTK.token_id) == (400_000 * ONE, 399_993 * ONE)
    assert run_blocking(engine, read_balance, CAROL, MTK.token_id) == (0, 0)

    block = run_blocking(engine, write_next_block, dialect(engine), 2e9, 2e9, 0.0, 100)
    assert [(r.transaction_id, r.status, r.block_number) for r in block.rows] == [
        (r.transaction_id, "confirmed", 1) for r in rows]
    assert block.volume == {MTK.token_id: 12 * ONE, STK.token_id: 3 * 10**8}
    assert run_blocking(engine, read_balance, ALICE, MTK.token_id) == (
        600_002 * ONE, 600_002 * ONE)
    assert run_blocking(engine, read_balance, BOB, MTK.token_id) == (399_993 * ONE, 399_993 * ONE)
    assert run_blocking(engine, read_balance, CAROL, MTK.token_id) == (5 * ONE, 5 * ONE)
    assert run_blocking(engine, read_balance, BOB, STK.token_id) == (
        20_000_003 * 10**8, 20_000_003 * 10**8)
    assert run_blocking(engine, read_balance, ALICE, STK.token_id) == (
        999_997 * 10**8, 999_997 * 10**8)
    key_free = run_blocking(engine, accept_transfers, dialect(engine), [
        Transfer("0x" + "7" * 64, ALICE, CAROL, STK.token_id, 1, key_id, "k3", 2e9)], 0.0)
    assert key_free[0].kind == ACCEPTED, "the refused transfer left its key unused"
