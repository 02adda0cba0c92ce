"""
The HTTP API for operators and feeds, under C{/api/v1/} on the same ports
as the WebSocket API: JSON in and out, described by C{docs/openapi.yaml}
(also served at C{GET /api/v1/openapi.json}), and told in
C{docs/http-api.rst}.

This module only parses, authenticates, rate-limits, calls the application
layer (L{rustorium.application.Application}, the object the WebSocket
sessions call) and writes JSON. Each request goes through, in order:

1. the route (404 for no such path, 405 for a method the path has not);
2. the server's state (503 while starting, or without its broker);
3. the body's size (413 past C{http-max-body}, dropped as it arrives:
   L{rustorium.web.LimitedRequest});
4. the key, C{Authorization: Bearer KEY} (401 without a valid one), and
   its scope (403);
5. the key's HTTP token bucket (429 with C{Retry-After});
6. the body, a JSON object (400), and each field (400 naming it);
7. the operation, whose L{RequestError}s become statuses by their code.

Every answer that is not 2xx is C{{"error": {"code": ..., "message":
...}}}, with the WebSocket API's codes where they fit
(L{rustorium.errors.ErrorCode}) and the HTTP API's own otherwise
(L{rustorium.errors.HttpErrorCode}); a refused field is named in
C{error.field} too.

No key is ever logged or answered, except a new key in the answer that
created it.
"""

import math
from collections.abc import Callable
from importlib import resources
from typing import Any
from urllib.parse import unquote

import attrs
import orjson
import yaml
from twisted.internet.defer import ensureDeferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .errors import ErrorCode, HttpErrorCode, RequestError
from .identifiers import normalise_address, normalise_transaction_id
from .prices import parse_prices
from .requests import CHANNELS, MARKET_DATA, TOKEN_UPDATES, parse_message_number
from .server import Server
from .storage.keys import ADMIN, CLIENT, PUBLISH, SCOPES, ApiKey

STATUS: dict[str, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.INVALID_PARAMS: 400,
    ErrorCode.INVALID_CHANNEL: 400,
    ErrorCode.UNKNOWN_TYPE: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.RATE_LIMIT_EXCEEDED: 429,
    ErrorCode.SUBSCRIPTION_LIMIT: 409,
    ErrorCode.INSUFFICIENT_FUNDS: 409,
    ErrorCode.INTERNAL_ERROR: 500,
    HttpErrorCode.UNAUTHORIZED: 401,
    HttpErrorCode.METHOD_NOT_ALLOWED: 405,
    HttpErrorCode.CONFLICT: 409,
    HttpErrorCode.PAYLOAD_TOO_LARGE: 413,
    HttpErrorCode.UNAVAILABLE: 503,
}
"""The HTTP status of each error code."""

MAX_KEY_NAME = 100
MAX_KEY_ADDRESSES = 1000
MAX_CLOSE_REASON = 123
"""Bytes of UTF-8 a WebSocket close reason may hold."""

MAX_CONNECTIONS_LISTED = 10_000
MAX_HISTORY = 1000
MAX_TRANSACTIONS = 1000


def load_document() -> dict:
    """
    The OpenAPI document, C{docs/openapi.yaml} (shipped in the package as
    C{rustorium/data/openapi.yaml}).
    """
    text = resources.files("rustorium").joinpath("data/openapi.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def _invalid(field: str, message: str) -> RequestError:
    return RequestError(ErrorCode.INVALID_PARAMS, f"{field}: {message}", field=field)


def _query(request: http.Request, name: str) -> str | None:
    values = request.args.get(name.encode("ascii"))
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _invalid(name, "must be UTF-8") from None


def _count(request: http.Request, name: str, default: int, most: int) -> int:
    text = _query(request, name)
    if text is None:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(most))
            and 1 <= int(text) <= most):
        raise _invalid(name, f"must be a whole number from 1 to {most}")
    return int(text)


def _fields(body: dict, allowed: tuple[str, ...], what: str) -> None:
    extra = sorted(set(body) - set(allowed))
    if extra:
        raise _invalid(extra[0][:40], f"is not a field of {what} (it takes "
                                      f"{', '.join(allowed)})")


@attrs.frozen
class Route:
    """
    One operation: a method and a path under C{/api/v1/}, whose C{{name}}
    segments are parameters (a last C{{name*}} takes the rest of the path,
    slashes and all), the scope a key needs (C{None}: no key), and the
    L{HttpApi} method that serves it.
    """

    method: str
    path: str
    scope: str | None
    serve: str

    def match(self, segments: list[str]) -> dict[str, str] | None:
        """
        The parameters, if C{segments} is this route's path.
        """
        pattern = self.path.split("/")
        found = {}
        for index, part in enumerate(pattern):
            if part.endswith("*}"):
                rest = segments[index:]
                if not rest or not all(rest):
                    return None
                found[part[1:-2]] = "/".join(rest)
                return found
            if index >= len(segments):
                return None
            if part.startswith("{"):
                if not segments[index]:
                    return None
                found[part[1:-1]] = segments[index]
            elif part != segments[index]:
                return None
        return found if len(segments) == len(pattern) else None


ROUTES = (
    Route("GET", "openapi.json", None, "openapi"),
    Route("GET", "info", ADMIN, "info"),
    Route("GET", "connections", ADMIN, "connections"),
    Route("POST", "connections/{id}/close", ADMIN, "close_connection"),
    Route("GET", "history/{channel}/{name*}", ADMIN, "history"),
    Route("POST", "prices", PUBLISH, "prices"),
    Route("GET", "keys", ADMIN, "list_keys"),
    Route("POST", "keys", ADMIN, "create_key"),
    Route("DELETE", "keys/{id}", ADMIN, "revoke_key"),
    Route("GET", "transactions/{id}", ADMIN, "transaction"),
    Route("GET", "addresses/{address}/transactions", ADMIN, "address_transactions"),
)


@attrs.frozen
class Answer:
    """
    A response: its status and JSON body, and any more headers.
    """

    status: int
    body: object
    headers: dict[bytes, bytes] = attrs.field(factory=dict)


def error_answer(error: RequestError, headers: dict[bytes, bytes] | None = None) -> Answer:
    """
    The response to a refusal.
    """
    body = {"code": str(error.code), "message": error.message, **error.extra}
    headers = dict(headers or {})
    if error.code == HttpErrorCode.UNAUTHORIZED:
        headers[b"www-authenticate"] = b'Bearer realm="rustorium"'
    return Answer(STATUS.get(error.code, 500), {"error": body}, headers)


def _bearer(request: http.Request) -> str | None:
    authorization = (request.getHeader(b"authorization") or b"").decode("latin-1")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


class HttpApi(Resource):
    """
    C{/api/v1}: every operation of the HTTP API (see the module docstring).
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        server: Server,
        document: dict | None = None,
        authenticate: Callable[[http.Request], Any] | None = None,
    ) -> None:
        """
        @param authenticate: how a request proves its key: by default
            C{Authorization: Bearer KEY}; the operator console
            (L{rustorium.console}) mounts the same API with its session
            cookie instead. Called with the request, it returns (or fires
            with) the L{ApiKey}, or raises L{RequestError} (401, 403).
        """
        super().__init__()
        self._server = server
        self._app = server.app
        self._openapi = orjson.dumps(document if document is not None else load_document())
        self._authenticate_request = authenticate or self._authenticate

    def render(self, request: http.Request) -> Any:
        request.operation = "unknown"
        d = ensureDeferred(self._answer(request))
        d.addErrback(self._failed, request)
        d.addCallback(self._write, request)
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: http.Request) -> Answer:
        if failure.check(RequestError):
            return error_answer(failure.value)
        self.log.failure("{method} {path} failed", failure,
                         method=request.method.decode("latin-1"),
                         path=request.path.decode("latin-1")[:200])
        return error_answer(RequestError(
            ErrorCode.INTERNAL_ERROR,
            "the server failed to handle the request; the failure is logged, and the request "
            "may be retried",
        ))

    def _write(self, answer: Answer, request: http.Request) -> None:
        self._server.counters.http_responses[request.operation, answer.status] += 1
        if request.finished or request.channel is None:
            return
        request.setResponseCode(answer.status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        for name, value in answer.headers.items():
            request.setHeader(name, value)
        request.write(orjson.dumps(answer.body))
        request.finish()
        if answer.status == 413:
            # Its body was dropped, not read: do not take the rest of the
            # stream for another request.
            request.loseConnection()

    async def _answer(self, request: http.Request) -> Answer:
        segments = [unquote(segment.decode("latin-1")) for segment in request.postpath]
        if len(segments) > 1 and segments[-1] == "":
            segments.pop()
        method = request.method.decode("latin-1")
        allowed = []
        for route in ROUTES:
            parameters = route.match(segments)
            if parameters is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            request.operation = route.serve
            return await self._serve(route, parameters, request)
        if allowed:
            return error_answer(
                RequestError(HttpErrorCode.METHOD_NOT_ALLOWED,
                             f"{method[:10]} is not allowed here; use {', '.join(allowed)}"),
                {b"allow": ", ".join(allowed).encode("ascii")},
            )
        return error_answer(RequestError(
            ErrorCode.NOT_FOUND, "no such endpoint; GET /api/v1/openapi.json lists them"
        ))

    async def _serve(self, route: Route, parameters: dict[str, str],
                     request: http.Request) -> Answer:
        serve = getattr(self, f"_serve_{route.serve}")
        if route.scope is None:
            return await serve(request, **parameters)
        server = self._server
        if not server.ready:
            raise RequestError(HttpErrorCode.UNAVAILABLE,
                               "the server is starting; try again shortly")
        if not server.broker_ready:
            raise RequestError(HttpErrorCode.UNAVAILABLE,
                               "this node cannot reach the cluster's broker; try another node "
                               "or later")
        if getattr(request, "body_too_large", False):
            raise RequestError(HttpErrorCode.PAYLOAD_TOO_LARGE,
                               f"the body is larger than {server.settings.http_max_body} bytes")
        api_key = await maybeDeferred(self._authenticate_request, request)
        if not api_key.allows(route.scope):
            raise RequestError(
                ErrorCode.FORBIDDEN,
                f"this API key has no {route.scope} scope (it has "
                f"{', '.join(s for s in SCOPES if s in api_key.scopes)})"
                + (f"; {ADMIN} keys may do everything" if route.scope == PUBLISH else ""),
            )
        bucket = server.http_buckets.bucket(api_key.key_id)
        if not bucket.take():
            server.counters.rate_limited += 1
            retry_after = round(bucket.retry_after(), 3)
            return error_answer(
                RequestError(
                    ErrorCode.RATE_LIMIT_EXCEEDED,
                    f"more than {server.settings.http_rate_limit:g} requests per second from "
                    f"this API key; retry after {retry_after:g} s",
                    retry_after=retry_after,
                ),
                {b"retry-after": str(max(1, math.ceil(retry_after))).encode("ascii")},
            )
        return await serve(request, **parameters)

    async def _authenticate(self, request: http.Request) -> ApiKey:
        key = _bearer(request)
        if key is None:
            raise _unauthorized("missing API key: send Authorization: Bearer KEY")
        try:
            api_key = await self._server.keys.authenticate(key)
        except Exception:
            self.log.failure("Checking an API key failed")
            raise RequestError(HttpErrorCode.UNAVAILABLE,
                               "cannot check API keys right now; try again shortly") from None
        if api_key is None:
            raise _unauthorized("unknown or revoked API key")
        return api_key

    def _body(self, request: http.Request) -> dict:
        """
        The request's body: a JSON object.
        """
        request.content.seek(0)
        raw = request.content.read()
        limit = self._server.settings.http_max_body
        if len(raw) > limit:
            # Mounted in a site that buffers whole bodies (not LimitedRequest).
            raise RequestError(HttpErrorCode.PAYLOAD_TOO_LARGE,
                               f"the body is larger than {limit} bytes")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise RequestError(ErrorCode.INVALID_REQUEST,
                               f"the body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise RequestError(ErrorCode.INVALID_REQUEST, "the body must be a JSON object")
        return body

    async def _call(self, operation: Callable[..., Any], *args: Any) -> Any:
        return await maybeDeferred(operation, *args)

    # The operations: each parses its parameters and calls the application.

    async def _serve_openapi(self, request: http.Request) -> Answer:
        return Answer(200, orjson.Fragment(self._openapi))

    async def _serve_info(self, request: http.Request) -> Answer:
        return Answer(200, await self._call(self._app.cluster_info))

    async def _serve_connections(self, request: http.Request) -> Answer:
        key_name = _query(request, "key")
        if key_name is not None and not 0 < len(key_name) <= MAX_KEY_NAME:
            raise _invalid("key", f"must be a key's name, 1 to {MAX_KEY_NAME} characters")
        limit = _count(request, "limit", 1000, MAX_CONNECTIONS_LISTED)
        return Answer(200, await self._call(self._app.list_connections, key_name, limit))

    async def _serve_close_connection(self, request: http.Request, id: str) -> Answer:
        body = self._body(request)
        _fields(body, ("code", "reason"), "a close")
        code = body.get("code")
        if isinstance(code, float) and code.is_integer():
            code = int(code)  # 4000.0 is the integer 4000 to JSON Schema
        if isinstance(code, bool) or not isinstance(code, int) or not 4000 <= code <= 4999:
            raise _invalid("code", "must be a close code from 4000 to 4999 (4000-4099: do not "
                                   "reconnect, 4100-4199: reconnect with backoff, 4200-4299: "
                                   "reconnect at once)")
        reason = body.get("reason", "closed by an operator")
        if not isinstance(reason, str) or len(reason.encode("utf-8")) > MAX_CLOSE_REASON:
            raise _invalid("reason", f"must be a string of at most {MAX_CLOSE_REASON} bytes "
                                     "of UTF-8")
        return Answer(200, await self._call(self._app.close_connection, id, code, reason))

    async def _serve_history(self, request: http.Request, channel: str, name: str) -> Answer:
        catalog = self._app.catalog
        if channel not in CHANNELS:
            raise RequestError(ErrorCode.NOT_FOUND,
                               f"no channel {channel[:40]!r}; channels are {', '.join(CHANNELS)}")
        if channel == MARKET_DATA:
            name = name.upper()
            if name not in catalog.markets:
                raise RequestError(ErrorCode.NOT_FOUND, f"no market {name[:40]!r}")
        else:
            normal = normalise_address(name)
            if normal is None:
                raise RequestError(ErrorCode.NOT_FOUND,
                                   f"no key {name[:40]!r} in {channel}: its names are 0x "
                                   "followed by 40 hex digits")
            name = normal
            if channel == TOKEN_UPDATES and name not in catalog.tokens:
                raise RequestError(ErrorCode.NOT_FOUND, f"no token {name}")
        since = 0
        since_text = _query(request, "since")
        if since_text is not None:
            since = parse_message_number(since_text)
            if since is None:
                raise _invalid("since", 'must be a message id such as "msg_123"')
        limit = _count(request, "limit", 100, MAX_HISTORY)
        return Answer(200, await self._call(self._app.history, channel, name, since, limit))

    async def _serve_prices(self, request: http.Request) -> Answer:
        body = self._body(request)
        ticks = parse_prices(body, self._app.catalog, self._app.clock.seconds())
        return Answer(200, await self._call(self._app.publish_prices, ticks))

    async def _serve_list_keys(self, request: http.Request) -> Answer:
        return Answer(200, await self._call(self._app.list_keys))

    async def _serve_create_key(self, request: http.Request) -> Answer:
        body = self._body(request)
        _fields(body, ("name", "scope", "addresses"), "a new key")
        name = body.get("name", "key")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_KEY_NAME:
            raise _invalid("name", f"must be a string of 1 to {MAX_KEY_NAME} characters")
        scope = body.get("scope", [CLIENT])
        scopes = [scope] if isinstance(scope, str) else scope
        if (not isinstance(scopes, list) or not scopes
                or not all(isinstance(s, str) and s in SCOPES for s in scopes)):
            raise _invalid("scope", f"must be one of {', '.join(SCOPES)}, or a list of them")
        addresses = body.get("addresses", [])
        if not isinstance(addresses, list) or len(addresses) > MAX_KEY_ADDRESSES:
            raise _invalid("addresses", f"must be a list of up to {MAX_KEY_ADDRESSES} addresses")
        normal = []
        for index, address in enumerate(addresses):
            value = normalise_address(address)
            if value is None:
                raise _invalid(f"addresses[{index}]", "must be 0x followed by 40 hex digits")
            normal.append(value)
        created = await self._call(self._app.create_key, name, frozenset(scopes),
                                   sorted(set(normal)))
        return Answer(201, created)

    async def _serve_revoke_key(self, request: http.Request, id: str) -> Answer:
        if not (id.isascii() and id.isdigit() and len(id) <= 18):
            raise RequestError(ErrorCode.NOT_FOUND, f"no API key {id[:40]!r}")
        return Answer(200, await self._call(self._app.revoke_key, int(id)))

    async def _serve_transaction(self, request: http.Request, id: str) -> Answer:
        transaction_id = normalise_transaction_id(id)
        if transaction_id is None:
            raise _invalid("id", "must be 0x followed by 64 hex digits")
        return Answer(200, await self._call(self._app.transaction, transaction_id))

    async def _serve_address_transactions(self, request: http.Request, address: str) -> Answer:
        normal = normalise_address(address)
        if normal is None:
            raise _invalid("address", "must be 0x followed by 40 hex digits")
        limit = _count(request, "limit", 100, MAX_TRANSACTIONS)
        return Answer(200, await self._call(self._app.address_transactions, normal, limit))


def _unauthorized(message: str) -> RequestError:
    return RequestError(HttpErrorCode.UNAUTHORIZED, message)

