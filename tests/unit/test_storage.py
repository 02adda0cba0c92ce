"""
Storage: schema creation and upgrade, start-up preparation (genesis, the
demo key, message id reservation) and API key rows.

Tests taking the C{engine} fixture run on SQLite and on a throwaway
PostgreSQL (tests/services.py); those about SQLite files take
C{sqlite_engine}.
"""

import os
import sqlite3
from pathlib import Path

import pytest
from zope.interface.verify import verifyObject

from rustorium.apikeys import hash_key
from rustorium.bootstrap import MESSAGE_ID_BLOCK, create_demo_key, prepare_database
from rustorium.genesis import GenesisError
from rustorium.storage import (
    DatabaseURLError,
    IDatabaseEngine,
    PostgresEngine,
    SchemaError,
    SqliteEngine,
    engine_from_url,
    run_blocking,
)
from rustorium.storage.engines import qmark_to_format
from rustorium.storage.keys import (
    SCOPES,
    find_key,
    find_key_by_id,
    insert_key,
    list_keys,
    revoke_key,
    revoked_among,
)
from rustorium.storage.schema import LATEST_VERSION, current_version, prepare_schema

OLD_SCHEMA = Path(__file__).parents[1] / "data" / "sqlite-only-schema"
"""The schema files as they were before PostgreSQL (SQLite-only SQL)."""
OLD_LATEST = 3
"""The last version the SQLite-only scripts made."""


@pytest.fixture
def sqlite_engine(tmp_path):
    return engine_from_url(f"sqlite:{tmp_path / 'r.db'}")


def query(engine, statement, *params):
    """
    Run one statement on a connection of its own and return its rows.
    """
    def interaction(cursor):
        cursor.execute(statement, params) if params else cursor.execute(statement)
        return cursor.fetchall() if cursor.description else None

    return run_blocking(engine, interaction)


class TestURLs:
    def test_sqlite(self):
        assert engine_from_url("sqlite:r.db") == SqliteEngine("r.db")
        assert engine_from_url("sqlite:///tmp/r.db") == SqliteEngine("/tmp/r.db")

    @pytest.mark.parametrize("url", ["postgresql://u@h:5433/db", "postgres://u@h/db",
                                     "postgresql://u:secret@h/db?sslmode=require"])
    def test_postgresql(self, url):
        engine = engine_from_url(url)
        assert engine == PostgresEngine(url)
        assert "secret" not in engine.location

    @pytest.mark.parametrize(("url", "message"), [
        ("mysql://x", "unsupported scheme 'mysql'"),
        ("rustorium.db", "should look like sqlite:PATH or postgresql://"),
        ("sqlite::memory:", "in-memory"),
        ("postgresql://h/db?nonsense=1", "nonsense"),
    ])
    def test_refused(self, url, message):
        with pytest.raises(DatabaseURLError) as raised:
            engine_from_url(url)
        assert message in str(raised.value)

    def test_both_provide_the_interface(self):
        verifyObject(IDatabaseEngine, SqliteEngine("r.db"))
        verifyObject(IDatabaseEngine, PostgresEngine("postgresql://u@h/db"))


@pytest.mark.parametrize(("written", "sent"), [
    ("SELECT a FROM t WHERE b = ? AND c IN (?, ?)",
     "SELECT a FROM t WHERE b = %s AND c IN (%s, %s)"),
    ("SELECT '?', \"?\" FROM t WHERE x = ?", "SELECT '?', \"?\" FROM t WHERE x = %s"),
    ("SELECT 'it''s ?' WHERE x LIKE '%a' AND y = ?",
     "SELECT 'it''s ?' WHERE x LIKE '%%a' AND y = %s"),
    ("SELECT 5 % ?", "SELECT 5 %% %s"),
])
def test_placeholders_for_postgresql(written, sent):
    assert qmark_to_format(written) == sent


def test_cannot_connect_is_a_clear_error():
    from tests.services import free_port

    engine = engine_from_url(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    with pytest.raises(DatabaseURLError) as raised:
        engine.connect()
    assert "cannot connect" in str(raised.value)


def test_pragmas(sqlite_engine):
    """
    SQLite connections use WAL, fully synchronous commits and foreign keys.
    """
    connection = sqlite_engine.connect()
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    connection.close()


def test_postgresql_commits_are_durable(postgres_server):
    """
    A PostgreSQL connection turns synchronous_commit on if the database says
    off (durability is not the server's default to lose).
    """
    url = postgres_server.fresh_database()
    admin = engine_from_url(url)
    name = url.rpartition("/")[2]
    query(admin, f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    connection = engine_from_url(url).connect()
    assert connection.execute("SHOW synchronous_commit").fetchone() == ("on",)
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


def test_amounts_stay_exact(engine):
    """
    18-decimal supplies (far past 64 bits) read back to the last unit.
    """
    prepared = prepare_database(engine, None)
    assert max(t.total_supply for t in prepared.tokens) >= 10**24
    assert prepared.tokens == prepare_database(engine, None).tokens
    assert sum(prepared.ledger.balances.values()) == sum(t.total_supply for t in prepared.tokens)


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


def test_malformed_genesis_writes_nothing(engine, tmp_path):
    genesis = tmp_path / "g.json"
    genesis.write_text('{"tokens": [{}]}')
    with pytest.raises(GenesisError):
        prepare_database(engine, str(genesis))
    assert query(engine, "SELECT COUNT(*) FROM tokens") == [(0,)]
    assert prepare_database(engine, None).demo_key_due


def test_newer_schema_refused(engine):
    prepare_database(engine, None)
    query(engine, "UPDATE schema_version SET version = 99")
    with pytest.raises(SchemaError) as raised:
        prepare_database(engine, None)
    assert "newer Rustorium" in str(raised.value)


def test_schema_version(engine):
    connection = engine.connect()
    assert current_version(engine, connection.cursor()) is None
    assert prepare_schema(engine, connection) == (None, LATEST_VERSION)
    assert current_version(engine, connection.cursor()) == LATEST_VERSION
    assert prepare_schema(engine, connection) == (LATEST_VERSION, LATEST_VERSION)
    connection.close()


def test_failed_script_leaves_database_unchanged(engine, monkeypatch):
    """
    A schema script that fails half-way leaves no half-made schema.
    """
    import rustorium.storage.schema as schema

    monkeypatch.setattr(schema, "_script",
                        lambda name: "CREATE TABLE a (x INTEGER);\nCREATE TABLE broken (;")
    connection = engine.connect()
    with pytest.raises(engine.module.Error):
        prepare_schema(engine, connection)
    cursor = connection.cursor()
    assert current_version(engine, cursor) is None
    assert not engine.has_table(cursor, "a")
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

    def test_scopes(self, engine):
        """
        A key's scopes are stored as given (client when not given); admin
        allows publishing, but only client allows a WebSocket session.
        """
        prepare_database(engine, None)
        plain = run_blocking(engine, insert_key, hash_key("rk_a"), "app", "now", [])
        feed = run_blocking(engine, insert_key, hash_key("rk_f"), "feed", "now", [],
                            {"publish"})
        both = run_blocking(engine, insert_key, hash_key("rk_c"), "console", "now", [],
                            {"admin", "client"})
        keys = {k.key_id: k for k in run_blocking(engine, list_keys)}
        assert keys[plain].scopes == {"client"}
        assert keys[feed].scopes == {"publish"}
        assert keys[both].scopes == {"admin", "client"}
        assert run_blocking(engine, find_key_by_id, feed) == keys[feed]
        assert run_blocking(engine, find_key_by_id, 999) is None
        assert [keys[feed].allows(s) for s in SCOPES] == [False, True, False]
        assert [keys[both].allows(s) for s in SCOPES] == [True, True, True]
        assert [keys[plain].allows(s) for s in SCOPES] == [True, False, False]
        with pytest.raises(ValueError):
            run_blocking(engine, insert_key, hash_key("rk_x"), "x", "now", [], {"root"})
        with pytest.raises(ValueError):
            run_blocking(engine, insert_key, hash_key("rk_y"), "y", "now", [], set())

    def test_keys_from_before_scopes_are_client_keys(self, sqlite_engine):
        """
        A key made before schema 4 is a client key after the upgrade.
        """
        engine = sqlite_engine
        _old_database(engine.path, upto=OLD_LATEST)
        prepare_database(engine, None)
        (old,) = run_blocking(engine, list_keys)
        assert old.name == "old" and old.scopes == {"client"}

    def test_ids_increase(self, engine):
        prepare_database(engine, None)
        ids = [run_blocking(engine, insert_key, hash_key(f"rk_{n}"), "bot", "now", [])
               for n in range(3)]
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert [k.key_id for k in run_blocking(engine, list_keys)][-3:] == ids

    def test_only_hash_stored(self, sqlite_engine):
        engine = sqlite_engine
        prepare_database(engine, None)
        run_blocking(engine, insert_key, hash_key("rk_secret"), "bot", "now", [])
        for path in (engine.path, engine.path + "-wal"):
            if os.path.exists(path):
                with open(path, "rb") as f:
                    assert b"rk_secret" not in f.read()


def _old_database(path: str, upto: int) -> None:
    """
    An SQLite database as the server released before PostgreSQL made it,
    from its own schema files, at schema C{upto}.
    """
    connection = sqlite3.connect(path)
    connection.executescript((OLD_SCHEMA / "v1.sql").read_text())
    for version in range(1, upto):
        connection.executescript((OLD_SCHEMA / f"upgrade-{version}-to-{version + 1}.sql")
                                 .read_text())
    connection.execute("INSERT INTO api_keys (key_hash, name, created_at) VALUES ('h', 'old', 't')")
    connection.execute(
        "INSERT INTO tokens VALUES ('0x" + "1" * 40 + "', 'T', 'T', 2, '1000', '100000000')"
    )
    connection.execute("INSERT INTO balances (address, token_id, amount) VALUES ('0x"
                       + "2" * 40 + "', '0x" + "1" * 40 + "', '1000')")
    connection.commit()
    connection.close()


def test_upgrade_from_first_schema(sqlite_engine):
    """
    A database written by the first schema (before the ledger) is upgraded
    in place: its keys and balances are kept, a copy of the old file is
    made, and the ledger tables exist.
    """
    engine = sqlite_engine
    _old_database(engine.path, upto=1)
    prepared = prepare_database(engine, None)
    assert not prepared.demo_key_due
    assert [t.symbol for t in prepared.tokens] == ["T"]
    assert prepared.ledger.balances == {("0x" + "2" * 40, "0x" + "1" * 40): 1000}
    connection = engine.connect()
    assert current_version(engine, connection.cursor()) == LATEST_VERSION == 5
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


def _columns(path: str) -> dict:
    """
    Each table's columns as SQLite treats them (name, affinity, not null,
    primary key), and its indexes.
    """
    def affinity(declared: str) -> str:
        # SQLite's rules (https://sqlite.org/datatype3.html, 3.1).
        declared = declared.upper()
        if "INT" in declared:
            return "INTEGER"
        if any(word in declared for word in ("CHAR", "CLOB", "TEXT")):
            return "TEXT"
        if any(word in declared for word in ("REAL", "FLOA", "DOUB")):
            return "REAL"
        return "NUMERIC" if declared else "BLOB"

    connection = sqlite3.connect(path)
    tables = [row[0] for row in connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    shape = {}
    for table in tables:
        info = connection.execute(f"PRAGMA table_info({table})").fetchall()
        keys = sum(1 for *_, pk in info if pk)
        # A lone INTEGER PRIMARY KEY is the rowid itself.
        columns = [(name, affinity(kind), notnull, pk,
                    keys == 1 and pk == 1 and kind.upper() == "INTEGER")
                   for _, name, kind, notnull, _, pk in info]
        indexes = sorted((name, unique, partial) for _, name, unique, _, partial in
                         connection.execute(f"PRAGMA index_list({table})"))
        shape[table] = (columns, indexes)
    connection.close()
    return shape


@pytest.mark.parametrize("upgraded_from", [1, 2])
def test_portable_schema_makes_the_same_sqlite_tables(tmp_path, upgraded_from):
    """
    On SQLite the portable schema makes what the SQLite-only one made:
    the same columns with the same affinities, the same rowid keys and
    indexes; so databases made before it upgrade like any other, and
    those it upgrades end up the same.
    """
    old, new, upgraded = (str(tmp_path / f"{n}.db") for n in ("old", "new", "upgraded"))
    _old_database(old, upto=OLD_LATEST)
    prepare_database(engine_from_url(f"sqlite:{old}"), None)
    prepare_database(engine_from_url(f"sqlite:{new}"), None)
    _old_database(upgraded, upto=upgraded_from)
    prepare_database(engine_from_url(f"sqlite:{upgraded}"), None)
    assert _columns(new) == _columns(old) == _columns(upgraded)


def test_database_from_before_postgresql_keeps_working(sqlite_engine):
    """
    A database at the last schema made by the SQLite-only scripts is
    upgraded and serves as before: start-up, keys, and the ledger's writes.
    """
    from rustorium.storage.ledger import TransactionRow, insert_transactions, write_block

    engine = sqlite_engine
    _old_database(engine.path, upto=OLD_LATEST)
    prepared = prepare_database(engine, None)
    assert not prepared.demo_key_due
    assert os.path.exists(engine.path + f".v{OLD_LATEST}.bak")
    key_id = run_blocking(engine, insert_key, hash_key("rk_new"), "new", "now", [])
    assert key_id == 2
    token, a, b = "0x" + "1" * 40, "0x" + "2" * 40, "0x" + "3" * 40
    row = TransactionRow(1, "0x" + "1" * 64, a, b, token, 10, "pending", key_id, None, 5.5)
    run_blocking(engine, insert_transactions, [row])
    run_blocking(engine, write_block, 1, 6.5, (1, 1), 1, [], {(a, token): 990, (b, token): 10})
    after = prepare_database(engine, None)
    assert after.ledger.balances == {(a, token): 990, (b, token): 10}
    assert after.ledger.last_seq == after.ledger.last_block == 1


class TestLedgerRows:
    def test_round_trip(self, engine):
        """
        Transactions, blocks and balances written by the ledger read back
        as they were, with amounts and times exact.
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
        submitted = 1_700_000_000.123456
        rows = [
            TransactionRow(1, "0x" + "1" * 64, a, b, token, huge, "pending", 1, "k", submitted),
            TransactionRow(2, "0x" + "2" * 64, a, b, token, 5, "pending", 1, None, submitted + 1),
        ]
        run_blocking(engine, insert_transactions, rows)
        snapshot = run_blocking(engine, load_ledger, 0.0)
        assert [r.transaction_id for r in snapshot.pending] == ["0x" + "1" * 64, "0x" + "2" * 64]
        assert snapshot.pending[0].amount == huge
        assert snapshot.pending[0].submitted_at == submitted
        assert [r.idempotency_key for r in snapshot.recent] == ["k"]
        assert snapshot.last_seq == 2
        confirmed_at = submitted + 100
        run_blocking(engine, write_block, 1, confirmed_at, (1, 1), 1, [], {(b, token): huge})
        snapshot = run_blocking(engine, load_ledger, submitted + 50)
        assert [r.seq for r in snapshot.pending] == [2]
        assert snapshot.last_block == 1
        assert snapshot.balances[b, token] == huge
        assert snapshot.confirmed_volume == [(confirmed_at, token, huge)]
        assert snapshot.recent == []
        found = run_blocking(engine, find_transaction, "0x" + "1" * 64)
        assert (found.status, found.block_number, found.confirmed_at) == (
            "confirmed", 1, confirmed_at)
        assert run_blocking(engine, find_transaction, "0x" + "9" * 64) is None

    def test_an_addresss_transactions_newest_first(self, engine):
        """
        An address's transactions, sent or received, newest first, at most
        the limit; others' are not among them.
        """
        from rustorium.storage.ledger import (
            TransactionRow,
            insert_transactions,
            transactions_of,
        )

        prepared = prepare_database(engine, None)
        run_blocking(engine, create_demo_key)
        token = prepared.tokens[0].token_id
        a, b, c = "0x" + "a" * 40, "0x" + "b" * 40, "0x" + "c" * 40
        pairs = [(a, b), (b, a), (c, b), (a, a), (c, c)]
        rows = [TransactionRow(n + 1, f"0x{n + 1:064x}", sender, recipient, token, 1,
                               "pending", 1, None, 1.0)
                for n, (sender, recipient) in enumerate(pairs)]
        run_blocking(engine, insert_transactions, rows)
        assert [r.seq for r in run_blocking(engine, transactions_of, a, 10)] == [4, 2, 1]
        assert [r.seq for r in run_blocking(engine, transactions_of, b, 2)] == [3, 2]
        assert run_blocking(engine, transactions_of, "0x" + "d" * 40, 10) == []

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

    def test_sequence_numbers_past_32_bits(self, engine):
        from rustorium.storage.ledger import TransactionRow, insert_transactions, load_ledger

        prepared = prepare_database(engine, None)
        token = prepared.tokens[0].token_id
        query(engine, "INSERT INTO api_keys (key_id, key_hash, name, created_at) "
                      "VALUES (?, 'h', 'big', 't')", 2**35)
        seq = 2**40
        run_blocking(engine, insert_transactions, [
            TransactionRow(seq, "0x" + "1" * 64, "0x" + "a" * 40, "0x" + "b" * 40, token, 1,
                           "pending", 2**35, None, 1.0)])
        snapshot = run_blocking(engine, load_ledger, 0.0)
        assert snapshot.last_seq == seq
        assert snapshot.pending[0].key_id == 2**35

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
