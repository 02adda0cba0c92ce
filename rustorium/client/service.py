"""
L{RustoriumClient}: the client as a Twisted service.

It keeps one connection to the server up with Twisted's L{ClientService},
whose retry policy is the specification's backoff (L{backoff}), and leaves
everything about the API to its L{ClientSession}. It is an C{IService}, so
it can be attached to an application's C{MultiService}, or started and
stopped by hand.
"""

import random as _random
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from autobahn.websocket.util import parse_url
from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.ssl import optionsForClientTLS
from twisted.logger import Logger
from twisted.python.failure import Failure

from .backoff import backoff
from .errors import ConnectionRejected, HandshakeRefused, TLSHandshakeFailed
from .protocol import RustoriumClientFactory
from .session import ClientSession, OnLost
from .subscription import Gap, Subscription, Update
from .watchdog import DEFAULT_TIMEOUT

DEFAULT_URL = "ws://127.0.0.1:8765/v1"
CONNECT_TIMEOUT = 10.0
"""Seconds for a TCP connection attempt."""
NORMAL_CLOSE = 1000

FINAL_STATUSES = frozenset({400, 401, 403, 404})
"""Handshake refusals that retrying cannot cure: the client stops."""
FINAL_CLOSE_CODES = range(4000, 4100)
"""The server's "do not reconnect as is" close codes: the client stops."""
AT_ONCE_CLOSE_CODES = range(4200, 4300)
"""The server's "reconnect at once" close codes (it is shutting down)."""


def client_endpoint(reactor: Any, url: str, timeout: float = CONNECT_TIMEOUT) -> Any:
    """
    The endpoint for a C{ws://} or C{wss://} URL (TLS verified against the
    host name).
    """
    secure, host, port, _resource, _path, _params = parse_url(url)
    endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
    if secure:
        endpoint = wrapClientTLS(optionsForClientTLS(host), endpoint)
    return endpoint


class RustoriumClient(Service):
    """
    A client of the Rustorium WebSocket API that stays connected.

    Requests made while no connection is ready wait for one. When the
    connection is lost the client reconnects with backoff (L{backoff}),
    sends C{reconnect} first to resume its subscriptions, delivers the
    replayed updates without duplicates, subscribes again where the server
    had let a subscription expire, and tells C{on_gap} wherever continuity
    was lost.

    Every command returns a Deferred that fires with the reply's C{data},
    or fails with a L{RustoriumError} subclass for an C{error} reply,
    L{ConnectionLost} when the connection was lost before the reply, or
    L{ClientStopped}, L{HandshakeRefused}, L{ConnectionRejected} or
    L{TLSHandshakeFailed} when the client stopped.
    """

    _log = Logger()

    def __init__(
        self,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        *,
        reactor: Any = None,
        clock: Any = None,
        endpoint: Any = None,
        on_gap: Callable[[Subscription, Gap], object] | None = None,
        on_reconnect: Callable[[dict[str, Any]], object] | None = None,
        random: Callable[[], float] = _random.random,
        heartbeat_timeout: float = DEFAULT_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        """
        @param url: the API's URL, such as C{wss://ws.rustorium.com/v1}.
        @param api_key: sent as C{Authorization: Bearer}, so that it stays
            out of URLs and logs (C{?api_key=} in C{url} works as well).
        @param reactor: for connecting (the global reactor by default).
        @param clock: an C{IReactorTime} for every timer (the reactor by
            default).
        @param endpoint: an C{IStreamClientEndpoint} to connect with
            instead of the one C{url} names (tests, proxies).
        @param on_gap: C{on_gap(subscription, gap)} for subscriptions made
            without their own.
        @param on_reconnect: called with the C{data} of every
            C{reconnect_confirmation}.
        @param random: the jitter's source of floats in [0, 1).
        @param heartbeat_timeout: seconds without any message after which
            the connection is taken as dead, until the server's
            C{server_info} says.
        """
        if reactor is None:
            from twisted.internet import reactor
        self.url = url
        self._clock = clock if clock is not None else reactor
        self._random = random
        if endpoint is None:
            endpoint = client_endpoint(reactor, url, connect_timeout)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._factory = RustoriumClientFactory(self, url, headers, reactor)
        self._session = ClientSession(
            self._clock, on_ready=self._ready, on_reconnect=on_reconnect, on_gap=on_gap,
            heartbeat_timeout=heartbeat_timeout,
        )
        self._connector = ClientService(
            endpoint, self._factory, retryPolicy=self._retry_delay, clock=self._clock
        )
        self._attempt = 0
        self._at_once = False
        self._protocol: Any = None
        self._closing: list[Deferred] = []
        self._stop_waiters: list[Deferred] = []
        self._gave_up: Exception | None = None
        self._was_stopped = False
        self._was_ready = False

    # IService

    def startService(self) -> None:
        super().startService()
        self._gave_up = None
        self._was_stopped = False
        self._was_ready = False
        self._attempt = 0
        self._session.start()
        self._connector.startService()

    def stopService(self) -> Deferred:
        """
        Close the connection (a normal closing handshake) and stop
        reconnecting. Requests not yet answered fail with L{ClientStopped}
        and every subscription ends.
        """
        super().stopService()
        self._was_stopped = True
        self._session.stop()
        protocol = self._protocol
        if self._gave_up is not None:
            # The connection is gone and the connector was stopped when the
            # client gave up; this may run inside that very stop (from a
            # when_stopped callback), which must not be reentered.
            return succeed(None)
        if protocol is not None:
            closed: Deferred = Deferred()
            self._closing.append(closed)
            protocol.close(NORMAL_CLOSE, "client stopped")
            d = closed.addCallback(lambda _: self._connector.stopService())
        else:
            d = self._connector.stopService()
        return d.addCallback(lambda _: self._stopped(None))

    # Waiting for the client

    def when_ready(self, fail_after_failures: int | None = None) -> Deferred:
        """
        A Deferred firing when a connection is ready for requests (at once
        if one is).

        @param fail_after_failures: fail after this many connection attempts
            in a row have failed (the default waits for ever), as
            L{ClientService.whenConnected}.
        """
        ready = self._session.when_ready()
        if fail_after_failures is None or ready.called:
            return ready
        result: Deferred = Deferred()

        def settle(outcome: object) -> None:
            if result.called:
                return
            if isinstance(outcome, Failure):
                result.errback(outcome)
            else:
                result.callback(outcome)

        ready.addBoth(settle)
        def failed(failure: Failure) -> None:
            # ClientService fails this from inside its state machine, which
            # must not be reentered (by a stopService, say): settle later.
            self._clock.callLater(0, settle, failure)

        connected = self._connector.whenConnected(failAfterFailures=fail_after_failures)
        connected.addCallbacks(lambda _: None, failed)
        return result

    def when_stopped(self) -> Deferred:
        """
        A Deferred firing with C{None} when the client is stopped, or
        failing with L{HandshakeRefused}, L{ConnectionRejected} or
        L{TLSHandshakeFailed} when it gives up because the server will not
        have it (at once if it has stopped or given up already).
        """
        if self._gave_up is not None:
            return fail(self._gave_up)
        if self._was_stopped:
            return succeed(None)
        d: Deferred = Deferred()
        self._stop_waiters.append(d)
        return d

    # Subscriptions

    @property
    def subscriptions(self) -> list[Subscription]:
        """
        The active subscriptions.
        """
        return self._session.subscriptions

    def subscribe(
        self,
        channel: str,
        *,
        on_update: Callable[[Update], object],
        on_gap: Callable[[Subscription, Gap], object] | None = None,
        **params: Any,
    ) -> "Deferred[Subscription]":
        """
        Subscribe to a channel, for example C{subscribe("market_data",
        symbols=["MTK/USD"], on_update=print)}.

        @param on_update: called with every update message
            (C{{"id": "msg_<n>", "type": "update", "data": {...}}}),
            in order and once each, across reconnects.
        @param on_gap: called with the subscription and a L{Gap} when
            updates may have been missed across a reconnect.
        @return: a Deferred firing with the L{Subscription} once the server
            confirms it.
        """
        return self._session.subscribe(channel, params, on_update, on_gap)

    def unsubscribe(self, subscription: Subscription) -> "Deferred[dict[str, Any]]":
        """
        End a subscription.
        """
        return self._session.unsubscribe(subscription)

    # Commands

    def request(self, kind: str, data: dict[str, Any] | None = None) -> "Deferred[dict]":
        """
        Send any request; fires with the whole reply message. Fails with
        L{ConnectionLost} if the connection is lost before the reply.
        """
        return self._session.request(kind, data)

    def _command(self, kind: str, data: dict[str, Any] | None = None,
                 on_lost: OnLost = OnLost.FAIL) -> "Deferred[dict[str, Any]]":
        return self._session.request(kind, data, on_lost).addCallback(_data)

    def execute_transaction(
        self,
        from_: str,
        to: str,
        amount: str | int | Decimal,
        token_id: str,
        idempotency_key: str | None = None,
    ) -> "Deferred[dict[str, Any]]":
        """
        Send C{amount} (whole tokens, exact: a string, int or Decimal, never
        a float) of C{token_id} from C{from_} to C{to}. Fires with
        C{{"transaction_id": ..., "status": "pending"}}.

        The request always carries an idempotency key (a random one unless
        given), so the client resends it after a lost connection and the
        server carries it out once.
        """
        if isinstance(amount, float):
            raise TypeError("amount must be a str, int or Decimal: floats cannot hold money")
        key = idempotency_key if idempotency_key is not None else f"rc-{uuid.uuid4().hex}"
        data = {"from": from_, "to": to, "amount": str(amount), "token_id": token_id,
                "idempotency_key": key}
        return self._command("execute_transaction", data, OnLost.RESEND)

    def get_token_info(self, token_id: str) -> "Deferred[dict[str, Any]]":
        return self._command("get_token_info", {"token_id": token_id})

    def get_balance(self, address: str, token_id: str) -> "Deferred[dict[str, Any]]":
        return self._command("get_balance", {"address": address, "token_id": token_id})

    def get_transaction(self, transaction_id: str) -> "Deferred[dict[str, Any]]":
        return self._command("get_transaction", {"transaction_id": transaction_id})

    def list_subscriptions(self) -> "Deferred[dict[str, Any]]":
        """
        The server's view of this connection's subscriptions.
        """
        return self._command("list_subscriptions")

    def ping(self) -> "Deferred[dict[str, Any]]":
        return self._command("ping")

    def server_info(self) -> "Deferred[dict[str, Any]]":
        return self._command("server_info")

    # Reported by the protocol

    def connection_opened(self, protocol: Any) -> None:
        self._protocol = protocol
        self._session.connection_opened(protocol)

    def message_received(self, payload: bytes) -> None:
        self._session.message_received(payload)

    def connection_closed(self, protocol: Any, code: int | None, reason: str | None,
                          refusal: tuple[int, str] | None,
                          tls_failure: str | None = None) -> None:
        """
        A connection ended (or its handshake failed): decide whether and
        how soon to reconnect.

        @param refusal: the HTTP status and reason of a refused opening
            handshake.
        @param tls_failure: why the TLS handshake failed, if it did.
        """
        if protocol is self._protocol:
            self._protocol = None
        self._session.connection_lost()
        closing, self._closing = self._closing, []
        for d in closing:
            d.callback(None)
        if not self.running or self._gave_up is not None:
            return
        if refusal is not None:
            status, phrase = refusal
            if status in FINAL_STATUSES:
                self._give_up(HandshakeRefused(status, phrase))
                return
            self._log.info("The server refused the handshake: HTTP {status} {phrase}",
                           status=status, phrase=phrase)
        elif tls_failure is not None:
            if not self._was_ready:
                # Nothing ever worked: a certificate, CA or URL to fix.
                self._give_up(TLSHandshakeFailed(tls_failure))
                return
            self._log.warn("TLS handshake with {url} failed: {failure}",
                           url=self.url, failure=tls_failure)
        elif code in FINAL_CLOSE_CODES:
            self._give_up(ConnectionRejected(code, reason or ""))
            return
        elif code in AT_ONCE_CLOSE_CODES:
            self._at_once = True
        self._log.info("Connection to {url} ended (code {code}: {reason})",
                       url=self.url, code=code, reason=reason)

    # Reconnecting

    def _retry_delay(self, failed_attempts: int) -> float:
        """
        The retry policy given to L{ClientService}. It keeps its own count:
        ClientService counts a connection as a success once TCP connects,
        but a connection only counts here once the reconnect handshake is
        done (L{_ready}), so a server that refuses handshakes is retried
        with growing waits too.
        """
        if self._at_once:
            self._at_once = False
            return 0.0
        self._attempt += 1
        return backoff(self._attempt, self._random)

    def _ready(self) -> None:
        self._attempt = 0
        self._was_ready = True

    def _give_up(self, error: Exception) -> None:
        self._gave_up = error
        self._log.error("Rustorium client stopped: {error}", error=error)
        self._session.stop(error)
        self._connector.stopService().addCallback(lambda _: self._stopped(error))

    def _stopped(self, error: Exception | None) -> None:
        waiters, self._stop_waiters = self._stop_waiters, []
        for d in waiters:
            if error is None:
                d.callback(None)
            else:
                d.errback(Failure(error))


def _data(reply: dict[str, Any]) -> dict[str, Any]:
    return reply.get("data") or {}
