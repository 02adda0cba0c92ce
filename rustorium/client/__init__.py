"""
The Rustorium client library: a Twisted client of the WebSocket API that
reconnects with backoff, resumes its subscriptions with replay, and
delivers every update once, in order.

    from rustorium.client import RustoriumClient

    client = RustoriumClient("ws://127.0.0.1:8765/v1", api_key)
    client.startService()
    d = client.subscribe("market_data", symbols=["MTK/USD"], on_update=print)

``docs/client.rst`` is the guide; ``rustorium listen`` and ``rustorium
call`` are the command-line client built on it.
"""

from .backoff import backoff
from .errors import (
    ClientStopped,
    ConnectionLost,
    ConnectionRejected,
    Forbidden,
    HandshakeRefused,
    InsufficientFunds,
    InternalError,
    InvalidChannel,
    InvalidParams,
    InvalidRequest,
    NotFound,
    RateLimitExceeded,
    RustoriumError,
    SubscriptionLimit,
    TLSHandshakeFailed,
    UnknownType,
)
from .service import DEFAULT_URL, RustoriumClient
from .subscription import Gap, Subscription

__all__ = [
    "DEFAULT_URL",
    "ClientStopped",
    "ConnectionLost",
    "ConnectionRejected",
    "Forbidden",
    "Gap",
    "HandshakeRefused",
    "InsufficientFunds",
    "InternalError",
    "InvalidChannel",
    "InvalidParams",
    "InvalidRequest",
    "NotFound",
    "RateLimitExceeded",
    "RustoriumClient",
    "RustoriumError",
    "Subscription",
    "SubscriptionLimit",
    "TLSHandshakeFailed",
    "UnknownType",
    "backoff",
]
