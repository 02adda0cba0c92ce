"""
A feed: one client's subscriptions, and the stream of their updates in
increasing id order, whatever front end carries it.

A subscription is made, resumed or dropped through the broker (which keeps
it resumable on any node) and delivered through this process's fan-out
(which hands the feed's sink every update of the keys it follows). With a
broker on the network, a subscription's current state or replay arrives on
one connection to the broker and live updates on another, so while its
subscriptions change the feed holds live updates back, then sends in
number order what the broker read and what arrived meanwhile:

- subscribe: listen to the keys, read the current state (snapshots
  renumbered, and the horizon: the last number issued at the read), then
  send the held updates and the snapshots merged by number, leaving out a
  held price or volume of the new keys that a snapshot supersedes;
- resume (C{reconnect}): claim the subscriptions, listen, read the replay
  after the client's last id, send it a chunk per reactor turn, then the
  held updates above the replay's horizon, then the current state of what
  could not be recovered.

Changes are made one at a time per feed (a later request waits for an
earlier one), so they never interleave. With the in-process broker every
step completes at once.
"""

import heapq
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from operator import attrgetter
from typing import Any, Protocol

from twisted.internet.defer import Deferred, DeferredLock, FirstError, gatherResults, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .broker.interface import (
    BrokerUnavailable,
    Claim,
    IBroker,
    ReplayResult,
    SubscriptionRecord,
)
from .catalog import Catalog
from .config import Settings
from .errors import ErrorCode, RequestError
from .fanout import Fanout
from .hub import CallableSink, ISink, Update
from .requests import Subscribe
from .storage.keys import ApiKey
from .subscriptions import Subscription, new_subscription_id, resolve_keys

REPLAY_CHUNK = 256
"""Replayed updates sent per reactor turn, so that a reconnect storm of
thousands of clients never stalls the server."""


def merge_once(streams: Iterable[Iterable[Update]]) -> Iterator[Update]:
    """
    The updates of several streams sorted by message id, merged in that
    order, each once: an update published on several keys (a transfer's
    event on both addresses) is in the stream of each.
    """
    last = None
    for update in heapq.merge(*streams, key=attrgetter("number")):
        if update.number != last:
            last = update.number
            yield update


def _count_once(updates: Iterable[Update]) -> int:
    return len({u.number for u in updates})


def unavailable(failure: Failure) -> Failure:
    """
    Turn a broker that cannot be reached into an error a client can act on
    (looking inside a failure of several calls at once).
    """
    if failure.check(FirstError):
        failure = failure.value.subFailure
    if failure.check(BrokerUnavailable):
        return Failure(RequestError(
            ErrorCode.INTERNAL_ERROR,
            "the cluster's broker cannot be reached right now; nothing was changed, "
            "try again shortly",
        ))
    return failure


class Streams(Protocol):
    """
    What a feed needs of the node it runs in (the application layer).

    @ivar attached: the feed each subscription attached here belongs to.
    """

    settings: Settings
    clock: Any
    node: str
    catalog: Catalog
    broker: IBroker
    fanout: Fanout
    attached: dict[str, "Feed"]

    def take_over(self, subscription_id: str, attached_to: str | None) -> None:
        """
        A subscription was claimed from the node C{attached_to}: tell it
        to stop delivering it there.
        """


class Feed:
    """
    One client's subscriptions and their updates, delivered to C{sink}.

    @ivar subscriptions: the attached subscriptions by id.
    """

    __slots__ = (
        "_app", "_by_topics", "_changing", "_closed", "_held", "_key_counts", "_sink",
        "api_key", "subscriptions",
    )

    log = Logger()

    def __init__(self, app: Streams, api_key: ApiKey, sink: ISink) -> None:
        self._app = app
        self.api_key = api_key
        self._sink = sink
        self.subscriptions: dict[str, Subscription] = {}
        self._by_topics: dict[tuple[str, tuple[str, ...]], Subscription] = {}
        self._key_counts: dict[str, int] = {}
        self._held: list[Update] | None = None
        self._changing = DeferredLock()
        self._closed = False

    # Requests

    def subscribe(self, request: Subscribe, confirm: Callable[[Subscription], None]) -> Deferred:
        """
        Subscribe (or find the same subscription), call C{confirm} with it,
        then send its current state.

        @return: a Deferred failing with L{RequestError} (C{not_found},
            C{subscription_limit}, or C{internal_error} when the broker
            cannot be reached).
        """
        return self._changing.run(self._subscribe, request, confirm)

    def unsubscribe(self, subscription_id: str) -> Deferred:
        """
        Drop a subscription; fires with it.

        @return: a Deferred failing with L{RequestError} C{not_found}.
        """
        return self._changing.run(self._unsubscribe, subscription_id)

    def resume(
        self, subscription_ids: list[str], last: int | None, confirm: Callable[[dict], None]
    ) -> Deferred:
        """
        Resume subscriptions after the message numbered C{last}: call
        C{confirm} with the C{reconnect_confirmation}'s data, then stream
        the missed updates, then go live.
        """
        return self._changing.run(self._resume, subscription_ids, last, confirm)

    def describe(self) -> list[dict]:
        """
        Every attached subscription as clients see it.
        """
        return [s.describe() for s in self.subscriptions.values()]

    def close(self) -> None:
        """
        The client is gone: its subscriptions wait, resumable, in the broker.
        """
        if self._closed:
            return
        self._closed = True
        app = self._app
        for key in self._key_counts:
            app.fanout.unsubscribe(key, self)
            app.broker.unlisten(key)
        now = app.clock.seconds()
        for subscription_id in self.subscriptions:
            app.attached.pop(subscription_id, None)
            self._log_failure(
                app.broker.detach_subscription(subscription_id, now),
                "Detaching subscription {id} failed", subscription_id,
            )
        self._key_counts.clear()
        self.subscriptions.clear()
        self._by_topics.clear()
        self._held = None

    def give_up(self, subscription_id: str) -> None:
        """
        Another connection resumed one of this feed's subscriptions (this
        one is presumably dead, unnoticed as yet): stop delivering it here.
        """
        subscription = self.subscriptions.get(subscription_id)
        if subscription is not None:
            self._detach(subscription)

    # Subscribe and unsubscribe

    def _subscribe(self, request: Subscribe, confirm: Callable[[Subscription], None]) -> Any:
        if self._closed:
            return None
        app = self._app
        existing = self._by_topics.get((request.channel, request.topics))
        if existing is not None:
            return self._send_current_state(existing, confirm)
        limit = app.settings.max_subscriptions
        if len(self.subscriptions) >= limit:
            raise RequestError(
                ErrorCode.SUBSCRIPTION_LIMIT,
                f"this connection already has {limit} subscriptions, the most allowed; "
                "unsubscribe from one first",
            )
        keys = resolve_keys(request, app.catalog)
        subscription_id = new_subscription_id()
        owner = self.api_key.key_id
        self._hold()
        d = self._listen(keys)
        d.addCallback(lambda _: app.broker.current_state(list(keys)))

        def save(state: Any) -> Deferred:
            record = SubscriptionRecord(
                subscription_id, owner, request.channel, request.topics, keys, state.horizon
            )
            return app.broker.save_subscription(record).addCallback(lambda _: state)

        def made(state: Any) -> None:
            subscription = Subscription(
                subscription_id, request.channel, request.topics, keys, owner=owner,
                since=state.horizon,
            )
            if self._attach(subscription):
                confirm(subscription)
                self._release(state.snapshots, set(keys), state.horizon)

        d.addCallback(save)
        d.addCallback(made)
        d.addErrback(self._abandon, keys)
        return d

    def _send_current_state(
        self, subscription: Subscription, confirm: Callable[[Subscription], None]
    ) -> Deferred:
        """
        Call C{confirm}, then send the current state of C{subscription}'s
        keys in order with the live updates.
        """
        self._hold()
        d = self._app.broker.current_state(list(subscription.keys))

        def read(state: Any) -> None:
            confirm(subscription)
            self._release(state.snapshots, set(subscription.keys), state.horizon)

        d.addCallback(read)
        d.addErrback(self._abandon, ())
        return d

    def _unsubscribe(self, subscription_id: str) -> Subscription:
        subscription = self.subscriptions.get(subscription_id)
        if subscription is None:
            raise RequestError(
                ErrorCode.NOT_FOUND, f"no subscription {subscription_id!r} on this connection"
            )
        self._detach(subscription)
        self._log_failure(
            self._app.broker.remove_subscription(subscription_id),
            "Removing subscription {id} failed", subscription_id,
        )
        return subscription

    # Resume

    def _resume(
        self, subscription_ids: list[str], last: int | None, confirm: Callable[[dict], None]
    ) -> Deferred | None:
        if self._closed:
            return None
        wanted = list(dict.fromkeys(subscription_ids))
        claims: dict[str, Claim] = {}
        d = self._claim(wanted, claims)
        d.addCallback(lambda surplus: self._replay(wanted, claims, surplus, last, confirm))
        return d

    def _claim(self, wanted: list[str], claims: dict[str, Claim]) -> Deferred:
        """
        Claim the subscriptions of C{wanted}, in order, while the
        subscription limit leaves room; fire with the ids past the limit
        that exist (they stay resumable).
        """
        app = self._app
        owner = self.api_key.key_id
        limit = app.settings.max_subscriptions
        pending = iter(wanted)

        def next_round(_: object = None) -> Any:
            room = limit - len(claims)
            batch = list(islice(pending, room)) if room > 0 else []
            if not batch:
                rest = list(pending)
                found = [app.broker.find_subscription(i, owner) for i in rest]
                return gatherResults(found, consumeErrors=True).addCallback(
                    lambda records: {i for i, r in zip(rest, records, strict=True) if r}
                )
            claimed = [app.broker.claim_subscription(i, owner, app.node) for i in batch]

            def got(results: list[Claim | None]) -> Any:
                for subscription_id, claim in zip(batch, results, strict=True):
                    if claim is not None:
                        claims[subscription_id] = claim
                        app.take_over(subscription_id, claim.attached_to)
                return next_round()

            return gatherResults(claimed, consumeErrors=True).addCallback(got)

        def failed(failure: Failure) -> Failure:
            # Leave what was claimed resumable for another try.
            now = app.clock.seconds()
            for subscription_id in claims:
                self._log_failure(app.broker.detach_subscription(subscription_id, now),
                                  "Detaching subscription {id} failed", subscription_id)
            return unavailable(failure)

        return succeed(None).addCallback(next_round).addErrback(failed)

    def _replay(
        self, wanted: list[str], claims: dict[str, Claim], surplus: set[str], last: int | None,
        confirm: Callable[[dict], None],
    ) -> Deferred:
        app = self._app
        subscriptions = [Subscription.from_record(c.record) for c in claims.values()]
        keys = tuple(dict.fromkeys(k for s in subscriptions for k in s.keys))
        # Replay each key from the oldest point any of its subscriptions
        # needs: after the client's last message, never before it subscribed.
        starts: dict[str, int] = {}
        for subscription in subscriptions:
            start = subscription.since if last is None else max(last, subscription.since)
            for key in subscription.keys:
                starts[key] = min(starts.get(key, start), start)
        self._hold()
        d = self._listen(keys)
        d.addCallback(lambda _: app.broker.replay(starts))

        def replayed(result: ReplayResult) -> Deferred | None:
            unrecovered = []
            entries = []
            by_id = {s.subscription_id: s for s in subscriptions}
            for subscription_id in wanted:
                subscription = by_id.get(subscription_id)
                if subscription_id in surplus:
                    entries.append({"subscription_id": subscription_id, "status": "not_resumed",
                                    "reason": str(ErrorCode.SUBSCRIPTION_LIMIT)})
                    continue
                if subscription is None:
                    entries.append({"subscription_id": subscription_id, "status": "expired"})
                    continue
                lost = [result.lost[k] for k in subscription.keys if result.lost.get(k)]
                entry = {
                    **subscription.describe(),
                    "status": "resumed",
                    "recovered": not lost,
                    "replayed": _count_once(
                        u for k in subscription.keys for u in result.updates.get(k, ())
                    ),
                }
                if lost:
                    entry["lost"] = {
                        "from": f"msg_{min(low for low, _ in lost)}",
                        "to": f"msg_{max(high for _, high in lost)}",
                    }
                    unrecovered.append(subscription)
                entries.append(entry)
            attached = [self._attach(s) for s in subscriptions]
            if not all(attached):
                return None
            confirm({
                "recovered": len(subscriptions) == len(wanted) and not unrecovered,
                "replayed": _count_once(u for us in result.updates.values() for u in us),
                "subscriptions": entries,
            })
            stream = merge_once(result.updates.values())
            done = self._stream(stream)
            done.addCallback(lambda _: self._release([], set(keys), result.horizon, every=True))
            for subscription in unrecovered:
                done.addCallback(lambda _, s=subscription: self._current_state_if_here(s))
            return done

        d.addCallback(replayed)
        d.addErrback(self._abandon, keys)
        return d

    def _current_state_if_here(self, subscription: Subscription) -> Deferred | None:
        if self.subscriptions.get(subscription.subscription_id) is not subscription:
            return None
        return self._send_current_state(subscription, lambda _: None)

    def _stream(self, updates: Iterator[Update]) -> Deferred:
        """
        Send C{updates} a chunk per reactor turn, each chunk in one write;
        fires when all are out.
        """
        done: Deferred = Deferred()
        clock = self._app.clock

        def chunk() -> None:
            if self._closed:
                done.callback(None)
                return
            batch = list(islice(updates, REPLAY_CHUNK))
            self._send(batch)
            if len(batch) == REPLAY_CHUNK:
                clock.callLater(0, chunk)
            else:
                done.callback(None)

        chunk()
        return done

    # Keys, holding and attaching

    def _listen(self, keys: Iterable[str]) -> Deferred:
        """
        Follow C{keys} (counted per subscription): the fan-out delivers
        them here, and the broker, for the new ones, to this node; fires
        once the broker listens.
        """
        app = self._app
        sink = self._current_sink()
        listening = []
        for key in keys:
            count = self._key_counts.get(key, 0)
            self._key_counts[key] = count + 1
            if not count:
                app.fanout.subscribe(key, self, sink)
                listening.append(app.broker.listen(key))
        return gatherResults(listening, consumeErrors=True)

    def _unlisten(self, keys: Iterable[str]) -> None:
        app = self._app
        for key in keys:
            count = self._key_counts.get(key, 0) - 1
            if count > 0:
                self._key_counts[key] = count
            elif count == 0:
                del self._key_counts[key]
                app.fanout.unsubscribe(key, self)
                app.broker.unlisten(key)

    def _attach(self, subscription: Subscription) -> bool:
        """
        Make C{subscription} this feed's; if the feed closed meanwhile,
        leave it resumable in the broker instead and return C{False}.
        """
        app = self._app
        if self._closed:
            self._log_failure(
                app.broker.detach_subscription(subscription.subscription_id, app.clock.seconds()),
                "Detaching subscription {id} failed", subscription.subscription_id,
            )
            return False
        self.subscriptions[subscription.subscription_id] = subscription
        self._by_topics[subscription.channel, subscription.topics] = subscription
        app.attached[subscription.subscription_id] = self
        return True

    def _detach(self, subscription: Subscription) -> None:
        del self.subscriptions[subscription.subscription_id]
        self._by_topics.pop((subscription.channel, subscription.topics), None)
        self._app.attached.pop(subscription.subscription_id, None)
        self._unlisten(subscription.keys)

    def _current_sink(self) -> ISink:
        held = self._held
        return self._sink if held is None else CallableSink(held.append)

    def _hold(self) -> None:
        """
        Hold live updates back until L{_release}.
        """
        if self._held is not None:
            return
        self._held = []
        holding = CallableSink(self._held.append)
        fanout = self._app.fanout
        for key in self._key_counts:
            fanout.subscribe(key, self, holding)

    def _release(
        self, extra: list[Update], keys: set[str], horizon: int, every: bool = False
    ) -> None:
        """
        Deliver live again: first C{extra} (snapshots) and the held updates
        merged by number, leaving out the held ones numbered at or below
        C{horizon} that are superseded: those of C{keys} that a snapshot
        replaces (prices and volumes), or with C{every}, all of them (a
        replay sent them already).
        """
        held, self._held = self._held, None
        if held is None or self._closed:
            return
        fanout = self._app.fanout
        for key in self._key_counts:
            fanout.subscribe(key, self, self._sink)
        kept = [
            u for u in held
            if u.number > horizon or not (every or (u.conflatable and u.key in keys))
        ]
        self._send(merge_once((kept, extra)))

    def _send(self, updates: Iterable[Update]) -> None:
        """
        Send updates in order in one write, as the fan-out sends a batch
        (a reconnect's replay is often dozens of updates: one system call
        rather than one each).
        """
        sink = self._sink
        queued = False
        for update in updates:
            if sink.enqueue(update):
                queued = True
        if queued:
            sink.flush()

    def _abandon(self, failure: Failure, keys: Iterable[str]) -> Failure:
        """
        A change failed: stop following the keys it added, deliver what was
        held, and pass the failure on (as a client's error when the broker
        is unreachable).
        """
        self._unlisten(keys)
        self._release([], set(), 0)
        return unavailable(failure)

    def _log_failure(self, d: Deferred, message: str, subscription_id: str) -> None:
        d.addErrback(lambda f: self.log.failure(message, f, id=subscription_id))
