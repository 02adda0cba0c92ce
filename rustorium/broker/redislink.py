"""
Links to Redis: one connection each, kept up with backoff, failing fast
while down.

txredisapi speaks the protocol (with hiredis parsing replies); this module
decides when a connection may be used. Its own pooled factories wait for a
connection when there is none, so a command sent while Redis is away would
hang until it returns; a L{RedisLink} instead fails it at once with
L{BrokerUnavailable}, and says when the link is lost and when it is usable
again, which the broker turns into C{on_lost} and C{on_restored}.

Importing this module imports C{twisted.internet.reactor} (txredisapi does
at import): import it only once the reactor is installed.
"""

import hashlib
import random
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any
from urllib.parse import unquote, urlsplit

import attrs
import hiredis
import txredisapi
from twisted.internet.defer import Deferred, fail, inlineCallbacks, maybeDeferred, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .interface import BrokerUnavailable


@attrs.frozen
class RedisAddress:
    """
    Where a Redis server is: a C{redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]}
    URL (a user needs Redis 6's ACLs).
    """

    host: str
    port: int = 6379
    db: int = 0
    password: str | None = None
    username: str | None = None

    @classmethod
    def from_url(cls, url: str) -> "RedisAddress":
        """
        @raise ValueError: not such a URL.
        """
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ValueError(f"not a redis://HOST:PORT/DB URL: {url!r}")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"the database of {url!r} must be a number, not {path!r}")
        password = unquote(parts.password) if parts.password else None
        username = unquote(parts.username) if parts.username else None
        return cls(parts.hostname, parts.port or 6379, int(path or 0), password, username)

    def __str__(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


@attrs.frozen
class Script:
    """
    A Lua script shipped in C{rustorium/broker/lua/}, run by its SHA1 and
    sent whole only when Redis does not know it yet.
    """

    name: str
    source: bytes
    sha: str

    @classmethod
    def load(cls, *names: str) -> "Script":
        """
        The script made of the named files, in order (a library first).
        """
        folder = resources.files(__package__) / "lua"
        source = b"\n".join((folder / f"{name}.lua").read_bytes() for name in names)
        return cls(names[-1], source, hashlib.sha1(source).hexdigest())


def backoff(attempt: int, initial: float = 0.1, maximum: float = 5.0) -> float:
    """
    Seconds before reconnection attempt C{attempt} (1, 2, ...): doubling from
    C{initial} up to C{maximum}, with a tenth of jitter so that the nodes of
    a cluster do not reconnect in step.
    """
    delay = min(maximum, initial * 2 ** min(attempt - 1, 30))
    return delay * random.uniform(0.9, 1.1)


def _unavailable(failure: Failure, address: RedisAddress) -> Failure:
    if failure.check(txredisapi.ConnectionError):
        raise BrokerUnavailable(f"the link to Redis at {address} failed: {failure.value}")
    return failure


def execute(protocol: Any, address: RedisAddress, *args: Any, timeout: bool = True) -> Deferred:
    """
    Send one command on C{protocol}: its reply, or L{BrokerUnavailable} if
    the connection fails or times out first.
    """
    d = maybeDeferred(protocol.execute_command, *args, apply_timeout=timeout)
    return d.addErrback(_unavailable, address)


def evaluate(
    protocol: Any, address: RedisAddress, script: Script, keys: Sequence, args: Sequence
) -> Deferred:
    """
    Run C{script} on C{protocol} (by SHA1, or whole if Redis lacks it).
    """
    d = execute(protocol, address, "EVALSHA", script.sha, len(keys), *keys, *args)

    def unknown(failure: Failure) -> Any:
        failure.trap(txredisapi.ResponseError)
        if not str(failure.value).startswith("NOSCRIPT"):
            return failure
        return execute(protocol, address, "EVAL", script.source, len(keys), *keys, *args)

    return d.addErrback(unknown)


POLL_GRACE = 0.001
"""Seconds a due reply timeout waits, so that the reactor polls for I/O once first."""


class GraceCall:
    """
    A delayed call that, once due, waits one more reactor turn (one poll
    for I/O) before it runs, and can be cancelled until then.

    txredisapi times a reply out with a delayed call. On a node whose
    reactor was busy for longer than the reply timeout (thousands of
    handshakes on a starved core), the reply has long arrived and sits
    unread in the socket when the timer is run, since a turn runs its due
    timers before it polls for I/O; the timeout would then drop a healthy
    link, and the node would close every connection (4103). Given one poll
    first, the reply is read, its Deferred fires and cancels this call, and
    only a reply that really did not come times out.
    """

    def __init__(self, reactor: Any, delay: float, f: Any, *args: Any, **kwargs: Any) -> None:
        self._reactor = reactor
        self._run = lambda: f(*args, **kwargs)
        self._done = False
        self._call = reactor.callLater(delay, self._due)

    def _due(self) -> None:
        # Not 0: a positive delay is never run in the turn that scheduled
        # it, whatever the reactor (task.Clock runs a 0 at once), so the
        # reactor polls for I/O first.
        self._call = self._reactor.callLater(POLL_GRACE, self._fire)

    def _fire(self) -> None:
        self._done = True
        self._run()

    def active(self) -> bool:
        return not self._done and self._call.active()

    def cancel(self) -> None:
        self._done = True
        self._call.cancel()


class CommandProtocol(txredisapi.RedisProtocol):
    """
    A connection for commands: replies are left as bytes (no decoding, no
    guessing of numbers), and the link hears when it is lost. A reply's
    timeout gives the reactor one poll for I/O first (L{GraceCall}).
    """

    link: "RedisLink"

    def callLater(self, delay: float, f: Any, *args: Any, **kwargs: Any) -> Any:
        link = getattr(self, "link", None)
        reactor = getattr(link, "_reactor", None) or _global_reactor()
        if delay <= 0:
            return reactor.callLater(delay, f, *args, **kwargs)
        return GraceCall(reactor, delay, f, *args, **kwargs)

    def connectionLost(self, reason: Failure) -> None:
        self.link.lost(self, reason)
        super().connectionLost(reason)

    def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
        # txredisapi's own encoder costs microseconds per argument, and a
        # publish script call has several per update.
        parts = [b"*%d\r\n" % len(args)]
        for arg in args:
            kind = type(arg)
            if kind is str:
                arg = arg.encode()
            elif kind is float:
                arg = format(arg, "f").encode()  # as txredisapi encodes a float
            elif kind is bytearray:
                arg = bytes(arg)
            elif kind is not bytes:
                arg = str(arg).encode()
            parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
        return b"".join(parts)


class SubscriberProtocol(CommandProtocol):
    """
    A connection in pub/sub mode. Messages go to C{receiver.message(channel,
    data)}; once everything read at once is handed over,
    C{receiver.received()} is called, so the receiver can deliver a batch.
    Other replies (subscription confirmations, PINGs) answer the commands in
    order: send one channel per SUBSCRIBE so each command has one reply.
    The messages read before a reply are delivered before its command's
    Deferred fires, so a PING answered is a barrier: every message Redis
    sent before it has been handed over.
    """

    receiver: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # A reader of its own: txredisapi's (its private _reader) is not
        # part of its API.
        self._replies = hiredis.Reader(
            protocolError=txredisapi.InvalidData, replyError=txredisapi.ResponseError
        )

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        reader = self._replies
        reader.feed(data)
        receiver = self.receiver
        reply = reader.gets()
        while reply is not False:
            if type(reply) is list and reply[0] == b"message":
                receiver.message(reply[1], reply[2])
            else:
                receiver.received()
                self.replyQueue.put(reply)
            reply = reader.gets()
        receiver.received()


class _LinkFactory(Factory):
    noisy = False

    def __init__(self, link: "RedisLink", make: Callable[[], CommandProtocol]) -> None:
        self._link = link
        self._make = make

    def buildProtocol(self, addr: Any) -> CommandProtocol:
        protocol = self._make()
        protocol.factory = self
        protocol.link = self._link
        return protocol


class RedisLink:
    """
    One connection to Redis, reconnected with backoff whenever it drops.

    A new connection is authenticated, switched to the database, and
    handed to C{on_connect} (which may return a Deferred: a failure closes
    the connection and counts as a failed attempt). Only then is the link
    usable, and C{on_ready} called. When a usable connection drops,
    C{on_lost} is called with the reason and the link reconnects at once,
    then with backoff.

    A connection that only listens (pub/sub) would never notice that Redis
    stopped answering: cut off by the network, it waits in silence for
    messages that no longer come. With C{keepalive}, a usable connection
    sends a PING that often; one unanswered within the reply timeout closes
    it, as any command would (txredisapi's C{replyTimeout}), and so the
    link is lost.

    @ivar protocol: the usable connection, or C{None}.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        name: str,
        make: Callable[[], CommandProtocol],
        on_connect: Callable[[CommandProtocol], Any],
        on_ready: Callable[[], None],
        on_lost: Callable[[str], None],
        connect_timeout: float = 5.0,
        retry_delay: Callable[[int], float] = backoff,
        keepalive: float | None = None,
    ) -> None:
        """
        @param keepalive: seconds between PINGs on a usable connection
            (C{None}: none are sent).
        """
        self._reactor = reactor
        self.address = address
        self.name = name
        self._factory = _LinkFactory(self, make)
        self._endpoint = HostnameEndpoint(
            reactor, address.host, address.port, timeout=connect_timeout
        )
        self._on_connect = on_connect
        self._on_ready = on_ready
        self._on_lost = on_lost
        self._retry_delay = retry_delay
        self._keepalive = keepalive
        self._pinging: LoopingCall | None = None
        self._ping: Deferred | None = None
        self.protocol: CommandProtocol | None = None
        self._connection: CommandProtocol | None = None
        self._attempt: Deferred | None = None
        self._retry: Any = None
        self._failures = 0
        self._running = False
        self._first: Deferred | None = None
        self._stopped: Deferred | None = None
        self.down_reason = "not connected yet"

    def start(self) -> Deferred:
        """
        Connect; fires once the link is usable, or fails with
        L{BrokerUnavailable} if the first attempt fails (then nothing is
        retried).
        """
        self._running = True
        self._first = Deferred()
        self._connect()
        return self._first

    def stop(self) -> Deferred:
        """
        Stop reconnecting and close the connection, without C{on_lost}.
        """
        self._running = False
        self._stop_pinging()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        connection = self._connection
        if connection is None or not connection.connected:
            return succeed(None)
        self._stopped = Deferred()
        connection.transport.loseConnection()
        return self._stopped

    def _connect(self) -> None:
        self._retry = None
        attempt = self._attempt = self._endpoint.connect(self._factory)
        attempt.addCallback(self._prepare)
        attempt.addCallbacks(self._ready, self._failed)

    @inlineCallbacks
    def _prepare(self, protocol: CommandProtocol) -> Any:
        self._connection = protocol
        address = self.address
        try:
            if address.password is not None:
                credentials = [address.password]
                if address.username is not None:
                    credentials.insert(0, address.username)
                yield execute(protocol, address, "AUTH", *credentials)
            if address.db:
                yield execute(protocol, address, "SELECT", address.db)
            yield self._on_connect(protocol)
            if not protocol.connected:
                raise BrokerUnavailable(f"the link to Redis at {address} closed while opening")
        except BaseException:
            if protocol.connected:
                protocol.transport.abortConnection()
            raise
        return protocol

    def _ready(self, protocol: CommandProtocol) -> None:
        self._attempt = None
        self._failures = 0
        if not self._running:
            protocol.transport.loseConnection()
            return
        self.protocol = protocol
        self._start_pinging(protocol)
        self.log.info("Redis {name} link to {address} is up", name=self.name, address=self.address)
        first, self._first = self._first, None
        if first is not None:
            first.callback(None)
        else:
            self._on_ready()

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        if not self._running:
            return
        reason = failure.getErrorMessage()
        first, self._first = self._first, None
        if first is not None:
            self._running = False
            first.errback(BrokerUnavailable(f"could not link to Redis at {self.address}: {reason}"))
            return
        self._failures += 1
        self.down_reason = reason
        delay = self._retry_delay(self._failures)
        self.log.info(
            "Redis {name} link to {address} failed ({reason}); retrying in {delay:.2f} s",
            name=self.name, address=self.address, reason=reason, delay=delay,
        )
        self._retry = self._reactor.callLater(delay, self._connect)

    def lost(self, protocol: CommandProtocol, reason: Failure) -> None:
        """
        C{protocol}'s connection closed.
        """
        if protocol is not self._connection:
            return
        self._connection = None
        usable = protocol is self.protocol
        self.protocol = None
        self._stop_pinging()
        if not self._running:
            stopped, self._stopped = self._stopped, None
            if stopped is not None:
                stopped.callback(None)
            return
        if usable:
            self.down_reason = f"the connection was lost: {reason.getErrorMessage()}"
            self.log.warn(
                "Redis {name} link to {address} lost: {reason}",
                name=self.name, address=self.address, reason=reason.getErrorMessage(),
            )
            self._retry = self._reactor.callLater(0, self._connect)
            self._on_lost(self.down_reason)
        # A connection lost while being prepared fails its preparation,
        # which schedules the retry.

    def _start_pinging(self, protocol: CommandProtocol) -> None:
        if self._keepalive is None:
            return
        self._stop_pinging()
        self._pinging = LoopingCall(self._send_ping, protocol)
        self._pinging.clock = self._reactor
        self._pinging.start(self._keepalive, now=False)

    def _stop_pinging(self) -> None:
        if self._pinging is not None and self._pinging.running:
            self._pinging.stop()
        self._pinging = None
        self._ping = None

    def _send_ping(self, protocol: CommandProtocol) -> None:
        """
        PING, unless the last one is still unanswered (its reply timeout
        will close the connection).
        """
        if protocol is not self.protocol or (self._ping is not None and not self._ping.called):
            return
        # A failure is the connection's loss, which lost() handles.
        self._ping = execute(protocol, self.address, "PING").addErrback(lambda _: None)

    def _require(self) -> CommandProtocol:
        protocol = self.protocol
        if protocol is None:
            raise BrokerUnavailable(f"Redis at {self.address} is unreachable: {self.down_reason}")
        return protocol

    def execute(self, *args: Any) -> Deferred:
        """
        Send a command: its reply, or L{BrokerUnavailable} at once while the
        link is down.
        """
        try:
            protocol = self._require()
        except BrokerUnavailable:
            return fail()
        return execute(protocol, self.address, *args)

    def evaluate(self, script: Script, keys: Sequence, args: Sequence) -> Deferred:
        """
        Run a script: its reply, or L{BrokerUnavailable} at once while the
        link is down.
        """
        try:
            protocol = self._require()
        except BrokerUnavailable:
            return fail()
        return evaluate(protocol, self.address, script, keys, args)


def _global_reactor() -> Any:
    from twisted.internet import reactor

    return reactor
