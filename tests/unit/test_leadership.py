"""
SingletonService: a job runs only while its node holds the lease.
"""

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from rustorium.leadership import LocalLeases, SingletonService


class Job(Service):
    def __init__(self) -> None:
        self.starts = 0
        self.stops = 0

    def startService(self) -> None:
        super().startService()
        self.starts += 1

    def stopService(self) -> None:
        super().stopService()
        self.stops += 1


class Leases:
    """
    A broker's leases, answered by the test: each call takes the next
    answer (True, False, an exception, or None to leave it hanging).
    """

    def __init__(self) -> None:
        self.answers: list = []
        self.asked: list[tuple[str, str, float]] = []
        self.released: list[tuple[str, str]] = []
        self.hanging: list[Deferred] = []

    def acquire_lease(self, name, holder, ttl):
        self.asked.append((name, holder, ttl))
        answer = self.answers.pop(0) if self.answers else True
        if answer is None:
            d = Deferred()
            self.hanging.append(d)
            return d
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)

    def release_lease(self, name, holder):
        self.released.append((name, holder))
        return succeed(None)


def singleton(leases, ttl=4.0):
    clock = Clock()
    job = Job()
    service = SingletonService("sources", "node-a", leases, job, ttl, clock)
    return service, job, clock


def test_starts_the_job_once_the_lease_is_won():
    leases = Leases()
    leases.answers = [False, True, True]
    service, job, clock = singleton(leases)
    service.startService()
    assert (job.starts, service.leading) == (0, False)
    clock.advance(1.0)
    assert (job.starts, service.leading) == (1, True)
    clock.advance(1.0)
    assert job.starts == 1, "a renewal does not start the job again"
    assert leases.asked[0] == ("sources", "node-a", 4.0)


def test_stops_the_job_when_another_node_holds_the_lease():
    leases = Leases()
    leases.answers = [True, False]
    service, job, clock = singleton(leases)
    service.startService()
    clock.advance(1.0)
    assert (job.running, service.leading) == (False, False)
    assert job.stops == 1


def test_stops_the_job_when_a_renewal_fails(logged_errors):
    leases = Leases()
    leases.answers = [True, ConnectionError("broker down")]
    service, job, clock = singleton(leases)
    service.startService()
    clock.advance(1.0)
    assert not job.running and not service.leading
    assert [e["log_failure"].type for e in logged_errors] == [ConnectionError]
    logged_errors.clear()


def test_stops_the_job_before_the_lease_can_expire_when_renewals_hang():
    leases = Leases()
    leases.answers = [True, None]
    service, job, clock = singleton(leases, ttl=4.0)
    service.startService()
    clock.advance(1.0)  # the renewal hangs
    assert job.running
    clock.advance(1.0)
    assert job.running, "renewed 2 s ago: half the lease is left"
    clock.advance(1.0)
    assert not job.running, "3 s without a renewal of a 4 s lease: step down"
    leases.hanging[0].callback(True)
    clock.advance(1.0)
    assert job.running, "a later renewal wins it back"


def test_stopping_releases_the_lease():
    leases = Leases()
    service, job, clock = singleton(leases)
    service.startService()
    service.stopService()
    assert not job.running
    assert leases.released == [("sources", "node-a")]
    clock.advance(10)
    assert len(leases.asked) == 1, "no renewals after stopping"


def test_stopping_without_the_lease_releases_nothing():
    leases = Leases()
    leases.answers = [False]
    service, job, _ = singleton(leases)
    service.startService()
    service.stopService()
    assert leases.released == [] and job.stops == 0


def test_local_leases_are_always_granted():
    service, job, _ = singleton(LocalLeases())
    service.startService()
    assert job.running and service.leading
