"""
The node registry's announcer: a node is announced as soon as its broker
can be reached, and not tried (nor logged as failing) before.
"""

from twisted.internet.defer import fail
from twisted.logger import globalLogPublisher

from rustorium.broker.local import LocalBroker
from rustorium.hub import MessageIds
from rustorium.nodes import ANNOUNCE_INTERVAL, NodeAnnouncer


def _listed(broker):
    found = []
    broker.nodes().addCallback(found.append)
    return [node["name"] for node in found[0]]


def _announcer(clock, broker, reachable):
    return NodeAnnouncer(broker, lambda: {"name": "node-a"}, lambda: False, clock,
                         reachable=lambda: reachable[0])


def test_not_announced_before_the_broker_is_reachable(clock):
    broker = LocalBroker(clock, MessageIds(1, 10**9, 10**6), "node-a")
    calls = []
    broker.announce = lambda info, ttl: calls.append(info) or fail(RuntimeError("no link"))
    failures = []
    observer = failures.append
    globalLogPublisher.addObserver(observer)
    try:
        announcer = _announcer(clock, broker, [False])
        announcer.startService()
        clock.advance(3 * ANNOUNCE_INTERVAL)
    finally:
        globalLogPublisher.removeObserver(observer)
        announcer.stopService()
    assert calls == []
    assert not [e for e in failures if "Announcing" in e.get("log_format", "")]


def test_announced_at_once_when_the_broker_becomes_reachable(clock):
    broker = LocalBroker(clock, MessageIds(1, 10**9, 10**6), "node-a")
    reachable = [False]
    announcer = _announcer(clock, broker, reachable)
    announcer.startService()
    clock.advance(0.5)
    assert _listed(broker) == []
    reachable[0] = True
    announcer.announce_now()
    # Listed now, not an interval later.
    assert _listed(broker) == ["node-a"]
    clock.advance(ANNOUNCE_INTERVAL)
    assert _listed(broker) == ["node-a"]
    announcer.stopService()


def test_announce_now_does_nothing_before_the_service_runs(clock):
    broker = LocalBroker(clock, MessageIds(1, 10**9, 10**6), "node-a")
    announcer = _announcer(clock, broker, [True])
    assert announcer.announce_now() is None
    assert _listed(broker) == []
