"""
Garbage collection paced for a process that holds thousands of connections.

CPython collects its oldest generation, every object of the process, each
time the objects that survived the younger collections grow by a quarter.
A node's objects grow exactly so while thousands of clients connect or
reconnect at once (a node died and its clients move here): measured on
10,000 clients resuming on one node, 14 full collections of up to half a
second each, half the node's CPU during the storm (``bench/run.py
--scenarios clusterstorm``). Nothing else in a server's day makes them
useful sooner: its objects live as long as their connections, and the
rare ones in reference cycles (a failed Deferred, a closed protocol) are
no memory worth collecting within the second.

So L{CollectorService}, which C{twistd rustorium} runs (an application
embedding the server keeps its own policy):

- at start, moves every object that exists by then (modules, the catalog,
  the schema) out of the collector's sight with C{gc.freeze}: they live as
  long as the process;
- leaves the young generations' collections as CPython does them, but turns
  off its automatic full collections;
- runs a full collection itself at most every L{FULL_COLLECTION_INTERVAL}
  seconds, when younger collections have happened since the last one.

Stopping the service restores CPython's thresholds and unfreezes.
"""

import gc
from typing import Any

from twisted.application.internet import TimerService
from twisted.logger import Logger

FULL_COLLECTION_INTERVAL = 60.0
"""Seconds between the collections of the oldest generation."""

NEVER = 2**30
"""A third threshold no count of younger collections reaches."""


class CollectorService(TimerService):
    """
    Full garbage collections on a timer, not on the growth of the heap.
    """

    log = Logger()

    def __init__(
        self, clock: Any, interval: float = FULL_COLLECTION_INTERVAL, collector: Any = gc
    ) -> None:
        """
        @param clock: the C{IReactorTime} that paces the collections.
        @param collector: the C{gc} module (a stand-in in tests).
        """
        super().__init__(interval, self._collect)
        self.clock = clock
        self._gc = collector
        self._thresholds: tuple[int, ...] | None = None
        self.collections = 0

    def startService(self) -> None:
        collector = self._gc
        self._thresholds = collector.get_threshold()
        collector.freeze()
        young, middle = self._thresholds[:2]
        collector.set_threshold(young, middle, NEVER)
        super().startService()

    def stopService(self) -> Any:
        collector = self._gc
        if self._thresholds is not None:
            collector.set_threshold(*self._thresholds)
            self._thresholds = None
            collector.unfreeze()
        return super().stopService()

    def _collect(self) -> None:
        try:
            # The third count: collections of the middle generation since
            # the last full one (none: nothing was promoted to the oldest).
            if self._gc.get_count()[2] > 0:
                self._gc.collect(2)
                self.collections += 1
        except Exception:
            self.log.failure("A full garbage collection failed")
