"""
The conformance run's own parts: the echo mode has the production protocol
options and echoes through the production output path, and the summary
judges a testsuite report as documented (docs/conformance.rst).
"""

import struct

import attrs
import pytest
from autobahn.websocket.compress import PerMessageDeflateOffer
from twisted.internet.address import IPv4Address

from conformance.echo_server import CONFORMANCE_MAX_MESSAGE_SIZE, echo_factory
from conformance.summarize import COMPRESSION, PRODUCTION_LIMITS, summarize
from rustorium.config import Settings
from rustorium.websocket import RustoriumServerFactory
from tests.helpers import make_server
from tests.unit.test_websocket import Transport, client_frame, handshake, server_frames, status

# Attributes of a factory that are not protocol options.
NOT_OPTIONS = {"admission", "api_server", "flusher", "path", "protocol",
               "perMessageCompressionAccept", "reactor", "_batched_timer", "countConnections"}


def options(factory) -> dict:
    return {k: v for k, v in vars(factory).items() if k not in NOT_OPTIONS}


@pytest.mark.parametrize("limit", [Settings().max_message_size, CONFORMANCE_MAX_MESSAGE_SIZE])
def test_echo_mode_has_the_production_options(clock, limit):
    """
    The echo factory is the production factory: every protocol option is
    the same for the same message limit, compression refused included.
    """
    production = RustoriumServerFactory(make_server(clock, max_message_size=limit), reactor=clock)
    echo = echo_factory(limit, reactor=clock)
    assert options(echo) == options(production)
    assert echo.maxMessagePayloadSize == echo.maxFramePayloadSize == limit
    assert echo.failByDrop is False and echo.requireMaskedClientFrames is True
    offer = PerMessageDeflateOffer()
    assert echo.perMessageCompressionAccept([offer]) is None
    assert production.perMessageCompressionAccept([offer]) is None


def test_echo_mode_raises_only_the_message_limit_and_frame_budget():
    """
    The echo mode changes max-message-size and the frame budget, and no
    other setting.
    """
    echo = echo_factory().api_server.settings
    defaults = Settings()
    changed = {
        a.name for a in attrs.fields(Settings) if getattr(echo, a.name) != getattr(defaults, a.name)
    }
    assert changed == {"max_message_size", "frame_rate", "frame_burst"}
    assert echo.max_message_size == 16 * 1024 * 1024


class EchoPeer:
    def __init__(self, clock, limit=CONFORMANCE_MAX_MESSAGE_SIZE):
        self.clock = clock
        self.protocol = echo_factory(limit, reactor=clock).buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 40000)
        )
        self.transport = Transport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.protocol.makeConnection(self.transport)

    def exchange(self, data: bytes) -> bytes:
        self.protocol.dataReceived(data)
        self.clock.advance(0)
        out = self.transport.value()
        self.transport.clear()
        return out


def test_echo_without_a_key(clock):
    """
    No API key is asked for; text and binary messages come back as they were
    sent, through the production output path.
    """
    peer = EchoPeer(clock)
    assert status(peer.exchange(handshake("/v1"))) == 101
    assert peer.protocol.session is None
    text = "h\u00e9llo".encode()
    assert server_frames(peer.exchange(client_frame(text))) == [(1, text)]
    assert server_frames(peer.exchange(client_frame(b"\x00\xff", opcode=2))) == [(2, b"\x00\xff")]
    big = b"x" * 70_000
    assert server_frames(peer.exchange(client_frame(big, opcode=2))) == [(2, big)]


def test_echo_closes_oversized_with_1009(clock):
    peer = EchoPeer(clock, limit=1024)
    peer.exchange(handshake("/v1"))
    ((opcode, payload),) = server_frames(peer.exchange(client_frame(b"x" * 1025)))
    assert opcode == 8
    assert struct.unpack("!H", payload[:2])[0] == 1009


def case(behavior, close="OK", code=1000):
    return {"behavior": behavior, "behaviorClose": close, "duration": 1,
            "remoteCloseCode": code, "reportfile": "x.json"}


def test_summary_passes_conformant_outcomes():
    summary = summarize({"agent": {
        "1.1.1": case("OK"), "3.2": case("NON-STRICT"),
        "7.1.6": case("INFORMATIONAL", "INFORMATIONAL"),
        "12.1.1": case("UNIMPLEMENTED"), "13.7.18": case("UNIMPLEMENTED"),
    }})
    assert summary["failed"] == []
    assert summary["cases"] == 5
    assert summary["behavior"] == {"OK": 1, "NON-STRICT": 1, "INFORMATIONAL": 1, "UNIMPLEMENTED": 2}
    assert summary["excepted"] == {COMPRESSION.why: ["12.1.1", "13.7.18"]}
    assert summary["non_ok"]["NON-STRICT/OK"] == ["3.2"]


@pytest.mark.parametrize(
    "outcome",
    [("FAILED", "OK"), ("OK", "FAILED"), ("WRONG CODE", "OK"), ("OK", "UNCLEAN"),
     ("UNIMPLEMENTED", "OK")],
)
def test_summary_fails_other_outcomes(outcome):
    summary = summarize({"agent": {"1.1.1": case("OK"), "2.10": case(*outcome)}})
    assert summary["failed"] == ["2.10"]


def test_production_limits_exception_needs_1009():
    """
    With --production-limits a failed 9.* case is excused only when the
    server closed it with 1009.
    """
    index = {"agent": {"9.1.2": case("FAILED", "FAILED", 1009),
                       "9.1.3": case("FAILED", "FAILED", 1006),
                       "5.1": case("FAILED", "FAILED", 1009)}}
    assert summarize(index)["failed"] == ["5.1", "9.1.2", "9.1.3"]
    limited = summarize(index, (COMPRESSION, PRODUCTION_LIMITS))
    assert limited["failed"] == ["5.1", "9.1.3"]
    assert limited["excepted"] == {PRODUCTION_LIMITS.why: ["9.1.2"]}
