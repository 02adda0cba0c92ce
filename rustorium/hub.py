"""
The hub: channels, subscribers and fan-out.

A source publishes an update on a channel key (C{"market_data:MTK/USD"});
the hub numbers it (C{msg_<n>}), encodes it once, frames it once for the
wire, keeps it as that key's latest value (when asked to), and hands the
same object to every subscriber of the key. Per subscriber it does one call
and nothing else.

L{IHub} is the interface sessions and sources use; L{LocalHub} is the
in-process implementation. A Redis-backed hub shared by several processes
can follow behind the same interface, so nothing may reach into
L{LocalHub}'s attributes.
"""

from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterator
from time import perf_counter
from typing import Any

import attrs
import orjson
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from .timestamps import isoformat

Deliver = Callable[["Update"], None]


class ISink(Interface):
    """
    Where the hub sends a subscriber's updates: usually a connection.
    """

    def deliver(update: "Update") -> None:
        """
        Send an update now.
        """

    def enqueue(update: "Update") -> bool:
        """
        Queue an update to be sent by the next L{flush}, with the others of
        the same batch; return C{True} if nothing was queued before it (so
        the hub knows to flush this sink once the batch is done).
        """

    def flush() -> None:
        """
        Send what L{enqueue} queued, in one write.
        """


@implementer(ISink)
class CallableSink:
    """
    A sink that hands each update to a function (tests and simple
    subscribers).
    """

    __slots__ = ("deliver",)

    def __init__(self, deliver: Deliver) -> None:
        self.deliver = deliver

    def enqueue(self, update: "Update") -> bool:
        self.deliver(update)
        return False

    def flush(self) -> None:
        pass


def channel_key(channel: str, name: str) -> str:
    """
    The hub key of one stream of updates: a channel and what it is about
    (a market symbol, a token id, an address).
    """
    return f"{channel}:{name}"


@attrs.frozen(slots=True, weakref_slot=False)
class Update:
    """
    One published update, shared by every subscriber that receives it.

    @ivar number: the C{n} of its id C{msg_<n>}: increasing across the server
        and across restarts (not contiguous).
    @ivar key: the channel key it was published on.
    @ivar payload: the encoded JSON message.
    @ivar frame: the payload framed for the wire by the hub's C{prepare}
        function (an Autobahn prepared message in the server).
    @ivar published_at: the reactor time of publication.
    @ivar conflatable: whether a newer update on the same key makes this one
        redundant (prices and volumes), so that a slow reader may be sent
        only the newest; transaction events are never conflated.
    @ivar also: the other keys this same update was published on (a
        transfer's event on its recipient's address too): a subscriber of
        several of them gets it once.
    """

    number: int
    key: str
    payload: bytes
    frame: Any
    published_at: float
    conflatable: bool = True
    also: tuple[str, ...] = ()

    @property
    def shared(self) -> bool:
        """
        Whether it is retained in the histories of several keys, so that a
        replay merging those keys must send it once.
        """
        return bool(self.also)


class IHub(Interface):
    """
    Fan-out of updates from sources to subscribers.
    """

    def publish(channel: str, key: str, data: dict, retain: bool = True) -> Update | None:
        """
        Publish C{data} (the update's C{data} object without C{channel} and
        C{timestamp}, which the hub adds) to every subscriber of C{key}.

        @param retain: keep it as the key's current state for L{snapshot}
            (prices and volumes are state; transaction events are not). An
            event nobody subscribes to or watches is dropped unnumbered and
            unencoded (C{None} is returned): nobody could ever receive it.
        """

    def publish_event(channel: str, keys: tuple[str, ...], data: dict) -> Update | None:
        """
        Publish one event (not retained, never conflated) that concerns
        several keys, such as a transfer's, which concerns its sender's and
        its recipient's address: it is numbered once, kept in the history
        of each of the keys, and delivered once to each subscriber of any of
        them, however many of them it subscribes to. Like L{publish} with
        C{retain=False}, nothing is published if nobody hears any of the
        keys (C{None} is returned).
        """

    def publish_batch(items: list[tuple[str, str, dict]]) -> list[Update]:
        """
        Publish several (channel, key, data) updates (retained) at once:
        each subscriber gets everything of the batch meant for it in one
        write. A market tick that moves ten markets costs a client
        subscribed to all ten one system call, not ten.
        """

    def subscribe(key: str, subscriber: Hashable, sink: "ISink | Deliver") -> None:
        """
        Send every later update on C{key} to C{sink} (an L{ISink}, or a
        function taking the update), until L{unsubscribe}. Subscribing the
        same subscriber again replaces its sink.
        """

    def unsubscribe(key: str, subscriber: Hashable) -> None:
        """
        Stop delivering C{key} to C{subscriber}; a no-op if not subscribed.
        """

    def snapshot(key: str) -> Update | None:
        """
        The key's current state (its last retained update), renumbered with
        a fresh message id, for sending right after a subscription is
        confirmed; C{None} if nothing was retained. The fresh id keeps the
        ids a connection receives increasing.
        """

    def subscriber_count(key: str) -> int:
        """
        How many subscribers C{key} has.
        """

    def heard(key: str) -> bool:
        """
        Whether anyone subscribes to or watches C{key}: an event published
        on a key nobody hears is dropped, so a source may skip building it.
        """

    def watch(key: str) -> None:
        """
        Keep a replayable history of C{key} (bounded by count and age) while
        at least one subscription, attached or waiting to be resumed, is
        watching it.
        """

    def unwatch(key: str) -> None:
        """
        Undo one L{watch}; the history goes when nobody watches.
        """

    def replay(key: str, after: int) -> "Replay":
        """
        The retained updates of C{key} numbered above C{after}, as a lazy
        sequence, and the range of numbers that may have been lost.
        """

    def expire_history() -> None:
        """
        Forget updates older than the history's age bound.
        """

    last_number = Attribute("The number of the last message id issued.")


class MessageIds:
    """
    Allocates the C{n} of C{msg_<n>}, increasing across restarts.

    The database holds a ceiling: no id above it was ever issued. At start-up
    the hub continues above the old ceiling and durably raises it by a block
    before serving; when half a block is used, it raises it again in the
    background. A crash therefore skips at most a block of numbers and never
    repeats one.
    """

    log = Logger()

    def __init__(
        self, first: int, ceiling: int, block: int, reserve: Callable[[int], Any] | None = None
    ) -> None:
        """
        @param first: the next number to issue.
        @param ceiling: the durable ceiling (C{first <= ceiling}).
        @param block: how far each reservation raises the ceiling.
        @param reserve: called with a new ceiling to store it; may return a
            Deferred.
        """
        self._next = first
        self._ceiling = ceiling
        self._block = block
        self._reserve = reserve
        self._reserving = False

    @property
    def last(self) -> int:
        """
        The last number issued (or the one before the first).
        """
        return self._next - 1

    def next(self) -> int:
        """
        Issue the next number.
        """
        number = self._next
        self._next = number + 1
        if not self._reserving and self._ceiling - number < self._block // 2:
            self._extend()
        return number

    def _extend(self) -> None:
        if self._reserve is None:
            self._ceiling += self._block
            return
        self._reserving = True
        target = self._ceiling + self._block
        d = maybeDeferred(self._reserve, target)

        def reserved(_: object) -> None:
            self._ceiling = target
            self._reserving = False

        def failed(failure: Any) -> None:
            self._reserving = False
            self.log.failure("Could not reserve message ids up to {target}", failure, target=target)

        d.addCallbacks(reserved, failed)


class ReplayOvertaken(Exception):
    """
    Updates still to be replayed were evicted from the history before they
    could be sent (more than the history's size arrived meanwhile).
    """


class _History:
    """
    One key's retained updates, oldest first, with absolute positions so
    that a replay in progress survives evictions at the front.

    @ivar first: the absolute position of C{entries[0]}.
    @ivar evicted: the highest message number evicted so far (0 if none).
    @ivar watchers: how many subscriptions watch the key.
    @ivar shared: how many of C{entries} are also in other keys' histories.
    """

    __slots__ = ("entries", "evicted", "first", "shared", "watchers")

    def __init__(self) -> None:
        self.entries: deque[Update] = deque()
        self.first = 0
        self.evicted = 0
        self.watchers = 0
        self.shared = 0

    def evict_one(self) -> None:
        update = self.entries.popleft()
        self.evicted = update.number
        if update.shared:
            self.shared -= 1
        self.first += 1


@attrs.frozen
class Replay:
    """
    The updates of one key to replay: positions C{start} to C{end} of its
    history, read lazily.

    @ivar lost: the (first, last) message numbers in which updates of this
        key may have been lost, or C{None} if the history is complete.
    @ivar shared: whether some of these updates may also be in the replay
        of another key (see L{Update.shared}).
    """

    history: _History | None
    start: int
    end: int
    lost: tuple[int, int] | None
    shared: bool = False

    @property
    def count(self) -> int:
        return self.end - self.start

    def __iter__(self) -> Iterator[Update]:
        history = self.history
        for position in range(self.start, self.end):
            index = position - history.first
            if index < 0:
                raise ReplayOvertaken()
            yield history.entries[index]


@implementer(IHub)
class LocalHub:
    """
    The in-process hub.

    Subscribers of a key are kept in a dict, and the tuple of their
    C{deliver} callables is cached until the next (un)subscribe, so a publish
    iterates a tuple and is safe against subscribers leaving mid-fan-out.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        ids: MessageIds,
        prepare: Callable[[bytes], Any] = lambda payload: payload,
        history_size: int = 1000,
        history_age: float = 300.0,
    ) -> None:
        """
        @param clock: an C{IReactorTime}, for publication timestamps.
        @param prepare: frames an encoded payload for the wire, once per
            update.
        @param history_size: the most updates retained per watched key.
        @param history_age: seconds an update is retained for replay.
        """
        self._clock = clock
        self._ids = ids
        self._prepare = prepare
        self._history_size = history_size
        self._history_age = history_age
        self._histories: dict[str, _History] = {}
        self._subscribers: dict[str, dict[Hashable, ISink]] = {}
        # Caches rebuilt after each (un)subscribe: the bound deliver methods
        # for single publishes, the sinks for batches.
        self._fanout: dict[str, tuple[Deliver, ...]] = {}
        self._sinks: dict[str, tuple[ISink, ...]] = {}
        self._latest: dict[str, tuple[dict, float]] = {}
        self.deliveries: Counter[str] = Counter()
        """Updates handed to subscribers, by channel (for metrics)."""
        self.on_fan_out: Callable[[float], None] | None = None
        """Called with the seconds each fan-out took (for metrics)."""

    def _update(self, key: str, body: dict, published_at: float, conflatable: bool,
                also: tuple[str, ...] = ()) -> Update:
        number = self._ids.next()
        payload = orjson.dumps({"id": f"msg_{number}", "type": "update", "data": body})
        return Update(number, key, payload, self._prepare(payload), published_at, conflatable,
                      also)

    def _record(self, channel: str, key: str, data: dict, retain: bool, now: float,
                timestamp: str) -> Update:
        body = {"channel": channel, **data, "timestamp": timestamp}
        update = self._update(key, body, now, retain)
        if retain:
            self._latest[key] = (body, now)
        history = self._histories.get(key)
        if history is not None:
            self._remember(history, update, now)
        return update

    def _remember(self, history: _History, update: Update, now: float) -> None:
        entries = history.entries
        entries.append(update)
        if update.shared:
            history.shared += 1
        if len(entries) > self._history_size:
            history.evict_one()
        horizon = now - self._history_age
        while entries[0].published_at < horizon:
            history.evict_one()

    def heard(self, key: str) -> bool:
        return key in self._subscribers or key in self._histories

    def publish(self, channel: str, key: str, data: dict, retain: bool = True) -> Update | None:
        if not retain and not self.heard(key):
            return None
        now = self._clock.seconds()
        update = self._record(channel, key, data, retain, now, isoformat(now))
        self._fan_out(update)
        return update

    def _fan_out(self, update: Update) -> None:
        key = update.key
        fanout = self._fanout.get(key)
        if fanout is None:
            subscribers = self._subscribers.get(key)
            if not subscribers:
                return
            fanout = self._fanout[key] = tuple(sink.deliver for sink in subscribers.values())
        started = perf_counter()
        for deliver in fanout:
            try:
                deliver(update)
            except Exception:
                self.log.failure("Delivering {key} failed", key=key)
        self._fanned_out(key, len(fanout), started)

    def publish_event(self, channel: str, keys: tuple[str, ...], data: dict) -> Update | None:
        heard = [key for key in dict.fromkeys(keys) if self.heard(key)]
        if not heard:
            return None
        now = self._clock.seconds()
        body = {"channel": channel, **data, "timestamp": isoformat(now)}
        histories = [h for h in map(self._histories.get, heard) if h is not None]
        update = self._update(heard[0], body, now, False,
                              tuple(heard[1:]) if len(histories) > 1 else ())
        for history in histories:
            self._remember(history, update, now)
        if len(heard) == 1:
            self._fan_out(update)
        else:
            self._fan_out_once(update, heard)
        return update

    def _fan_out_once(self, update: Update, keys: list[str]) -> None:
        """
        Deliver to every subscriber of any of C{keys}, once each: a
        subscriber of an earlier key is skipped at a later one. Only events
        of several keys come here (a transfer between two watched
        addresses), so single-key fan-out pays nothing for it.
        """
        started = perf_counter()
        delivered = 0
        earlier: list[dict[Hashable, ISink]] = []
        for key in keys:
            subscribers = self._subscribers.get(key)
            if not subscribers:
                continue
            # A copy: delivering may unsubscribe (a connection closing).
            for subscriber, sink in tuple(subscribers.items()):
                if any(subscriber in seen for seen in earlier):
                    continue
                try:
                    sink.deliver(update)
                except Exception:
                    self.log.failure("Delivering {key} failed", key=key)
                delivered += 1
            earlier.append(subscribers)
        self._fanned_out(update.key, delivered, started)

    def _fanned_out(self, key: str, count: int, started: float) -> None:
        self.deliveries[key.partition(":")[0]] += count
        if self.on_fan_out is not None:
            self.on_fan_out(perf_counter() - started)

    def publish_batch(self, items: list[tuple[str, str, dict]]) -> list[Update]:
        now = self._clock.seconds()
        timestamp = isoformat(now)
        updates = [
            self._record(channel, key, data, True, now, timestamp) for channel, key, data in items
        ]
        heard = [u for u in updates if u.key in self._subscribers]
        if len(heard) == 1:
            # Nobody can get two of this batch: deliver at once.
            self._fan_out(heard[0])
            return updates
        started = perf_counter()
        touched: list[ISink] = []
        for update in heard:
            key = update.key
            sinks = self._sinks.get(key)
            if sinks is None:
                sinks = self._sinks[key] = tuple(self._subscribers[key].values())
            for sink in sinks:
                try:
                    if sink.enqueue(update):
                        touched.append(sink)
                except Exception:
                    self.log.failure("Delivering {key} failed", key=key)
            self.deliveries[key.partition(":")[0]] += len(sinks)
        for sink in touched:
            try:
                sink.flush()
            except Exception:
                self.log.failure("Flushing a batch failed")
        if heard and self.on_fan_out is not None:
            self.on_fan_out(perf_counter() - started)
        return updates

    def subscribe(self, key: str, subscriber: Hashable, sink: ISink | Deliver) -> None:
        if not hasattr(sink, "enqueue"):
            sink = CallableSink(sink)
        self._subscribers.setdefault(key, {})[subscriber] = sink
        self._forget_caches(key)

    def _forget_caches(self, key: str) -> None:
        self._fanout.pop(key, None)
        self._sinks.pop(key, None)

    def unsubscribe(self, key: str, subscriber: Hashable) -> None:
        subscribers = self._subscribers.get(key)
        if subscribers is not None and subscribers.pop(subscriber, None) is not None:
            self._forget_caches(key)
            if not subscribers:
                del self._subscribers[key]

    def snapshot(self, key: str) -> Update | None:
        latest = self._latest.get(key)
        if latest is None:
            return None
        return self._update(key, *latest, True)

    def subscriber_count(self, key: str) -> int:
        return len(self._subscribers.get(key, ()))

    @property
    def last_number(self) -> int:
        return self._ids.last

    def watch(self, key: str) -> None:
        history = self._histories.get(key)
        if history is None:
            history = self._histories[key] = _History()
        history.watchers += 1

    def unwatch(self, key: str) -> None:
        history = self._histories.get(key)
        if history is not None:
            history.watchers -= 1
            if history.watchers <= 0:
                del self._histories[key]

    def replay(self, key: str, after: int) -> Replay:
        history = self._histories.get(key)
        if history is None:
            return Replay(None, 0, 0, None)
        entries = history.entries
        low, high = 0, len(entries)
        while low < high:
            middle = (low + high) // 2
            if entries[middle].number <= after:
                low = middle + 1
            else:
                high = middle
        lost = (after + 1, history.evicted) if history.evicted > after else None
        return Replay(history, history.first + low, history.first + len(entries), lost,
                      history.shared > 0)

    def expire_history(self) -> None:
        horizon = self._clock.seconds() - self._history_age
        for history in self._histories.values():
            entries = history.entries
            while entries and entries[0].published_at < horizon:
                history.evict_one()
