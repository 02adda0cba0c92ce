"""
The client's API side, across connections: requests and their replies,
subscriptions and their updates, heartbeats, and the reconnect handshake.

It knows the API and nothing of WebSocket: the protocol feeds it messages
and it acts on the connection only through L{IClientConnection}, so tests
drive it with a fake connection and C{task.Clock}. Its states::

    OFFLINE  --opened, no subscriptions-->  READY
    OFFLINE  --opened, subscriptions-->  RESUMING  --reconnect_confirmation-->  READY
    RESUMING, READY  --connection lost-->  OFFLINE
    any  --stop-->  STOPPED  --start-->  OFFLINE

In RESUMING only the handshake goes out: C{reconnect} first (the server
takes it only before any C{subscribe}), then C{server_info}; the user's
requests wait in the outbox until READY. ``docs/client-session.dot``
draws it.

What happens to a request whose connection is lost before its reply
depends on what it is (L{OnLost}): subscribing again is harmless, so a
C{subscribe} is resent; a C{execute_transaction} carries an idempotency
key, so it is resent too; anything else fails with L{ConnectionLost},
because the client cannot know whether the server carried it out.
"""

import itertools
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any

import attrs
import orjson
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface

from ..requests import parse_message_number
from .errors import (
    ClientStopped,
    ConnectionLost,
    NotFound,
    RateLimitExceeded,
    error_from_reply,
)
from .pacing import Pacer
from .subscription import Gap, Subscription, Update
from .watchdog import DEFAULT_TIMEOUT, SilenceWatchdog

MAX_RATE_RETRIES = 3
"""
How often a request refused with C{rate_limit_exceeded} is sent again
(after C{retry_after}; a refused request was not carried out, so this is
always safe) before its Deferred fails.
"""

NORMAL_CLOSE = 1000


class IClientConnection(Interface):
    """
    What the session may do to its connection.
    """

    def send_message(payload: bytes) -> None:
        """
        Send one encoded JSON message as a text frame.
        """

    def abort(reason: str) -> None:
        """
        Drop the connection at once, without a closing handshake (it is
        believed dead).
        """

    def close(code: int, reason: str) -> None:
        """
        Start the closing handshake.
        """


class State(Enum):
    OFFLINE = "offline"
    RESUMING = "resuming"
    READY = "ready"
    STOPPED = "stopped"


class OnLost(Enum):
    """
    What to do with a sent request whose connection is lost before its reply.
    """

    FAIL = "fail"
    """Fail with L{ConnectionLost}: whether it was carried out is unknown."""
    RESEND = "resend"
    """Send it again on the next connection: it is idempotent."""
    SUCCEED = "succeed"
    """Fire with C{None}: losing the connection did what it asked (unsubscribe)."""


@attrs.define(eq=False)
class Request:
    """
    One request, from its creation to its reply.

    @ivar internal: part of the connection handshake; sent before READY.
    """

    request_id: int
    kind: str
    data: dict[str, Any] | None
    on_lost: OnLost
    internal: bool = False
    rate_retries: int = 0
    deferred: Deferred = attrs.Factory(Deferred)

    def encode(self) -> bytes:
        message: dict[str, Any] = {"id": self.request_id, "type": self.kind}
        if self.data is not None:
            message["data"] = self.data
        return orjson.dumps(message)


class ClientSession:
    """
    The API side of one client, across its connections.

    @ivar highest: the largest C{n} of any C{msg_<n>} received; sent back as
        C{last_message_id} on reconnect. Updates are dropped as duplicates
        unless their number is above it: a connection receives ids in
        increasing order, and a replay starts after C{last_message_id}.
    @ivar duplicates: how many updates were dropped as duplicates.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        on_ready: Callable[[], object] | None = None,
        on_reconnect: Callable[[dict[str, Any]], object] | None = None,
        on_gap: Callable[[Subscription, Gap], object] | None = None,
        heartbeat_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        """
        @param clock: an C{IReactorTime}.
        @param on_ready: called each time a connection becomes ready (the
            reconnect handshake done): the backoff starts over.
        @param on_reconnect: called with the C{data} of each
            C{reconnect_confirmation}.
        @param on_gap: for subscriptions made without their own C{on_gap}.
        @param heartbeat_timeout: seconds of silence after which a
            connection counts as dead, until C{server_info} says otherwise.
        """
        self.state = State.OFFLINE
        self.highest: int | None = None
        self.duplicates = 0
        self._clock = clock
        self._on_ready = on_ready
        self._on_reconnect = on_reconnect
        self._default_on_gap = on_gap
        self._connection: Any = None
        self._ids = itertools.count(1)
        self._sent: dict[int, Request] = {}
        self._handshake: deque[Request] = deque()
        self._outbox: deque[Request] = deque()
        self._subscriptions: list[Subscription] = []
        self._ready_waiters: list[Deferred] = []
        self._watchdog = SilenceWatchdog(clock, self._silent, heartbeat_timeout)
        self._pacer = Pacer(clock)
        self._flush_call: Any = None

    # The user's side

    @property
    def subscriptions(self) -> list[Subscription]:
        """
        The active subscriptions.
        """
        return list(self._subscriptions)

    def request(
        self, kind: str, data: dict[str, Any] | None = None, on_lost: OnLost = OnLost.FAIL
    ) -> "Deferred[dict[str, Any]]":
        """
        Send a request as soon as a connection is ready.

        @return: a Deferred firing with the whole reply message, or failing
            with a L{RustoriumError} (an C{error} reply), L{ConnectionLost}
            or L{ClientStopped}.
        """
        if self.state is State.STOPPED:
            return fail(ClientStopped(f"the client is stopped; {kind} was not sent"))
        request = self._new(kind, data, on_lost)
        self._outbox.append(request)
        self._flush()
        return request.deferred

    def subscribe(
        self,
        channel: str,
        params: dict[str, Any],
        on_update: Callable[[Update], object],
        on_gap: Callable[[Subscription, Gap], object] | None = None,
    ) -> "Deferred[Subscription]":
        """
        Subscribe; fires with the L{Subscription} once confirmed.
        """
        subscription = Subscription(channel, dict(params), on_update, on_gap)

        def confirmed(reply: dict[str, Any]) -> Subscription:
            # Runs before the next message is read, so the current state
            # that follows the confirmation finds the subscription.
            subscription.confirmed(reply["data"])
            self._subscriptions.append(subscription)
            return subscription

        def refused(failure: Failure) -> Failure:
            subscription.active = False
            return failure

        d = self.request("subscribe", subscription.request(), OnLost.RESEND)
        return d.addCallbacks(confirmed, refused)

    def unsubscribe(self, subscription: Subscription) -> "Deferred[dict[str, Any]]":
        """
        End a subscription; its callback gets nothing more from now on.
        Fires with the C{data} of the server's confirmation (or an
        equivalent when no request was needed: when offline, the server
        forgets a subscription the next C{reconnect} does not name).
        """
        done = {"status": "unsubscribed", "channel": subscription.channel,
                "subscription_id": subscription.id}
        if not subscription.active:
            return succeed(done)
        subscription.active = False
        self._subscriptions.remove(subscription)
        shared = any(s.id == subscription.id for s in self._subscriptions)
        if subscription.id is None or shared or self.state is State.OFFLINE:
            return succeed(done)
        d = self.request("unsubscribe", {"subscription_id": subscription.id}, OnLost.SUCCEED)

        def replied(reply: dict[str, Any] | None) -> dict[str, Any]:
            return done if reply is None else reply["data"]

        def gone(failure: Failure) -> dict[str, Any]:
            failure.trap(NotFound)
            return done

        return d.addCallbacks(replied, gone)

    def when_ready(self) -> Deferred:
        """
        A Deferred firing once a connection is ready (at once if one is);
        failing if the client stops first.
        """
        if self.state is State.READY:
            return succeed(None)
        if self.state is State.STOPPED:
            return fail(ClientStopped("the client is stopped"))
        d: Deferred = Deferred()
        self._ready_waiters.append(d)
        return d

    def start(self) -> None:
        if self.state is State.STOPPED:
            self.state = State.OFFLINE

    def stop(self, reason: Exception | None = None) -> None:
        """
        Stop: fail every request not yet answered with C{reason} (by default
        L{ClientStopped}) and end every subscription. The caller closes the
        connection.
        """
        self.state = State.STOPPED
        self._watchdog.stop()
        self._cancel_flush()
        for subscription in self._subscriptions:
            subscription.active = False
        self._subscriptions.clear()
        requests = sorted(
            [*self._sent.values(), *self._handshake, *self._outbox], key=lambda r: r.request_id
        )
        self._sent.clear()
        self._handshake.clear()
        self._outbox.clear()
        waiters, self._ready_waiters = self._ready_waiters, []
        error = reason if reason is not None else ClientStopped("the client was stopped")
        for request in requests:
            if request.on_lost is OnLost.SUCCEED:
                request.deferred.callback(None)
            else:
                request.deferred.errback(Failure(error))
        for d in waiters:
            d.errback(Failure(error))

    # The connection's side

    def connection_opened(self, connection: Any) -> None:
        """
        A WebSocket connection has opened: resume the subscriptions, if
        any, and learn the server's settings.
        """
        if self.state is State.STOPPED:
            connection.close(NORMAL_CLOSE, "client stopped")
            return
        self._connection = connection
        self._pacer.reset()
        self._watchdog.start()
        ids = list(dict.fromkeys(s.id for s in self._subscriptions if s.id is not None))
        if ids:
            self.state = State.RESUMING
            data: dict[str, Any] = {"subscriptions": ids}
            if self.highest is not None:
                # Left out when nothing was received: the server then
                # replays everything since each subscription was made.
                data["last_message_id"] = f"msg_{self.highest}"
            resume = self._internal("reconnect", data)
            resume.addCallbacks(self._resumed, self._resume_refused,
                                callbackArgs=(ids,), errbackArgs=(ids,))
        info = self._internal("server_info", None)
        info.addCallbacks(self._learn, self._server_info_failed)
        if not ids:
            self._become_ready()
        self._flush()

    def message_received(self, payload: bytes) -> None:
        """
        Handle one text message from the server.
        """
        if self.state is State.STOPPED:
            return
        self._watchdog.touch()
        try:
            message = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.log.warn("Ignoring a message that is not JSON: {payload!r}", payload=payload[:200])
            return
        if not isinstance(message, dict):
            self.log.warn("Ignoring a message that is not an object: {payload!r}",
                          payload=payload[:200])
            return
        kind = message.get("type")
        if kind == "update":
            self._update(message)
        elif kind == "heartbeat":
            self._heartbeat(message)
        else:
            self._reply(message)

    def connection_lost(self) -> None:
        """
        The connection is gone: resend what is safe to resend on the next
        one, fail the rest of what was sent.
        """
        if self._connection is None:
            return
        self._connection = None
        self._watchdog.stop()
        self._cancel_flush()
        if self.state is not State.STOPPED:
            self.state = State.OFFLINE
        sent = sorted(self._sent.values(), key=lambda r: r.request_id)
        unsent_handshake = list(self._handshake)
        self._sent.clear()
        self._handshake.clear()
        resend = sorted(
            (r for r in [*sent, *unsent_handshake] if r.on_lost is OnLost.RESEND),
            key=lambda r: r.request_id,
        )
        for request in resend:
            request.internal = False
        self._outbox.extendleft(reversed(resend))
        for request in [*sent, *unsent_handshake]:
            if request.on_lost is OnLost.SUCCEED:
                request.deferred.callback(None)
            elif request.on_lost is OnLost.FAIL:
                request.deferred.errback(Failure(ConnectionLost(
                    f"the connection was lost before the reply to {request.kind}"
                )))

    # Requests

    def _new(self, kind: str, data: dict[str, Any] | None, on_lost: OnLost) -> Request:
        return Request(next(self._ids), kind, data, on_lost)

    def _internal(
        self, kind: str, data: dict[str, Any] | None, on_lost: OnLost = OnLost.FAIL
    ) -> Deferred:
        request = self._new(kind, data, on_lost)
        request.internal = True
        self._handshake.append(request)
        return request.deferred

    def _flush(self) -> None:
        """
        Send queued requests as fast as the pacer allows: the handshake's
        first, the outbox's once ready.
        """
        if self._flush_call is not None or self._connection is None:
            return
        while True:
            if self._handshake:
                queue = self._handshake
            elif self._outbox and self.state is State.READY:
                queue = self._outbox
            else:
                return
            wait = self._pacer.take()
            if wait > 0:
                self._flush_call = self._clock.callLater(wait, self._paced)
                return
            request = queue.popleft()
            self._sent[request.request_id] = request
            self._connection.send_message(request.encode())

    def _paced(self) -> None:
        self._flush_call = None
        self._flush()

    def _cancel_flush(self) -> None:
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush_call = None

    def _reply(self, message: dict[str, Any]) -> None:
        request_id = message.get("id")
        request = self._sent.pop(request_id, None) if type(request_id) is int else None
        if request is None:
            self.log.warn("Ignoring a {kind} message that answers no request of ours: {message}",
                          kind=message.get("type"), message=message)
            return
        if message.get("type") != "error":
            request.deferred.callback(message)
            return
        error = error_from_reply(message)
        if isinstance(error, RateLimitExceeded) and request.rate_retries < MAX_RATE_RETRIES:
            request.rate_retries += 1
            self._pacer.hold(error.retry_after)
            (self._handshake if request.internal else self._outbox).appendleft(request)
            self._cancel_flush()
            self._flush()
            return
        request.deferred.errback(Failure(error))

    # Updates and heartbeats

    def _update(self, message: dict[str, Any]) -> None:
        number = parse_message_number(message.get("id"))
        if number is not None:
            if self.highest is not None and number <= self.highest:
                self.duplicates += 1
                return
            self.highest = number
        data = message.get("data")
        if not isinstance(data, dict):
            return
        for subscription in tuple(self._subscriptions):
            if subscription.active and subscription.matches(data):
                try:
                    subscription.on_update(message)
                except Exception:
                    self.log.failure("on_update of {subscription!r} failed",
                                     subscription=subscription)

    def _heartbeat(self, message: dict[str, Any]) -> None:
        data = message.get("data")
        timestamp = data.get("timestamp") if isinstance(data, dict) else None
        if self._connection is not None:
            # Unpaced: the server never counts heartbeat responses.
            self._connection.send_message(orjson.dumps(
                {"type": "heartbeat_response", "data": {"timestamp": timestamp}}
            ))

    def _silent(self) -> None:
        timeout = self._watchdog.timeout
        self.log.info("Nothing received for {timeout} s; dropping the connection as dead",
                      timeout=timeout)
        if self._connection is not None:
            self._connection.abort(f"nothing received for {timeout:g} s")

    # The handshake

    def _become_ready(self) -> None:
        self.state = State.READY
        if self._on_ready is not None:
            self._on_ready()
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.callback(None)
        self._flush()

    def _learn(self, reply: dict[str, Any]) -> None:
        data = reply.get("data") or {}
        timeout = data.get("heartbeat_timeout")
        if not isinstance(timeout, int | float) and isinstance(
            data.get("heartbeat_interval"), int | float
        ):
            timeout = 3 * data["heartbeat_interval"]
        if isinstance(timeout, int | float) and timeout > 0:
            self._watchdog.set_timeout(float(timeout))
        limits = data.get("limits") or {}
        rate, burst = limits.get("rate_limit"), limits.get("rate_burst")
        if isinstance(rate, int | float) and isinstance(burst, int):
            self._pacer.configure(float(rate), burst)

    def _server_info_failed(self, failure: Failure) -> None:
        if not failure.check(ConnectionLost, ClientStopped):
            self.log.warn("server_info failed ({error}); keeping the default settings",
                          error=failure.value)

    def _resumed(self, reply: dict[str, Any], ids: list[str]) -> None:
        data = reply.get("data") or {}
        overall = data.get("recovered") is True
        entries = {
            e.get("subscription_id"): e for e in data.get("subscriptions") or ()
            if isinstance(e, dict)
        }
        self.log.info(
            "Reconnected: recovered {recovered}, {replayed} updates replayed",
            recovered=data.get("recovered"), replayed=data.get("replayed"),
        )
        if self._on_reconnect is not None:
            try:
                self._on_reconnect(data)
            except Exception:
                self.log.failure("on_reconnect failed")
        for subscription in list(self._subscriptions):
            if subscription.id not in ids:
                continue
            entry = entries.get(subscription.id)
            if entry is not None and entry.get("status") == "resumed":
                if entry.get("recovered", overall) is not True:
                    lost = entry.get("lost") if isinstance(entry.get("lost"), dict) else {}
                    self._gap(subscription, Gap("incomplete", subscription.id,
                                                lost.get("from"), lost.get("to")))
            else:
                self._resubscribe(subscription)
        self._become_ready()

    def _resume_refused(self, failure: Failure, ids: list[str]) -> None:
        if failure.check(ConnectionLost, ClientStopped):
            return
        self.log.warn("The server refused to resume ({error}); subscribing again",
                      error=failure.value)
        for subscription in list(self._subscriptions):
            if subscription.id in ids:
                self._resubscribe(subscription)
        self._become_ready()

    def _resubscribe(self, subscription: Subscription) -> None:
        previous = subscription.id
        subscription.id = None
        d = self._internal("subscribe", subscription.request(), OnLost.RESEND)
        d.addCallbacks(self._resubscribed, self._resubscribe_failed,
                       callbackArgs=(subscription, previous),
                       errbackArgs=(subscription, previous))

    def _resubscribed(self, reply: dict[str, Any], subscription: Subscription,
                      previous: str | None) -> None:
        subscription.confirmed(reply["data"])
        if not subscription.active:
            # Unsubscribed while subscribing again: end it on the server too.
            if not any(s.id == subscription.id for s in self._subscriptions):
                self.request("unsubscribe", {"subscription_id": subscription.id},
                             OnLost.SUCCEED).addErrback(lambda _: None)
            return
        self.log.info("Subscription {previous} had expired; subscribed again as {new}",
                      previous=previous, new=subscription.id)
        self._gap(subscription, Gap("expired", previous))

    def _resubscribe_failed(self, failure: Failure, subscription: Subscription,
                            previous: str | None) -> None:
        if failure.check(ClientStopped, ConnectionLost):
            return
        self.log.warn("Subscribing again to {subscription!r} failed: {error}",
                      subscription=subscription, error=failure.value)
        if subscription.active:
            subscription.active = False
            self._subscriptions.remove(subscription)
            self._gap(subscription, Gap("failed", previous, error=failure.value))

    def _gap(self, subscription: Subscription, gap: Gap) -> None:
        on_gap = subscription.on_gap or self._default_on_gap
        if on_gap is None:
            self.log.warn("{subscription!r} may have missed updates ({reason}); "
                          "pass on_gap to resynchronise", subscription=subscription,
                          reason=gap.reason)
            return
        try:
            on_gap(subscription, gap)
        except Exception:
            self.log.failure("on_gap of {subscription!r} failed", subscription=subscription)
