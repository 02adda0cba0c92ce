"""
The client library and the command-line client against the real server
(``twistd -n rustorium`` on a loopback port): reconnect with replay after a
connection dies mid-stream, and ``rustorium call`` / ``rustorium listen``
run as a user runs them.
"""

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from rustorium.client import RustoriumClient
from tests.integration.conftest import BIN, environment

MTK = "0x00000000000000000000000000000000004d544b"
SYMBOLS = ["MTK/USD", "STK/USD"]


def number(update: dict) -> int:
    return int(update["id"][4:])


def sleep(seconds: float):
    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def wait_until(predicate, timeout: float = 10.0, what: str = "the condition"):
    """
    Poll C{predicate} on the reactor until it holds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        yield sleep(0.02)


@pytest_twisted.inlineCallbacks
def test_dropped_connection_replayed_exactly_once(start_server):
    """
    A client whose TCP connection is aborted while ticks go on reconnects
    by itself, and its callback sees, compared with a client that stayed
    connected, every update exactly once and in order: the missed ones
    replayed, none twice, no gap; the server reports ``recovered``.
    """
    server = start_server("--tick-interval", "0.05")
    key = server.demo_key()
    reference: list[dict] = []
    observed: list[dict] = []
    confirmations: list[dict] = []
    gaps: list = []
    stayed = RustoriumClient(server.url, key, reactor=reactor)
    dropped = RustoriumClient(server.url, key, reactor=reactor, random=lambda: 0.0,
                              on_reconnect=confirmations.append,
                              on_gap=lambda s, g: gaps.append(g))
    stayed.startService()
    dropped.startService()
    try:
        yield stayed.subscribe("market_data", symbols=SYMBOLS, on_update=reference.append)
        subscription = yield dropped.subscribe("market_data", symbols=SYMBOLS,
                                               on_update=observed.append)
        yield wait_until(lambda: len(observed) >= 10, what="updates before the drop")
        dropped._protocol.transport.abortConnection()
        dropped_at = len(observed)
        yield wait_until(lambda: confirmations, what="the reconnect")
        # About a second of ticks was missed; wait for more live ones.
        yield wait_until(lambda: len(observed) >= dropped_at + 60, what="updates after it")
        yield sleep(0.3)
    finally:
        yield dropped.stopService()
        yield stayed.stopService()
    (confirmation,) = confirmations
    assert confirmation["recovered"] is True, confirmation
    assert confirmation["replayed"] >= 20, confirmation
    assert gaps == []
    assert dropped._session.duplicates == 0
    assert subscription.id == confirmation["subscriptions"][0]["subscription_id"]
    # Each client's first update per symbol is its snapshot, with a fresh id.
    ours = [number(u) for u in observed[len(SYMBOLS):]]
    theirs = [number(u) for u in reference[len(SYMBOLS):]]
    assert ours == sorted(set(ours)), "duplicates or disorder"
    low, high = ours[0], min(ours[-1], theirs[-1])
    assert [n for n in ours if n <= high] == [n for n in theirs if low <= n <= high]
    # ... and per symbol, the same prices in the same order.
    for symbol in SYMBOLS:
        def prices(updates, symbol=symbol):
            return [u["data"]["price"] for u in updates
                    if u["data"]["symbol"] == symbol and low <= number(u) <= high]
        assert prices(observed) == prices(reference)


def rustorium(*args: str, key: str | None, timeout: float = 30.0) -> subprocess.CompletedProcess:
    env = environment()
    env.pop("RUSTORIUM_API_KEY", None)
    if key is not None:
        env["RUSTORIUM_API_KEY"] = key
    return subprocess.run([str(BIN / "rustorium"), *args], env=env, capture_output=True,
                          timeout=timeout, text=True)


def test_call_prints_the_reply(server):
    """
    ``rustorium call`` prints the reply as one JSON line and exits 0.
    """
    result = rustorium("call", "--url", server.url, "get_token_info",
                       json.dumps({"token_id": MTK}), key=server.demo_key())
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    reply = json.loads(line)
    assert reply["type"] == "token_info"
    assert reply["data"]["symbol"] == "MTK"


def test_call_key_from_option(server):
    result = rustorium("call", "--url", server.url, "--api-key", server.demo_key(), "ping",
                       key=None)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["type"] == "pong"


def test_call_error_reply(server):
    """
    An error reply is printed as JSON too, and the exit status is 1.
    """
    result = rustorium("call", "--url", server.url, "get_token_info",
                       '{"token_id": "0x0000000000000000000000000000000000000001"}',
                       key=server.demo_key())
    assert result.returncode == 1
    reply = json.loads(result.stdout)
    assert reply["type"] == "error"
    assert reply["data"]["code"] == "not_found"


def test_call_refused_key(server):
    result = rustorium("call", "--url", server.url, "ping", key="rk_not_a_key")
    assert result.returncode == 1
    assert result.stdout == ""
    assert "HTTP 401" in result.stderr


def test_call_without_key():
    result = rustorium("call", "ping", key=None)
    assert result.returncode == 2
    assert "RUSTORIUM_API_KEY" in result.stderr


@contextmanager
def listening(url: str, *args: str, key: str, **popen: Any) -> Iterator[subprocess.Popen]:
    """
    ``rustorium listen --url URL ARGS...`` as a child process with its
    standard output and error piped; killed at the end if still running.
    """
    env = environment()
    env["RUSTORIUM_API_KEY"] = key
    process = subprocess.Popen(
        [str(BIN / "rustorium"), "listen", "--url", url, *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()


def default_sigint() -> None:
    """
    Give the child SIGINT's default action. A shell starts background jobs
    (pytest run with ``&``) with SIGINT ignored, their children inherit
    that, and a process that starts with SIGINT ignored rightly leaves it
    ignored: a terminal's Ctrl-C is not meant for it.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("command", [["call", "ping"], ["listen", "market_data", "MTK/USD"]])
def test_url_must_be_a_websocket_url(command):
    """
    An http:// URL is a usage error (exit status 2) saying what the URL
    must be, in one line after the usage; it used to be a traceback.
    """
    url = "http://127.0.0.1:8765/v1"
    result = rustorium(command[0], "--url", url, *command[1:], key="rk_x")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"rustorium {command[0]}: error: the URL must start with ws:// or wss://, "
        f"such as ws://127.0.0.1:8765/v1 (got '{url}')")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_listen_prints_json_lines(start_server, stop):
    """
    ``rustorium listen`` prints each update as one JSON line until it is
    interrupted (Ctrl-C, SIGINT) or terminated (SIGTERM), then closes its
    connection and exits 0.
    """
    server = start_server("--tick-interval", "0.05")
    with listening(server.url, "market_data", "MTK/USD", key=server.demo_key(),
                   preexec_fn=default_sigint) as process:
        first = process.stdout.readline()
        time.sleep(1.0)
        process.send_signal(stop)
        rest, errors = process.communicate(timeout=15)
    assert process.returncode == 0, errors
    updates = [json.loads(line) for line in [first, *rest.splitlines()]]
    assert len(updates) >= 10
    assert {u["type"] for u in updates} == {"update"}
    assert {(u["data"]["channel"], u["data"]["symbol"]) for u in updates} == {
        ("market_data", "MTK/USD")}
    numbers = [number(u) for u in updates]
    assert numbers == sorted(set(numbers))
    assert "subscribed sub_" in errors


def test_listen_ends_quietly_when_its_reader_leaves(start_server):
    """
    ``rustorium listen ... | head -2``: once the reader has closed the pipe,
    listen exits 0 at the next update, as Unix tools do, without a
    traceback on standard error.
    """
    server = start_server("--tick-interval", "0.05")
    with listening(server.url, "market_data", "MTK/USD", key=server.demo_key()) as process:
        lines = [process.stdout.readline(), process.stdout.readline()]
        process.stdout.close()
        status = process.wait(timeout=15)
        errors = process.stderr.read()
    assert [json.loads(line)["type"] for line in lines] == ["update", "update"]
    assert status == 0, errors
    assert "Traceback" not in errors and "Error" not in errors, errors
    assert len(errors.splitlines()) <= 1, errors  # "subscribed sub_..."


def test_listen_exits_when_its_key_is_revoked(start_server):
    """
    When the key is revoked the server closes the connection with 4001;
    listen prints the code and reason in one line and exits 1.
    """
    server = start_server("--tick-interval", "0.05", "--key-check-interval", "0.2")
    server.demo_key()
    key = server.create_key("--name", "doomed")
    with listening(server.url, "market_data", "MTK/USD", key=key) as process:
        assert json.loads(process.stdout.readline())["type"] == "update"
        subprocess.run([str(BIN / "rustorium"), "keys", "revoke", "--database",
                        server.database, "2"], env=environment(), check=True,
                       capture_output=True)
        _, errors = process.communicate(timeout=15)
    assert process.returncode == 1, errors
    assert "Traceback" not in errors, errors
    assert errors.splitlines()[-1] == (
        "rustorium: the server closed the connection with code 4001: API key revoked")
