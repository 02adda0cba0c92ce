"""
The throwaway servers of tests/services.py: what fault tests rely on.
"""

import psycopg
import pytest

from tests.services import PostgresServer, RedisServer, start_service


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


def test_redis_kill_and_restart():
    server = start_service(RedisServer)
    try:
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        assert server.command_reply(b"SET", b"k", b"v") == b"+OK\r\n"
        server.kill()
        assert not server.ready()
        server.restart()
        # Nothing is kept on disk.
        assert server.command_reply(b"GET", b"k") == b"$-1\r\n"
    finally:
        server.cleanup()


def test_redis_url_is_emptied_for_each_test(redis_server, redis_url):
    assert redis_server.command_reply(b"DBSIZE") == b":0\r\n"
    redis_server.command_reply(b"SET", b"left", b"behind")
