"""
The in-process broker and the fan-out: what a single node shares with
nobody, and how it reaches its subscribers.
"""

import pytest
from twisted.internet.task import Clock

from rustorium.broker.interface import Publication, SubscriptionRecord
from rustorium.broker.local import LocalBroker
from rustorium.fanout import Fanout
from rustorium.hub import MessageIds


def published(d):
    return d.result


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def broker(clock):
    broker = LocalBroker(clock, MessageIds(1, 10**9, 10**6), "node-a",
                         history_size=3, history_age=60.0, resume_window=30.0,
                         max_detached_per_key=2)
    broker.start()
    yield broker
    broker.stop()


def record(subscription_id="sub_1", keys=("market_data:A",), owner=1, since=0):
    return SubscriptionRecord(subscription_id, owner, "market_data", ("A",), keys, since)


def price(key="market_data:A", value="1"):
    return Publication("market_data", key, {"symbol": key, "price": value})


def test_numbers_increase_and_reach_the_fan_out_at_once(broker):
    received = []
    broker.on_updates = received.extend
    first, second = published(broker.publish([price(value="1"), price(value="2")]))
    assert (first.number, second.number) == (1, 2)
    assert received == [first, second]
    assert first.payload.startswith(b'{"id":"msg_1","type":"update","data":{"channel"')


def test_an_event_nobody_hears_is_dropped_unnumbered(broker):
    event = Publication("transaction_updates", "transaction_updates:X", {"status": "pending"},
                        retain=False)
    assert published(broker.publish([event])) == [None]
    broker.listen("transaction_updates:X")
    (update,) = published(broker.publish([event]))
    assert update.number == 1 and not update.conflatable


SENDER, RECIPIENT = "transaction_updates:A", "transaction_updates:B"


def transfer_event(status="pending", also=(RECIPIENT,)):
    return Publication("transaction_updates", SENDER, {"status": status}, retain=False,
                       also=also)


def test_an_event_of_several_keys_is_numbered_once_and_delivered_once(broker):
    """
    A transfer's event belongs to its sender's and its recipient's
    address: one number, one update to the fan-out carrying both keys,
    heard through either of them.
    """
    received = []
    broker.on_updates = received.extend
    assert published(broker.publish([transfer_event()])) == [None]
    broker.listen(RECIPIENT)
    (update,) = published(broker.publish([transfer_event()]))
    assert (update.number, update.key, update.also) == (1, SENDER, (RECIPIENT,))
    assert update.shared and not update.conflatable
    broker.listen(SENDER)
    (both,) = published(broker.publish([transfer_event("confirmed")]))
    assert received == [update, both]
    assert broker.last_number == 2


def test_an_event_of_several_keys_is_in_each_history_once(broker):
    """
    Each key's replay holds the same update: a replay merging both keys
    can keep one per number.
    """
    broker.save_subscription(record("sub_a", keys=(SENDER,)))
    broker.save_subscription(record("sub_b", keys=(RECIPIENT,)))
    (event,) = published(broker.publish([transfer_event()]))
    (own,) = published(broker.publish([transfer_event("own", also=())]))
    result = published(broker.replay({SENDER: 0, RECIPIENT: 0}))
    assert result.updates == {SENDER: [event, own], RECIPIENT: [event]}
    assert result.updates[RECIPIENT][0].also == (RECIPIENT,)
    assert result.lost == {SENDER: None, RECIPIENT: None}
    # Watched through the recipient alone, it is kept there all the same.
    broker.remove_subscription("sub_a")
    (later,) = published(broker.publish([transfer_event("confirmed")]))
    assert published(broker.replay({RECIPIENT: 0})).updates[RECIPIENT] == [event, later]


def test_the_other_keys_of_a_publication_are_normalised():
    """
    Repeats and the publication's own key are dropped (a transfer to
    oneself has one key); a latest value belongs to one key.
    """
    event = transfer_event(also=[RECIPIENT, SENDER, RECIPIENT])
    assert event.also == (RECIPIENT,) and event.keys == (SENDER, RECIPIENT)
    assert transfer_event(also=(SENDER,)).also == ()
    with pytest.raises(ValueError, match="retained"):
        Publication("market_data", "market_data:A", {}, also=("market_data:B",))


def test_current_state_renumbers_the_latest_value(broker):
    broker.publish([price(value="1"), price("market_data:B", "5")])
    state = published(broker.current_state(["market_data:A", "market_data:C"]))
    (snapshot,) = state.snapshots
    assert snapshot.number == 3 and state.horizon == 3
    assert b'"price":"1"' in snapshot.payload


def test_history_is_kept_only_while_watched_and_bounded(broker, clock):
    broker.publish([price(value="0")])
    broker.save_subscription(record())
    for n in range(1, 6):
        broker.publish([price(value=str(n))])
    result = published(broker.replay({"market_data:A": 1}))
    assert [u.number for u in result.updates["market_data:A"]] == [4, 5, 6]
    assert result.lost["market_data:A"] == (2, 3)
    assert result.horizon == 6
    complete = published(broker.replay({"market_data:A": 3}))
    assert complete.lost["market_data:A"] is None
    clock.advance(61)
    aged = published(broker.replay({"market_data:A": 3}))
    assert aged.updates["market_data:A"] == [] and aged.lost["market_data:A"] == (4, 6)


def test_only_the_owner_claims_a_subscription(broker):
    broker.save_subscription(record())
    assert published(broker.claim_subscription("sub_1", owner=2, node="node-a")) is None
    claim = published(broker.claim_subscription("sub_1", owner=1, node="node-a"))
    assert claim.record == record() and claim.attached_to == "node-a"
    broker.detach_subscription("sub_1", 0.0)
    assert published(broker.claim_subscription("sub_1", 1, "node-a")).attached_to is None


def test_find_leaves_the_subscription_as_it_is(broker, clock):
    """
    Finding a subscription checks its owner, attached or detached, and
    neither claims it nor extends its resume window.
    """
    broker.save_subscription(record())
    assert published(broker.find_subscription("sub_1", owner=1)) == record()
    assert published(broker.find_subscription("sub_1", owner=2)) is None
    assert published(broker.find_subscription("sub_nope", owner=1)) is None
    broker.detach_subscription("sub_1", clock.seconds())
    clock.advance(20)
    assert published(broker.find_subscription("sub_1", owner=1)) == record()
    assert broker.detached_count == 1
    clock.advance(11)
    assert published(broker.find_subscription("sub_1", owner=1)) is None


def test_detached_subscriptions_expire_after_the_resume_window(broker, clock):
    broker.save_subscription(record())
    broker.detach_subscription("sub_1", clock.seconds())
    clock.advance(30)
    assert broker.subscription_count == 1
    clock.advance(1)
    assert broker.subscription_count == 0
    assert published(broker.claim_subscription("sub_1", 1, "node-a")) is None


def test_a_key_keeps_its_newest_detached_subscriptions_within_the_cap(broker, clock):
    for n in range(3):
        broker.save_subscription(record(f"sub_{n}"))
    forgotten = [published(broker.detach_subscription(f"sub_{n}", float(n))) for n in range(3)]
    assert forgotten == [[], [], ["sub_0"]]
    assert broker.detached_count == 2
    broker.save_subscription(record("other", owner=2))
    assert published(broker.detach_subscription("other", 3.0)) == []


def test_one_node_one_lease_holder(broker, clock):
    assert published(broker.acquire_lease("sources", "node-a", 4.0))
    broker.announce({"name": "node-a"}, ttl=3.0)
    assert published(broker.nodes()) == [{"name": "node-a"}]
    clock.advance(3.5)
    assert published(broker.nodes()) == []
    seen = []
    broker.on_control = seen.append
    assert published(broker.send_to_node("node-a", {"type": "x"})) == 1
    assert published(broker.send_to_node("node-b", {"type": "x"})) == 0
    assert seen == [{"type": "x"}]


class Sink:
    def __init__(self):
        self.delivered = []
        self.queued = []
        self.flushes = 0

    def deliver(self, update):
        self.delivered.append(update.number)

    def enqueue(self, update):
        self.queued.append(update.number)
        return len(self.queued) == 1

    def flush(self):
        self.flushes += 1


def test_fan_out_delivers_a_batch_in_one_write_per_subscriber(broker):
    fanout = Fanout()
    broker.on_updates = fanout.deliver
    one, two = Sink(), Sink()
    fanout.subscribe("market_data:A", one, one)
    fanout.subscribe("market_data:B", one, one)
    fanout.subscribe("market_data:A", two, two)
    broker.publish([price(value="1")])
    assert (one.delivered, two.delivered) == ([1], [1])
    broker.publish([price(value="2"), price("market_data:B", "3"), price("market_data:C")])
    assert (one.queued, one.flushes) == ([2, 3], 1)
    # A subscriber of one key gets one update of a batch at most: at once.
    assert (two.delivered, two.queued, two.flushes) == ([1, 2], [], 0)
    fanout.unsubscribe("market_data:A", two)
    assert fanout.subscriber_count("market_data:A") == 1
    assert fanout.deliveries["market_data"] == 5


def test_a_subscriber_joins_the_batch_path_with_its_second_key(broker):
    """
    A subscriber delivered at once while it follows one key queues and
    flushes once it follows two (it may then get two updates of one
    batch), and is delivered at once again when back to one.
    """
    fanout = Fanout()
    broker.on_updates = fanout.deliver
    sink, other = Sink(), Sink()
    fanout.subscribe("market_data:A", sink, sink)
    fanout.subscribe("market_data:C", other, other)
    batch = [price(value="1"), price("market_data:B", "2"), price("market_data:C", "9")]
    # Numbered 1, 2, 3 (A, B, C), then 4, 5, 6, then 7, 8, 9.
    broker.publish(batch)
    assert (sink.delivered, sink.queued) == ([1], [])
    fanout.subscribe("market_data:B", sink, sink)
    broker.publish(batch)
    assert (sink.delivered, sink.queued, sink.flushes) == ([1], [4, 5], 1)
    fanout.unsubscribe("market_data:A", sink)
    broker.publish(batch)
    assert (sink.delivered, sink.queued, sink.flushes) == ([1, 8], [4, 5], 1)
    # The other key's subscriber was delivered at once throughout.
    assert (other.delivered, other.queued) == ([3, 6, 9], [])


def test_an_event_of_several_keys_in_a_batch_keeps_its_place(broker):
    """
    In a batch (everything one read from the broker brought), an event of
    several keys is queued behind what came before it for each subscriber,
    not written ahead of it.
    """
    fanout = Fanout()
    broker.on_updates = fanout.deliver
    sink = Sink()
    for key in ("market_data:A", "transaction_updates:x", "transaction_updates:y"):
        fanout.subscribe(key, sink, sink)
        broker.listen(key)
    event = Publication("transaction_updates", "transaction_updates:x", {"v": 1},
                        retain=False, also=("transaction_updates:y",))
    broker.publish([price(value="1"), event, price(value="2")])
    assert sink.delivered == []
    assert sink.queued == [1, 2, 3] and sink.flushes == 1


def test_a_key_left_without_subscribers_during_a_batch(broker):
    """
    A delivery that makes a subscriber leave (a connection closing) may
    leave a later key of the same batch with nobody: the batch goes on.
    """
    fanout = Fanout()
    broker.on_updates = fanout.deliver
    both = Sink()
    fanout.subscribe("market_data:A", both, both)
    fanout.subscribe("market_data:B", both, both)

    class Closer(Sink):
        def deliver(self, update):
            super().deliver(update)
            fanout.unsubscribe("market_data:A", both)
            fanout.unsubscribe("market_data:B", both)

    closer = Closer()
    fanout.subscribe("market_data:A", closer, closer)
    broker.publish([price(value="1"), price("market_data:B", "2")])
    assert closer.delivered == [1]
    assert fanout.subscriber_count("market_data:B") == 0
