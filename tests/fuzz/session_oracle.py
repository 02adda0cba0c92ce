"""
The session fuzzing's oracle and driver, shared by the Hypothesis tests
(C{tests/unit/test_fuzz_session.py}) and the atheris target
(C{tests/fuzz/fuzz_session.py}).

For each message the oracle works out on its own (L{expect}) whether the
envelope is valid; L{Harness.send} sends it through
L{Session.message_received} on a server with the rate limit out of the way
and checks:

- nothing escapes C{message_received} (the protocol would log it and close
  the connection with 1011);
- a message that is not a valid request gets exactly one C{error} reply
  with a code from L{ErrorCode}, never C{internal_error}, echoing the id
  when the id was valid (C{null} otherwise);
- a valid envelope gets its request's reply, or exactly one such error;
  updates that follow on a subscribed session are never errors;
- nothing is logged at error level (except a known bug, L{KNOWN_BUGS},
  in exactly its known shape);
- the connection is not closed, and the session stays usable: a C{ping}
  afterwards gets its C{pong} (L{Harness.still_usable}).
"""

import attrs
import orjson
from twisted.internet.task import Clock

from rustorium.errors import ErrorCode
from rustorium.requests import MAX_ID_LENGTH, PARSERS
from rustorium.session import Session
from tests.helpers import KEY, FakeConnection, make_server

COUNTS: dict[str, int] = {}
"""Messages tried, by harness name (a test)."""

ERROR_CODES = frozenset(str(code) for code in ErrorCode)

SUCCESS = {
    "subscribe": "subscription_confirmation",
    "unsubscribe": "subscription_confirmation",
    "execute_transaction": "transaction_response",
    "get_token_info": "token_info",
    "get_balance": "balance",
    "get_transaction": "transaction",
    "list_subscriptions": "subscriptions",
    "ping": "pong",
    "server_info": "server_info",
    "reconnect": "reconnect_confirmation",
}
"""The reply each request type gets when it succeeds."""

KNOWN_BUGS: dict[str, tuple[type[BaseException], str]] = {}
"""
Bugs the fuzzing found that are not fixed yet, by name: the exception
type and a text of its message. A message that hits one is answered
C{internal_error} and a traceback is logged; it is tolerated, and counted,
only in exactly that shape. Add an entry (with a strict xfail regression
test) when a bug is found, and remove it with the fix. (The first two,
amounts over 4,300 digits and error messages quoting values nested over
255 levels, were fixed; their regression tests are in
tests/unit/test_fuzz_session.py.)
"""

KNOWN_HITS: dict[str, int] = {}

REPLIES: dict[str, int] = {}
"""What the first reply to each message was: a reply type, or error/CODE."""


# ---------------------------------------------------------------------------
# The oracle


@attrs.frozen
class Error:
    """An error reply with this code and id is expected, and nothing else."""

    code: ErrorCode
    request_id: object


@attrs.frozen
class Valid:
    """A valid envelope: its request's reply, or one error, is expected."""

    kind: str
    request_id: object


@attrs.frozen
class Silent:
    """No reply is expected (C{heartbeat_response})."""


def expect(payload: bytes, is_binary: bool) -> Error | Valid | Silent:
    """
    What the session must answer, from the protocol's rules for the
    envelope (docs/protocol.rst), written independently of
    L{rustorium.requests.parse_envelope}.
    """
    if is_binary:
        return Error(ErrorCode.INVALID_REQUEST, None)
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return Error(ErrorCode.INVALID_REQUEST, None)
    if not isinstance(message, dict):
        return Error(ErrorCode.INVALID_REQUEST, None)
    request_id = message.get("id")
    valid_id = (
        request_id is None
        or type(request_id) is int
        or (type(request_id) is str and len(request_id) <= MAX_ID_LENGTH)
    )
    if not valid_id:
        return Error(ErrorCode.INVALID_REQUEST, None)
    kind = message.get("type")
    if type(kind) is not str:
        return Error(ErrorCode.INVALID_REQUEST, request_id)
    if kind not in PARSERS:
        return Error(ErrorCode.UNKNOWN_TYPE, request_id)
    if type(message.get("data", {})) is not dict:
        return Error(ErrorCode.INVALID_REQUEST, request_id)
    if kind == "heartbeat_response":
        return Silent()
    return Valid(kind, request_id)


def check_error(message: dict, code: object, request_id: object) -> None:
    assert message["type"] == "error", message
    assert message["id"] == request_id, message
    data = message["data"]
    assert data["code"] in ERROR_CODES, message
    assert data["code"] != ErrorCode.INTERNAL_ERROR, message
    if code is not None:
        assert data["code"] == code, message
    assert isinstance(data["message"], str) and data["message"], message


def check_replies(expected: Error | Valid | Silent, replies: list[dict]) -> None:
    """
    Check the replies to one message (updates, which may follow any
    message on a subscribed session, are not among them).
    """
    if isinstance(expected, Silent):
        assert replies == []
    elif isinstance(expected, Error):
        assert len(replies) == 1, replies
        check_error(replies[0], expected.code, expected.request_id)
    else:
        assert len(replies) == 1, replies
        (reply,) = replies
        if reply["type"] == "error":
            check_error(reply, None, expected.request_id)
        else:
            assert reply["type"] == SUCCESS[expected.kind], reply
            assert reply["id"] == expected.request_id, reply


def check_updates(updates: list[dict]) -> None:
    for update in updates:
        assert update["type"] != "error", update
        assert str(update["id"]).startswith("msg_"), update


@attrs.define
class Recorder(FakeConnection):
    """
    A fake connection that keeps replies apart from updates.
    """

    replies: list[dict] = attrs.Factory(list)

    def send_payload(self, payload: bytes) -> None:
        super().send_payload(payload)
        self.replies.append(orjson.loads(payload))

    def take_replies(self) -> tuple[list[dict], list[dict]]:
        replies, self.replies = self.replies, []
        updates = [orjson.loads(u.payload) for u in self.updates]
        self.updates.clear()
        self.messages.clear()
        return replies, updates


# ---------------------------------------------------------------------------
# Driving a session


class Harness:
    """
    A server with the rate limit out of the way, and a fresh session per
    example (a sequence of messages shares one).
    """

    def __init__(self, logged_errors: list, name: str = "messages") -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.server = make_server(
            self.clock, rate_limit=1e9, rate_burst=10**9, key_rate_limit=1e9,
            key_rate_burst=10**9, flood_limit=10**9
        )
        self.logged_errors = logged_errors
        self.name = name
        COUNTS.setdefault(name, 0)

    def open(self) -> tuple[Session, Recorder]:
        connection = Recorder()
        return Session(connection, KEY, self.server), connection

    def send(self, session, connection, payload: bytes, is_binary: bool = False) -> list[dict]:
        """
        Send one message, check the answer and return it.
        """
        COUNTS[self.name] += 1
        before = len(self.logged_errors)
        expected = expect(payload, is_binary)
        session.message_received(payload, is_binary)
        self.clock.advance(0)
        self.clock.advance(0)
        replies, updates = connection.take_replies()
        assert connection.closed is None, connection.closed
        check_updates(updates)
        logged = self.logged_errors[before:]
        if logged:
            self.known_bug(logged, expected, replies)
            del self.logged_errors[before:]
            return replies
        check_replies(expected, replies)
        if replies:
            first = replies[0]
            what = first["type"]
            if what == "error":
                what = f"error/{first['data']['code']}"
            REPLIES[what] = REPLIES.get(what, 0) + 1
        return replies

    def known_bug(self, logged: list[dict], expected: object, replies: list[dict]) -> None:
        """
        An error was logged: fail unless it is a known bug, answered as
        that bug answers.
        """
        failures = [event.get("log_failure") for event in logged]
        for name, (kind, text) in KNOWN_BUGS.items():
            if all(f is not None and f.check(kind) and text in str(f.value) for f in failures):
                assert isinstance(expected, Valid), (name, expected)
                assert len(replies) == 1, replies
                assert replies[0]["type"] == "error", replies
                assert replies[0]["data"]["code"] == ErrorCode.INTERNAL_ERROR, replies
                assert replies[0]["id"] == expected.request_id, replies
                KNOWN_HITS[name] = KNOWN_HITS.get(name, 0) + 1
                return
        details = "\n".join(
            f.getTraceback() if f is not None else str(event)
            for f, event in zip(failures, logged, strict=True)
        )
        raise AssertionError(f"an error was logged:\n{details}")

    def still_usable(self, session, connection) -> None:
        session.message_received(b'{"id": "after", "type": "ping"}', False)
        (pong,), _ = connection.take_replies()
        assert pong["type"] == "pong" and pong["id"] == "after", pong

    def one(self, payload: bytes, is_binary: bool = False) -> None:
        session, connection = self.open()
        try:
            self.send(session, connection, payload, is_binary)
            self.still_usable(session, connection)
        finally:
            session.connection_lost()
