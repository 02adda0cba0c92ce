"""
The HTTP side of a listening port: a C{twisted.web} site whose C{/v1} is the
WebSocket endpoint.

The site's access log never shows query strings or fragments, because the
API key may travel in one (C{?api_key=...}, or C{#api_key=...} from a
hand-made client).
"""

from autobahn.twisted.resource import WebSocketResource
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Site

from . import __version__
from .admission import GuardedSite
from .websocket import RustoriumServerFactory

_INDEX = (
    "Rustorium server {version}\n"
    "WebSocket API: /v1?api_key=KEY (or Authorization: Bearer KEY)\n"
    "Health: /healthz   Metrics: /metrics\n"
)


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
    factory: RustoriumServerFactory, timeout: float, health: Resource, metrics: Resource
) -> Site:
    """
    The site for a listening port: C{/v1} is the WebSocket API, C{/healthz}
    and C{/metrics} are for operators.

    @param timeout: seconds an idle HTTP connection (one that has not
        finished its request) is kept.
    """
    root = Resource()
    root.putChild(b"", Index())
    root.putChild(b"v1", WebSocketResource(factory))
    root.putChild(b"healthz", health)
    root.putChild(b"metrics", metrics)
    site = GuardedSite(factory.admission, root, logFormatter=redacted_log_formatter)
    site.timeOut = timeout
    site.displayTracebacks = False
    return site
