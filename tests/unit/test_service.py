"""
Service wiring helpers.
"""

import errno

import pytest
from twisted.internet.error import CannotListenError

from rustorium.service import cannot_listen_message, connect_url, with_backlog


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("tcp:8765:interface=127.0.0.1", "ws://127.0.0.1:8765/v1"),
        ("tcp:8765", "ws://HOST:8765/v1"),
        ("tcp:port=99:interface=\\:\\:1", "ws://[::1]:99/v1"),
        ("ssl:8443:privateKey=k.pem:certKey=c.pem", "wss://HOST:8443/v1"),
        ("unix:/run/rustorium.sock", "ws://HOST:PORT/v1"),
    ],
)
def test_connect_url(endpoint, url):
    assert connect_url(endpoint) == url


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("tcp:8765", "tcp:8765:backlog=4096"),
        ("ssl:8443:privateKey=k.pem", "ssl:8443:privateKey=k.pem:backlog=4096"),
        ("tcp:8765:backlog=10", "tcp:8765:backlog=10"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ],
)
def test_with_backlog(endpoint, expected):
    assert with_backlog(endpoint, 4096) == expected


def test_cannot_listen_message():
    """
    A port in use gives one line naming the address, --listen and a port to
    try; other failures name the address and --listen.
    """
    in_use = OSError(errno.EADDRINUSE, "Address already in use")
    taken = CannotListenError("127.0.0.1", 8765, in_use)
    message = cannot_listen_message(taken)
    assert "\n" not in message
    assert message.startswith("cannot listen on 127.0.0.1:8765: address already in use")
    assert "--listen tcp:8766:interface=127.0.0.1" in message
    denied = CannotListenError("", 80, OSError(errno.EACCES, "Permission denied"))
    assert cannot_listen_message(denied) == (
        "cannot listen on 80: permission denied; choose another endpoint with --listen"
    )
