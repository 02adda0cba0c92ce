"""
Heartbeats and the silence timeout, on a fake clock.
"""

import orjson

from rustorium.closecodes import CloseCode
from rustorium.heartbeat import HeartbeatService
from tests.helpers import make_server, open_session, send


def start(clock, **settings):
    server = make_server(clock, **settings)
    service = HeartbeatService(server, clock, lambda payload: payload)
    service.startService()
    return server, service


def test_heartbeat_to_every_session(clock):
    """
    Every interval, each session gets the same heartbeat frame.
    """
    server, service = start(clock)
    (_, conn_a), (_, conn_b) = open_session(server), open_session(server)
    clock.advance(30)
    assert len(conn_a.frames) == 1
    assert conn_a.frames == conn_b.frames
    assert orjson.loads(conn_a.frames[0]) == {
        "type": "heartbeat", "data": {"timestamp": "2023-11-14T22:13:50.000000Z"}
    }
    clock.advance(30)
    assert len(conn_b.frames) == 2
    service.stopService()


def test_silent_connection_closed(clock):
    """
    A connection that sends nothing for three intervals is closed with
    4100; one that answers heartbeats stays.
    """
    server, service = start(clock, heartbeat_interval=10)
    _, silent_conn = open_session(server)
    talking, talking_conn = open_session(server)
    for _ in range(3):
        clock.advance(10)
        send(talking, {"type": "heartbeat_response", "data": {}})
    assert silent_conn.closed is None
    clock.advance(1)
    assert silent_conn.closed[0] == CloseCode.HEARTBEAT_TIMEOUT
    assert talking_conn.closed is None
    service.stopService()


def test_timeout_is_configurable(clock):
    server, service = start(clock, heartbeat_interval=30, heartbeat_timeout=5)
    session, connection = open_session(server)
    clock.advance(4)
    send(session, {"type": "ping"})
    clock.advance(5)
    assert connection.closed is None
    clock.advance(1)
    assert connection.closed[0] == CloseCode.HEARTBEAT_TIMEOUT
    service.stopService()


def test_any_message_counts(clock):
    """
    Any message, even an invalid one, shows the client is alive.
    """
    server, service = start(clock, heartbeat_interval=1)
    session, connection = open_session(server)
    for _ in range(10):
        clock.advance(1)
        send(session, b"garbage")
    assert connection.closed is None
    service.stopService()
