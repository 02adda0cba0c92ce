"""
Subscriptions: what a client asked to follow, and which keys that means.
The broker keeps them resumable for a while after their connection is lost
(L{rustorium.broker.interface.IBroker.detach_subscription}).
"""

import secrets
from typing import TYPE_CHECKING

import attrs

from .catalog import Catalog
from .errors import ErrorCode, RequestError
from .hub import channel_key
from .requests import ALL_TOKENS, MARKET_DATA, TOKEN_UPDATES, TRANSACTION_UPDATES, Subscribe


def new_subscription_id() -> str:
    """
    A fresh subscription id. Random rather than counted, so that an id from
    before a restart never names a different subscription after it.
    """
    return "sub_" + secrets.token_hex(8)


if TYPE_CHECKING:
    from .broker.interface import SubscriptionRecord


@attrs.define(eq=False)
class Subscription:
    """
    One subscription, as a feed holds it while attached.

    @ivar topics: the normalised parameters (one token id or L{ALL_TOKENS},
        one address, or the sorted market symbols).
    @ivar keys: the hub keys it receives.
    @ivar owner: the id of the API key that made it; only that key may
        resume it.
    @ivar since: the last message number issued when it was made: nothing
        older belongs to it.
    """

    subscription_id: str
    channel: str
    topics: tuple[str, ...]
    keys: tuple[str, ...]
    owner: int = 0
    since: int = 0

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
