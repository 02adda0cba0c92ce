"""
The WebSocket layer: Autobahn protocol and factory, framing only.

The protocol authenticates the opening handshake (HTTP 401 before any
session exists), then hands every message to its L{Session} and implements
L{IConnection} for it. It knows WebSocket and nothing of the API.
"""

from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from . import __version__
from .closecodes import CloseCode
from .hub import Update
from .server import Server
from .session import IConnection, Session
from .storage.keys import ApiKey

API_PATH = "/v1"


def prepare_frame(payload: bytes) -> PreparedMessage:
    """
    Frame an encoded text message once for any number of connections.
    (Compression is never negotiated, so the framed bytes serve everyone.)
    """
    return PreparedMessage(payload, False, False, True)


def _presented_key(request: Any) -> str | None:
    """
    The API key of a handshake: C{Authorization: Bearer KEY}, else the
    C{api_key} query parameter.
    """
    authorization = request.headers.get("authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    values = request.params.get("api_key")
    return values[0] if values else None


@implementer(IConnection)
class RustoriumServerProtocol(WebSocketServerProtocol):
    """
    One WebSocket connection.
    """

    # Autobahn owns self.log (ours is _log) and sets self.peer, which
    # IConnection asks for, to a string such as "tcp:127.0.0.1:50312".
    _log = Logger()
    session: Session | None = None
    _api_key: ApiKey | None = None

    def onConnect(self, request: Any) -> "Deferred[None] | None":
        try:
            return self._check_handshake(request)
        except ConnectionDeny:
            raise
        except Exception:
            # Autobahn would answer 500 but log no traceback.
            self._log.failure("Checking a handshake failed")
            raise ConnectionDeny(500, "internal error") from None

    def _check_handshake(self, request: Any) -> "Deferred[None]":
        server: Server = self.factory.api_server
        if not server.ready:
            raise ConnectionDeny(503, "the server is starting; try again shortly")
        path = self.factory.path
        if path is not None and request.path != path:
            raise ConnectionDeny(404, f"no WebSocket endpoint here; connect to {path}")
        key = _presented_key(request)
        if key is None:
            raise ConnectionDeny(
                401,
                "missing API key: add ?api_key=KEY to the URL or send Authorization: Bearer KEY",
            )
        d = server.keys.authenticate(key)
        d.addCallbacks(self._authenticated, self._authentication_failed)
        return d

    def _authenticated(self, api_key: ApiKey | None) -> None:
        if api_key is None:
            self._log.info("Refused a handshake from {peer}: unknown or revoked API key",
                           peer=self.peer)
            raise ConnectionDeny(401, "unknown or revoked API key")
        self._api_key = api_key

    def _authentication_failed(self, failure: Failure) -> None:
        self._log.failure("Checking an API key failed", failure)
        raise ConnectionDeny(503, "cannot check API keys right now; try again shortly")

    def onOpen(self) -> None:
        try:
            self.session = Session(self, self._api_key, self.factory.api_server)
            self._log.info("Connection opened: {peer} with key {key}",
                           peer=self.peer, key=self._api_key.name)
        except Exception:
            # onOpen runs in a Deferred chain with no errback: log here.
            self._log.failure("Opening a session failed")
            self.sendClose(int(CloseCode.INTERNAL_ERROR), "internal error")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.session
        if session is None:
            return
        try:
            session.message_received(payload, isBinary)
        except Exception:
            self._log.failure("Handling a message from {peer} failed", peer=self.peer)
            session.close(CloseCode.INTERNAL_ERROR, "internal error")

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        session = self.session
        if session is None:
            return
        self.session = None
        session.connection_lost()
        self._log.info("Connection closed: {peer} with key {key} (code {code})",
                       peer=self.peer, key=self._api_key.name, code=code)

    # IConnection

    def send_payload(self, payload: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(payload)

    def deliver(self, update: Update) -> None:
        if self.state == self.STATE_OPEN:
            self.sendPreparedMessage(update.frame)

    def send_frame(self, frame: PreparedMessage) -> None:
        if self.state == self.STATE_OPEN:
            self.sendPreparedMessage(frame)

    def close(self, code: int, reason: str) -> None:
        if self.state == self.STATE_OPEN:
            self.sendClose(code, reason)


class RustoriumServerFactory(WebSocketServerFactory):
    """
    Builds connections for one L{Server}, with the production protocol
    options: size limits (1009 on excess, with a close frame rather than a
    bare drop), handshake and close timeouts, no compression (so prepared
    frames serve every connection), masked client frames required.

    @ivar path: the request path the handshake must use, or C{None} to
        accept any (when mounted as a resource, the site routes).
    """

    protocol = RustoriumServerProtocol

    def __init__(self, api_server: Server, path: str | None = API_PATH, reactor: Any = None):
        super().__init__(server=f"Rustorium/{__version__}", reactor=reactor)
        self.api_server = api_server
        self.path = path
        settings = api_server.settings
        self.setProtocolOptions(
            maxFramePayloadSize=settings.max_message_size,
            maxMessagePayloadSize=settings.max_message_size,
            failByDrop=False,
            openHandshakeTimeout=settings.handshake_timeout,
            closeHandshakeTimeout=settings.close_timeout,
            requireMaskedClientFrames=True,
            perMessageCompressionAccept=lambda offers: None,
            autoPingInterval=0,
            tcpNoDelay=True,
        )
