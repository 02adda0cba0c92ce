"""
The HTTP side of a listening port: a C{twisted.web} site whose C{/v1} is the
WebSocket endpoint.

Requests that cannot become a session are refused, never answered with a
page a client would take for success: a WebSocket handshake on any other
path gets 404 naming C{/v1}, and a plain request to C{/v1} gets 426 Upgrade
Required, before any key is checked.

The site's access log never shows query strings, because the API key may
travel in one (C{?api_key=...}).
"""

from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Site

from . import __version__
from .websocket import API_PATH, RustoriumServerFactory

_API_CHILD = API_PATH.lstrip("/").encode("ascii")

_INDEX = (
    "Rustorium server {version}\n"
    "WebSocket API: /v1?api_key=KEY (or Authorization: Bearer KEY)\n"
    "Health: /healthz   Metrics: /metrics\n"
)


def is_websocket_handshake(request: http.Request) -> bool:
    """
    Whether a request asks to upgrade to WebSocket.
    """
    upgrade = request.getHeader(b"upgrade") or b""
    return any(token.strip().lower() == b"websocket" for token in upgrade.split(b","))


class WebSocketEndpoint(WebSocketResource):
    """
    The WebSocket API as a resource: a handshake goes to Autobahn; any other
    request gets 426 Upgrade Required, where Autobahn would answer 200 with
    its HTML status page and no key check.
    """

    def render(self, request: http.Request) -> Any:
        if is_websocket_handshake(request):
            return super().render(request)
        request.setResponseCode(426, b"Upgrade Required")
        request.setHeader(b"upgrade", b"websocket")
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (
            b"This is the Rustorium WebSocket API: connect with a WebSocket client,"
            b" presenting an API key (?api_key=KEY or Authorization: Bearer KEY).\n"
        )


class NoWebSocketHere(Resource):
    """
    The answer to a WebSocket handshake on a path other than C{/v1}: 404,
    with the reason phrase saying where to connect.
    """

    isLeaf = True

    def render(self, request: http.Request) -> bytes:
        message = f"no WebSocket endpoint here; connect to {API_PATH}"
        request.setResponseCode(404, message.encode("ascii"))
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return message.encode("ascii") + b"\n"


class Root(Resource):
    """
    The site's root: its pages, with a WebSocket handshake on any path but
    C{/v1} refused by L{NoWebSocketHere} (C{/} would answer 200 and leave
    the client waiting for nothing).
    """

    def getChildWithDefault(self, path: bytes, request: http.Request) -> Resource:
        if path != _API_CHILD and is_websocket_handshake(request):
            return NoWebSocketHere()
        return super().getChildWithDefault(path, request)


def redacted_log_formatter(timestamp: str, request: http.Request) -> str:
    """
    Twisted's combined log format, with the query string cut from the
    request line (it may hold an API key).
    """
    uri = request.uri
    request.uri = uri.split(b"?", 1)[0]
    try:
        return http.combinedLogFormatter(timestamp, request)
    finally:
        request.uri = uri


class Index(Resource):
    """
    A plain-text page at C{/} saying what this port is.
    """

    isLeaf = True

    def render_GET(self, request: http.Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return _INDEX.format(version=__version__).encode("utf-8")


def build_site(
    factory: RustoriumServerFactory, timeout: float, health: Resource, metrics: Resource
) -> Site:
    """
    The site for a listening port: C{/v1} is the WebSocket API, C{/healthz}
    and C{/metrics} are for operators.

    @param timeout: seconds an idle HTTP connection (one that has not
        finished its request) is kept.
    """
    root = Root()
    root.putChild(b"", Index())
    root.putChild(_API_CHILD, WebSocketEndpoint(factory))
    root.putChild(b"healthz", health)
    root.putChild(b"metrics", metrics)
    site = Site(root, logFormatter=redacted_log_formatter)
    site.timeOut = timeout
    site.displayTracebacks = False
    return site
