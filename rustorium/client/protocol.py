"""
The client's WebSocket layer: Autobahn protocol and factory, framing only.

The protocol hands every text message to the client's session and tells
the client when the connection opens and closes (with the close code, the
HTTP status of a refused handshake, or why the TLS handshake failed). It
implements L{IClientConnection} for the session. It knows WebSocket and
nothing of the API.
"""

import re
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
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
    _tls_failure: str | None = None

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

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Autobahn's onClose gets only a string: keep what failed in TLS.
        if not self._opened:
            self._tls_failure = tls_failure(reason.value, self.transport, self.factory.host)
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        status = None
        if not self._opened:
            status = _refusal(getattr(self, "http_status_line", None))
        try:
            self.factory.rustorium_client.connection_closed(
                self, code, reason, status, tls_failure=self._tls_failure
            )
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


def tls_failure(error: BaseException, transport: Any, host: str) -> str | None:
    """
    What went wrong in a failed TLS handshake, in one line (the reason
    OpenSSL gave, and why it rejected the certificate); C{None} when
    C{error} is not a TLS failure.
    """
    if isinstance(error, VerificationError):
        why = _verify_result(transport)
        also = f" (and: {why})" if why else ""
        return f"certificate verify failed: the certificate is not for {host}{also}"
    if not isinstance(error, SSL.Error):
        return None
    entries = error.args[0] if error.args and isinstance(error.args[0], list) else []
    reasons = [entry[-1] for entry in entries if isinstance(entry, tuple) and entry[-1]]
    failure = "; ".join(reasons) or str(error) or "the TLS handshake failed"
    if "certificate verify failed" in failure:
        why = _verify_result(transport)
        if why:
            failure = f"{failure}: {why}"
    return failure


def _verify_result(transport: Any) -> str | None:
    """
    Why OpenSSL rejected the server's certificate (C{"self-signed
    certificate"}, C{"certificate has expired"}), from the connection's
    verify result. pyOpenSSL has no public call for it, so this reaches
    into its bindings, and gives up quietly if they change.
    """
    try:
        from OpenSSL._util import ffi, lib

        code = lib.SSL_get_verify_result(transport.getHandle()._ssl)
        if code == 0:
            return None
        return ffi.string(lib.X509_verify_cert_error_string(code)).decode()
    except Exception:
        return None


class RustoriumClientFactory(WebSocketClientFactory):
    """
    Builds the connections of one client.

    @ivar rustorium_client: what the protocol reports to: an object with
        C{connection_opened(protocol)}, C{message_received(payload)} and
        C{connection_closed(protocol, code, reason, refusal, tls_failure=...)}.
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
