"""
The command-line client: ``rustorium listen`` and ``rustorium call``.

Each command is a function of the reactor and the parsed arguments that
returns a Deferred firing with the exit status, so tests can run it
in-process; L{run} drives one with C{task.react}. Standard output carries
only JSON (one message a line); everything for people goes to standard
error.
"""

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

import orjson
from autobahn.websocket.util import parse_url
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.defer import TimeoutError as ReplyTimeout
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)

from .errors import (
    ClientStopped,
    ConnectionLost,
    ConnectionRejected,
    HandshakeRefused,
    RustoriumError,
    TLSHandshakeFailed,
)
from .service import DEFAULT_URL, RustoriumClient
from .subscription import Gap, Subscription

KEY_VARIABLE = "RUSTORIUM_API_KEY"
DEFAULT_TIMEOUT = 10.0


def add_commands(commands: Any) -> None:
    """
    Add C{listen} and C{call} to the C{rustorium} command's subparsers.
    """

    def common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--url", default=DEFAULT_URL,
                            help=f"the API's WebSocket URL (default: {DEFAULT_URL})")
        parser.add_argument("--api-key", default=None,
                            help=f"the API key (default: ${KEY_VARIABLE})")
        parser.add_argument("-v", "--verbose", action="store_true",
                            help="log the client's connection events to standard error")
        return parser

    listen = common(commands.add_parser(
        "listen", help="subscribe to a channel and print each update as a JSON line",
        description="Subscribe and print every update as one JSON line on standard "
                    "output, reconnecting (with replay) until interrupted. Parameters: "
                    "market_data SYMBOL..., token_updates [TOKEN_ID...] (all tokens by "
                    "default), transaction_updates ADDRESS...",
    ))
    listen.set_defaults(command_parser=listen)
    listen.add_argument("channel", help="market_data, token_updates or transaction_updates")
    listen.add_argument("params", nargs="*", help="symbols, token ids or addresses")

    call = common(commands.add_parser(
        "call", help="send one request and print the reply as JSON",
        description="Send one request, print the reply as JSON and exit 0; on an error "
                    "reply print it and exit 1.",
    ))
    call.set_defaults(command_parser=call)
    call.add_argument("type", help="the request type, such as ping or get_token_info")
    call.add_argument("data", nargs="?", default=None,
                      help="the request's data as a JSON object, such as "
                           "'{\"token_id\": \"0x...\"}'")
    call.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                      help=f"seconds to wait for the reply (default: {DEFAULT_TIMEOUT:g})")


def check_arguments(args: argparse.Namespace) -> None:
    """
    Settle the API key and parse the JSON data, or exit with a usage error.
    """
    parser: argparse.ArgumentParser = args.command_parser
    try:
        parse_url(args.url)
    except ValueError as e:
        if not args.url.startswith(("ws://", "wss://")):
            parser.error(f"the URL must start with ws:// or wss://, such as {DEFAULT_URL} "
                         f"(got {args.url!r})")
        parser.error(f"bad --url {args.url!r}: {e}")
    if args.api_key is None:
        args.api_key = os.environ.get(KEY_VARIABLE) or None
    if args.api_key is None:
        parser.error(f"no API key: pass --api-key KEY or set {KEY_VARIABLE}")
    if args.command == "call":
        if args.data is not None:
            try:
                args.data = orjson.loads(args.data)
            except orjson.JSONDecodeError as e:
                parser.error(f"the request data is not JSON: {e}")
            if not isinstance(args.data, dict):
                parser.error("the request data must be a JSON object, such as '{}'")
    else:
        try:
            args.subscriptions = subscription_params(args.channel, args.params)
        except ValueError as e:
            parser.error(str(e))


def subscription_params(channel: str, params: list[str]) -> list[dict[str, Any]]:
    """
    The parameters of each subscription C{listen} makes: one for all the
    symbols of C{market_data}, one per token id or address.
    """
    if channel == "market_data":
        if not params:
            raise ValueError("market_data needs at least one symbol, such as MTK/USD")
        return [{"symbols": params}]
    if channel == "token_updates":
        return [{"token_id": token} for token in params or ["*"]]
    if channel == "transaction_updates":
        if not params:
            raise ValueError("transaction_updates needs at least one address")
        return [{"address": address} for address in params]
    # Let the server say what it thinks of the channel.
    return [{}]


def _line(stream: TextIO, value: object) -> None:
    stream.write(orjson.dumps(value).decode() + "\n")
    stream.flush()


def _say(stream: TextIO, text: str) -> None:
    stream.write(f"rustorium: {text}\n")
    stream.flush()


def _problem(error: BaseException, url: str) -> str:
    if isinstance(error, (ConnectError, DNSLookupError, TLSHandshakeFailed)):
        return f"cannot connect to {url}: {error}"
    return str(error) or type(error).__name__


@inlineCallbacks
def call(reactor: Any, args: argparse.Namespace, stdout: TextIO, stderr: TextIO,
         make_client: Callable[..., RustoriumClient] = RustoriumClient) -> Any:
    """
    Send one request and print its reply. Exit status: 0 for a reply, 1
    for an C{error} reply (printed on standard output too) or no reply.
    """
    client = make_client(args.url, args.api_key, reactor=reactor)
    client.startService()
    waiting_for = "no connection to"
    try:
        yield client.when_ready(fail_after_failures=1).addTimeout(args.timeout, reactor)
        waiting_for = "no reply from"
        reply = yield client.request(args.type, args.data).addTimeout(args.timeout, reactor)
    except RustoriumError as e:
        _line(stdout, e.reply)
        return 1
    except Exception as e:
        if isinstance(e, ReplyTimeout):
            _say(stderr, f"{waiting_for} {args.url} within {args.timeout:g} s")
        else:
            _say(stderr, _problem(e, args.url))
        return 1
    finally:
        yield client.stopService()
    _line(stdout, reply)
    return 0


@inlineCallbacks
def listen(reactor: Any, args: argparse.Namespace, stdout: TextIO, stderr: TextIO,
           make_client: Callable[..., RustoriumClient] = RustoriumClient) -> Any:
    """
    Subscribe and print updates until interrupted (or until the server
    refuses the client for good: exit status 1).
    """

    def update(message: dict) -> None:
        if reader_left:
            return
        try:
            _line(stdout, message)
        except BrokenPipeError:
            # The reader is gone (``listen ... | head``): end quietly, as
            # Unix tools do, and let the shutdown close the connection.
            reader_left.append(True)
            client.stopService()

    def gap(subscription: Subscription, info: Gap) -> None:
        detail = f" ({info.lost_from} to {info.lost_to})" if info.lost_from else ""
        _say(stderr, f"{subscription.channel} {subscription.params}: updates may have been "
                     f"missed: {info.reason}{detail}")

    def reconnected(data: dict) -> None:
        _say(stderr, f"reconnected: recovered {orjson.dumps(data.get('recovered')).decode()}, "
                     f"{data.get('replayed')} updates replayed")

    reader_left: list[bool] = []
    client = make_client(args.url, args.api_key, reactor=reactor, on_gap=gap,
                         on_reconnect=reconnected)
    client.startService()
    reactor.addSystemEventTrigger("before", "shutdown", client.stopService)
    try:
        yield client.when_ready(fail_after_failures=1)
        for params in args.subscriptions:
            subscription = yield client.subscribe(args.channel, on_update=update, **params)
            _say(stderr, f"subscribed {subscription.id}: {subscription.channel} "
                         f"{orjson.dumps(subscription.params).decode()}")
        yield client.when_stopped()
    except RustoriumError as e:
        _line(stdout, e.reply)
        yield client.stopService()
        return 1
    except (ConnectionLost, ClientStopped):
        return 0
    except (HandshakeRefused, ConnectionRejected, TLSHandshakeFailed, ConnectError,
            DNSLookupError) as e:
        _say(stderr, _problem(e, args.url))
        yield client.stopService()
        return 1
    return 0


def _start_logging(verbose: bool, stderr: TextIO) -> None:
    level = LogLevel.info if verbose else LogLevel.critical
    observer = FilteringLogObserver(
        textFileLogObserver(stderr), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def run(args: argparse.Namespace) -> int:
    """
    Run C{listen} or C{call} on the global reactor; exits the process.
    """
    from twisted.internet.task import react

    command = listen if args.command == "listen" else call
    _start_logging(args.verbose, sys.stderr)

    def main(reactor: Any) -> Deferred:
        def leave(code: int) -> None:
            try:
                sys.stdout.flush()
            except BrokenPipeError:
                # What is left in the buffer has no reader: drop it rather
                # than fail again at exit (Python's documented recipe).
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise SystemExit(code)

        return command(reactor, args, sys.stdout, sys.stderr).addCallback(leave)

    react(main)
