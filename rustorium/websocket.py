"""
The WebSocket layer: Autobahn protocol and factory, framing and output only.

The protocol authenticates the opening handshake (HTTP 401 before any
session exists), then hands every message to its L{Session} and implements
L{IConnection} for it. It knows WebSocket and nothing of the API.

Output: updates and heartbeats are framed once for all connections. The
hub hands each update to the connection's L{Outlet}, which on the server's
own ports sends it straight to the socket (L{rustorium.output}); a batch of
updates (a market tick), and the replies of one reactor turn, leave in one
write per connection. The protocol is
the transport's streaming producer: when the transport's buffer
passes its bound Twisted pauses it, and until it resumes, updates on prices
and volumes are conflated to the newest per key while transaction updates
and replies are kept, up to C{max-backlog} bytes; past that the connection
is closed with 4101 (its subscriptions stay resumable). Autobahn's own
writes (pongs) count against that bound too. Memory per reader stays
bounded however slowly it reads.

Input: every frame a client sends, of any kind, takes a token of the
connection's frame budget (C{frame-rate}, C{frame-burst}; past it, 4008)
and counts as a sign of life for the silence timeout. The opening handshake
has what is left of the deadline its connection got when it was accepted
(L{rustorium.admission}).
"""

import re
import socket
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import __version__, quietdebug
from .admission import Admission, Ticket
from .closecodes import CloseCode
from .config import normalise_origin
from .connection_memory import (
    configured_protocol,
    needs_send_queue,
    shed_handshake,
)
from .hub import Update
from .logs import redact
from .output import Flusher, Outlet, WriteThroughServer
from .ratelimit import TokenBucket
from .server import Server
from .session import IConnection, Session
from .storage.keys import CLIENT, ApiKey

API_PATH = "/v1"
_OPEN = WebSocketServerProtocol.STATE_OPEN


def prepare_frame(payload: bytes) -> bytes:
    """
    Frame an encoded text message once for any number of connections: an
    Autobahn prepared message's wire bytes. (Compression is never
    negotiated, so the same bytes serve everyone.)
    """
    return PreparedMessage(payload, False, False, True).payloadHybi


PING_FRAME = b"\x89\x00"
"""A WebSocket ping with no payload, as the server sends it (unmasked)."""


def prepare_heartbeat(payload: bytes) -> bytes:
    """
    A heartbeat message's text frame followed by a WebSocket ping, framed
    once for every connection: a client that answers either (its library
    answers pings by itself) shows it is alive.
    """
    return prepare_frame(payload) + PING_FRAME


_QUOTED_URI = re.compile(r'((?:fragment identifier|could not parse) )"[^"]*"')


def _redacted_reason(reason: str) -> str:
    """
    A handshake failure's reason without what may be a key: Autobahn
    quotes the fragment or the unparsable request URI in it, and logs it.
    """
    return redact(_QUOTED_URI.sub(r'\1"<redacted>"', reason))


def _presented_key(request: Any) -> str | None:
    """
    The API key of a handshake: C{Authorization: Bearer KEY}, else the
    C{api_key} query parameter.
    """
    authorization = request.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    values = request.params.get("api_key")
    return values[0] if values else None


class _ClosedSink:
    """
    The sink of a connection that has not opened: never direct.
    """

    direct = False


@implementer(IConnection)
class RustoriumServerProtocol(WebSocketServerProtocol):
    """
    One WebSocket connection.
    """

    # Autobahn owns self.log (ours is _log) and sets self.peer, which
    # IConnection asks for, to a string such as "tcp:127.0.0.1:50312".
    _log = Logger()
    session: Session | None = None
    _api_key: ApiKey | None = None
    # Output: frames queued by a batch, and while the transport has paused
    # us, what is held back (conflation key or sequence -> frame).
    _out: list[bytes] | None = None
    _write: Any = None
    # The hub's sink: an Outlet once open. Its `direct` flag is the one
    # check on the hot path; cleared before any close frame leaves
    # (sendCloseFrame), while paused, while replies are queued and while
    # the transport buffers.
    sink: Outlet | _ClosedSink = _ClosedSink()
    _through = False
    _paused = False
    _backlog: dict[object, bytes] | None = None
    _backlog_bytes = 0
    _held_replies = 0
    # Set once the close frame is being sent: nothing counts as slow then.
    _closing = False
    _opened_at = 0.0
    # The place among the site's connections (rustorium.admission).
    _ticket: Ticket | None = None

    def connectionMade(self) -> None:
        self.factory.open_connections.add(self)
        ticket = self.factory.admission.claim(self.transport)
        if ticket is not None:
            # Taken over from the site's HTTP channel: the handshake's
            # deadline counts from the connection, so Autobahn's own timer
            # gets only what is left of it.
            self._ticket = ticket
            self.openHandshakeTimeout = ticket.remaining()
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        """
        Bytes from the client, straight to Autobahn's framing: its Twisted
        adapter would first build a debug line's colourised arguments
        (C{hltype}, C{hlval}) on every read, whether or not debug logging
        is on, which cost more than parsing a small frame.
        """
        self._dataReceived(data)

    def connectionLost(self, reason: Any) -> None:
        self.factory.open_connections.discard(self)
        if self._ticket is not None:
            self._ticket.release(self.transport)
        if self._api_key is not None:
            counts = self.factory.api_server.connections_per_key
            counts[self._api_key.key_id] -= 1
            if counts[self._api_key.key_id] <= 0:
                del counts[self._api_key.key_id]
        super().connectionLost(reason)

    def onConnect(self, request: Any) -> "Deferred[None] | None":
        try:
            return self._check_handshake(request)
        except ConnectionDeny:
            raise
        except Exception:
            # Autobahn would answer 500 but log no traceback.
            self._log.failure("Checking a handshake failed")
            raise ConnectionDeny(500, "internal error") from None

    def _check_handshake(self, request: Any) -> "Deferred[None]":
        server: Server = self.factory.api_server
        if not server.broker_ready:
            raise ConnectionDeny(
                503, "this node cannot reach the cluster's broker; try another node or later"
            )
        if not server.ready:
            raise ConnectionDeny(503, "the server is starting; try again shortly")
        path = self.factory.path
        if path is not None and request.path != path:
            raise ConnectionDeny(404, f"no WebSocket endpoint here; connect to {path}")
        allowed = server.settings.allowed_origins
        origin = request.headers.get("origin")
        if allowed and origin is not None and normalise_origin(origin) not in allowed:
            self._log.info("Refused a handshake from {peer}: origin {origin} not allowed",
                           peer=self.peer, origin=origin[:200])
            raise ConnectionDeny(403, "this origin is not allowed")
        key = _presented_key(request)
        if key is None:
            raise ConnectionDeny(
                401,
                "missing API key: add ?api_key=KEY to the URL or send Authorization: Bearer KEY",
            )
        d = server.keys.authenticate(key)
        d.addCallbacks(self._authenticated, self._authentication_failed)
        return d

    def _authenticated(self, api_key: ApiKey | None) -> None:
        if self.state == self.STATE_CLOSED:
            # The client left while its key was looked up: connectionLost
            # has run, so a slot counted now would never be given back
            # (and Autobahn would open a session on the dead connection).
            raise ConnectionDeny(400, "the connection closed during the handshake")
        if api_key is None:
            self._log.info("Refused a handshake from {peer}: unknown or revoked API key",
                           peer=self.peer)
            raise ConnectionDeny(401, "unknown or revoked API key")
        if not api_key.allows(CLIENT):
            self._log.info("Refused a handshake from {peer}: key {key_name} has no client scope",
                           peer=self.peer, key_name=api_key.name)
            raise ConnectionDeny(
                403, "this API key has no client scope: it serves the HTTP API only"
            )
        server: Server = self.factory.api_server
        limit = server.settings.max_connections_per_key
        counts = server.connections_per_key
        if limit and counts[api_key.key_id] >= limit:
            self._log.info(
                "Refused a handshake from {peer}: key {key_name} has {limit} connections",
                peer=self.peer, key_name=api_key.name, limit=limit,
            )
            raise ConnectionDeny(
                429, f"this API key already has {limit} connections, the most allowed"
            )
        counts[api_key.key_id] += 1
        self._api_key = api_key

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        # Autobahn logs the reason (twice); it may quote the request URI.
        super().failHandshake(_redacted_reason(reason), code, responseHeaders)

    def _authentication_failed(self, failure: Failure) -> None:
        self._log.failure("Checking an API key failed", failure)
        raise ConnectionDeny(503, "cannot check API keys right now; try again shortly")

    def onOpen(self) -> None:
        try:
            shed_handshake(self)
            self._start_output()
            self.session = Session(self, self._api_key, self.factory.api_server)
            self._opened_at = self.factory.reactor.seconds()
            self._log.info("Connection opened: {peer} with key {key_name}",
                           peer=self.peer, key_name=self._api_key.name)
        except Exception:
            # onOpen runs in a Deferred chain with no errback: log here.
            self._log.failure("Opening a session failed")
            self.sendClose(int(CloseCode.INTERNAL_ERROR), "internal error")

    def onFrameBegin(self) -> None:
        """
        Every frame the client sends, of any kind, takes one token from the
        connection's frame budget (C{frame-rate}, C{frame-burst}), and
        shows that the client is alive (pongs to the server's pings too).
        """
        if not self._frames.take():
            self._frame_flood()
        session = self.session
        if session is not None:
            server = self.factory.api_server
            server.sessions.touch(session, server.clock.seconds())
        super().onFrameBegin()

    def _frame_flood(self) -> None:
        """
        The client sent frames past its budget: close it with 4008 and
        read nothing more from it (not even the rest of this read), so a
        flood costs no more CPU; the close timeout drops the connection if
        the client never reads the close frame.
        """
        if self.state == _OPEN:
            self._log.info(
                "Closing {peer} (key {key_name}): more than {burst} frames at once "
                "or {rate:g} a second",
                peer=self.peer, key_name=self._api_key.name,
                burst=self.factory.api_server.settings.frame_burst,
                rate=self.factory.api_server.settings.frame_rate,
            )
            self.factory.api_server.counters.frame_floods += 1
            reason = "too many frames; fix the client before reconnecting"
            if self.session is not None:
                self.session.close(CloseCode.POLICY_VIOLATION, reason)
            else:
                self.close(int(CloseCode.POLICY_VIOLATION), reason)
        self.data = b""
        self.transport.pauseProducing()

    def onOpenHandshakeTimeout(self) -> None:
        if self.state == self.STATE_CONNECTING:
            self.factory.api_server.counters.handshake_timeouts += 1
        super().onOpenHandshakeTimeout()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None:
            return
        try:
            session.message_received(payload, isBinary)
        except Exception:
            self._log.failure("Handling a message from {peer} failed", peer=self.peer)
            session.close(CloseCode.INTERNAL_ERROR, "internal error")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session = self.session
        if session is None:
            return
        self.session = None
        session.connection_lost()
        # Autobahn passes the client's close code; when the server closed,
        # the code that matters is the one it sent.
        if self.closedByMe:
            closed_by, code = "server", self.localCloseCode
            reason = (self.localCloseReason or b"").decode("utf-8", "replace")
        else:
            closed_by = "client"
        self._log.info(
            "Connection closed by the {closed_by}: {peer} with key {key_name}"
            " (code {code}, {seconds:.1f} s)",
            closed_by=closed_by, peer=self.peer, key_name=self._api_key.name, code=code,
            reason=reason, seconds=self.factory.reactor.seconds() - self._opened_at,
        )

    # IConnection and the hub's sink. The hub unsubscribes a session that
    # ends, but Autobahn may start closing (a close frame from the peer, a
    # protocol error) before telling us: no data frame may follow a close
    # frame, hence the state checks.

    def deliver(self, update: Update) -> None:
        """
        The slow path of L{Outlet.deliver}: paused (hold it), replies
        queued this turn (queue behind them), the transport buffering (write
        behind what it holds), or closing (drop it).
        """
        if self._paused:
            self._hold(update.key if update.conflatable else update.number, update.frame)
        elif self.state == _OPEN:
            if self._out:
                self._out.append(update.frame)
            else:
                self._write(update.frame)

    def enqueue(self, update: Update) -> bool:
        if self._paused:
            self._hold(update.key if update.conflatable else update.number, update.frame)
            return False
        out = self._out
        out.append(update.frame)
        if len(out) == 1:
            self.sink.direct = False
            return True
        return False

    def flush(self) -> None:
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.state == _OPEN:
            paused = self._paused
            self._write(data)
            if paused:
                self._unsent(len(data))
        self._refresh_direct()

    def _refresh_direct(self) -> None:
        """
        Let the outlet write directly again if nothing stands in the way.
        """
        transport = self.transport
        self.sink.direct = (
            self.state == _OPEN
            and not self._paused
            and not self._out
            and not (self._through and (transport.dataBuffer or transport._tempDataLen))
        )

    def transport_buffering(self) -> None:
        self.sink.direct = False

    def transport_drained(self) -> None:
        self._refresh_direct()

    def send_payload(self, payload: bytes) -> None:
        self._queue_frame(prepare_frame(payload), None)

    def send_frame(self, frame: bytes) -> None:
        self._queue_frame(frame, "heartbeat")

    def close(self, code: int, reason: str) -> None:
        if self.state == _OPEN:
            self._closing = True
            self.flush()
            self.sendClose(code, reason)

    def _queue_frame(self, frame: bytes, conflation_key: object) -> None:
        """
        Queue a reply or heartbeat: what a turn queues leaves in one write
        at its end (several pipelined commands, a group commit). Not named
        C{_send}: Autobahn's protocol has a C{_send} of its own, which it
        calls to drain its send queue.
        """
        if self._paused:
            if conflation_key is None:
                self._held_replies += 1
                conflation_key = ("reply", self._held_replies)
            self._hold(conflation_key, frame)
        elif self.state == _OPEN:
            out = self._out
            if not out:
                self.sink.direct = False
                self.factory.flusher.mark(self)
            out.append(frame)

    def _start_output(self) -> None:
        """
        Set up an open connection: its frame budget, and its output path
        (batches, direct writes, backpressure and the socket's send buffer).
        Also used by the conformance echo mode, conformance/echo_server.py.
        """
        settings = self.factory.api_server.settings
        self._frames = TokenBucket(
            settings.frame_rate, settings.frame_burst, self.factory.reactor.seconds
        )
        transport = self.transport
        self._out = []
        self._write = transport.write
        self._through = isinstance(transport, WriteThroughServer)
        self.sink = Outlet(
            transport.write,
            transport.socket.send if self._through else None,
            self.deliver,
            self.enqueue,
            self.flush,
        )
        if self._through:
            transport.listener = self
        self._take_over_backpressure()
        self._set_send_buffer()
        self._refresh_direct()

    # Backpressure: this protocol is its transport's streaming producer.

    def _take_over_backpressure(self) -> None:
        """
        Become the transport's producer. A connection taken over from
        twisted.web still has the HTTP channel registered, which would stop
        reading from the client when its output backs up.
        """
        transport = self.transport
        try:
            transport.unregisterProducer()
        except RuntimeError:
            pass
        transport.registerProducer(self, True)

    def _set_send_buffer(self) -> None:
        size = self.factory.api_server.settings.send_buffer
        if not size:
            return
        handle = getattr(self.transport, "getHandle", lambda: None)()
        if isinstance(handle, socket.socket):
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    def sendCloseFrame(self, *args: Any, **kwargs: Any) -> None:
        """
        Send what is queued, then the close frame: replies queued for the
        end of this turn (or held while paused) answer requests that came
        before whatever closes the connection, a protocol error included
        (a client that pipelines a good request and a bad frame gets the
        reply, then the close).
        """
        if self.state == _OPEN:
            self._closing = True
            self.flush()
            backlog = self._backlog
            if backlog:
                self._backlog = {}
                self._backlog_bytes = 0
                self._write(b"".join(backlog.values()))
        self.sink.direct = False
        super().sendCloseFrame(*args, **kwargs)

    def pauseProducing(self) -> None:
        self._paused = True
        self.sink.direct = False
        if self._backlog is None:
            self._backlog = {}

    def resumeProducing(self) -> None:
        self._paused = False
        backlog, self._backlog = self._backlog, None
        self._backlog_bytes = 0
        if backlog and self.state == _OPEN:
            self._write(b"".join(backlog.values()))
        self._refresh_direct()

    def stopProducing(self) -> None:
        self._out = None
        self._backlog = None

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """
        Autobahn's own writes (pongs, close frames, the handshake response)
        go straight to the transport: while it has paused us they pile up
        there, so they count against C{max-backlog} as held frames do. A
        client that pings and never reads is closed (4101) rather than
        growing the server without limit.
        """
        if sync or chopsize:
            needs_send_queue(self)
        paused = self._paused
        super().sendData(data, sync, chopsize)
        if paused:
            self._unsent(len(data))

    def _unsent(self, size: int) -> None:
        """
        Count C{size} bytes written to the transport while it has paused us
        (so it holds them unsent) against C{max-backlog}.
        """
        self._backlog_bytes += size
        if self._backlog_bytes > self.factory.api_server.settings.max_backlog:
            self._slow_consumer()

    def _hold(self, key: object, frame: bytes) -> None:
        backlog = self._backlog
        if isinstance(key, str):
            # Conflate: keep the newest value of this key, at the back so
            # that what is sent stays in order of message id.
            if backlog.pop(key, None) is not None:
                self.factory.api_server.counters.conflated += 1
            backlog[key] = frame
            return
        backlog[key] = frame
        self._unsent(len(frame))

    def _slow_consumer(self) -> None:
        if self._closing or self.state != _OPEN:
            # The close frame is on its way; the close timeout drops the
            # connection if the client never reads it.
            return
        self._log.info("Closing {peer} (key {key_name}): it reads too slowly",
                       peer=self.peer, key_name=self._api_key.name)
        self.factory.api_server.counters.slow_consumers += 1
        self._backlog = {}
        self._backlog_bytes = 0
        reason = "reading too slowly; reconnect and resume"
        session = self.session
        # The close frame queues behind what the client has not read;
        # Autobahn's close timeout drops the connection if it never does.
        if session is not None:
            session.close(CloseCode.SLOW_CONSUMER, reason)
        else:
            self.close(int(CloseCode.SLOW_CONSUMER), reason)


class RustoriumServerFactory(WebSocketServerFactory):
    """
    Builds connections for one L{Server}, with the production protocol
    options: size limits (1009 on excess, with a close frame rather than a
    bare drop), handshake and close timeouts, no compression (so prepared
    frames serve every connection), masked client frames required.

    @ivar path: the request path the handshake must use, or C{None} to
        accept any (when mounted as a resource, the site routes).
    """

    protocol = RustoriumServerProtocol

    def __init__(
        self, api_server: Server, path: str | None = API_PATH, reactor: Any = None
    ) -> None:
        super().__init__(server=f"Rustorium/{__version__}", reactor=reactor)
        # Autobahn's debug lines cost 0.3 ms per connection even when not
        # logged: format them only when they are (see quietdebug).
        quietdebug.install()
        self.api_server = api_server
        self.path = path
        self.flusher = Flusher(self.reactor)
        self.open_connections: set[RustoriumServerProtocol] = set()
        settings = api_server.settings
        self.admission = Admission(settings, self.reactor, api_server.counters)
        self.setProtocolOptions(
            maxFramePayloadSize=settings.max_message_size,
            maxMessagePayloadSize=settings.max_message_size,
            failByDrop=False,
            openHandshakeTimeout=settings.handshake_timeout,
            closeHandshakeTimeout=settings.close_timeout,
            requireMaskedClientFrames=True,
            perMessageCompressionAccept=lambda offers: None,
            autoPingInterval=0,
            tcpNoDelay=True,
            # Origins are checked against allowed-origins in onConnect (403);
            # Autobahn's own check would refuse file:// pages with a 400
            # even when any origin is allowed.
            allowNullOrigin=True,
        )

    def setProtocolOptions(self, **options: Any) -> None:
        """
        Set Autobahn's protocol options, and carry them on the protocol
        class rather than copied onto each connection
        (L{rustorium.connection_memory.configured_protocol}).
        """
        super().setProtocolOptions(**options)
        self.protocol = configured_protocol(self.protocol, self)
