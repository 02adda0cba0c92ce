"""
A cluster of real nodes (``twistd -n rustorium`` processes) on one
throwaway Redis and one throwaway PostgreSQL: a client resumes on another
node after its node is killed, transfers through every node never
overspend, an idempotency key makes one transaction cluster-wide, and
``--workers`` spreads connections over processes sharing a port.
"""

import signal
import subprocess
import threading
import time
from collections import Counter
from decimal import Decimal

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.integration.client import Client
from tests.integration.conftest import BIN, ServerProcess, environment
from tests.redis_server import redis_server  # noqa: F401
from tests.services import postgres_server, postgres_url  # noqa: F401

ALICE = "0xa11ce00000000000000000000000000000000001"
BOB = "0xb0b0000000000000000000000000000000000002"
CAROL = "0x" + "c" * 40
MTK = "0x00000000000000000000000000000000004d544b"
RST = "0x0000000000000000000000000000000000525354"

FAST = ("--tick-interval", "0.2", "--block-interval", "0.5", "--heartbeat-interval", "5",
        "--key-rate-limit", "10000", "--key-rate-burst", "10000",
        "--rate-limit", "1000", "--rate-burst", "1000")


class Cluster:
    """
    Nodes sharing one broker and one database, started in a directory.
    """

    def __init__(self, directory, broker: str, database: str) -> None:
        self.directory = directory
        self.broker = broker
        self.database = database
        self.nodes: dict[str, ServerProcess] = {}

    def start(self, name: str, *args: str) -> ServerProcess:
        node = ServerProcess(self.directory, "--broker", self.broker, "--node-name", name,
                             *FAST, *args)
        node.database = self.database
        self.nodes[name] = node.start(timeout=60)
        return node

    def key(self, *addresses: str) -> str:
        result = subprocess.run(
            [str(BIN / "rustorium"), "keys", "create", "--database", self.database,
             "--name", "cluster-test", *[a for address in addresses
                                         for a in ("--address", address)]],
            env=environment(), capture_output=True, text=True, check=True,
        )
        return result.stdout.splitlines()[-1]

    def stop(self) -> None:
        for node in self.nodes.values():
            try:
                node.stop()
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()


@pytest.fixture
def cluster(tmp_path, redis_server, postgres_url):  # noqa: F811
    cluster = Cluster(tmp_path, redis_server.url, postgres_url)
    yield cluster
    cluster.stop()


def connect(url: str, key: str, timeout: float = 30.0) -> Client:
    """
    A client of a node that has just started: it answers 503 until it
    reaches the broker.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return Client(url, key)
        except InvalidStatus as e:
            if e.response.status_code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def ready(client: Client, timeout: float = 10.0) -> dict:
    """
    Wait until the node answers (its broker link may still be coming up).
    """
    return client.request("server_info", timeout=timeout)["data"]


def number(message: dict) -> int:
    return int(message["id"][4:])


def transfer(client: Client, request_id: str, amount: str = "1", sender: str = ALICE,
             recipient: str = CAROL, token: str = MTK, **extra) -> dict:
    return client.request("execute_transaction", {
        "from": sender, "to": recipient, "amount": amount, "token_id": token, **extra,
    }, request_id=request_id, timeout=15)


class Transfers(threading.Thread):
    """
    A stream of transfers through one node until stopped, recording what
    was acknowledged.
    """

    def __init__(self, url: str, key: str, prefix: str, sender: str = ALICE) -> None:
        super().__init__(daemon=True)
        self.url, self.key, self.prefix, self.sender = url, key, prefix, sender
        self.acknowledged: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        with connect(self.url, self.key) as client:
            n = 0
            while not self.stopping.is_set():
                reply = transfer(client, f"{self.prefix}{n}", "0.001", sender=self.sender)
                if reply["type"] == "transaction_response":
                    self.acknowledged.append(reply["data"]["transaction_id"])
                n += 1
                time.sleep(0.02)


def subscribe(client: Client, subscription: dict) -> tuple[str, int | None]:
    """
    Subscribe; return the subscription id and the number of the current
    state update that follows (numbered for this client alone), if any.
    """
    reply = client.request("subscribe", subscription)
    if subscription["channel"] != "market_data":
        return reply["data"]["subscription_id"], None
    snapshot = client.until(lambda m: m["type"] == "update"
                            and m["data"]["channel"] == "market_data")
    return reply["data"]["subscription_id"], number(snapshot)


def test_a_client_resumes_on_another_node_after_its_node_is_killed(cluster):
    """
    A client of node A follows a market and an address while transfers flow;
    A gets SIGKILL; the client reconnects to node B and resumes with
    recovered: true, and what it received is, id for id, what a client that
    stayed on B received over the same span, without duplicates.
    """
    a = cluster.start("node-a")
    b = cluster.start("node-b")
    key = cluster.key(ALICE, BOB)
    subscriptions = [
        {"channel": "market_data", "symbols": ["MTK/USD"]},
        {"channel": "transaction_updates", "address": ALICE},
    ]
    with connect(b.url, key) as observer:
        info = ready(observer)
        assert info["node"] == "node-b"
        assert {n["name"] for n in info["nodes"]} >= {"node-b"}
        observed = [subscribe(observer, s) for s in subscriptions]
        client = connect(a.url, key)
        assert ready(client)["node"] == "node-a"
        made = [subscribe(client, s) for s in subscriptions]
        ids = [subscription_id for subscription_id, _ in made]
        snapshots = {n for _, n in observed + made if n is not None}
        flow = Transfers(b.url, key, "flow-")
        flow.start()
        before: list[dict] = []
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            message = client.receive(5)
            if message["type"] == "update":
                before.append(message)
        a.stop(signal.SIGKILL)
        time.sleep(1.5)  # updates the client misses while it has no node
        with connect(b.url, key) as resumed:
            reply = resumed.request("reconnect", {"last_message_id": before[-1]["id"],
                                                  "subscriptions": ids})
            assert reply["data"]["recovered"] is True, reply
            assert [s["status"] for s in reply["data"]["subscriptions"]] == ["resumed"] * 2
            after: list[dict] = []
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:
                message = resumed.receive(5)
                if message["type"] == "update":
                    after.append(message)
        flow.stopping.set()
        flow.join(20)
        got = [number(m) for m in before + after]
        assert len(got) == len(set(got)), "no update twice"
        assert got == sorted(got), "in increasing id order"
        watched = [number(m) for m in observer.received if m["type"] == "update"]
    low = max(snapshots) + 1
    high = min(got[-1], watched[-1])
    assert [n for n in got if low <= n <= high] == [n for n in watched if low <= n <= high]
    assert any(m["data"]["channel"] == "transaction_updates" for m in after)
    assert flow.acknowledged


def test_concurrent_transfers_through_two_nodes_never_overspend(cluster):
    """
    Hundreds of transfers from one address, through both nodes from
    several connections at once, accept no more than the balance; every
    acknowledged one is confirmed exactly once and supply is conserved,
    also when the node writing blocks is killed mid-burst (a transfer it
    stored but never answered is answered when sent again, with its
    idempotency key, to the other node).
    """
    a = cluster.start("node-a")
    time.sleep(1.0)
    b = cluster.start("node-b")
    key = cluster.key(ALICE, BOB)
    # RST: Alice holds 250,000,000 (6 decimals); 400 transfers of 1,000,000
    # each can be covered at most 250 times.
    results: list[dict] = []
    # Sent when the node died, unanswered: the node may have stored it.
    unanswered: list[str] = []
    lock = threading.Lock()

    def burst(url: str, prefix: str) -> None:
        sending = None
        try:
            with connect(url, key) as client:
                for n in range(100):
                    sending = f"{prefix}{n}"
                    reply = transfer(client, sending, "1000000", token=RST,
                                     idempotency_key=sending)
                    sending = None
                    with lock:
                        results.append(reply)
        except (ConnectionClosed, OSError, TimeoutError):
            # Its node was killed: what it had acknowledged is in results.
            if sending is not None:
                with lock:
                    unanswered.append(sending)

    threads = [threading.Thread(target=burst, args=(node.url, f"{name}-{i}-"))
               for name, node in (("a", a), ("b", b)) for i in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    # Node A started first, so it took the lease and writes the blocks.
    a.stop(signal.SIGKILL)
    for thread in threads:
        thread.join(60)
    survivor = b
    # A client whose request went unanswered sends it again, with the same
    # idempotency key, to the node that is left: it gets the transaction
    # the dead node stored, if it stored one, and no second one.
    with connect(survivor.url, key) as client:
        for sent in unanswered:
            results.append(transfer(client, sent, "1000000", token=RST, idempotency_key=sent))
    accepted = [r["data"]["transaction_id"] for r in results
                if r["type"] == "transaction_response"]
    assert len(set(accepted)) == len(accepted)
    refused = [r["data"]["code"] for r in results if r["type"] == "error"]
    assert len(accepted) <= 250
    assert set(refused) <= {"insufficient_funds", "internal_error"}
    with connect(survivor.url, key) as client:
        deadline = time.monotonic() + 20
        statuses: Counter = Counter()
        while time.monotonic() < deadline:
            statuses = Counter(
                client.request("get_transaction", {"transaction_id": t},
                               request_id=t)["data"]["status"]
                for t in accepted
            )
            if statuses.get("pending", 0) == 0:
                break
            time.sleep(0.5)
        assert statuses == Counter({"confirmed": len(accepted)})
        alice = client.request("get_balance", {"address": ALICE, "token_id": RST})["data"]
        carol = client.request("get_balance", {"address": CAROL, "token_id": RST})["data"]
        assert Decimal(carol["balance"]) == len(accepted) * 1_000_000
        assert Decimal(alice["balance"]) + Decimal(carol["balance"]) == 250_000_000
        assert alice["balance"] == alice["available"]


def test_one_idempotency_key_gives_one_transaction_across_nodes(cluster):
    a = cluster.start("node-a")
    b = cluster.start("node-b")
    key = cluster.key(ALICE, BOB)
    replies = []

    def send(url: str) -> None:
        with connect(url, key) as client:
            replies.append(transfer(client, "same", "2", idempotency_key="order-7"))

    threads = [threading.Thread(target=send, args=(node.url,)) for node in (a, b, a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert {r["type"] for r in replies} == {"transaction_response"}
    assert len({r["data"]["transaction_id"] for r in replies}) == 1
    with connect(b.url, key) as client:
        balance = client.request("get_balance", {"address": ALICE, "token_id": MTK})["data"]
        assert balance["available"] == "599998"


def test_workers_share_one_port(tmp_path, redis_server, postgres_url):  # noqa: F811
    """
    --workers 2 starts two nodes on one port; connections are spread over
    both (server_info names the node), and SIGTERM stops them all.
    """
    supervisor = ServerProcess(tmp_path, "--broker", redis_server.url, "--workers", "2",
                               "--node-name", "w", *FAST)
    supervisor.database = postgres_url
    supervisor.start(timeout=60)
    try:
        key = Cluster(tmp_path, redis_server.url, postgres_url).key(ALICE)
        seen = Counter()
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:
            clients = [connect(supervisor.url, key) for _ in range(8)]
            try:
                for client in clients:
                    try:
                        seen[ready(client)["node"]] += 1
                    except (TimeoutError, OSError):
                        pass
            finally:
                for client in clients:
                    client.close()
        assert set(seen) == {"w-1", "w-2"}, seen
    finally:
        status = supervisor.stop()
    # twistd ends with the signal that stopped it, once it has shut down.
    assert status in (0, -signal.SIGTERM), supervisor.output()
    assert "Worker w-1 stopped" in supervisor.output()


def test_subscriptions_survive_a_restart_of_every_node(cluster):
    """
    With the broker keeping them, subscriptions outlive every node: after
    both nodes restart, a client resumes on either, recovered.
    """
    a = cluster.start("node-a")
    b = cluster.start("node-b")
    key = cluster.key(ALICE)
    with connect(a.url, key) as client:
        subscription_id, _ = subscribe(client, {"channel": "market_data",
                                                "symbols": ["STK/USD"]})
        last = client.until(lambda m: m["type"] == "update")["id"]
    for node in (a, b):
        node.stop()
    for name in ("node-a", "node-b"):
        cluster.start(name)
    with connect(cluster.nodes["node-b"].url, key) as client:
        reply = client.request("reconnect", {"last_message_id": last,
                                             "subscriptions": [subscription_id]})
        (entry,) = reply["data"]["subscriptions"]
        assert entry["status"] == "resumed", reply
        assert reply["data"]["recovered"] is True, reply
        assert client.until(lambda m: m["type"] == "update")["data"]["symbol"] == "STK/USD"
