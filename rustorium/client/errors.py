"""
What the client's Deferreds fail with.

An C{error} reply from the server becomes a L{RustoriumError}, or the
subclass for its code (switch on the class or on C{code}). Failures that
happen on the client's side of the wire have their own classes, because
they answer a different question: not "what did the server say" but "did
the request reach the server at all".
"""

from typing import Any


class RustoriumError(Exception):
    """
    The server answered a request with an C{error} message; the request was
    not carried out.

    @ivar code: the error code, such as C{"invalid_params"}
        (``docs/protocol.rst`` lists them).
    @ivar message: what went wrong, for a person.
    @ivar data: the error's whole C{data} object (C{retry_after} for
        C{rate_limit_exceeded}).
    @ivar reply: the whole error message as received.
    """

    code: str = "error"

    def __init__(self, code: str, message: str, data: dict[str, Any] | None = None,
                 reply: dict[str, Any] | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.data = data if data is not None else {"code": code, "message": message}
        self.reply = reply if reply is not None else {"type": "error", "data": self.data}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidRequest(RustoriumError):
    code = "invalid_request"


class UnknownType(RustoriumError):
    code = "unknown_type"


class InvalidChannel(RustoriumError):
    code = "invalid_channel"


class InvalidParams(RustoriumError):
    code = "invalid_params"


class NotFound(RustoriumError):
    code = "not_found"


class SubscriptionLimit(RustoriumError):
    code = "subscription_limit"


class RateLimitExceeded(RustoriumError):
    """
    Sent too fast. The client paces its messages and resends a refused
    request by itself a few times, so this reaches callers only when
    something else shares the connection's budget.
    """

    code = "rate_limit_exceeded"

    @property
    def retry_after(self) -> float:
        """
        Seconds until the server will accept a message again.
        """
        return float(self.data.get("retry_after", 0.0))


class Forbidden(RustoriumError):
    code = "forbidden"


class InsufficientFunds(RustoriumError):
    code = "insufficient_funds"


class InternalError(RustoriumError):
    code = "internal_error"


_BY_CODE: dict[str, type[RustoriumError]] = {
    cls.code: cls
    for cls in (InvalidRequest, UnknownType, InvalidChannel, InvalidParams, NotFound,
                SubscriptionLimit, RateLimitExceeded, Forbidden, InsufficientFunds,
                InternalError)
}


def error_from_reply(reply: dict[str, Any]) -> RustoriumError:
    """
    The exception for an C{error} message: the subclass for its code, or
    L{RustoriumError} itself for a code this client does not know.
    """
    data = reply.get("data")
    if not isinstance(data, dict):
        data = {}
    code = str(data.get("code", "error"))
    message = str(data.get("message", ""))
    return _BY_CODE.get(code, RustoriumError)(code, message, data, reply)


class ConnectionLost(Exception):
    """
    The connection was lost after the request was sent and before its
    reply came, so whether the server carried it out is unknown. Read the
    state again (C{get_balance}, C{get_transaction}) before retrying
    anything that is not idempotent.

    (The client itself resends what is safe to resend: subscriptions, and
    C{execute_transaction}, which carries an idempotency key.)
    """


class ClientStopped(Exception):
    """
    The client was stopped (or gave up) before the request could be sent
    or answered.
    """


class HandshakeRefused(Exception):
    """
    The server refused the WebSocket opening handshake with an HTTP status.
    401 (unknown or revoked key) and 404 (wrong path) end the client, as
    retrying cannot help; other statuses (503: the server is starting) are
    retried with backoff.

    @ivar status: the HTTP status code.
    @ivar reason: the reason phrase (the server says what to do in it).
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason

    def __str__(self) -> str:
        return f"the server refused the connection: HTTP {self.status} {self.reason}"


class TLSHandshakeFailed(Exception):
    """
    The TLS handshake of the client's first connection failed: the server's
    certificate is not trusted (C{SSL_CERT_FILE} names extra trusted CAs)
    or not for the URL's host name, or the two sides share no TLS version.
    Retrying cannot help, so the client stopped. Once a connection has been
    ready, a failed TLS handshake is retried like any failed connection: a
    renewed certificate may cure it.

    @ivar detail: what OpenSSL or the host name check said, such as
        C{"certificate verify failed: self-signed certificate"}.
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return f"TLS handshake failed: {self.detail}"


class ConnectionRejected(Exception):
    """
    The server closed the connection with a code in 4000-4099, "do not
    reconnect as is" (4001: the key was revoked; 4008: kept sending past the
    rate limit), so the client stopped.

    @ivar code: the WebSocket close code.
    @ivar reason: the close reason.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"the server closed the connection with code {self.code}: {self.reason}"
