"""
The output path: the write-through transport (order and backpressure kept),
one write per connection per batch, and slow consumers (conflation, a
lossless bound, the 4101 close) driven by the producer signals.
"""

import errno

import orjson
import pytest
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from zope.interface import implementer

from rustorium.broker.interface import Publication
from rustorium.closecodes import CloseCode
from rustorium.hub import channel_key
from rustorium.output import Outlet, WriteThroughServer
from tests.helpers import publish as publish_update
from tests.unit.test_websocket import Peer, server_frames

MTK = channel_key("market_data", "MTK/USD")
STK = channel_key("market_data", "STK/USD")


class FakeSocket:
    """
    A non-blocking socket whose kernel buffer takes C{room} bytes at a time.
    """

    def __init__(self, room=10**9):
        self.room = room
        self.sent = b""
        self.sends = 0

    def setblocking(self, flag):
        pass

    def fileno(self):
        return 99

    def send(self, data):
        self.sends += 1
        if self.room <= 0:
            raise BlockingIOError(errno.EAGAIN, "would block")
        taken = bytes(data[: self.room])
        self.room -= len(taken)
        self.sent += taken
        return len(taken)


class FakeReactor:
    def __init__(self):
        self.writers = set()
        self.readers = set()

    def addReader(self, r):
        self.readers.add(r)

    def removeReader(self, r):
        self.readers.discard(r)

    def addWriter(self, w):
        self.writers.add(w)

    def removeWriter(self, w):
        self.writers.discard(w)


@implementer(IPushProducer)
class Producer:
    def __init__(self):
        self.paused = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        pass


def transport(room=10**9):
    reactor = FakeReactor()
    sock = FakeSocket(room)
    server = WriteThroughServer(sock, Protocol(), ("127.0.0.1", 1), None, 0, reactor)
    return server, sock, reactor


class TestWriteThrough:
    def test_empty_buffer_writes_through(self):
        """
        With nothing buffered, a write is one send and nothing is left for
        the reactor to do.
        """
        server, sock, reactor = transport()
        server.write(b"hello")
        assert sock.sent == b"hello"
        assert sock.sends == 1
        assert reactor.writers == set()

    def test_partial_send_keeps_order(self):
        """
        What the socket does not take is buffered; later writes queue behind
        it instead of jumping ahead, and all leaves in order.
        """
        server, sock, reactor = transport(room=3)
        server.write(b"abcdef")
        server.write(b"ghi")
        assert sock.sent == b"abc"
        assert sock.sends == 1
        assert reactor.writers == {server}
        sock.room = 100
        server.doWrite()
        assert sock.sent == b"abcdefghi"
        assert reactor.writers == set()
        server.write(b"j")
        assert sock.sent == b"abcdefghij"

    def test_would_block(self):
        server, sock, reactor = transport(room=0)
        server.write(b"x")
        assert sock.sent == b""
        assert reactor.writers == {server}
        sock.room = 10
        server.doWrite()
        assert sock.sent == b"x"

    def test_backpressure(self):
        """
        A full buffer pauses the registered producer, and draining it
        resumes the producer, exactly as Twisted's transport does.
        """
        server, sock, _ = transport(room=0)
        producer = Producer()
        server.registerProducer(producer, True)
        server.write(b"x" * (server.bufferSize + 1))
        assert producer.paused
        sock.room = 10**9
        server.doWrite()
        assert not producer.paused
        assert len(sock.sent) == server.bufferSize + 1

    def test_disconnecting_still_sends(self):
        """
        Like Twisted's write, data written after loseConnection still
        leaves before the connection closes.
        """
        server, sock, _ = transport()
        server.disconnecting = True
        server.write(b"late")
        assert sock.sent == b"late"

    def test_closed_socket_falls_back(self):
        """
        A send the socket refuses goes to Twisted's write, which drops it
        on a connection that is gone.
        """
        server, sock, reactor = transport()

        def refuse(data):
            raise OSError(9, "Bad file descriptor")

        sock.send = refuse
        server.connected = False
        server.write(b"x")
        assert reactor.writers == set()
        assert not server._tempDataLen


def subscribed_peer(clock, symbols=("MTK/USD", "STK/USD"), **settings):
    peer = Peer(clock, **settings)
    peer.open()
    peer.send({"type": "subscribe", "data": {"channel": "market_data", "symbols": list(symbols)}})
    peer.send({"type": "subscribe",
               "data": {"channel": "transaction_updates", "address": "0x" + "c" * 40}})
    peer.received()
    return peer


def publish_batch(server, batch):
    """
    Publish (channel, key, data) updates as one batch, as a market tick does.
    """
    return server.app.broker.publish([Publication(*item) for item in batch]).result


def publish(peer, key, price, conflatable=True):
    symbol = key.split(":", 1)[1]
    channel = key.split(":", 1)[0]
    return publish_update(peer.server, channel, key, {"symbol": symbol, "price": str(price)},
                          retain=conflatable).number


class TestCoalescing:
    def test_one_write_per_batch(self, clock):
        """
        Ten updates of a batch for one connection leave in one write, in
        order; a single publish is written at once.
        """
        peer = subscribed_peer(clock)
        before = peer.transport.writes
        batch = [("market_data", MTK if n % 2 else STK,
                  {"symbol": "MTK/USD" if n % 2 else "STK/USD", "price": str(n)})
                 for n in range(10)]
        numbers = [u.number for u in publish_batch(peer.server, batch)]
        assert peer.transport.writes - before == 1
        received = peer.received()
        assert [int(orjson.loads(p)["id"][4:]) for _, p in received] == numbers
        publish(peer, MTK, 11)
        assert peer.transport.writes - before == 2

    def test_batch_to_several_connections(self, clock):
        """
        In a batch, each connection gets only its keys, in one write.
        """
        one = subscribed_peer(clock, symbols=("MTK/USD",))
        batch = [("market_data", MTK, {"symbol": "MTK/USD", "price": "1"}),
                 ("market_data", STK, {"symbol": "STK/USD", "price": "2"})]
        publish_batch(one.server, batch)
        prices = [orjson.loads(p)["data"]["price"] for _, p in one.received()]
        assert prices == ["1"]

    def test_reply_and_updates_keep_their_order(self, clock):
        peer = subscribed_peer(clock)
        publish(peer, MTK, 1)
        peer.send({"id": "p", "type": "ping"})
        publish(peer, MTK, 2)
        kinds = [orjson.loads(p)["type"] for _, p in peer.received()]
        assert kinds == ["update", "pong", "update"]


class TestSlowConsumer:
    def test_conflation_while_paused(self, clock):
        """
        While the transport has paused the connection, prices keep only the
        newest value per market, transaction updates and replies are all
        kept, and on resume everything leaves in id order.
        """
        peer = subscribed_peer(clock)
        peer.protocol.pauseProducing()
        publish(peer, MTK, 1)
        publish(peer, STK, 2)
        tx = channel_key("transaction_updates", "0x" + "c" * 40)
        first_tx = publish(peer, tx, 3, conflatable=False)
        publish(peer, MTK, 4)
        second_tx = publish(peer, tx, 5, conflatable=False)
        last_mtk = publish(peer, MTK, 6)
        peer.send({"id": "p", "type": "ping"})
        assert peer.received() == []
        peer.protocol.resumeProducing()
        messages = [orjson.loads(p) for _, p in peer.received()]
        prices = [m["data"]["price"] for m in messages if m["type"] == "update"]
        assert prices == ["2", "3", "5", "6"]
        assert [m for m in messages if m["type"] == "pong"]
        updates = [int(m["id"][4:]) for m in messages if m["type"] == "update"]
        assert updates == sorted(updates)
        assert first_tx in updates and second_tx in updates and last_mtk in updates
        assert peer.server.counters.conflated == 2

    def test_backlog_bound_closes_4101(self, clock):
        """
        Past max-backlog bytes of lossless output, the connection is closed
        with 4101 and its subscriptions stay resumable.
        """
        peer = subscribed_peer(clock, max_backlog=2000)
        peer.protocol.pauseProducing()
        tx = channel_key("transaction_updates", "0x" + "c" * 40)
        for n in range(30):
            publish(peer, tx, n, conflatable=False)
        assert peer.server.counters.slow_consumers == 1
        frames = server_frames(peer.transport.value())
        assert frames[-1][0] == 8
        assert int.from_bytes(frames[-1][1][:2], "big") == CloseCode.SLOW_CONSUMER
        assert peer.server.app.broker.detached_count == 2

    def test_memory_stays_bounded(self, clock):
        """
        However many price updates a paused reader misses, it holds one per
        market.
        """
        peer = subscribed_peer(clock)
        peer.protocol.pauseProducing()
        for n in range(5000):
            publish(peer, MTK if n % 2 else STK, n)
        assert len(peer.protocol._backlog) == 2

    @pytest.mark.parametrize("paused", [False, True])
    def test_heartbeat_conflated(self, clock, paused):
        peer = subscribed_peer(clock)
        if paused:
            peer.protocol.pauseProducing()
        for _ in range(3):
            peer.protocol.send_frame(b"\x81\x02hb")
        if paused:
            peer.protocol.resumeProducing()
        assert len(peer.received()) == (1 if paused else 3)


class TestReplies:
    def test_pipelined_replies_share_a_write(self, clock):
        """
        Replies to commands that arrive together leave in one write at the
        end of the turn.
        """
        peer = subscribed_peer(clock)
        before = peer.transport.writes
        for n in range(4):
            peer.send({"id": n, "type": "ping"})
        assert peer.transport.writes == before
        assert [orjson.loads(p)["id"] for _, p in peer.received()] == [0, 1, 2, 3]
        assert peer.transport.writes - before == 1

    def test_update_after_a_queued_reply_keeps_order(self, clock):
        """
        An update published after a reply was queued in the same turn goes
        out after it, in the same write.
        """
        peer = subscribed_peer(clock)
        peer.send({"id": "p", "type": "ping"})
        publish(peer, MTK, 1)
        kinds = [orjson.loads(p)["type"] for _, p in peer.received()]
        assert kinds == ["pong", "update"]
        publish(peer, MTK, 2)
        assert [orjson.loads(p)["type"] for _, p in peer.received()] == ["update"]


class TestOutlet:
    def test_bypass_never_overtakes_buffered_bytes(self):
        """
        An outlet sending straight to the socket stops doing so the moment
        the transport buffers anything (its own remainder or another
        writer's bytes), and starts again once the buffer has drained:
        every byte leaves in the order written.
        """
        server, sock, _ = transport(room=5)
        slow = []

        class Listener:
            def transport_buffering(self):
                outlet.direct = False

            def transport_drained(self):
                outlet.direct = True

        def slow_path(update):
            slow.append(update.frame)
            server.write(update.frame)

        outlet = Outlet(server.write, sock.send, slow_path, lambda u: False, lambda: None)
        server.listener = Listener()
        outlet.direct = True

        class U:
            def __init__(self, frame):
                self.frame = frame

        outlet.deliver(U(b"AAAAAAAA"))
        assert sock.sent == b"AAAAA"
        assert not outlet.direct
        outlet.deliver(U(b"BBBB"))
        server.write(b"PONG")
        assert slow == [b"BBBB"]
        sock.room = 100
        server.doWrite()
        assert outlet.direct
        outlet.deliver(U(b"CC"))
        assert sock.sent == b"AAAAAAAABBBBPONGCC"
        assert slow == [b"BBBB"]

    def test_without_write_through(self):
        """
        On another transport (TLS, or a site not ours) the outlet writes
        through the transport, which keeps the order itself.
        """
        written = []
        outlet = Outlet(written.append, None, None, lambda u: False, lambda: None)
        outlet.direct = True

        class U:
            frame = b"x"

        outlet.deliver(U())
        assert written == [b"x"]
