"""
Jobs that run in exactly one node of a cluster at a time.

The market simulator and the block producer must not run twice: two random
walks would publish two prices per tick, two block producers would race for
the same pending transactions. L{SingletonService} runs such a job only
while this node holds a lease on the broker, renews it often, and stops the
job as soon as a renewal fails or is overdue, so the job stops here before
the lease can expire and another node can take it. When the holder dies,
its lease expires after C{ttl} and the next node to ask takes the job.

With the embedded C{local} broker there is one process, and
L{LocalLeases} grants every lease at once.
"""

from typing import Any, Protocol

from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


class ILeases(Protocol):
    """
    Leases on the broker (see L{rustorium.broker.interface.IBroker}).
    """

    def acquire_lease(self, name: str, holder: str, ttl: float) -> "Deferred[bool]":
        """
        Take the lease C{name} for C{holder}, or renew it if C{holder}
        has it, for C{ttl} seconds; fire with whether C{holder} has it now.
        """

    def release_lease(self, name: str, holder: str) -> Deferred:
        """
        Give the lease up if C{holder} has it.
        """


class LocalLeases:
    """
    Leases in a single process: there is nobody to share with.
    """

    def acquire_lease(self, name: str, holder: str, ttl: float) -> "Deferred[bool]":
        return succeed(True)

    def release_lease(self, name: str, holder: str) -> Deferred:
        return succeed(None)


class SingletonService(Service):
    """
    Runs C{job} (a service) only while this node holds the lease C{name}.

    Every C{ttl / 4} seconds the lease is taken or renewed. The job is
    started when the lease is won and stopped when a renewal is refused,
    fails, or has not succeeded for half the lease's lifetime (a renewal
    that hangs counts as lost), which is well before the lease expires for
    the other nodes.

    @ivar leading: whether the job runs here now.
    """

    log = Logger()

    def __init__(
        self, name: str, holder: str, leases: ILeases, job: IService, ttl: float, clock: Any
    ) -> None:
        self.name = f"singleton:{name}"
        self._lease = name
        self._holder = holder
        self._leases = leases
        self._job = job
        self._ttl = ttl
        self._clock = clock
        self._loop = LoopingCall(self._renew)
        self._loop.clock = clock
        self._asking = False
        self._renewed_at: float | None = None
        self.leading = False

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._ttl / 4, now=True)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        if not self.leading:
            return succeed(None)
        d = self._step_down("this node is stopping")
        d.addCallback(lambda _: self._leases.release_lease(self._lease, self._holder))
        # The broker may be stopping too; then the lease simply expires.
        d.addErrback(lambda f: self.log.info(
            "Lease {name} not released ({error}); it expires within {ttl:g} s",
            name=self._lease, error=f.getErrorMessage(), ttl=self._ttl,
        ))
        return d

    def _renew(self) -> None:
        now = self._clock.seconds()
        if self.leading and (self._renewed_at is None or now - self._renewed_at > self._ttl / 2):
            self._step_down("its lease could not be renewed in time")
        if self._asking:
            return
        self._asking = True
        d = maybeDeferred(self._leases.acquire_lease, self._lease, self._holder, self._ttl)
        d.addCallbacks(self._answered, self._failed, callbackArgs=(now,))

    def _answered(self, held: bool, asked_at: float) -> None:
        self._asking = False
        if not self.running:
            return
        if held:
            self._renewed_at = asked_at
            if not self.leading:
                self.leading = True
                self.log.info("This node now runs {name}", name=self._lease)
                self._job.startService()
        elif self.leading:
            self._step_down("another node holds its lease")

    def _failed(self, failure: Any) -> None:
        self._asking = False
        self.log.failure("Renewing lease {name} failed", failure, name=self._lease)
        if self.leading:
            self._step_down("its lease could not be renewed")

    def _step_down(self, why: str) -> Deferred:
        self.leading = False
        self._renewed_at = None
        self.log.info("This node stops running {name}: {why}", name=self._lease, why=why)
        return maybeDeferred(self._job.stopService)
