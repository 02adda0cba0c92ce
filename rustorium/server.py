"""
The server's shared state: what every session reaches, and nothing that
knows about WebSocket.
"""

from collections import Counter, OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING

import attrs

from .apikeys import KeyStore
from .ratelimit import KeyBuckets

if TYPE_CHECKING:
    from .application import Application
    from .session import Session


class SessionRegistry:
    """
    The open sessions, ordered by when each was last heard from (any frame
    of its connection), so finding the silent ones looks only at the
    oldest few.
    """

    def __init__(self) -> None:
        self._last_seen: OrderedDict[Session, float] = OrderedDict()

    def add(self, session: "Session", now: float) -> None:
        self._last_seen[session] = now

    def touch(self, session: "Session", now: float) -> None:
        """
        Record that C{session} sent something at C{now} (nothing if it has
        been removed: a closing connection's last frames do not bring it
        back).
        """
        last_seen = self._last_seen
        if session in last_seen:
            last_seen[session] = now
            last_seen.move_to_end(session)

    def remove(self, session: "Session") -> None:
        self._last_seen.pop(session, None)

    def silent_since(self, deadline: float) -> list["Session"]:
        """
        The sessions that have sent nothing since C{deadline}.
        """
        silent = []
        for session, seen in self._last_seen.items():
            if seen >= deadline:
                break
            silent.append(session)
        return silent

    def __iter__(self) -> Iterator["Session"]:
        return iter(list(self._last_seen))

    def __len__(self) -> int:
        return len(self._last_seen)


@attrs.define
class Counters:
    """
    Event counts for operators (exported as metrics).

    @ivar conflated: updates a slow reader never got because a newer value
        of the same key replaced them.
    @ivar slow_consumers: connections closed for reading too slowly.
    @ivar received: client messages by type (C{invalid} when unparsable).
    @ivar sent: replies by type.
    @ivar errors: error replies by code.
    @ivar rate_limited: messages refused by the rate limit.
    @ivar frame_floods: connections closed for sending frames past their
        frame budget.
    @ivar connections_refused: TCP connections refused at accept, by the
        setting whose cap was reached.
    @ivar handshake_timeouts: connections closed because their opening
        handshake did not complete within the handshake timeout.
    @ivar http_responses: HTTP API answers by operation (C{unknown} for no
        route) and status.
    @ivar console_deliveries: updates the operator console's monitor took
        from the fan-out itself, by channel: counted in the fan-out's
        deliveries, left out of what the metrics and the node's message
        rate call deliveries to connections.
    """

    conflated: int = 0
    slow_consumers: int = 0
    received: Counter[str] = attrs.Factory(Counter)
    sent: Counter[str] = attrs.Factory(Counter)
    errors: Counter[str] = attrs.Factory(Counter)
    rate_limited: int = 0
    frame_floods: int = 0
    connections_refused: Counter[str] = attrs.Factory(Counter)
    handshake_timeouts: int = 0
    http_responses: Counter[tuple[str, int]] = attrs.Factory(Counter)
    console_deliveries: Counter[str] = attrs.Factory(Counter)


class Server:
    """
    The API's shared state.

    @ivar ready: whether the service has started; handshakes are refused
        with 503 until it has.
    @ivar broker_ready: whether the broker is reachable; handshakes are
        refused with 503 while it is not.
    @ivar key_buckets: each API key's message budget, shared by all its
        connections and kept across reconnects.
    @ivar http_buckets: each API key's budget of HTTP API requests.
    """

    def __init__(self, app: "Application", keys: KeyStore) -> None:
        self.app = app
        self.settings = settings = app.settings
        self.clock = clock = app.clock
        self.catalog = app.catalog
        self.keys = keys
        self.ledger = app.ledger
        self.sessions = SessionRegistry()
        self.version = app.version
        self.ready = False
        self.broker_ready = True
        self.counters = Counters()
        self.connections_per_key: Counter[int] = Counter()
        self.key_buckets = KeyBuckets(settings.key_rate_limit, settings.key_rate_burst,
                                      clock.seconds)
        self.http_buckets = KeyBuckets(settings.http_rate_limit, settings.http_rate_burst,
                                       clock.seconds)
