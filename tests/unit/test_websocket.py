"""
The WebSocket protocol over a StringTransport: the authenticated handshake,
messages to and from the session, size limits and close codes.
"""

import base64
import os
import struct

import orjson
import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from rustorium.websocket import RustoriumServerFactory, prepare_frame
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

    def __init__(self, clock, **settings):
        self.clock = clock
        self.server = make_server(clock, prepare_frame, **settings)
        self.server.keys.keys[GOOD_KEY] = KEY
        self.factory = RustoriumServerFactory(self.server, reactor=clock)
        self.protocol = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
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
