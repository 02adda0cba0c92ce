"""
The node registry: each node announces itself in the broker every few
seconds, with an expiry, so that C{server_info} (and operators) see the
live nodes of the cluster; a node that stops announcing drops out.

The node that runs the sources also tidies up after nodes that died: their
subscriptions are still marked attached to them in the broker, and would
never expire, so it detaches them (they become resumable for the resume
window, like those of any lost connection).
"""

from collections.abc import Callable
from typing import Any

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.logger import Logger

from .broker.interface import IBroker

ANNOUNCE_INTERVAL = 2.0
"""Seconds between announcements."""

ANNOUNCE_TTL = 3 * ANNOUNCE_INTERVAL
"""Seconds an announcement lasts: a node is listed until it has missed
about three announcements."""


class NodeAnnouncer(TimerService):
    """
    Announces this node, and, while C{leading()}, detaches the
    subscriptions of nodes that disappeared.
    """

    log = Logger()

    def __init__(
        self,
        broker: IBroker,
        describe: Callable[[], dict],
        leading: Callable[[], bool],
        clock: Any,
        interval: float = ANNOUNCE_INTERVAL,
        reachable: Callable[[], bool] = lambda: True,
    ) -> None:
        """
        @param reachable: whether the broker can be reached now; until it
            can, the timer's announcements are skipped (rather than logged
            as failures at every start), and L{announce_now} is called once
            it can.
        """
        super().__init__(interval, self._tick)
        self._reachable = reachable
        self.clock = clock
        self._broker = broker
        self._describe = describe
        self._leading = leading
        self._ttl = 3 * interval
        self._seen: set[str] = set()

    def _tick(self) -> Deferred | None:
        if not self._reachable():
            return None
        return self._announce()

    def announce_now(self) -> Deferred | None:
        """
        Announce at once (the broker just became reachable), so that the
        node is listed from its first moment of service, not an interval
        later.
        """
        if not self.running:
            return None
        return self._announce()

    def _announce(self) -> Deferred:
        info = self._describe()
        d = self._broker.announce(info, self._ttl)
        d.addCallback(lambda _: self._tidy(info["name"]))
        d.addErrback(lambda f: self.log.failure("Announcing this node failed", f))
        return d

    def _tidy(self, me: str) -> Deferred:
        if not self._leading():
            self._seen.clear()
            return succeed(None)
        d = self._broker.nodes()

        def compare(nodes: list[dict]) -> Deferred | None:
            alive = {node["name"] for node in nodes} | {me}
            gone, self._seen = self._seen - alive, alive
            if not gone:
                return None
            now = self.clock.seconds()
            for name in sorted(gone):
                self.log.info("Node {name} stopped announcing itself; detaching its "
                              "subscriptions", name=name)
            return gatherResults(
                [self._broker.detach_node(name, now) for name in sorted(gone)],
                consumeErrors=True,
            )

        return d.addCallback(compare)
