"""
Subscriptions: what a client asked to follow, which hub keys that means, and
the registry that keeps them resumable for a while after their connection
is lost.
"""

import secrets
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.internet import TimerService
from twisted.logger import Logger

from .catalog import Catalog
from .errors import ErrorCode, RequestError
from .hub import IHub, channel_key
from .requests import ALL_TOKENS, MARKET_DATA, TOKEN_UPDATES, TRANSACTION_UPDATES, Subscribe


def new_subscription_id() -> str:
    """
    A fresh subscription id. Random rather than counted, so that an id from
    before a restart never names a different subscription after it.
    """
    return "sub_" + secrets.token_hex(8)


if TYPE_CHECKING:
    from .broker.interface import SubscriptionRecord
    from .session import Session


@attrs.define(eq=False)
class Subscription:
    """
    One subscription, attached to a session or waiting to be resumed.

    @ivar topics: the normalised parameters (one token id or L{ALL_TOKENS},
        one address, or the sorted market symbols).
    @ivar keys: the hub keys it receives.
    @ivar owner: the id of the API key that made it; only that key may
        resume it.
    @ivar since: the last message number issued when it was made: nothing
        older belongs to it.
    @ivar session: the session it is attached to, if any.
    @ivar detached_at: when it lost its session, if it has.
    """

    subscription_id: str
    channel: str
    topics: tuple[str, ...]
    keys: tuple[str, ...]
    owner: int = 0
    since: int = 0
    session: "Session | None" = None
    detached_at: float | None = None

    @classmethod
    def from_record(cls, record: "SubscriptionRecord") -> "Subscription":
        """
        A subscription as the broker keeps it, to attach here.
        """
        return cls(record.subscription_id, record.channel, record.topics, record.keys,
                   owner=record.owner, since=record.since)

    def describe(self) -> dict[str, object]:
        """
        The subscription as clients see it: its id, channel and parameters.
        """
        description: dict[str, object] = {
            "subscription_id": self.subscription_id,
            "channel": self.channel,
        }
        if self.channel == TOKEN_UPDATES:
            description["token_id"] = self.topics[0]
        elif self.channel == TRANSACTION_UPDATES:
            description["address"] = self.topics[0]
        else:
            description["symbols"] = list(self.topics)
        return description


def resolve_keys(request: Subscribe, catalog: Catalog) -> tuple[str, ...]:
    """
    The hub keys a subscribe request covers.

    @raise RequestError: C{not_found} for an unknown token or market.
    """
    channel = request.channel
    if channel == TOKEN_UPDATES:
        (token_id,) = request.topics
        if token_id == ALL_TOKENS:
            return tuple(channel_key(channel, t) for t in catalog.tokens)
        if token_id not in catalog.tokens:
            raise RequestError(ErrorCode.NOT_FOUND, f"no token {token_id}")
        return (channel_key(channel, token_id),)
    if channel == TRANSACTION_UPDATES:
        return (channel_key(channel, request.topics[0]),)
    assert channel == MARKET_DATA
    unknown = [s for s in request.topics if s not in catalog.markets]
    if unknown:
        raise RequestError(
            ErrorCode.NOT_FOUND,
            f"no market {', '.join(unknown)[:200]}; markets are {', '.join(catalog.markets)}",
        )
    return tuple(channel_key(channel, s) for s in request.topics)


class SubscriptionRegistry:
    """
    Every subscription of the server by id. A subscription whose connection
    is lost stays here, detached, for the resume window; a C{reconnect}
    with the same API key re-attaches it. While a subscription exists its
    keys are watched, so the hub keeps their history for replay.

    An API key keeps at most C{max_detached_per_key} detached subscriptions:
    past that its oldest expire at once. Otherwise a client that subscribes
    and hangs up in a loop parks subscriptions (and the histories they
    watch) faster than the resume window lets them go.
    """

    def __init__(
        self, hub: IHub, resume_window: float, max_detached_per_key: int = 1000
    ) -> None:
        self._hub = hub
        self.resume_window = resume_window
        self.max_detached_per_key = max_detached_per_key
        self._all: dict[str, Subscription] = {}
        # Both in the order they were detached, oldest first.
        self._detached: OrderedDict[str, Subscription] = OrderedDict()
        self._detached_by_owner: dict[int, OrderedDict[str, Subscription]] = {}

    def add(self, subscription: Subscription) -> None:
        """
        Register a new subscription and watch its keys.
        """
        self._all[subscription.subscription_id] = subscription
        for key in subscription.keys:
            self._hub.watch(key)

    def remove(self, subscription: Subscription) -> None:
        """
        Forget a subscription (unsubscribed or expired).
        """
        if self._all.pop(subscription.subscription_id, None) is None:
            return
        self._undetach(subscription)
        for key in subscription.keys:
            self._hub.unwatch(key)

    def detach(self, subscription: Subscription, now: float) -> None:
        """
        Its session is gone: keep it resumable until the window passes, or
        until its API key has too many others waiting.
        """
        subscription.session = None
        subscription.detached_at = now
        subscription_id = subscription.subscription_id
        self._detached[subscription_id] = subscription
        mine = self._detached_by_owner.get(subscription.owner)
        if mine is None:
            mine = self._detached_by_owner[subscription.owner] = OrderedDict()
        mine[subscription_id] = subscription
        while len(mine) > self.max_detached_per_key:
            self.remove(next(iter(mine.values())))

    def _undetach(self, subscription: Subscription) -> None:
        subscription_id = subscription.subscription_id
        if self._detached.pop(subscription_id, None) is None:
            return
        mine = self._detached_by_owner[subscription.owner]
        del mine[subscription_id]
        if not mine:
            del self._detached_by_owner[subscription.owner]

    def find(self, subscription_id: str, owner: int) -> Subscription | None:
        """
        The subscription if it exists and belongs to C{owner}, attached or
        not; it stays where it is.
        """
        subscription = self._all.get(subscription_id)
        if subscription is None or subscription.owner != owner:
            return None
        return subscription

    def claim(self, subscription_id: str, owner: int) -> Subscription | None:
        """
        Take a subscription to resume it: C{None} unless it exists and
        belongs to C{owner}. One still attached to another session (a
        connection the server has not yet seen die) is taken from it.
        """
        subscription = self.find(subscription_id, owner)
        if subscription is None:
            return None
        if subscription.session is not None:
            subscription.session.give_up(subscription)
        self._undetach(subscription)
        subscription.detached_at = None
        return subscription

    def expire(self, now: float) -> int:
        """
        Forget detached subscriptions older than the resume window; return
        how many.
        """
        horizon = now - self.resume_window
        expired = []
        for subscription in self._detached.values():
            if subscription.detached_at >= horizon:
                break
            expired.append(subscription)
        for subscription in expired:
            self.remove(subscription)
        return len(expired)

    def all(self) -> list[Subscription]:
        """
        Every subscription, attached or detached.
        """
        return list(self._all.values())

    def __len__(self) -> int:
        return len(self._all)

    @property
    def detached_count(self) -> int:
        return len(self._detached)

    def detached_of(self, owner: int) -> int:
        """
        How many detached subscriptions the API key C{owner} has.
        """
        return len(self._detached_by_owner.get(owner, ()))


class ExpiryService(TimerService):
    """
    Every second: forget subscriptions past the resume window, and updates
    past the history's age. One timer for the whole server.
    """

    log = Logger()

    def __init__(self, registry: SubscriptionRegistry, hub: IHub, clock: Any) -> None:
        super().__init__(1.0, self._expire)
        self.clock = clock
        self._registry = registry
        self._hub = hub

    def _expire(self) -> None:
        try:
            self._registry.expire(self.clock.seconds())
            self._hub.expire_history()
        except Exception:
            self.log.failure("Expiring subscriptions and history failed")
