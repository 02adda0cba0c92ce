"""
PostgreSQL for real: several processes initialising one empty database at
once, the server on PostgreSQL end to end, and the pool across a database
restart. Each test has a throwaway server's fresh database
(tests/services.py).
"""

import json
import subprocess
import sys
import time

import pytest
import pytest_twisted

from rustorium.bootstrap import MESSAGE_ID_BLOCK
from rustorium.storage import Database, engine_from_url, run_blocking
from tests.integration.client import Client
from tests.integration.conftest import BIN, environment
from tests.services import PostgresServer, start_service

ALICE = "0xa11ce00000000000000000000000000000000001"
CAROL = "0x" + "c" * 40
MTK = "0x00000000000000000000000000000000004d544b"

_PREPARE = """
import json, os, sys, time
from rustorium.bootstrap import create_demo_key, prepare_database
from rustorium.storage import engine_from_url, run_blocking
url, ready, go = sys.argv[1:]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
engine = engine_from_url(url)
prepared = prepare_database(engine, None)
# As the service does once listening.
key = run_blocking(engine, create_demo_key) if prepared.demo_key_due else None
print(json.dumps([key, prepared.first_message_id, prepared.message_id_ceiling]))
"""


def _count(engine, table: str) -> int:
    def count(cursor):
        cursor.execute(f"SELECT COUNT(*) FROM {table}")
        return cursor.fetchone()[0]

    return run_blocking(engine, count)


def test_nodes_starting_together_initialise_once(database_url, tmp_path):
    """
    Four processes preparing one empty database at the same moment: the
    schema is made once, one of them writes the genesis, one makes the demo
    key, and each reserves a message id range of its own.
    """
    processes = []
    for n in range(4):
        processes.append(subprocess.Popen(
            [sys.executable, "-c", _PREPARE, database_url, str(tmp_path / f"ready-{n}"),
             str(tmp_path / "go")],
            env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        ))
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{n}").exists() for n in range(4)):
        assert time.monotonic() < deadline, [p.poll() for p in processes]
        time.sleep(0.01)
    (tmp_path / "go").touch()
    results = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err.decode()
        results.append(json.loads(out.decode().splitlines()[-1]))

    keys = [key for key, _, _ in results if key is not None]
    assert len(keys) == 1
    ranges = sorted((first, ceiling) for _, first, ceiling in results)
    assert ranges == [(n * MESSAGE_ID_BLOCK + 1, (n + 1) * MESSAGE_ID_BLOCK) for n in range(4)]
    engine = engine_from_url(database_url)
    assert _count(engine, "api_keys") == 1
    assert _count(engine, "tokens") == 3
    assert _count(engine, "schema_version") == 1


def test_server_on_postgresql(start_server, postgres_url):
    """
    twistd serves from PostgreSQL: the demo key and a key made with
    ``rustorium keys`` authenticate, token info and balances come from the
    database, a transfer is confirmed by a block, and all of it is there
    after a restart; a revoked key is refused.
    """
    server = start_server("--block-interval", "0.3", database=postgres_url)
    demo = server.demo_key()
    created = server.create_key("--name", "bot", "--address", CAROL)
    with Client(server.url, demo) as client:
        info = client.request("get_token_info", {"token_id": MTK})
        assert info["data"]["symbol"] == "MTK"
        assert info["data"]["total_supply"] == "1000000"
        client.request("subscribe", {"channel": "transaction_updates", "address": CAROL})
        reply = client.request("execute_transaction",
                               {"from": ALICE, "to": CAROL, "amount": "12.5", "token_id": MTK})
        assert reply["data"]["status"] == "pending"
        transaction_id = reply["data"]["transaction_id"]
        client.until(lambda m: m["type"] == "update" and m["data"]["status"] == "confirmed")
    server.stop()

    server = start_server("--block-interval", "0.3", database=postgres_url)
    with Client(server.url, created) as client:
        balance = client.request("get_balance", {"address": CAROL, "token_id": MTK})
        assert balance["data"]["balance"] == "12.5"
        found = client.request("get_transaction", {"transaction_id": transaction_id})
        assert found["data"]["status"] == "confirmed"
        back = client.request("execute_transaction",
                              {"from": CAROL, "to": ALICE, "amount": "0.5", "token_id": MTK})
        assert back["data"]["status"] == "pending"
    listing = subprocess.run(
        [str(BIN / "rustorium"), "keys", "list", "--database", postgres_url],
        env=environment(), capture_output=True, check=True,
    ).stdout.decode()
    assert "demo" in listing and "bot" in listing
    subprocess.run(
        [str(BIN / "rustorium"), "keys", "revoke", "--database", postgres_url, "2"],
        env=environment(), capture_output=True, check=True,
    )
    with pytest.raises(Exception, match="401"):
        Client(server.url, created)


@pytest.fixture
def own_postgres():
    """
    A PostgreSQL of this test's own, to stop and restart.
    """
    server = start_service(PostgresServer)
    yield server
    server.cleanup()


@pytest_twisted.ensureDeferred
async def test_pool_reconnects_after_database_restart(own_postgres, logged_errors):
    """
    After PostgreSQL restarts, the interaction that finds a pooled
    connection broken fails, and the pool replaces it: the next succeeds.
    """
    from twisted.internet import reactor

    engine = engine_from_url(own_postgres.fresh_database())
    database = Database(engine, reactor)

    def select(cursor):
        cursor.execute("SELECT ?", (1,))
        return cursor.fetchone()[0]

    try:
        assert await database.run(select) == 1
        own_postgres.restart()
        with pytest.raises(engine.module.OperationalError):
            await database.run(select)
        # adbapi logs the failed rollback on the broken connection.
        assert logged_errors and all("Rollback failed" in str(e.get("why")) for e in logged_errors)
        logged_errors.clear()
        assert await database.run(select) == 1
    finally:
        database.close()


def test_server_across_a_database_crash(start_server, own_postgres):
    """
    While PostgreSQL is down, a transfer is refused at once with
    internal_error (not left hanging, not acknowledged); once it is back,
    the pool replaces its broken connections and transfers are accepted
    and confirmed again, the ones from before the crash kept.
    """
    url = own_postgres.fresh_database()
    server = start_server("--block-interval", "0.3", database=url)
    transfer = {"from": ALICE, "to": CAROL, "amount": "1", "token_id": MTK}
    with Client(server.url, server.demo_key()) as client:
        assert client.request("execute_transaction", transfer)["data"]["status"] == "pending"
        client.request("subscribe", {"channel": "transaction_updates", "address": CAROL})
        client.until(lambda m: m["type"] == "update" and m["data"]["status"] == "confirmed")
        own_postgres.kill()
        refused = client.request("execute_transaction", transfer, timeout=10)
        assert refused["data"]["code"] == "internal_error"
        own_postgres.restart()
        # Each pooled connection that finds itself broken fails one request.
        for attempt in range(6):
            reply = client.request("execute_transaction", transfer, request_id=attempt, timeout=10)
            if reply["type"] == "transaction_response":
                break
            assert reply["data"]["code"] == "internal_error"
        else:
            raise AssertionError("transfers still refused after the database came back")
        client.until(lambda m: m["type"] == "update" and m["data"]["status"] == "confirmed"
                     and m["data"]["transaction_id"] == reply["data"]["transaction_id"],
                     timeout=10)
        balance = client.request("get_balance", {"address": CAROL, "token_id": MTK})
        assert balance["data"]["balance"] == "2"
