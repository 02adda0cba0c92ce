"""
Storage: schema creation and upgrade, start-up preparation (genesis, the
demo key, message id reservation) and API key rows.
"""

import os
import sqlite3

import pytest

from rustorium.apikeys import hash_key
from rustorium.bootstrap import MESSAGE_ID_BLOCK, create_demo_key, prepare_database
from rustorium.genesis import GenesisError
from rustorium.storage import SchemaError, engine_from_url, run_blocking
from rustorium.storage.keys import find_key, insert_key, list_keys, revoke_key, revoked_among
from rustorium.storage.schema import current_version, prepare_schema


@pytest.fixture
def engine(tmp_path):
    return engine_from_url(f"sqlite:{tmp_path / 'r.db'}")


def test_pragmas(engine):
    """
    Connections use WAL, fully synchronous commits and foreign keys.
    """
    connection = engine.connect()
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    connection.close()


def test_prepare_with_demo_genesis(engine):
    """
    An empty database gets the schema and the demo genesis, and a demo key
    is due (made once the server listens); message ids start at 1.
    """
    prepared = prepare_database(engine, None)
    assert [t.symbol for t in prepared.tokens] == ["MTK", "RST", "STK"]
    assert prepared.demo_key_due
    assert prepared.first_message_id == 1
    assert run_blocking(engine, list_keys) == []


def test_demo_key_made_once(engine):
    """
    The due demo key is bound to the demo addresses and made once; a start
    that never made it (its port taken) leaves it due for the next.
    """
    prepare_database(engine, None)
    assert prepare_database(engine, None).demo_key_due
    demo_key = run_blocking(engine, create_demo_key)
    assert demo_key.startswith("rk_")
    key = run_blocking(engine, find_key, hash_key(demo_key))
    assert key.name == "demo"
    assert len(key.addresses) == 2
    assert run_blocking(engine, create_demo_key) is None
    assert not prepare_database(engine, None).demo_key_due
    assert [k.name for k in run_blocking(engine, list_keys)] == ["demo"]


def test_second_start(engine, tmp_path):
    """
    A later start keeps the chain, prints no key, ignores a genesis file and
    continues message ids above everything reserved before.
    """
    first = prepare_database(engine, None)
    genesis = tmp_path / "other.json"
    genesis.write_text("{}")
    run_blocking(engine, create_demo_key)
    second = prepare_database(engine, str(genesis))
    assert not second.demo_key_due
    assert second.tokens == first.tokens
    assert second.first_message_id == first.message_id_ceiling + 1
    assert second.message_id_ceiling == first.message_id_ceiling + MESSAGE_ID_BLOCK


def test_custom_genesis_creates_no_key(engine, tmp_path):
    genesis = tmp_path / "g.json"
    genesis.write_text(
        '{"tokens": [{"token_id": "0x' + "1" * 40 + '", "name": "T", "symbol": "T",'
        ' "decimals": 2, "total_supply": "10", "price": "1",'
        ' "balances": {"0x' + "2" * 40 + '": "10"}}]}'
    )
    prepared = prepare_database(engine, str(genesis))
    assert not prepared.demo_key_due
    assert [t.symbol for t in prepared.tokens] == ["T"]
    assert run_blocking(engine, create_demo_key) is None
    assert run_blocking(engine, list_keys) == []


def test_malformed_genesis(engine, tmp_path):
    genesis = tmp_path / "g.json"
    genesis.write_text('{"tokens": [{}]}')
    with pytest.raises(GenesisError):
        prepare_database(engine, str(genesis))


def test_newer_schema_refused(engine):
    prepare_database(engine, None)
    connection = sqlite3.connect(engine.path)
    connection.execute("UPDATE schema_version SET version = 99")
    connection.commit()
    connection.close()
    with pytest.raises(SchemaError) as raised:
        prepare_database(engine, None)
    assert "newer Rustorium" in str(raised.value)


def test_failed_script_leaves_database_unchanged(engine, monkeypatch):
    """
    A schema script that fails half-way leaves no half-made schema.
    """
    import rustorium.storage.schema as schema

    monkeypatch.setattr(schema, "_script",
                        lambda name: "CREATE TABLE a (x INTEGER); CREATE TABLE broken (;")
    connection = engine.connect()
    with pytest.raises(sqlite3.OperationalError):
        prepare_schema(connection, engine.path)
    assert current_version(connection) is None
    assert connection.execute("SELECT name FROM sqlite_master").fetchall() == []
    connection.close()


class TestKeys:
    def test_insert_find_revoke(self, engine):
        prepare_database(engine, None)
        key_id = run_blocking(engine, insert_key, hash_key("rk_x"), "bot", "now", ["0x" + "1" * 40])
        found = run_blocking(engine, find_key, hash_key("rk_x"))
        assert found.key_id == key_id
        assert found.addresses == frozenset({"0x" + "1" * 40})
        assert not found.revoked
        assert run_blocking(engine, revoke_key, key_id, "later")
        assert not run_blocking(engine, revoke_key, key_id, "again")
        assert run_blocking(engine, find_key, hash_key("rk_x")).revoked
        assert run_blocking(engine, revoked_among, [key_id, 1, 999]) == {key_id, 999}

    def test_only_hash_stored(self, engine):
        prepare_database(engine, None)
        run_blocking(engine, insert_key, hash_key("rk_secret"), "bot", "now", [])
        for path in (engine.path, engine.path + "-wal"):
            if os.path.exists(path):
                with open(path, "rb") as f:
                    assert b"rk_secret" not in f.read()


def test_upgrade_from_first_schema(engine):
    """
    A database written by the first schema (before the ledger) is upgraded
    in place: its keys and balances are kept, a copy of the old file is
    made, and the ledger tables exist.
    """
    import rustorium.storage.schema as schema

    first = schema._script("v1.sql")
    connection = sqlite3.connect(engine.path)
    connection.executescript(first)
    connection.execute("INSERT INTO api_keys (key_hash, name, created_at) VALUES ('h', 'old', 't')")
    connection.execute(
        "INSERT INTO tokens VALUES ('0x" + "1" * 40 + "', 'T', 'T', 2, '1000', '100000000')"
    )
    connection.execute("INSERT INTO balances VALUES ('0x" + "2" * 40 + "', '0x" + "1" * 40
                       + "', '1000')")
    connection.commit()
    connection.close()

    prepared = prepare_database(engine, None)
    assert not prepared.demo_key_due
    assert [t.symbol for t in prepared.tokens] == ["T"]
    assert prepared.ledger.balances == {("0x" + "2" * 40, "0x" + "1" * 40): 1000}
    connection = engine.connect()
    assert current_version(connection) == schema.LATEST_VERSION == 3
    assert connection.execute("SELECT COUNT(*) FROM transactions").fetchone() == (0,)
    assert connection.execute("SELECT amount, pending_out FROM balances").fetchall() == [
        ("1000", "0")
    ]
    assert connection.execute("SELECT COUNT(*) FROM idempotency_keys").fetchone() == (0,)
    assert connection.execute("SELECT name FROM api_keys").fetchall() == [("old",)]
    connection.close()
    backup = sqlite3.connect(engine.path + ".v1.bak")
    assert backup.execute("SELECT version FROM schema_version").fetchone() == (1,)
    backup.close()


class TestLedgerRows:
    def test_round_trip(self, engine):
        """
        Transactions, blocks and balances written by the ledger read back
        as they were, with amounts exact.
        """
        from rustorium.storage.ledger import (
            TransactionRow,
            find_transaction,
            insert_transactions,
            load_ledger,
            write_block,
        )

        prepared = prepare_database(engine, None)
        run_blocking(engine, create_demo_key)  # key 1, as the service makes it once listening
        token = prepared.tokens[0].token_id
        a, b = "0x" + "a" * 40, "0x" + "b" * 40
        huge = 10**24 + 1
        rows = [
            TransactionRow(1, "0x" + "1" * 64, a, b, token, huge, "pending", 1, "k", 100.0),
            TransactionRow(2, "0x" + "2" * 64, a, b, token, 5, "pending", 1, None, 101.0),
        ]
        run_blocking(engine, insert_transactions, rows)
        snapshot = run_blocking(engine, load_ledger, 0.0)
        assert [r.transaction_id for r in snapshot.pending] == ["0x" + "1" * 64, "0x" + "2" * 64]
        assert snapshot.pending[0].amount == huge
        assert [r.idempotency_key for r in snapshot.recent] == ["k"]
        assert snapshot.last_seq == 2
        run_blocking(engine, write_block, 1, 200.0, (1, 1), 1, [], {(b, token): huge})
        snapshot = run_blocking(engine, load_ledger, 150.0)
        assert [r.seq for r in snapshot.pending] == [2]
        assert snapshot.last_block == 1
        assert snapshot.balances[b, token] == huge
        assert snapshot.confirmed_volume == [(200.0, token, huge)]
        assert snapshot.recent == []
        found = run_blocking(engine, find_transaction, "0x" + "1" * 64)
        assert (found.status, found.block_number, found.confirmed_at) == ("confirmed", 1, 200.0)
        assert run_blocking(engine, find_transaction, "0x" + "9" * 64) is None

    def test_revoked_keys_rows_left_out(self, engine):
        """
        Rows of a revoked key are not stored, in the same transaction as
        the others', and the key's id is returned; rows of live keys are
        stored.
        """
        from rustorium.storage.ledger import TransactionRow, find_transaction, insert_transactions

        prepared = prepare_database(engine, None)
        token = prepared.tokens[0].token_id
        a, b = "0x" + "a" * 40, "0x" + "b" * 40
        live = run_blocking(engine, insert_key, hash_key("rk_live"), "live", "t", [a])
        doomed = run_blocking(engine, insert_key, hash_key("rk_doomed"), "doomed", "t", [a])
        run_blocking(engine, revoke_key, doomed, "t")
        rows = [
            TransactionRow(1, "0x" + "1" * 64, a, b, token, 1, "pending", live, None, 1.0),
            TransactionRow(2, "0x" + "2" * 64, a, b, token, 1, "pending", doomed, None, 1.0),
            TransactionRow(3, "0x" + "3" * 64, a, b, token, 1, "pending", 99, None, 1.0),
        ]
        assert run_blocking(engine, insert_transactions, rows) == {doomed, 99}
        assert run_blocking(engine, find_transaction, "0x" + "1" * 64) is not None
        assert run_blocking(engine, find_transaction, "0x" + "2" * 64) is None
        assert run_blocking(engine, find_transaction, "0x" + "3" * 64) is None
        again = TransactionRow(4, "0x" + "4" * 64, a, b, token, 1, "pending", live, None, 1.0)
        assert run_blocking(engine, insert_transactions, [again]) == set()


def test_message_id_blocks_are_raised_atomically(engine):
    """
    Each call raises the durable ceiling by its count and gets the new
    ceiling: consecutive callers get disjoint blocks above every number
    issued before.
    """
    from rustorium.bootstrap import raise_message_ceiling

    prepared = prepare_database(engine, None)
    first = run_blocking(engine, raise_message_ceiling, 1000)
    second = run_blocking(engine, raise_message_ceiling, 10)
    assert first == prepared.message_id_ceiling + 1000
    assert second == first + 10
