"""
The output path to the socket, where fan-out spends its time.

- L{Outlet}: what the hub calls for each subscriber of each update. It is
  small and slotted; when the connection may write directly it touches
  nothing but itself and the socket (one C{send}), and otherwise hands the
  update to its protocol's slower path.

- L{WriteThroughServer}: a TCP transport whose C{write} sends straight to
  the socket when nothing is buffered (one C{send} system call), and falls
  back to Twisted's buffered path whenever anything is (so order and
  backpressure are exactly Twisted's). Twisted's own path costs three
  system calls per small write (C{sendto} plus two C{epoll_ctl} toggling
  EPOLLOUT) and a later C{doWrite}; measured, that is more than the rest of
  a delivery put together. L{WriteThroughPort} builds these transports, and
  L{listening_reactor} makes C{tcp:} and C{ssl:} endpoint strings listen on
  such ports (C{write-through = false} turns it off).

- L{Flusher}: replies queued for a connection during one reactor turn
  (four pipelined commands, a group commit answering many) leave in one
  write at the end of the turn.

(Batches of updates are coalesced per connection by the hub, see
L{rustorium.fanout.Fanout.deliver}, so one write carries a whole tick.)
"""

import socket
from collections.abc import Callable
from typing import Any

from twisted.copyright import version as twisted_version
from twisted.internet import tcp
from twisted.logger import Logger
from zope.interface import implementer

from .hub import ISink
from .internals import name_port, write_through_supported

log = Logger()


@implementer(ISink)
class Outlet:
    """
    A connection's fan-out fast path.

    @ivar direct: whether an update may go straight to the socket: kept by
        the protocol (open, not paused, nothing queued) and by the
        transport (nothing buffered; see L{WriteThroughServer.listener}).
    """

    __slots__ = ("_enqueue", "_flush", "_send", "_slow", "_write", "direct")

    def __init__(
        self,
        write: Callable[[bytes], None],
        send: Callable[[bytes], int] | None,
        slow: Callable[[Any], None],
        enqueue: Callable[[Any], bool],
        flush: Callable[[], None],
    ) -> None:
        """
        @param write: the transport's write.
        @param send: the socket's send, when the transport writes through
            (so that bypassing it keeps the byte order), else C{None}.
        @param slow: delivers an update when not C{direct}.
        @param enqueue: queues an update of a batch (see L{ISink}).
        @param flush: writes a batch.
        """
        self.direct = False
        self._write = write
        self._send = send
        self._slow = slow
        self._enqueue = enqueue
        self._flush = flush

    def deliver(self, update: Any) -> None:
        if self.direct:
            frame = update.frame
            send = self._send
            if send is None:
                self._write(frame)
                return
            try:
                sent = send(frame)
            except OSError:
                sent = 0
            if sent != len(frame):
                # The transport buffers the rest and turns direct off.
                self._write(frame[sent:] if sent else frame)
        else:
            self._slow(update)

    def enqueue(self, update: Any) -> bool:
        return self._enqueue(update)

    def flush(self) -> None:
        self._flush()


class WriteThroughServer(tcp.Server):
    """
    A TCP server transport that writes straight to the socket when its
    buffer is empty.

    @ivar listener: told when the buffer starts holding data
        (C{transport_buffering()}) and when it is empty again
        (C{transport_drained()}), so that an L{Outlet} bypassing this
        transport never overtakes buffered bytes.
    """

    listener: Any = None

    def doWrite(self) -> Any:
        result = super().doWrite()
        listener = self.listener
        if listener is not None and not self.dataBuffer and not self._tempDataLen:
            listener.transport_drained()
        return result

    def write(self, data: bytes) -> None:
        # Only the buffer's emptiness is checked here. A closed or
        # half-closed socket refuses the send, and Twisted's write below
        # then does what it always does (drops the data, or buffers it for
        # doWrite to meet the error and lose the connection).
        if not self.dataBuffer and not self._tempDataLen:
            try:
                sent = self.socket.send(data)
            except OSError:
                sent = 0
            if sent == len(data):
                return
            if sent:
                data = data[sent:]
        super().write(data)
        listener = self.listener
        if listener is not None and (self.dataBuffer or self._tempDataLen):
            listener.transport_buffering()


class WriteThroughPort(tcp.Port):
    """
    A listening TCP port whose connections are L{WriteThroughServer}s.
    """

    transport = WriteThroughServer


class ReusePort(tcp.Port):
    """
    A listening TCP port with C{SO_REUSEPORT} set, so that several worker
    processes listen on one port and the kernel spreads connections over
    them (see L{rustorium.workers}).
    """

    def createInternetSocket(self) -> socket.socket:
        s = super().createInternetSocket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return s


class WriteThroughReusePort(ReusePort):
    """
    A L{ReusePort} whose connections are L{WriteThroughServer}s.
    """

    transport = WriteThroughServer


class _ListeningReactor:
    """
    A reactor whose C{listenTCP} (and so C{listenSSL}, which Twisted builds
    on it) listens on a port of the given class; everything else is the
    real reactor's.
    """

    def __init__(self, reactor: Any, port_class: type[tcp.Port]) -> None:
        self._reactor = reactor
        self._port_class = port_class

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        listening = self._port_class(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return listening

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
        interface: str = "",
    ) -> Any:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        listening = self.listenTCP(
            port, TLSMemoryBIOFactory(contextFactory, False, factory), backlog, interface
        )
        name_port(listening, "TLS")
        return listening

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def listening_reactor(reactor: Any, write_through: bool = True, reuse_port: bool = False) -> Any:
    """
    The reactor to give C{serverFromString} so that C{tcp:} and C{ssl:}
    endpoints listen with write-through transports, and with
    C{SO_REUSEPORT} when several workers share the port.

    Write-through is turned off, with a warning, on a Twisted whose
    transports do not count their buffered bytes as this module expects
    (see L{rustorium.internals}).
    """
    if write_through and not write_through_supported():
        log.warn("Twisted {version} buffers writes in a way write-through does not know: "
                 "using Twisted's own transports (write-through off)",
                 version=twisted_version)
        write_through = False
    if reuse_port:
        port_class = WriteThroughReusePort if write_through else ReusePort
    else:
        port_class = WriteThroughPort if write_through else tcp.Port
    return _ListeningReactor(reactor, port_class)


class Flusher:
    """
    Calls C{flush()} on every connection that queued output during this
    reactor turn, once, at the end of the turn: one timer call per turn,
    whatever the number of connections.
    """

    __slots__ = ("_clock", "_dirty", "_scheduled")

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._dirty: list[Any] = []
        self._scheduled = False

    def mark(self, connection: Any) -> None:
        """
        C{connection.flush()} will be called at the end of this turn.
        """
        self._dirty.append(connection)
        if not self._scheduled:
            self._scheduled = True
            self._clock.callLater(0, self.flush)

    def flush(self) -> None:
        """
        Flush every marked connection now.
        """
        dirty, self._dirty = self._dirty, []
        self._scheduled = False
        for connection in dirty:
            connection.flush()
