"""
The session state machine, driven with a fake connection and a fake clock:
subscriptions, commands, validation, every error code, rate limits.
"""

import pytest

from rustorium.admission import default_max_connections
from rustorium.closecodes import CloseCode
from rustorium.hub import channel_key
from rustorium.requests import Ping
from rustorium.session import SessionState
from rustorium.storage.keys import ApiKey
from tests.helpers import ALICE, MTK, STK, make_server, open_session, publish, send

OTHER_KEY = ApiKey(2, "other", frozenset(), "2026-01-01T00:00:00.000000Z")


@pytest.fixture
def server(clock):
    return make_server(clock)


@pytest.fixture
def session(server):
    return open_session(server)


def publish_ticks(server):
    """
    Publish one market and one token update per demo market, as a tick does.
    """
    for market in server.catalog.markets.values():
        publish(server, "market_data", channel_key("market_data", market.symbol),
                           {"symbol": market.symbol, "price": "1"})
        token_id = market.token.token_id
        publish(server, "token_updates", channel_key("token_updates", token_id),
                           {"token_id": token_id, "price": "1", "volume": "0"})


def subscribe(session, connection, request_id="1", **data):
    send(session, {"id": request_id, "type": "subscribe", "data": data})
    return connection.take()


def only_error(messages):
    assert len(messages) == 1, messages
    assert messages[0]["type"] == "error", messages
    return messages[0]


class TestSubscribe:
    def test_confirmation_then_current_state(self, server, session):
        """
        A subscription is confirmed with the spec's fields and then the
        channel's current state arrives as an update.
        """
        session, connection = session
        publish_ticks(server)
        confirmation, snapshot = subscribe(
            session, connection, channel="token_updates", token_id=MTK.token_id.upper()
        )
        assert confirmation["id"] == "1"
        assert confirmation["type"] == "subscription_confirmation"
        data = confirmation["data"]
        assert data["status"] == "subscribed"
        assert data["channel"] == "token_updates"
        assert data["subscription_id"].startswith("sub_")
        assert data["token_id"] == MTK.token_id
        assert snapshot["type"] == "update"
        assert snapshot["id"].startswith("msg_")
        assert snapshot["data"]["token_id"] == MTK.token_id
        assert snapshot["data"]["channel"] == "token_updates"

    def test_ids_increase_through_snapshots(self, server, session):
        """
        A snapshot sent after a later subscription carries a fresh id, so
        the ids a connection receives always increase.
        """
        session, connection = session
        publish_ticks(server)
        seen = subscribe(session, connection, channel="market_data", symbols=["MTK/USD"])
        publish_ticks(server)
        seen += subscribe(session, connection, "2", channel="market_data", symbols=["STK/USD"])
        publish_ticks(server)
        seen += connection.take()
        numbers = [int(m["id"][4:]) for m in seen if m["type"] == "update"]
        assert len(numbers) == 5
        assert numbers == sorted(numbers)

    def test_live_updates_follow(self, server, session):
        """
        Updates published after the subscription are delivered in order,
        with increasing message ids.
        """
        session, connection = session
        subscribe(session, connection, channel="market_data", symbols=["MTK/USD"])
        publish_ticks(server)
        publish_ticks(server)
        updates = connection.take()
        assert [u["data"]["symbol"] for u in updates] == ["MTK/USD", "MTK/USD"]
        first, second = (int(u["id"][4:]) for u in updates)
        assert first < second

    def test_market_data_snapshot_per_symbol(self, server, session):
        """
        A market_data subscription to two symbols gets one snapshot each and
        reports its symbols sorted and upper-cased.
        """
        session, connection = session
        publish_ticks(server)
        confirmation, *snapshots = subscribe(
            session, connection, channel="market_data", symbols=["stk/usd", "MTK/USD"]
        )
        assert confirmation["data"]["symbols"] == ["MTK/USD", "STK/USD"]
        assert sorted(s["data"]["symbol"] for s in snapshots) == ["MTK/USD", "STK/USD"]

    @pytest.mark.parametrize("token_id", ["*", "0x..."])
    def test_every_token(self, server, session, token_id):
        """
        token_id "*", or the spec's placeholder "0x...", follows every token.
        """
        session, connection = session
        publish_ticks(server)
        confirmation, *snapshots = subscribe(
            session, connection, channel="token_updates", token_id=token_id
        )
        assert confirmation["type"] == "subscription_confirmation"
        assert confirmation["data"]["token_id"] == "*"
        assert {s["data"]["token_id"] for s in snapshots} == set(server.catalog.tokens)

    def test_transaction_updates(self, session):
        """
        transaction_updates for any well-formed address is confirmed, with
        the address normalised; there is no snapshot.
        """
        session, connection = session
        mixed_case = "0x" + ALICE[2:].upper()
        messages = subscribe(
            session, connection, channel="transaction_updates", address=mixed_case
        )
        assert len(messages) == 1
        assert messages[0]["data"]["address"] == ALICE

    def test_duplicate_returns_same_id(self, server, session):
        """
        Subscribing again with the same parameters (in any order or case)
        returns the existing subscription, which is delivered once.
        """
        session, connection = session
        first = subscribe(session, connection, channel="market_data",
                          symbols=["MTK/USD", "STK/USD"])[0]
        second = subscribe(session, connection, "2", channel="market_data",
                           symbols=["stk/usd", "MTK/USD", "MTK/USD"])[0]
        assert second["id"] == "2"
        assert second["data"]["subscription_id"] == first["data"]["subscription_id"]
        publish_ticks(server)
        assert len(connection.take()) == 2

    def test_overlapping_subscriptions_deliver_once(self, server, session):
        """
        Two subscriptions covering one market deliver each update once; and
        removing one keeps the other's updates coming.
        """
        session, connection = session
        one = subscribe(session, connection, channel="market_data", symbols=["MTK/USD"])[0]
        subscribe(session, connection, "2", channel="market_data", symbols=["MTK/USD", "STK/USD"])
        publish_ticks(server)
        assert sorted(m["data"]["symbol"] for m in connection.take()) == ["MTK/USD", "STK/USD"]
        send(session, {"type": "unsubscribe",
                       "data": {"subscription_id": one["data"]["subscription_id"]}})
        connection.take()
        publish_ticks(server)
        assert sorted(m["data"]["symbol"] for m in connection.take()) == ["MTK/USD", "STK/USD"]

    def test_limit(self, clock):
        """
        The subscription beyond max-subscriptions is refused with
        subscription_limit; duplicates of held ones are still answered.
        """
        server = make_server(clock, max_subscriptions=3, rate_burst=100)
        session, connection = open_session(server)
        addresses = [f"0x{n:040x}" for n in range(4)]
        for address in addresses[:3]:
            subscribe(session, connection, channel="transaction_updates", address=address)
        error = only_error(subscribe(session, connection, "x", channel="transaction_updates",
                                     address=addresses[3]))
        assert error["id"] == "x"
        assert error["data"]["code"] == "subscription_limit"
        again = subscribe(session, connection, channel="transaction_updates", address=addresses[0])
        assert again[0]["type"] == "subscription_confirmation"

    def test_default_limit_is_100(self, clock):
        """
        By default a connection may hold 100 subscriptions.
        """
        server = make_server(clock, rate_burst=1000)
        session, connection = open_session(server)
        for n in range(100):
            subscribe(session, connection, channel="transaction_updates", address=f"0x{n:040x}")
        error = only_error(subscribe(session, connection, channel="transaction_updates",
                                     address=f"0x{100:040x}"))
        assert error["data"]["code"] == "subscription_limit"

    @pytest.mark.parametrize(
        ("data", "code"),
        [
            ({}, "invalid_params"),
            ({"channel": "prices"}, "invalid_channel"),
            ({"channel": 7}, "invalid_channel"),
            ({"channel": "token_updates"}, "invalid_params"),
            ({"channel": "token_updates", "token_id": "0x1234"}, "invalid_params"),
            ({"channel": "token_updates", "token_id": 12}, "invalid_params"),
            ({"channel": "token_updates", "token_id": "0x" + "9" * 40}, "not_found"),
            ({"channel": "token_updates", "token_id": MTK.token_id, "symbols": []},
             "invalid_params"),
            ({"channel": "transaction_updates", "address": "alice"}, "invalid_params"),
            ({"channel": "market_data", "symbols": []}, "invalid_params"),
            ({"channel": "market_data", "symbols": [1]}, "invalid_params"),
            ({"channel": "market_data", "symbols": ["DOGE/USD"]}, "not_found"),
            ({"channel": "market_data", "symbols": ["MTK/USD"] * 101}, "invalid_params"),
        ],
    )
    def test_errors(self, session, data, code):
        """
        Bad subscribe requests get the right error code and a message, and
        create nothing.
        """
        session, connection = session
        error = only_error(subscribe(session, connection, "e", **data))
        assert error["id"] == "e"
        assert error["data"]["code"] == code
        assert error["data"]["message"]
        send(session, {"type": "list_subscriptions"})
        assert connection.take()[0]["data"]["subscriptions"] == []


class TestUnsubscribe:
    def test_unsubscribe(self, server, session):
        """
        Unsubscribing is confirmed with status unsubscribed, and no update
        follows.
        """
        session, connection = session
        confirmation = subscribe(session, connection, channel="market_data", symbols=["MTK/USD"])
        subscription_id = confirmation[0]["data"]["subscription_id"]
        send(session, {"id": 9, "type": "unsubscribe",
                       "data": {"subscription_id": subscription_id}})
        assert connection.take() == [
            {"id": 9, "type": "subscription_confirmation",
             "data": {"status": "unsubscribed", "channel": "market_data",
                      "subscription_id": subscription_id}}
        ]
        publish_ticks(server)
        assert connection.take() == []
        assert server.app.fanout.subscriber_count(channel_key("market_data", "MTK/USD")) == 0

    def test_unknown(self, session):
        """
        Unsubscribing from an unknown id is not_found.
        """
        session, connection = session
        send(session, {"id": "u", "type": "unsubscribe", "data": {"subscription_id": "sub_x"}})
        assert only_error(connection.take())["data"]["code"] == "not_found"


class TestCommands:
    def test_list_subscriptions(self, session):
        """
        list_subscriptions lists every active subscription with its
        parameters.
        """
        session, connection = session
        a = subscribe(session, connection, channel="market_data", symbols=["MTK/USD"])[0]
        b = subscribe(session, connection, channel="transaction_updates", address=ALICE)[0]
        send(session, {"id": "l", "type": "list_subscriptions", "data": {}})
        [reply] = connection.take()
        assert reply["type"] == "subscriptions"
        assert reply["data"]["subscriptions"] == [
            {"subscription_id": a["data"]["subscription_id"], "channel": "market_data",
             "symbols": ["MTK/USD"]},
            {"subscription_id": b["data"]["subscription_id"], "channel": "transaction_updates",
             "address": ALICE},
        ]

    def test_get_token_info(self, session):
        """
        get_token_info answers token_info with the spec's fields and the
        decimals, the supply in whole tokens.
        """
        session, connection = session
        send(session, {"id": "3", "type": "get_token_info", "data": {"token_id": STK.token_id}})
        assert connection.take() == [
            {"id": "3", "type": "token_info",
             "data": {"token_id": STK.token_id, "name": "Stake Token", "symbol": "STK",
                      "total_supply": "21000000", "decimals": 8}}
        ]

    def test_get_token_info_unknown(self, session):
        session, connection = session
        send(session, {"id": "3", "type": "get_token_info", "data": {"token_id": "0x" + "1" * 40}})
        assert only_error(connection.take())["data"]["code"] == "not_found"

    def test_ping(self, clock, session):
        """
        ping is answered by pong with the server's time.
        """
        session, connection = session
        send(session, {"id": "p", "type": "ping"})
        [pong] = connection.take()
        assert pong["type"] == "pong"
        assert pong["data"]["timestamp"] == "2023-11-14T22:13:20.000000Z"

    def test_server_info(self, clock):
        """
        server_info reports the version, limits, heartbeat settings and this
        connection's live usage.
        """
        server = make_server(clock, heartbeat_interval=20)
        session, connection = open_session(server)
        subscribe(session, connection, channel="market_data", symbols=["MTK/USD"])
        send(session, {"id": "i", "type": "server_info"})
        [info] = connection.take()
        data = info["data"]
        assert data["version"] == server.version
        assert data["heartbeat_interval"] == 20
        assert data["heartbeat_timeout"] == 60
        assert data["limits"] == {"max_subscriptions": 100, "rate_limit": 10.0,
                                  "rate_burst": 10, "key_rate_limit": 100.0,
                                  "key_rate_burst": 200, "max_detached_per_key": 1000,
                                  "max_message_size": 65536,
                                  "frame_rate": 500.0, "frame_burst": 2000,
                                  "max_backlog": 1048576, "handshake_timeout": 10.0,
                                  "max_connections": default_max_connections(),
                                  "max_handshakes_per_address": 256,
                                  "http_rate_limit": 20.0, "http_rate_burst": 100,
                                  "http_max_body": 1048576}
        assert data["usage"] == {"subscriptions": 1, "rate_tokens": 8.0,
                                 "key_rate_tokens": 198.0}
        assert set(data["markets"]) == {"MTK/USD", "STK/USD", "RST/USD"}


class TestEnvelope:
    @pytest.mark.parametrize(
        ("payload", "code", "echo"),
        [
            (b"{not json", "invalid_request", None),
            (b"[1, 2]", "invalid_request", None),
            (b'"ping"', "invalid_request", None),
            (b'{"id": "7"}', "invalid_request", "7"),
            (b'{"id": "7", "type": 3}', "invalid_request", "7"),
            (b'{"id": {"a": 1}, "type": "ping"}', "invalid_request", None),
            (b'{"id": true, "type": "ping"}', "invalid_request", None),
            (b'{"id": 1.5, "type": "ping"}', "invalid_request", None),
            (b'{"id": 7, "type": "ping", "data": []}', "invalid_request", 7),
            (b'{"id": 7, "type": "launch_rocket", "data": {}}', "unknown_type", 7),
            (b'{"id": 7, "type": "ping", "data": {"x": 1}}', "invalid_params", 7),
            (b'{"type": "ping", "data": {"x": NaN}}', "invalid_request", None),
            (b"[" * 5000, "invalid_request", None),
            (b'{"id": 1, "type": "get_token_info", "data": {"token_id": ' + b"[" * 900
             + b"]" * 900 + b"}}", "invalid_params", 1),
            (b'{"id": 1, "type": "subscribe", "data": {"channel": ' + b"[" * 900
             + b"]" * 900 + b"}}", "invalid_channel", 1),
        ],
    )
    def test_malformed(self, session, payload, code, echo):
        """
        Malformed messages get an error with the right code, echoing the id
        only when it was a valid one, and the connection stays usable.
        """
        session, connection = session
        send(session, payload)
        error = only_error(connection.take())
        assert error["data"]["code"] == code
        assert error["id"] == echo
        assert connection.closed is None
        send(session, {"id": "ok", "type": "ping"})
        assert connection.take()[0]["type"] == "pong"

    def test_binary(self, session):
        """
        A binary frame is refused with invalid_request.
        """
        session, connection = session
        session.message_received(b'{"type": "ping"}', True)
        assert only_error(connection.take())["data"]["code"] == "invalid_request"

    def test_id_echoed_verbatim(self, session):
        """
        String and integer ids are echoed as they came; no id gives null.
        """
        session, connection = session
        for request_id in ("abc", 12345678901234567, 0, ""):
            send(session, {"id": request_id, "type": "ping"})
            assert connection.take()[0]["id"] == request_id
        send(session, {"type": "ping"})
        assert connection.take()[0]["id"] is None

    def test_internal_error(self, session, monkeypatch, logged_errors):
        """
        A failing handler is logged and answered with internal_error, never
        a traceback; the session goes on.
        """
        session, connection = session

        def broken(self, request_id, request):
            raise ZeroDivisionError("boom")

        monkeypatch.setitem(type(session)._HANDLERS, Ping, broken)
        send(session, {"id": "z", "type": "ping"})
        error = only_error(connection.take())
        assert error["id"] == "z"
        assert error["data"]["code"] == "internal_error"
        assert "boom" not in error["data"]["message"]
        assert len(logged_errors) == 1
        logged_errors.clear()


class TestRateLimit:
    def test_burst_then_refused(self, clock, session):
        """
        Ten messages pass at once; the eleventh is not executed and gets
        rate_limit_exceeded with retry_after; a tenth of a second later one
        more passes.
        """
        session, connection = session
        for n in range(10):
            send(session, {"id": n, "type": "ping"})
        assert [m["type"] for m in connection.take()] == ["pong"] * 10
        send(session, {"id": "over", "type": "subscribe",
                       "data": {"channel": "market_data", "symbols": ["MTK/USD"]}})
        error = only_error(connection.take())
        assert error["id"] == "over"
        assert error["data"]["code"] == "rate_limit_exceeded"
        assert error["data"]["retry_after"] == pytest.approx(0.1)
        send(session, {"type": "list_subscriptions"})
        assert connection.take()[0]["type"] == "error"
        clock.advance(0.1)
        send(session, {"type": "list_subscriptions"})
        assert connection.take()[0]["data"]["subscriptions"] == []

    def test_heartbeat_response_exempt(self, session):
        """
        heartbeat_response neither takes a token nor gets a reply.
        """
        session, connection = session
        for _ in range(50):
            send(session, {"type": "heartbeat_response", "data": {"timestamp": "x"}})
        assert connection.take() == []
        for n in range(10):
            send(session, {"id": n, "type": "ping"})
        assert [m["type"] for m in connection.take()] == ["pong"] * 10

    def test_malformed_messages_count(self, session):
        """
        Invalid messages take tokens too.
        """
        session, connection = session
        for _ in range(10):
            send(session, b"nonsense")
        send(session, b"nonsense")
        assert connection.take()[-1]["data"]["code"] == "rate_limit_exceeded"

    def test_sustained_rate_is_allowed(self, clock, session):
        """
        A client sending 10 messages a second for a minute is never refused.
        """
        session, connection = session
        for n in range(600):
            send(session, {"id": n, "type": "ping"})
            clock.advance(0.1)
        assert all(m["type"] == "pong" for m in connection.take())

    def test_flooding_closes(self, clock):
        """
        A client that keeps flooding past the limit is closed with 4008
        after flood-limit refused messages in ten seconds.
        """
        server = make_server(clock, flood_limit=5)
        session, connection = open_session(server)
        for n in range(15):
            send(session, {"id": n, "type": "ping"})
        assert connection.closed is None
        send(session, {"id": "last", "type": "ping"})
        assert connection.closed == (CloseCode.POLICY_VIOLATION, "rate limit exceeded repeatedly")
        assert session.state is SessionState.CLOSED


class TestKeyRateLimit:
    """
    One budget for all of an API key's connections, kept across reconnects.
    """

    def test_shared_by_the_keys_connections(self, clock):
        """
        Connections of one key, each within its own limit, together get
        only the key's burst; the next message is refused with
        rate_limit_exceeded naming the key's limit, with the key's
        retry_after. Another key is not affected.
        """
        server = make_server(clock, key_rate_limit=20, key_rate_burst=25)
        sessions = [open_session(server) for _ in range(3)]
        answers = []
        for session, connection in sessions:
            for n in range(10):
                send(session, {"id": n, "type": "ping"})
            answers += connection.take()
        assert [m["type"] for m in answers] == ["pong"] * 25 + ["error"] * 5
        error = answers[-1]["data"]
        assert error["code"] == "rate_limit_exceeded"
        assert "more than 20 messages per second from this API key" in error["message"]
        assert error["retry_after"] == pytest.approx(0.05)
        other, other_connection = open_session(server, OTHER_KEY)
        send(other, {"id": "o", "type": "ping"})
        assert other_connection.take()[0]["type"] == "pong"

    def test_reconnecting_brings_no_fresh_burst(self, clock):
        """
        A new connection of a key that spent its budget is refused too,
        until the key's bucket refills.
        """
        server = make_server(clock, key_rate_limit=20, key_rate_burst=10)
        session, connection = open_session(server)
        for n in range(10):
            send(session, {"id": n, "type": "ping"})
        session.connection_lost()
        again, connection = open_session(server)
        send(again, {"id": "x", "type": "ping"})
        assert only_error(connection.take())["data"]["code"] == "rate_limit_exceeded"
        clock.advance(0.05)
        send(again, {"id": "y", "type": "ping"})
        assert connection.take()[0]["type"] == "pong"

    def test_connection_limit_spends_none_of_the_keys(self, clock):
        """
        Messages a connection's own limit refuses take nothing from the
        key's budget, so one flooding connection does not starve the key's
        others.
        """
        server = make_server(clock, key_rate_limit=1, key_rate_burst=12)
        flooding, _ = open_session(server)
        for n in range(40):
            send(flooding, {"id": n, "type": "ping"})
        quiet, connection = open_session(server)
        send(quiet, {"id": "q", "type": "ping"})
        send(quiet, {"id": "r", "type": "ping"})
        assert [m["type"] for m in connection.take()] == ["pong", "pong"]

    def test_heartbeat_response_exempt(self, clock):
        server = make_server(clock, key_rate_burst=5)
        session, connection = open_session(server)
        for _ in range(20):
            send(session, {"type": "heartbeat_response", "data": {}})
        for n in range(5):
            send(session, {"id": n, "type": "ping"})
        assert [m["type"] for m in connection.take()] == ["pong"] * 5

    def test_refusals_count_towards_flooding(self, clock):
        """
        A connection that keeps sending past its key's limit is closed like
        one past its own.
        """
        server = make_server(clock, key_rate_burst=1, flood_limit=3)
        session, connection = open_session(server)
        for n in range(4):
            send(session, {"id": n, "type": "ping"})
        assert connection.closed is None
        send(session, {"id": "last", "type": "ping"})
        assert connection.closed == (CloseCode.POLICY_VIOLATION, "rate limit exceeded repeatedly")


class TestStates:
    def test_reconnect_when_fresh(self, session):
        """
        A reconnect as the first request is answered with
        reconnect_confirmation; subscriptions unknown here are expired.
        """
        session, connection = session
        send(session, {"id": "r", "type": "reconnect",
                       "data": {"last_message_id": "msg_5", "subscriptions": ["sub_1", "sub_2"]}})
        [reply] = connection.take()
        assert reply["type"] == "reconnect_confirmation"
        assert reply["data"]["recovered"] is False
        assert reply["data"]["subscriptions"] == [
            {"subscription_id": "sub_1", "status": "expired"},
            {"subscription_id": "sub_2", "status": "expired"},
        ]
        assert session.state is SessionState.ACTIVE

    def test_reconnect_after_subscribe(self, session):
        """
        Once a connection has subscribed, reconnect is an invalid_request.
        """
        session, connection = session
        subscribe(session, connection, channel="market_data", symbols=["MTK/USD"])
        send(session, {"id": "r", "type": "reconnect", "data": {"subscriptions": []}})
        assert only_error(connection.take())["data"]["code"] == "invalid_request"

    def test_commands_keep_fresh(self, session):
        """
        Commands other than subscribe and reconnect leave the session FRESH.
        """
        session, _ = session
        send(session, {"type": "ping"})
        send(session, {"type": "server_info"})
        assert session.state is SessionState.FRESH

    @pytest.mark.parametrize(
        "data",
        [{"last_message_id": "123"}, {"last_message_id": 5}, {"subscriptions": "sub_1"},
         {"subscriptions": [1]}, {"other": 1}],
    )
    def test_reconnect_invalid(self, session, data):
        session, connection = session
        send(session, {"type": "reconnect", "data": data})
        assert only_error(connection.take())["data"]["code"] == "invalid_params"

    def test_closed_session_is_silent(self, server, session):
        """
        After the connection is lost, nothing is delivered or answered and
        the hub forgets the session.
        """
        session, connection = session
        subscribe(session, connection, channel="market_data", symbols=["MTK/USD"])
        session.connection_lost()
        publish_ticks(server)
        send(session, {"type": "ping"})
        assert connection.take() == []
        assert server.app.fanout.subscriber_count(channel_key("market_data", "MTK/USD")) == 0
        assert len(server.sessions) == 0

    def test_close(self, server, session):
        """
        Closing sends the close code once and stops deliveries.
        """
        session, connection = session
        subscribe(session, connection, channel="market_data", symbols=["MTK/USD"])
        session.close(CloseCode.SHUTTING_DOWN, "bye")
        session.close(CloseCode.HEARTBEAT_TIMEOUT, "again")
        assert connection.closed == (4200, "bye")
        publish_ticks(server)
        assert connection.take() == []
