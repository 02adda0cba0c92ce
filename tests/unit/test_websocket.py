"""
The WebSocket protocol over a StringTransport: the authenticated handshake,
messages to and from the session, size limits and close codes.
"""

import base64
import os
import struct

import attrs
import orjson
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from rustorium.feed import REPLAY_CHUNK
from rustorium.websocket import RustoriumServerFactory, prepare_frame, prepare_heartbeat
from tests.helpers import KEY, make_server, publish

GOOD_KEY = "rk_good"


def handshake(path="/v1?api_key=" + GOOD_KEY, headers=()):
    lines = [
        f"GET {path} HTTP/1.1",
        "Host: 127.0.0.1:8765",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """
    A masked, final client frame.
    """
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """
    Split unmasked server frames into (opcode, payload).
    """
    frames = []
    while data:
        opcode = data[0] & 0x0F
        length = data[1] & 0x7F
        offset = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            offset = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            offset = 10
        frames.append((opcode, data[offset : offset + length]))
        data = data[offset + length :]
    return frames


class Transport(StringTransport):
    """
    A StringTransport that, like a real TCP transport, allows unregistering
    a producer that was never registered (Autobahn does when dropping).
    """

    writes = 0

    def unregisterProducer(self):
        self.producer = None
        self.streaming = None

    def write(self, data):
        self.writes += 1
        super().write(data)


class Peer:
    """
    A protocol on a StringTransport, talked to as a client would.
    """

    def __init__(self, clock, transport=None, **settings):
        self.clock = clock
        self.server = make_server(clock, prepare_frame, **settings)
        self.server.keys.keys[GOOD_KEY] = KEY
        self.factory = RustoriumServerFactory(self.server, reactor=clock)
        self.protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = (transport or Transport)(
            peerAddress=IPv4Address("TCP", "127.0.0.1", 40000)
        )
        self.protocol.makeConnection(self.transport)

    def open(self, request=None) -> bytes:
        self.protocol.dataReceived(request or handshake())
        response = self.transport.value()
        self.transport.clear()
        return response

    def send(self, message) -> None:
        payload = message if isinstance(message, bytes) else orjson.dumps(message)
        self.protocol.dataReceived(client_frame(payload))

    def received(self) -> list[tuple[int, bytes]]:
        self.clock.advance(0)
        frames = server_frames(self.transport.value())
        self.transport.clear()
        return frames

    def messages(self) -> list[dict]:
        return [orjson.loads(p) for op, p in self.received() if op == 1]


def status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def test_handshake_with_query_key(clock):
    peer = Peer(clock)
    assert status(peer.open()) == 101
    assert peer.protocol.session is not None
    assert len(peer.server.sessions) == 1


def test_handshake_with_bearer_header(clock):
    peer = Peer(clock)
    response = peer.open(handshake("/v1", [f"Authorization: Bearer {GOOD_KEY}"]))
    assert status(response) == 101


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (handshake("/v1"), 401),
        (handshake("/v1?api_key=rk_wrong"), 401),
        (handshake("/v1", ["Authorization: Bearer rk_wrong"]), 401),
        (handshake("/v2?api_key=" + GOOD_KEY), 404),
    ],
)
def test_handshake_refused(clock, request_bytes, code):
    """
    Without a valid key, or on another path, the handshake is refused with
    an HTTP status and no session is made.
    """
    peer = Peer(clock)
    response = peer.open(request_bytes)
    assert status(response) == code
    assert peer.protocol.session is None
    assert len(peer.server.sessions) == 0


def test_revoked_key_refused(clock):
    peer = Peer(clock)
    peer.server.keys.revoked.add(KEY.key_id)
    assert status(peer.open()) == 401


@pytest.mark.parametrize("scopes", [{"publish"}, {"admin"}, {"publish", "admin"}])
def test_key_without_client_scope_refused(clock, scopes):
    """
    A publish or admin key that is not also a client key opens no session:
    403 at the handshake.
    """
    peer = Peer(clock)
    peer.server.keys.keys[GOOD_KEY] = attrs.evolve(KEY, scopes=frozenset(scopes))
    assert status(peer.open()) == 403
    assert peer.protocol.session is None
    assert peer.server.connections_per_key[KEY.key_id] == 0


def test_admin_key_that_is_also_a_client_key_connects(clock):
    peer = Peer(clock)
    peer.server.keys.keys[GOOD_KEY] = attrs.evolve(KEY, scopes=frozenset({"admin", "client"}))
    assert status(peer.open()) == 101


def test_not_ready(clock):
    """
    Before the service has started, handshakes get 503.
    """
    peer = Peer(clock)
    peer.server.ready = False
    assert status(peer.open()) == 503


def test_request_and_reply(clock):
    peer = Peer(clock)
    peer.open()
    peer.send({"id": "1", "type": "ping"})
    [pong] = peer.messages()
    assert pong["id"] == "1"
    assert pong["type"] == "pong"


def test_updates_are_text_frames(clock):
    """
    Updates published on the hub arrive as text frames holding the update.
    """
    peer = Peer(clock)
    peer.open()
    peer.send({"type": "subscribe", "data": {"channel": "market_data", "symbols": ["MTK/USD"]}})
    peer.received()
    publish(peer.server, "market_data", "market_data:MTK/USD", {"symbol": "MTK/USD"})
    [(opcode, payload)] = peer.received()
    assert opcode == 1
    assert orjson.loads(payload)["data"]["symbol"] == "MTK/USD"


def test_a_reconnects_replay_leaves_in_one_write_per_chunk(clock):
    """
    A client that resumes gets its reconnect_confirmation and the updates
    it missed in one write per chunk of the replay (one system call, not
    one per update): a storm of thousands of clients resuming at once
    replays dozens of updates to each.
    """
    first = Peer(clock)
    first.open()
    first.send({"type": "subscribe", "data": {"channel": "market_data", "symbols": ["MTK/USD"]}})
    subscription = first.messages()[0]["data"]["subscription_id"]
    last = publish(first.server, "market_data", "market_data:MTK/USD", {"price": "1"})
    first.protocol.connectionLost(Failure(ConnectionDone()))
    missed = [publish(first.server, "market_data", "market_data:MTK/USD", {"price": str(i)})
              for i in range(REPLAY_CHUNK + 40)]
    second = Peer(clock)
    second.server, second.factory = first.server, first.factory
    second.protocol = first.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
    second.transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
    second.protocol.makeConnection(second.transport)
    assert status(second.open()) == 101
    writes = second.transport.writes
    second.send({"type": "reconnect", "data": {
        "last_message_id": f"msg_{last.number}", "subscriptions": [subscription]}})
    messages = second.messages()
    assert second.transport.writes == writes + 2, "the confirmation and two chunks"
    assert messages[0]["type"] == "reconnect_confirmation"
    assert messages[0]["data"]["replayed"] == len(missed)
    assert [m["id"] for m in messages[1:]] == [f"msg_{u.number}" for u in missed]


def test_binary_frame_gets_error(clock):
    peer = Peer(clock)
    peer.open()
    peer.protocol.dataReceived(client_frame(b"\x00\x01", opcode=2))
    [error] = peer.messages()
    assert error["data"]["code"] == "invalid_request"


def test_oversized_message_closed_with_1009(clock):
    """
    A message over max-message-size closes the connection with 1009.
    """
    peer = Peer(clock, max_message_size=1024)
    peer.open()
    peer.send(b'{"type": "ping", "data": {"pad": "' + b"x" * 2000 + b'"}}')
    frames = peer.received()
    assert frames[-1][0] == 8
    (code,) = struct.unpack("!H", frames[-1][1][:2])
    assert code == 1009


def test_session_close_sends_code(clock):
    peer = Peer(clock)
    peer.open()
    peer.protocol.session.close(4200, "server shutting down")
    [(opcode, payload)] = peer.received()
    assert opcode == 8
    assert struct.unpack("!H", payload[:2])[0] == 4200
    assert payload[2:] == b"server shutting down"


def test_connection_lost_ends_session(clock):
    peer = Peer(clock)
    peer.open()
    peer.send({"type": "subscribe", "data": {"channel": "market_data", "symbols": ["MTK/USD"]}})
    peer.protocol.connectionLost(Failure(ConnectionDone()))
    assert len(peer.server.sessions) == 0
    assert peer.server.app.fanout.subscriber_count("market_data:MTK/USD") == 0


class TestOrigins:
    @pytest.mark.parametrize(
        ("origin", "status_code"),
        [
            (None, 101),
            ("https://app.example.com", 101),
            ("https://APP.example.com:443", 101),
            ("https://evil.example", 403),
            ("https://app.example.com.evil.example", 403),
            ("http://app.example.com", 403),
            ("null", 403),
        ],
    )
    def test_allow_list(self, clock, origin, status_code):
        peer = Peer(clock, allowed_origins=("https://app.example.com",))
        headers = [f"Origin: {origin}"] if origin else []
        assert status(peer.open(handshake(headers=headers))) == status_code

    @pytest.mark.parametrize("origin", ["https://anything", "null"])
    def test_any_origin_by_default(self, clock, origin):
        peer = Peer(clock)
        assert status(peer.open(handshake(headers=[f"Origin: {origin}"]))) == 101


def test_connections_per_key(clock):
    """
    Past max-connections-per-key, handshakes get 429; a closed connection
    frees its place.
    """
    first = Peer(clock, max_connections_per_key=2)
    server = first.server

    def another():
        peer = Peer(clock)
        peer.server = server
        peer.factory = RustoriumServerFactory(server, reactor=clock)
        peer.protocol = peer.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        peer.transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
        peer.protocol.makeConnection(peer.transport)
        return peer

    assert status(first.open()) == 101
    second = another()
    assert status(second.open()) == 101
    third = another()
    assert status(third.open()) == 429
    first.protocol.connectionLost(Failure(ConnectionDone()))
    fourth = another()
    assert status(fourth.open()) == 101


def test_client_gone_before_its_key_is_found_takes_no_slot(clock):
    """
    A client that closes while its key is being looked up leaves no
    connection counted against the key and no session: the lookup that
    fires after connectionLost refuses the handshake.
    """
    peer = Peer(clock, max_connections_per_key=1)
    lookup = Deferred()
    peer.server.keys.authenticate = lambda key: lookup
    peer.protocol.dataReceived(handshake())
    peer.protocol.connectionLost(Failure(ConnectionDone()))
    lookup.callback(KEY)
    del peer.server.keys.authenticate
    assert peer.server.connections_per_key == {}
    assert len(peer.server.sessions) == 0
    assert peer.protocol.session is None
    # The key's only slot is still free.
    another = Peer(clock)
    another.factory = RustoriumServerFactory(peer.server, reactor=clock)
    another.protocol = another.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
    another.transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
    another.protocol.makeConnection(another.transport)
    assert status(another.open()) == 101


def test_reply_queued_before_a_protocol_error_is_sent_before_the_close(clock):
    """
    A good request and a bad frame in one read: the reply (queued for the
    end of the turn) leaves before the close frame (1002) that the bad
    frame causes.
    """
    peer = Peer(clock)
    peer.open()
    good = client_frame(orjson.dumps({"id": "1", "type": "ping"}))
    reserved_opcode = client_frame(b"", opcode=3)
    peer.protocol.dataReceived(good + reserved_opcode)
    frames = peer.received()
    assert [opcode for opcode, _ in frames] == [1, 8]
    assert orjson.loads(frames[0][1])["type"] == "pong"
    assert struct.unpack("!H", frames[1][1][:2])[0] == 1002


def test_held_replies_are_sent_before_a_close(clock):
    """
    Replies held while the transport had paused the connection go out
    before a close frame, in order.
    """
    peer = Peer(clock)
    peer.open()
    peer.protocol.pauseProducing()
    peer.send({"id": "1", "type": "ping"})
    peer.protocol.dataReceived(client_frame(b"", opcode=3))
    frames = peer.received()
    assert [opcode for opcode, _ in frames] == [1, 8]
    assert orjson.loads(frames[0][1])["id"] == "1"


def test_pongs_to_a_client_that_does_not_read_count_against_max_backlog(clock):
    """
    Autobahn writes pongs straight to the transport. While the transport
    has paused the connection (its client does not read) they count
    against max-backlog like held replies, so a client that pings and
    never reads is closed with 4101.
    """
    peer = Peer(clock, max_backlog=1000)
    peer.open()
    peer.protocol.pauseProducing()
    for _ in range(20):
        peer.protocol.dataReceived(client_frame(b"p" * 100, opcode=9))
    frames = peer.received()
    assert frames[-1][0] == 8
    assert struct.unpack("!H", frames[-1][1][:2])[0] == 4101
    assert sum(1 for opcode, _ in frames if opcode == 10) <= 10
    assert peer.server.counters.slow_consumers == 1
    assert len(peer.server.sessions) == 0


def test_pongs_while_reading_do_not_count(clock):
    """
    A client that reads may ping as often as the frame budget allows.
    """
    peer = Peer(clock, max_backlog=1000)
    peer.open()
    for _ in range(20):
        peer.protocol.dataReceived(client_frame(b"p" * 100, opcode=9))
    assert [opcode for opcode, _ in peer.received()] == [10] * 20
    assert peer.server.counters.slow_consumers == 0


class TestFrameBudget:
    """
    Every inbound frame takes a token; past the budget the connection is
    closed with 4008 and nothing more of its input is read.
    """

    @pytest.mark.parametrize(
        "flood",
        [
            client_frame(b"", opcode=9),  # pings
            client_frame(b"", opcode=10),  # unsolicited pongs
            client_frame(b'{"type": "heartbeat_response", "data": {}}'),
        ],
        ids=["ping", "pong", "heartbeat_response"],
    )
    def test_flood_closed_with_4008(self, clock, flood):
        peer = Peer(clock, frame_rate=10, frame_burst=20)
        peer.open()
        peer.protocol.dataReceived(flood * 100)
        frames = peer.received()
        assert frames[-1][0] == 8
        assert struct.unpack("!H", frames[-1][1][:2])[0] == 4008
        # Frames after the budget were not even read.
        assert sum(1 for opcode, _ in frames if opcode == 10) <= 20
        assert peer.transport.producerState == "paused"
        assert peer.server.counters.frame_floods == 1
        assert len(peer.server.sessions) == 0

    def test_empty_continuation_frames_count(self, clock):
        """
        A message split into many empty continuation frames: each counts.
        """
        peer = Peer(clock, frame_rate=10, frame_burst=20)
        peer.open()
        start = bytes([0x01, 0x80]) + os.urandom(4)  # text, not final, empty
        continuation = bytes([0x00, 0x80]) + os.urandom(4)
        peer.protocol.dataReceived(start + continuation * 100)
        frames = peer.received()
        assert struct.unpack("!H", frames[-1][1][:2])[0] == 4008

    def test_refills_on_the_clock(self, clock):
        """
        A client within the rate is never closed, however long it goes on.
        """
        peer = Peer(clock, frame_rate=10, frame_burst=20)
        peer.open()
        for _ in range(100):
            peer.protocol.dataReceived(client_frame(b"", opcode=9) * 5)
            clock.advance(0.5)
        frames = peer.received()
        assert [opcode for opcode, _ in frames] == [10] * 500
        assert peer.server.counters.frame_floods == 0


class TestLiveness:
    """
    The heartbeat carries a WebSocket ping, and any frame from the client,
    a pong included, counts as activity.
    """

    def start(self, clock):
        from rustorium.heartbeat import HeartbeatService

        peer = Peer(clock, heartbeat_interval=10)
        service = HeartbeatService(peer.server, clock, prepare_heartbeat)
        service.startService()
        peer.open()
        return peer, service

    def test_heartbeat_is_followed_by_a_ping(self, clock):
        peer, service = self.start(clock)
        clock.advance(10)
        frames = peer.received()
        assert [opcode for opcode, _ in frames] == [1, 9]
        assert orjson.loads(frames[0][1])["type"] == "heartbeat"
        service.stopService()

    def test_a_client_answering_pings_stays(self, clock):
        """
        A client that never sends a message but answers the server's pings
        (as WebSocket libraries do by themselves) is not closed as silent;
        one that answers nothing is, after three intervals.
        """
        peer, service = self.start(clock)
        silent = Peer(clock)
        silent.server = peer.server
        silent.factory = RustoriumServerFactory(peer.server, reactor=clock)
        silent.protocol = silent.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        silent.transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
        silent.protocol.makeConnection(silent.transport)
        silent.open()
        for _ in range(6):
            clock.advance(10)
            if 9 in [opcode for opcode, _ in peer.received()]:
                peer.protocol.dataReceived(client_frame(b"", opcode=10))
        assert 8 not in [opcode for opcode, _ in peer.received()]
        assert len(peer.server.sessions) == 1
        closes = [payload for opcode, payload in silent.received() if opcode == 8]
        assert struct.unpack("!H", closes[0][:2])[0] == 4100
        service.stopService()

    def test_frames_of_a_closing_connection_do_not_revive_its_session(self, clock):
        peer, service = self.start(clock)
        peer.protocol.session.close(4200, "server shutting down")
        peer.protocol.dataReceived(client_frame(b"", opcode=10))
        assert len(peer.server.sessions) == 0
        service.stopService()


class PausingTransport(Transport):
    """
    Pauses its producer when it holds more than 1000 bytes, as Twisted's
    transports do past their buffer size.
    """

    def write(self, data):
        super().write(data)
        if len(self.io.getvalue()) > 1000 and self.producer is not None:
            self.producer.pauseProducing()


def test_a_write_that_pauses_the_connection_is_not_counted_as_unread(clock):
    """
    Only what is written while the transport has already paused the
    connection counts against max-backlog, not the write that paused it
    (a large reply to a client that reads).
    """
    peer = Peer(clock, PausingTransport, max_backlog=1000)
    peer.open()
    peer.protocol.send_payload(b'"' + b"x" * 5000 + b'"')
    clock.advance(0)
    assert peer.protocol._paused
    assert peer.server.counters.slow_consumers == 0
    peer.protocol.dataReceived(client_frame(b"p" * 100, opcode=9))
    assert peer.server.counters.slow_consumers == 0
    for _ in range(10):
        peer.protocol.dataReceived(client_frame(b"p" * 100, opcode=9))
    assert peer.server.counters.slow_consumers == 1


CANARY = "rk_" + "C4nary" * 7 + "x"


@pytest.mark.parametrize(
    "path",
    [f"/v1?api_key={CANARY}#{CANARY}", f"/v1?api_key={CANARY}#api_key={CANARY}",
     f"/v1?api_key={CANARY}#secret"],
)
def test_handshake_failure_logs_no_fragment(clock, path):
    """
    Autobahn refuses a request URI with a fragment and logs why, quoting
    the fragment: the reason is redacted first.
    """
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        peer = Peer(clock)
        response = peer.open(handshake(path))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert status(response) == 400
    text = "\n".join(formatEvent(event) or "" for event in events)
    assert "fragment" in text
    assert "C4nary" not in text and "secret" not in text


def test_access_log_cuts_query_and_fragment():
    """
    The site's access log line shows the path only.
    """
    from twisted.web.test.requesthelper import DummyRequest

    from rustorium.web import redacted_log_formatter

    request = DummyRequest([b"v1"])
    request.uri = f"/v1?api_key={CANARY}#api_key={CANARY}".encode()
    request.method = b"GET"
    request.clientproto = b"HTTP/1.1"
    request.code = 200
    request.sentLength = 0
    line = redacted_log_formatter("now", request)
    assert '"GET /v1 HTTP/1.1"' in line
    assert "C4nary" not in line
    request.uri = f"/healthz#api_key={CANARY}".encode()
    assert "C4nary" not in redacted_log_formatter("now", request)
