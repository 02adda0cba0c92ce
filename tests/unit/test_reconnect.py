"""
Reconnect: subscriptions outliving their connection, replay of what was
missed (in order, once, before live updates), expiry, key binding, and
the report of what could not be recovered.
"""

import pytest

from rustorium.closecodes import CloseCode
from rustorium.feed import REPLAY_CHUNK
from rustorium.hub import channel_key
from rustorium.session import SessionState
from rustorium.storage.keys import ApiKey
from tests.helpers import KEY, make_server, open_session, publish, send

MTK_KEY = channel_key("market_data", "MTK/USD")
STK_KEY = channel_key("market_data", "STK/USD")
OTHER = ApiKey(2, "other", frozenset(), "x")


def tick(server, key=MTK_KEY, count=1):
    """
    Publish updates on one market key; return their numbers.
    """
    symbol = key.split(":", 1)[1]
    return [publish(server, "market_data", key, {"symbol": symbol, "price": str(n)}).number
            for n in range(count)]


def number(message):
    return int(message["id"][4:])


def subscribed(server, symbols=("MTK/USD",), api_key=KEY):
    """
    A session with one market_data subscription, its confirmation and
    snapshot taken.
    """
    session, connection = open_session(server, api_key)
    send(session, {"id": "s", "type": "subscribe",
                   "data": {"channel": "market_data", "symbols": list(symbols)}})
    subscription_id = connection.take()[0]["data"]["subscription_id"]
    return session, connection, subscription_id


def reconnect(server, subscription_ids, last, api_key=KEY):
    session, connection = open_session(server, api_key)
    data = {"subscriptions": subscription_ids}
    if last is not None:
        data["last_message_id"] = f"msg_{last}"
    send(session, {"id": "r", "type": "reconnect", "data": data})
    return session, connection


@pytest.fixture
def server(clock):
    return make_server(clock)


class TestResume:
    def test_replays_missed_updates_in_order(self, server, clock):
        """
        Updates published while disconnected are replayed after the
        confirmation, in order, and then live updates follow.
        """
        tick(server)
        old, old_conn, subscription_id = subscribed(server)
        seen = tick(server, count=3)
        last = number(old_conn.take()[-1])
        assert last == seen[-1]
        old.connection_lost()
        missed = tick(server, count=4)
        session, connection = reconnect(server, [subscription_id], last)
        confirmation, *replayed = connection.take()
        assert confirmation["type"] == "reconnect_confirmation"
        assert confirmation["id"] == "r"
        assert confirmation["data"] == {
            "recovered": True,
            "replayed": 4,
            "subscriptions": [{"subscription_id": subscription_id, "channel": "market_data",
                               "symbols": ["MTK/USD"], "status": "resumed", "recovered": True,
                               "replayed": 4}],
        }
        assert [number(m) for m in replayed] == missed
        live = tick(server)
        assert [number(m) for m in connection.take()] == live
        assert session.state is SessionState.ACTIVE

    def test_nothing_missed(self, server):
        old, old_conn, subscription_id = subscribed(server)
        tick(server)
        last = number(old_conn.take()[-1])
        old.connection_lost()
        _, connection = reconnect(server, [subscription_id], last)
        [confirmation] = connection.take()
        assert confirmation["data"]["recovered"] is True
        assert confirmation["data"]["replayed"] == 0

    def test_several_subscriptions_merge_in_order(self, server):
        """
        Replays of several keys are merged by message id, each update once
        even where two subscriptions share a key.
        """
        old, old_conn, first = subscribed(server, ("MTK/USD",))
        send(old, {"id": "2", "type": "subscribe",
                   "data": {"channel": "market_data", "symbols": ["MTK/USD", "STK/USD"]}})
        second = old_conn.take()[0]["data"]["subscription_id"]
        last = server.app.broker.last_number
        old.connection_lost()
        missed = []
        for _ in range(3):
            missed += tick(server, MTK_KEY) + tick(server, STK_KEY)
        _, connection = reconnect(server, [first, second], last)
        confirmation, *replayed = connection.take()
        assert confirmation["data"]["replayed"] == 6
        assert [s["replayed"] for s in confirmation["data"]["subscriptions"]] == [3, 6]
        assert [number(m) for m in replayed] == missed

    def test_without_last_message_id(self, server):
        """
        With no last_message_id, everything since the subscription was made
        is replayed.
        """
        old, _, subscription_id = subscribed(server)
        delivered = tick(server, count=2)
        old.connection_lost()
        missed = tick(server)
        _, connection = reconnect(server, [subscription_id], None)
        confirmation, *replayed = connection.take()
        assert [number(m) for m in replayed] == delivered + missed
        assert confirmation["data"]["recovered"] is True

    def test_live_updates_wait_for_the_replay(self, server, clock):
        """
        A replay longer than a chunk spans reactor turns; updates published
        meanwhile come after it, and nothing is sent twice.
        """
        server = make_server(clock, history_size=5000)
        old, _, subscription_id = subscribed(server)
        last = server.app.broker.last_number
        old.connection_lost()
        missed = tick(server, count=REPLAY_CHUNK * 2 + 10)
        session, connection = reconnect(server, [subscription_id], last)
        assert session.state is SessionState.RESUMING
        during = tick(server, count=3)
        clock.advance(0)
        during += tick(server, count=2)
        clock.advance(0)
        clock.advance(0)
        messages = connection.take()[1:]
        assert [number(m) for m in messages] == missed + during
        assert session.state is SessionState.ACTIVE

    def test_subscribe_during_replay_waits_too(self, server, clock):
        server = make_server(clock, history_size=5000)
        old, _, subscription_id = subscribed(server)
        last = server.app.broker.last_number
        old.connection_lost()
        missed = tick(server, count=REPLAY_CHUNK + 1)
        session, connection = reconnect(server, [subscription_id], last)
        send(session, {"id": "n", "type": "subscribe",
                       "data": {"channel": "market_data", "symbols": ["STK/USD"]}})
        tick(server, STK_KEY)
        clock.advance(0)
        updates = [number(m) for m in connection.take() if m["type"] == "update"]
        assert updates[: len(missed)] == missed
        assert updates == sorted(updates)

    def test_takes_over_from_a_dead_connection(self, server):
        """
        A subscription still attached to a connection the server has not yet
        seen die is taken over, and the old connection stops receiving it.
        """
        _, old_conn, subscription_id = subscribed(server)
        _, connection = reconnect(server, [subscription_id], server.app.broker.last_number)
        assert connection.take()[0]["data"]["subscriptions"][0]["status"] == "resumed"
        old_conn.take()
        tick(server)
        assert old_conn.take() == []
        assert len(connection.take()) == 1


class TestExpiry:
    def test_other_keys_subscription_is_expired(self, server):
        old, _, subscription_id = subscribed(server)
        old.connection_lost()
        _, connection = reconnect(server, [subscription_id], 0, api_key=OTHER)
        data = connection.take()[0]["data"]
        assert data["subscriptions"] == [{"subscription_id": subscription_id,
                                          "status": "expired"}]
        assert data["recovered"] is False
        tick(server)
        assert connection.take() == []
        _, mine = reconnect(server, [subscription_id], 0)
        assert mine.take()[0]["data"]["subscriptions"][0]["status"] == "resumed"

    def test_expires_after_window(self, clock):
        server = make_server(clock, resume_window=60)
        old, _, subscription_id = subscribed(server)
        old.connection_lost()
        clock.advance(59)
        server.app.broker.expire()
        assert server.app.broker.subscription_count == 1
        clock.advance(2)
        server.app.broker.expire()
        assert server.app.broker.subscription_count == 0
        _, connection = reconnect(server, [subscription_id], 0)
        assert connection.take()[0]["data"]["subscriptions"][0]["status"] == "expired"

    def test_unknown_ids(self, server):
        _, connection = reconnect(server, ["sub_nope", "whatever"], 0)
        data = connection.take()[0]["data"]
        assert [s["status"] for s in data["subscriptions"]] == ["expired", "expired"]
        assert data["recovered"] is False

    def test_unsubscribed_is_gone(self, server):
        old, _, subscription_id = subscribed(server)
        send(old, {"type": "unsubscribe", "data": {"subscription_id": subscription_id}})
        old.connection_lost()
        _, connection = reconnect(server, [subscription_id], 0)
        assert connection.take()[0]["data"]["subscriptions"][0]["status"] == "expired"


class TestIncomplete:
    def test_history_too_short(self, clock):
        """
        When the history no longer reaches back, the subscription is resumed
        with recovered false, the lost range, what is retained, and then its
        current state.
        """
        server = make_server(clock, history_size=3)
        old, _, subscription_id = subscribed(server)
        last = server.app.broker.last_number
        old.connection_lost()
        missed = tick(server, count=5)
        _, connection = reconnect(server, [subscription_id], last)
        confirmation, *rest = connection.take()
        [entry] = confirmation["data"]["subscriptions"]
        assert confirmation["data"]["recovered"] is False
        assert entry["status"] == "resumed"
        assert entry["recovered"] is False
        assert entry["lost"] == {"from": f"msg_{last + 1}", "to": f"msg_{missed[1]}"}
        assert [number(m) for m in rest[:3]] == missed[2:]
        snapshot = rest[3]
        assert number(snapshot) > missed[-1]
        assert snapshot["data"]["price"] == "4"

    def test_history_too_old(self, clock):
        server = make_server(clock, history_age=10)
        old, _, subscription_id = subscribed(server)
        last = server.app.broker.last_number
        old.connection_lost()
        tick(server)
        clock.advance(11)
        server.app.broker.expire()
        _, connection = reconnect(server, [subscription_id], last)
        entry = connection.take()[0]["data"]["subscriptions"][0]
        assert entry["recovered"] is False

    def test_a_replay_is_never_overtaken(self, clock):
        """
        Updates that arrive while a long replay is streamed, even enough to
        evict all of it from the history, cannot cut it short: the replay
        is read whole at once, and the live updates follow it, each once.
        """
        server = make_server(clock, history_size=REPLAY_CHUNK + 10)
        old, _, subscription_id = subscribed(server)
        last = server.app.broker.last_number
        old.connection_lost()
        missed = tick(server, count=REPLAY_CHUNK + 10)
        _, connection = reconnect(server, [subscription_id], last)
        live = tick(server, count=REPLAY_CHUNK + 5)
        clock.advance(0)
        clock.advance(0)
        assert connection.closed is None
        received = [number(m) for m in connection.take() if m["type"] == "update"]
        assert received == missed + live


class TestRules:
    def test_reconnect_after_subscribe_refused(self, server):
        session, connection, _ = subscribed(server)
        send(session, {"id": "r", "type": "reconnect", "data": {"subscriptions": []}})
        assert connection.take()[0]["data"]["code"] == "invalid_request"

    def test_second_reconnect_refused(self, server):
        session, connection = reconnect(server, [], 0)
        connection.take()
        send(session, {"id": "r", "type": "reconnect", "data": {"subscriptions": []}})
        assert connection.take()[0]["data"]["code"] == "invalid_request"

    def test_closed_by_server_stays_resumable(self, server):
        """
        A connection the server closes (here for silence) leaves its
        subscriptions resumable.
        """
        old, _, subscription_id = subscribed(server)
        old.close(CloseCode.HEARTBEAT_TIMEOUT, "silent")
        _, connection = reconnect(server, [subscription_id], server.app.broker.last_number)
        assert connection.take()[0]["data"]["recovered"] is True

    def test_history_kept_only_while_watched(self, server):
        """
        Keys nobody subscribes to keep no history; unsubscribing drops it.
        """
        tick(server)
        assert server.app.broker.replay({MTK_KEY: 0}).result.count == 0
        session, _, subscription_id = subscribed(server)
        tick(server, count=2)
        assert server.app.broker.replay({MTK_KEY: 0}).result.count == 2
        send(session, {"type": "unsubscribe", "data": {"subscription_id": subscription_id}})
        assert server.app.broker.replay({MTK_KEY: 0}).result.count == 0


def transaction_subscriptions(session, connection, addresses):
    """
    Subscribe C{session} to transaction_updates of each address; return the
    subscription ids.
    """
    ids = []
    for address in addresses:
        send(session, {"id": address, "type": "subscribe",
                       "data": {"channel": "transaction_updates", "address": address}})
        ids.append(connection.take()[0]["data"]["subscription_id"])
    return ids


def addresses(first, count):
    return [f"0x{n:040x}" for n in range(first, first + count)]


class TestDetachedPerKey:
    def test_oldest_expire_first(self, clock):
        """
        Past max-detached-per-key, a key's oldest detached subscriptions
        expire at once, in the order they were detached; its newest stay
        resumable.
        """
        server = make_server(clock, max_detached_per_key=3)
        ids = []
        for batch in range(3):
            session, connection = open_session(server)
            ids += transaction_subscriptions(session, connection, addresses(batch * 2, 2))
            session.connection_lost()
            clock.advance(1)
        assert server.app.broker.detached_of(KEY.key_id) == 3
        assert server.app.broker.subscription_count == 3
        _, connection = reconnect(server, ids, None)
        statuses = [e["status"] for e in connection.take()[0]["data"]["subscriptions"]]
        assert statuses == ["expired"] * 3 + ["resumed"] * 3

    def test_other_keys_untouched(self, clock):
        """
        One key passing its cap expires nothing of another key's.
        """
        server = make_server(clock, max_detached_per_key=2)
        mine, connection = open_session(server, OTHER)
        [kept] = transaction_subscriptions(mine, connection, addresses(100, 1))
        mine.connection_lost()
        session, connection = open_session(server)
        transaction_subscriptions(session, connection, addresses(0, 5))
        session.connection_lost()
        assert server.app.broker.detached_of(KEY.key_id) == 2
        assert server.app.broker.detached_of(OTHER.key_id) == 1
        _, connection = reconnect(server, [kept], None, api_key=OTHER)
        assert connection.take()[0]["data"]["subscriptions"][0]["status"] == "resumed"

    def test_expired_ones_watch_nothing(self, clock):
        """
        A subscription expired by the cap no longer keeps its key's history.
        """
        server = make_server(clock, max_detached_per_key=1)
        session, connection = open_session(server)
        transaction_subscriptions(session, connection, addresses(0, 2))
        session.connection_lost()
        assert server.app.broker.heard(f"transaction_updates:{addresses(1, 1)[0]}")
        assert not server.app.broker.heard(f"transaction_updates:{addresses(0, 1)[0]}")

    def test_resumed_ones_do_not_count(self, clock):
        """
        Resuming takes subscriptions off the key's detached count.
        """
        server = make_server(clock, max_detached_per_key=2)
        session, connection = open_session(server)
        ids = transaction_subscriptions(session, connection, addresses(0, 2))
        session.connection_lost()
        reconnect(server, ids, None)
        assert server.app.broker.detached_of(KEY.key_id) == 0
        assert server.app.broker.detached_count == 0


class TestSubscriptionLimit:
    def test_surplus_not_resumed_and_still_resumable(self, clock):
        """
        A reconnect naming more resumable subscriptions than a connection
        may hold resumes up to the limit and reports the rest not_resumed
        with the reason; they stay detached, and another connection resumes
        them. Unknown ids past the limit are still expired.
        """
        server = make_server(clock, max_subscriptions=2)
        ids = []
        for batch in range(2):
            session, connection = open_session(server)
            ids += transaction_subscriptions(session, connection, addresses(batch * 2, 2))
            session.connection_lost()
        _, connection = reconnect(server, [*ids, "sub_unknown"], None)
        data = connection.take()[0]["data"]
        assert [(e["status"], e.get("reason")) for e in data["subscriptions"]] == [
            ("resumed", None), ("resumed", None),
            ("not_resumed", "subscription_limit"), ("not_resumed", "subscription_limit"),
            ("expired", None),
        ]
        assert data["recovered"] is False
        assert server.app.broker.detached_count == 2
        _, connection = reconnect(server, ids[2:], None)
        data = connection.take()[0]["data"]
        assert [e["status"] for e in data["subscriptions"]] == ["resumed", "resumed"]

    def test_repeated_id_reported_once(self, server):
        old, _, subscription_id = subscribed(server)
        old.connection_lost()
        _, connection = reconnect(server, [subscription_id, subscription_id], None)
        data = connection.take()[0]["data"]
        assert [e["subscription_id"] for e in data["subscriptions"]] == [subscription_id]
        assert data["recovered"] is True


def test_requests_queued_behind_a_change_do_nothing_once_closed(clock):
    """
    A subscribe waiting for an earlier change of the same feed, when the
    connection closes meanwhile, follows nothing and leaves nothing behind.
    """
    server = make_server(clock)
    session, connection = open_session(server)
    feed = session.feed
    blocker = feed._changing
    blocker.acquire()
    send(session, {"id": "s", "type": "subscribe",
                   "data": {"channel": "market_data", "symbols": ["MTK/USD"]}})
    session.connection_lost()
    blocker.release()
    assert connection.take() == []
    assert server.app.fanout.subscriber_count(MTK_KEY) == 0
    assert server.app.broker.subscription_count == 0
