"""
Autobahn's debug lines are formatted only when they are logged: a new
connection no longer pretty-prints its protocol options for a line that
is dropped.
"""

import pprint

import pytest
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket import protocol
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from rustorium import quietdebug
from rustorium.websocket import RustoriumServerFactory, prepare_frame
from tests.helpers import make_server


@pytest.fixture
def installed():
    quietdebug.uninstall()
    assert quietdebug.install(), (
        "Autobahn's protocol module no longer has pformat and hltype: check "
        "whether it still formats debug arguments eagerly, and update "
        "rustorium/quietdebug.py"
    )
    yield
    quietdebug.uninstall()
    quietdebug.install()


@pytest.fixture
def pformat_calls(monkeypatch):
    calls = []
    original = pprint.PrettyPrinter.pformat

    def counted(self, value):
        calls.append(value)
        return original(self, value)

    monkeypatch.setattr(pprint.PrettyPrinter, "pformat", counted)
    return calls


def connect(clock):
    factory = RustoriumServerFactory(make_server(clock, prepare_frame), reactor=clock)
    address = IPv4Address("TCP", "127.0.0.1", 40000)
    connection = factory.buildProtocol(address)
    connection.makeConnection(StringTransport(peerAddress=address))
    return connection


def test_a_connection_formats_no_debug_line_that_is_not_logged(clock, installed,
                                                                pformat_calls):
    connection = connect(clock)
    assert connection.state == connection.STATE_CONNECTING
    assert pformat_calls == []


def test_debug_lines_are_formatted_when_autobahn_logs_debug(clock, installed, pformat_calls):
    logger = WebSocketServerProtocol.log
    level = logger._log_level
    logger._set_log_level("debug")
    try:
        connect(clock)
        assert quietdebug.debugging()
    finally:
        logger._set_log_level(level)
    assert len(pformat_calls) >= 1, "the options are printed for the debug line"
    assert protocol.pformat({"a": 1}) != pprint.pformat({"a": 1}), "not formatted at info level"


def test_install_is_done_once():
    quietdebug.install()
    replaced = protocol.pformat
    assert quietdebug.install()
    assert protocol.pformat is replaced
    assert replaced.__wrapped__ is pprint.pformat
