"""
The throwaway PostgreSQL of tests/services.py: what fault tests rely on.
"""

import psycopg
import pytest

from tests.services import PostgresServer, start_service


def test_fresh_databases_are_isolated(postgres_server):
    first, second = postgres_server.fresh_database(), postgres_server.fresh_database()
    assert first != second
    with psycopg.connect(first) as connection:
        connection.execute("CREATE TABLE t (x INTEGER)")
    with psycopg.connect(second) as connection:
        assert connection.execute("SELECT to_regclass('t')").fetchone() == (None,)


def test_postgres_kill_keeps_commits_and_port():
    """
    A SIGKILLed PostgreSQL comes back on the same URL with every committed
    row and none of an open transaction; stop() disconnects clients rather
    than waiting for them.
    """
    server = start_service(PostgresServer)
    try:
        url = server.fresh_database()
        with psycopg.connect(url) as connection:
            connection.execute("CREATE TABLE t (x INTEGER)")
            connection.execute("INSERT INTO t VALUES (1)")
        open_connection = psycopg.connect(url)
        open_connection.execute("INSERT INTO t VALUES (2)")
        server.kill()
        assert not server.running
        server.restart()
        with psycopg.connect(url) as connection:
            assert connection.execute("SELECT x FROM t").fetchall() == [(1,)]
        idle = psycopg.connect(url)
        server.stop()
        with pytest.raises(psycopg.OperationalError):
            idle.execute("SELECT 1")
        open_connection.close()
        idle.close()
    finally:
        server.cleanup()
