"""
One browser's stream of server-sent events (C{GET /admin/events}): the
overview figures every second, the prices of every market and the status
of the transactions of the addresses it watches.

The format is the HTML standard's C{text/event-stream}: an C{event:} line
naming the kind, a C{data:} line of JSON, a blank line. The browser's
C{EventSource} reconnects on its own after a network error (after the
C{retry:} the stream starts with); the console's script shows when the
stream is lost and reopens it when the browser has given up.

Prices are conflated: a stream sends the newest price of each market at
most every L{PRICE_FLUSH} seconds, so a market ticking every reactor turn
(C{--tick-interval 0}) costs a browser a few small writes a second, not
one per tick. Transaction updates are sent as they come, every one.

A browser that reads too slowly (its connection's buffer full: Twisted
pauses the stream as a producer) is sent nothing that a later event
replaces (the overview, prices, pings); what it must not miss
(transaction updates) is held, up to L{MAX_HELD} events, past which the
stream is closed: the browser reconnects and reads the state afresh.
Memory never grows with one slow reader.
"""

from typing import Any

import orjson
from twisted.internet.interfaces import IPushProducer
from twisted.web import http
from zope.interface import implementer

from .sessions import ConsoleSession

PRICE_FLUSH = 0.2
"""Seconds between a stream's writes of conflated prices."""

MAX_HELD = 1000
"""Events held for a paused stream before it is closed."""

RETRY = 2000
"""Milliseconds the browser waits before reconnecting a lost stream."""

OVERVIEW = "overview"
MARKETS = "markets"
TOPICS = (OVERVIEW, MARKETS)
"""What a stream may ask for in C{topics}, beside C{address}es."""


def event(kind: str, data: object) -> bytes:
    """
    One event, encoded for the wire.
    """
    return b"event: " + kind.encode("ascii") + b"\ndata: " + orjson.dumps(data) + b"\n\n"


@implementer(IPushProducer)
class EventStream:
    """
    An open C{text/event-stream} response, paused and resumed by its
    connection as a producer.

    @ivar session: the console session it belongs to; the stream ends with
        it.
    @ivar topics: what it asked for (L{TOPICS}).
    @ivar addresses: the addresses whose transactions it follows.
    @ivar keys: the fan-out keys it taps (see L{Monitor.tap}).
    """

    def __init__(
        self, request: http.Request, session: ConsoleSession, topics: frozenset[str],
        addresses: tuple[str, ...], clock: Any,
    ) -> None:
        self._request = request
        self._clock = clock
        self.session = session
        self.topics = topics
        self.addresses = addresses
        self.keys: list[str] = []
        self.closed = False
        self.paused = False
        self._held: list[bytes] = []
        self._prices: dict[str, dict] = {}
        self._flush: Any = None

    def start(self) -> None:
        """
        Send the headers and the reconnect delay.
        """
        request = self._request
        request.setResponseCode(200)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        request.registerProducer(self, True)
        request.write(f"retry: {RETRY}\n\n".encode("ascii"))

    def send(self, kind: str, data: object, keep: bool = True) -> None:
        """
        Send one event now (see L{send_raw}).
        """
        self.send_raw(event(kind, data), keep)

    def send_raw(self, encoded: bytes, keep: bool = True) -> None:
        """
        Send an event encoded once for every stream (L{event}). While the
        stream is paused, an event that a later one replaces (C{keep}
        false) is dropped; one that must not be missed is held.
        """
        if self.closed:
            return
        if not self.paused:
            self._request.write(encoded)
        elif keep:
            self._held.append(encoded)
            if len(self._held) > MAX_HELD:
                self.close()

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        held, self._held = self._held, []
        for encoded in held:
            if self.closed or self.paused:
                self._held.append(encoded)
            else:
                self._request.write(encoded)

    def stopProducing(self) -> None:
        self.lost()

    def price(self, data: dict) -> None:
        """
        A market's new price: kept as the newest of its market, and sent
        with the others at the next flush.
        """
        if self.closed:
            return
        self._prices[str(data.get("symbol"))] = data
        if self._flush is None:
            self._flush = self._clock.callLater(PRICE_FLUSH, self._send_prices)

    def _send_prices(self) -> None:
        self._flush = None
        prices, self._prices = self._prices, {}
        if prices:
            self.send("prices", list(prices.values()), keep=False)

    def close(self) -> None:
        """
        End the response (the server is stopping, or the session ended).
        """
        if self.closed:
            return
        self.lost()
        request = self._request
        if not request.finished and request.channel is not None:
            request.unregisterProducer()
            request.finish()

    def lost(self) -> None:
        """
        The browser went away (or L{close}): stop sending.
        """
        self.closed = True
        self._held = []
        if self._flush is not None and self._flush.active():
            self._flush.cancel()
        self._flush = None
        self._prices.clear()
