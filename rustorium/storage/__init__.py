"""
Storage: the database behind the server, through C{twisted.enterprise.adbapi}.

The running server reaches the database only through L{Database.run}, which
runs a function of one cursor in the pool's thread inside one transaction.
Start-up and the C{rustorium keys} command use L{run_blocking} with the
same functions. Query functions (C{storage.keys}, C{storage.chain},
C{storage.meta}, C{storage.ledger}) take that cursor as their first argument
and write portable SQL with C{?} placeholders, so they run unchanged on
SQLite and PostgreSQL (L{engines}).
"""

from collections.abc import Callable
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

from .engines import (
    DatabaseURLError,
    IDatabaseEngine,
    PostgresEngine,
    SqliteEngine,
    engine_from_url,
)
from .schema import SchemaError, prepare_schema

__all__ = [
    "Database",
    "DatabaseURLError",
    "IDatabaseEngine",
    "PostgresEngine",
    "SchemaError",
    "SqliteEngine",
    "engine_from_url",
    "prepare_schema",
    "run_blocking",
]

T = TypeVar("T")


class Database:
    """
    The running server's database connection pool.
    """

    def __init__(self, engine: IDatabaseEngine, reactor: Any) -> None:
        self.engine = engine
        self._pool = adbapi.ConnectionPool(
            engine.module.__name__,
            cp_reactor=reactor,
            cp_openfun=engine.on_connect,
            **engine.pool_kwargs(),
        )

    def run(self, interaction: Callable[..., T], *args: Any, **kwargs: Any) -> "Deferred[T]":
        """
        Run C{interaction(cursor, *args, **kwargs)} in one transaction in the
        database thread; the Deferred fires with its result once committed.
        """
        return self._pool.runInteraction(interaction, *args, **kwargs)

    def close(self) -> None:
        """
        Close the pool's connections and stop its thread.
        """
        if self._pool.running:
            self._pool.close()


def run_blocking(engine: IDatabaseEngine, interaction: Callable[..., T], *args: Any) -> T:
    """
    Run C{interaction(cursor, *args)} in one transaction on a connection of
    its own, blocking; for start-up and the command line, never for the
    running server.
    """
    connection = engine.connect()
    try:
        cursor = connection.cursor()
        try:
            result = interaction(cursor, *args)
        except BaseException:
            connection.rollback()
            raise
        connection.commit()
        return result
    finally:
        connection.close()
