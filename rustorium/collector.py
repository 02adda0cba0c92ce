"""
Garbage collection paced for a process that holds thousands of connections.

CPython collects its oldest generation, every object of the process, each
time the objects promoted into it since the last such collection pass a
quarter of those it held then. A node's objects grow exactly so while
thousands of clients connect or reconnect at once (a node died and its
clients move here): measured on 4,000 clients resuming on one node, 14
full collections of up to half a second each, half the node's CPU during
the storm (``bench/run.py --scenarios clusterstorm``), and the clients
waiting behind them.

So L{CollectorService}, which C{twistd rustorium} runs (an application
embedding the server keeps its own policy):

- at start, moves every object that exists by then (modules, the catalog,
  the schema) out of the collector's sight with C{gc.freeze}: they live as
  long as the process;
- leaves the young generations' collections as CPython does them, but turns
  off its automatic full collections;
- keeps CPython's rule itself, counting what each collection of the middle
  generation promotes, and applies it at most once every
  L{FULL_COLLECTION_INTERVAL} seconds: a storm pays for one full collection,
  a steady server as few as CPython would make.

Stopping the service restores CPython's thresholds and unfreezes.
"""

import gc
from typing import Any

from twisted.application.internet import TimerService
from twisted.logger import Logger

FULL_COLLECTION_INTERVAL = 10.0
"""The least seconds between two collections of the oldest generation."""

NEVER = 2**30
"""A third threshold no count of younger collections reaches."""

GROWTH = 4
"""A full collection is due once the objects promoted since the last pass
a GROWTH-th of those the oldest generation held after it (CPython's
rule)."""


class CollectorService(TimerService):
    """
    Full garbage collections by CPython's rule, at most one an interval.

    @ivar promoted: objects promoted into the oldest generation since its
        last collection.
    @ivar held: the objects the oldest generation held after its last
        collection.
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
        self._young = 0
        self.promoted = 0
        self.held = 0
        self.collections = 0

    def startService(self) -> None:
        collector = self._gc
        self._thresholds = collector.get_threshold()
        collector.freeze()
        young, middle = self._thresholds[:2]
        collector.set_threshold(young, middle, NEVER)
        self.held = len(collector.get_objects(2))
        self.promoted = 0
        collector.callbacks.append(self._observe)
        super().startService()

    def stopService(self) -> Any:
        collector = self._gc
        if self._thresholds is not None:
            if self._observe in collector.callbacks:
                collector.callbacks.remove(self._observe)
            collector.set_threshold(*self._thresholds)
            self._thresholds = None
            collector.unfreeze()
        return super().stopService()

    def _observe(self, phase: str, info: dict) -> None:
        """
        Count what a collection of the middle generation promotes: the
        young objects it found, less those it freed.
        """
        if info.get("generation") != 1:
            return
        if phase == "start":
            self._young = len(self._gc.get_objects(0)) + len(self._gc.get_objects(1))
        else:
            self.promoted += max(0, self._young - info.get("collected", 0))

    def _collect(self) -> None:
        try:
            if self.promoted * GROWTH > self.held:
                self._gc.collect(2)
                self.collections += 1
                self.promoted = 0
                self.held = len(self._gc.get_objects(2))
        except Exception:
            self.log.failure("A full garbage collection failed")
