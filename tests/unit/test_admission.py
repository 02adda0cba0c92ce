"""
Admission at the site, on a fake clock over StringTransports: the cap on
open connections, the per-address cap on handshakes, and the deadline of
the whole opening handshake.
"""

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from rustorium.admission import GuardedChannel, default_max_connections
from rustorium.web import build_site
from rustorium.websocket import RustoriumServerFactory, prepare_frame
from tests.helpers import KEY, make_server
from tests.unit.test_websocket import GOOD_KEY, Transport, client_frame, handshake, status


class Site:
    """
    The production site of a server, with connections made by hand.
    """

    def __init__(self, clock, **settings):
        self.clock = clock
        self.server = make_server(clock, prepare_frame, **settings)
        self.server.keys.keys[GOOD_KEY] = KEY
        self.factory = RustoriumServerFactory(self.server, reactor=clock)
        self.site = build_site(
            self.factory, self.server.settings.handshake_timeout, Resource(), Resource()
        )
        self.site.reactor = clock
        self.ports = iter(range(40000, 50000))

    def connect(self, host="127.0.0.1"):
        """
        Accept a connection from C{host}: its protocol and transport.
        """
        address = IPv4Address("TCP", host, next(self.ports))
        protocol = self.site.buildProtocol(address)
        if isinstance(protocol, GuardedChannel):
            protocol.callLater = self.clock.callLater
        transport = Transport(peerAddress=address)
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport

    @property
    def admission(self):
        return self.factory.admission


def refused(transport) -> bool:
    return transport.disconnected and transport.value() == b""


def lose(protocol):
    protocol.connectionLost(Failure(ConnectionDone()))


class TestOpenConnections:
    def test_refused_past_the_cap(self, clock):
        """
        Past max-connections a connection is closed as soon as it is
        accepted, and counted; once one ends, the next is admitted.
        """
        site = Site(clock, max_connections=2, max_handshakes_per_address=0)
        (first, _), (_, second) = site.connect(), site.connect()
        _, third = site.connect()
        assert not second.disconnected
        assert refused(third)
        assert site.server.counters.connections_refused == {"max-connections": 1}
        lose(first)
        _, fourth = site.connect()
        assert not fourth.disconnected
        assert site.admission.open == 2

    def test_websocket_connections_count_until_they_end(self, clock):
        """
        A connection taken over by the WebSocket protocol still counts, and
        frees its place when it ends.
        """
        site = Site(clock, max_connections=1)
        channel, transport = site.connect()
        channel.dataReceived(handshake())
        assert status(transport.value()) == 101
        websocket = transport.protocol
        assert site.admission.open == 1
        assert refused(site.connect()[1])
        lose(websocket)
        assert site.admission.open == 0
        assert not site.connect()[1].disconnected

    def test_default_is_below_the_open_file_limit(self, clock):
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert default_max_connections() == soft - 100
        assert Site(clock).admission.max_connections == soft - 100


class TestHandshakesPerAddress:
    def test_one_address_capped_others_not(self, clock):
        site = Site(clock, max_handshakes_per_address=2)
        site.connect("10.0.0.1"), site.connect("10.0.0.1")
        assert refused(site.connect("10.0.0.1")[1])
        assert not site.connect("10.0.0.2")[1].disconnected
        assert site.server.counters.connections_refused == {"max-handshakes-per-address": 1}

    def test_a_completed_request_frees_the_place(self, clock):
        """
        Only connections whose HTTP request has not arrived count: one that
        opened its WebSocket, or ended, no longer does.
        """
        site = Site(clock, max_handshakes_per_address=2)
        (opened, opened_transport), (gone, _) = site.connect(), site.connect()
        opened.dataReceived(handshake())
        assert status(opened_transport.value()) == 101
        assert not site.connect()[1].disconnected
        lose(gone)
        assert not site.connect()[1].disconnected
        assert refused(site.connect()[1])


class TestDeadline:
    def test_trickling_request_closed_at_the_deadline(self, clock):
        """
        A request trickled a byte a second (each resetting twisted.web's
        idle timeout) is closed handshake-timeout after connecting.
        """
        site = Site(clock, handshake_timeout=10)
        channel, transport = site.connect()
        request = handshake()
        for byte in range(9):
            clock.advance(1)
            channel.dataReceived(request[byte:byte + 1])
        assert not transport.disconnected
        clock.advance(1)
        assert transport.disconnected
        assert site.server.counters.handshake_timeouts == 1
        lose(channel)
        assert site.admission.open == 0
        assert site.admission.handshakes == {}

    def test_key_lookup_gets_what_is_left(self, clock):
        """
        The request arrived after 6 s and its key is still being looked up:
        Autobahn's timer drops it at 10 s from connecting, not 10 s after
        the request.
        """
        site = Site(clock, handshake_timeout=10)
        site.server.keys.authenticate = lambda key: Deferred()
        channel, transport = site.connect()
        clock.advance(6)
        channel.dataReceived(handshake())
        clock.advance(3.9)
        assert not transport.disconnected
        clock.advance(0.2)
        assert transport.disconnected
        assert site.server.counters.handshake_timeouts == 1

    def test_an_open_websocket_has_no_deadline(self, clock):
        site = Site(clock, handshake_timeout=10)
        channel, transport = site.connect()
        channel.dataReceived(handshake())
        clock.advance(60)
        assert not transport.disconnected
        assert site.server.counters.handshake_timeouts == 0

    def test_each_keep_alive_request_has_its_own(self, clock):
        """
        After a response on a persistent connection, the next request has
        handshake-timeout again (and the idle timeout closes an idle one).
        """
        site = Site(clock, handshake_timeout=10)
        channel, transport = site.connect()
        clock.advance(8)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b"200 OK" in transport.value()
        clock.advance(8)
        channel.dataReceived(b"GET / HTTP/1.1\r\n")
        clock.advance(1.9)
        assert not transport.disconnected
        clock.advance(0.2)
        assert transport.disconnected


def test_refusals_logged_at_most_every_ten_seconds(clock):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        site = Site(clock, max_connections=1)
        site.connect()
        for _ in range(5):
            site.connect()
        clock.advance(10)
        site.connect()
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if "Refused a connection" in (formatEvent(e) or "")]
    assert len(lines) == 2
    assert "max-connections" in lines[0]
    assert "4 more refused" in lines[1]


def test_timeouts_logged_at_most_every_ten_seconds(clock):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        site = Site(clock, handshake_timeout=10)
        for _ in range(5):
            site.connect()
        clock.advance(10)
        site.connect()
        clock.advance(10)
    finally:
        globalLogPublisher.removeObserver(events.append)
    lines = [formatEvent(e) for e in events if "did not arrive" in (formatEvent(e) or "")]
    assert len(lines) == 2
    assert "4 more since" in lines[1]
    assert site.server.counters.handshake_timeouts == 6


def test_an_upgraded_connection_leaves_no_http_garbage(clock):
    """
    Once the WebSocket protocol takes a connection over, its HTTP channel
    and request are freed at once (no reference cycle left for the
    collector's next full pass, 1.3 KiB a connection), and the WebSocket
    connection works on.
    """
    import gc
    import weakref

    site = Site(clock)
    channel, transport = site.connect()
    channel.dataReceived(handshake())
    assert status(transport.value()) == 101
    websocket = transport.protocol
    gone = weakref.ref(channel)
    enabled = gc.isenabled()
    gc.disable()
    try:
        del channel
        assert gone() is None, "the HTTP channel is freed without the collector"
    finally:
        if enabled:
            gc.enable()
    transport.clear()
    websocket.dataReceived(client_frame(b'{"id":"1","type":"ping"}'))
    clock.advance(0)
    assert b'"pong"' in transport.value()
