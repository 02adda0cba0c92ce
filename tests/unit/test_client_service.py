"""
The whole client (RustoriumClient: ClientService, Autobahn's client
protocol, the session) against the whole server (Autobahn's server
protocol, the session, the hub), in memory over iosim with a fake clock:
authentication, commands, updates, heartbeats, close codes and the backoff
between reconnection attempts.
"""

from itertools import pairwise

import pytest
from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, DNSMismatch

from rustorium.client import (
    ClientStopped,
    ConnectionRejected,
    HandshakeRefused,
    InvalidParams,
    RustoriumClient,
    TLSHandshakeFailed,
)
from rustorium.client.protocol import tls_failure
from rustorium.closecodes import CloseCode
from tests.client_helpers import (
    API_KEY,
    URL,
    MemoryNetwork,
    failure_of,
    result_of,
)
from tests.helpers import ALICE, BOB, MTK


def make_client(network: MemoryNetwork, key: str = API_KEY, **kwargs) -> RustoriumClient:
    """
    A client on the in-memory network whose jitter is always zero, so its
    waits are the lower bounds of the schedule: 1, 2, 4, 8, 15, 15 s.
    """
    kwargs.setdefault("random", lambda: 0.0)
    return RustoriumClient(URL, key, reactor=network.clock, clock=network.clock,
                           endpoint=network, **kwargs)


def started(network: MemoryNetwork, **kwargs) -> RustoriumClient:
    client = make_client(network, **kwargs)
    client.startService()
    network.flush()
    assert result_of(client.when_ready()) is None
    return client


def waits(network: MemoryNetwork) -> list[float]:
    """
    The time between successive connection attempts.
    """
    times = network.attempts
    return [round(b - a, 3) for a, b in pairwise(times)]


def drop(client: RustoriumClient, network: MemoryNetwork) -> None:
    """
    Cut the client's TCP connection without a closing handshake.
    """
    client._protocol.transport.abortConnection()
    network.flush()


def test_commands_and_updates(clock):
    """
    Commands fire with the reply's data, error replies fail with their
    typed exception, and a subscription's updates reach its callback.
    """
    network = MemoryNetwork(clock)
    client = started(network)
    d = client.ping()
    network.flush()
    assert result_of(d)["timestamp"].endswith("Z")
    d = client.get_token_info(MTK.token_id)
    network.flush()
    assert result_of(d)["symbol"] == "MTK"
    network.validate = False  # a malformed id on purpose
    d = client.get_token_info("0x1")
    network.flush()
    network.validate = True
    assert "token_id" in failure_of(d, InvalidParams).message
    updates: list[dict] = []
    d = client.subscribe("market_data", symbols=["mtk/usd"], on_update=updates.append)
    network.flush()
    subscription = result_of(d)
    assert subscription.id.startswith("sub_")
    assert subscription.params == {"symbols": ["MTK/USD"]}
    network.publish_price(price="2.5")
    network.publish_price("STK/USD", price="40")
    network.flush()
    assert [u["data"]["price"] for u in updates] == ["2.5"]
    d = client.list_subscriptions()
    network.flush()
    assert [s["subscription_id"] for s in result_of(d)["subscriptions"]] == [subscription.id]
    d = client.unsubscribe(subscription)
    network.flush()
    assert result_of(d)["status"] == "unsubscribed"
    assert network.sessions()[0].feed.subscriptions == {}


def test_key_sent_as_bearer_header(clock, monkeypatch):
    """
    The key goes in an Authorization header, not in the URL.
    """
    # Keep the handshake on the server's protocol, to look at it.
    monkeypatch.setattr("rustorium.websocket.shed_handshake", lambda connection: None)
    network = MemoryNetwork(clock)
    started(network)
    (server,) = network.server_protocols
    assert server.http_headers["authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in server.http_request_uri


def test_execute_transaction_has_an_idempotency_key(clock):
    """
    execute_transaction always sends an idempotency key; sending the same
    key again returns the same transaction.
    """
    network = MemoryNetwork(clock)
    client = started(network)
    d = client.execute_transaction(ALICE, BOB, "5", MTK.token_id, idempotency_key="order-1")
    network.flush()
    first = result_of(d)
    assert first["status"] == "pending"
    d = client.execute_transaction(ALICE, BOB, 5, MTK.token_id, idempotency_key="order-1")
    network.flush()
    assert result_of(d)["transaction_id"] == first["transaction_id"]
    client.execute_transaction(ALICE, BOB, "1", MTK.token_id)
    network.flush()
    sent = network.received[0][-1]
    assert sent["type"] == "execute_transaction"
    assert sent["data"]["idempotency_key"].startswith("rc-")
    with pytest.raises(TypeError):
        client.execute_transaction(ALICE, BOB, 1.5, MTK.token_id)


def test_requests_before_start_wait(clock):
    """
    A request made before the client has a connection is sent once it has.
    """
    network = MemoryNetwork(clock)
    client = make_client(network)
    d = client.server_info()
    client.startService()
    network.flush()
    assert result_of(d)["heartbeat_timeout"] == 90.0


def test_refused_key_stops_the_client(clock, logged_errors):
    """
    A 401 cannot be cured by retrying: the client stops, and its pending
    requests and when_stopped fail with HandshakeRefused.
    """
    network = MemoryNetwork(clock)
    client = make_client(network, key="rk_wrong")
    stopped = client.when_stopped()
    pending = client.ping()
    client.startService()
    network.flush()
    error = failure_of(stopped, HandshakeRefused)
    assert error.status == 401
    assert "unknown or revoked" in error.reason
    failure_of(pending, HandshakeRefused)
    network.advance(60)
    assert len(network.attempts) == 1
    assert len(logged_errors) == 1
    logged_errors.clear()


def test_starting_server_retried(clock):
    """
    A 503 (the server is starting) is retried with growing waits: a
    connection counts as a success only once its handshake is done, though
    ClientService counts one as soon as TCP connects.
    """
    network = MemoryNetwork(clock)
    network.server.ready = False
    client = make_client(network)
    client.startService()
    network.advance(8)
    assert waits(network) == [1, 2, 4]
    network.server.ready = True
    network.advance(8)
    assert result_of(client.when_ready()) is None
    assert waits(network) == [1, 2, 4, 8]


def test_backoff_while_nothing_listens(clock):
    """
    Connection attempts to a port where nothing listens follow the
    schedule, and the schedule starts over after a good connection.
    """
    network = MemoryNetwork(clock)
    network.refuse = True
    client = make_client(network)
    client.startService()
    network.advance(60, step=0.25)
    assert waits(network)[:6] == [1, 2, 4, 8, 15, 15]
    network.refuse = False
    network.advance(15)
    result_of(client.when_ready())
    attempts = len(network.attempts)
    drop(client, network)
    network.advance(0.99, step=0.33)
    assert len(network.attempts) == attempts
    network.advance(0.02)
    assert len(network.attempts) == attempts + 1
    assert waits(network)[-1] == pytest.approx(1.0, abs=0.02)


def test_reconnect_resumes_or_renews(clock):
    """
    After a dropped connection the client reconnects after 1 s, sends
    reconnect first with the last message id and its subscription, and
    its callback goes on receiving updates in order, those missed while
    offline replayed.
    """
    network = MemoryNetwork(clock)
    gaps: list = []
    confirmations: list[dict] = []
    client = started(network, on_reconnect=confirmations.append)
    updates: list[dict] = []
    d = client.subscribe("market_data", symbols=["MTK/USD"], on_update=updates.append,
                         on_gap=lambda s, g: gaps.append(g))
    network.flush()
    subscription = result_of(d)
    old_id = subscription.id
    first = network.publish_price(price="1")
    network.flush()
    drop(client, network)
    network.publish_price(price="2")
    network.advance(1)
    assert len(network.attempts) == 2
    reconnect = network.received[1][0]
    assert reconnect["type"] == "reconnect"
    assert reconnect["data"] == {"last_message_id": f"msg_{first.number}",
                                 "subscriptions": [old_id]}
    network.publish_price(price="3")
    network.flush()
    assert [u["data"]["price"] for u in updates] == ["1", "2", "3"]
    numbers = [int(u["id"][4:]) for u in updates]
    assert numbers == sorted(set(numbers))
    (confirmation,) = confirmations
    assert confirmation["recovered"] is True
    assert confirmation["replayed"] == 1
    assert gaps == []
    assert subscription.id == old_id
    assert client._session.duplicates == 0


def test_heartbeats_keep_a_quiet_connection(clock):
    """
    The client answers the server's heartbeats, so neither side drops a
    connection that carries nothing else for ten minutes.
    """
    network = MemoryNetwork(clock, heartbeats=True)
    started(network)
    network.advance(600, step=1)
    assert len(network.attempts) == 1
    responses = [m for m in network.received[0] if m["type"] == "heartbeat_response"]
    assert len(responses) == 20
    assert all(r["data"]["timestamp"].endswith("Z") for r in responses)
    network.stop()


def test_silent_connection_replaced(clock):
    """
    A connection on which nothing arrives for the heartbeat timeout the
    server announced is dropped and replaced.
    """
    network = MemoryNetwork(clock, heartbeat_interval=10.0)
    client = started(network)
    assert client._session._watchdog.timeout == 30.0
    network.advance(29.5)
    assert len(network.attempts) == 1
    network.advance(1.5)
    assert len(network.attempts) == 2
    assert waits(network) == [31.0]
    assert network.server_protocols[0].state == network.server_protocols[0].STATE_CLOSED


def test_shutting_down_server_reconnected_at_once(clock):
    """
    Close code 4200 (the server is restarting) means reconnect without
    waiting.
    """
    network = MemoryNetwork(clock)
    started(network)
    for session in network.sessions():
        session.close(CloseCode.SHUTTING_DOWN, "restarting")
    network.flush()
    clock.advance(0)
    network.flush()
    assert waits(network) == [0]
    result_of(started(network).when_ready())


@pytest.mark.parametrize("code", [CloseCode.KEY_REVOKED, CloseCode.POLICY_VIOLATION])
def test_do_not_reconnect_codes_stop_the_client(clock, logged_errors, code):
    """
    Close codes 4000-4099 mean "do not reconnect as is": the client stops.
    """
    network = MemoryNetwork(clock)
    client = started(network)
    stopped = client.when_stopped()
    for session in network.sessions():
        session.close(code, "go away")
    network.advance(60)
    assert len(network.attempts) == 1
    error = failure_of(stopped, ConnectionRejected)
    assert (error.code, error.reason) == (code, "go away")
    logged_errors.clear()


def test_other_close_codes_reconnect_with_backoff(clock):
    network = MemoryNetwork(clock)
    started(network)
    for session in network.sessions():
        session.close(CloseCode.SLOW_CONSUMER, "too slow")
    network.advance(1)
    assert waits(network) == [1]


def test_stop_closes_cleanly(clock):
    """
    stopService closes with 1000, fires when the connection is gone, and
    the client does not reconnect.
    """
    network = MemoryNetwork(clock)
    client = started(network)
    stopped = client.when_stopped()
    d = client.stopService()
    network.flush()
    assert result_of(d) is None
    assert result_of(stopped) is None
    assert network.server_protocols[0].remoteCloseCode == 1000
    assert network.sessions() == []
    network.advance(60)
    assert len(network.attempts) == 1


def test_expired_subscription_renewed(clock):
    """
    Offline for longer than the server keeps subscriptions (5 minutes):
    the client subscribes again with the same parameters, the same
    Subscription object takes the new id, on_gap is told, and the current
    state follows.
    """
    network = MemoryNetwork(clock)
    client = started(network)
    gaps: list = []
    updates: list[dict] = []
    d = client.subscribe("market_data", symbols=["MTK/USD"], on_update=updates.append,
                         on_gap=lambda s, g: gaps.append((s, g)))
    network.flush()
    subscription = result_of(d)
    old_id = subscription.id
    network.publish_price(price="1")
    network.flush()
    network.refuse = True
    drop(client, network)
    network.publish_price(price="2")
    network.advance(400, step=1)
    # The broker's expiry sweep, every second, has forgotten it.
    assert network.server.app.broker.subscription_count == 0
    network.refuse = False
    network.advance(30, step=1)
    result_of(client.when_ready())
    ((gapped, gap),) = gaps
    assert gapped is subscription
    assert (gap.reason, gap.previous_id) == ("expired", old_id)
    assert subscription.id not in (None, old_id)
    assert [u["data"]["price"] for u in updates] == ["1", "2"]
    network.publish_price(price="3")
    network.flush()
    assert [u["data"]["price"] for u in updates] == ["1", "2", "3"]


def test_too_many_connections_retried(clock):
    """
    HTTP 429 (the key has as many connections as it may) is retried with
    backoff, and the client connects once a connection of the key ends.
    """
    network = MemoryNetwork(clock, max_connections_per_key=1)
    first = started(network)
    second = make_client(network)
    second.startService()
    network.advance(3.5)
    # The first client's attempt, then the second's at 0 s, 1 s and 3 s.
    assert waits(network) == [0, 1, 2]
    ready = second.when_ready()
    assert not ready.called
    first.stopService()
    network.advance(4)
    assert result_of(ready) is None


def test_stop_after_giving_up(clock, logged_errors):
    """
    stopService is safe from a callback of when_stopped after the client
    gave up: the connection is already gone, so it fires at once rather
    than stopping the reconnecting machinery a second time from inside its
    own stopping (which raised RuntimeError).
    """
    network = MemoryNetwork(clock)
    client = started(network)
    stops = []
    client.when_stopped().addErrback(lambda failure: stops.append(client.stopService()))
    for session in network.sessions():
        session.close(CloseCode.KEY_REVOKED, "API key revoked")
    network.advance(1)
    (stop,) = stops
    assert result_of(stop) is None
    assert not client.running
    logged_errors.clear()


UNTRUSTED = SSL.Error([("SSL routines", "", "certificate verify failed")])


def test_tls_failure_at_first_stops_the_client(clock, logged_errors):
    """
    A TLS handshake that fails before any connection was ever ready (an
    untrusted certificate, a wrong host name) cannot be cured by
    retrying: the client stops, and its requests and when_stopped fail
    with TLSHandshakeFailed, which says what OpenSSL said.
    """
    network = MemoryNetwork(clock)
    network.tls_error = UNTRUSTED
    client = make_client(network)
    stopped = client.when_stopped()
    ready = client.when_ready(fail_after_failures=1)
    pending = client.ping()
    client.startService()
    network.advance(60)
    assert len(network.attempts) == 1
    error = failure_of(stopped, TLSHandshakeFailed)
    assert str(error) == "TLS handshake failed: certificate verify failed"
    failure_of(ready, TLSHandshakeFailed)
    failure_of(pending, TLSHandshakeFailed)
    logged_errors.clear()


def test_tls_failure_after_ready_is_retried(clock, logged_errors):
    """
    Once a connection has been ready, a failing TLS handshake is retried
    with backoff like any failed connection (a renewed certificate cures
    it), and the client carries on when it succeeds again.
    """
    network = MemoryNetwork(clock)
    client = started(network)
    network.tls_error = UNTRUSTED
    drop(client, network)
    network.advance(8, step=0.25)
    assert waits(network) == [1, 2, 4]
    network.tls_error = None
    network.advance(8, step=0.25)
    pong = client.ping()
    network.flush()
    assert result_of(pong)["timestamp"]
    # Autobahn logs each failed TLS handshake as an error.
    assert all("certificate verify failed" in e["log_format"] for e in logged_errors)
    logged_errors.clear()


def test_tls_failure_descriptions():
    """
    tls_failure puts a failed TLS handshake in one line, and tells nothing
    else apart from a connection that just ended.
    """
    mismatch = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("example.com"))])
    assert tls_failure(mismatch, None, "example.com") == (
        "certificate verify failed: the certificate is not for example.com")
    assert tls_failure(UNTRUSTED, None, "h") == "certificate verify failed"
    assert tls_failure(SSL.Error([("SSL routines", "", "wrong version number")]), None, "h") == (
        "wrong version number")
    assert tls_failure(ClientStopped("x"), None, "h") is None
