"""
The client's WebSocket layer: Autobahn protocol and factory, framing only.

The protocol hands every text message to the client's session and tells
the client when the connection opens and closes (with the close code, or
the HTTP status of a refused handshake). It implements L{IClientConnection}
for the session. It knows WebSocket and nothing of the API.
"""

import re
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.logger import Logger
from zope.interface import implementer

from .. import __version__
from .session import IClientConnection

HANDSHAKE_TIMEOUT = 10.0
"""Seconds for the opening handshake (the server allows as long)."""
CLOSE_TIMEOUT = 5.0
"""Seconds to wait for the server's half of a closing handshake."""

_STATUS_LINE = re.compile(r"HTTP/\d\.\d\s+(\d{3})\s*(.*)")


@implementer(IClientConnection)
class RustoriumClientProtocol(WebSocketClientProtocol):
    """
    One connection to the server.
    """

    # Autobahn owns self.log; ours is _log.
    _log = Logger()
    _opened = False
    _ended = False

    def onOpen(self) -> None:
        self._opened = True
        try:
            self.factory.rustorium_client.connection_opened(self)
        except Exception:
            # onOpen runs in a Deferred chain with no errback: log here.
            self._log.failure("Opening a client connection failed")
            self.abort("client failure")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if isBinary:
            self._log.warn("Ignoring a binary message from the server")
            return
        try:
            self.factory.rustorium_client.message_received(payload)
        except Exception:
            self._log.failure("Handling a message from the server failed")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        status = None
        if not self._opened:
            status = _refusal(getattr(self, "http_status_line", None))
        try:
            self.factory.rustorium_client.connection_closed(self, code, reason, status)
        except Exception:
            self._log.failure("Handling a closed client connection failed")

    # IClientConnection

    def send_message(self, payload: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(payload)

    def abort(self, reason: str) -> None:
        self.wasClean = False
        self.wasNotCleanReason = reason
        self.dropConnection(abort=True)

    def close(self, code: int, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            self.sendClose(code, reason)


def _refusal(status_line: str | None) -> tuple[int, str] | None:
    """
    The status and reason of a refused handshake's HTTP status line.
    """
    if not status_line:
        return None
    match = _STATUS_LINE.match(status_line.strip())
    if match is None or match.group(1) == "101":
        return None
    return int(match.group(1)), match.group(2).strip()


class RustoriumClientFactory(WebSocketClientFactory):
    """
    Builds the connections of one client.

    @ivar rustorium_client: what the protocol reports to: an object with
        C{connection_opened(protocol)}, C{message_received(payload)} and
        C{connection_closed(protocol, code, reason, refusal)}.
    """

    protocol = RustoriumClientProtocol
    noisy = False

    def __init__(self, rustorium_client: Any, url: str, headers: dict[str, str],
                 reactor: Any = None) -> None:
        super().__init__(url, headers=headers, useragent=f"rustorium-client/{__version__}",
                         reactor=reactor)
        self.rustorium_client = rustorium_client
        self.setProtocolOptions(
            openHandshakeTimeout=HANDSHAKE_TIMEOUT,
            closeHandshakeTimeout=CLOSE_TIMEOUT,
            # Dead connections are noticed by the API's own heartbeats.
            autoPingInterval=0,
            tcpNoDelay=True,
        )
