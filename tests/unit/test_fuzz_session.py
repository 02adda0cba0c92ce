"""
Fuzzing the session layer: thousands of malformed and adversarial messages
through L{Session.message_received}, the entry point of every client message.

The oracle and the checks are in L{tests.fuzz.session_oracle} (shared with
the atheris target): nothing escapes, every message that is not a valid
request gets exactly one C{error} with a known code (never
C{internal_error}) echoing a valid id, nothing is logged at error level,
and the session stays usable (a C{ping} afterwards gets its C{pong}). Each
message is checked as it is sent, so that Hypothesis shrinks to the one
that broke a rule; C{logged_errors} also fails the test at the end.

The rate limit is raised so that errors are about the message, not the
rate. The number of messages tried is printed in pytest's terminal summary.
C{RUSTORIUM_FUZZ_EXAMPLES} scales the run (default 1: about 6,000
messages in some 15 s; e.g. 20 for a long run).
"""

import json
import os

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rustorium.errors import ErrorCode
from rustorium.requests import MAX_ID_LENGTH, PARSERS
from tests.fuzz.session_oracle import COUNTS, KNOWN_HITS, REPLIES, Harness
from tests.helpers import ALICE, BOB, DEMO

SCALE = float(os.environ.get("RUSTORIUM_FUZZ_EXAMPLES", "1"))


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large],
    )


@pytest.fixture
def harness(request, logged_errors, record_property):
    h = Harness(logged_errors, request.node.name)
    yield h
    record_property("fuzz_messages", COUNTS[h.name])


@pytest.fixture(scope="module", autouse=True)
def report_counts(request):
    """
    Print the number of messages tried: in pytest's terminal summary, and
    on stdout.
    """

    class Summary:
        def pytest_terminal_summary(self, terminalreporter):
            total = sum(COUNTS.values())
            terminalreporter.write_sep("-", "session fuzzing")
            for name, count in COUNTS.items():
                if count:
                    terminalreporter.write_line(f"{name}: {count} messages")
            terminalreporter.write_line(
                f"fuzz: {total} messages through Session.message_received"
            )
            terminalreporter.write_line(
                "first replies: "
                + ", ".join(f"{k} {v}" for k, v in sorted(REPLIES.items(), key=lambda i: -i[1]))
            )
            for name, count in KNOWN_HITS.items():
                terminalreporter.write_line(
                    f"known bug {name} (see KNOWN_BUGS) hit by {count} messages"
                )

    plugin = Summary()
    request.config.pluginmanager.register(plugin, "rustorium-fuzz-summary")
    yield
    print(f"\nfuzz: {sum(COUNTS.values())} messages through Session.message_received")


# ---------------------------------------------------------------------------
# Strategies

HEX = "0123456789abcdefABCDEF"
TOKEN_IDS = [t.token_id for t in DEMO.tokens]
MARKETS = [f"{t.symbol}/USD" for t in DEMO.tokens]
CHANNELS = ["token_updates", "transaction_updates", "market_data"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**63 - 2, max_value=2**64 + 2)
    | st.integers(min_value=-(2**63) - 2, max_value=-(2**63) + 2)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.text(st.characters(codec="utf-8"), max_size=20)
    # Lone surrogates: escaped by json, invalid UTF-8 when sent raw.
    | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
)

json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)

addresses = st.one_of(
    st.sampled_from([ALICE, BOB, ALICE.upper().replace("0X", "0x"), *TOKEN_IDS]),
    st.text(HEX, min_size=40, max_size=40).map(lambda h: "0x" + h),
    st.text(HEX, min_size=38, max_size=42).map(lambda h: "0x" + h),
    st.sampled_from(["0x", "*", "0x...", "", "0x" + "0" * 40 + "\n", "0x" + "\u0661" * 40]),
    json_values,
)

transaction_ids = st.one_of(
    st.text(HEX, min_size=64, max_size=64).map(lambda h: "0x" + h),
    st.text(HEX, min_size=60, max_size=66).map(lambda h: "0x" + h),
    json_values,
)

amounts = st.one_of(
    st.decimals(min_value=0, max_value=10**6, places=3, allow_nan=False).map(str),
    st.sampled_from(["0", "0.0", "1", "1.", ".5", "-1", "+1", "1e3", "NaN", "Infinity",
                     "0x10", "1_000", " 1", "١٢", "1.0000000000000000001",
                     "999999999999999999999999999999"]),
    # Long digit strings (Python refuses int() of more than 4300 digits:
    # see test_amount_with_more_than_4300_digits).
    st.integers(min_value=1, max_value=6000).map(lambda n: "9" * n),
    st.text("0123456789.", max_size=30),
    json_values,
)

symbols = st.one_of(
    st.sampled_from(MARKETS),
    st.sampled_from([m.lower() for m in MARKETS]),
    st.text(max_size=40),
)

FIELDS = {
    "channel": st.sampled_from(CHANNELS) | json_values,
    "token_id": addresses,
    "address": addresses,
    "symbols": st.lists(symbols, max_size=120) | symbols | json_values,
    "subscription_id": st.from_regex(r"sub_[0-9a-f]{1,32}", fullmatch=True) | json_values,
    "from": addresses,
    "to": addresses,
    "amount": amounts,
    "idempotency_key": st.text(min_size=0, max_size=300) | json_values,
    "transaction_id": transaction_ids,
    "last_message_id": st.from_regex(r"msg_[0-9]{0,30}", fullmatch=True) | json_values,
    "subscriptions": st.lists(st.text(max_size=140), max_size=50) | json_values,
    "timestamp": json_values,
}

TYPE_FIELDS = {
    "subscribe": ["channel", "token_id", "address", "symbols"],
    "unsubscribe": ["subscription_id"],
    "execute_transaction": ["from", "to", "amount", "token_id", "idempotency_key"],
    "get_token_info": ["token_id"],
    "get_balance": ["address", "token_id"],
    "get_transaction": ["transaction_id"],
    "reconnect": ["last_message_id", "subscriptions"],
    "heartbeat_response": ["timestamp"],
}


SUB_REF = "$sub"
TX_REF = "$tx"
"""Stand-ins, in a sequence of messages, for a subscription or transaction
id the session sent back earlier (see L{test_one_session_many_messages})."""

VALID_DATA = {
    "subscribe": st.one_of(
        st.fixed_dictionaries({"channel": st.just("token_updates"),
                               "token_id": st.sampled_from([*TOKEN_IDS, "*", "0x..."])}),
        st.fixed_dictionaries({"channel": st.just("transaction_updates"),
                               "address": st.sampled_from([ALICE, BOB])}),
        st.fixed_dictionaries({"channel": st.just("market_data"),
                               "symbols": st.lists(st.sampled_from(MARKETS), min_size=1)}),
    ),
    "unsubscribe": st.fixed_dictionaries(
        {"subscription_id": st.just(SUB_REF) | st.from_regex(r"sub_[0-9a-f]{8}", fullmatch=True)}
    ),
    "execute_transaction": st.fixed_dictionaries(
        {"from": st.sampled_from([ALICE, ALICE, BOB]), "to": st.sampled_from([BOB, ALICE]),
         "amount": st.decimals(min_value=0, max_value=1000, places=2, allow_nan=False).map(str),
         "token_id": st.sampled_from(TOKEN_IDS)},
        optional={"idempotency_key": st.sampled_from(["k1", "k2", "k3"])},
    ),
    "get_token_info": st.fixed_dictionaries({"token_id": st.sampled_from(TOKEN_IDS)}),
    "get_balance": st.fixed_dictionaries(
        {"address": st.sampled_from([ALICE, BOB]), "token_id": st.sampled_from(TOKEN_IDS)}
    ),
    "get_transaction": st.fixed_dictionaries(
        {"transaction_id": st.just(TX_REF) | FIELDS["transaction_id"]}
    ),
    "reconnect": st.fixed_dictionaries(
        {},
        optional={"last_message_id": st.from_regex(r"msg_[0-9]{1,6}", fullmatch=True),
                  "subscriptions": st.lists(st.just(SUB_REF) | st.text(max_size=10),
                                            max_size=5)},
    ),
    "heartbeat_response": st.fixed_dictionaries({}, optional={"timestamp": json_values}),
}


@st.composite
def data_for(draw, kind: str) -> dict:
    """
    A data object for a request type: a valid one, a valid one with one
    field changed, removed or added, or any mix of its own fields with
    values valid and not.
    """
    names = TYPE_FIELDS.get(kind, [])
    how = draw(st.sampled_from(["valid", "mutated", "mixed"]))
    if how == "mixed" or kind not in VALID_DATA:
        chosen = draw(st.lists(st.sampled_from(names), unique=True)) if names else []
        data = {name: draw(FIELDS[name]) for name in chosen}
    else:
        data = draw(VALID_DATA[kind])
    if how == "mutated" or draw(st.integers(0, 9)) == 0:
        change = draw(st.sampled_from(["set", "remove", "add"]))
        if change == "remove" and data:
            del data[draw(st.sampled_from(sorted(data)))]
        elif change == "set" and data:
            name = draw(st.sampled_from(sorted(data)))
            data[name] = draw(FIELDS.get(name, json_values))
        else:
            name = draw(st.sampled_from(sorted(FIELDS)) | st.text(max_size=60))
            data[name] = draw(FIELDS.get(name, json_values))
    return data


valid_ids = st.none() | st.integers() | st.text(max_size=MAX_ID_LENGTH)
ids = st.one_of(
    valid_ids,
    st.text(min_size=MAX_ID_LENGTH + 1, max_size=MAX_ID_LENGTH + 50),
    st.booleans(),
    st.floats(),
    st.integers(min_value=2**64, max_value=2**70),
    json_values,
)

kinds = st.sampled_from(sorted(PARSERS)) | st.text(max_size=30) | json_values


@st.composite
def envelopes(draw) -> dict:
    """
    A message object: a type from the real parsers (or junk), a data object
    fitting it (or not), an id (valid or not); any key may be missing.
    """
    message: dict = {}
    if draw(st.integers(0, 9)):
        message["id"] = draw(ids)
    kind = draw(kinds) if draw(st.integers(0, 19)) else None
    if kind is not None:
        message["type"] = kind
    if draw(st.integers(0, 9)):
        if isinstance(kind, str) and draw(st.integers(0, 4)):
            message["data"] = draw(data_for(kind))
        else:
            message["data"] = draw(json_values)
    if draw(st.integers(0, 19)) == 0:
        message[draw(st.text(max_size=20))] = draw(json_values)
    return message


def encode(value: object, how: str) -> bytes:
    """
    Encode a JSON value: strictly (orjson: NaN becomes null), with Python's
    json (NaN and Infinity literals, exact big integers, escapes), or with
    lone surrogates left in as invalid UTF-8.
    """
    if how == "orjson":
        try:
            return orjson.dumps(value)
        except TypeError:  # an integer beyond 64 bits
            how = "json"
    if how == "json":
        return json.dumps(value).encode()
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


encodings = st.sampled_from(["orjson", "json", "raw"])


# ---------------------------------------------------------------------------
# The tests


@fuzz_settings(1500)
@given(message=envelopes(), how=encodings)
def test_envelopes(harness, message, how):
    """
    Structured messages: every field valid or not, in turn.
    """
    harness.one(encode(message, how))


@fuzz_settings(1500)
@given(kind=st.sampled_from(sorted(PARSERS)), request_id=valid_ids, data=st.data())
def test_each_request_type(harness, kind, request_id, data):
    """
    Every request type with data built for it: valid ids, so every error
    must echo the id.
    """
    message = {"id": request_id, "type": kind, "data": data.draw(data_for(kind))}
    harness.one(encode(message, "orjson"))


@fuzz_settings(800)
@given(value=json_values, how=encodings)
def test_any_json_value(harness, value, how):
    harness.one(encode(value, how))


@fuzz_settings(800)
@given(payload=st.binary(max_size=300), is_binary=st.booleans())
def test_raw_bytes(harness, payload, is_binary):
    """
    Arbitrary bytes, as a text message (so often invalid UTF-8 or not
    JSON) and as a binary one.
    """
    harness.one(payload, is_binary)


@fuzz_settings(300)
@given(message=envelopes(), cut=st.integers(0, 200), junk=st.binary(max_size=4))
def test_damaged_json(harness, message, cut, junk):
    """
    Valid JSON cut short or with bytes spliced in (invalid UTF-8 included).
    """
    payload = encode(message, "orjson")
    cut = min(cut, len(payload))
    harness.one(payload[:cut] + junk + payload[cut:] if junk else payload[:cut])


@fuzz_settings(100)
@given(
    depth=st.integers(1, 3000),
    opener=st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]),
    where=st.sampled_from(["alone", "id", "type", "data", "field"]),
)
def test_deep_nesting(harness, depth, opener, where):
    """
    Deeply nested values (the JSON parser stops at 1024 levels), alone and
    in each place of a message.
    """
    left, right = opener
    nested = left * depth + b"1" + right * depth
    if where == "alone":
        payload = nested
    elif where == "field":
        payload = b'{"id": 1, "type": "subscribe", "data": {"channel": ' + nested + b"}}"
    else:
        payload = b'{"id": 1, "type": "ping", "' + where.encode() + b'": ' + nested + b"}"
    harness.one(payload)


@fuzz_settings(60)
@given(
    size=st.integers(1, 60_000),
    field=st.sampled_from(["id", "type", "amount", "symbols", "subscriptions", "channel"]),
)
def test_huge_values(harness, size, field):
    """
    Values as large as a message may be (64 KiB): long strings and lists.
    """
    if field in ("id", "type"):
        message = {"id": 1, "type": "ping", field: "x" * size}
    elif field == "amount":
        message = {"id": 1, "type": "execute_transaction",
                   "data": {"from": ALICE, "to": BOB, "token_id": TOKEN_IDS[0],
                            "amount": "1" + "0" * size}}
    elif field == "symbols":
        message = {"id": 1, "type": "subscribe",
                   "data": {"channel": "market_data", "symbols": ["X"] * (size // 4)}}
    elif field == "subscriptions":
        message = {"id": 1, "type": "reconnect",
                   "data": {"subscriptions": ["sub_1"] * (size // 8)}}
    else:
        message = {"id": 1, "type": "subscribe", "data": {"channel": "c" * size}}
    harness.one(orjson.dumps(message))


def resolve(value: object, seen: dict[str, list[str]]) -> object:
    """
    Replace the stand-ins L{SUB_REF} and L{TX_REF} by ids seen so far.
    """
    if value == SUB_REF and seen["sub"]:
        return seen["sub"][-1]
    if value == TX_REF and seen["tx"]:
        return seen["tx"][-1]
    if isinstance(value, dict):
        return {k: resolve(v, seen) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, seen) for v in value]
    return value


request_messages = st.sampled_from(sorted(PARSERS)).flatmap(
    lambda kind: st.fixed_dictionaries(
        {"id": valid_ids, "type": st.just(kind), "data": data_for(kind)}
    )
)


@fuzz_settings(100)
@given(st.lists(st.tuples(request_messages | envelopes(), encodings), min_size=5, max_size=40))
def test_one_session_many_messages(harness, sequence):
    """
    Sequences of messages on one session, mostly requests, referring to
    subscriptions and transactions made earlier in the sequence: state
    carried from message to message (subscriptions, a reconnect after
    them, unsubscribing, transfers) never breaks it.
    """
    session, connection = harness.open()
    seen: dict[str, list[str]] = {"sub": [], "tx": []}
    try:
        for message, how in sequence:
            replies = harness.send(session, connection, encode(resolve(message, seen), how))
            for reply in replies:
                data = reply.get("data")
                if isinstance(data, dict):
                    if "subscription_id" in data:
                        seen["sub"].append(data["subscription_id"])
                    if "transaction_id" in data:
                        seen["tx"].append(data["transaction_id"])
        harness.still_usable(session, connection)
    finally:
        session.connection_lost()


def test_amount_with_more_than_4300_digits(harness):
    """
    Regression test for a bug this fuzzing found: an amount of 4301 or more
    digits (Python's int() refuses it) is refused with C{invalid_params}; it
    was answered C{internal_error}, with a logged traceback.
    """
    session, connection = harness.open()
    session.message_received(orjson.dumps({
        "id": 7, "type": "execute_transaction",
        "data": {"from": ALICE, "to": BOB, "token_id": TOKEN_IDS[0], "amount": "9" * 4301},
    }), False)
    (reply,), _ = connection.take_replies()
    assert reply["id"] == 7
    assert reply["data"]["code"] == ErrorCode.INVALID_PARAMS, reply


@pytest.mark.parametrize("field", ["channel", "token_id", "transaction_id", "last_message_id"])
def test_error_message_for_deeply_nested_value(harness, field):
    """
    Regression test for a bug this fuzzing found: a field holding a value
    nested 256 to 1024 levels deep gets the field's usual error; quoting it
    in the message failed the request (C{internal_error}, a logged
    traceback).
    """
    kind, code = {
        "channel": ("subscribe", ErrorCode.INVALID_CHANNEL),
        "token_id": ("get_token_info", ErrorCode.INVALID_PARAMS),
        "transaction_id": ("get_transaction", ErrorCode.INVALID_PARAMS),
        "last_message_id": ("reconnect", ErrorCode.INVALID_PARAMS),
    }[field]
    nested = "[" * 300 + "1" + "]" * 300
    payload = f'{{"id": 7, "type": "{kind}", "data": {{"{field}": {nested}}}}}'.encode()
    session, connection = harness.open()
    session.message_received(payload, False)
    (reply,), _ = connection.take_replies()
    assert reply["id"] == 7
    assert reply["data"]["code"] == code, reply
