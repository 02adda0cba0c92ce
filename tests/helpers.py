"""
Test doubles and builders shared by the unit tests.
"""

from typing import Any

import attrs
import orjson
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from rustorium.application import Application
from rustorium.broker.interface import Publication
from rustorium.broker.local import LocalBroker
from rustorium.catalog import Catalog
from rustorium.config import Settings
from rustorium.fanout import Fanout
from rustorium.genesis import demo_genesis
from rustorium.hub import ISink, MessageIds, Update
from rustorium.ledger import ILedgerStore, Ledger
from rustorium.server import Server
from rustorium.session import IConnection, Session
from rustorium.storage.chain import TokenRow
from rustorium.storage.keys import ApiKey
from rustorium.storage.ledger import LedgerSnapshot, TransactionRow

DEMO = demo_genesis()
MTK = DEMO.tokens[0]
STK = DEMO.tokens[1]
RST = DEMO.tokens[2]
ALICE = "0xa11ce00000000000000000000000000000000001"
BOB = "0xb0b0000000000000000000000000000000000002"
KEY = ApiKey(1, "test", frozenset({ALICE}), "2026-01-01T00:00:00.000000Z")


def demo_catalog() -> Catalog:
    return Catalog(
        [TokenRow(t.token_id, t.name, t.symbol, t.decimals, t.total_supply, t.price)
         for t in DEMO.tokens]
    )


class FakeKeyStore:
    """
    Keys held in a dict, answered at once.
    """

    def __init__(self, keys: dict[str, ApiKey] | None = None) -> None:
        self.keys = dict(keys or {})
        self.revoked: set[int] = set()

    def authenticate(self, key):
        found = self.keys.get(key)
        return succeed(None if found is None or found.key_id in self.revoked else found)

    def revoked_among(self, key_ids):
        return succeed({k for k in key_ids if k in self.revoked})

    def _current(self, key: ApiKey) -> ApiKey:
        if key.key_id in self.revoked and key.revoked_at is None:
            return attrs.evolve(key, revoked_at="2026-01-02T00:00:00.000000Z")
        return key

    def create(self, name, scopes, addresses, now):
        key_id = max((k.key_id for k in self.keys.values()), default=0) + 1
        secret = f"rk_{key_id:043d}"
        record = ApiKey(key_id, name, frozenset(addresses), "2026-01-01T00:00:00.000000Z",
                        None, frozenset(scopes))
        self.keys[secret] = record
        return succeed((record, secret))

    def find(self, key_id):
        found = [k for k in self.keys.values() if k.key_id == key_id]
        return succeed(self._current(found[0]) if found else None)

    def list(self):
        return succeed(sorted((self._current(k) for k in self.keys.values()),
                              key=lambda k: k.key_id))

    def revoke(self, key_id, now):
        if key_id in self.revoked or not any(k.key_id == key_id for k in self.keys.values()):
            return succeed(False)
        self.revoked.add(key_id)
        return succeed(True)


@implementer(ILedgerStore)
class MemoryLedgerStore:
    """
    A ledger store in memory. Writes complete at once, or, with C{hold},
    wait until the test fires them (C{release}) or fails them (C{fail}).
    Rows of the key ids in C{revoked} (as when they are written) are left
    out, as the database does.
    """

    def __init__(self) -> None:
        self.revoked: set[int] = set()
        self.transactions: dict[str, TransactionRow] = {}
        self.blocks: list[tuple[int, float, list, dict]] = []
        self.balances: dict[tuple[str, str], int] = {}
        self.commits: list[list[TransactionRow]] = []
        self.hold = False
        self.held: list[tuple[Deferred, Any]] = []

    def _write(self, apply) -> Deferred:
        if not self.hold:
            return succeed(apply())
        d: Deferred = Deferred()
        self.held.append((d, apply))
        return d

    def release(self) -> None:
        held, self.held = self.held, []
        for d, apply in held:
            d.callback(apply())

    def release_all(self) -> None:
        """
        Complete held writes, and those they lead to, until none is held.
        """
        while self.held:
            self.release()

    def fail(self) -> None:
        held, self.held = self.held, []
        for d, _ in held:
            d.errback(OSError("disk I/O error"))

    def insert(self, rows):
        def apply():
            refused = {r.key_id for r in rows} & self.revoked
            stored = [r for r in rows if r.key_id not in refused]
            self.commits.append([attrs.evolve(r) for r in stored])
            for row in stored:
                self.transactions[row.transaction_id] = attrs.evolve(row)
            return refused

        return self._write(apply)

    def write_block(self, number, timestamp, seqs, count, failed, balances):
        def apply():
            failures = dict(failed)
            outcomes = []
            for row in sorted(self.transactions.values(), key=lambda r: r.seq):
                if row.status != "pending" or not seqs[0] <= row.seq <= seqs[1]:
                    continue
                reason = failures.get(row.transaction_id)
                row.status = "failed" if reason else "confirmed"
                row.reason = reason
                row.block_number, row.confirmed_at = number, timestamp
                outcomes.append((row.transaction_id, row.status, reason))
            assert len(outcomes) == count
            self.blocks.append((number, timestamp, outcomes, dict(balances)))
            self.balances.update(balances)

        return self._write(apply)

    def find(self, transaction_id):
        row = self.transactions.get(transaction_id)
        return succeed(None if row is None else attrs.evolve(row))

    def transactions_of(self, address, limit):
        rows = sorted((r for r in self.transactions.values()
                       if address in (r.sender, r.recipient)), key=lambda r: -r.seq)
        return succeed([attrs.evolve(r) for r in rows[:limit]])


def genesis_snapshot() -> LedgerSnapshot:
    """
    The ledger state right after the demo genesis.
    """
    balances = {(a, t.token_id): amount for t in DEMO.tokens for a, amount in t.balances.items()}
    return LedgerSnapshot(balances, [], [], [], 0, 0)


def make_server(
    clock: Any, prepare: Any = None, store: MemoryLedgerStore | None = None, **settings: Any
) -> Server:
    """
    A server on the demo catalog with an in-memory hub, key store and
    ledger store.

    @param prepare: the hub's framing function (by default the payload
        itself stands for the frame).
    """
    config = Settings(**settings)
    ids = MessageIds(1, 10**9, 10**6)
    broker = LocalBroker(clock, ids, "test-node", prepare or (lambda payload: payload),
                         history_size=config.history_size, history_age=config.history_age,
                         resume_window=config.resume_window,
                         max_detached_per_key=config.max_detached_per_key)
    broker.start()
    catalog = demo_catalog()
    ledger = Ledger(catalog, store or MemoryLedgerStore(),
                    lambda rows: app.announce_transactions(rows), clock, genesis_snapshot(),
                    commit_batch=config.commit_batch)
    app = Application(config, clock, "test-node", catalog, ledger, broker, Fanout(),
                      FakeKeyStore())
    server = Server(app, app.keys)
    server.ready = True
    return server


@implementer(IConnection, ISink)
@attrs.define
class FakeConnection:
    """
    Records what a session sends: decoded replies, delivered updates (also
    decoded, in C{messages} in arrival order), frames and the close.
    """

    peer: str = "tcp4:127.0.0.1:40000"
    messages: list[dict] = attrs.Factory(list)
    updates: list[Update] = attrs.Factory(list)
    frames: list[Any] = attrs.Factory(list)
    closed: tuple[int, str] | None = None

    def send_payload(self, payload: bytes) -> None:
        self.messages.append(orjson.loads(payload))

    def deliver(self, update: Update) -> None:
        self.updates.append(update)
        self.messages.append(orjson.loads(update.payload))

    def enqueue(self, update: Update) -> bool:
        self.deliver(update)
        return False

    def flush(self) -> None:
        pass

    def send_frame(self, frame: Any) -> None:
        self.frames.append(frame)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    @property
    def sink(self) -> "FakeConnection":
        return self

    def take(self) -> list[dict]:
        """
        The messages so far, forgetting them.
        """
        taken, self.messages = self.messages, []
        return taken


def open_session(server: Server, api_key: ApiKey = KEY) -> tuple[Session, FakeConnection]:
    connection = FakeConnection()
    return Session(connection, api_key, server), connection


def send(session: Session, message: Any) -> None:
    """
    Send a message (a dict is encoded; bytes go as they are).
    """
    payload = message if isinstance(message, bytes) else orjson.dumps(message)
    session.message_received(payload, False)


def publish(server: Server, channel: str, key: str, data: dict, retain: bool = True) -> Update:
    """
    Publish one update through the server's broker; return it.
    """
    (update,) = server.app.broker.publish([Publication(channel, key, data, retain)]).result
    return update
