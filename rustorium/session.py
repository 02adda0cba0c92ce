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
the rate limits, the connection's then its API key's (C{heartbeat_response}
is exempt), the typed request, its handler. A handler either answers at
once or returns a Deferred; any L{RequestError} becomes an C{error} reply
echoing the request's id, and any other exception is logged and answered
with C{internal_error}.
"""

from enum import Enum
from typing import Any

import orjson
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from .closecodes import CloseCode
from .errors import ErrorCode, RequestError
from .hub import Update
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
from .subscriptions import Subscription

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


class Session:
    """
    One authenticated connection.

    @ivar api_key: the key it authenticated with.
    @ivar connection_id: its id in the cluster, for operators.
    @ivar opened_at: when it opened (reactor seconds).
    """

    # Thousands of these live at once: no per-instance __dict__.
    __slots__ = ("_bucket", "_flood", "_server", "api_key", "connection", "connection_id", "feed",
                 "opened_at", "state")

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
        self.feed = server.app.open_feed(api_key, connection.sink)
        self.opened_at = now()
        server.sessions.add(self, self.opened_at)
        self.connection_id = server.app.add_connection(self)

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
        settings = server.settings
        if not self._bucket.take():
            self._rate_limited(
                request_id, self._bucket, f"more than {settings.rate_limit:g} messages per second"
            )
            return
        key_bucket = server.key_buckets.bucket(self.api_key.key_id)
        if not key_bucket.take():
            self._rate_limited(
                request_id, key_bucket,
                f"more than {settings.key_rate_limit:g} messages per second from this API key "
                "across its connections",
            )
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
        self.feed.close()
        self._server.sessions.remove(self)
        self._server.app.remove_connection(self.connection_id)

    def _send_error(self, request_id: object, error: RequestError) -> None:
        self._server.counters.errors[error.code] += 1
        self.reply(
            request_id, "error", {"code": str(error.code), "message": error.message, **error.extra}
        )

    def _rate_limited(self, request_id: object, bucket: TokenBucket, limit: str) -> None:
        self._server.counters.rate_limited += 1
        if self._flood.exceeded():
            self.log.info(
                "Closing {peer} (key {key_name}): kept sending past the rate limit",
                peer=self.connection.peer, key_name=self.api_key.name,
            )
            self.close(CloseCode.POLICY_VIOLATION, "rate limit exceeded repeatedly")
            return
        retry_after = round(bucket.retry_after(), 3)
        self._send_error(
            request_id,
            RequestError(
                ErrorCode.RATE_LIMIT_EXCEEDED,
                f"{limit}; this one was not executed, retry after {retry_after:g} s",
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

    # Handlers: each takes the request id and the typed request, and
    # carries it out through the application layer.

    def _subscribe(self, request_id: object, request: Subscribe) -> Deferred:
        if self.state is SessionState.FRESH:
            self.state = SessionState.ACTIVE

        def confirm(subscription: Subscription) -> None:
            self.reply(request_id, "subscription_confirmation",
                       {"status": "subscribed", **subscription.describe()})

        return self.feed.subscribe(request, confirm)

    def _unsubscribe(self, request_id: object, request: Unsubscribe) -> Deferred:
        d = self.feed.unsubscribe(request.subscription_id)
        d.addCallback(lambda subscription: self.reply(
            request_id,
            "subscription_confirmation",
            {
                "status": "unsubscribed",
                "channel": subscription.channel,
                "subscription_id": subscription.subscription_id,
            },
        ))
        return d

    def _list_subscriptions(self, request_id: object, request: ListSubscriptions) -> None:
        self.reply(request_id, "subscriptions", {"subscriptions": self.feed.describe()})

    def _get_token_info(self, request_id: object, request: GetTokenInfo) -> None:
        self.reply(request_id, "token_info", self._server.app.token_info(request.token_id))

    def _execute_transaction(self, request_id: object, request: ExecuteTransaction) -> Deferred:
        d = self._server.app.execute_transaction(self.api_key, request)
        return d.addCallback(lambda data: self.reply(request_id, "transaction_response", data))

    def _get_balance(self, request_id: object, request: GetBalance) -> Deferred:
        d = self._server.app.balance(request.address, request.token_id)
        return d.addCallback(lambda data: self.reply(request_id, "balance", data))

    def _get_transaction(self, request_id: object, request: GetTransaction) -> Deferred:
        d = self._server.app.transaction(request.transaction_id)
        return d.addCallback(lambda data: self.reply(request_id, "transaction", data))

    def _ping(self, request_id: object, request: Ping) -> None:
        self.reply(request_id, "pong", self._server.app.ping())

    def _server_info(self, request_id: object, request: ServerInfo) -> Deferred:
        server = self._server

        def answer(info: dict[str, Any]) -> None:
            info["usage"] = {
                "subscriptions": len(self.feed.subscriptions),
                "rate_tokens": round(self._bucket.available(), 3),
                "key_rate_tokens": round(
                    server.key_buckets.bucket(self.api_key.key_id).available(), 3
                ),
            }
            self.reply(request_id, "server_info", info)

        return server.app.server_info().addCallback(answer)

    def _reconnect(self, request_id: object, request: Reconnect) -> Deferred:
        if self.state is not SessionState.FRESH:
            raise RequestError(
                ErrorCode.INVALID_REQUEST,
                "reconnect must be the first subscribe or reconnect on a connection, "
                "and this one already has one; open a new connection to resume",
            )
        self.state = SessionState.RESUMING

        def resumed(result: object) -> object:
            if self.state is SessionState.RESUMING:
                self.state = SessionState.ACTIVE
            return result

        d = self.feed.resume(
            list(request.subscription_ids), request.last_message_id,
            lambda data: self.reply(request_id, "reconnect_confirmation", data),
        )
        return d.addBoth(resumed)

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
