"""
Full garbage collections on a timer (L{CollectorService}), with a stand-in
for the C{gc} module and the reactor's clock faked: the process's own
collector is left alone.
"""

from twisted.internet.task import Clock

from rustorium.collector import NEVER, CollectorService


class FakeCollector:
    """
    The parts of C{gc} the service uses: generations of made-up sizes, and
    collections run by hand (L{young_collection}) or asked for.
    """

    def __init__(self) -> None:
        self.thresholds = (700, 10, 10)
        self.sizes = [0, 0, 1000]
        self.callbacks: list = []
        self.frozen = False
        self.full = 0

    def get_threshold(self):
        return self.thresholds

    def set_threshold(self, *thresholds):
        self.thresholds = thresholds

    def freeze(self):
        self.frozen = True
        self.sizes = [0, 0, 0]

    def unfreeze(self):
        self.frozen = False

    def get_objects(self, generation):
        return [None] * self.sizes[generation]

    def young_collection(self, young: int, freed: int) -> None:
        """
        A collection of the middle generation finding C{young} objects and
        freeing C{freed}: the rest go to the oldest.
        """
        self.sizes[0], self.sizes[1] = young, 0
        for callback in list(self.callbacks):
            callback("start", {"generation": 1})
        self.sizes = [0, 0, self.sizes[2] + young - freed]
        for callback in list(self.callbacks):
            callback("stop", {"generation": 1, "collected": freed, "uncollectable": 0})

    def collect(self, generation=2):
        assert generation == 2
        self.full += 1
        self.sizes = [0, 0, self.sizes[2] // 2]


def test_full_collections_by_cpythons_rule_at_most_one_an_interval():
    """
    Started, the service freezes what exists, keeps the young generations'
    thresholds and turns off automatic full collections; then, at most
    once an interval, it collects the oldest generation when what was
    promoted into it passes a quarter of what it held after the last.
    """
    clock, collector = Clock(), FakeCollector()
    service = CollectorService(clock, 10.0, collector)
    service.startService()
    assert collector.frozen
    assert collector.thresholds == (700, 10, NEVER)
    assert collector.full == 0, "nothing promoted yet"
    for _ in range(50):
        collector.young_collection(young=1000, freed=800)  # a storm: 200 kept each time
    assert service.promoted == 10_000
    assert collector.full == 0, "not before the interval"
    clock.advance(10)
    assert collector.full == 1
    assert (service.promoted, service.held) == (0, 5000)
    collector.young_collection(young=1000, freed=0)
    clock.advance(10)
    assert collector.full == 1, "1,000 promoted: not a quarter of 5,000"
    collector.young_collection(young=1000, freed=700)
    clock.advance(10)
    assert (collector.full, service.collections) == (2, 2), "past a quarter"
    service.stopService()
    assert collector.thresholds == (700, 10, 10)
    assert not collector.frozen and collector.callbacks == []
    collector.young_collection(young=100_000, freed=0)
    clock.advance(600)
    assert collector.full == 2, "stopped"


def test_a_failing_collection_is_logged_and_the_timer_goes_on(logged_errors):
    clock, collector = Clock(), FakeCollector()

    def broken(generation=2):
        raise RuntimeError("gc is broken")

    collector.collect = broken
    service = CollectorService(clock, 10.0, collector)
    service.startService()
    collector.young_collection(young=10, freed=0)
    clock.advance(10)
    assert [e["log_failure"].type for e in logged_errors] == [RuntimeError]
    logged_errors.clear()
    clock.advance(10)
    assert len(logged_errors) == 1, "still running"
    logged_errors.clear()
    service.stopService()


def test_the_real_collector_is_left_as_it_was():
    """
    Against the process's own C{gc}: started and stopped, the service
    leaves the thresholds and the callbacks as they were.
    """
    import gc

    before = gc.get_threshold()
    service = CollectorService(Clock(), 10.0)
    service.startService()
    try:
        assert gc.get_threshold()[2] == NEVER
        assert gc.get_freeze_count() > 0
        gc.collect(1)
        assert service.promoted >= 0
    finally:
        service.stopService()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
    assert service._observe not in gc.callbacks


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
