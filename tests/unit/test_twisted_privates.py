"""
The private attributes of Twisted (and of Autobahn and txredisapi) that the
server leans on: one test per attribute says, naming it and the installed
version, when a release has changed it; and the server's fallback to the
public path is tested with a class that lacks it (see L{rustorium.internals}).
"""

import autobahn
import pytest
import txredisapi
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.copyright import version as twisted_version
from twisted.internet import abstract, defer, tcp
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.logger import formatEvent, globalLogPublisher

from rustorium import internals, output, tls
from rustorium.broker.redislink import CommandProtocol, SubscriberProtocol
from rustorium.output import ReusePort, WriteThroughPort, WriteThroughReusePort, listening_reactor
from rustorium.websocket import RustoriumServerProtocol
from tests.helpers import publish
from tests.unit.test_websocket import Peer


def changed(name: str, why: str, project: str = "Twisted", version: str = twisted_version) -> str:
    """The message of a failed guard: what changed, in which release, and what it means."""
    return f"{project} {version} changed {name}: {why}"


# -- FileDescriptor._tempDataLen ----------------------------------------------------


def test_tempDataLen_counts_what_write_buffers():
    """
    The write-through transport sends straight to the socket only when
    C{dataBuffer} is empty and C{_tempDataLen} is 0: write() must count into
    it and doWrite() empty it.
    """
    assert internals.counts_buffered_bytes(), changed(
        "abstract.FileDescriptor._tempDataLen",
        "write() no longer counts its buffered bytes there (or doWrite() does not reset it); "
        "rustorium.output.WriteThroughServer and RustoriumServerProtocol._refresh_direct read "
        "it, and write-through now turns itself off",
    )
    assert internals.write_through_supported()


class _BuffersElsewhere(abstract.FileDescriptor):
    """A FileDescriptor of a Twisted that keeps its second buffer otherwise."""

    def __init__(self, reactor=None):
        super().__init__(reactor)
        del self._tempDataLen
        self._pending = []

    def write(self, data):
        self._pending.append(data)


def test_a_descriptor_without_tempDataLen_is_detected():
    assert not internals.counts_buffered_bytes(_BuffersElsewhere)


def test_without_tempDataLen_ports_use_twisteds_transports(monkeypatch):
    """
    Where the count is not kept as expected, C{tcp:} endpoints listen with
    Twisted's own transports, whatever C{write-through} says.
    """
    assert listening_reactor(object(), True, False)._port_class is WriteThroughPort
    assert listening_reactor(object(), True, True)._port_class is WriteThroughReusePort
    monkeypatch.setattr(output, "write_through_supported", lambda: False)
    assert listening_reactor(object(), True, False)._port_class is tcp.Port
    assert listening_reactor(object(), True, True)._port_class is ReusePort


def test_updates_flow_on_a_transport_without_tempDataLen(clock):
    """
    A connection on a transport that is not the write-through one (no
    C{_tempDataLen}) gets its updates, and its outlet writes directly.
    """
    peer = Peer(clock)
    assert not hasattr(peer.transport, internals.TEMP_DATA_LEN)
    peer.open()
    peer.send({"type": "subscribe", "data": {"channel": "market_data", "symbols": ["MTK/USD"]}})
    peer.received()
    for price in ("1.00", "1.01"):
        publish(peer.server, "market_data", "market_data:MTK/USD",
                {"symbol": "MTK/USD", "price": price})
    assert [m["data"]["price"] for m in peer.messages()] == ["1.00", "1.01"]
    assert peer.protocol.sink.direct


# -- tcp.Port._type -----------------------------------------------------------------


def test_port_type_names_the_port_in_twisteds_log():
    """
    C{_type} is the word of Twisted's "(TCP Port N Closed)" line, which its
    own listenSSL sets to "TLS", as ours does.
    """
    why = ("it no longer names the port's kind in the port's closing log line; "
           "rustorium.output names TLS ports with it (cosmetic: skipped when it is gone)")
    assert getattr(tcp.Port, internals.PORT_TYPE, None) == "TCP", changed("tcp.Port._type", why)
    port = tcp.Port(0, Factory())
    port._realPortNumber = 4433
    internals.name_port(port, "TLS")
    log_closed = getattr(port, "_logConnectionLostMsg", None)
    assert log_closed is not None, changed("tcp.Port._type", why)
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        log_closed()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert "TLS Port 4433 Closed" in " ".join(formatEvent(e) for e in events), changed(
        "tcp.Port._type", why)


def test_naming_a_port_without_type_does_nothing():
    class Port:
        pass

    port, twisted_port = Port(), tcp.Port(0, Factory())
    internals.name_port(port, "TLS")
    internals.name_port(twisted_port, "TLS")
    assert not hasattr(port, internals.PORT_TYPE)
    assert twisted_port._type == "TLS"


# -- StreamServerEndpointService._raiseSynchronously ----------------------------------


class _Endpoint:
    def __init__(self, result):
        self.result = result
        self.listened = 0

    def listen(self, factory):
        self.listened += 1
        return self.result


class _Port:
    stopped = False

    def stopListening(self):
        self.stopped = True


def test_raiseSynchronously_makes_a_failure_to_listen_raise():
    assert internals.raises_synchronously(), changed(
        "StreamServerEndpointService._raiseSynchronously",
        "privilegedStartService no longer reads it; rustorium.tls.listening_service uses "
        "EndpointListeningService instead")
    service = tls.listening_service(_Endpoint(defer.fail(CannotListenError("", 1, "in use"))),
                                    Factory())
    assert isinstance(service, StreamServerEndpointService)
    with pytest.raises(CannotListenError):
        service.privilegedStartService()


def test_a_service_class_without_raiseSynchronously_is_detected():
    class Plain(Service):
        def privilegedStartService(self):
            pass

    assert not internals.raises_synchronously(Plain)


def test_without_raiseSynchronously_a_failure_to_listen_still_raises(monkeypatch):
    monkeypatch.setattr(tls, "raises_synchronously", lambda: False)
    endpoint = _Endpoint(defer.fail(CannotListenError("", 1, "in use")))
    service = tls.listening_service(endpoint, Factory())
    assert isinstance(service, tls.EndpointListeningService)
    with pytest.raises(CannotListenError):
        service.privilegedStartService()


def test_without_raiseSynchronously_the_port_listens_and_stops(monkeypatch):
    monkeypatch.setattr(tls, "raises_synchronously", lambda: False)
    port = _Port()
    endpoint = _Endpoint(defer.succeed(port))
    service = tls.listening_service(endpoint, Factory())
    service.privilegedStartService()
    service.startService()
    assert endpoint.listened == 1
    assert service.running
    stopped = service.stopService()
    assert port.stopped
    assert not service.running
    assert stopped.called


def test_without_raiseSynchronously_a_later_failure_is_logged(monkeypatch):
    monkeypatch.setattr(tls, "raises_synchronously", lambda: False)
    listening = defer.Deferred()
    service = tls.listening_service(_Endpoint(listening), Factory())
    logged = []
    monkeypatch.setattr(tls.log, "failure", lambda *a, **k: logged.append(a))
    service.startService()
    listening.errback(CannotListenError("", 1, "in use"))
    assert len(logged) == 1
    service.stopService()


# -- Autobahn and txredisapi ----------------------------------------------------------


def test_the_protocol_shadows_no_private_of_autobahn():
    """
    A private method of ours with the name of one of Autobahn's would be
    called by Autobahn (its C{_send} drains its send queue).
    """
    ours = {name for name in vars(RustoriumServerProtocol)
            if name.startswith("_") and not name.startswith("__")}
    theirs = {name for base in RustoriumServerProtocol.__mro__[1:]
              if base.__module__.startswith("autobahn") for name in vars(base)}
    assert not ours & theirs, changed(
        ", ".join(sorted(ours & theirs)), "RustoriumServerProtocol defines a private name "
        "Autobahn's protocol has too", "Autobahn", autobahn.__version__)


def test_txredisapi_builds_commands_with_build_command():
    """
    CommandProtocol replaces txredisapi's C{_build_command} with a faster
    encoder; were it renamed, ours would silently go unused.
    """
    assert "_build_command" in txredisapi.BaseRedisProtocol.execute_command.__code__.co_names, (
        f"txredisapi {getattr(txredisapi, '__version__', '?')} no longer calls "
        "_build_command: rustorium.broker.redislink.CommandProtocol's encoder is unused "
        "(correct, but slower)")
    assert CommandProtocol()._build_command("EVAL", 1, 2.5, b"x") == (
        b"*4\r\n$4\r\nEVAL\r\n$1\r\n1\r\n$8\r\n2.500000\r\n$1\r\nx\r\n")


def test_the_subscriber_parses_with_a_reader_of_its_own():
    class Receiver:
        def __init__(self):
            self.messages = []
            self.batches = 0

        def message(self, channel, data):
            self.messages.append((channel, data))

        def received(self):
            self.batches += 1

    protocol = SubscriberProtocol(charset=None, convertNumbers=False)
    protocol.receiver = receiver = Receiver()
    protocol.dataReceived(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n*3\r\n$7\r\nmess")
    protocol.dataReceived(b"age\r\n$1\r\nc\r\n$2\r\nho\r\n")
    assert receiver.messages == [(b"c", b"hi"), (b"c", b"ho")]
