"""
What every scenario does around its faults: the workload on the cluster,
and at the end the checks of the history, the ledger, the streams and the
processes.
"""

import re
import signal
import time
from collections.abc import Callable

import attrs

from tests.faults.checker import Report, check_ledger, check_streams, unpublished_events
from tests.faults.cluster import SENDERS, FaultCluster, LedgerSnapshot, RedisDump
from tests.faults.history import History
from tests.faults.workload import Workload

SUBSCRIBERS = 6
SEND_INTERVAL = 0.1
WARM_UP = 150
"""Transfers acknowledged before a fault: a few seconds of steady load."""

UNHANDLED = re.compile(r"Unhandled [Ee]rror|Unhandled error in Deferred")


def workload(cluster: FaultCluster, history: History, subscribers: int = SUBSCRIBERS,
             interval: float = SEND_INTERVAL, readers: int = 0,
             nodes: list[str] | None = None) -> Workload:
    """
    Subscribers and senders spread over the nodes (C{nodes}, by default
    all): every sender address has a sender, the first two a second one
    on another node, racing for the same balance.
    """
    everywhere = cluster.urls()
    urls = [cluster.nodes[n].url for n in nodes] if nodes else everywhere
    load = Workload(history, everywhere, cluster.key)
    for n in range(subscribers):
        load.subscriber(f"client-{n}", urls[n % len(urls)])
    for n, address in enumerate(SENDERS + SENDERS[:2]):
        load.sender(f"sender-{n}", address, urls[(n + 1) % len(urls)], interval)
    for n in range(readers):
        load.reader(f"reader-{n}", urls[n % len(urls)])
    return load


def warm_up(load: Workload) -> None:
    """
    Wait until every subscriber is live and the load steady.
    """
    assert load.wait_live(30), "the subscribers did not all connect"
    load.wait_acknowledged(WARM_UP)


@attrs.define
class Outcome:
    """
    A finished scenario: its history, what the database and Redis hold,
    and what the checks found.
    """

    history: History
    ledger: LedgerSnapshot
    dumps: list[RedisDump]
    report: Report


def finish(cluster: FaultCluster, load: Workload, history: History,
           dumps: list[RedisDump] | None = None, tmp_path=None) -> Outcome:
    """
    Stop the workload, let the blocks settle every accepted transfer, read
    Redis and PostgreSQL, and check it all.
    """
    load.stop()
    ledger = cluster.wait_settled()
    dumps = [*(dumps or []), cluster.dump_redis()]
    report = check_ledger(history, ledger)
    report.merge(check_streams(history, dumps))
    report.merge(check_nodes(cluster))
    report.figures.update(unpublished_events(history, dumps, ledger))
    if tmp_path is not None:
        history.save(tmp_path / "history.jsonl")
        if report.violations:
            report.fail(f"(history saved in {tmp_path / 'history.jsonl'})")
    return Outcome(history, ledger, dumps, report)


def check_nodes(cluster: FaultCluster, timeout: float = 30.0) -> Report:
    """
    No node crashed or needed a hand to recover: every running node is
    healthy again (by itself, within C{timeout}), every exit was one the
    test caused (SIGTERM: a clean exit), and no log has an unhandled error.
    """
    report = Report()
    deadline = time.monotonic() + timeout
    for node in cluster.nodes.values():
        if node.running:
            while node.health() != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            if node.health() != 200:
                report.fail(f"{node.name} is running but not healthy {timeout} s after the end")
        elif node.process is not None and not node.reaped:
            node.exits.append((None, node.process.returncode))
            node.reaped = True
        for sent, status in node.exits:
            if sent is None:
                report.fail(f"{node.name} exited by itself with status {status}")
            elif sent == signal.SIGTERM and status not in (0, -signal.SIGTERM):
                report.fail(f"{node.name} exited with status {status} after SIGTERM")
        unhandled = UNHANDLED.findall(node.output())
        if unhandled:
            report.fail(f"{node.name} logged {len(unhandled)} unhandled errors")
    return report


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    """
    Poll C{condition} until it returns something true; that.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)


def resumes_after(history: History, moment: float) -> list[dict]:
    """
    The C{reconnect_confirmation}s received after C{moment}.
    """
    return [e for e in history.of("received") if e["t"] > moment
            and e["message"]["type"] == "reconnect_confirmation"]
