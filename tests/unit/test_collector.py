"""
Full garbage collections on a timer (L{CollectorService}), with a stand-in
for the C{gc} module and the reactor's clock faked: the process's own
collector is left alone.
"""

from twisted.internet.task import Clock

from rustorium.collector import NEVER, CollectorService


class FakeCollector:
    """
    The parts of C{gc} the service uses, recording what it was asked.
    """

    def __init__(self) -> None:
        self.thresholds = (700, 10, 10)
        self.counts = [0, 0, 0]
        self.frozen = False
        self.full = 0

    def get_threshold(self):
        return self.thresholds

    def set_threshold(self, *thresholds):
        self.thresholds = thresholds

    def freeze(self):
        self.frozen = True

    def unfreeze(self):
        self.frozen = False

    def get_count(self):
        return tuple(self.counts)

    def collect(self, generation=2):
        assert generation == 2
        self.full += 1
        self.counts = [0, 0, 0]


def test_full_collections_follow_the_clock_not_the_heap():
    """
    Started, the service freezes what exists, keeps the young generations'
    thresholds and turns off automatic full collections; then it collects
    the oldest generation once an interval, only when younger collections
    promoted anything since the last.
    """
    clock, collector = Clock(), FakeCollector()
    service = CollectorService(clock, 60.0, collector)
    service.startService()
    assert collector.frozen
    assert collector.thresholds == (700, 10, NEVER)
    assert collector.full == 0, "nothing to collect at start"
    collector.counts = [5, 3, 2]
    clock.advance(59)
    assert collector.full == 0
    clock.advance(1)
    assert collector.full == 1
    clock.advance(60)
    assert collector.full == 1, "no younger collection since: nothing promoted"
    collector.counts = [0, 0, 1]
    clock.advance(60)
    assert (collector.full, service.collections) == (2, 2)
    service.stopService()
    assert collector.thresholds == (700, 10, 10)
    assert not collector.frozen
    collector.counts = [0, 0, 5]
    clock.advance(600)
    assert collector.full == 2, "stopped"


def test_a_failing_collection_is_logged_and_the_timer_goes_on(logged_errors):
    clock, collector = Clock(), FakeCollector()

    def broken(generation=2):
        raise RuntimeError("gc is broken")

    collector.collect = broken
    collector.counts = [0, 0, 1]
    service = CollectorService(clock, 60.0, collector)
    service.startService()
    assert [e["log_failure"].type for e in logged_errors] == [RuntimeError]
    logged_errors.clear()
    clock.advance(60)
    assert len(logged_errors) == 1, "still running"
    logged_errors.clear()
    service.stopService()


def test_twistd_runs_the_collector(tmp_path):
    """
    The service C{twistd rustorium} runs paces full collections; an
    embedded server does not change its application's collector.
    """
    from twisted.internet.testing import MemoryReactorClock

    from rustorium.service import makeService
    from rustorium.tap import Options
    from rustorium.tap import makeService as tap_service

    options = Options()
    options.parseOptions(["--database", f"sqlite:{tmp_path / 'r.db'}", "--listen", "tcp:0"])
    served = tap_service(options, MemoryReactorClock())
    assert [s for s in served if isinstance(s, CollectorService)] != []
    embedded = makeService({"database": f"sqlite:{tmp_path / 'e.db'}", "listen": ["tcp:0"]},
                           MemoryReactorClock())
    assert [s for s in embedded if isinstance(s, CollectorService)] == []
