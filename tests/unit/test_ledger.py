"""
The ledger through the session, on a fake clock and an in-memory store:
validation, available-balance accounting, durability before the answer,
ordering, idempotency and blocks.
"""

import pytest

from rustorium.storage.keys import ApiKey
from tests.helpers import (
    ALICE,
    BOB,
    MTK,
    RST,
    STK,
    MemoryLedgerStore,
    make_server,
    open_session,
    send,
)

KEY = ApiKey(1, "alice", frozenset({ALICE}), "2026-01-01T00:00:00.000000Z")
CAROL = "0x" + "c" * 40


@pytest.fixture
def store():
    return MemoryLedgerStore()


@pytest.fixture
def server(clock, store):
    return make_server(clock, store=store, rate_burst=10_000, rate_limit=10_000)


@pytest.fixture
def session(server):
    return open_session(server, KEY)


def transfer(session, request_id="t", amount="1", sender=ALICE, recipient=CAROL,
             token_id=MTK.token_id, **extra):
    data = {"from": sender, "to": recipient, "amount": amount, "token_id": token_id, **extra}
    send(session, {"id": request_id, "type": "execute_transaction", "data": data})


def balance(session, connection, address=ALICE, token_id=MTK.token_id):
    send(session, {"id": "b", "type": "get_balance",
                   "data": {"address": address, "token_id": token_id}})
    replies = [m for m in connection.take() if m["id"] == "b"]
    return replies[-1]["data"]


class TestValidation:
    @pytest.mark.parametrize(
        ("data", "code"),
        [
            ({"amount": "1.5", "token_id": "0x" + "9" * 40}, "not_found"),
            ({"amount": "0"}, "invalid_params"),
            ({"amount": "0.000"}, "invalid_params"),
            ({"amount": "-1"}, "invalid_params"),
            ({"amount": "1e3"}, "invalid_params"),
            ({"amount": 5}, "invalid_params"),
            ({"amount": None}, "invalid_params"),
            ({"amount": ""}, "invalid_params"),
            ({"amount": "0.1234567", "token_id": RST.token_id}, "invalid_params"),
            ({"amount": "1", "from": "0x12"}, "invalid_params"),
            ({"amount": "1", "to": "bob"}, "invalid_params"),
            ({"amount": "1", "to": ALICE}, "invalid_params"),
            ({"amount": "1", "from": BOB}, "forbidden"),
            ({"amount": "600000.000000000000000001"}, "insufficient_funds"),
            ({"amount": "1", "idempotency_key": ""}, "invalid_params"),
            ({"amount": "1", "idempotency_key": "k" * 256}, "invalid_params"),
            ({"amount": "1", "memo": "hi"}, "invalid_params"),
        ],
    )
    def test_refused(self, session, store, data, code):
        """
        Each bad transfer gets its error code, echoing the id, and nothing
        is stored or reserved.
        """
        session, connection = session
        request = {"from": ALICE, "to": CAROL, "token_id": MTK.token_id, **data}
        send(session, {"id": "x", "type": "execute_transaction", "data": request})
        [reply] = connection.take()
        assert reply["type"] == "error"
        assert reply["id"] == "x"
        assert reply["data"]["code"] == code
        assert store.transactions == {}
        assert balance(session, connection)["available"] == "600000"

    def test_missing_field(self, session):
        session, connection = session
        send(session, {"type": "execute_transaction",
                       "data": {"from": ALICE, "to": CAROL, "token_id": MTK.token_id}})
        assert connection.take()[0]["data"]["code"] == "invalid_params"

    def test_exact_full_balance(self, session):
        """
        The whole balance, to the last base unit of an 18-decimal token,
        can be sent.
        """
        session, connection = session
        transfer(session, amount="600000.000000000000000000")
        assert connection.take()[0]["type"] == "transaction_response"
        assert balance(session, connection)["available"] == "0"


class TestAccepted:
    def test_response(self, session, store):
        """
        An accepted transfer is answered with a pending transaction_response
        carrying a 0x + 64 hex id, after it is stored.
        """
        session, connection = session
        transfer(session, amount="1.5")
        [reply] = connection.take()
        assert reply["type"] == "transaction_response"
        assert reply["id"] == "t"
        assert reply["data"]["status"] == "pending"
        transaction_id = reply["data"]["transaction_id"]
        assert len(transaction_id) == 66 and transaction_id.startswith("0x")
        assert int(transaction_id, 16) >= 0
        assert store.transactions[transaction_id].amount == 15 * 10**17

    def test_response_before_pending_update(self, session, clock):
        """
        The client sees its transaction_response before the pending update,
        and a block in the same turn still announces pending first.
        """
        session, connection = session
        send(session, {"type": "subscribe",
                       "data": {"channel": "transaction_updates", "address": ALICE}})
        connection.take()
        transfer(session)
        assert [m["type"] for m in connection.take()] == ["transaction_response"]
        clock.advance(0)
        [update] = connection.take()
        assert update["data"]["status"] == "pending"
        transfer(session)
        session._server.ledger.produce_block()
        messages = connection.take()
        assert messages[0]["type"] == "transaction_response"
        statuses = [m["data"]["status"] for m in messages[1:]]
        assert statuses == ["pending", "confirmed", "confirmed"]

    def test_not_answered_before_commit(self, session, store):
        """
        While the commit is in flight there is no answer; it comes when the
        commit completes.
        """
        session, connection = session
        store.hold = True
        transfer(session)
        assert connection.take() == []
        store.release()
        assert connection.take()[0]["type"] == "transaction_response"

    def test_failed_commit_is_not_accepted(self, session, store, logged_errors):
        """
        If the commit fails, the client gets internal_error and the funds
        are not reserved.
        """
        session, connection = session
        store.hold = True
        transfer(session, amount="100")
        assert balance(session, connection)["available"] == "599900"
        store.fail()
        [reply] = connection.take()
        assert reply["data"]["code"] == "internal_error"
        assert balance(session, connection)["available"] == "600000"
        assert logged_errors
        logged_errors.clear()

    def test_available_balance(self, session, server):
        """
        Pending outflows reduce the available balance at once and the
        confirmed balance only when a block confirms them.
        """
        session, connection = session
        transfer(session, amount="100")
        transfer(session, amount="0.5")
        assert balance(session, connection) == {
            "address": ALICE, "token_id": MTK.token_id,
            "balance": "600000", "available": "599899.5",
        }
        assert balance(session, connection, CAROL)["balance"] == "0"
        server.ledger.produce_block()
        assert balance(session, connection) == {
            "address": ALICE, "token_id": MTK.token_id,
            "balance": "599899.5", "available": "599899.5",
        }
        assert balance(session, connection, CAROL) == {
            "address": CAROL, "token_id": MTK.token_id, "balance": "100.5", "available": "100.5",
        }

    def test_cannot_overspend_with_concurrent_commands(self, session, store):
        """
        Commands racing while commits are in flight can together spend at
        most the balance.
        """
        session, connection = session
        store.hold = True
        for n in range(7):
            transfer(session, request_id=n, amount="100000")
        store.release_all()
        replies = connection.take()
        kinds = [r["type"] for r in replies]
        assert kinds.count("transaction_response") == 6
        assert [r["data"]["code"] for r in replies if r["type"] == "error"] == [
            "insufficient_funds"
        ]

    def test_incoming_funds_count_once_confirmed(self, clock):
        """
        Funds received are available only after their block.
        """
        store = MemoryLedgerStore()
        server = make_server(clock, store=store)
        alice, _ = open_session(server, KEY)
        carol_key = ApiKey(2, "carol", frozenset({CAROL}), "x")
        carol, carol_conn = open_session(server, carol_key)
        transfer(alice, amount="10")
        transfer(carol, amount="1", sender=CAROL, recipient=ALICE)
        assert carol_conn.take()[0]["data"]["code"] == "insufficient_funds"
        server.ledger.produce_block()
        transfer(carol, amount="1", sender=CAROL, recipient=ALICE)
        assert carol_conn.take()[0]["type"] == "transaction_response"


class TestBlocks:
    def test_confirmed_in_submission_order(self, server, store, session):
        session, connection = session
        for n in range(5):
            transfer(session, request_id=n, amount=str(n + 1))
        ids = [r["data"]["transaction_id"] for r in connection.take()]
        assert server.ledger.produce_block().result == 1
        [(number, _, outcomes, balances)] = store.blocks
        assert number == 1
        assert [o[0] for o in outcomes] == ids
        assert all(o[1] == "confirmed" for o in outcomes)
        assert balances[ALICE, MTK.token_id] == (600000 - 15) * 10**18
        assert balances[CAROL, MTK.token_id] == 15 * 10**18

    def test_no_empty_blocks(self, server, store):
        assert server.ledger.produce_block().result is None
        assert store.blocks == []

    def test_one_block_at_a_time(self, server, store, session):
        """
        While a block is being written, no other starts; transactions
        accepted meanwhile go in the next.
        """
        session, _ = session
        transfer(session)
        store.hold = True
        server.ledger.produce_block()
        assert server.ledger.produce_block().result is None
        store.hold = False
        transfer(session, request_id="2")
        store.release()
        assert len(store.blocks) == 1
        assert server.ledger.produce_block().result == 2
        assert len(store.blocks[1][2]) == 1

    def test_failed_block_retried(self, server, store, session, logged_errors):
        session, connection = session
        transfer(session)
        store.hold = True
        server.ledger.produce_block()
        store.fail()
        logged_errors.clear()
        store.hold = False
        assert balance(session, connection)["balance"] == "600000"
        assert server.ledger.produce_block().result == 1
        assert balance(session, connection)["balance"] == "599999"

    def test_updates_to_both_addresses(self, server, clock):
        """
        Subscribers of from and of to see pending, then confirmed with the
        block number.
        """
        alice, alice_conn = open_session(server, KEY)
        watcher, watcher_conn = open_session(server, KEY)
        send(watcher, {"type": "subscribe",
                       "data": {"channel": "transaction_updates", "address": CAROL}})
        send(alice, {"type": "subscribe",
                     "data": {"channel": "transaction_updates", "address": ALICE}})
        alice_conn.take()
        watcher_conn.take()
        transfer(alice, amount="2")
        transaction_id = alice_conn.messages[0]["data"]["transaction_id"]
        clock.advance(2)
        server.ledger.produce_block()
        for connection in (alice_conn, watcher_conn):
            updates = [m["data"] for m in connection.take() if m["type"] == "update"]
            assert [(u["transaction_id"], u["status"]) for u in updates] == [
                (transaction_id, "pending"), (transaction_id, "confirmed")
            ]
            assert updates[0]["channel"] == "transaction_updates"
            assert updates[0]["amount"] == "2"
            assert updates[1]["block_number"] == 1

    def test_both_ends_on_one_connection_once(self, server, clock):
        """
        A connection following both from and to receives each status once,
        under one id, and so does each connection following one end.
        """
        both, both_conn = open_session(server, KEY)
        follower, follower_conn = open_session(server, KEY)
        for address in (ALICE, CAROL):
            send(both, {"type": "subscribe",
                        "data": {"channel": "transaction_updates", "address": address}})
        send(follower, {"type": "subscribe",
                        "data": {"channel": "transaction_updates", "address": CAROL}})
        both_conn.take()
        follower_conn.take()
        transfer(both)
        transaction_id = both_conn.take()[0]["data"]["transaction_id"]
        clock.advance(0)
        server.ledger.produce_block()
        mine = [m for m in both_conn.take() if m["type"] == "update"]
        theirs = [m for m in follower_conn.take() if m["type"] == "update"]
        assert [(m["data"]["transaction_id"], m["data"]["status"]) for m in mine] == [
            (transaction_id, "pending"), (transaction_id, "confirmed")
        ]
        assert [m["id"] for m in theirs] == [m["id"] for m in mine]

    def test_both_ends_replayed_once(self, server, clock):
        """
        Resuming subscriptions of both ends replays each status once, in
        order, with counts that say so.
        """
        old, old_conn = open_session(server, KEY)
        ids = []
        for address in (ALICE, CAROL):
            send(old, {"type": "subscribe",
                       "data": {"channel": "transaction_updates", "address": address}})
            ids.append(old_conn.take()[0]["data"]["subscription_id"])
        old.connection_lost()
        sender, _ = open_session(server, KEY)
        transfer(sender)
        clock.advance(0)
        server.ledger.produce_block()
        _, connection = open_session(server, KEY)
        send(_, {"id": "r", "type": "reconnect", "data": {"subscriptions": ids}})
        confirmation, *replayed = connection.take()
        assert confirmation["data"]["replayed"] == 2
        assert [e["replayed"] for e in confirmation["data"]["subscriptions"]] == [2, 2]
        assert [m["data"]["status"] for m in replayed] == ["pending", "confirmed"]

    def test_volume_feeds_token_updates(self, server, clock, session):
        session, _ = session
        transfer(session, amount="2.5")
        assert server.ledger.volume_24h(MTK.token_id) == 0
        server.ledger.produce_block()
        assert server.ledger.volume_24h(MTK.token_id) == 25 * 10**17
        clock.advance(24 * 3600 + 61)
        assert server.ledger.volume_24h(MTK.token_id) == 0


class TestRevokedKey:
    """
    The store refuses, in the commit itself, the rows of a key revoked
    meanwhile; the ledger then undoes their acceptance.
    """

    def test_refused_at_commit(self, server, session, store):
        """
        A transfer whose key is revoked before its commit is answered
        forbidden, stored nowhere, and its reservation is released.
        """
        session, connection = session
        store.hold = True
        transfer(session, amount="5")
        store.revoked.add(KEY.key_id)
        store.release()
        [reply] = connection.take()
        assert reply["type"] == "error"
        assert reply["data"]["code"] == "forbidden"
        assert "revoked" in reply["data"]["message"]
        assert store.transactions == {}
        assert server.ledger.pending_count == 0
        assert balance(session, connection)["available"] == "600000"
        assert server.ledger.produce_block().result is None

    def test_other_keys_in_the_same_commit_accepted(self, clock, store):
        """
        Rows of other keys sharing the commit are stored and answered.
        """
        server = make_server(clock, store=store)
        bob_key = ApiKey(2, "bob", frozenset({BOB}), "2026-01-01T00:00:00.000000Z")
        alice, alice_conn = open_session(server, KEY)
        bob, bob_conn = open_session(server, bob_key)
        store.hold = True
        transfer(alice, request_id="first")
        transfer(alice, request_id="a")
        transfer(bob, request_id="b", sender=BOB)
        store.release()
        store.revoked.add(KEY.key_id)
        store.release()
        assert [len(c) for c in store.commits] == [1, 1]
        assert [m["type"] for m in alice_conn.take()] == [
            "transaction_response", "error"
        ]
        [accepted] = bob_conn.take()
        assert accepted["type"] == "transaction_response"
        assert [r.key_id for r in store.transactions.values()] == [1, 2]

    def test_idempotency_key_forgotten(self, session, store):
        """
        A repeat waiting for a refused transfer is refused too, and the
        idempotency key is not bound to the refused transfer.
        """
        session, connection = session
        store.hold = True
        transfer(session, request_id="1", idempotency_key="k")
        transfer(session, request_id="2", idempotency_key="k")
        store.revoked.add(KEY.key_id)
        store.release()
        assert sorted((m["id"], m["data"]["code"]) for m in connection.take()) == [
            ("1", "forbidden"), ("2", "forbidden")
        ]
        store.revoked.clear()
        store.hold = False
        transfer(session, request_id="3", idempotency_key="k")
        assert connection.take()[0]["type"] == "transaction_response"


class TestGetTransaction:
    def test_lifecycle(self, server, session, clock):
        session, connection = session
        transfer(session, amount="3")
        transaction_id = connection.take()[0]["data"]["transaction_id"]
        send(session, {"id": "g", "type": "get_transaction",
                       "data": {"transaction_id": transaction_id.upper().replace("0X", "0x")}})
        [reply] = connection.take()
        assert reply["type"] == "transaction"
        assert reply["data"] == {
            "transaction_id": transaction_id, "from": ALICE, "to": CAROL, "amount": "3",
            "token_id": MTK.token_id, "status": "pending", "block_number": None,
            "timestamp": "2023-11-14T22:13:20.000000Z",
        }
        server.ledger.produce_block()
        send(session, {"id": "g", "type": "get_transaction",
                       "data": {"transaction_id": transaction_id}})
        data = connection.take()[0]["data"]
        assert data["status"] == "confirmed"
        assert data["block_number"] == 1

    @pytest.mark.parametrize(("value", "code"), [("0x" + "0" * 64, "not_found"),
                                                  ("0x1234", "invalid_params")])
    def test_errors(self, session, value, code):
        session, connection = session
        send(session, {"type": "get_transaction", "data": {"transaction_id": value}})
        assert connection.take()[0]["data"]["code"] == code

    def test_get_balance_errors(self, session):
        session, connection = session
        send(session, {"type": "get_balance",
                       "data": {"address": ALICE, "token_id": "0x" + "7" * 40}})
        assert connection.take()[0]["data"]["code"] == "not_found"
        send(session, {"type": "get_balance", "data": {"address": "me", "token_id": STK.token_id}})
        assert connection.take()[0]["data"]["code"] == "invalid_params"


class TestIdempotency:
    def test_repeat_returns_first(self, session, store):
        session, connection = session
        transfer(session, request_id=1, amount="5", idempotency_key="order-1")
        transfer(session, request_id=2, amount="5", idempotency_key="order-1")
        first, second = connection.take()
        assert second["id"] == 2
        assert second["data"] == first["data"]
        assert len(store.transactions) == 1
        assert balance(session, connection)["available"] == "599995"

    def test_repeat_after_confirmation_reports_status(self, server, session):
        session, connection = session
        transfer(session, amount="5", idempotency_key="order-1")
        first = connection.take()[0]["data"]
        server.ledger.produce_block()
        transfer(session, amount="5", idempotency_key="order-1")
        assert connection.take()[0]["data"] == {
            "transaction_id": first["transaction_id"], "status": "confirmed"
        }

    def test_repeat_while_first_commits(self, session, store):
        """
        A repeat arriving before the first is stored is answered, with the
        same transaction, once it is.
        """
        session, connection = session
        store.hold = True
        transfer(session, request_id=1, amount="5", idempotency_key="k")
        transfer(session, request_id=2, amount="5", idempotency_key="k")
        assert connection.take() == []
        store.release()
        first, second = connection.take()
        assert first["data"]["transaction_id"] == second["data"]["transaction_id"]
        assert len(store.transactions) == 1

    def test_repeat_with_other_parameters(self, session):
        session, connection = session
        transfer(session, amount="5", idempotency_key="k")
        transfer(session, request_id="again", amount="6", idempotency_key="k")
        reply = connection.take()[-1]
        assert reply["id"] == "again"
        assert reply["data"]["code"] == "invalid_params"
        assert "already used" in reply["data"]["message"]

    def test_keys_are_per_api_key(self, clock, store):
        server = make_server(clock, store=store)
        a, a_conn = open_session(server, KEY)
        b, b_conn = open_session(server, ApiKey(2, "bob", frozenset({BOB}), "x"))
        transfer(a, amount="1", idempotency_key="same")
        transfer(b, amount="1", sender=BOB, idempotency_key="same")
        assert a_conn.take()[0]["type"] == b_conn.take()[0]["type"] == "transaction_response"
        assert len(store.transactions) == 2

    def test_repeat_of_failed_commit_may_retry(self, session, store, logged_errors):
        session, connection = session
        store.hold = True
        transfer(session, amount="5", idempotency_key="k")
        store.fail()
        logged_errors.clear()
        store.hold = False
        transfer(session, amount="5", idempotency_key="k")
        assert [r["type"] for r in connection.take()] == ["error", "transaction_response"]
        assert len(store.transactions) == 1

    def test_keys_expire_after_a_day(self, session, clock, store):
        session, connection = session
        transfer(session, amount="5", idempotency_key="k")
        clock.advance(24 * 3600 + 1)
        transfer(session, amount="5", idempotency_key="k")
        first, second = connection.take()
        assert first["data"]["transaction_id"] != second["data"]["transaction_id"]


class TestGroupCommit:
    def test_concurrent_transactions_share_commits(self, session, store):
        """
        Transactions accepted while a commit is in flight share the next
        commit.
        """
        session, connection = session
        store.hold = True
        for n in range(50):
            transfer(session, request_id=n)
        store.release()
        store.release()
        assert [len(c) for c in store.commits] == [1, 49]
        assert len(connection.take()) == 50

    def test_batch_limit(self, clock):
        store = MemoryLedgerStore()
        server = make_server(clock, store=store, commit_batch=1, rate_burst=100)
        session, _ = open_session(server, KEY)
        store.hold = True
        for n in range(3):
            transfer(session, request_id=n)
        store.release_all()
        assert [len(c) for c in store.commits] == [1, 1, 1]


def test_failed_commit_after_a_day_in_flight(clock, logged_errors):
    """
    An idempotency key whose first use is still being stored a day later
    does not expire: the repeat waits for it, and when the commit fails
    both are told, and nothing else is disturbed. (Found by the property
    test.)
    """
    store = MemoryLedgerStore()
    server = make_server(clock, store=store, rate_burst=100)
    session, connection = open_session(server, KEY)
    store.hold = True
    transfer(session, amount="1", idempotency_key="k")
    clock.advance(24 * 3600 + 1)
    transfer(session, request_id="again", amount="1", idempotency_key="k")
    store.fail()
    replies = connection.take()
    assert sorted((r["id"], r["data"]["code"]) for r in replies) == [
        ("again", "internal_error"), ("t", "internal_error")
    ]
    logged_errors.clear()
    store.hold = False
    transfer(session, request_id="later", amount="1", idempotency_key="k")
    assert connection.take()[0]["type"] == "transaction_response"
