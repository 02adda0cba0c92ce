"""
Admission of TCP connections to a listening site, before any WebSocket
exists: how many may be open at all, how many one address may have still
sending their HTTP request, and how long that opening handshake may take in
all.

twisted.web's own timeout is an idle timeout, reset by every byte, so a
client trickling a header byte every few seconds would keep its connection
(and a file descriptor) forever; a few hundred such clients could take them
all. Here each connection gets one deadline, C{handshake-timeout} after it
was accepted (or after its previous HTTP request was answered): the HTTP
request must have arrived by then, and a WebSocket handshake must have
completed (Autobahn's own timer gets the time left, see
L{rustorium.websocket.RustoriumServerProtocol.connectionMade}).

- L{Admission}: the counts and caps of one site, and the tickets of the
  connections it admitted.
- L{GuardedSite} and L{GuardedChannel}: the C{twisted.web} site and HTTP
  channel that ask it.

Nothing here runs per message or per update: only at accept, at the end of
an HTTP request, and when a connection ends.
"""

import resource
from collections import Counter
from typing import Any

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

FD_MARGIN = 100
"""File descriptors kept for the server's own use (database files, logs,
listening sockets, certificate reloads) when C{max-connections} is derived
from the open-file limit."""

LOG_INTERVAL = 10.0
"""Seconds between log lines about refused or timed-out connections (the
rest are counted in the next line, and all in the metrics), so that a flood
of them does not flood the log."""

MAX_CONNECTIONS = "max-connections"
MAX_HANDSHAKES_PER_ADDRESS = "max-handshakes-per-address"


def default_max_connections() -> int:
    """
    The most connections open at once when C{max-connections} is 0: the
    process's open-file limit less L{FD_MARGIN}, so that accepting
    connections never takes the descriptors the server itself needs.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, soft - FD_MARGIN)


class _Throttle:
    """
    Lets a kind of log line through at most once per L{LOG_INTERVAL}, and
    counts the ones held back.
    """

    __slots__ = ("_held", "_last")

    def __init__(self) -> None:
        self._last = float("-inf")
        self._held = 0

    def allow(self, now: float) -> int | None:
        """
        C{None} to hold this line back, else how many were held back since
        the last one let through.
        """
        if now - self._last < LOG_INTERVAL:
            self._held += 1
            return None
        held, self._held, self._last = self._held, 0, now
        return held


class Ticket:
    """
    One admitted connection's place: it counts towards the open
    connections until released, and towards its address's handshakes until
    its HTTP request has arrived.

    @ivar deadline: when the opening handshake must be over (reactor
        seconds).
    """

    __slots__ = ("_admission", "_released", "_timer", "deadline", "handshaking", "host")

    def __init__(self, admission: "Admission", host: str | None, now: float) -> None:
        self._admission = admission
        self.host = host
        self.handshaking = True
        self.deadline = now + admission.timeout
        self._timer: Any = None
        self._released = False

    def start(self, transport: Any, expired: Any) -> None:
        """
        The connection is made: call C{expired()} at the deadline unless its
        request arrives first, and let a WebSocket protocol that takes
        C{transport} over find this ticket (L{Admission.claim}).
        """
        admission = self._admission
        admission._unclaimed[transport] = self
        self._timer = admission.clock.callLater(
            max(0.0, self.deadline - admission.clock.seconds()), expired
        )

    def request_received(self) -> None:
        """
        The HTTP request has arrived: no longer a handshake of its address;
        the deadline stays for a WebSocket handshake to complete.
        """
        self._stop_timer()
        if self.handshaking:
            self.handshaking = False
            self._admission._handshake_over(self.host)

    def next_request(self, transport: Any, expired: Any) -> None:
        """
        A response was sent on a persistent connection: the next request
        gets a deadline of its own.
        """
        self.deadline = self._admission.clock.seconds() + self._admission.timeout
        self.start(transport, expired)

    def remaining(self) -> float:
        """
        Seconds until the deadline (at least a millisecond).
        """
        return max(0.001, self.deadline - self._admission.clock.seconds())

    def timed_out(self, peer: object) -> None:
        """
        The deadline passed before the request arrived.
        """
        self._admission.timed_out(peer)

    def release(self, transport: Any) -> None:
        """
        The connection is gone (called once or more).
        """
        if self._released:
            return
        self._released = True
        self._stop_timer()
        admission = self._admission
        admission._unclaimed.pop(transport, None)
        if self.handshaking:
            self.handshaking = False
            admission._handshake_over(self.host)
        admission.open -= 1

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()


class Admission:
    """
    The connection caps of one site.

    @ivar open: connections admitted and not yet gone.
    @ivar max_connections: the cap on C{open}.
    @ivar max_handshakes_per_address: the cap on one address's connections
        whose HTTP request has not arrived yet (0: none).
    @ivar timeout: seconds an opening handshake may take in all.
    """

    log = Logger()

    def __init__(self, settings: Any, clock: Any, counters: Any) -> None:
        self.clock = clock
        self.max_connections = settings.max_connections or default_max_connections()
        self.max_handshakes_per_address = settings.max_handshakes_per_address
        self.timeout = settings.handshake_timeout
        self._counters = counters
        self.open = 0
        self.handshakes: Counter[str] = Counter()
        self._unclaimed: dict[Any, Ticket] = {}
        self._refusals = _Throttle()
        self._timeouts = _Throttle()

    def admit(self, address: Any) -> Ticket | None:
        """
        A ticket for a new connection from C{address}, or C{None} (and a
        count, and now and then a log line) if a cap is reached.
        """
        host = getattr(address, "host", None)
        if self.open >= self.max_connections:
            self._refuse(MAX_CONNECTIONS, host, f"{self.open} connections are open")
            return None
        per_address = self.max_handshakes_per_address
        if per_address and host is not None and self.handshakes[host] >= per_address:
            self._refuse(
                MAX_HANDSHAKES_PER_ADDRESS, host,
                f"it has {self.handshakes[host]} connections still in their handshake",
            )
            return None
        self.open += 1
        if host is not None:
            self.handshakes[host] += 1
        return Ticket(self, host, self.clock.seconds())

    def claim(self, transport: Any) -> Ticket | None:
        """
        The ticket of the connection on C{transport}, for the WebSocket
        protocol that takes it over from the HTTP channel (which then no
        longer hears of it); C{None} for a connection that did not come
        through a L{GuardedSite} (an embedding application's own site).
        """
        return self._unclaimed.pop(transport, None)

    def timed_out(self, peer: object) -> None:
        """
        Count (and now and then log) a connection closed because its HTTP
        request did not arrive in time.
        """
        self._counters.handshake_timeouts += 1
        held = self._timeouts.allow(self.clock.seconds())
        if held is not None:
            self.log.info(
                "Closed {peer}: its HTTP request did not arrive within the handshake "
                "timeout ({timeout:g} s); {held} more since the last such line",
                peer=str(peer), timeout=self.timeout, held=held,
            )

    def _handshake_over(self, host: str | None) -> None:
        if host is None:
            return
        handshakes = self.handshakes
        handshakes[host] -= 1
        if handshakes[host] <= 0:
            del handshakes[host]

    def _refuse(self, reason: str, host: str | None, why: str) -> None:
        self._counters.connections_refused[reason] += 1
        held = self._refusals.allow(self.clock.seconds())
        if held is not None:
            self.log.warn(
                "Refused a connection from {host}: {why}, the most allowed ({setting}); "
                "{held} more refused since the last such line",
                host=host, why=why, setting=reason, held=held,
            )


class _Refused(Protocol):
    """
    A connection over a cap: closed at once.
    """

    def connectionMade(self) -> None:
        self.transport.abortConnection()


class GuardedChannel(HTTPChannel):
    """
    An HTTP channel that holds its connection's L{Ticket}: the request must
    arrive before the deadline.
    """

    ticket: Ticket | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.ticket is not None:
            self.ticket.start(self.transport, self._expired)

    def allContentReceived(self) -> None:
        if self.ticket is not None:
            self.ticket.request_received()
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        # Before the next request, which may be buffered already and is
        # then read at once.
        if self.ticket is not None and self.transport is not None and self.persistent:
            self.ticket.next_request(self.transport, self._expired)
        super().requestDone(request)

    def connectionLost(self, reason: Any) -> None:
        if self.ticket is not None:
            self.ticket.release(self.transport)
        super().connectionLost(reason)

    def _expired(self) -> None:
        transport = self.transport
        if transport is None:
            return
        self.ticket.timed_out(transport.getPeer())
        transport.abortConnection()


class GuardedSite(Site):
    """
    A site that admits connections through an L{Admission}.
    """

    protocol = GuardedChannel

    def __init__(self, admission: Admission, resource: Any, **kwargs: Any) -> None:
        super().__init__(resource, **kwargs)
        self.admission = admission

    def buildProtocol(self, addr: Any) -> Any:
        ticket = self.admission.admit(addr)
        if ticket is None:
            return _Refused()
        channel = super().buildProtocol(addr)
        channel.ticket = ticket
        return channel
