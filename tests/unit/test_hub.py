"""
The hub: numbering, encoding once, fan-out, latest values; and the durable
message id reservation.
"""

import orjson
from twisted.internet.defer import Deferred

from rustorium.hub import LocalHub, MessageIds


def make_hub(clock, prepare=None):
    ids = MessageIds(1, 10**9, 10**6)
    if prepare is None:
        return LocalHub(clock, ids)
    return LocalHub(clock, ids, prepare)


def test_update_envelope(clock):
    """
    An update is {"id": "msg_<n>", "type": "update", "data": {...}} with the
    channel and the publication time added to data.
    """
    hub = make_hub(clock)
    update = hub.publish("market_data", "market_data:MTK/USD", {"symbol": "MTK/USD"})
    assert orjson.loads(update.payload) == {
        "id": "msg_1",
        "type": "update",
        "data": {"channel": "market_data", "symbol": "MTK/USD",
                 "timestamp": "2023-11-14T22:13:20.000000Z"},
    }


def test_encoded_and_prepared_once(clock):
    """
    However many subscribers, an update is prepared once and every
    subscriber receives the very same object.
    """
    prepared = []

    def prepare(payload):
        prepared.append(payload)
        return object()

    hub = make_hub(clock, prepare)
    received = []
    for n in range(1000):
        hub.subscribe("k", n, received.append)
    hub.publish("c", "k", {})
    assert len(prepared) == 1
    assert len(received) == 1000
    assert len({id(u) for u in received}) == 1
    assert received[0].frame is not None


def test_only_subscribers_of_the_key(clock):
    hub = make_hub(clock)
    a, b = [], []
    hub.subscribe("k1", "a", a.append)
    hub.subscribe("k2", "b", b.append)
    hub.publish("c", "k1", {})
    assert len(a) == 1
    assert b == []


def test_numbers_increase(clock):
    hub = make_hub(clock)
    numbers = [hub.publish("c", f"k{n % 3}", {}).number for n in range(10)]
    assert numbers == list(range(1, 11))


def test_unsubscribe(clock):
    hub = make_hub(clock)
    received = []
    hub.subscribe("k", "a", received.append)
    hub.unsubscribe("k", "a")
    hub.unsubscribe("k", "a")
    hub.publish("c", "k", {})
    assert received == []
    assert hub.subscriber_count("k") == 0


def test_leaving_during_fanout(clock):
    """
    A subscriber that unsubscribes another during a fan-out does not break
    the fan-out of that update.
    """
    hub = make_hub(clock)
    received = []

    def first(update):
        hub.unsubscribe("k", "second")
        received.append("first")

    hub.subscribe("k", "first", first)
    hub.subscribe("k", "second", lambda u: received.append("second"))
    hub.publish("c", "k", {})
    hub.publish("c", "k", {})
    assert received == ["first", "second", "first"]


def test_failing_subscriber_is_isolated(clock, logged_errors):
    """
    A subscriber that raises is logged; the others still get the update.
    """
    hub = make_hub(clock)
    received = []

    def broken(update):
        raise RuntimeError("gone")

    hub.subscribe("k", "broken", broken)
    hub.subscribe("k", "ok", received.append)
    hub.publish("c", "k", {})
    assert len(received) == 1
    assert len(logged_errors) == 1
    logged_errors.clear()


def test_snapshot(clock):
    """
    A snapshot is the last retained update's data under a fresh, higher
    message id; unretained updates leave no snapshot.
    """
    hub = make_hub(clock)
    assert hub.snapshot("k") is None
    hub.publish("c", "k", {"v": 1})
    second = hub.publish("c", "k", {"v": 2})
    clock.advance(5)
    snapshot = hub.snapshot("k")
    assert snapshot.number > second.number
    first_data = orjson.loads(second.payload)["data"]
    assert orjson.loads(snapshot.payload) == {
        "id": f"msg_{snapshot.number}", "type": "update", "data": first_data
    }
    hub.publish("c", "events", {"v": 3}, retain=False)
    assert hub.snapshot("events") is None


class TestMessageIds:
    def test_reserves_before_running_out(self):
        """
        Past half a block, the ceiling is raised durably; until the store
        confirms, no second reservation starts.
        """
        pending = []

        def reserve(ceiling):
            d = Deferred()
            pending.append((ceiling, d))
            return d

        ids = MessageIds(1, 10, 10, reserve)
        assert [ids.next() for _ in range(5)] == [1, 2, 3, 4, 5]
        assert pending == []
        ids.next()
        assert [c for c, _ in pending] == [20]
        ids.next()
        assert len(pending) == 1
        pending[0][1].callback(None)
        for _ in range(9):
            ids.next()
        assert [c for c, _ in pending] == [20, 30]
        assert ids.last == 16

    def test_failed_reservation_is_retried(self, logged_errors):
        calls = []

        def reserve(ceiling):
            calls.append(ceiling)
            raise OSError("disk full")

        ids = MessageIds(1, 4, 4, reserve)
        for _ in range(4):
            ids.next()
        assert calls == [8, 8]
        assert len(logged_errors) == 2
        logged_errors.clear()


def test_unheard_event_is_dropped(clock):
    """
    An event (not retained) on a key nobody subscribes to or watches costs
    nothing: no number, no encoding; a watched key records it for replay.
    """
    prepared = []
    hub = make_hub(clock, lambda payload: prepared.append(payload) or payload)
    assert hub.publish("c", "k", {}, retain=False) is None
    assert prepared == []
    hub.watch("k")
    update = hub.publish("c", "k", {}, retain=False)
    assert update.number == 1
    assert hub.replay("k", 0).count == 1


class TestPublishEvent:
    """
    One event on several keys (a transfer, on its sender's and its
    recipient's address): one number, once per subscriber.
    """

    def test_once_per_subscriber_of_either_key(self, clock):
        """
        A subscriber of both keys receives the event once; a subscriber of
        either one receives it too; all get the same update.
        """
        hub = make_hub(clock)
        both, sender, recipient = [], [], []
        hub.subscribe("a", "both", both.append)
        hub.subscribe("b", "both", both.append)
        hub.subscribe("a", "sender", sender.append)
        hub.subscribe("b", "recipient", recipient.append)
        update = hub.publish_event("c", ("a", "b"), {"v": 1})
        assert both == sender == recipient == [update]
        assert hub.last_number == update.number
        assert sum(hub.deliveries.values()) == 3

    def test_one_key_heard(self, clock):
        """
        When only one key is heard the event goes there, like publish.
        """
        hub = make_hub(clock)
        received = []
        hub.subscribe("b", "x", received.append)
        update = hub.publish_event("c", ("a", "b"), {})
        assert received == [update]
        assert update.key == "b"
        assert not update.shared

    def test_unheard_is_dropped(self, clock):
        hub = make_hub(clock)
        assert hub.publish_event("c", ("a", "b"), {}) is None
        assert hub.last_number == 0

    def test_same_key_twice(self, clock):
        """
        A transfer to oneself names one key twice: one delivery.
        """
        hub = make_hub(clock)
        received = []
        hub.subscribe("a", "x", received.append)
        hub.publish_event("c", ("a", "a"), {})
        assert len(received) == 1

    def test_kept_in_each_watched_history(self, clock):
        """
        The event is retained once in each watched key's history, marked
        shared there, and the mark goes when it is evicted.
        """
        hub = LocalHub(clock, MessageIds(1, 10**9, 10**6), history_size=1)
        hub.watch("a")
        hub.watch("b")
        update = hub.publish_event("c", ("a", "b"), {})
        assert update.shared
        replays = [hub.replay(key, 0) for key in ("a", "b")]
        assert [list(r) for r in replays] == [[update], [update]]
        assert all(r.shared for r in replays)
        hub.publish("c", "a", {}, retain=False)
        assert not hub.replay("a", 0).shared
        assert hub.replay("b", 0).shared

    def test_leaving_during_fanout(self, clock):
        """
        A subscriber that leaves both keys while the event is delivered
        does not break the fan-out, nor get it twice.
        """
        hub = make_hub(clock)
        received = []

        def leaving(update):
            received.append("leaving")
            hub.unsubscribe("a", "leaving")
            hub.unsubscribe("b", "leaving")

        hub.subscribe("a", "leaving", leaving)
        hub.subscribe("b", "leaving", leaving)
        hub.subscribe("b", "other", lambda u: received.append("other"))
        hub.publish_event("c", ("a", "b"), {})
        assert received == ["leaving", "other"]
