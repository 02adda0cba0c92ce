"""
Subscriptions as the user holds them, and how updates find them.

Updates do not name the subscription they belong to, so the client routes
each one by its channel and by the market symbol, token id or address
inside, against each subscription's parameters in the server's normal form
(taken from its confirmation).
"""

from collections.abc import Callable
from typing import Any

import attrs

Update = dict[str, Any]
"""An update message as received: C{{"id": "msg_<n>", "type": "update", "data": {...}}}."""


@attrs.frozen
class Gap:
    """
    Why a subscription may have missed updates across a reconnect, passed to
    C{on_gap}. Read the state you depend on again (C{get_balance},
    C{get_transaction}, C{get_token_info}); updates from then on are
    complete.

    @ivar reason: C{"expired"}: the server no longer held the subscription
        (kept 5 minutes after a disconnect, and only for the same API key),
        so the client subscribed again; the subscription has a new id and
        the current state follows as updates. C{"incomplete"}: the
        subscription was resumed, but the server could not replay
        everything it missed. C{"failed"}: subscribing again was refused
        (C{error} says why); the subscription has ended.
    @ivar previous_id: the subscription's id before the reconnect.
    @ivar lost_from: the first message id that may be missing
        (C{"msg_<n>"}), when the server said.
    @ivar lost_to: the last message id that may be missing, when the server
        said.
    @ivar error: for C{"failed"}, the exception.
    """

    reason: str
    previous_id: str | None
    lost_from: str | None = None
    lost_to: str | None = None
    error: Exception | None = None


@attrs.define(eq=False)
class Subscription:
    """
    One subscription. The same object lasts across reconnects, even when
    the server gives it a new id.

    @ivar id: the server's subscription id (C{"sub_..."}); C{None} while
        (re)subscribing.
    @ivar channel: C{"market_data"}, C{"token_updates"} or
        C{"transaction_updates"}.
    @ivar params: the channel's parameters (C{symbols}, C{token_id} or
        C{address}): as requested, then in the server's normal form.
    @ivar on_update: called with each update message.
    @ivar on_gap: called with this subscription and a L{Gap} when
        continuity was lost; may be C{None}.
    @ivar active: C{False} once unsubscribed or ended.
    """

    channel: str
    params: dict[str, Any]
    on_update: Callable[[Update], object]
    on_gap: Callable[["Subscription", Gap], object] | None = None
    id: str | None = None
    active: bool = True

    def confirmed(self, data: dict[str, Any]) -> None:
        """
        Take the id and the normal-form parameters of a
        C{subscription_confirmation}.
        """
        self.id = data["subscription_id"]
        params = {k: v for k, v in data.items()
                  if k not in ("status", "subscription_id", "channel")}
        if params:
            self.params = params

    def request(self) -> dict[str, Any]:
        """
        The C{data} of a C{subscribe} request for this subscription.
        """
        return {"channel": self.channel, **self.params}

    def matches(self, data: dict[str, Any]) -> bool:
        """
        Whether an update's C{data} belongs to this subscription.
        """
        if data.get("channel") != self.channel:
            return False
        params = self.params
        if self.channel == "market_data":
            symbols = params.get("symbols")
            if isinstance(symbols, str):
                symbols = [symbols]
            return symbols is None or _upper(data.get("symbol")) in {_upper(s) for s in symbols}
        if self.channel == "token_updates":
            token = _lower(params.get("token_id", "*"))
            return token in ("*", "0x...") or _lower(data.get("token_id")) == token
        if self.channel == "transaction_updates":
            address = _lower(params.get("address"))
            parties = {_lower(data.get("from")), _lower(data.get("to"))} - {None}
            # Only transaction_id, status and timestamp are promised; an
            # update naming neither party goes to every such subscription.
            return not parties or address in parties
        return True

    def __repr__(self) -> str:
        return f"<Subscription {self.id} {self.channel} {self.params}>"


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value
