"""
The session: one authenticated connection's state machine.

The session knows the API and nothing of WebSocket: the protocol feeds it
messages and it acts on the connection only through L{IConnection}. Its
states::

    FRESH  --subscribe-->  ACTIVE
    FRESH  --reconnect-->  RESUMING  --replay sent-->  ACTIVE
    any  --close / connection lost-->  CLOSED

In FRESH a connection has made no subscription yet, so a C{reconnect} may
resume old ones; afterwards it may not (resumed and new subscriptions would
race). In RESUMING the missed updates are streamed a chunk per reactor turn,
and live updates are held back until the replay is out, so the client sees
every update once, in order. Requests are served in every state but
CLOSED, where nothing is sent and every message is dropped. When the
connection is lost its subscriptions are detached, not deleted: another
connection with the same API key may resume them within the resume window.
``docs/session.dot`` draws it.

Each message goes through, in order: the silence clock, the envelope check,
the rate limit (C{heartbeat_response} is exempt), the typed request, its
handler. A handler either answers at once or returns a Deferred; any
L{RequestError} becomes an C{error} reply echoing the request's id, and any
other exception is logged and answered with C{internal_error}.
"""

import heapq
from collections.abc import Iterator
from enum import Enum
from itertools import islice
from operator import attrgetter
from typing import Any

import orjson
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from .admission import default_max_connections
from .amounts import format_units
from .closecodes import CloseCode
from .errors import ErrorCode, RequestError
from .hub import CallableSink, ReplayOvertaken, Update
from .ledger import describe_transaction
from .ratelimit import FloodWindow, TokenBucket
from .requests import (
    Envelope,
    ExecuteTransaction,
    GetBalance,
    GetTokenInfo,
    GetTransaction,
    ListSubscriptions,
    Ping,
    Reconnect,
    ServerInfo,
    Subscribe,
    Unsubscribe,
    parse_envelope,
    parse_request,
)
from .server import Server
from .storage.keys import ApiKey
from .subscriptions import Subscription, new_subscription_id, resolve_keys
from .timestamps import isoformat

FLOOD_WINDOW = 10.0
"""Seconds over which rate-limited messages are counted towards a close."""


class IConnection(Interface):
    """
    What a session may do to its connection.
    """

    peer: str
    sink = Attribute("The L{rustorium.hub.ISink} the hub delivers this connection's updates to.")

    def send_payload(payload: bytes) -> None:
        """
        Send one encoded JSON message (a reply).
        """

    def deliver(update: Update) -> None:
        """
        Send a published update (its frame is prepared once for everyone).
        """

    def enqueue(update: Update) -> bool:
        """
        Queue an update of a batch (see L{rustorium.hub.ISink}).
        """

    def flush() -> None:
        """
        Send the queued batch in one write.
        """

    def send_frame(frame: Any) -> None:
        """
        Send a frame prepared once for many connections (heartbeats).
        """

    def close(code: int, reason: str) -> None:
        """
        Start the closing handshake.
        """


class SessionState(Enum):
    FRESH = "fresh"
    RESUMING = "resuming"
    ACTIVE = "active"
    CLOSED = "closed"


REPLAY_CHUNK = 256
"""Replayed updates sent per reactor turn, so that a reconnect storm of
thousands of clients never stalls the server."""


class Session:
    """
    One authenticated connection.

    @ivar api_key: the key it authenticated with.
    """

    # Thousands of these live at once: no per-instance __dict__.
    __slots__ = (
        "_bucket", "_by_topics", "_flood", "_held", "_key_counts", "_replay", "_server",
        "_sink", "_subscriptions", "_unrecovered", "api_key", "connection", "state",
    )

    log = Logger()

    def __init__(self, connection: IConnection, api_key: ApiKey, server: Server) -> None:
        self.connection = connection
        self.api_key = api_key
        self.state = SessionState.FRESH
        self._server = server
        settings = server.settings
        now = server.clock.seconds
        self._bucket = TokenBucket(settings.rate_limit, settings.rate_burst, now)
        self._flood = FloodWindow(settings.flood_limit, FLOOD_WINDOW, now)
        self._subscriptions: dict[str, Subscription] = {}
        self._by_topics: dict[tuple[str, tuple[str, ...]], Subscription] = {}
        self._key_counts: dict[str, int] = {}
        # Where the hub delivers this session's updates: the connection, or
        # while a replay is streamed, a sink holding live updates back.
        self._sink: Any = connection.sink
        self._held: list[Update] | None = None
        self._replay: Iterator[Update] | None = None
        self._unrecovered: list[Subscription] = []
        server.sessions.add(self, now())

    # Input from the connection

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        """
        Handle one message from the client.
        """
        if self.state is SessionState.CLOSED:
            return
        server = self._server
        server.sessions.touch(self, server.clock.seconds())
        envelope: Envelope | None = None
        problem: RequestError | None = None
        if is_binary:
            problem = RequestError(
                ErrorCode.INVALID_REQUEST, "binary messages are not accepted; send JSON as text"
            )
        else:
            try:
                envelope = parse_envelope(payload)
            except RequestError as e:
                problem = e
            else:
                if envelope.type == "heartbeat_response":
                    server.counters.received["heartbeat_response"] += 1
                    return
        server.counters.received[envelope.type if envelope else "invalid"] += 1
        request_id = envelope.request_id if envelope else problem.request_id
        if not self._bucket.take():
            server.counters.rate_limited += 1
            self._rate_limited(request_id)
            return
        if problem is not None:
            self._send_error(request_id, problem)
            return
        self._dispatch(envelope)

    def connection_lost(self) -> None:
        """
        The connection is gone: drop every subscription.
        """
        self._end()

    # Output

    def reply(self, request_id: object, kind: str, data: dict[str, Any]) -> None:
        """
        Send a reply, unless the session has closed.
        """
        if self.state is not SessionState.CLOSED:
            self._server.counters.sent[kind] += 1
            self.connection.send_payload(
                orjson.dumps({"id": request_id, "type": kind, "data": data})
            )

    def send_frame(self, frame: Any) -> None:
        """
        Send a frame shared with other connections (a heartbeat).
        """
        if self.state is not SessionState.CLOSED:
            self.connection.send_frame(frame)

    def close(self, code: CloseCode, reason: str) -> None:
        """
        Close the connection with a close code from L{CloseCode}; nothing is
        sent after this.
        """
        if self.state is SessionState.CLOSED:
            return
        self._end()
        self.connection.close(int(code), reason)

    def _end(self) -> None:
        if self.state is SessionState.CLOSED:
            return
        self.state = SessionState.CLOSED
        server = self._server
        hub = server.hub
        for key in self._key_counts:
            hub.unsubscribe(key, self)
        now = server.clock.seconds()
        for subscription in self._subscriptions.values():
            server.subscriptions.detach(subscription, now)
        self._key_counts.clear()
        self._subscriptions.clear()
        self._by_topics.clear()
        self._held = self._replay = None
        server.sessions.remove(self)

    def give_up(self, subscription: Subscription) -> None:
        """
        Another connection resumed one of this session's subscriptions (this
        one is presumably dead, unnoticed as yet): stop delivering it here.
        """
        self._remove(subscription)

    def _send_update(self, update: Update) -> None:
        if self._held is not None:
            self._held.append(update)
        else:
            self.connection.deliver(update)

    def _send_error(self, request_id: object, error: RequestError) -> None:
        self._server.counters.errors[error.code] += 1
        self.reply(
            request_id, "error", {"code": str(error.code), "message": error.message, **error.extra}
        )

    def _rate_limited(self, request_id: object) -> None:
        if self._flood.exceeded():
            self.log.info(
                "Closing {peer} (key {key_name}): kept sending past the rate limit",
                peer=self.connection.peer, key_name=self.api_key.name,
            )
            self.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded repeatedly")
            return
        retry_after = round(self._bucket.retry_after(), 3)
        self._send_error(
            request_id,
            RequestError(
                ErrorCode.RATE_LIMIT_EXCEEDED,
                f"more than {self._server.settings.rate_limit:g} messages per second; "
                f"this one was not executed, retry after {retry_after:g} s",
                retry_after=retry_after,
            ),
        )

    # Dispatch

    def _dispatch(self, envelope: Envelope) -> None:
        request_id = envelope.request_id
        try:
            request = parse_request(envelope)
            handler = self._HANDLERS.get(type(request))
            if handler is None:
                raise RequestError(
                    ErrorCode.UNKNOWN_TYPE, f"{envelope.type} is not served by this server"
                )
            result = handler(self, request_id, request)
        except RequestError as e:
            self._send_error(request_id, e)
            return
        except Exception:
            self._internal_error(request_id, Failure(), envelope.type)
            return
        if isinstance(result, Deferred):
            result.addErrback(self._request_failed, request_id, envelope.type)

    def _request_failed(self, failure: Failure, request_id: object, kind: str) -> None:
        if failure.check(RequestError):
            self._send_error(request_id, failure.value)
        else:
            self._internal_error(request_id, failure, kind)

    def _internal_error(self, request_id: object, failure: Failure, kind: str) -> None:
        self.log.failure("Request {kind} from {peer} failed", failure,
                         kind=kind, peer=self.connection.peer)
        self._send_error(
            request_id,
            RequestError(
                ErrorCode.INTERNAL_ERROR,
                f"the server failed to handle {kind}; the failure is logged, "
                "and the request may be retried",
            ),
        )

    # Handlers: each takes the request id and the typed request.

    def _subscribe(self, request_id: object, request: Subscribe) -> None:
        topics = (request.channel, request.topics)
        subscription = self._by_topics.get(topics)
        if subscription is None:
            limit = self._server.settings.max_subscriptions
            if len(self._subscriptions) >= limit:
                raise RequestError(
                    ErrorCode.SUBSCRIPTION_LIMIT,
                    f"this connection already has {limit} subscriptions, the most allowed; "
                    "unsubscribe from one first",
                )
            server = self._server
            keys = resolve_keys(request, server.catalog)
            subscription = Subscription(
                new_subscription_id(), request.channel, request.topics, keys,
                owner=self.api_key.key_id, since=server.hub.last_number,
            )
            server.subscriptions.add(subscription)
            self._add(subscription)
        if self.state is SessionState.FRESH:
            self.state = SessionState.ACTIVE
        self.reply(
            request_id,
            "subscription_confirmation",
            {"status": "subscribed", **subscription.describe()},
        )
        self._send_current_state(subscription)

    def _add(self, subscription: Subscription) -> None:
        subscription.session = self
        self._subscriptions[subscription.subscription_id] = subscription
        self._by_topics[subscription.channel, subscription.topics] = subscription
        hub = self._server.hub
        for key in subscription.keys:
            count = self._key_counts.get(key, 0)
            if not count:
                hub.subscribe(key, self, self._sink)
            self._key_counts[key] = count + 1

    def _remove(self, subscription: Subscription) -> None:
        del self._subscriptions[subscription.subscription_id]
        self._by_topics.pop((subscription.channel, subscription.topics), None)
        hub = self._server.hub
        for key in subscription.keys:
            count = self._key_counts[key] - 1
            if count:
                self._key_counts[key] = count
            else:
                del self._key_counts[key]
                hub.unsubscribe(key, self)

    def _send_current_state(self, subscription: Subscription) -> None:
        hub = self._server.hub
        for key in subscription.keys:
            snapshot = hub.snapshot(key)
            if snapshot is not None:
                self._send_update(snapshot)

    def _unsubscribe(self, request_id: object, request: Unsubscribe) -> None:
        subscription = self._subscriptions.get(request.subscription_id)
        if subscription is None:
            raise RequestError(
                ErrorCode.NOT_FOUND,
                f"no subscription {request.subscription_id!r} on this connection",
            )
        self._remove(subscription)
        self._server.subscriptions.remove(subscription)
        self.reply(
            request_id,
            "subscription_confirmation",
            {
                "status": "unsubscribed",
                "channel": subscription.channel,
                "subscription_id": subscription.subscription_id,
            },
        )

    def _list_subscriptions(self, request_id: object, request: ListSubscriptions) -> None:
        self.reply(
            request_id,
            "subscriptions",
            {"subscriptions": [s.describe() for s in self._subscriptions.values()]},
        )

    def _get_token_info(self, request_id: object, request: GetTokenInfo) -> None:
        token = self._server.catalog.tokens.get(request.token_id)
        if token is None:
            raise RequestError(ErrorCode.NOT_FOUND, f"no token {request.token_id}")
        self.reply(request_id, "token_info", token.info())

    def _execute_transaction(self, request_id: object, request: ExecuteTransaction) -> Deferred:
        d = self._server.ledger.submit(self.api_key, request)
        d.addCallback(
            lambda row: self.reply(
                request_id,
                "transaction_response",
                {"transaction_id": row.transaction_id, "status": row.status},
            )
        )
        return d

    def _get_balance(self, request_id: object, request: GetBalance) -> None:
        ledger = self._server.ledger
        token = ledger.token(request.token_id)
        confirmed, available = ledger.balance(request.address, request.token_id)
        self.reply(
            request_id,
            "balance",
            {
                "address": request.address,
                "token_id": request.token_id,
                "balance": format_units(confirmed, token.decimals),
                "available": format_units(available, token.decimals),
            },
        )

    def _get_transaction(self, request_id: object, request: GetTransaction) -> Deferred:
        ledger = self._server.ledger

        def found(row):
            if row is None:
                raise RequestError(ErrorCode.NOT_FOUND, f"no transaction {request.transaction_id}")
            token = ledger.token(row.token_id)
            self.reply(request_id, "transaction", describe_transaction(row, token))

        return ledger.find(request.transaction_id).addCallback(found)

    def _ping(self, request_id: object, request: Ping) -> None:
        self.reply(request_id, "pong", {"timestamp": isoformat(self._server.clock.seconds())})

    def _server_info(self, request_id: object, request: ServerInfo) -> None:
        server = self._server
        settings = server.settings
        self.reply(
            request_id,
            "server_info",
            {
                "version": server.version,
                "timestamp": isoformat(server.clock.seconds()),
                "heartbeat_interval": settings.heartbeat_interval,
                "heartbeat_timeout": settings.silence_timeout,
                "limits": {
                    "max_subscriptions": settings.max_subscriptions,
                    "rate_limit": settings.rate_limit,
                    "rate_burst": settings.rate_burst,
                    "max_message_size": settings.max_message_size,
                    "frame_rate": settings.frame_rate,
                    "frame_burst": settings.frame_burst,
                    "max_backlog": settings.max_backlog,
                    "handshake_timeout": settings.handshake_timeout,
                    "max_connections": settings.max_connections or default_max_connections(),
                    "max_handshakes_per_address": settings.max_handshakes_per_address,
                },
                "usage": {
                    "subscriptions": len(self._subscriptions),
                    "rate_tokens": round(self._bucket.available(), 3),
                },
                "channels": ["token_updates", "transaction_updates", "market_data"],
                "markets": list(server.catalog.markets),
                "tokens": list(server.catalog.tokens),
            },
        )

    def _reconnect(self, request_id: object, request: Reconnect) -> None:
        if self.state is not SessionState.FRESH:
            raise RequestError(
                ErrorCode.INVALID_REQUEST,
                "reconnect must be the first subscribe or reconnect on a connection, "
                "and this one already has one; open a new connection to resume",
            )
        server = self._server
        hub = server.hub
        last = request.last_message_id
        resumed: dict[str, Subscription] = {}
        for subscription_id in request.subscription_ids:
            if len(resumed) >= server.settings.max_subscriptions:
                break
            subscription = server.subscriptions.claim(subscription_id, self.api_key.key_id)
            if subscription is not None:
                resumed[subscription_id] = subscription
        # Replay each key from the oldest point any of its subscriptions
        # needs: after the client's last message, never before it subscribed.
        starts: dict[str, int] = {}
        for subscription in resumed.values():
            start = subscription.since if last is None else max(last, subscription.since)
            for key in subscription.keys:
                starts[key] = min(starts.get(key, start), start)
        replays = {key: hub.replay(key, start) for key, start in starts.items()}
        entries = []
        for subscription_id in request.subscription_ids:
            subscription = resumed.get(subscription_id)
            if subscription is None:
                entries.append({"subscription_id": subscription_id, "status": "expired"})
                continue
            lost = [replays[k].lost for k in subscription.keys if replays[k].lost]
            entry = {
                **subscription.describe(),
                "status": "resumed",
                "recovered": not lost,
                "replayed": sum(replays[k].count for k in subscription.keys),
            }
            if lost:
                entry["lost"] = {
                    "from": f"msg_{min(low for low, _ in lost)}",
                    "to": f"msg_{max(high for _, high in lost)}",
                }
                self._unrecovered.append(subscription)
            entries.append(entry)
        self.state = SessionState.RESUMING
        self._held = []
        self._sink = CallableSink(self._held.append)
        for subscription in resumed.values():
            self._add(subscription)
        self.reply(
            request_id,
            "reconnect_confirmation",
            {
                "recovered": len(resumed) == len(request.subscription_ids)
                and not self._unrecovered,
                "replayed": sum(r.count for r in replays.values()),
                "subscriptions": entries,
            },
        )
        self._replay = heapq.merge(
            *(iter(r) for r in replays.values() if r.count), key=attrgetter("number")
        )
        self._stream_replay()

    def _stream_replay(self) -> None:
        """
        Send the next chunk of the replay; the rest follows on later reactor
        turns, so thousands of clients resuming at once share the reactor.
        """
        if self.state is not SessionState.RESUMING:
            return
        try:
            chunk = list(islice(self._replay, REPLAY_CHUNK))
        except ReplayOvertaken:
            self.close(CloseCode.REPLAY_OVERTAKEN, "replay overtaken by new updates; reconnect")
            return
        deliver = self.connection.deliver
        for update in chunk:
            deliver(update)
        if len(chunk) == REPLAY_CHUNK:
            self._server.clock.callLater(0, self._stream_replay)
        else:
            self._resume_live()

    def _resume_live(self) -> None:
        """
        The replay is out: send what was held back, then the current state
        of subscriptions that could not be fully recovered, and deliver live.
        """
        held, self._held, self._replay = self._held, None, None
        self.state = SessionState.ACTIVE
        self._sink = self.connection.sink
        hub = self._server.hub
        for key in self._key_counts:
            hub.subscribe(key, self, self._sink)
        for update in held:
            self.connection.deliver(update)
        unrecovered, self._unrecovered = self._unrecovered, []
        for subscription in unrecovered:
            if subscription.session is self:
                self._send_current_state(subscription)

    _HANDLERS: dict[type, Any] = {
        Subscribe: _subscribe,
        Unsubscribe: _unsubscribe,
        ListSubscriptions: _list_subscriptions,
        GetTokenInfo: _get_token_info,
        ExecuteTransaction: _execute_transaction,
        GetBalance: _get_balance,
        GetTransaction: _get_transaction,
        Ping: _ping,
        ServerInfo: _server_info,
        Reconnect: _reconnect,
    }
