"""
Client messages: parsing and validating them into typed requests.

A client message is a JSON text frame holding an object with ``type`` (a
string), ``id`` (a string or integer, optional, echoed verbatim in the reply)
and ``data`` (an object; it may be left out when a request has no fields).
L{parse_message} turns it into one of the request classes below, or raises
L{RequestError} with the code and a message a person can act on. Nothing here
knows about connections, tokens or the database: only shapes.
"""

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import orjson

from .errors import ErrorCode, RequestError
from .identifiers import normalise_address, normalise_transaction_id

MAX_ID_LENGTH = 128
MAX_SYMBOLS = 100
MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_RECONNECT_SUBSCRIPTIONS = 1000

TOKEN_UPDATES = "token_updates"
TRANSACTION_UPDATES = "transaction_updates"
MARKET_DATA = "market_data"
CHANNELS = (TOKEN_UPDATES, TRANSACTION_UPDATES, MARKET_DATA)

ALL_TOKENS = "*"
"""``token_id`` of a ``token_updates`` subscription to every token."""

SPEC_PLACEHOLDER = "0x..."
"""
The spec writes ``"token_id": "0x..."`` in its examples. It is accepted as
L{ALL_TOKENS}, so the published examples run unchanged against a server.
"""


@attrs.frozen
class Subscribe:
    """
    Subscribe to a channel. C{topics} is the normalised parameter: one token
    id (or L{ALL_TOKENS}), one address, or the sorted market symbols.
    """

    channel: str
    topics: tuple[str, ...]


@attrs.frozen
class Unsubscribe:
    subscription_id: str


@attrs.frozen
class ExecuteTransaction:
    """
    Move C{amount} (a decimal string in whole tokens, checked against the
    token's decimals later) of a token between addresses.
    """

    sender: str
    recipient: str
    amount: str
    token_id: str
    idempotency_key: str | None = None


@attrs.frozen
class GetTokenInfo:
    token_id: str


@attrs.frozen
class GetBalance:
    address: str
    token_id: str


@attrs.frozen
class GetTransaction:
    transaction_id: str


@attrs.frozen
class ListSubscriptions:
    pass


@attrs.frozen
class Ping:
    pass


@attrs.frozen
class ServerInfo:
    pass


@attrs.frozen
class HeartbeatResponse:
    pass


@attrs.frozen
class Reconnect:
    """
    Resume subscriptions after a lost connection. C{last_message_id} is the
    C{n} of the last C{msg_<n>} the client received, or C{None}.
    """

    last_message_id: int | None
    subscription_ids: tuple[str, ...]


Request = (
    Subscribe
    | Unsubscribe
    | ExecuteTransaction
    | GetTokenInfo
    | GetBalance
    | GetTransaction
    | ListSubscriptions
    | Ping
    | ServerInfo
    | HeartbeatResponse
    | Reconnect
)


def _invalid(message: str) -> RequestError:
    return RequestError(ErrorCode.INVALID_PARAMS, message)


def _shorten(value: object, limit: int = 40) -> str:
    """
    A short quotation of a client's value for an error message. Only
    scalars are quoted; a list or object (possibly nested a thousand levels
    deep) is named, not serialised.
    """
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _check_fields(
    kind: str, data: Mapping[str, Any], required: tuple[str, ...], optional: tuple[str, ...] = ()
) -> None:
    for name in required:
        if name not in data:
            raise _invalid(f"{kind} needs data.{name}")
    for name in data:
        if name not in required and name not in optional:
            expected = ", ".join(required + optional) or "no fields"
            raise _invalid(f"{kind} does not take data.{name[:40]} (it takes {expected})")


def _address(kind: str, data: Mapping[str, Any], name: str) -> str:
    value = normalise_address(data[name])
    if value is None:
        raise _invalid(
            f"{kind}: data.{name} must be 0x followed by 40 hex digits, "
            f"not {_shorten(data[name])}"
        )
    return value


def _string(kind: str, data: Mapping[str, Any], name: str, limit: int) -> str:
    value = data[name]
    if not isinstance(value, str) or not value or len(value) > limit:
        raise _invalid(f"{kind}: data.{name} must be a string of 1 to {limit} characters")
    return value


def _parse_subscribe(data: Mapping[str, Any]) -> Subscribe:
    if "channel" not in data:
        raise _invalid(f"subscribe needs data.channel, one of {', '.join(CHANNELS)}")
    channel = data["channel"]
    if not isinstance(channel, str) or channel not in CHANNELS:
        raise RequestError(
            ErrorCode.INVALID_CHANNEL,
            f"no channel {_shorten(channel)}; channels are {', '.join(CHANNELS)}",
        )
    kind = f"subscribe to {channel}"
    if channel == TOKEN_UPDATES:
        _check_fields(kind, data, ("channel", "token_id"))
        if data["token_id"] in (ALL_TOKENS, SPEC_PLACEHOLDER):
            return Subscribe(channel, (ALL_TOKENS,))
        return Subscribe(channel, (_address(kind, data, "token_id"),))
    if channel == TRANSACTION_UPDATES:
        _check_fields(kind, data, ("channel", "address"))
        return Subscribe(channel, (_address(kind, data, "address"),))
    _check_fields(kind, data, ("channel", "symbols"))
    symbols = data["symbols"]
    if isinstance(symbols, str):
        symbols = [symbols]
    if (
        not isinstance(symbols, list)
        or not symbols
        or len(symbols) > MAX_SYMBOLS
        or not all(isinstance(s, str) and 0 < len(s) <= 32 for s in symbols)
    ):
        raise _invalid(
            f"{kind}: data.symbols must be a list of 1 to {MAX_SYMBOLS} market symbols "
            'such as ["MTK/USD"]'
        )
    return Subscribe(channel, tuple(sorted({s.upper() for s in symbols})))


def _parse_unsubscribe(data: Mapping[str, Any]) -> Unsubscribe:
    _check_fields("unsubscribe", data, ("subscription_id",))
    return Unsubscribe(_string("unsubscribe", data, "subscription_id", MAX_ID_LENGTH))


def _parse_execute_transaction(data: Mapping[str, Any]) -> ExecuteTransaction:
    kind = "execute_transaction"
    _check_fields(kind, data, ("from", "to", "amount", "token_id"), ("idempotency_key",))
    amount = data["amount"]
    if not isinstance(amount, str):
        raise _invalid(f'{kind}: data.amount must be a decimal string such as "12.5"')
    key = None
    if "idempotency_key" in data:
        key = _string(kind, data, "idempotency_key", MAX_IDEMPOTENCY_KEY_LENGTH)
    return ExecuteTransaction(
        _address(kind, data, "from"),
        _address(kind, data, "to"),
        amount,
        _address(kind, data, "token_id"),
        key,
    )


def _parse_get_token_info(data: Mapping[str, Any]) -> GetTokenInfo:
    _check_fields("get_token_info", data, ("token_id",))
    return GetTokenInfo(_address("get_token_info", data, "token_id"))


def _parse_get_balance(data: Mapping[str, Any]) -> GetBalance:
    _check_fields("get_balance", data, ("address", "token_id"))
    return GetBalance(
        _address("get_balance", data, "address"), _address("get_balance", data, "token_id")
    )


def _parse_get_transaction(data: Mapping[str, Any]) -> GetTransaction:
    _check_fields("get_transaction", data, ("transaction_id",))
    value = normalise_transaction_id(data["transaction_id"])
    if value is None:
        raise _invalid(
            "get_transaction: data.transaction_id must be 0x followed by 64 hex digits, "
            f"not {_shorten(data['transaction_id'])}"
        )
    return GetTransaction(value)


def parse_message_number(value: object) -> int | None:
    """
    The C{n} of a message id C{"msg_<n>"}, or C{None} if it is not one.
    """
    if isinstance(value, str) and value.startswith("msg_") and 4 < len(value) <= 24:
        digits = value[4:]
        if digits.isascii() and digits.isdigit():
            return int(digits)
    return None


def _parse_reconnect(data: Mapping[str, Any]) -> Reconnect:
    kind = "reconnect"
    _check_fields(kind, data, (), ("last_message_id", "subscriptions"))
    last = data.get("last_message_id")
    number = None
    if last is not None:
        number = parse_message_number(last)
        if number is None:
            raise _invalid(
                f'{kind}: data.last_message_id must be a message id such as "msg_123", '
                f"not {_shorten(last)}"
            )
    subscriptions = data.get("subscriptions", [])
    if (
        not isinstance(subscriptions, list)
        or len(subscriptions) > MAX_RECONNECT_SUBSCRIPTIONS
        or not all(isinstance(s, str) and 0 < len(s) <= MAX_ID_LENGTH for s in subscriptions)
    ):
        raise _invalid(
            f"{kind}: data.subscriptions must be a list of up to "
            f'{MAX_RECONNECT_SUBSCRIPTIONS} subscription ids such as "sub_123"'
        )
    return Reconnect(number, tuple(dict.fromkeys(subscriptions)))


def _no_fields(kind: str, request: Request) -> Callable[[Mapping[str, Any]], Request]:
    def parse(data: Mapping[str, Any]) -> Request:
        _check_fields(kind, data, ())
        return request

    return parse


PARSERS: dict[str, Callable[[Mapping[str, Any]], Request]] = {
    "subscribe": _parse_subscribe,
    "unsubscribe": _parse_unsubscribe,
    "execute_transaction": _parse_execute_transaction,
    "get_token_info": _parse_get_token_info,
    "get_balance": _parse_get_balance,
    "get_transaction": _parse_get_transaction,
    "list_subscriptions": _no_fields("list_subscriptions", ListSubscriptions()),
    "ping": _no_fields("ping", Ping()),
    "server_info": _no_fields("server_info", ServerInfo()),
    # The spec's heartbeat_response carries a timestamp; any fields are fine.
    "heartbeat_response": lambda data: HeartbeatResponse(),
    "reconnect": _parse_reconnect,
}
"""Every request type a client may send, and its parser."""


@attrs.define
class Envelope:
    """
    The outer shape of a client message: its echoed id, its type and data.
    """

    request_id: str | int | None
    type: str
    data: Mapping[str, Any]


def parse_envelope(payload: bytes) -> Envelope:
    """
    Check the outer shape of a message.

    @raise RequestError: C{invalid_request} or C{unknown_type}; its
        C{request_id} attribute is the message's id when it had a valid one.
    """
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise RequestError(ErrorCode.INVALID_REQUEST, f"message is not valid JSON: {e}") from None
    if not isinstance(message, dict):
        raise RequestError(
            ErrorCode.INVALID_REQUEST,
            'a message must be a JSON object such as {"id": "1", "type": "ping", "data": {}}',
        )
    request_id = message.get("id")
    if request_id is not None and not (
        (isinstance(request_id, str) and len(request_id) <= MAX_ID_LENGTH)
        or (isinstance(request_id, int) and not isinstance(request_id, bool))
    ):
        raise RequestError(
            ErrorCode.INVALID_REQUEST,
            f"id must be a string of at most {MAX_ID_LENGTH} characters or an integer",
        )
    kind = message.get("type")
    if kind is None:
        raise RequestError(
            ErrorCode.INVALID_REQUEST, 'the message has no "type"', request_id=request_id
        )
    if not isinstance(kind, str):
        raise RequestError(
            ErrorCode.INVALID_REQUEST, '"type" must be a string', request_id=request_id
        )
    if kind not in PARSERS:
        raise RequestError(
            ErrorCode.UNKNOWN_TYPE,
            f"unknown message type {_shorten(kind)}; known types are {', '.join(PARSERS)}",
            request_id=request_id,
        )
    data = message.get("data", {})
    if not isinstance(data, dict):
        raise RequestError(
            ErrorCode.INVALID_REQUEST, '"data" must be an object', request_id=request_id
        )
    return Envelope(request_id, kind, data)


def parse_request(envelope: Envelope) -> Request:
    """
    Validate an envelope's data into its typed request.

    @raise RequestError: C{invalid_params} or C{invalid_channel}.
    """
    return PARSERS[envelope.type](envelope.data)
