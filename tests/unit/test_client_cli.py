"""
rustorium listen and rustorium call: their arguments, and the commands run
in-process against the server in memory (the real runs, as processes
against a real server, are in the integration tests).
"""

import argparse
import io

import orjson
import pytest

from rustorium.cli import main
from rustorium.client import RustoriumClient
from rustorium.client.commandline import call, listen, subscription_params
from rustorium.closecodes import CloseCode
from tests.client_helpers import API_KEY, URL, MemoryNetwork
from tests.helpers import MTK


@pytest.fixture(autouse=True)
def no_key_in_environment(monkeypatch):
    monkeypatch.delenv("RUSTORIUM_API_KEY", raising=False)


def test_missing_key_is_a_usage_error(capsys):
    """
    Without --api-key or RUSTORIUM_API_KEY the command stops before
    connecting, with a usage error naming both.
    """
    with pytest.raises(SystemExit) as exited:
        main(["call", "ping"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "usage: rustorium call" in err
    assert "--api-key" in err and "RUSTORIUM_API_KEY" in err


@pytest.mark.parametrize("data", ["{not json", "[1, 2]", '"text"'])
def test_data_must_be_a_json_object(capsys, data):
    with pytest.raises(SystemExit) as exited:
        main(["call", "--api-key", "k", "get_token_info", data])
    assert exited.value.code == 2
    assert "JSON" in capsys.readouterr().err


def test_listen_needs_parameters(capsys):
    with pytest.raises(SystemExit):
        main(["listen", "--api-key", "k", "market_data"])
    assert "at least one symbol" in capsys.readouterr().err


def test_subscription_params():
    """
    One subscription for all the symbols; one per token id or address; all
    tokens when none is named.
    """
    assert subscription_params("market_data", ["MTK/USD", "STK/USD"]) == [
        {"symbols": ["MTK/USD", "STK/USD"]}]
    assert subscription_params("token_updates", []) == [{"token_id": "*"}]
    assert subscription_params("transaction_updates", ["0xa", "0xb"]) == [
        {"address": "0xa"}, {"address": "0xb"}]
    with pytest.raises(ValueError):
        subscription_params("transaction_updates", [])


class Run:
    """
    A command run in-process against the in-memory server.
    """

    def __init__(self, clock, command, key=API_KEY, refuse=False, stdout=None, **arguments):
        self.network = MemoryNetwork(clock)
        self.network.refuse = refuse
        self.stdout = stdout if stdout is not None else io.StringIO()
        self.stderr = io.StringIO()
        args = argparse.Namespace(url=URL, api_key=key, timeout=10.0, **arguments)

        def make_client(url, api_key, reactor, **kwargs):
            return RustoriumClient(url, api_key, reactor=reactor, clock=clock,
                                   endpoint=self.network, random=lambda: 0.0, **kwargs)

        self.reactor = FakeReactor(clock)
        self.result = command(self.reactor, args, self.stdout, self.stderr, make_client)

    def until_done(self, seconds: float = 30.0) -> int:
        self.network.advance(seconds, step=0.25)
        assert self.result.called
        return self.result.result

    def lines(self) -> list[dict]:
        return [orjson.loads(line) for line in self.stdout.getvalue().splitlines()]


class FakeReactor:
    """
    The fake clock, plus the shutdown trigger listen registers.
    """

    def __init__(self, clock):
        self._clock = clock
        self.triggers = []

    def __getattr__(self, name):
        return getattr(self._clock, name)

    def addSystemEventTrigger(self, phase, event, f, *args):
        self.triggers.append((phase, event, f))


def test_call_prints_the_reply(clock):
    run = Run(clock, call, type="get_token_info", data={"token_id": MTK.token_id})
    assert run.until_done() == 0
    (reply,) = run.lines()
    assert reply["type"] == "token_info"
    assert reply["data"]["symbol"] == "MTK"
    assert run.network.sessions() == []  # it closed its connection


def test_call_error_reply_exits_1(clock):
    run = Run(clock, call, type="get_transaction", data={"transaction_id": "0x" + "0" * 64})
    assert run.until_done() == 1
    (reply,) = run.lines()
    assert reply["type"] == "error"
    assert reply["data"]["code"] == "not_found"


def test_call_without_a_server(clock):
    run = Run(clock, call, refuse=True, type="ping", data=None)
    assert run.until_done() == 1
    assert "cannot connect" in run.stderr.getvalue()
    assert run.stdout.getvalue() == ""


def test_call_refused_key(clock, logged_errors):
    run = Run(clock, call, key="rk_nope", type="ping", data=None)
    assert run.until_done() == 1
    assert "HTTP 401" in run.stderr.getvalue()
    logged_errors.clear()


def test_call_without_reply_times_out(clock):
    """
    A request the server does not answer (heartbeat_response) ends after
    --timeout with exit status 1.
    """
    run = Run(clock, call, type="heartbeat_response", data={})
    run.network.advance(9.5)
    assert not run.result.called
    assert run.until_done() == 1
    assert "no reply" in run.stderr.getvalue()


def test_call_without_a_ready_connection_times_out(clock):
    """
    While the server refuses handshakes it may outgrow (503: starting),
    call keeps trying until --timeout, then says it got no connection, not
    that the request went unanswered.
    """
    run = Run(clock, call, type="ping", data=None)
    run.network.server.ready = False
    assert run.until_done() == 1
    assert run.stderr.getvalue() == f"rustorium: no connection to {URL} within 10 s\n"


def test_listen_prints_updates(clock):
    """
    listen prints each update as one JSON line on standard output and
    reports on standard error; it runs until stopped.
    """
    run = Run(clock, listen, channel="market_data",
              subscriptions=[{"symbols": ["MTK/USD", "STK/USD"]}])
    run.network.advance(1)
    for price in ("1", "2"):
        run.network.publish_price("MTK/USD", price)
        run.network.publish_price("STK/USD", price)
        run.network.publish_price("RST/USD", price)
    run.network.flush()
    lines = run.lines()
    assert [(u["data"]["symbol"], u["data"]["price"]) for u in lines] == [
        ("MTK/USD", "1"), ("STK/USD", "1"), ("MTK/USD", "2"), ("STK/USD", "2")]
    assert "subscribed sub_" in run.stderr.getvalue()
    for session in run.network.sessions():
        session.close(CloseCode.SLOW_CONSUMER, "too slow")
    run.network.advance(2)
    assert "reconnected" in run.stderr.getvalue()
    assert not run.result.called
    # Interrupted: the reactor's shutdown stops the client, and listen ends.
    ((phase, event, stop),) = run.reactor.triggers
    assert (phase, event) == ("before", "shutdown")
    stop()
    assert run.until_done(1) == 0
    assert run.network.sessions() == []


def test_listen_exits_on_refusal(clock, logged_errors):
    run = Run(clock, listen, key="rk_nope", channel="market_data",
              subscriptions=[{"symbols": ["MTK/USD"]}])
    assert run.until_done() == 1
    assert "HTTP 401" in run.stderr.getvalue()
    logged_errors.clear()


def test_listen_error_reply(clock):
    run = Run(clock, listen, channel="market_data", subscriptions=[{"symbols": ["NOPE/USD"]}])
    assert run.until_done() == 1
    (reply,) = run.lines()
    assert reply["data"]["code"] == "not_found"


def test_listen_exits_on_a_revoked_key(clock, logged_errors):
    """
    When the server closes the connection with 4001 (the key was revoked),
    listen says so with the code and reason and exits 1. It used to crash:
    it stopped the client from inside the client's own stopping.
    """
    run = Run(clock, listen, channel="market_data", subscriptions=[{"symbols": ["MTK/USD"]}])
    run.network.advance(1)
    for session in run.network.sessions():
        session.close(CloseCode.KEY_REVOKED, "API key revoked")
    assert run.until_done() == 1
    assert run.stderr.getvalue().splitlines()[-1] == (
        "rustorium: the server closed the connection with code 4001: API key revoked")
    logged_errors.clear()


class ClosedPipe(io.StringIO):
    """
    Standard output whose reader has gone, as after ``| head``.
    """

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_listen_ends_when_its_reader_leaves(clock):
    """
    When standard output's reader has gone, listen stops at the first
    update it cannot write: it closes its connection and exits 0, and
    nothing is logged.
    """
    run = Run(clock, listen, stdout=ClosedPipe(), channel="market_data",
              subscriptions=[{"symbols": ["MTK/USD"]}])
    run.network.advance(1)
    run.network.publish_price("MTK/USD", "1")
    assert run.until_done(2) == 0
    assert run.network.sessions() == []
