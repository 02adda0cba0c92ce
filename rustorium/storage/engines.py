"""
Database engines: what differs between SQLite and PostgreSQL.

Callers write SQL with ``?`` placeholders and portable types; an engine
opens connections, sets each one up, converts the placeholder style, spells
the few column types that differ (L{IDatabaseEngine.column_types}), and
provides the lock that lets one process at a time create the schema and
write the genesis.
"""

import os
import re
import sqlite3
import time
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs
from zope.interface import Attribute, Interface, implementer

WAL_ATTEMPTS = 100
"""Tries at switching a new SQLite database to WAL mode, 50 ms apart."""


class DatabaseURLError(ValueError):
    """
    A database URL this server cannot use.
    """


class IDatabaseEngine(Interface):
    """
    One kind of database, as the storage layer uses it.
    """

    name = Attribute("The engine's name: C{sqlite} or C{postgresql}.")
    module = Attribute("The DB-API 2 module, for C{adbapi.ConnectionPool}.")
    location = Attribute("Where the data is, for messages: a file, or a URL without password.")
    column_types = Attribute(
        "How this engine spells the column types the schema scripts name in braces: "
        "id_key (a 64-bit primary key the database assigns), int_key (a 64-bit "
        "primary key the server assigns) and amount (an exact integer of up to 78 "
        "digits)."
    )

    def pool_kwargs() -> dict[str, Any]:
        """
        Arguments for C{adbapi.ConnectionPool} (connection arguments and
        C{cp_*} options).
        """

    def connect() -> Any:
        """
        Open a connection outside the pool (start-up and the key command),
        set up by L{on_connect}.
        """

    def on_connect(connection: Any) -> None:
        """
        Set up every new connection.
        """

    def sql(statement: str) -> str:
        """
        Convert a statement written with C{?} placeholders to this engine's
        placeholder style.
        """

    def begin_exclusive(cursor: Any) -> None:
        """
        Begin a transaction that holds, until it ends, the lock that
        serialises start-up work (schema, genesis) between processes.
        """

    def has_table(cursor: Any, name: str) -> bool:
        """
        Whether the database has a table of this name.
        """

    def backup(connection: Any, version: int) -> str | None:
        """
        Copy the database aside before upgrading it from C{version}; return
        where, or C{None} if this engine leaves backups to the operator.
        """


@implementer(IDatabaseEngine)
@attrs.frozen
class SqliteEngine:
    """
    SQLite in a file, in WAL mode with fully synchronous commits.

    Commits are durable across application and OS crashes:
    C{synchronous=FULL} fsyncs the write-ahead log on every commit.
    """

    path: str
    module: Any = sqlite3
    name = "sqlite"
    column_types = {
        # INTEGER PRIMARY KEY is the rowid (64-bit, assigned when not given):
        # no second index beside the table.
        "id_key": "INTEGER PRIMARY KEY",
        "int_key": "INTEGER PRIMARY KEY",
        # TEXT keeps every digit: a NUMERIC column would turn integers past
        # 64 bits into floats.
        "amount": "TEXT",
    }

    @property
    def location(self) -> str:
        return self.path

    def pool_kwargs(self) -> dict[str, Any]:
        """
        Arguments for C{adbapi.ConnectionPool}: one connection, because
        SQLite allows one writer at a time.
        """
        return {
            "database": self.path,
            "check_same_thread": False,
            "cp_min": 1,
            "cp_max": 1,
            "timeout": 30,
        }

    def connect(self) -> sqlite3.Connection:
        """
        Open a connection outside the pool (start-up and the key command).
        """
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise DatabaseURLError(f"{self.path}: directory {directory} does not exist")
        connection = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
        self.on_connect(connection)
        return connection

    def on_connect(self, connection: sqlite3.Connection) -> None:
        """
        Set up every new connection: WAL, durable commits, foreign keys.
        """
        connection.execute("PRAGMA foreign_keys = ON")
        connection.execute("PRAGMA busy_timeout = 30000")
        mode = self._enter_wal(connection)
        if mode.lower() != "wal":
            raise DatabaseURLError(f"{self.path}: cannot switch to WAL mode (got {mode})")
        connection.execute("PRAGMA synchronous = FULL")
        # A 64 MiB page cache: the transactions table grows all day, and its
        # index pages are touched by every commit and every block.
        connection.execute("PRAGMA cache_size = -65536")

    @staticmethod
    def _enter_wal(connection: sqlite3.Connection) -> str:
        """
        Switch to WAL mode. Switching a new database needs it to oneself, and
        SQLite answers "database is locked" at once, without its busy
        timeout, while another process switches it or creates the schema:
        try again for a few seconds.
        """
        for attempt in range(WAL_ATTEMPTS):
            try:
                return connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or attempt == WAL_ATTEMPTS - 1:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")

    def sql(self, statement: str) -> str:
        """
        Convert a statement to this engine's placeholder style.
        """
        return statement

    def begin_exclusive(self, cursor: sqlite3.Cursor) -> None:
        """
        C{BEGIN IMMEDIATE}: the database's write lock, taken at once (waiting
        up to the busy timeout), so what is read next is not changed by
        another process before this transaction ends.
        """
        cursor.execute("BEGIN IMMEDIATE")

    def has_table(self, cursor: sqlite3.Cursor, name: str) -> bool:
        cursor.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return cursor.fetchone() is not None

    def backup(self, connection: sqlite3.Connection, version: int) -> str:
        """
        Copy the file to C{PATH.v<version>.bak}, consistently, with SQLite's
        backup API; from a connection of its own, which reads what this
        one's open transaction has not changed yet (the same connection's
        backup would wait for that transaction to end).
        """
        target_path = f"{self.path}.v{version}.bak"
        source = sqlite3.connect(self.path, timeout=30)
        target = sqlite3.connect(target_path)
        try:
            source.backup(target)
        finally:
            target.close()
            source.close()
        return target_path


# The advisory lock serialising start-up work on PostgreSQL: any 64-bit
# number, the same in every node ("rustoriu" in ASCII).
STARTUP_LOCK = 0x7275_7374_6F72_6975


@lru_cache(maxsize=1024)
def qmark_to_format(statement: str) -> str:
    """
    Rewrite C{?} placeholders as psycopg's C{%s} outside quoted literals and
    identifiers, and every C{%} as C{%%} (psycopg reads the whole statement).
    The storage layer's statements have no comments, where a quote would
    mislead this.
    """
    out = []
    quote = None
    for char in statement:
        if quote is not None:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "?":
            out.append("%s")
            continue
        if char == "%":
            out.append("%%")
            continue
        out.append(char)
    return "".join(out)


def _qmark_cursor(psycopg: Any) -> type:
    """
    A psycopg cursor taking C{?} placeholders, so the storage functions'
    SQL runs unchanged on both engines (adbapi hands them the connection's
    own cursors).
    """

    class QmarkCursor(psycopg.Cursor):
        def execute(self, query, params=None, **kwargs):
            # Without parameters psycopg sends the statement as it is.
            if params is not None:
                query = qmark_to_format(query)
            return super().execute(query, params, **kwargs)

        def executemany(self, query, params_seq, **kwargs):
            return super().executemany(qmark_to_format(query), params_seq, **kwargs)

    return QmarkCursor


@lru_cache(maxsize=1)
def _psycopg() -> tuple[Any, type]:
    try:
        import psycopg
    except ImportError as e:
        raise DatabaseURLError(
            f"PostgreSQL needs psycopg and the libpq library ({e}): install libpq "
            "(Debian: apt-get install libpq5) or pip install 'psycopg[binary]'"
        ) from None
    return psycopg, _qmark_cursor(psycopg)


@implementer(IDatabaseEngine)
@attrs.frozen
class PostgresEngine:
    """
    A PostgreSQL database, through psycopg 3 (whose sync connections are
    DB-API 2) in C{adbapi}'s threads, as SQLite is.

    Every node of a cluster uses the same database; each node's pool holds
    a few connections, so key checks need not queue behind a block's write.
    A connection found broken is replaced (C{cp_reconnect}); the
    interaction that found it fails.

    @ivar url: a libpq URL, C{postgresql://USER[:PASSWORD]@HOST[:PORT]/DB}
        (with libpq's query parameters, such as C{sslmode}).
    """

    url: str
    pool_size: int = 4
    name = "postgresql"
    column_types = {
        "id_key": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
        "int_key": "BIGINT PRIMARY KEY",
        # Exact, checked, and numeric in SQL (the database can compare and
        # add balances): 78 digits hold any 256-bit amount.
        "amount": "NUMERIC(78, 0)",
    }

    @property
    def module(self) -> Any:
        return _psycopg()[0]

    @property
    def location(self) -> str:
        """
        The URL without its password.
        """
        parts = urlsplit(self.url)
        if parts.password is None:
            return self.url
        netloc = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))

    def _connect_kwargs(self) -> dict[str, Any]:
        psycopg, cursor = _psycopg()
        kwargs: dict[str, Any] = {"conninfo": self.url, "cursor_factory": cursor}
        given = psycopg.conninfo.conninfo_to_dict(self.url)
        kwargs.setdefault("application_name", given.get("application_name", "rustorium"))
        kwargs.setdefault("connect_timeout", given.get("connect_timeout", 10))
        return kwargs

    def pool_kwargs(self) -> dict[str, Any]:
        """
        Arguments for C{adbapi.ConnectionPool}: a few connections, replaced
        when found broken.
        """
        return dict(self._connect_kwargs(), cp_min=1, cp_max=self.pool_size, cp_reconnect=True)

    def connect(self) -> Any:
        """
        Open a connection outside the pool (start-up and the key command).
        """
        psycopg = self.module
        try:
            connection = psycopg.connect(**self._connect_kwargs())
        except psycopg.OperationalError as e:
            raise DatabaseURLError(f"{self.location}: cannot connect: {e}") from None
        self.on_connect(connection)
        return connection

    def on_connect(self, connection: Any) -> None:
        """
        Make commits durable: a server configured with
        C{synchronous_commit = off} would acknowledge commits it may lose,
        so this connection turns it on (stronger settings are kept).
        """
        cursor = connection.cursor()
        cursor.execute("SHOW synchronous_commit")
        if cursor.fetchone()[0] == "off":
            cursor.execute("SET synchronous_commit = on")
        cursor.close()
        # SET in a transaction that is rolled back would be undone.
        connection.commit()

    def sql(self, statement: str) -> str:
        """
        Convert C{?} placeholders to C{%s} (cached: the storage layer uses
        a few dozen statements).
        """
        return qmark_to_format(statement)

    def begin_exclusive(self, cursor: Any) -> None:
        """
        Take the start-up advisory lock for this transaction: one node at a
        time creates or upgrades the schema or writes the genesis; the others
        wait, then find the work done.
        """
        cursor.execute("SELECT pg_advisory_xact_lock(?)", (STARTUP_LOCK,))

    def has_table(self, cursor: Any, name: str) -> bool:
        cursor.execute("SELECT to_regclass(?) IS NOT NULL", (name,))
        return bool(cursor.fetchone()[0])

    def backup(self, connection: Any, version: int) -> None:
        """
        None: an upgrade runs in one transaction, so a failed one leaves the
        database as it was; copies are the operator's (pg_dump).
        """
        return None


_URL_SHAPES = "sqlite:PATH or postgresql://USER@HOST:PORT/DATABASE"
_POSTGRES_URL = re.compile(r"^postgres(ql)?://", re.IGNORECASE)


def engine_from_url(url: str) -> SqliteEngine | PostgresEngine:
    """
    Choose the engine for a database URL such as C{sqlite:rustorium.db} or
    C{postgresql://rustorium@db.example:5432/rustorium} (also C{postgres://}).

    @raise DatabaseURLError: for a URL no engine accepts.
    """
    scheme, sep, rest = url.partition(":")
    if not sep or not rest:
        raise DatabaseURLError(f"database URL {url!r} should look like {_URL_SHAPES}")
    if scheme == "sqlite":
        if rest.startswith("///"):
            rest = rest[2:]
        if rest == ":memory:":
            raise DatabaseURLError(
                "an in-memory SQLite database cannot be shared by the server's "
                "connections; give a file path"
            )
        return SqliteEngine(rest)
    if _POSTGRES_URL.match(url):
        psycopg, _ = _psycopg()
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as e:
            raise DatabaseURLError(f"database URL: {e}") from None
        return PostgresEngine(url)
    raise DatabaseURLError(
        f"database URL {url!r}: unsupported scheme {scheme!r} (supported: sqlite, postgresql)"
    )
