"""
Database engines: what differs between SQLite and (later) PostgreSQL.

Callers write SQL with ``?`` placeholders and portable types; an engine
opens connections, sets each one up, and converts the placeholder style.
"""

import os
import sqlite3
from typing import Any

import attrs


class DatabaseURLError(ValueError):
    """
    A database URL this server cannot use.
    """


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
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise DatabaseURLError(f"{self.path}: cannot switch to WAL mode (got {mode})")
        connection.execute("PRAGMA synchronous = FULL")
        # A 64 MiB page cache: the transactions table grows all day, and its
        # index pages are touched by every commit and every block.
        connection.execute("PRAGMA cache_size = -65536")

    def sql(self, statement: str) -> str:
        """
        Convert a statement to this engine's placeholder style.
        """
        return statement


def engine_from_url(url: str) -> SqliteEngine:
    """
    Choose the engine for a database URL such as C{sqlite:rustorium.db}.

    @raise DatabaseURLError: for a URL no engine accepts.
    """
    scheme, sep, rest = url.partition(":")
    if not sep or not rest:
        raise DatabaseURLError(f"database URL {url!r} should look like sqlite:PATH")
    if scheme == "sqlite":
        if rest.startswith("///"):
            rest = rest[2:]
        if rest == ":memory:":
            raise DatabaseURLError(
                "an in-memory SQLite database cannot be shared by the server's "
                "connections; give a file path"
            )
        return SqliteEngine(rest)
    raise DatabaseURLError(
        f"database URL {url!r}: unsupported scheme {scheme!r} (supported: sqlite)"
    )
