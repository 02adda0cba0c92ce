"""
The Redis broker against a real, throwaway Redis server.

Each test starts its own empty C{redis-server} on a free loopback port; a
fake database stands for the durable message id ceiling. The nodes of a
cluster are several brokers in this process, each with its own
connections, as separate processes would have.
"""

import os
import signal
import time

import orjson
import pytest
import pytest_twisted
import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.task import deferLater

from rustorium.broker import (
    BrokerUnavailable,
    Claim,
    IBroker,
    Publication,
    SubscriptionRecord,
)
from rustorium.broker.redis import Keys, RedisBroker
from rustorium.hub import Update, channel_key
from rustorium.prices import PriceTick
from rustorium.timestamps import isoformat

from ..redis_server import RedisServer, free_port

MTK = channel_key("market_data", "MTK/USD")
ETH = channel_key("market_data", "ETH/USD")
ADDRESS = channel_key("transaction_updates", "0xabc")
RECIPIENT = channel_key("transaction_updates", "0xdef")
KEYS = Keys()


class FakeDatabase:
    """
    The database's durable message id ceiling: reservations raise it
    atomically and say by how much.
    """

    def __init__(self, ceiling: int = 1000) -> None:
        self.ceiling = ceiling
        self.reservations: list[int] = []
        self.blocks: list[range] = []

    def take(self, count: int) -> int:
        self.blocks.append(range(self.ceiling + 1, self.ceiling + count + 1))
        self.ceiling += count
        self.reservations.append(count)
        return self.ceiling

    def reserve(self, count: int) -> Deferred:
        return succeed(self.take(count))

    def reserved(self, number: int) -> bool:
        """
        Whether C{number} lies in a block reserved by some caller.
        """
        return any(number in block for block in self.blocks)


class ShiftedClock:
    """
    Real time, moved by C{offset} seconds: a node whose clock runs ahead.
    """

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def seconds(self) -> float:
        return time.time() + self.offset


class Node:
    """
    A broker and what its callbacks received.
    """

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker
        self.batches: list[list[Update]] = []
        self.control: list[dict] = []
        self.events: list[tuple] = []
        broker.on_updates = self.batches.append
        broker.on_control = self.control.append
        broker.on_lost = lambda reason: self.events.append(("lost", reason))
        broker.on_restored = lambda: self.events.append(("restored",))

    @property
    def updates(self) -> list[Update]:
        return [update for batch in self.batches for update in batch]


def prepare(payload: bytes) -> tuple:
    return ("frame", payload)


@pytest.fixture
def database():
    return FakeDatabase()


@pytest.fixture
def nodes(redis_server, database):
    """
    Makes started brokers ("nodes") on the test's Redis; stops them after.
    """
    made: list[RedisBroker] = []

    @inlineCallbacks
    def make(name: str = "node-1", url: str | None = None, start: bool = True, **options):
        options.setdefault("reserve_ids", database.reserve)
        options.setdefault("id_block", 100)
        options.setdefault("retry_delay", lambda attempt: 0.05)
        framing = options.pop("prepare", prepare)
        broker = RedisBroker(
            reactor, url or redis_server.url, name, framing, **options
        )
        made.append(broker)
        node = Node(broker)
        if start:
            yield broker.start()
        return node

    yield make
    for broker in made:
        pytest_twisted.blockon(broker.stop())


@pytest.fixture
def raw(redis_server):
    """
    A plain connection to the test's Redis, to look inside and to break
    things.
    """
    connections = []

    @inlineCallbacks
    def connect():
        connection = yield txredisapi.Connection(
            "127.0.0.1", redis_server.port, reconnect=False, charset=None, convertNumbers=False
        )
        connections.append(connection)
        return connection

    yield connect
    for connection in connections:
        pytest_twisted.blockon(connection.disconnect())


def wait_until(predicate, timeout: float = 10.0) -> Deferred:
    """
    Fires once C{predicate()} is true; fails after C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout

    @inlineCallbacks
    def poll():
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"not true within {timeout} s: {predicate}")
            yield deferLater(reactor, 0.01, lambda: None)

    return poll()


def sleep(seconds: float) -> Deferred:
    return deferLater(reactor, seconds, lambda: None)


def tick(key: str, price: str, retain: bool = True) -> Publication:
    return Publication(key.partition(":")[0], key, {"price": price}, retain)


def transfer(status: str, also: tuple[str, ...] = (RECIPIENT,)) -> Publication:
    """
    A transfer's event: its sender's (C{ADDRESS}) and its recipient's.
    """
    return Publication("transaction_updates", ADDRESS, {"status": status}, retain=False,
                       also=also)


@inlineCallbacks
def failure_of(d: Deferred):
    """
    The exception C{d} fails with (the test fails if it succeeds).
    """
    try:
        result = yield d
    except Exception as e:
        return e
    raise AssertionError(f"expected a failure, got {result!r}")


# Numbering and publishing.


@pytest_twisted.inlineCallbacks
def test_provides_the_interface(nodes):
    node = yield nodes()
    assert IBroker.providedBy(node.broker)
    assert node.broker.epoch


@pytest_twisted.inlineCallbacks
def test_payload_is_numbered_and_stamped(nodes):
    """
    The broker adds the id, the channel and the publisher's timestamp to
    the data, exactly as the in-process hub encodes it.
    """
    clock = ShiftedClock(-3600.0)
    node = yield nodes(clock=clock)
    before = clock.seconds()
    (update,) = yield node.broker.publish([tick(MTK, "1.5")])
    after = clock.seconds()
    message = orjson.loads(update.payload)
    assert message == {
        "id": f"msg_{update.number}",
        "type": "update",
        "data": {"channel": "market_data", "price": "1.5",
                 "timestamp": message["data"]["timestamp"]},
    }
    assert isoformat(before) <= message["data"]["timestamp"] <= isoformat(after)
    assert before <= update.published_at <= after
    assert update.key == MTK and update.conflatable


@pytest_twisted.inlineCallbacks
def test_numbers_increase_across_nodes_and_never_repeat(nodes, database):
    """
    Two nodes publishing batches at once draw from one sequence: every
    number is issued once, each batch is contiguous and increasing, and
    every number is above the database's ceiling at start.
    """
    floor = database.ceiling
    one = yield nodes("node-1")
    two = yield nodes("node-2")
    batches = []
    for i in range(20):
        for node in (one, two):
            batches.append(node.broker.publish(
                [tick(channel_key("market_data", f"M{j}/USD"), str(i)) for j in range(10)]
            ))
    results = yield gatherResults(batches)
    numbers = [update.number for batch in results for update in batch]
    assert len(numbers) == 400 == len(set(numbers))
    assert min(numbers) > floor
    assert all(database.reserved(number) for number in numbers)
    for batch in results:
        batch_numbers = [update.number for update in batch]
        assert batch_numbers == list(range(batch_numbers[0], batch_numbers[0] + 10))
    # Each node's batches, in the order it sent them, are numbered in order.
    for start in (0, 1):
        firsts = [results[i][0].number for i in range(start, 40, 2)]
        assert firsts == sorted(firsts)


@pytest_twisted.inlineCallbacks
def test_reserves_blocks_as_the_ceiling_is_reached(nodes, database):
    """
    With a tiny block, numbering keeps reserving blocks in the database
    (a batch larger than a block reserves enough for itself), and the
    numbers stay unique, within reserved blocks, and in each node's order
    of publication even when a publication had to wait for a block.
    """
    one = yield nodes("node-1", id_block=3)
    two = yield nodes("node-2", id_block=3)
    seeded = len(database.reservations)
    calls = {one: [], two: []}
    for i in range(10):
        for node, items in (
            (one, [tick(MTK, str(i)), tick(ETH, str(i))]),
            (two, [tick(MTK, str(i))] * (5 if i == 5 else 1)),
            (one, [tick(ETH, str(i))]),
        ):
            calls[node].append(node.broker.publish(items))
        calls[two].append(two.broker.current_state([MTK, ETH]))
    one_results = yield gatherResults(calls[one])
    two_results = yield gatherResults(calls[two])
    one_numbers = [u.number for batch in one_results for u in batch]
    two_numbers = []
    snapshot_numbers = []
    for result in two_results:
        if isinstance(result, list):
            two_numbers += [u.number for u in result]
        else:
            snapshot_numbers += [s.number for s in result.snapshots]
            assert result.horizon == max(s.number for s in result.snapshots)
    numbers = one_numbers + two_numbers + snapshot_numbers
    # A snapshot exists only for a key published before the read, and the
    # reads race the publications (they are separate calls): two per read
    # at most.
    assert len(snapshot_numbers) <= 20
    assert len(numbers) == len(set(numbers)) == 10 * 3 + 14 + len(snapshot_numbers)
    # Each node's publications are numbered in the order it made them.
    assert one_numbers == sorted(one_numbers) and two_numbers == sorted(two_numbers)
    assert len(database.reservations) > seeded + 3
    assert all(database.reserved(number) for number in numbers)


@pytest_twisted.inlineCallbacks
def test_data_that_cannot_be_encoded_fails_the_publication(nodes):
    node = yield nodes()
    error = yield failure_of(node.broker.publish([Publication("c", "c:k", {"x": object()})]))
    assert isinstance(error, TypeError)
    (update,) = yield node.broker.publish([tick(MTK, "1")])
    assert update.number > 0


@pytest_twisted.inlineCallbacks
def test_one_node_numbers_contiguously_across_blocks(nodes, database):
    """
    The next block is reserved before the current one runs out, and
    extends it: a lone node wastes no numbers.
    """
    node = yield nodes(id_block=10)
    seeded = len(database.reservations)
    numbers = []
    for i in range(35):
        (update,) = yield node.broker.publish([tick(MTK, str(i))])
        numbers.append(update.number)
    assert numbers == list(range(numbers[0], numbers[0] + 35))
    assert len(database.reservations) >= seeded + 3
    assert all(database.reserved(number) for number in numbers)


@pytest_twisted.inlineCallbacks
def test_listener_receives_updates_in_order_in_batches(nodes):
    """
    A node listening to keys receives another node's updates of those
    keys, framed once, in number order; a batch published together arrives
    in one call.
    """
    publisher = yield nodes("node-1")
    listener = yield nodes("node-2")
    yield listener.broker.listen(MTK)
    yield listener.broker.listen(ADDRESS)
    published = yield publisher.broker.publish(
        [tick(MTK, "1"), tick(ETH, "1"), tick(ADDRESS, "sent", retain=False), tick(MTK, "2")]
    )
    yield wait_until(lambda: len(listener.updates) == 3)
    assert len(listener.batches) == 1
    received = listener.batches[0]
    expected = [published[0], published[2], published[3]]
    assert [u.number for u in received] == [u.number for u in expected]
    assert [u.payload for u in received] == [u.payload for u in expected]
    assert [u.key for u in received] == [MTK, ADDRESS, MTK]
    assert [u.frame for u in received] == [("frame", u.payload) for u in expected]
    assert [u.conflatable for u in received] == [True, False, True]
    assert received[0].published_at == pytest.approx(published[0].published_at)


@pytest_twisted.inlineCallbacks
def test_updates_of_many_publishers_arrive_in_number_order(nodes):
    publishers = yield gatherResults([nodes(f"node-{i}") for i in range(3)])
    listener = yield nodes("listener")
    yield listener.broker.listen(MTK)
    yield gatherResults([
        node.broker.publish([tick(MTK, str(i))]) for i in range(30) for node in publishers
    ])
    yield wait_until(lambda: len(listener.updates) == 90)
    numbers = [u.number for u in listener.updates]
    assert numbers == sorted(numbers) and len(set(numbers)) == 90


@pytest_twisted.inlineCallbacks
def test_listening_is_counted(nodes):
    """
    Two listens of a key make one subscription; the key is heard until the
    second unlisten.
    """
    publisher = yield nodes("node-1")
    listener = yield nodes("node-2")
    yield gatherResults([listener.broker.listen(MTK), listener.broker.listen(MTK)])
    assert listener.broker.listening == {MTK: 2}
    listener.broker.unlisten(MTK)
    yield publisher.broker.publish([tick(MTK, "1")])
    yield wait_until(lambda: len(listener.updates) == 1)
    listener.broker.unlisten(MTK)
    assert listener.broker.listening == {}
    yield listener.broker.listen(ETH)
    yield publisher.broker.publish([tick(MTK, "2"), tick(ETH, "2")])
    yield wait_until(lambda: len(listener.updates) == 2)
    assert [u.key for u in listener.updates] == [MTK, ETH]


@pytest_twisted.inlineCallbacks
def test_an_event_of_several_keys_reaches_each_node_once(nodes):
    """
    One number for a transfer's event; a node listening to both addresses
    receives it once, between its neighbours, and so does a node listening
    to the recipient alone: each with both keys.
    """
    publisher = yield nodes("node-1")
    both = yield nodes("node-2")
    recipient = yield nodes("node-3")
    for key in (MTK, ADDRESS, RECIPIENT):
        yield both.broker.listen(key)
    yield recipient.broker.listen(RECIPIENT)
    published = yield publisher.broker.publish(
        [tick(MTK, "1"), transfer("pending"), tick(MTK, "2"), transfer("own", also=())]
    )
    first, event = published[:2]
    assert [u.number for u in published] == list(range(first.number, first.number + 4))
    assert (event.key, event.also, event.conflatable) == (ADDRESS, (RECIPIENT,), False)
    yield wait_until(lambda: len(both.updates) == 4 and len(recipient.updates) == 1)
    yield sleep(0.1)
    assert [u.number for u in both.updates] == [u.number for u in published]
    received = both.updates[1]
    assert (received.key, received.also, received.conflatable) == (ADDRESS, (RECIPIENT,), False)
    assert received.payload == event.payload
    assert received.frame == ("frame", event.payload)
    assert received.published_at == pytest.approx(event.published_at)
    assert both.updates[3].also == ()
    (heard,) = recipient.updates
    assert (heard.number, heard.key, heard.also) == (event.number, ADDRESS, (RECIPIENT,))
    assert heard.payload == event.payload


@pytest_twisted.inlineCallbacks
def test_the_copies_of_an_event_are_merged_across_reads(nodes):
    """
    The copies of an event of several keys are adjacent but may be split
    between two reads of the subscriber connection: the second is still
    a repeat.
    """
    node = yield nodes()
    broker = node.broker
    yield broker.listen(ADDRESS)
    yield broker.listen(RECIPIENT)
    keys = orjson.dumps([ADDRESS, RECIPIENT])
    message = b'7 1.5 m %s\n{"id":"msg_7"}' % keys
    broker.message(KEYS.updates(ADDRESS).encode(), message)
    broker.received()
    broker.message(KEYS.updates(RECIPIENT).encode(), message)
    broker.message(KEYS.updates(RECIPIENT).encode(), b'8 1.5 0 {"id":"msg_8"}')
    broker.received()
    assert [[(u.number, u.key, u.also) for u in batch] for batch in node.batches] == [
        [(7, ADDRESS, (RECIPIENT,))], [(8, RECIPIENT, ())],
    ]


# History and replay.


@pytest_twisted.inlineCallbacks
def test_replay_returns_everything_after_the_start(nodes):
    node = yield nodes()
    published = []
    for i in range(5):
        published += (yield node.broker.publish([tick(MTK, str(i)), tick(ETH, str(i))]))
    mtk = [u for u in published if u.key == MTK]
    eth = [u for u in published if u.key == ETH]
    result = yield node.broker.replay({MTK: mtk[0].number - 1, ETH: eth[2].number})
    assert [u.number for u in result.updates[MTK]] == [u.number for u in mtk]
    assert [u.payload for u in result.updates[MTK]] == [u.payload for u in mtk]
    assert [u.frame for u in result.updates[MTK]] == [("frame", u.payload) for u in mtk]
    assert [u.number for u in result.updates[ETH]] == [u.number for u in eth[3:]]
    assert result.lost == {MTK: None, ETH: None}
    assert result.horizon == published[-1].number
    assert result.count == 7
    (later,) = yield node.broker.publish([tick(MTK, "x")])
    assert later.number == result.horizon + 1


@pytest_twisted.inlineCallbacks
def test_replays_share_the_updates_a_node_received_or_read(nodes):
    """
    Many clients resuming after the same message get the same update
    objects, read and framed once: those the node received live, and those
    an earlier replay read.
    """
    framed = []

    def counting(payload):
        framed.append(payload)
        return prepare(payload)

    publisher = yield nodes("node-1")
    node = yield nodes("node-2", prepare=counting)
    old = yield publisher.broker.publish([tick(MTK, "1"), tick(MTK, "2")])
    yield node.broker.listen(MTK)
    live = yield publisher.broker.publish([tick(MTK, "3"), transfer("pending")])
    yield wait_until(lambda: len(node.updates) == 1)
    first = yield node.broker.replay({MTK: old[0].number - 1, ADDRESS: old[0].number - 1})
    again = yield node.broker.replay({MTK: old[0].number - 1, ADDRESS: old[0].number - 1})
    assert [u.number for u in first.updates[MTK]] == [u.number for u in (*old, live[0])]
    assert first.updates[MTK][2] is node.updates[0], "the live update, not a copy"
    assert all(a is b for a, b in zip(first.updates[MTK], again.updates[MTK], strict=True))
    assert again.updates[ADDRESS][0] is first.updates[ADDRESS][0]
    assert (again.updates[ADDRESS][0].key, again.updates[ADDRESS][0].also) == (
        ADDRESS, (RECIPIENT,))
    assert sorted(framed) == sorted(u.payload for u in (*old, *live)), "each framed once"


@pytest_twisted.inlineCallbacks
def test_replay_says_exactly_what_was_evicted(nodes):
    """
    History is trimmed to its size; a replay reports a loss only when an
    update of the key after the start was evicted, and then exactly from
    the start to the last one evicted, even with other keys' numbers
    between.
    """
    node = yield nodes(history_size=2)
    a1, b1 = yield node.broker.publish([tick(MTK, "a1"), tick(ETH, "b1")])
    (a2,) = yield node.broker.publish([tick(MTK, "a2")])
    (b2,) = yield node.broker.publish([tick(ETH, "b2")])
    (a3,) = yield node.broker.publish([tick(MTK, "a3")])
    # Kept: a2 and a3; a1 was evicted.
    result = yield node.broker.replay({MTK: b1.number})
    assert [u.number for u in result.updates[MTK]] == [a2.number, a3.number]
    assert result.lost[MTK] is None  # nothing after b1 is missing: a1 came before
    result = yield node.broker.replay({MTK: a1.number - 1})
    assert [u.number for u in result.updates[MTK]] == [a2.number, a3.number]
    assert result.lost[MTK] == (a1.number, a1.number)
    result = yield node.broker.replay({MTK: 0})
    assert result.lost[MTK] == (1, a1.number)
    result = yield node.broker.replay({MTK: a3.number})
    assert result.updates[MTK] == [] and result.lost[MTK] is None
    assert result.horizon == a3.number
    assert b2.number < a3.number


@pytest_twisted.inlineCallbacks
def test_replays_asked_for_together_share_one_read(nodes):
    """
    Replays asked for in one turn (a reconnect storm) share one script
    call, and each gets exactly what it would alone: its keys, from its
    own start, its own losses.
    """
    node = yield nodes(history_size=2)
    a1, b1 = yield node.broker.publish([tick(MTK, "a1"), tick(ETH, "b1")])
    (a2,) = yield node.broker.publish([tick(MTK, "a2")])
    (b2,) = yield node.broker.publish([tick(ETH, "b2")])
    (a3,) = yield node.broker.publish([tick(MTK, "a3")])
    asked = [{MTK: b1.number}, {MTK: a1.number - 1, ETH: b1.number - 1}, {ETH: b2.number},
             {MTK: a3.number, ETH: 0}]
    alone = []
    for starts in asked:
        alone.append((yield node.broker.replay(starts)))
    reads = node.broker.replay_reads
    together = yield gatherResults([node.broker.replay(starts) for starts in asked])
    assert node.broker.replay_reads - reads == 1
    for one, shared in zip(alone, together, strict=True):
        assert {k: [u.number for u in us] for k, us in shared.updates.items()} == {
            k: [u.number for u in us] for k, us in one.updates.items()}
        assert shared.lost == one.lost
        assert shared.horizon == one.horizon == a3.number
    assert together[1].lost == {MTK: (a1.number, a1.number), ETH: None}
    assert [u.number for u in together[1].updates[MTK]] == [a2.number, a3.number]
    assert [u.number for u in together[3].updates[ETH]] == [b1.number, b2.number]
    assert together[3].lost[ETH] is not None, "from before the epoch: a possible gap"


@pytest_twisted.inlineCallbacks
def test_replay_drops_updates_older_than_the_age_bound(nodes):
    """
    Updates older than the history's age count as evicted, whoever
    published them.
    """
    old = yield nodes("old", clock=ShiftedClock(-200.0))
    new = yield nodes("new", history_age=100.0)
    before = yield old.broker.publish([tick(MTK, "old1"), tick(MTK, "old2")])
    after = yield new.broker.publish([tick(MTK, "new1"), tick(MTK, "new2")])
    start = before[0].number - 1
    result = yield new.broker.replay({MTK: start})
    assert [u.number for u in result.updates[MTK]] == [u.number for u in after]
    assert result.lost[MTK] == (start + 1, before[1].number)
    # Nothing at all kept: the key's top says what is missing.
    future = yield nodes("future", clock=ShiftedClock(+1000.0), history_age=100.0)
    result = yield future.broker.replay({MTK: start})
    assert result.updates[MTK] == []
    assert result.lost[MTK] == (start + 1, after[1].number)


@pytest_twisted.inlineCallbacks
def test_history_expires_after_silence_but_the_top_stays(nodes, raw):
    """
    A key's history goes after history-age of silence; its top stays, so
    a replay still tells whether the client missed something.
    """
    node = yield nodes(history_age=30.0)
    (update,) = yield node.broker.publish([tick(MTK, "1")])
    redis = yield raw()
    ttl = yield redis.execute_command("PTTL", KEYS.history(MTK))
    assert 29_000 < ttl <= 30_000
    top_ttl = yield redis.execute_command("PTTL", KEYS.top(MTK))
    assert top_ttl > 3600_000
    yield redis.execute_command("DEL", KEYS.history(MTK))
    result = yield node.broker.replay({MTK: update.number - 1})
    assert result.updates[MTK] == []
    assert result.lost[MTK] == (update.number, update.number)
    result = yield node.broker.replay({MTK: update.number})
    assert result.lost[MTK] is None


@pytest_twisted.inlineCallbacks
def test_an_event_of_several_keys_is_in_each_history(nodes, raw):
    """
    Each key's replay holds the event with all its keys, so that a merged
    replay keeps one per number; each key's history links it to that
    key's own previous update, so losses are told per key.
    """
    node = yield nodes(history_size=1)
    (before,) = yield node.broker.publish([transfer("before", also=())])
    (event,) = yield node.broker.publish([transfer("pending")])
    start = event.number - 1
    result = yield node.broker.replay({ADDRESS: start, RECIPIENT: start})
    for key in (ADDRESS, RECIPIENT):
        (replayed,) = result.updates[key]
        assert (replayed.number, replayed.key, replayed.also) == (
            event.number, ADDRESS, (RECIPIENT,))
        assert replayed.payload == event.payload and not replayed.conflatable
    assert result.lost == {ADDRESS: None, RECIPIENT: None}
    redis = yield raw()
    ((_, fields),) = yield redis.execute_command("XRANGE", KEYS.history(ADDRESS), "-", "+")
    assert fields[2:4] == [b"v", str(before.number).encode()]
    assert fields[8:] == [b"k", orjson.dumps([ADDRESS, RECIPIENT])]
    ((_, fields),) = yield redis.execute_command("XRANGE", KEYS.history(RECIPIENT), "-", "+")
    assert fields[2:4] == [b"v", b"0"]
    assert (yield redis.execute_command("GET", KEYS.top(RECIPIENT))) == str(
        event.number).encode()
    # The recipient's next update evicts the event from its history alone.
    (later,) = yield node.broker.publish([
        Publication("transaction_updates", RECIPIENT, {"status": "x"}, retain=False)
    ])
    result = yield node.broker.replay({ADDRESS: start, RECIPIENT: start})
    assert [u.number for u in result.updates[ADDRESS]] == [event.number]
    assert [(u.number, u.also) for u in result.updates[RECIPIENT]] == [(later.number, ())]
    assert result.lost == {ADDRESS: None, RECIPIENT: (event.number, event.number)}


@pytest.mark.parametrize("read", ["replay", "current_state"])
@pytest_twisted.inlineCallbacks
def test_a_read_fires_after_the_updates_it_covers_arrived(nodes, read):
    """
    A replay or current state comes on the command connection, the live
    updates on the subscriber connection, which may lag: the read fires
    only once every update numbered up to its horizon has reached
    on_updates, so that a feed holding live updates back until the read
    never gets one of them after it (sent twice, or out of order). Here
    the subscriber connection stops reading for a moment.
    """
    publisher = yield nodes("node-1")
    listener = yield nodes("node-2")
    yield listener.broker.listen(MTK)
    (first,) = yield publisher.broker.publish([tick(MTK, "1")])
    yield wait_until(lambda: len(listener.updates) == 1)
    transport = listener.broker._subscriber.protocol.transport
    transport.pauseProducing()
    (late,) = yield publisher.broker.publish([tick(MTK, "2")])
    reactor.callLater(0.3, transport.resumeProducing)
    if read == "replay":
        d = listener.broker.replay({MTK: first.number})
    else:
        d = listener.broker.current_state([MTK])
    arrived = []
    d.addCallback(lambda result: arrived.extend(u.number for u in listener.updates) or result)
    result = yield d
    assert result.horizon >= late.number
    assert arrived == [first.number, late.number]


@pytest_twisted.inlineCallbacks
def test_replay_of_a_key_never_published(nodes):
    node = yield nodes()
    yield node.broker.publish([tick(MTK, "1")])
    state = yield node.broker.current_state([])
    result = yield node.broker.replay({ADDRESS: state.horizon})
    assert result.updates == {ADDRESS: []}
    assert result.lost == {ADDRESS: None}


# Current state.


@pytest_twisted.inlineCallbacks
def test_current_state_renumbers_latest_values(nodes):
    """
    Snapshots carry each key's latest retained data under fresh numbers,
    above everything published before and at or below the horizon; the
    next update is numbered above the horizon.
    """
    node = yield nodes()
    published = yield node.broker.publish(
        [tick(MTK, "1"), tick(ETH, "1"), tick(MTK, "2"), tick(ADDRESS, "event", retain=False)]
    )
    state = yield node.broker.current_state([ADDRESS, MTK, "market_data:NONE/USD", ETH])
    assert [s.key for s in state.snapshots] == [MTK, ETH]
    numbers = [s.number for s in state.snapshots]
    assert published[-1].number < numbers[0] < numbers[1] == state.horizon
    mtk = orjson.loads(state.snapshots[0].payload)
    assert mtk == {**orjson.loads(published[2].payload), "id": f"msg_{numbers[0]}"}
    assert state.snapshots[0].frame == ("frame", state.snapshots[0].payload)
    assert all(s.conflatable for s in state.snapshots)
    (later,) = yield node.broker.publish([tick(MTK, "3")])
    assert later.number == state.horizon + 1
    empty = yield node.broker.current_state([ADDRESS])
    assert empty.snapshots == [] and empty.horizon == later.number


# Epochs: Redis losing its data.


@pytest_twisted.inlineCallbacks
def test_restart_empty_starts_a_new_epoch_above_every_number(nodes, redis_server, database):
    """
    Redis killed and restarted empty: the link comes back, a new epoch
    starts above every number issued before, and a replay from before it
    reports the loss.
    """
    node = yield nodes("node-1")
    other = yield nodes("node-2")
    yield other.broker.listen(MTK)
    published = yield node.broker.publish([tick(MTK, str(i)) for i in range(10)])
    old_epoch = node.broker.epoch
    highest = published[-1].number
    redis_server.restart()
    yield wait_until(lambda: ("restored",) in node.events and ("restored",) in other.events)
    assert node.events[0][0] == "lost" and other.events[0][0] == "lost"
    (update,) = yield node.broker.publish([tick(MTK, "after")])
    assert update.number > highest
    assert node.broker.epoch != old_epoch
    assert other.broker.epoch == node.broker.epoch
    result = yield node.broker.replay({MTK: highest - 5})
    assert [u.number for u in result.updates[MTK]] == [update.number]
    low, high = result.lost[MTK]
    assert low == highest - 4 and high >= highest
    # Listening resumed on the new server.
    yield wait_until(lambda: other.updates and other.updates[-1].number == update.number)


@pytest_twisted.inlineCallbacks
def test_data_flushed_on_a_live_server_changes_the_epoch(nodes, raw, database):
    """
    Data vanishing without a restart (FLUSHALL): the next numbering starts
    a new epoch, above every earlier number, and every node hears that it
    may have missed updates.
    """
    node = yield nodes("node-1")
    other = yield nodes("node-2")
    published = yield node.broker.publish([tick(MTK, "1")])
    old_epoch = node.broker.epoch
    redis = yield raw()
    yield redis.execute_command("FLUSHALL")
    # Reading finds the data gone too, and says what may be missing.
    result = yield node.broker.replay({MTK: published[0].number - 1})
    assert result.updates[MTK] == []
    assert result.lost[MTK][0] == published[0].number
    assert result.lost[MTK][1] >= published[0].number
    (update,) = yield node.broker.publish([tick(MTK, "2")])
    assert update.number > published[0].number
    assert node.broker.epoch != old_epoch
    yield wait_until(lambda: other.broker.epoch == node.broker.epoch)
    assert other.events == [("lost", other.events[0][1]), ("restored",)]
    assert "epoch" in other.events[0][1]
    assert [e[0] for e in node.events] == ["lost", "restored"]


@pytest_twisted.inlineCallbacks
def test_redis_restarted_from_a_dump_starts_a_new_epoch(nodes, raw, database):
    """
    A Redis process the epoch was not made on (restarted from a dump that
    may lack the latest numbers) starts a new epoch above every number
    ever reserved, on reconnect.
    """
    node = yield nodes()
    yield node.broker.publish([tick(MTK, "1")])
    old_epoch = node.broker.epoch
    redis = yield raw()
    yield redis.execute_command("HSET", KEYS.epoch, "run", "another-process")
    yield redis.execute_command("SET", KEYS.counter, "5")  # as if the dump were old
    ceiling = database.ceiling
    yield redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    yield redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    yield wait_until(lambda: ("restored",) in node.events)
    assert node.broker.epoch != old_epoch
    (update,) = yield node.broker.publish([tick(MTK, "2")])
    assert update.number > ceiling


@pytest_twisted.inlineCallbacks
def test_a_node_seeding_late_never_reissues_numbers(nodes, raw, database):
    """
    Node A reserves a block to seed an empty Redis, but is slow to use it;
    node B reserves the next block, seeds with it and publishes; Redis
    loses its data; A seeds with its older block. When A's block runs
    out, it must jump over B's block (whose numbers went out in the lost
    epoch), not continue into it.
    """
    held: list = []

    def slow(count):
        ceiling = database.take(count)
        if not held:
            held.append(Deferred())
            return held[0].addCallback(lambda _: ceiling)
        return ceiling

    a = yield nodes("node-a", start=False, reserve_ids=slow, id_block=10)
    starting = a.broker.start()
    yield wait_until(lambda: held)
    b = yield nodes("node-b", id_block=10)
    b_numbers = []
    for i in range(5):
        (update,) = yield b.broker.publish([tick(MTK, str(i))])
        b_numbers.append(update.number)
    redis = yield raw()
    yield redis.execute_command("FLUSHALL")
    held[0].callback(None)
    yield starting
    a_numbers = []
    for i in range(25):
        (update,) = yield a.broker.publish([tick(ETH, str(i))])
        a_numbers.append(update.number)
    assert a_numbers[0] < b_numbers[0]  # A's block came first
    assert not set(a_numbers) & set(b_numbers)
    assert a_numbers == sorted(a_numbers)
    assert all(database.reserved(number) for number in a_numbers + b_numbers)


@pytest_twisted.inlineCallbacks
def test_nodes_starting_together_on_an_empty_redis_share_one_epoch(nodes, database):
    made = yield gatherResults([nodes(f"node-{i}", start=False) for i in range(4)])
    brokers = [node.broker for node in made]
    yield gatherResults([broker.start() for broker in brokers])
    assert len({broker.epoch for broker in brokers}) == 1
    results = yield gatherResults([broker.publish([tick(MTK, "1")] * 5) for broker in brokers])
    numbers = [u.number for batch in results for u in batch]
    assert len(set(numbers)) == 20


# Links: reconnecting and failing fast.


@pytest_twisted.inlineCallbacks
def test_commands_fail_fast_while_redis_is_down(nodes, redis_server):
    node = yield nodes()
    yield node.broker.listen(MTK)
    redis_server.kill()
    yield wait_until(lambda: node.events)
    assert node.events[0][0] == "lost"
    for d in (
        node.broker.publish([tick(MTK, "1")]),
        node.broker.listen(ETH),
        node.broker.current_state([MTK]),
        node.broker.replay({MTK: 0}),
        node.broker.claim_subscription("sub_x", 1, "node-1"),
        node.broker.nodes(),
    ):
        assert d.called  # failed at once, not after a wait
        error = yield failure_of(d)
        assert isinstance(error, BrokerUnavailable)
        assert str(redis_server.port) in str(error)
    redis_server.start()
    yield wait_until(lambda: ("restored",) in node.events)
    assert node.broker.listening == {MTK: 1}
    (update,) = yield node.broker.publish([tick(MTK, "back")])
    yield wait_until(lambda: node.updates and node.updates[-1].number == update.number)


@pytest_twisted.inlineCallbacks
def test_a_dropped_subscriber_link_is_reported_and_restored(nodes, raw):
    """
    Only the pub/sub connections drop: updates may have been missed, so
    the owners hear of it; once back, every key is listened to again.
    """
    publisher = yield nodes("node-1")
    listener = yield nodes("node-2")
    yield listener.broker.listen(MTK)
    yield listener.broker.listen(ETH)
    redis = yield raw()
    yield redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    yield wait_until(lambda: ("restored",) in listener.events)
    assert [e[0] for e in listener.events] == ["lost", "restored"]
    assert listener.broker.listening == {MTK: 1, ETH: 1}
    yield publisher.broker.publish([tick(MTK, "1"), tick(ETH, "1")])
    yield wait_until(lambda: len(listener.updates) == 2)


@pytest_twisted.inlineCallbacks
def test_stopping_reports_no_loss(nodes):
    node = yield nodes()
    yield node.broker.listen(MTK)
    yield node.broker.stop()
    yield sleep(0.1)
    assert node.events == []
    error = yield failure_of(node.broker.publish([tick(MTK, "1")]))
    assert isinstance(error, BrokerUnavailable)


@pytest_twisted.inlineCallbacks
def test_a_hung_redis_fails_commands_after_the_reply_timeout(nodes, redis_server):
    node = yield nodes(reply_timeout=0.3)
    old = node.broker._commands.protocol
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        error = yield failure_of(node.broker.publish([tick(MTK, "1")]))
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    assert isinstance(error, BrokerUnavailable)
    # The timed-out connection is replaced.
    yield wait_until(lambda: node.broker._commands.protocol not in (None, old))
    (update,) = yield node.broker.publish([tick(MTK, "2")])
    assert update.number > 0


@pytest_twisted.inlineCallbacks
def test_a_listener_notices_a_redis_that_stopped_answering(nodes, redis_server):
    """
    A node that only listens sends nothing on its pub/sub connection, so
    a Redis gone silent (frozen here; a network cut looks the same: no
    reset, nothing) would leave it waiting for updates that never come.
    Its PINGs find out within the keepalive and the reply timeout: the
    loss is reported (the node closes its clients so they resume
    elsewhere), and the return.
    """
    node = yield nodes(reply_timeout=0.3)
    yield node.broker.listen(MTK)
    os.kill(redis_server.process.pid, signal.SIGSTOP)
    try:
        yield wait_until(lambda: node.events, timeout=5)
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    assert node.events[0][0] == "lost"
    yield wait_until(lambda: ("restored",) in node.events)
    assert node.broker.listening == {MTK: 1}


@pytest_twisted.inlineCallbacks
def test_start_fails_when_redis_cannot_be_reached(nodes):
    node = yield nodes(url=f"redis://127.0.0.1:{free_port()}/0", start=False)
    error = yield failure_of(node.broker.start())
    assert isinstance(error, BrokerUnavailable)
    assert "could not link to Redis" in str(error)


@pytest_twisted.inlineCallbacks
def test_other_database_numbers(nodes, redis_server, raw):
    """
    The URL's database number is used: a broker on database 3 leaves
    database 0 alone.
    """
    node = yield nodes(url=f"redis://127.0.0.1:{redis_server.port}/3")
    yield node.broker.publish([tick(MTK, "1")])
    redis = yield raw()
    assert (yield redis.execute_command("EXISTS", KEYS.counter)) == 0
    yield redis.execute_command("SELECT", 3)
    assert (yield redis.execute_command("EXISTS", KEYS.counter)) == 1


@pytest_twisted.inlineCallbacks
def test_password_from_the_url(nodes, tmp_path):
    server = RedisServer(tmp_path, "--requirepass", "s3cret")
    server.start()
    try:
        node = yield nodes(url=f"redis://:s3cret@127.0.0.1:{server.port}/0")
        yield node.broker.listen(MTK)
        (update,) = yield node.broker.publish([tick(MTK, "1")])
        yield wait_until(lambda: node.updates)
        assert node.updates[0].number == update.number
        wrong = yield nodes(url=f"redis://:wrong@127.0.0.1:{server.port}/0", start=False)
        error = yield failure_of(wrong.broker.start())
        assert isinstance(error, BrokerUnavailable)
        assert "WRONGPASS" in str(error)
        yield node.broker.stop()
    finally:
        server.kill()


# Resumable subscriptions.


def record(subscription_id: str = "sub_1", owner: int = 7) -> SubscriptionRecord:
    return SubscriptionRecord(
        subscription_id, owner, "market_data", ("ETH/USD", "MTK/USD"), (ETH, MTK), 1234
    )


@pytest_twisted.inlineCallbacks
def test_claim_checks_the_owner_and_says_where_it_was(nodes):
    one = yield nodes("node-1")
    two = yield nodes("node-2")
    yield one.broker.save_subscription(record())
    assert (yield two.broker.claim_subscription("sub_1", 8, "node-2")) is None
    assert (yield two.broker.claim_subscription("sub_nope", 7, "node-2")) is None
    claim = yield two.broker.claim_subscription("sub_1", 7, "node-2")
    assert claim == Claim(record(), "node-1")
    # Node 1 noticing its connection closed must not detach it from node 2.
    assert (yield one.broker.detach_subscription("sub_1", time.time())) == []
    assert not (yield one.broker.remove_subscription("sub_1"))
    claim = yield one.broker.claim_subscription("sub_1", 7, "node-1")
    assert claim.attached_to == "node-2"
    yield one.broker.detach_subscription("sub_1", time.time())
    claim = yield two.broker.claim_subscription("sub_1", 7, "node-2")
    assert claim == Claim(record(), None)
    assert (yield two.broker.remove_subscription("sub_1"))
    assert (yield one.broker.claim_subscription("sub_1", 7, "node-1")) is None


@pytest_twisted.inlineCallbacks
def test_claims_of_one_turn_share_one_script_call(nodes):
    """
    Claims made together (a reconnect storm) go in one call, each with
    the outcome it would have alone, in order: the same subscription twice
    is the second time this node's own.
    """
    one = yield nodes("node-1")
    two = yield nodes("node-2")
    yield one.broker.save_subscription(record("sub_1"))
    yield one.broker.save_subscription(record("sub_2", owner=9))
    yield one.broker.detach_subscription("sub_2", time.time())
    calls = []
    evaluate = two.broker._commands.evaluate

    def counted(script, keys, args):
        calls.append(script.name)
        return evaluate(script, keys, args)

    two.broker._commands.evaluate = counted
    claims = yield gatherResults([
        two.broker.claim_subscription("sub_1", 7, "node-2"),
        two.broker.claim_subscription("sub_2", 7, "node-2"),
        two.broker.claim_subscription("sub_2", 9, "node-2"),
        two.broker.claim_subscription("sub_nope", 7, "node-2"),
        two.broker.claim_subscription("sub_1", 7, "node-2"),
    ])
    assert calls == ["claim"]
    assert claims == [Claim(record("sub_1"), "node-1"), None,
                      Claim(record("sub_2", owner=9), None), None,
                      Claim(record("sub_1"), "node-2")]


@pytest_twisted.inlineCallbacks
def test_find_leaves_the_subscription_as_it_is(nodes, raw):
    """
    Any node finds a subscription of its owner, attached or detached,
    without claiming it or extending its resume window.
    """
    one = yield nodes("node-1", resume_window=60.0)
    two = yield nodes("node-2")
    yield one.broker.save_subscription(record())
    assert (yield two.broker.find_subscription("sub_1", 7)) == record()
    assert (yield two.broker.find_subscription("sub_1", 8)) is None
    assert (yield two.broker.find_subscription("sub_nope", 7)) is None
    claim = yield two.broker.claim_subscription("sub_1", 7, "node-2")
    assert claim.attached_to == "node-1"
    yield two.broker.detach_subscription("sub_1", time.time())
    redis = yield raw()
    before = yield redis.execute_command("PTTL", KEYS.subscription("sub_1"))
    yield sleep(0.05)
    assert (yield one.broker.find_subscription("sub_1", 7)) == record()
    after = yield redis.execute_command("PTTL", KEYS.subscription("sub_1"))
    assert 0 < after < before
    claim = yield one.broker.claim_subscription("sub_1", 7, "node-1")
    assert claim == Claim(record(), None)


@pytest_twisted.inlineCallbacks
def test_detached_subscriptions_expire_after_the_resume_window(nodes):
    node = yield nodes(resume_window=0.3)
    yield node.broker.save_subscription(record("sub_1"))
    yield node.broker.save_subscription(record("sub_2"))
    yield node.broker.detach_subscription("sub_1", time.time())
    yield sleep(0.5)
    assert (yield node.broker.claim_subscription("sub_1", 7, "node-1")) is None
    # Attached ones do not expire.
    assert (yield node.broker.claim_subscription("sub_2", 7, "node-1")) is not None


@pytest_twisted.inlineCallbacks
def test_detached_subscriptions_are_capped_per_owner(nodes):
    node = yield nodes(max_detached_per_key=2)
    for i in range(4):
        yield node.broker.save_subscription(record(f"sub_{i}", owner=7))
    yield node.broker.save_subscription(record("sub_other", owner=8))
    now = time.time()
    assert (yield node.broker.detach_subscription("sub_0", now)) == []
    assert (yield node.broker.detach_subscription("sub_other", now)) == []
    assert (yield node.broker.detach_subscription("sub_1", now + 1)) == []
    assert (yield node.broker.detach_subscription("sub_2", now + 2)) == ["sub_0"]
    # Claiming one makes room again.
    assert (yield node.broker.claim_subscription("sub_1", 7, "node-1")) is not None
    assert (yield node.broker.detach_subscription("sub_3", now + 3)) == []
    assert (yield node.broker.claim_subscription("sub_0", 7, "node-1")) is None
    for sub in ("sub_2", "sub_3"):
        assert (yield node.broker.claim_subscription(sub, 7, "node-1")) is not None
    assert (yield node.broker.claim_subscription("sub_other", 8, "node-1")) is not None


@pytest_twisted.inlineCallbacks
def test_detach_node_frees_a_dead_nodes_subscriptions(nodes):
    dead = yield nodes("node-dead")
    alive = yield nodes("node-alive", resume_window=60.0)
    yield dead.broker.save_subscription(record("sub_1"))
    yield dead.broker.save_subscription(record("sub_2"))
    yield alive.broker.save_subscription(record("sub_3"))
    assert (yield alive.broker.detach_node("node-dead", time.time())) == 2
    for sub in ("sub_1", "sub_2"):
        claim = yield alive.broker.claim_subscription(sub, 7, "node-alive")
        assert claim.attached_to is None
    claim = yield alive.broker.claim_subscription("sub_3", 7, "node-alive")
    assert claim.attached_to == "node-alive"


# Nodes, control messages, leases.


@pytest_twisted.inlineCallbacks
def test_node_registry_lists_live_nodes(nodes):
    one = yield nodes("node-1")
    two = yield nodes("node-2")
    yield one.broker.announce({"listen": "tcp:8080", "connections": 3}, ttl=30.0)
    yield two.broker.announce({"listen": "tcp:8081", "connections": 0}, ttl=0.3)
    listed = yield one.broker.nodes()
    assert sorted(listed, key=lambda n: n["name"]) == [
        {"name": "node-1", "listen": "tcp:8080", "connections": 3},
        {"name": "node-2", "listen": "tcp:8081", "connections": 0},
    ]
    yield sleep(0.5)
    listed = yield two.broker.nodes()
    assert [n["name"] for n in listed] == ["node-1"]
    yield two.broker.announce({"listen": "tcp:8081", "connections": 1}, ttl=30.0)
    listed = yield two.broker.nodes()
    assert sorted(n["name"] for n in listed) == ["node-1", "node-2"]


@pytest_twisted.inlineCallbacks
def test_control_messages_reach_the_named_node(nodes):
    one = yield nodes("node-1")
    two = yield nodes("node-2")
    received = yield one.broker.send_to_node("node-2", {"type": "give_up", "id": "sub_1"})
    assert received == 1
    assert (yield one.broker.send_to_node("node-9", {"type": "x"})) == 0
    yield wait_until(lambda: two.control)
    assert two.control == [{"type": "give_up", "id": "sub_1"}]
    assert one.control == []


@pytest_twisted.inlineCallbacks
def test_prices_are_accepted_in_sequence_cluster_wide(nodes):
    """
    A tick is accepted only above its market's last sequence number,
    whichever node records it, also within one batch; every node hears of
    each accepted batch, and the latest tick of each market is kept.
    """
    one = yield nodes("node-1")
    two = yield nodes("node-2")
    heard: dict[str, list] = {"one": [], "two": []}
    one.broker.on_prices = heard["one"].append
    two.broker.on_prices = heard["two"].append
    flags = yield one.broker.record_prices([
        PriceTick("MTK/USD", 100, 5, 1.0), PriceTick("MTK/USD", 90, 4, 1.0),
        PriceTick("RST/USD", 7, 1, 1.0, 3), PriceTick("MTK/USD", 110, 6, 2.0),
    ])
    assert flags == [True, False, True, True]
    assert (yield two.broker.record_prices([PriceTick("MTK/USD", 1, 6, 3.0)])) == [False]
    assert (yield two.broker.record_prices([PriceTick("MTK/USD", 120, 2**53 - 1, 3.0)])) == [True]
    yield wait_until(lambda: len(heard["one"]) == 2 and len(heard["two"]) == 2)
    assert heard["one"] == heard["two"] == [
        [PriceTick("MTK/USD", 100, 5, 1.0), PriceTick("RST/USD", 7, 1, 1.0, 3),
         PriceTick("MTK/USD", 110, 6, 2.0)],
        [PriceTick("MTK/USD", 120, 2**53 - 1, 3.0)],
    ]
    latest = yield one.broker.latest_prices()
    assert latest == {"MTK/USD": PriceTick("MTK/USD", 120, 2**53 - 1, 3.0),
                      "RST/USD": PriceTick("RST/USD", 7, 1, 1.0, 3)}


@pytest_twisted.inlineCallbacks
def test_leases_have_one_holder_until_released_or_expired(nodes):
    one = yield nodes("node-1")
    two = yield nodes("node-2")
    assert (yield one.broker.acquire_lease("market", "node-1", 30.0))
    assert not (yield two.broker.acquire_lease("market", "node-2", 30.0))
    assert (yield one.broker.acquire_lease("market", "node-1", 30.0))  # renewed
    assert not (yield two.broker.release_lease("market", "node-2"))
    assert (yield one.broker.release_lease("market", "node-1"))
    assert (yield two.broker.acquire_lease("market", "node-2", 0.3))
    assert not (yield one.broker.acquire_lease("market", "node-1", 30.0))
    yield sleep(0.5)
    assert (yield one.broker.acquire_lease("market", "node-1", 30.0))
