"""
What the console's live parts watch: the cluster's figures, sampled every
second, and the updates of the keys that open event streams tap.

The overview is the HTTP API's C{GET /info} (the application layer's
C{cluster_info}) once a second, with each node's message rates worked out
from the running totals it announces (L{Rates}); the last ten minutes of
samples are kept for the chart a new page starts with. Sampling runs
whether or not a console is open, so the chart has a past; one sample is
one broker read (the node registry) and, on PostgreSQL, one query.

Prices and transaction updates come through this process's fan-out like
any client's: the monitor is one subscriber of every market's key (from
start, keeping each market's prices of the last ten minutes, at most
two a second, for the charts) and of each address's transaction key that
at least one stream taps; the broker listens to those keys for this node.
It parses each update once and hands it to the streams that want it: the
WebSocket fan-out pays nothing more per subscriber for it, and what the
monitor receives is left out of the node's "messages out".

The monitor also ends console sessions whose key was revoked (checked every
C{key-check-interval}) and the streams of sessions that ended.
"""

from collections import deque
from collections.abc import Callable
from typing import Any

import attrs
import orjson
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..errors import HttpErrorCode, RequestError
from ..hub import CallableSink, Update, channel_key
from ..requests import MARKET_DATA, TRANSACTION_UPDATES
from .events import MARKETS, OVERVIEW, EventStream, event
from .sessions import SessionStore

SAMPLE_INTERVAL = 1.0
"""Seconds between samples of the overview."""

HISTORY = 600
"""Samples kept for the chart: ten minutes."""

_PING = event("ping", {})
"""What streams without the overview get every second: the browser hears
that the stream is alive."""

PRICE_STEP = 0.5
"""Seconds between two kept prices of a market (a newer one within it
replaces the last)."""

MAX_STREAMS = 100
"""Event streams open at once on this node; more get 503."""


@attrs.frozen
class NodeRate:
    """
    One node's messages per second, in and out, and what they were worked
    out from.
    """

    uptime: float
    received: int
    sent: int
    rate_in: float = 0.0
    rate_out: float = 0.0


class Rates:
    """
    Each node's message rates, from the running totals it announces with
    its uptime: the rate is the change over the change in uptime, kept until
    the node announces again (every two seconds for the other nodes; this
    node is read live).
    """

    def __init__(self) -> None:
        self._nodes: dict[str, NodeRate] = {}

    def update(self, nodes: list[dict]) -> dict[str, NodeRate]:
        """
        Read the nodes' announcements; return each one's rates.
        """
        seen = {}
        for node in nodes:
            name = str(node.get("name"))
            messages = node.get("messages") or {}
            uptime = node.get("uptime")
            if not isinstance(uptime, int | float) or not isinstance(messages, dict):
                continue
            received, sent = int(messages.get("in", 0)), int(messages.get("out", 0))
            last = self._nodes.get(name)
            if last is None or uptime < last.uptime or received < last.received:
                rate = NodeRate(uptime, received, sent)  # new, or restarted
            elif uptime == last.uptime:
                rate = last
            else:
                elapsed = uptime - last.uptime
                rate = NodeRate(uptime, received, sent,
                                (received - last.received) / elapsed,
                                max(0, sent - last.sent) / elapsed)
            seen[name] = rate
        self._nodes = seen
        return seen


def overview(info: dict, rates: dict[str, NodeRate], now: float) -> dict[str, object]:
    """
    The C{overview} event: C{GET /info}'s figures, the message rates, and
    the nodes as the console's table shows them.
    """
    totals = info["totals"]
    nodes = []
    for node in info["nodes"]:
        rate = rates.get(str(node.get("name")))
        nodes.append({
            "name": node.get("name"),
            "address": node.get("address", ""),
            "version": node.get("version", ""),
            "uptime": node.get("uptime"),
            "connections": node.get("connections", 0),
            "runs_market": node.get("runs_market", False),
            "messages_in": round(rate.rate_in, 2) if rate else None,
            "messages_out": round(rate.rate_out, 2) if rate else None,
        })
    return {
        "available": True,
        "time": round(now, 3),
        "timestamp": info["timestamp"],
        "node": info["node"],
        "market_source": info["market_source"],
        "connections": totals["connections"],
        "subscriptions": sum(totals["subscriptions"].values()),
        "subscriptions_by_channel": totals["subscriptions"],
        "messages_in": round(sum(r.rate_in for r in rates.values()), 2),
        "messages_out": round(sum(r.rate_out for r in rates.values()), 2),
        "block_height": info["block_height"],
        "pending_transactions": info["pending_transactions"],
        "nodes": nodes,
    }


class Monitor(Service):
    """
    See the module docstring.

    @ivar streams: the open event streams.
    @ivar history: the last L{HISTORY} samples, oldest first, each
        C{[time, connections, messages_in, messages_out]}.
    @ivar latest: the last C{overview} event's data, if any.
    """

    log = Logger()

    def __init__(
        self, server: Any, sessions: SessionStore, clock: Any, key_check_interval: float,
        interval: float = SAMPLE_INTERVAL,
    ) -> None:
        self._server = server
        self._app = server.app
        self._sessions = sessions
        self._clock = clock
        self._interval = interval
        self._key_check_interval = key_check_interval
        self._next_key_check = 0.0
        self._loop: LoopingCall | None = None
        self._sampling = False
        self._available = True
        self._rates = Rates()
        self._taps: dict[str, set[EventStream]] = {}
        self._market_keys = [channel_key(MARKET_DATA, symbol)
                             for symbol in self._app.catalog.markets]
        self._symbols = dict(zip(self._market_keys, self._app.catalog.markets, strict=True))
        self.streams: set[EventStream] = set()
        self.history: deque[list[float]] = deque(maxlen=HISTORY)
        # Each market's recent prices: the update itself until someone reads
        # it (the console is closed most of the time), then its data.
        self.prices: dict[str, deque[tuple[float, dict | Update]]] = {
            symbol: deque(maxlen=int(HISTORY * SAMPLE_INTERVAL / PRICE_STEP))
            for symbol in self._app.catalog.markets
        }
        self.latest: dict | None = None
        self._taken = server.counters.console_deliveries

    # The service

    def startService(self) -> None:
        super().startService()
        app = self._app
        for key in self._market_keys:
            app.fanout.subscribe(key, self, CallableSink(self._deliver))
            app.broker.listen(key).addErrback(
                lambda f: self.log.warn("The console cannot follow the prices yet: {error}",
                                        error=f.getErrorMessage()))
        self._loop = LoopingCall(self._tick)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True).addErrback(
            lambda f: self.log.failure("The console's sampling stopped", f)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        for stream in list(self.streams):
            stream.close()
            self.remove(stream)
        for key in self._market_keys:
            self._app.fanout.unsubscribe(key, self)
            self._app.broker.unlisten(key)

    def _tick(self) -> None:
        try:
            self._end_stale_streams()
            self._check_keys()
            self._sample()
        except Exception:
            self.log.failure("Sampling the overview failed")

    # Streams

    def full(self) -> bool:
        """
        Whether no more streams may open.
        """
        return len(self.streams) >= MAX_STREAMS

    def add(self, stream: EventStream) -> Deferred:
        """
        Start sending to C{stream} what it asked for: first the chart's
        past and the markets' recent prices, then live. Fires once its
        keys are tapped (after which nothing is missed).
        """
        self.streams.add(stream)
        catalog = self._app.catalog
        stream.send("hello", {
            "node": self._app.node,
            "version": self._app.version,
            "markets": list(catalog.markets),
            "tokens": [{"token_id": t.token_id, "symbol": t.symbol, "decimals": t.decimals}
                       for t in catalog.tokens.values()],
        })
        keys = [channel_key(TRANSACTION_UPDATES, a) for a in stream.addresses]
        listening = self._tap(stream, keys)
        if OVERVIEW in stream.topics:
            stream.send("history", {"interval": self._interval, "samples": list(self.history)})
            if self.latest is not None:
                stream.send("overview", self.latest)
        if MARKETS in stream.topics:
            stream.send("markets", {"markets": [
                {"symbol": symbol,
                 "points": [[t, data["price"]] for t, data in kept],
                 "last": kept[-1][1] if kept else None}
                for symbol, kept in ((symbol, _read(kept)) for symbol, kept in self.prices.items())
            ]})
        if stream.addresses:
            listening.addCallback(
                lambda _: stream.send("watching", {"addresses": list(stream.addresses)})
            )
        listening.addErrback(self._tap_failed, stream)
        return listening

    def remove(self, stream: EventStream) -> None:
        """
        C{stream} ended: stop sending to it, and untap its keys.
        """
        stream.lost()
        self.streams.discard(stream)
        for key in stream.keys:
            tapped = self._taps.get(key)
            if tapped is None:
                continue
            tapped.discard(stream)
            if not tapped:
                del self._taps[key]
                self._app.fanout.unsubscribe(key, self)
                self._app.broker.unlisten(key)
        stream.keys = []

    def _tap(self, stream: EventStream, keys: list[str]) -> Deferred:
        """
        Deliver the updates of C{keys} to C{stream}; fires once the broker
        listens to each for this node.
        """
        listening = []
        for key in keys:
            tapped = self._taps.get(key)
            if tapped is None:
                tapped = self._taps[key] = set()
                self._app.fanout.subscribe(key, self, CallableSink(self._deliver))
                listening.append(self._app.broker.listen(key))
            tapped.add(stream)
            stream.keys.append(key)
        return gatherResults(listening, consumeErrors=True)

    def _tap_failed(self, failure: Failure, stream: EventStream) -> None:
        self.log.warn("The console's event stream could not follow its keys: {error}",
                      error=failure.getErrorMessage())
        stream.send("unavailable", {"message": "the cluster's broker cannot be reached; "
                                               "retrying"})
        stream.close()
        self.remove(stream)

    def _deliver(self, update: Update) -> None:
        """
        An update of a tapped key: parsed once, handed to each stream that
        taps it (or, for a transfer's event, any of its keys).
        """
        symbol = self._symbols.get(update.key)
        if symbol is not None:
            # A price: every tick brings one per market, so it is parsed
            # only if a console shows the markets now or later.
            self._taken[MARKET_DATA] += 1
            watching = [stream for stream in self.streams if MARKETS in stream.topics]
            if not watching:
                self._keep_price(symbol, update, update.published_at)
                return
            data = orjson.loads(update.payload)["data"]
            self._keep_price(symbol, data, update.published_at)
            for stream in watching:
                stream.price(data)
            return
        data = orjson.loads(update.payload)["data"]
        self._taken[data.get("channel")] += 1
        streams = set(self._taps.get(update.key, ()))
        for key in update.also:
            streams.update(self._taps.get(key, ()))
        encoded = event("transaction", data)
        for stream in streams:
            stream.send_raw(encoded)

    def _keep_price(self, symbol: str, data: dict | Update, published_at: float) -> None:
        kept = self.prices.get(symbol)
        if kept is None:
            return
        if kept and published_at - kept[-1][0] < PRICE_STEP:
            kept[-1] = (kept[-1][0], data)
        else:
            kept.append((round(published_at, 3), data))

    # Sampling

    def _sample(self) -> None:
        if self._sampling or not self._server.ready:
            return  # the last one has not answered yet, or the server is starting
        if not self._server.broker_ready:
            self._unavailable(Failure(RequestError(
                HttpErrorCode.UNAVAILABLE, "this node cannot reach the cluster's broker")))
            return
        self._sampling = True
        d = maybeDeferred(self._app.cluster_info)
        d.addCallbacks(self._sampled, self._unavailable)
        d.addErrback(lambda f: self.log.failure("Sampling the overview failed", f))
        d.addBoth(self._done_sampling)

    def _done_sampling(self, _: object) -> None:
        self._sampling = False

    def _sampled(self, info: dict) -> None:
        now = self._clock.seconds()
        if not self._available:
            self.log.info("The console's overview is available again")
            self._available = True
        data = overview(info, self._rates.update(info["nodes"]), now)
        self.latest = data
        self.history.append([round(now, 3), data["connections"], data["messages_in"],
                             data["messages_out"]])
        self._broadcast("overview", data)

    def _unavailable(self, failure: Failure) -> None:
        message = getattr(failure.value, "message", None) or failure.getErrorMessage()
        if self._available:
            self.log.warn("The console's overview is unavailable: {error}", error=message)
            self._available = False
        self.latest = None
        self._broadcast("overview", {"available": False, "message": message,
                                     "time": round(self._clock.seconds(), 3)})

    def _broadcast(self, kind: str, data: object) -> None:
        encoded = event(kind, data)
        for stream in list(self.streams):
            if OVERVIEW in stream.topics:
                stream.send_raw(encoded, keep=False)
            else:
                stream.send_raw(_PING, keep=False)

    # Sessions

    def _end_stale_streams(self) -> None:
        for stream in list(self.streams):
            if not self._sessions.alive(stream.session):
                stream.send("signed-out", {"message": "the console session ended; sign in "
                                                      "again"})
                stream.close()
                self.remove(stream)

    def _check_keys(self) -> None:
        now = self._clock.seconds()
        if now < self._next_key_check:
            return
        self._next_key_check = now + self._key_check_interval
        key_ids = sorted(self._sessions.key_ids())
        if not key_ids:
            return
        d = maybeDeferred(self._app.keys.revoked_among, key_ids)

        def revoked(found: set[int]) -> None:
            for key_id in found:
                if self._sessions.end_key(key_id):
                    self.log.info("Ended the console sessions of API key {key_id}: it was "
                                  "revoked", key_id=key_id)
            if found:
                self._end_stale_streams()

        d.addCallback(revoked)
        d.addErrback(lambda f: self.log.warn("Checking the console's keys failed: {error}",
                                             error=f.getErrorMessage()))


def describe_messages(counters: Any, fanout: Any) -> Callable[[], dict[str, int]]:
    """
    A function returning this node's running message totals, for its
    announcements: C{in}, the client messages received; C{out}, the
    replies sent and the updates handed to connections (not those the
    console's monitor took itself).
    """

    def totals() -> dict[str, int]:
        return {
            "in": sum(counters.received.values()),
            "out": (sum(counters.sent.values()) + sum(fanout.deliveries.values())
                    - sum(counters.console_deliveries.values())),
        }

    return totals


def _read(kept: deque) -> deque:
    """
    C{kept} with every update it holds replaced by its data (parsed once,
    when first read).
    """
    for i, (published_at, item) in enumerate(kept):
        if isinstance(item, Update):
            kept[i] = (published_at, orjson.loads(item.payload)["data"])
    return kept
