"""
A cluster for fault scenarios: nodes (``twistd -n rustorium`` processes,
one of them optionally on a L{NamespaceHost}) on a Redis and a PostgreSQL
of their own, a genesis with funded addresses, one API key for the
workload, and what the checker reads straight from Redis (every key's
history: what was published) and PostgreSQL (what was stored).
"""

import json
import signal
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import urlopen

import attrs

from rustorium.apikeys import generate_key, hash_key
from rustorium.bootstrap import prepare_database
from rustorium.hub import channel_key
from rustorium.storage import engine_from_url, run_blocking
from rustorium.storage.keys import insert_key
from rustorium.timestamps import isoformat
from tests.faults.hosts import FaultPostgres, FaultRedis, NamespaceHost
from tests.integration.conftest import BIN, environment, free_port

# The workload's addresses: senders are funded at genesis and controlled by
# the workload's key; sinks only receive.
SENDERS = tuple(f"0x{n:02x}" + "5e" * 19 for n in range(1, 5))
SINKS = ("0x" + "d1" * 20, "0x" + "d2" * 20)
ADDRESSES = SENDERS + SINKS


@attrs.frozen
class TokenSpec:
    token_id: str
    symbol: str
    decimals: int
    balance: int
    """Whole tokens each sender holds at genesis."""
    price: str

    @property
    def market(self) -> str:
        return f"{self.symbol}/USD"


TOKENS = (
    TokenSpec("0x" + "00" * 17 + b"FLT".hex(), "FLT", 6, 400, "2.5"),
    TokenSpec("0x" + "00" * 17 + b"GRD".hex(), "GRD", 2, 300, "0.75"),
)

FAULT_FLAGS = (
    "--tick-interval", "0.2", "--block-interval", "0.5",
    "--heartbeat-interval", "2", "--heartbeat-timeout", "10",
    "--rate-limit", "1000", "--rate-burst", "1000",
    "--key-rate-limit", "100000", "--key-rate-burst", "100000",
    "--max-handshakes-per-address", "0",
    # Every update stays in Redis for the whole run: the checker reads the
    # histories as the record of what was published.
    "--history-size", "100000", "--history-age", "900",
    "--resume-window", "120", "--max-detached-per-key", "1000",
    "--close-timeout", "3",
)
"""Flags of every node: fast ticks and blocks, no rate limit in the way."""

BLOCK_INTERVAL = 0.5


def genesis() -> dict:
    return {"tokens": [
        {
            "token_id": token.token_id, "name": f"Fault {token.symbol}", "symbol": token.symbol,
            "decimals": token.decimals, "total_supply": str(token.balance * len(SENDERS)),
            "price": token.price,
            "balances": {address: str(token.balance) for address in SENDERS},
        }
        for token in TOKENS
    ]}


def workload_keys() -> list[str]:
    """
    The broker keys of every stream the workload follows.
    """
    keys = [channel_key("market_data", t.market) for t in TOKENS]
    keys += [channel_key("token_updates", t.token_id) for t in TOKENS]
    keys += [channel_key("transaction_updates", a) for a in ADDRESSES]
    return keys


class RedisClient:
    """
    A few Redis commands over a plain socket (RESP2), for the test to read
    what the broker stored.
    """

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self._socket = socket.create_connection((host, port), timeout=timeout)
        self._file = self._socket.makefile("rb")

    def call(self, *args: str | bytes | int):
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self._socket.sendall(b"".join(parts))
        return self._read()

    def _read(self):
        line = self._file.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            length = int(rest)
            if length < 0:
                return None
            data = self._file.read(length + 2)
            return data[:-2]
        if kind == b"*":
            length = int(rest)
            return None if length < 0 else [self._read() for _ in range(length)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def close(self) -> None:
        self._file.close()
        self._socket.close()


@attrs.frozen
class Published:
    """
    One update as the broker stored it.
    """

    number: int
    key: str
    data: dict


@attrs.define
class RedisDump:
    """
    What Redis held at one moment: each key's history, and the epoch.
    """

    updates: list[Published]
    epoch: str
    base: int


class Node:
    """
    One C{twistd -n rustorium} node of the cluster.

    @ivar exits: each exit of the process: the signal the test sent (or
        C{None}) and the exit status.
    """

    def __init__(self, cluster: "FaultCluster", name: str, host: NamespaceHost | None) -> None:
        self.cluster = cluster
        self.name = name
        self.host = host
        self.port = free_port()
        self.address = host.address if host is not None else "127.0.0.1"
        self.process: subprocess.Popen | None = None
        self.exits: list[tuple[int | None, int]] = []
        self.log_path = cluster.directory / f"{name}.log"
        self._log = None

    @property
    def url(self) -> str:
        return f"ws://{self.address}:{self.port}/v1"

    @property
    def health_url(self) -> str:
        return f"http://{self.address}:{self.port}/healthz"

    def command(self) -> list[str]:
        cluster = self.cluster
        services = self.host.services_address if self.host is not None else "127.0.0.1"
        command = [
            str(BIN / "twistd"), "-n", "--pidfile=", "rustorium",
            "--listen", f"tcp:{self.port}:interface={self.address}",
            "--database", f"postgresql://postgres@{services}:{cluster.postgres.port}/rustorium",
            "--broker", f"redis://{services}:{cluster.redis.port}/0",
            "--node-name", self.name, "--genesis", str(cluster.genesis_path),
            *FAULT_FLAGS,
        ]
        return self.host.command(command) if self.host is not None else command

    def start(self) -> "Node":
        """
        Start the process (see L{wait_ready}).
        """
        self._log = open(self.log_path, "ab")
        self._sent: int | None = None
        self.reaped = False
        self.process = subprocess.Popen(
            self.command(), cwd=self.cluster.directory, env=environment(),
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def health(self, timeout: float = 2.0) -> int | None:
        """
        The status of C{GET /healthz}, or C{None} if nothing answers.
        """
        try:
            with urlopen(self.health_url, timeout=timeout) as response:
                return response.status
        except HTTPError as e:
            return e.code
        except (URLError, OSError):
            return None

    def wait_ready(self, timeout: float = 60.0) -> "Node":
        """
        Wait until the node answers its health check with 200.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise AssertionError(f"{self.name} exited at start:\n{self.output()}")
            if self.health() == 200:
                return self
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not healthy within {timeout} s:\n{self.output()}")

    def send(self, sig: int) -> None:
        self.process.send_signal(sig)
        self._sent = sig

    def wait(self, timeout: float) -> int:
        status = self.process.wait(timeout)
        self.exits.append((self._sent, status))
        self.reaped = True
        if self._log is not None:
            self._log.close()
            self._log = None
        return status

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """
        Signal the node and wait for it to exit; its status.
        """
        if not self.running:
            return self.process.returncode if self.process is not None else 0
        self.send(sig)
        return self.wait(timeout)

    def output(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""


class FaultCluster:
    """
    Redis, PostgreSQL and nodes of one scenario, in C{directory}.
    """

    def __init__(self, directory: Path, host: NamespaceHost | None = None) -> None:
        self.directory = directory
        self.host = host
        extra = (host.services_address,) if host is not None else ()
        self.redis = FaultRedis(directory, extra)
        self.postgres = FaultPostgres(extra)
        self.nodes: dict[str, Node] = {}
        self.genesis_path = directory / "genesis.json"
        self.genesis_path.write_text(json.dumps(genesis()))
        self.key = ""

    @property
    def database_url(self) -> str:
        return self.postgres.url

    def start(self, names: list[str], on_host: str | None = None) -> None:
        """
        Start the services, prepare the database and make the workload's
        key, then start the nodes (C{on_host} on the namespace host), the
        first alone, so that it takes the lease for the market and the
        blocks, and the others together.
        """
        self.redis.start()
        self.postgres.start()
        engine = engine_from_url(self.database_url)
        prepare_database(engine, str(self.genesis_path))
        self.key = generate_key()
        run_blocking(engine, insert_key, hash_key(self.key), "faults",
                     isoformat(time.time()), list(SENDERS))
        first, *others = names
        self.start_node(first, host=on_host == first)
        self.wait_leader(first)
        with ThreadPoolExecutor(len(others) or 1) as pool:
            list(pool.map(lambda name: self.start_node(name, host=on_host == name), others))

    def start_node(self, name: str, host: bool = False) -> Node:
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = Node(self, name, self.host if host else None)
        node.start()
        return node.wait_ready()

    def urls(self) -> list[str]:
        return [node.url for node in self.nodes.values()]

    def redis_client(self) -> RedisClient:
        return RedisClient("127.0.0.1", self.redis.port)

    def leader(self) -> str | None:
        """
        The node holding the lease of the market and the blocks, if any.
        """
        client = self.redis_client()
        try:
            holder = client.call("GET", "rustorium:lease:sources")
        finally:
            client.close()
        return holder.decode() if holder is not None else None

    def wait_leader(self, name: str | None = None, timeout: float = 30.0,
                    other_than: str | None = None) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                leader = self.leader()
            except OSError:
                leader = None
            if leader is not None and (name is None or leader == name) and leader != other_than:
                return leader
            time.sleep(0.05)
        raise AssertionError(f"no leader {name or ''} within {timeout} s")

    def dump_redis(self) -> RedisDump:
        """
        Every update Redis keeps for the workload's keys, and its epoch.
        """
        client = self.redis_client()
        try:
            epoch = client.call("HGETALL", "rustorium:epoch") or []
            fields = dict(zip(epoch[::2], epoch[1::2], strict=True))
            updates = []
            for key in workload_keys():
                for entry_id, values in client.call("XRANGE", f"rustorium:history:{key}",
                                                    "-", "+") or []:
                    entry = dict(zip(values[::2], values[1::2], strict=True))
                    message = json.loads(entry[b"p"])
                    updates.append(Published(int(entry_id.split(b"-")[0]), key,
                                             message["data"]))
        finally:
            client.close()
        return RedisDump(updates, fields.get(b"id", b"").decode(),
                         int(fields.get(b"base", b"0")))

    def ledger(self) -> "LedgerSnapshot":
        return read_ledger(self.database_url)

    def wait_settled(self, timeout: float = 60.0) -> "LedgerSnapshot":
        """
        Wait until no transaction is pending (every accepted one is in a
        block); the ledger then.
        """
        deadline = time.monotonic() + timeout
        while True:
            snapshot = self.ledger()
            if not any(t.status == "pending" for t in snapshot.transactions):
                return snapshot
            if time.monotonic() > deadline:
                return snapshot
            time.sleep(0.2)

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.running:
                try:
                    node.stop(timeout=20)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()
        self.redis.thaw()
        self.postgres.thaw()
        self.redis.kill()
        self.postgres.cleanup()


@attrs.frozen
class StoredTransaction:
    seq: int
    transaction_id: str
    sender: str
    recipient: str
    token_id: str
    amount: int
    status: str
    idempotency_key: str | None
    block_number: int | None


@attrs.frozen
class LedgerSnapshot:
    """
    What PostgreSQL holds, in base units.
    """

    transactions: list[StoredTransaction]
    balances: dict[tuple[str, str], tuple[int, int]]
    """(address, token) -> (amount, pending outflows)."""
    supply: dict[str, int]
    genesis: dict[tuple[str, str], int]
    blocks: list[tuple[int, float]]
    """(number, timestamp) of every block."""


def read_ledger(url: str) -> LedgerSnapshot:
    """
    The ledger in the database at C{url} (PostgreSQL or SQLite).
    """

    def read(cursor) -> tuple:
        cursor.execute(
            "SELECT seq, transaction_id, sender, recipient, token_id, amount, status, "
            "idempotency_key, block_number FROM transactions ORDER BY seq"
        )
        transactions = [
            StoredTransaction(seq, tid, sender, recipient, token, int(amount), status, key,
                              block)
            for seq, tid, sender, recipient, token, amount, status, key, block
            in cursor.fetchall()
        ]
        cursor.execute("SELECT address, token_id, amount, pending_out FROM balances")
        balances = {(address, token): (int(amount), int(pending))
                    for address, token, amount, pending in cursor.fetchall()}
        cursor.execute("SELECT token_id, total_supply FROM tokens")
        supply = {token: int(total) for token, total in cursor.fetchall()}
        cursor.execute("SELECT block_number, timestamp FROM blocks ORDER BY block_number")
        return transactions, balances, supply, [tuple(row) for row in cursor.fetchall()]

    transactions, balances, supply, blocks = run_blocking(engine_from_url(url), read)
    genesis_balances = {
        (address, token.token_id): token.balance * 10**token.decimals
        for token in TOKENS for address in SENDERS
    }
    return LedgerSnapshot(transactions, balances, supply, genesis_balances, blocks)


def units(amount: str, decimals: int) -> int:
    """
    A decimal string in base units.
    """
    return int(Decimal(amount).scaleb(decimals))
