"""
The error catalogue: every ``error`` reply carries one of these codes.

The codes are exact strings that clients switch on; the message beside them
is for people. ``docs/protocol.rst`` lists when each is sent.
"""

from enum import StrEnum


class ErrorCode(StrEnum):
    """
    The ``data.code`` of an ``error`` message.
    """

    INVALID_REQUEST = "invalid_request"
    """Not a JSON object with a string ``type``, a valid ``id`` and an object ``data``."""
    UNKNOWN_TYPE = "unknown_type"
    """The ``type`` names no request this server knows."""
    INVALID_CHANNEL = "invalid_channel"
    """``subscribe`` named a channel that does not exist."""
    INVALID_PARAMS = "invalid_params"
    """A field of ``data`` is missing, of the wrong type or malformed."""
    NOT_FOUND = "not_found"
    """The token, market, subscription or transaction named does not exist."""
    SUBSCRIPTION_LIMIT = "subscription_limit"
    """The connection already holds the maximum number of subscriptions."""
    RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
    """Too many messages; ``data.retry_after`` says when to send again."""
    FORBIDDEN = "forbidden"
    """The API key may not do this (for example send from that address)."""
    INSUFFICIENT_FUNDS = "insufficient_funds"
    """The available balance does not cover the amount."""
    INTERNAL_ERROR = "internal_error"
    """The server failed; the failure is logged, and the request may be retried."""


class HttpErrorCode(StrEnum):
    """
    The codes only the HTTP API sends (``docs/http-api.rst``), for what a
    WebSocket session never meets: its other errors use L{ErrorCode}.
    """

    UNAUTHORIZED = "unauthorized"
    """No API key, or an unknown or revoked one (401)."""
    METHOD_NOT_ALLOWED = "method_not_allowed"
    """The path exists, but not with this method (405)."""
    CONFLICT = "conflict"
    """The operation contradicts the server's state (409): a key revoked
    already, prices posted to a server whose market is simulated."""
    PAYLOAD_TOO_LARGE = "payload_too_large"
    """The request body is larger than ``http-max-body`` (413)."""
    UNAVAILABLE = "unavailable"
    """The server is starting, or cannot reach its database or broker (503)."""


class RequestError(Exception):
    """
    A request that is answered with an ``error`` message instead of being
    carried out.

    @ivar code: the L{ErrorCode}.
    @ivar message: what went wrong, for a person.
    @ivar extra: more fields for ``data`` (``retry_after`` for rate limits).
    @ivar request_id: the id of the request, when known, to echo.
    """

    def __init__(
        self,
        code: ErrorCode | HttpErrorCode,
        message: str,
        request_id: str | int | None = None,
        **extra: object,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.extra = extra
