"""
The HTTP side of a listening port: a C{twisted.web} site whose C{/v1} is the
WebSocket endpoint and C{/api/v1/} the HTTP API (L{rustorium.httpapi}).

Requests that cannot become a session are refused, never answered with a
page a client would take for success: a WebSocket handshake on any other
path gets 404 naming C{/v1}, and a plain request to C{/v1} gets 426 Upgrade
Required, before any key is checked.

The site's access log never shows query strings or fragments, because the
API key may travel in one (C{?api_key=...}, or C{#api_key=...} from a
hand-made client).
"""

from io import BytesIO
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from . import __version__
from .admission import GuardedSite
from .websocket import API_PATH, RustoriumServerFactory

_API_CHILD = API_PATH.lstrip("/").encode("ascii")

_INDEX = (
    "Rustorium server {version}\n"
    "WebSocket API: /v1?api_key=KEY (or Authorization: Bearer KEY)\n"
    "HTTP API: /api/v1/ (Authorization: Bearer KEY; /api/v1/openapi.json describes it)\n"
    "Operator console: /admin/ (sign in with an admin key)\n"
    "Health: /healthz   Metrics: /metrics\n"
)


class LimitedRequest(Request):
    """
    A request whose body beyond the site's C{max_body} bytes is dropped as
    it arrives, rather than buffered (in memory, or on disk past 100 KB as
    C{twisted.web} does); C{body_too_large} tells the resource, which
    answers 413. The whole request must still arrive within the
    connection's deadline (L{rustorium.admission}), so a body that never
    ends is cut off there.
    """

    body_too_large = False
    _body_bytes = 0

    def _limit(self) -> int | None:
        site = getattr(self.channel, "site", None)
        return getattr(site, "max_body", None)

    def gotLength(self, length: int | None) -> None:
        limit = self._limit()
        if limit is not None and length is not None and length > limit:
            self.body_too_large = True
            self.content = BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._body_bytes += len(data)
        limit = self._limit()
        if limit is not None and self._body_bytes > limit:
            self.body_too_large = True
            self.content.close()
            self.content = BytesIO()
            return
        super().handleContentChunk(data)


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
            channel = request.channel
            result = super().render(request)
            if result is NOT_DONE_YET and channel is not None and channel.transport is None:
                # Autobahn took the connection over; the HTTP channel and
                # its request, never finished, hold each other: let go of
                # them now, or they wait (1.3 KiB a connection) for the
                # collector's next full pass.
                channel.requests = []
                request.channel = None
            return result
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
    Twisted's combined log format, with the query string and any fragment
    cut from the request line (either may hold an API key).
    """
    uri = request.uri
    request.uri = uri.split(b"?", 1)[0].split(b"#", 1)[0]
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
    factory: RustoriumServerFactory,
    timeout: float,
    health: Resource,
    metrics: Resource,
    api: Resource | None = None,
    max_body: int | None = None,
    console: Resource | None = None,
) -> Site:
    """
    The site for a listening port: C{/v1} is the WebSocket API, C{/api/v1}
    the HTTP API, C{/admin/} the operator console (L{rustorium.console}),
    C{/healthz} and C{/metrics} are for operators.

    @param timeout: seconds an idle HTTP connection (one that has not
        finished its request) is kept.
    @param max_body: the most bytes of a request body kept (see
        L{LimitedRequest}).
    """
    root = Root()
    root.putChild(b"", Index())
    root.putChild(_API_CHILD, WebSocketEndpoint(factory))
    root.putChild(b"healthz", health)
    root.putChild(b"metrics", metrics)
    if api is not None:
        versions = Resource()
        versions.putChild(b"v1", api)
        root.putChild(b"api", versions)
    if console is not None:
        root.putChild(b"admin", console)
    site = GuardedSite(factory.admission, root, logFormatter=redacted_log_formatter)
    site.requestFactory = LimitedRequest
    site.max_body = max_body
    site.timeOut = timeout
    site.displayTracebacks = False
    return site
