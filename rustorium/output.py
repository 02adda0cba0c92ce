"""
The output path to the socket, where fan-out spends its time.

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
L{rustorium.hub.IHub.publish_batch}, so one write carries a whole tick.)
"""

from typing import Any

from twisted.internet import tcp


class WriteThroughServer(tcp.Server):
    """
    A TCP server transport that writes straight to the socket when its
    buffer is empty.
    """

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


class WriteThroughPort(tcp.Port):
    """
    A listening TCP port whose connections are L{WriteThroughServer}s.
    """

    transport = WriteThroughServer


class _ListeningReactor:
    """
    A reactor whose C{listenTCP} (and so C{listenSSL}, which Twisted builds
    on it) listens on a L{WriteThroughPort}; everything else is the real
    reactor's.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        listening = WriteThroughPort(port, factory, backlog, interface, self._reactor)
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
        listening._type = "TLS"
        return listening

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)


def listening_reactor(reactor: Any) -> Any:
    """
    The reactor to give C{serverFromString} so that C{tcp:} and C{ssl:}
    endpoints listen with write-through transports.
    """
    return _ListeningReactor(reactor)


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
