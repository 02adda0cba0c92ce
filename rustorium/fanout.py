"""
Fan-out: this process's subscribers of each key, and the delivery of
numbered updates to them.

Updates arrive numbered and framed (from the broker: the in-process one at
once, Redis's from its subscriber connection) and the same object goes to
every subscriber of its key, one call each and nothing else. A batch (a
market tick) reaches each subscriber in one write: sinks queue what is
theirs and are flushed once the batch is out.
"""

from collections import Counter
from collections.abc import Callable, Hashable
from time import perf_counter

from twisted.logger import Logger

from .hub import CallableSink, Deliver, ISink, Update


class Fanout:
    """
    Subscribers by key, in dicts; the tuple of a key's C{deliver} callables
    is cached until its next (un)subscribe, so a delivery iterates a tuple
    and is safe against subscribers leaving mid-fan-out.

    Within a batch (a tick of every market), only a subscriber of several
    keys can get several updates, so only those queue and flush; a
    subscriber of one key (most connections, following one market) is
    delivered at once, as for a lone update: the batch's second and third
    call per delivery would cost it more than a third of its CPU. Each
    subscriber's count of keys says which it is.

    @ivar deliveries: updates handed to subscribers, by channel (metrics).
    @ivar on_fan_out: called with the seconds each fan-out took (metrics).
    """

    log = Logger()

    def __init__(self) -> None:
        self._subscribers: dict[str, dict[Hashable, ISink]] = {}
        self._fanout: dict[str, tuple[Deliver, ...]] = {}
        # Within a batch: the single-key subscribers' deliver callables, and
        # the sinks of those that follow several keys.
        self._direct: dict[str, tuple[Deliver, ...]] = {}
        self._sinks: dict[str, tuple[ISink, ...]] = {}
        self._key_counts: dict[Hashable, int] = {}
        self.deliveries: Counter[str] = Counter()
        self.on_fan_out: Callable[[float], None] | None = None

    def subscribe(self, key: str, subscriber: Hashable, sink: ISink | Deliver) -> None:
        """
        Send every later update on C{key} to C{sink} (an L{ISink}, or a
        function taking the update), until L{unsubscribe}. Subscribing the
        same subscriber again replaces its sink.
        """
        if not hasattr(sink, "enqueue"):
            sink = CallableSink(sink)
        subscribers = self._subscribers.setdefault(key, {})
        if subscriber not in subscribers:
            count = self._key_counts[subscriber] = self._key_counts.get(subscriber, 0) + 1
            if count == 2:
                # It was a single-key subscriber in the cache of its other key.
                self._forget_batch_caches()
        subscribers[subscriber] = sink
        self._forget_caches(key)

    def unsubscribe(self, key: str, subscriber: Hashable) -> None:
        """
        Stop delivering C{key} to C{subscriber}; a no-op if not subscribed.
        """
        subscribers = self._subscribers.get(key)
        if subscribers is not None and subscribers.pop(subscriber, None) is not None:
            self._forget_caches(key)
            if not subscribers:
                del self._subscribers[key]
            count = self._key_counts[subscriber] - 1
            if count:
                self._key_counts[subscriber] = count
                if count == 1:
                    # Now a single-key subscriber of its other key.
                    self._forget_batch_caches()
            else:
                del self._key_counts[subscriber]

    def _forget_caches(self, key: str) -> None:
        self._fanout.pop(key, None)
        self._direct.pop(key, None)
        self._sinks.pop(key, None)

    def _forget_batch_caches(self) -> None:
        """
        A subscriber's count of keys crossed 1: rebuild every key's split
        lazily (at most once per key before the next batch).
        """
        self._direct.clear()
        self._sinks.clear()

    def _split(self, key: str) -> tuple[tuple[Deliver, ...], tuple[ISink, ...]]:
        counts = self._key_counts
        direct, batched = [], []
        # The key may have lost its last subscriber during this batch.
        for subscriber, sink in self._subscribers.get(key, {}).items():
            if counts[subscriber] == 1:
                direct.append(sink.deliver)
            else:
                batched.append(sink)
        self._direct[key] = direct = tuple(direct)
        self._sinks[key] = sinks = tuple(batched)
        return direct, sinks

    def has(self, key: str) -> bool:
        """
        Whether C{key} has a subscriber here.
        """
        return key in self._subscribers

    def subscriber_count(self, key: str) -> int:
        return len(self._subscribers.get(key, ()))

    def deliver(self, updates: list[Update]) -> None:
        """
        Hand each update to every subscriber of its key; each subscriber
        gets what is theirs of the list in one write.
        """
        subscribers = self._subscribers
        heard = [
            u for u in updates
            if u.key in subscribers or (u.also and any(k in subscribers for k in u.also))
        ]
        if not heard:
            return
        if len(heard) == 1:
            # Nobody can get two of these: deliver at once.
            self._fan_out(heard[0])
            return
        started = perf_counter()
        touched: list[ISink] = []
        for update in heard:
            if update.also:
                self._fan_out_once(update, touched)
                continue
            key = update.key
            sinks = self._sinks.get(key)
            direct = self._direct.get(key)
            if sinks is None or direct is None:
                direct, sinks = self._split(key)
            for deliver in direct:
                try:
                    deliver(update)
                except Exception:
                    self.log.failure("Delivering {key} failed", key=key)
            for sink in sinks:
                try:
                    if sink.enqueue(update):
                        touched.append(sink)
                except Exception:
                    self.log.failure("Delivering {key} failed", key=key)
            self.deliveries[key.partition(":")[0]] += len(direct) + len(sinks)
        for sink in touched:
            try:
                sink.flush()
            except Exception:
                self.log.failure("Flushing a batch failed")
        if self.on_fan_out is not None:
            self.on_fan_out(perf_counter() - started)

    def _fan_out(self, update: Update) -> None:
        if update.also:
            self._fan_out_once(update)
            return
        key = update.key
        fanout = self._fanout.get(key)
        if fanout is None:
            fanout = self._fanout[key] = tuple(
                sink.deliver for sink in self._subscribers[key].values()
            )
        started = perf_counter()
        for deliver in fanout:
            try:
                deliver(update)
            except Exception:
                self.log.failure("Delivering {key} failed", key=key)
        self.deliveries[key.partition(":")[0]] += len(fanout)
        if self.on_fan_out is not None:
            self.on_fan_out(perf_counter() - started)

    def _fan_out_once(self, update: Update, batch: list[ISink] | None = None) -> None:
        """
        Deliver an update of several keys (a transfer's event on both its
        addresses) to every subscriber of any of them, once each. Only
        such events come here, so single-key fan-out pays nothing for it.

        @param batch: within a batch, queue it behind what each sink holds
            of the batch already (in order), adding the sinks to flush.
        """
        started = perf_counter()
        seen: set[Hashable] = set()
        delivered = 0
        for key in (update.key, *update.also):
            subscribers = self._subscribers.get(key)
            if not subscribers:
                continue
            # A copy: delivering may unsubscribe (a connection closing).
            for subscriber, sink in tuple(subscribers.items()):
                if subscriber in seen:
                    continue
                seen.add(subscriber)
                try:
                    if batch is None:
                        sink.deliver(update)
                    elif sink.enqueue(update):
                        batch.append(sink)
                except Exception:
                    self.log.failure("Delivering {key} failed", key=key)
                delivered += 1
        self.deliveries[update.key.partition(":")[0]] += delivered
        if batch is None and self.on_fan_out is not None:
            self.on_fan_out(perf_counter() - started)
