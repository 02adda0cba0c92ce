"""
Test doubles for the client: a fake connection for driving its session
directly, and an in-memory network that connects the real client to the
real server (both Autobahn stacks, over C{twisted.test.iosim}, no sockets).
"""

from typing import Any

import attrs
import orjson
from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from rustorium.client.session import IClientConnection
from rustorium.heartbeat import HeartbeatService
from rustorium.hub import channel_key
from rustorium.websocket import RustoriumServerFactory, prepare_frame
from tests.asyncapi import validate_client_message
from tests.helpers import KEY, make_server, publish

API_KEY = "rk_client_tests"
URL = "ws://127.0.0.1:8765/v1"
SERVER_ADDRESS = IPv4Address("TCP", "127.0.0.1", 8765)


@implementer(IClientConnection)
@attrs.define
class FakeClientConnection:
    """
    Records what the client session sends, decoded, and how it ended the
    connection.
    """

    sent: list[dict] = attrs.Factory(list)
    aborted: str | None = None
    closed: tuple[int, str] | None = None

    def send_message(self, payload: bytes) -> None:
        self.sent.append(orjson.loads(payload))

    def abort(self, reason: str) -> None:
        self.aborted = reason

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def take(self) -> list[dict]:
        taken, self.sent = self.sent, []
        return taken


class MemoryNetwork:
    """
    A client endpoint whose every connection reaches the real server's
    WebSocket factory in memory.

    @ivar server: the L{Server} (demo catalog, in-memory stores); the key
        L{API_KEY} is valid.
    @ivar attempts: the clock time of every connection attempt.
    @ivar refuse: when true, connection attempts fail as if nothing
        listened.
    @ivar tls_error: when set, each connection is lost with it, as when
        the TLS handshake fails, before any byte reaches the server.
    @ivar received: every message the server received, per connection in
        order, decoded.
    @ivar validate: check every message the client sends against
        ``docs/asyncapi.yaml``.
    """

    def __init__(self, clock: Any, heartbeats: bool = False, **settings: Any) -> None:
        self.clock = clock
        self.server = make_server(clock, prepare_frame, **settings)
        self.server.keys.keys[API_KEY] = KEY
        self.factory = RustoriumServerFactory(self.server, reactor=clock)
        self.attempts: list[float] = []
        self.refuse = False
        self.tls_error: BaseException | None = None
        self.validate = True
        self.pumps: list[iosim.IOPump] = []
        self.server_protocols: list[Any] = []
        self.received: list[list[dict]] = []
        self.heartbeats = None
        if heartbeats:
            self.heartbeats = HeartbeatService(self.server, clock, prepare_frame)
            self.heartbeats.startService()

    def connect(self, factory: Any):
        self.attempts.append(self.clock.seconds())
        if self.refuse:
            return fail(ConnectionRefusedError("nothing listens (in memory)"))
        client_address = IPv4Address("TCP", "127.0.0.1", 40000 + len(self.attempts))
        client = factory.buildProtocol(SERVER_ADDRESS)
        if self.tls_error is not None:
            client.makeConnection(
                iosim.FakeTransport(client, False, client_address, SERVER_ADDRESS))
            self.clock.callLater(0, client.connectionLost, Failure(self.tls_error))
            return succeed(client)
        server = self.factory.buildProtocol(client_address)
        log: list[dict] = []
        self.received.append(log)
        on_message = server.onMessage

        def recording(payload: bytes, is_binary: bool) -> None:
            message = orjson.loads(payload)
            if self.validate:
                validate_client_message(message)
            log.append(message)
            on_message(payload, is_binary)

        server.onMessage = recording
        self.server_protocols.append(server)
        pump = iosim.connect(
            server, iosim.FakeTransport(server, True, SERVER_ADDRESS, client_address),
            client, iosim.FakeTransport(client, False, client_address, SERVER_ADDRESS),
            greet=False, clock=self.clock,
        )
        self.pumps.append(pump)
        return succeed(client)

    def flush(self) -> None:
        """
        Move every byte in flight, both ways, until nothing moves.
        """
        for _ in range(100):
            moved = False
            for pump in list(self.pumps):
                moved = pump.flush() or moved
                if pump.clientIO.disconnected and pump.serverIO.disconnected:
                    self.pumps.remove(pump)
            if not moved:
                return

    def advance(self, seconds: float, step: float = 0.5) -> None:
        """
        Let time pass in steps, moving bytes after each.
        """
        self.flush()
        while seconds > 1e-9:
            delta = min(step, seconds)
            self.clock.advance(delta)
            seconds -= delta
            self.flush()

    def publish_price(self, symbol: str = "MTK/USD", price: str = "1.5"):
        """
        Publish a market_data update as the market service would.
        """
        return publish(
            self.server, "market_data", channel_key("market_data", symbol),
            {"symbol": symbol, "price": price, "change_24h": "0", "volume_24h": "0"},
        )

    def sessions(self) -> list[Any]:
        return list(self.server.sessions)

    def stop(self) -> None:
        if self.heartbeats is not None:
            self.heartbeats.stopService()


def result_of(d: Any) -> Any:
    """
    The result of a Deferred that has fired (consumed, as trial's
    successResultOf).
    """
    results: list = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failure_of(d: Any, *kinds: type[BaseException]) -> Any:
    """
    The exception a Deferred failed with, which must be one of C{kinds}
    (consumed, so it is not logged as unhandled).
    """
    results: list = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    assert isinstance(results[0], Failure), f"{d!r} succeeded with {results[0]!r}"
    assert results[0].check(*kinds), results[0].getTraceback()
    return results[0].value
