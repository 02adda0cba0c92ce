"""
The session: one authenticated connection's state machine.

The session knows the API and nothing of WebSocket: the protocol feeds it
messages and it acts on the connection only through L{IConnection}. Its
states::

    FRESH  --subscribe / reconnect-->  ACTIVE
    FRESH, ACTIVE  --close / connection lost-->  CLOSED

In FRESH a connection has made no subscription yet, so a C{reconnect} may
resume old ones; once ACTIVE it may not (the resumed and the new
subscriptions would race). Every other request is served in both. In CLOSED
nothing is sent and every message is dropped. ``docs/session.dot`` draws it.

Each message goes through, in order: the silence clock, the envelope check,
the rate limit (C{heartbeat_response} is exempt), the typed request, its
handler. A handler either answers at once or returns a Deferred; any
L{RequestError} becomes an C{error} reply echoing the request's id, and any
other exception is logged and answered with C{internal_error}.
"""

from enum import Enum
from typing import Any

import orjson
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from .amounts import format_units
from .closecodes import CloseCode
from .errors import ErrorCode, RequestError
from .hub import Update
from .ledger import describe_transaction
from .ratelimit import FloodWindow, TokenBucket
from .requests import (
    Envelope,
    ExecuteTransaction,
    GetBalance,
    GetTokenInfo,
    GetTransaction,
    HeartbeatResponse,
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

    def send_payload(payload: bytes) -> None:
        """
        Send one encoded JSON message (a reply).
        """

    def deliver(update: Update) -> None:
        """
        Send a published update (its frame is prepared once for everyone).
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
    ACTIVE = "active"
    CLOSED = "closed"


class Session:
    """
    One authenticated connection.

    @ivar api_key: the key it authenticated with.
    """

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
        server.sessions.add(self, now())

    # Input from the connection

    def message_received(self, payload: bytes, is_binary: bool) -> None:
        """
        Handle one message from the client.
        """
        if self.state is SessionState.CLOSED:
            return
        self._server.sessions.touch(self, self._server.clock.seconds())
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
                    return
        request_id = envelope.request_id if envelope else problem.request_id
        if not self._bucket.take():
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
        hub = self._server.hub
        for key in self._key_counts:
            hub.unsubscribe(key, self)
        self._key_counts.clear()
        self._subscriptions.clear()
        self._by_topics.clear()
        self._server.sessions.remove(self)

    def _send_error(self, request_id: object, error: RequestError) -> None:
        self.reply(
            request_id, "error", {"code": str(error.code), "message": error.message, **error.extra}
        )

    def _rate_limited(self, request_id: object) -> None:
        if self._flood.exceeded():
            self.log.info(
                "Closing {peer} (key {key}): kept sending past the rate limit",
                peer=self.connection.peer, key=self.api_key.name,
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
            keys = resolve_keys(request, self._server.catalog)
            subscription = Subscription(
                new_subscription_id(), request.channel, request.topics, keys
            )
            self._add(subscription)
        self.state = SessionState.ACTIVE
        self.reply(
            request_id,
            "subscription_confirmation",
            {"status": "subscribed", **subscription.describe()},
        )
        self._send_current_state(subscription)

    def _add(self, subscription: Subscription) -> None:
        self._subscriptions[subscription.subscription_id] = subscription
        self._by_topics[subscription.channel, subscription.topics] = subscription
        hub = self._server.hub
        deliver = self.connection.deliver
        for key in subscription.keys:
            count = self._key_counts.get(key, 0)
            if not count:
                hub.subscribe(key, self, deliver)
            self._key_counts[key] = count + 1

    def _send_current_state(self, subscription: Subscription) -> None:
        hub = self._server.hub
        for key in subscription.keys:
            snapshot = hub.snapshot(key)
            if snapshot is not None:
                self.connection.deliver(snapshot)

    def _unsubscribe(self, request_id: object, request: Unsubscribe) -> None:
        subscription = self._subscriptions.pop(request.subscription_id, None)
        if subscription is None:
            raise RequestError(
                ErrorCode.NOT_FOUND,
                f"no subscription {request.subscription_id!r} on this connection",
            )
        del self._by_topics[subscription.channel, subscription.topics]
        hub = self._server.hub
        for key in subscription.keys:
            count = self._key_counts[key] - 1
            if count:
                self._key_counts[key] = count
            else:
                del self._key_counts[key]
                hub.unsubscribe(key, self)
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

    def _heartbeat_response(self, request_id: object, request: HeartbeatResponse) -> None:
        """
        Never reached: heartbeat responses are consumed before the rate limit.
        """

    def _reconnect(self, request_id: object, request: Reconnect) -> None:
        if self.state is not SessionState.FRESH:
            raise RequestError(
                ErrorCode.INVALID_REQUEST,
                "reconnect must be the first subscribe or reconnect on a connection, "
                "and this one already has one; open a new connection to resume",
            )
        self.state = SessionState.ACTIVE
        self.reply(
            request_id,
            "reconnect_confirmation",
            {
                "recovered": False,
                "replayed": 0,
                "subscriptions": [
                    {"subscription_id": s, "status": "expired"} for s in request.subscription_ids
                ],
            },
        )

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
        HeartbeatResponse: _heartbeat_response,
        Reconnect: _reconnect,
    }
