"""
C{/admin/}: the operator console's pages, files and calls.

==========================  ==================================================
C{GET /admin/}              the console (one page; also at C{overview},
                            C{markets}, C{transactions}, C{keys} and
                            C{connections}, so that each view has its URL)
C{GET /admin/static/...}    its scripts, styles and the vendored chart library
C{GET /admin/session}       the signed-in session (key name, CSRF token), or
                            401
C{POST /admin/session}      sign in: C{{"key": "rk_..."}} with an admin key
C{DELETE /admin/session}    sign out
C{GET /admin/events}        server-sent events (L{rustorium.console.events})
C{/admin/api/v1/...}        the HTTP API (L{rustorium.httpapi}), with the
                            session cookie instead of C{Authorization}
==========================  ==================================================

Only the page, its static files and the sign-in answer without a session;
everything else is 401 without one. The console has no API of its own:
what it shows and does goes through the same L{HttpApi} and application
layer as C{/api/v1/}, with the session standing in for the bearer key and
a CSRF token required of every request that changes something
(L{rustorium.console.security}).
"""

import hashlib
import math
from importlib import resources
from typing import Any

import orjson
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..errors import ErrorCode, HttpErrorCode, RequestError
from ..httpapi import HttpApi
from ..identifiers import normalise_address
from ..ratelimit import TokenBucket
from ..server import Server
from ..storage.keys import ADMIN, ApiKey
from ..timestamps import isoformat
from .events import TOPICS, EventStream
from .monitor import Monitor
from .security import (
    CSRF_HEADER,
    SAFE_METHODS,
    clear_session_cookie,
    same_origin,
    secure_headers,
    session_token,
    set_session_cookie,
)
from .sessions import ConsoleSession, SessionStore

PAGES = (b"overview", b"markets", b"transactions", b"keys", b"connections")
"""The console's views, each a URL of its own serving the same page."""

MAX_ADDRESSES = 20
"""Addresses one event stream may follow."""

SIGN_IN_RATE = 5.0
SIGN_IN_BURST = 20
"""Sign-in attempts per second on a node, and at once: each costs a key
lookup in the database."""

CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
    ".txt": b"text/plain; charset=utf-8",
}


def _json(request: http.Request, status: int, body: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return orjson.dumps(body)


def _error(request: http.Request, status: int, code: str, message: str) -> bytes:
    return _json(request, status, {"error": {"code": code, "message": message}})


def _finish(request: http.Request, data: bytes) -> None:
    if not request.finished and request.channel is not None:
        request.write(data)
        request.finish()


def console_base(request: http.Request) -> str:
    """
    The path the console is mounted at, with a slash at each end
    (C{/admin/}), from the path walked to reach a child of the console.
    """
    parts = [p.decode("latin-1") for p in request.prepath[:-1]]
    return "/" + "".join(f"{p}/" for p in parts if p)


def load_static() -> dict[str, bytes]:
    """
    The console's files (C{rustorium/console/static/}), by path.
    """
    files = {}

    def walk(directory: Any, prefix: str) -> None:
        for entry in directory.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            elif entry.name.rsplit(".", 1)[-1] in {"html", "js", "css", "svg", "png", "txt"} \
                    or entry.name == "LICENSE":
                files[prefix + entry.name] = entry.read_bytes()

    walk(resources.files("rustorium.console").joinpath("static"), "")
    return files


class StaticFiles(Resource):
    """
    C{/admin/static/}: the console's files, read once from the package,
    with an C{ETag} so a browser revalidates cheaply.
    """

    isLeaf = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__()
        self._files = files
        self._etags = {
            path: b'"' + hashlib.sha256(data).hexdigest()[:16].encode("ascii") + b'"'
            for path, data in files.items()
        }

    def render_GET(self, request: http.Request) -> bytes:
        path = "/".join(p.decode("latin-1") for p in request.postpath)
        data = self._files.get(path)
        if data is None or path.endswith(".html"):
            return _error(request, 404, "not_found", "no such file")
        suffix = "." + path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ".txt"
        request.setHeader(b"content-type", CONTENT_TYPES.get(suffix, b"text/plain"))
        request.setHeader(b"cache-control", b"no-cache")
        etag = self._etags[path]
        request.setHeader(b"etag", etag)
        if request.getHeader(b"if-none-match") == etag:
            request.setResponseCode(304)
            return b""
        return data


class IndexPage(Resource):
    """
    The console's one page. It holds no data and no secret: without a
    session its script shows the sign-in form.
    """

    isLeaf = True

    def __init__(self, html: bytes) -> None:
        super().__init__()
        self._html = html

    def render_GET(self, request: http.Request) -> bytes:
        if request.postpath not in ([], [b""]):
            return _error(request, 404, "not_found", "no such page")
        base = console_base(request)
        request.setHeader(b"content-type", CONTENT_TYPES[".html"])
        request.setHeader(b"cache-control", b"no-store")
        return self._html.replace(b'<base href="/admin/">',
                                  b'<base href="' + base.encode("utf-8") + b'">')


class SessionPage(Resource):
    """
    C{/admin/session}: sign in, see the session, sign out.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, console: "Console") -> None:
        super().__init__()
        self._console = console
        self._bucket = TokenBucket(SIGN_IN_RATE, SIGN_IN_BURST,
                                   console.rustorium.clock.seconds)

    def _describe(self, session: ConsoleSession) -> dict[str, object]:
        return {"key_name": session.key_name, "csrf": session.csrf,
                "expires": isoformat(session.expires)}

    def render_GET(self, request: http.Request) -> bytes:
        session = self._console.session(request)
        if session is None:
            return _error(request, 401, "unauthorized", "not signed in")
        return _json(request, 200, self._describe(session))

    def render_DELETE(self, request: http.Request) -> bytes:
        console = self._console
        session = console.session(request)
        if session is not None:
            if not same_origin(request) or not session.check_csrf(_csrf(request)):
                return _error(request, 403, "forbidden",
                              "signing out needs the console's CSRF token, from its own page")
            console.sessions.close(session_token(request))
            self.log.info("Console sign-out of API key {key_id} ({key_name})",
                          key_id=session.key_id, key_name=session.key_name)
        clear_session_cookie(request, console_base(request))
        return _json(request, 200, {"signed_in": False})

    def render_POST(self, request: http.Request) -> Any:
        if not same_origin(request):
            return _error(request, 403, "forbidden", "sign in from the console's own page")
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if content_type.lower() != b"application/json":
            return _error(request, 415, "invalid_request",
                          'send {"key": "..."} as application/json')
        if getattr(request, "body_too_large", False):
            return _error(request, 413, "payload_too_large", "the body is too large")
        if not self._bucket.take():
            retry_after = max(1, math.ceil(self._bucket.retry_after()))
            request.setHeader(b"retry-after", str(retry_after).encode("ascii"))
            return _error(request, 429, "rate_limit_exceeded",
                          f"too many sign-in attempts; retry after {retry_after} s")
        request.content.seek(0)
        try:
            body = orjson.loads(request.content.read())
        except orjson.JSONDecodeError:
            body = None
        key = body.get("key") if isinstance(body, dict) else None
        if not isinstance(key, str) or not key.strip():
            return _error(request, 400, "invalid_params", "key: enter an admin API key")
        d = maybeDeferred(self._console.rustorium.keys.authenticate, key.strip())
        d.addCallback(self._signed_in, request)
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _signed_in(self, api_key: ApiKey | None, request: http.Request) -> None:
        if api_key is None:
            _finish(request, _error(request, 401, "unauthorized",
                                    "unknown or revoked API key"))
            return
        if ADMIN not in api_key.scopes:
            _finish(request, _error(
                request, 403, "forbidden",
                f"the key {api_key.name!r} has no admin scope; the console needs an admin key "
                "(rustorium keys create --scope admin)",
            ))
            return
        console = self._console
        token, session = console.sessions.open(api_key.key_id, api_key.name)
        set_session_cookie(request, token, console.sessions.lifetime, console_base(request))
        self.log.info("Console sign-in with API key {key_id} ({key_name}) from {peer}",
                      key_id=api_key.key_id, key_name=api_key.name,
                      peer=getattr(request.getClientAddress(), "host", "?"))
        _finish(request, _json(request, 200, self._describe(session)))

    def _failed(self, failure: Any, request: http.Request) -> None:
        self.log.failure("Checking a console sign-in failed", failure)
        _finish(request, _error(request, 503, "unavailable",
                                "cannot check API keys right now; try again shortly"))


def _csrf(request: http.Request) -> str | None:
    value = request.getHeader(CSRF_HEADER)
    return None if value is None else value.decode("latin-1")


class EventsPage(Resource):
    """
    C{GET /admin/events?topics=overview,markets&address=0x...}: the live
    stream (L{EventStream}).
    """

    isLeaf = True

    def __init__(self, console: "Console") -> None:
        super().__init__()
        self._console = console

    def render_GET(self, request: http.Request) -> Any:
        console = self._console
        session = console.session(request)
        if session is None:
            return _error(request, 401, "unauthorized", "not signed in")
        if console.monitor.full():
            return _error(request, 503, "unavailable",
                          "too many console streams are open on this node")
        topics = set()
        for value in request.args.get(b"topics", []):
            topics.update(t for t in value.decode("latin-1").split(",") if t)
        unknown = topics - set(TOPICS)
        if unknown:
            return _error(request, 400, "invalid_params",
                          f"topics: {sorted(unknown)[0][:40]!r} is not one of "
                          f"{', '.join(TOPICS)}")
        addresses = []
        for value in request.args.get(b"address", []):
            address = normalise_address(value.decode("latin-1"))
            if address is None:
                return _error(request, 400, "invalid_params",
                              "address: must be 0x followed by 40 hex digits")
            if address not in addresses:
                addresses.append(address)
        if len(addresses) > MAX_ADDRESSES:
            return _error(request, 400, "invalid_params",
                          f"address: at most {MAX_ADDRESSES} addresses")
        stream = EventStream(request, session, frozenset(topics), tuple(addresses),
                             console.rustorium.clock)
        stream.start()
        console.monitor.add(stream)
        request.notifyFinish().addBoth(lambda _: console.monitor.remove(stream))
        return NOT_DONE_YET


class NotFound(Resource):
    """
    Anything else under C{/admin/}: 404, as JSON.
    """

    isLeaf = True

    def render(self, request: http.Request) -> bytes:
        return _error(request, 404, "not_found", "no such page in the console")


class Refused(Resource):
    """
    A call under C{/admin/api/} without a session: 401.
    """

    isLeaf = True

    def render(self, request: http.Request) -> bytes:
        return _error(request, 401, "unauthorized", "sign in to the console first")


class ApiGate(Resource):
    """
    C{/admin/api/}: the HTTP API, for signed-in browsers only.
    """

    def __init__(self, console: "Console", api: Resource) -> None:
        super().__init__()
        self._console = console
        self.putChild(b"v1", api)

    def getChildWithDefault(self, path: bytes, request: http.Request) -> Resource:
        if self._console.session(request) is None:
            return Refused()
        return super().getChildWithDefault(path, request)


class Console(Resource):
    """
    The console (see the module docstring), mounted at C{/admin}.

    @ivar rustorium: the server's shared state (L{Server}; C{twisted.web}
        owns a resource's C{server} attribute).
    @ivar sessions: the signed-in browsers.
    @ivar monitor: the live figures and taps of the event streams.
    """

    log = Logger()

    def __init__(self, server: Server, sessions: SessionStore, monitor: Monitor) -> None:
        super().__init__()
        self.rustorium = server
        self.sessions = sessions
        self.monitor = monitor
        files = load_static()
        index = IndexPage(files["index.html"])
        self.putChild(b"", index)
        for page in PAGES:
            self.putChild(page, index)
        self.putChild(b"static", StaticFiles(files))
        self.putChild(b"session", SessionPage(self))
        self.putChild(b"events", EventsPage(self))
        self.putChild(b"api", ApiGate(self, HttpApi(server, authenticate=self.authenticate)))

    def getChildWithDefault(self, path: bytes, request: http.Request) -> Resource:
        secure_headers(request)
        return super().getChildWithDefault(path, request)

    def getChild(self, path: bytes, request: http.Request) -> Resource:
        return NotFound()

    def render(self, request: http.Request) -> bytes:
        """
        C{/admin} without its slash: to C{/admin/}.
        """
        secure_headers(request)
        target = b"/" + b"/".join(request.prepath) + b"/"
        request.redirect(target)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"The console is at " + target + b"\n"

    def session(self, request: http.Request) -> ConsoleSession | None:
        """
        The live session the request's cookie names, if any.
        """
        return self.sessions.find(session_token(request))

    async def authenticate(self, request: http.Request) -> ApiKey:
        """
        The HTTP API's authentication for the console: the session's key,
        still admin and unrevoked; and for a request that changes
        something, this origin and the session's CSRF token.

        @raise RequestError: 401 without a live session (or with a key no
            longer valid, which ends the session), 403 without the CSRF
            token or from another origin.
        """
        session = self.session(request)
        if session is None:
            raise RequestError(HttpErrorCode.UNAUTHORIZED, "sign in to the console first")
        if request.method not in SAFE_METHODS:
            if not same_origin(request):
                raise RequestError(ErrorCode.FORBIDDEN,
                                   "a console action must come from the console's own page")
            if not session.check_csrf(_csrf(request)):
                raise RequestError(ErrorCode.FORBIDDEN,
                                   "a console action needs the session's X-CSRF-Token")
        try:
            api_key = await self.rustorium.keys.find(session.key_id)
        except Exception:
            self.log.failure("Checking a console session's key failed")
            raise RequestError(HttpErrorCode.UNAVAILABLE,
                               "cannot check API keys right now; try again shortly") from None
        if api_key is None or api_key.revoked or ADMIN not in api_key.scopes:
            self.sessions.end_key(session.key_id)
            raise RequestError(HttpErrorCode.UNAUTHORIZED,
                               "the key this session signed in with was revoked; sign in again")
        return api_key
