"""
The in-process broker: a single node's numbering, history, latest values
and resumable subscriptions, in memory.

It is the embedded default (C{--broker local}): nothing to run beside the
server. Every method completes at once (its Deferred has fired), so a
single node behaves exactly as before the broker existed: a publish reaches
this node's connections within the call, through C{on_updates}.

Message numbers continue above a ceiling stored durably in the database
(L{rustorium.hub.MessageIds}); history is kept only for keys that some
subscription, attached or resumable, watches, and an event none of whose keys anybody watches or
listens to is dropped before it is numbered or encoded.
"""

import secrets
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import attrs
import orjson
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from ..hub import MessageIds, Update
from ..timestamps import isoformat
from .history import KeyHistory
from .interface import (
    Claim,
    CurrentState,
    IBroker,
    Publication,
    ReplayResult,
    SubscriptionRecord,
)

EXPIRY_INTERVAL = 1.0
"""Seconds between sweeps of expired subscriptions and history."""


@attrs.define
class _Kept:
    """
    A subscription in the registry: attached to this node, or detached
    since C{detached_at}.
    """

    record: SubscriptionRecord
    detached_at: float | None = None


@implementer(IBroker)
class LocalBroker:
    """
    See the module docstring.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        ids: MessageIds,
        node: str,
        prepare: Callable[[bytes], Any] = lambda payload: payload,
        history_size: int = 1000,
        history_age: float = 300.0,
        resume_window: float = 300.0,
        max_detached_per_key: int = 1000,
        prices: Any = None,
    ) -> None:
        """
        @param prices: where the last posted price of each market is kept
            across restarts (L{rustorium.prices.DatabasePrices}); in memory
            only if C{None}.
        """
        self._price_store = prices
        self._clock = clock
        self._ids = ids
        self._node = node
        self._prepare = prepare
        self._history_size = history_size
        self._history_age = history_age
        self._resume_window = resume_window
        self._max_detached = max_detached_per_key
        self.epoch = secrets.token_hex(8)
        self.on_updates: Callable[[list[Update]], None] = lambda updates: None
        self.on_control: Callable[[dict], None] = lambda message: None
        self.on_lost: Callable[[str], None] = lambda reason: None
        self.on_restored: Callable[[], None] = lambda: None
        self.on_prices: Callable[[list], None] = lambda ticks: None
        self._prices: dict[str, Any] = {}
        self._histories: dict[str, KeyHistory] = {}
        self._listened: dict[str, int] = {}
        self._latest: dict[str, tuple[dict, float]] = {}
        self._registry: dict[str, _Kept] = {}
        self._detached: dict[int, OrderedDict[str, _Kept]] = {}
        self._announced: tuple[dict, float] | None = None
        self._sweep = LoopingCall(self.expire)
        self._sweep.clock = clock

    @property
    def last_number(self) -> int:
        """
        The number of the last message id issued.
        """
        return self._ids.last

    def start(self) -> Deferred:
        self._sweep.start(EXPIRY_INTERVAL, now=False)
        if self._price_store is None:
            return succeed(None)

        def loaded(prices: dict) -> None:
            self._prices = {**prices, **self._prices}

        return self._price_store.load().addCallback(loaded)

    def stop(self) -> Deferred:
        if self._sweep.running:
            self._sweep.stop()
        return succeed(None)

    # Updates

    def heard(self, key: str) -> bool:
        """
        Whether an event on C{key} could reach anyone: a subscription
        watches it or this node listens to it.
        """
        return key in self._listened or key in self._histories

    def _number(self, key: str, body: dict, published_at: float, retained: bool,
                also: tuple[str, ...] = ()) -> Update:
        number = self._ids.next()
        payload = orjson.dumps({"id": f"msg_{number}", "type": "update", "data": body})
        return Update(number, key, payload, self._prepare(payload), published_at, retained,
                      also)

    def publish(self, items: list[Publication]) -> Deferred:
        now = self._clock.seconds()
        timestamp = isoformat(now)
        oldest = now - self._history_age
        results: list[Update | None] = []
        for item in items:
            key = item.key
            also = item.also
            if not item.retain and not any(map(self.heard, item.keys)):
                results.append(None)
                continue
            body = {"channel": item.channel, **item.data, "timestamp": timestamp}
            update = self._number(key, body, now, item.retain, also)
            if item.retain:
                self._latest[key] = (body, now)
            history = self._histories.get(key)
            if history is not None:
                history.append(update, self._history_size, oldest)
            for other in also:
                # The same object in each history: a merged replay of
                # several of them keeps one per number.
                history = self._histories.get(other)
                if history is not None:
                    history.append(update, self._history_size, oldest)
            results.append(update)
        published = [u for u in results if u is not None]
        if published:
            self.on_updates(published)
        return succeed(results)

    def listen(self, key: str) -> Deferred:
        self._listened[key] = self._listened.get(key, 0) + 1
        return succeed(None)

    def unlisten(self, key: str) -> None:
        count = self._listened.get(key, 0) - 1
        if count > 0:
            self._listened[key] = count
        else:
            self._listened.pop(key, None)

    def current_state(self, keys: list[str]) -> Deferred:
        snapshots = []
        for key in keys:
            latest = self._latest.get(key)
            if latest is not None:
                snapshots.append(self._number(key, *latest, True))
        return succeed(CurrentState(snapshots, self._ids.last))

    def replay(self, starts: dict[str, int]) -> Deferred:
        updates: dict[str, list[Update]] = {}
        lost: dict[str, tuple[int, int] | None] = {}
        horizon = self._clock.seconds() - self._history_age
        for key, start in starts.items():
            history = self._histories.get(key)
            if history is None:
                updates[key], lost[key] = [], None
                continue
            history.expire(horizon)
            updates[key], lost[key] = history.after(start)
        return succeed(ReplayResult(updates, lost, self._ids.last))

    # Resumable subscriptions

    def _watch(self, record: SubscriptionRecord) -> None:
        for key in record.keys:
            history = self._histories.get(key)
            if history is None:
                history = self._histories[key] = KeyHistory()
            history.watchers += 1

    def _unwatch(self, record: SubscriptionRecord) -> None:
        for key in record.keys:
            history = self._histories.get(key)
            if history is not None:
                history.watchers -= 1
                if history.watchers <= 0:
                    del self._histories[key]

    def save_subscription(self, record: SubscriptionRecord) -> Deferred:
        self._registry[record.subscription_id] = _Kept(record)
        self._watch(record)
        return succeed(None)

    def detach_subscription(self, subscription_id: str, now: float) -> Deferred:
        kept = self._registry.get(subscription_id)
        if kept is None:
            return succeed([])
        kept.detached_at = now
        detached = self._detached.setdefault(kept.record.owner, OrderedDict())
        detached[subscription_id] = kept
        forgotten = []
        while len(detached) > self._max_detached:
            oldest, _ = detached.popitem(last=False)
            self._forget(oldest)
            forgotten.append(oldest)
        return succeed(forgotten)

    def claim_subscription(self, subscription_id: str, owner: int, node: str) -> Deferred:
        kept = self._registry.get(subscription_id)
        if kept is None or kept.record.owner != owner:
            return succeed(None)
        attached_to = self._node if kept.detached_at is None else None
        if kept.detached_at is not None:
            kept.detached_at = None
            self._detached[owner].pop(subscription_id, None)
        return succeed(Claim(kept.record, attached_to))

    def find_subscription(self, subscription_id: str, owner: int) -> Deferred:
        kept = self._registry.get(subscription_id)
        if kept is None or kept.record.owner != owner:
            return succeed(None)
        return succeed(kept.record)

    def remove_subscription(self, subscription_id: str) -> Deferred:
        return succeed(self._forget(subscription_id))

    def _forget(self, subscription_id: str) -> bool:
        kept = self._registry.pop(subscription_id, None)
        if kept is None:
            return False
        detached = self._detached.get(kept.record.owner)
        if detached is not None:
            detached.pop(subscription_id, None)
            if not detached:
                del self._detached[kept.record.owner]
        self._unwatch(kept.record)
        return True

    def detach_node(self, node: str, now: float) -> Deferred:
        return succeed(0)

    def expire(self) -> None:
        """
        Forget detached subscriptions past the resume window and history
        past its age.
        """
        now = self._clock.seconds()
        horizon = now - self._resume_window
        expired = []
        for detached in self._detached.values():
            for subscription_id, kept in detached.items():
                if kept.detached_at >= horizon:
                    break
                expired.append(subscription_id)
        for subscription_id in expired:
            self._forget(subscription_id)
        oldest = now - self._history_age
        for history in self._histories.values():
            history.expire(oldest)

    @property
    def subscription_count(self) -> int:
        return len(self._registry)

    @property
    def detached_count(self) -> int:
        return sum(len(d) for d in self._detached.values())

    def detached_of(self, owner: int) -> int:
        """
        How many detached subscriptions the API key C{owner} has.
        """
        return len(self._detached.get(owner, ()))

    # Nodes, control messages, prices, leases: one node, nobody to share with.

    def announce(self, info: dict, ttl: float) -> Deferred:
        self._announced = (info, self._clock.seconds() + ttl)
        return succeed(None)

    def nodes(self) -> Deferred:
        if self._announced is None or self._announced[1] < self._clock.seconds():
            return succeed([])
        return succeed([self._announced[0]])

    def send_to_node(self, node: str, message: dict) -> Deferred:
        if node != self._node:
            return succeed(0)
        try:
            self.on_control(message)
        except Exception:
            return fail()
        return succeed(1)

    def record_prices(self, ticks: list) -> Deferred:
        prices = self._prices
        flags = []
        for tick in ticks:
            last = prices.get(tick.symbol)
            accepted = last is None or tick.seq > last.seq
            if accepted:
                prices[tick.symbol] = tick
            flags.append(accepted)
        accepted_ticks = [tick for tick, accepted in zip(ticks, flags, strict=True) if accepted]
        if not accepted_ticks:
            return succeed(flags)

        def hand_on(_: object) -> list[bool]:
            try:
                self.on_prices(accepted_ticks)
            except Exception:
                # Accepted all the same: the market reads them back.
                self.log.failure("Handing on {count} accepted prices failed",
                                 count=len(accepted_ticks))
            return flags

        # Accepted in memory at once (that orders them against every later
        # call), kept, then published.
        kept = succeed(None) if self._price_store is None else self._price_store.save(
            accepted_ticks)
        return kept.addCallback(hand_on)

    def latest_prices(self) -> Deferred:
        return succeed(dict(self._prices))

    def acquire_lease(self, name: str, holder: str, ttl: float) -> Deferred:
        return succeed(True)

    def release_lease(self, name: str, holder: str) -> Deferred:
        return succeed(True)
