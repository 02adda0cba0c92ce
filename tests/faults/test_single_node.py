"""
The single node (the in-process broker, SQLite) under the same workload
and checker: C{transaction_updates} replayed after a reconnect, the node
killed in the middle of a transfer burst and started again (the block
producer's crash: every acknowledged transfer confirmed by the first
blocks after the restart), and subscriptions resumed after the replay
history aged out, or after the resume window (expired), told so honestly.
"""

import signal
import time

import pytest

from rustorium.apikeys import generate_key, hash_key
from rustorium.storage import engine_from_url, run_blocking
from rustorium.storage.keys import insert_key
from rustorium.timestamps import isoformat
from tests.faults.checker import check_ledger, check_streams
from tests.faults.cluster import FAULT_FLAGS, SENDERS, LedgerSnapshot, genesis, read_ledger
from tests.faults.history import History
from tests.faults.scenario import resumes_after, wait_for
from tests.faults.workload import Workload
from tests.integration.conftest import ServerProcess, free_port


class SingleNode:
    """
    One node on SQLite, restartable on the same port and database.
    """

    def __init__(self, directory, *flags: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.database = f"sqlite:{directory / 'rustorium.db'}"
        genesis_path = directory / "genesis.json"
        genesis_path.write_text(__import__("json").dumps(genesis()))
        self.flags = ("--genesis", str(genesis_path), *FAULT_FLAGS, *flags)
        self.process: ServerProcess | None = None
        self.key = ""

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"

    def start(self) -> "SingleNode":
        self.process = ServerProcess(self.directory, *self.flags, port=self.port,
                                     database=self.database).start(timeout=60)
        if not self.key:
            self.key = generate_key()
            run_blocking(engine_from_url(self.database), insert_key, hash_key(self.key),
                         "faults", isoformat(time.time()), list(SENDERS))
        return self

    def ledger(self, timeout: float = 30.0) -> LedgerSnapshot:
        """
        The ledger once no transfer is pending.
        """
        deadline = time.monotonic() + timeout
        while True:
            snapshot = read_ledger(self.database)
            if time.monotonic() > deadline or all(
                t.status != "pending" for t in snapshot.transactions
            ):
                return snapshot
            time.sleep(0.2)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        return self.process.stop(sig) if self.process is not None else 0


@pytest.fixture
def single_node(tmp_path):
    made = []

    def make(*flags: str) -> SingleNode:
        node = SingleNode(tmp_path, *flags).start()
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()


def load_on(node: SingleNode, history: History, subscribers: int = 3) -> Workload:
    load = Workload(history, [node.url], node.key)
    for n in range(subscribers):
        load.subscriber(f"client-{n}", node.url)
    for n, address in enumerate(SENDERS[:3]):
        load.sender(f"sender-{n}", address, node.url, 0.05)
    return load.start()


def check(node: SingleNode, load: Workload, history: History):
    load.stop()
    report = check_ledger(history, node.ledger())
    # No Redis to read: what was published is what the clients that
    # stayed connected received.
    report.merge(check_streams(history, []))
    report.assert_ok()
    return report


def test_transaction_updates_are_replayed_after_a_reconnect(single_node, figures):
    """
    A client's connection drops while transfers to and from the addresses
    it follows are confirmed; it reconnects and gets every transaction
    update it missed, in order, once (recovered: true), as the clients
    that stayed connected saw them.
    """
    node = single_node()
    history = History()
    load = load_on(node, history)
    assert load.wait_live(30)
    load.wait_acknowledged(40)
    dropped_at = history.fault("client-0's connection dropped")
    load.sever("client-0", away=1.0)
    (resume,) = wait_for(lambda: resumes_after(history, dropped_at), 30, "client-0 resuming")
    load.wait_acknowledged(20)
    report = check(node, load, history)
    reply = resume["message"]["data"]
    assert reply["recovered"] is True
    replayed = {e["channel"]: e["replayed"] for e in reply["subscriptions"]
                if e["channel"] == "transaction_updates" and e["replayed"]}
    assert replayed, reply
    figures("single node: transaction_updates replayed", {
        "updates received": report.figures["updates received"],
        "replayed": reply["replayed"], "lost": report.figures["updates lost"],
        "duplicated": report.figures["updates duplicated"],
    })


def test_a_node_killed_mid_burst_confirms_every_acknowledged_transfer_once_back(
    single_node, figures,
):
    """
    The single node (which alone writes the blocks) gets SIGKILL during a
    burst; started again on the same database, its first blocks confirm
    every transfer it had acknowledged, balances are whole, and clients
    coming back are told their subscriptions expired (the in-process
    broker's registry went with the process), never recovered: true.
    """
    node = single_node()
    history = History()
    load = load_on(node, history)
    assert load.wait_live(30)
    load.wait_acknowledged(60)
    killed_at = history.fault("SIGKILL the node")
    node.stop(signal.SIGKILL)
    pending = sum(t.status == "pending" for t in read_ledger(node.database).transactions)
    time.sleep(0.5)
    history.fault("start the node again")
    restarted = time.monotonic()
    node.start()
    assert load.wait_live(60)
    load.wait_acknowledged(20)
    report = check(node, load, history)
    resumed = resumes_after(history, killed_at)
    assert resumed and all(s["status"] == "expired" for r in resumed
                           for s in r["message"]["data"]["subscriptions"])
    figures("single node: SIGKILL mid-burst, restarted", {
        "transfers": report.figures["transfers"], "acknowledged": report.figures["acknowledged"],
        "lost": report.figures["transfers lost"],
        "duplicated": report.figures["transfers duplicated"],
        "clients back after s": round(max(r["t"] for r in resumed) - restarted, 2),
        "pending when killed": pending,
    })


def test_resumes_after_the_history_or_the_window_ran_out_are_told_so(single_node, figures):
    """
    With 3 s of replay history and a 6 s resume window: a client back at
    once recovers everything; one back after 4 s resumes its
    subscriptions but is told what it lost (recovered: false, the range)
    and gets the current state; one back after 8 s finds them expired
    and subscribes again. The checker finds no silent gap in any.
    """
    node = single_node("--history-age", "3", "--resume-window", "6")
    history = History()
    load = load_on(node, history, subscribers=4)
    assert load.wait_live(30)
    load.wait_acknowledged(30)
    dropped_at = history.fault("connections of client-1, -2 and -3 dropped")
    for name, away in (("client-1", 0.0), ("client-2", 4.0), ("client-3", 8.0)):
        load.sever(name, away=away)
    wait_for(lambda: len(resumes_after(history, dropped_at)) >= 3, 30, "three resumes")
    assert load.wait_live(30)
    report = check(node, load, history)
    outcome = {r["client"]: r["message"]["data"] for r in resumes_after(history, dropped_at)}
    assert outcome["client-1"]["recovered"] is True
    assert outcome["client-2"]["recovered"] is False
    assert any("lost" in s for s in outcome["client-2"]["subscriptions"])
    assert all(s["status"] == "resumed" for s in outcome["client-2"]["subscriptions"])
    assert all(s["status"] == "expired" for s in outcome["client-3"]["subscriptions"])
    figures("single node: history aged out, window passed", {
        "reconnects": report.figures["reconnects"],
        "recovered": report.figures["recovered"], "expired": report.figures["expired"],
        "lost": report.figures["updates lost"],
        "unrecovered where nothing was missed":
            report.figures["unrecovered where nothing was missed"],
    })
