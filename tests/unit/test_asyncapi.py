"""
Tests for docs/asyncapi.yaml and the validator in L{tests.asyncapi}: the
document covers every message the code sends and accepts, its schemas catch
broken messages, and real traffic from a session matches it.
"""

import ast
import copy
import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft7Validator

import rustorium
from rustorium.closecodes import CloseCode
from rustorium.errors import ErrorCode, RequestError
from rustorium.heartbeat import HeartbeatService
from rustorium.market import MarketService
from rustorium.requests import CHANNELS, PARSERS, parse_envelope, parse_request
from tests.asyncapi import (
    CLIENT,
    DISCRIMINATORS,
    SERVER,
    contract,
    iter_references,
    resolve,
    validate_client_message,
    validate_server_message,
)
from tests.helpers import ALICE, BOB, make_server, open_session, send
from tests.helpers import MTK as MTK_TOKEN

MTK = MTK_TOKEN.token_id
TX = "0x" + "9c2f4e1a" * 8
NOW = "2026-11-26T10:37:17.515506Z"

SERVER_TYPES = {
    "subscription_confirmation",
    "update",
    "subscriptions",
    "token_info",
    "pong",
    "server_info",
    "reconnect_confirmation",
    "transaction_response",
    "balance",
    "transaction",
    "heartbeat",
    "error",
}
"""Every type the server sends, by the design."""


def _names(direction: str) -> set[str]:
    return {m.name for m in contract().of(direction)}


def _all_examples() -> list[Any]:
    return [
        pytest.param(message, payload, id=f"{message.key}-{index}")
        for message in contract().messages.values()
        for index, payload in enumerate(message.examples)
    ]


# The document itself


def test_document_is_asyncapi_2_6() -> None:
    """
    The document is AsyncAPI 2.6 with one channel, and every message under
    components/messages is used by exactly one operation of it.
    """
    document = contract().document
    assert document["asyncapi"] == "2.6.0"
    assert list(document["channels"]) == ["/v1"]
    assert sorted(contract().messages) == sorted(document["components"]["messages"])


def test_references_resolve() -> None:
    """
    Every $ref in the document names something in it.
    """
    document = contract().document
    references = set(iter_references(document))
    assert references
    for reference in references:
        assert resolve(document, {"$ref": reference}) is not None, reference


def test_message_names_are_their_types() -> None:
    """
    Each message's name is the constant of its payload's C{type}, and its
    messageId is its key.
    """
    document = contract().document
    for message in contract().messages.values():
        payload = resolve(document, message.definition["payload"])
        assert payload["properties"]["type"]["const"] == message.name, message.key
        assert message.definition["messageId"] == message.key


def test_schemas_are_draft7() -> None:
    """
    Every payload and every shared schema is a valid draft-07 JSON Schema.
    """
    document = contract().document
    for message in contract().messages.values():
        Draft7Validator.check_schema(message.definition["payload"])
    for schema in document["components"]["schemas"].values():
        Draft7Validator.check_schema(schema)


def test_server_messages_forbid_unknown_members() -> None:
    """
    Every server message forbids members beyond those it documents at its
    top level, and requires C{type} and C{data}.
    """
    for message in contract().of(SERVER):
        payload = message.definition["payload"]
        assert payload["additionalProperties"] is False, message.key
        assert {"type", "data"} <= set(payload["required"]), message.key


@pytest.mark.parametrize(("message", "payload"), _all_examples())
def test_examples_validate(message, payload) -> None:
    """
    Each example in the document validates, against its own message.
    """
    if message.direction == SERVER:
        assert validate_server_message(payload) == message.key
    else:
        assert validate_client_message(payload) == message.key


def test_client_examples_are_accepted() -> None:
    """
    The server's parser accepts every client example in the document.
    """
    for message in contract().of(CLIENT):
        for payload in message.examples:
            parse_request(parse_envelope(orjson.dumps(payload)))


def _protocol_examples() -> list[Any]:
    """
    The JSON code blocks of docs/protocol.rst, decoded.
    """
    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.rst").read_text("utf-8")
    blocks = re.findall(r"^( *)\.\. code-block:: json\n\n((?:\1    .*\n|\n)+)", text, re.M)
    return [
        pytest.param(
            orjson.loads("\n".join(line[len(indent) + 4:] for line in body.splitlines())),
            id=f"block-{index}",
        )
        for index, (indent, body) in enumerate(blocks)
    ]


@pytest.mark.parametrize("message", _protocol_examples())
def test_protocol_examples_validate(message: dict) -> None:
    """
    Every JSON example in docs/protocol.rst is a valid client or server
    message.
    """
    try:
        validate_client_message(message)
    except AssertionError as as_client:
        try:
            validate_server_message(message)
        except AssertionError as as_server:
            raise AssertionError(f"neither\n{as_client}\nnor\n{as_server}") from None


def test_protocol_examples_found() -> None:
    """
    The protocol document's examples are found, of every kind.
    """
    types = {param.values[0]["type"] for param in _protocol_examples()}
    assert _names(CLIENT) | _names(SERVER) <= types


# The document against the code


def test_client_types_are_the_parsers() -> None:
    """
    The client messages are exactly the request types the server parses.
    """
    assert _names(CLIENT) == set(PARSERS)


def test_server_types() -> None:
    """
    The server messages are exactly the types the design names.
    """
    assert _names(SERVER) == SERVER_TYPES


@pytest.mark.parametrize(("direction", "name"), [(CLIENT, "subscribe"), (SERVER, "update")])
def test_one_message_per_channel(direction: str, name: str) -> None:
    """
    C{subscribe} and C{update} have one message for each channel.
    """
    variants = [m.variant for m in contract().of(direction) if m.name == name]
    assert sorted(variants) == sorted(CHANNELS)


def test_subscription_confirmation_statuses() -> None:
    """
    C{subscription_confirmation} has one message per status.
    """
    variants = [m.variant for m in contract().of(SERVER) if m.name == "subscription_confirmation"]
    assert sorted(variants) == ["subscribed", "unsubscribed"]
    assert set(DISCRIMINATORS) == {"subscribe", "update", "subscription_confirmation"}


def test_error_codes() -> None:
    """
    The error message's code enum is exactly L{ErrorCode}.
    """
    schema = contract().document["components"]["schemas"]["ErrorCode"]
    assert schema["enum"] == [code.value for code in ErrorCode]


def test_close_codes() -> None:
    """
    The document's close code table is exactly L{CloseCode}, with the action
    its range stands for.
    """
    table = contract().document["x-close-codes"]
    assert [(row["code"], row["name"]) for row in table] == [(c.value, c.name) for c in CloseCode]
    for row in table:
        code = row["code"]
        expected = (
            "fix-client" if 4000 <= code < 4100
            else "reconnect-with-backoff" if 4100 <= code < 4200
            else "reconnect-at-once" if 4200 <= code < 4300
            else row["action"]
        )
        assert row["action"] == expected, code


CLIENT_PACKAGE = Path(rustorium.__file__).parent / "client"


def _sent_types(client: bool = False) -> set[str]:
    """
    The message types the server's code (or with C{client}, the client
    library's) sends as literals: the second argument of C{.reply(id,
    "type", ...)} calls, and C{"type": "..."} in dict displays.
    """
    found = set()
    root = Path(rustorium.__file__).parent
    # The client's errors module builds received error messages; skip it.
    paths = (p for p in CLIENT_PACKAGE.rglob("*.py") if p.name != "errors.py") if client else (
        p for p in root.rglob("*.py") if CLIENT_PACKAGE not in p.parents
    )
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "reply"
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
            ):
                found.add(node.args[1].value)
            elif isinstance(node, ast.Dict):
                for key, value in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and key.value == "type"
                        and isinstance(value, ast.Constant)
                        and isinstance(value.value, str)
                    ):
                        found.add(value.value)
    return found


def test_every_type_sent_is_documented() -> None:
    """
    Every message type named in the server's code is a documented server
    message.
    """
    sent = _sent_types()
    assert {"update", "heartbeat", "error", "pong"} <= sent
    assert sent <= _names(SERVER), sent - _names(SERVER)


def test_every_type_the_client_library_sends_is_documented() -> None:
    """
    The client library (rustorium.client) is checked the other way round:
    its literal message types are documented client messages.
    """
    sent = _sent_types(client=True)
    assert "heartbeat_response" in sent
    assert sent <= _names(CLIENT), sent - _names(CLIENT)


# Hand-made samples

GOOD_SERVER = [
    pytest.param(
        {"id": "1", "type": "subscription_confirmation",
         "data": {"status": "subscribed", "subscription_id": "sub_dabc885d7722e370",
                  "channel": "token_updates", "token_id": MTK}},
        "subscription_confirmation_subscribed", id="subscribed-token",
    ),
    pytest.param(
        {"id": 7, "type": "subscription_confirmation",
         "data": {"status": "subscribed", "subscription_id": "sub_1", "channel": "market_data",
                  "symbols": ["RST/USD"]}},
        "subscription_confirmation_subscribed", id="subscribed-integer-id",
    ),
    pytest.param(
        {"id": None, "type": "subscription_confirmation",
         "data": {"status": "unsubscribed", "subscription_id": "sub_1",
                  "channel": "transaction_updates"}},
        "subscription_confirmation_unsubscribed", id="unsubscribed-null-id",
    ),
    pytest.param(
        {"id": "msg_1000001", "type": "update",
         "data": {"channel": "transaction_updates", "transaction_id": TX, "status": "pending",
                  "timestamp": NOW}},
        "update_transaction_updates", id="transaction-minimal",
    ),
    pytest.param(
        {"id": "msg_1000002", "type": "update",
         "data": {"channel": "transaction_updates", "transaction_id": TX, "status": "failed",
                  "from": ALICE, "to": BOB, "amount": "0.5", "token_id": MTK,
                  "block_number": None, "reason": "insufficient funds", "timestamp": NOW,
                  "fee": "0"}},
        "update_transaction_updates", id="transaction-extra-fields",
    ),
    pytest.param(
        {"id": "msg_3", "type": "update",
         "data": {"channel": "market_data", "symbol": "STK/USD", "price": "42.5",
                  "change_24h": "5.2", "volume_24h": "1000000", "timestamp": NOW}},
        "update_market_data", id="market",
    ),
    pytest.param(
        {"id": "msg_3", "type": "update",
         "data": {"channel": "token_updates", "token_id": MTK, "price": "0.0875",
                  "volume": "12.000001", "timestamp": "2024-01-01T12:00:00.000Z"}},
        "update_token_updates", id="token-milliseconds",
    ),
    pytest.param(
        {"id": "2", "type": "transaction",
         "data": {"transaction_id": TX, "from": ALICE, "to": BOB, "amount": "1000",
                  "token_id": MTK, "status": "pending", "block_number": None,
                  "timestamp": NOW}},
        "transaction", id="pending-transaction",
    ),
    pytest.param(
        {"id": "x", "type": "error", "data": {"code": "not_found", "message": "no token"}},
        "error", id="error",
    ),
    pytest.param(
        {"type": "heartbeat", "data": {"timestamp": NOW}}, "heartbeat", id="heartbeat",
    ),
]


@pytest.mark.parametrize(("message", "key"), GOOD_SERVER)
def test_good_server_samples(message: dict, key: str) -> None:
    """
    Well-formed server messages validate, against the message they are.
    """
    assert validate_server_message(message) == key


MARKET = {
    "id": "msg_49", "type": "update",
    "data": {"channel": "market_data", "symbol": "MTK/USD", "price": "1.22950491",
             "change_24h": "-0.07", "volume_24h": "5189", "timestamp": NOW},
}
CONFIRMATION = {
    "id": "1", "type": "subscription_confirmation",
    "data": {"status": "subscribed", "subscription_id": "sub_dabc885d7722e370",
             "channel": "token_updates", "token_id": "*"},
}
BALANCE = {
    "id": "7", "type": "balance",
    "data": {"address": ALICE, "token_id": MTK, "balance": "600000", "available": "599000"},
}
RATE_LIMITED = {
    "id": None, "type": "error",
    "data": {"code": "rate_limit_exceeded", "message": "slow down", "retry_after": 0.1},
}


def _broken(base: dict, path: str, value: Any = KeyError) -> dict:
    """
    A copy of C{base} with the member at dotted C{path} set to C{value}, or
    removed when C{value} is C{KeyError}.
    """
    message = copy.deepcopy(base)
    *parents, last = path.split(".")
    target = message
    for part in parents:
        target = target[part]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return message


BAD_SERVER = [
    pytest.param(_broken(MARKET, "data.price"), "'price' is a required", id="missing-field"),
    pytest.param(_broken(MARKET, "id"), "'id' is a required", id="missing-id"),
    pytest.param(_broken(MARKET, "id", "42"), "does not match", id="update-id-pattern"),
    pytest.param(_broken(MARKET, "id", None), "is not of type", id="update-null-id"),
    pytest.param(_broken(MARKET, "extra", 1), "'extra' was unexpected", id="extra-top-level"),
    pytest.param(_broken(MARKET, "data.bid", "1"), "'bid' was unexpected", id="extra-data"),
    pytest.param(_broken(MARKET, "data.price", 1.23), "is not of type 'string'", id="float-price"),
    pytest.param(_broken(MARKET, "data.price", "1.230"), "does not match", id="trailing-zero"),
    pytest.param(_broken(MARKET, "data.price", "-1"), "does not match", id="negative-price"),
    pytest.param(_broken(MARKET, "data.change_24h", "-0"), "does not match", id="minus-zero"),
    pytest.param(
        _broken(MARKET, "data.timestamp", "2024-01-01T12:00:00+00:00"), "does not match",
        id="timestamp-offset",
    ),
    pytest.param(
        _broken(MARKET, "data.timestamp", "2024-01-01T12:00:00Z"), "does not match",
        id="timestamp-whole-seconds",
    ),
    pytest.param(_broken(MARKET, "data.symbol", "mtk/usd"), "does not match", id="symbol-case"),
    pytest.param(
        _broken(MARKET, "data.channel", "prices"), "data.channel to be one of",
        id="unknown-update-channel",
    ),
    pytest.param(
        _broken(CONFIRMATION, "data.subscription_id", "123"), "does not match",
        id="subscription-id-pattern",
    ),
    pytest.param(
        _broken(CONFIRMATION, "data.token_id", "0x" + MTK[2:].upper()),
        "does not match", id="upper-case-token-id",
    ),
    pytest.param(
        _broken(CONFIRMATION, "data.address", ALICE), "False schema",
        id="another-channels-parameter",
    ),
    pytest.param(_broken(CONFIRMATION, "data.token_id"), "'token_id' is a required",
                 id="missing-parameter"),
    pytest.param(
        _broken(CONFIRMATION, "data.status", "pending"), "data.status to be one of",
        id="unknown-status",
    ),
    pytest.param(_broken(CONFIRMATION, "id", 1.5), "is not of type", id="float-reply-id"),
    pytest.param(_broken(BALANCE, "data.address", "0x1234"), "does not match", id="short-address"),
    pytest.param(_broken(BALANCE, "data.available"), "'available' is a required",
                 id="balance-missing"),
    pytest.param(_broken(RATE_LIMITED, "data.retry_after"), "'retry_after' is a required",
                 id="rate-limit-without-retry-after"),
    pytest.param(_broken(RATE_LIMITED, "data.code", "not_found"), "False schema",
                 id="retry-after-on-other-error"),
    pytest.param(_broken(RATE_LIMITED, "data.code", "too_many"), "is not one of",
                 id="unknown-error-code"),
    pytest.param({"id": "1", "type": "hello", "data": {}}, "no server message of type 'hello'",
                 id="unknown-type"),
    pytest.param({"type": "heartbeat", "id": "msg_1", "data": {"timestamp": NOW}},
                 "'id' was unexpected", id="heartbeat-with-id"),
    pytest.param(["update"], "must be a JSON object", id="not-an-object"),
    pytest.param(
        {"id": "msg_1", "type": "update",
         "data": {"channel": "transaction_updates", "transaction_id": "0x" + "a" * 40,
                  "status": "confirmed", "timestamp": NOW}},
        "does not match", id="short-transaction-id",
    ),
    pytest.param(
        {"id": "msg_1", "type": "update",
         "data": {"channel": "transaction_updates", "transaction_id": TX,
                  "status": "done", "timestamp": NOW}},
        "is not one of", id="unknown-transaction-status",
    ),
]


@pytest.mark.parametrize(("message", "complaint"), BAD_SERVER)
def test_bad_server_samples(message: Any, complaint: str) -> None:
    """
    Broken server messages fail with an assertion that says what is wrong.
    """
    with pytest.raises(AssertionError) as raised:
        validate_server_message(message)
    assert complaint in str(raised.value)


CLIENT_SAMPLES = [
    # (message, valid): the schema and the server's parser agree on each.
    pytest.param({"id": "1", "type": "subscribe",
                  "data": {"channel": "token_updates", "token_id": "0x..."}}, True,
                 id="spec-placeholder"),
    pytest.param({"type": "subscribe",
                  "data": {"channel": "token_updates", "token_id": "0X" + MTK[2:].upper()}},
                 True, id="upper-case-token-id"),
    pytest.param({"type": "subscribe",
                  "data": {"channel": "token_updates", "token_id": "0x1"}}, False,
                 id="short-token-id"),
    pytest.param({"type": "subscribe",
                  "data": {"channel": "token_updates", "token_id": MTK, "address": ALICE}},
                 False, id="extra-parameter"),
    pytest.param({"type": "subscribe", "data": {"channel": "market_data", "symbols": "MTK/USD"}},
                 True, id="one-symbol"),
    pytest.param({"type": "subscribe", "data": {"channel": "market_data", "symbols": []}},
                 False, id="no-symbols"),
    pytest.param({"type": "subscribe", "data": {"channel": "market_data"}}, False,
                 id="missing-symbols"),
    pytest.param({"type": "subscribe", "data": {"channel": "transaction_updates",
                                                "address": ALICE}}, True, id="address"),
    pytest.param({"type": "subscribe", "data": {"channel": "news"}}, False, id="unknown-channel"),
    pytest.param({"id": 3, "type": "execute_transaction",
                  "data": {"from": ALICE, "to": BOB, "amount": "1.50", "token_id": MTK}},
                 True, id="execute"),
    pytest.param({"type": "execute_transaction",
                  "data": {"from": ALICE, "to": BOB, "amount": 1, "token_id": MTK}},
                 False, id="numeric-amount"),
    pytest.param({"type": "execute_transaction",
                  "data": {"from": ALICE, "to": BOB, "amount": "1", "token_id": MTK,
                           "idempotency_key": ""}},
                 False, id="empty-idempotency-key"),
    pytest.param({"type": "get_transaction", "data": {"transaction_id": "0x" + TX[2:].upper()}},
                 True, id="upper-case-transaction-id"),
    pytest.param({"type": "get_transaction", "data": {"transaction_id": MTK}}, False,
                 id="address-as-transaction-id"),
    pytest.param({"type": "get_balance", "data": {"address": ALICE}}, False,
                 id="balance-without-token"),
    pytest.param({"type": "ping"}, True, id="ping-without-data"),
    pytest.param({"id": None, "type": "ping"}, True, id="null-id"),
    pytest.param({"id": -(2**63), "type": "ping"}, True, id="smallest-integer-id"),
    pytest.param({"id": 2**64 - 1, "type": "ping"}, True, id="largest-integer-id"),
    pytest.param({"id": "x" * 128, "type": "ping"}, True, id="longest-id"),
    pytest.param({"id": "x" * 129, "type": "ping"}, False, id="too-long-id"),
    pytest.param({"id": 1.5, "type": "ping"}, False, id="float-id"),
    pytest.param({"id": True, "type": "ping"}, False, id="boolean-id"),
    pytest.param({"type": "subscribe", "data": []}, False, id="data-not-an-object"),
    pytest.param({"type": "ping", "data": None}, False, id="null-data"),
    pytest.param({"id": "1", "data": {}}, False, id="no-type"),
    pytest.param({"id": 2**64, "type": "ping"}, False, id="huge-integer-id"),
    pytest.param({"id": -(2**63) - 1, "type": "ping"}, False, id="tiny-integer-id"),
    pytest.param({"type": "ping", "data": {"x": 1}}, False, id="ping-with-field"),
    pytest.param({"type": "list_subscriptions", "data": {}, "extra": 1}, True,
                 id="extra-top-level-ignored"),
    pytest.param({"type": "heartbeat_response", "data": {"timestamp": "2024-01-01T12:00:00Z"}},
                 True, id="heartbeat-response"),
    pytest.param({"type": "reconnect", "data": {"last_message_id": "msg_123",
                                                "subscriptions": ["sub_123", "sub_456"]}},
                 True, id="spec-reconnect"),
    pytest.param({"type": "reconnect", "data": {"last_message_id": None}}, True,
                 id="reconnect-from-nothing"),
    pytest.param({"type": "reconnect", "data": {"last_message_id": "123"}}, False,
                 id="reconnect-bad-message-id"),
    pytest.param({"type": "reconnect", "data": {"subscriptions": "sub_1"}}, False,
                 id="reconnect-subscriptions-not-a-list"),
    pytest.param({"type": "unsubscribe", "data": {"subscription_id": ""}}, False,
                 id="empty-subscription-id"),
]


def _parser_accepts(message: dict) -> bool:
    # json, not orjson, encodes integers beyond 64 bits, as a client may.
    try:
        parse_request(parse_envelope(json.dumps(message).encode()))
    except RequestError:
        return False
    return True


@pytest.mark.parametrize(("message", "valid"), CLIENT_SAMPLES)
def test_client_samples(message: dict, valid: bool) -> None:
    """
    A client message validates exactly when the server's parser accepts it.
    """
    assert _parser_accepts(message) is valid
    if valid:
        validate_client_message(message)
    else:
        with pytest.raises(AssertionError):
            validate_client_message(message)


# Real traffic


def test_real_traffic(clock) -> None:
    """
    Everything a session sends for a tour of the API (every channel, every
    request it serves, errors, the rate limit, a heartbeat) validates, and
    every kind of message it can send today is among it.
    """
    server = make_server(clock)
    market = MarketService(server.catalog, server.app.publish, clock, 1.0, 1, lambda token_id: 0)
    market.tick()
    session, connection = open_session(server)

    def send_all(*messages: Any) -> None:
        for message in messages:
            send(session, message)
        clock.advance(1.0)

    send_all(
        {"id": "r", "type": "reconnect",
         "data": {"last_message_id": "msg_12", "subscriptions": ["sub_123"]}},
        {"id": "1", "type": "subscribe", "data": {"channel": "token_updates", "token_id": "*"}},
        {"id": 2, "type": "subscribe",
         "data": {"channel": "market_data", "symbols": ["mtk/usd", "STK/USD"]}},
        {"id": "3", "type": "subscribe",
         "data": {"channel": "transaction_updates", "address": "0x" + ALICE[2:].upper()}},
        {"id": "4", "type": "subscribe", "data": {"channel": "token_updates", "token_id": MTK}},
        {"type": "list_subscriptions"},
        {"id": "p", "type": "ping"},
        {"id": "s", "type": "server_info", "data": {}},
        {"id": "t", "type": "get_token_info", "data": {"token_id": MTK}},
        {"type": "heartbeat_response", "data": {"timestamp": NOW}},
    )
    market.tick()
    (confirmation,) = [m for m in connection.messages if m["id"] == "1"]
    send_all(
        {"id": "u", "type": "unsubscribe",
         "data": {"subscription_id": confirmation["data"]["subscription_id"]}},
        b"not json",
        {"id": "e1", "type": "nope"},
        {"id": "e2", "type": "subscribe", "data": {"channel": "news"}},
        {"id": "e3", "type": "get_token_info", "data": {"token_id": "0x" + "1" * 40}},
        {"id": "e4", "type": "get_token_info", "data": {"token_id": "0x1"}},
        {"id": "e5", "type": "reconnect"},
    )
    send_all(*({"id": n, "type": "ping"} for n in range(12)))
    HeartbeatService(server, clock, lambda payload: payload).beat()

    messages = connection.messages + [orjson.loads(frame) for frame in connection.frames]
    seen = [validate_server_message(message) for message in messages]
    assert connection.closed is None
    assert {
        "subscription_confirmation_subscribed",
        "subscription_confirmation_unsubscribed",
        "update_token_updates",
        "update_market_data",
        "subscriptions",
        "token_info",
        "pong",
        "server_info",
        "reconnect_confirmation",
        "heartbeat",
        "error",
    } <= set(seen)
    codes = {m["data"]["code"] for m in messages if m["type"] == "error"}
    assert {"invalid_request", "unknown_type", "invalid_channel", "invalid_params",
            "not_found", "rate_limit_exceeded"} <= codes
