"""
Echo mode of the server's own WebSocket stack: the testee of the
Autobahn|Testsuite (``conformance/run.sh``).

Everything a client meets on the wire is production code: the listening
port (write-through transports, L{rustorium.output}), the twisted.web site
with the API at ``/v1`` (L{rustorium.web.build_site}), and
L{RustoriumServerFactory} with its production protocol options, set by the
factory itself from the settings. Two things differ, and only these:

- no API key is asked for (there is no key store; the testsuite cannot
  send one), and there is no session: the protocol echoes each message;
- C{max-message-size} (frame and message limit) is raised from 64 KiB to
  16 MiB, the largest message of the testsuite (cases 9.1.6 and 9.2.6 send
  16 MiB in one frame), and the frame budget (C{frame-rate},
  C{frame-burst}) is lifted: cases 9.3.* and 9.4.* send 4 MiB messages in
  up to 65,536 frames as fast as they can. Nothing else is changed.

The echo goes out the way replies do in production: a frame prepared once
(L{PreparedMessage}) and written through the connection's output path, so
backpressure is the production one too.

Usage (from the repository root)::

    python -m conformance.echo_server --port 9001

It listens on 127.0.0.1 only, prints ``listening on URL`` once it does, and
on SIGTERM or SIGINT stops and prints how many errors were logged (any is a
finding: the production protocol logged a failure).
"""

import argparse
import sys
from collections import Counter
from typing import Any

import attrs
from autobahn.websocket.protocol import PreparedMessage
from twisted.internet import endpoints
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    formatEventAsClassicLogText,
    globalLogBeginner,
)
from twisted.web.resource import NoResource

from rustorium.config import Settings
from rustorium.output import listening_reactor
from rustorium.server import Counters
from rustorium.storage.keys import ApiKey
from rustorium.web import build_site
from rustorium.websocket import API_PATH, RustoriumServerFactory, RustoriumServerProtocol

CONFORMANCE_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
"""The largest message (and frame) of the testsuite: cases 9.1.6 and 9.2.6."""

ECHO_KEY = ApiKey(0, "conformance-echo", frozenset(), "1970-01-01T00:00:00.000000Z")
"""The key an echo connection counts as (for log lines); it is never checked."""


CONFORMANCE_FRAME_BUDGET = 1 << 30
"""Frames per second and at once: more than any case sends."""


def echo_settings(max_message_size: int = CONFORMANCE_MAX_MESSAGE_SIZE) -> Settings:
    """
    The production defaults, with the frame and message limit raised and
    the frame budget lifted.
    """
    return Settings(
        max_message_size=max_message_size,
        frame_rate=CONFORMANCE_FRAME_BUDGET,
        frame_burst=CONFORMANCE_FRAME_BUDGET,
    )


@attrs.define
class EchoServer:
    """
    What L{RustoriumServerFactory} and its protocol use of a
    L{rustorium.server.Server}: settings, readiness and counters.
    """

    settings: Settings
    ready: bool = True
    broker_ready: bool = True
    counters: Counters = attrs.Factory(Counters)
    connections_per_key: Counter[int] = attrs.Factory(Counter)


class EchoProtocol(RustoriumServerProtocol):
    """
    The production protocol, with the handshake's key check and the session
    replaced by an echo.
    """

    def onConnect(self, request: Any) -> None:
        # As an authenticated handshake does (connectionLost counts down).
        self.factory.api_server.connections_per_key[ECHO_KEY.key_id] += 1
        self._api_key = ECHO_KEY

    def onOpen(self) -> None:
        self._start_output()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        frame = PreparedMessage(payload, isBinary, False, True).payloadHybi
        self._queue_frame(frame, None)


def echo_factory(
    max_message_size: int = CONFORMANCE_MAX_MESSAGE_SIZE, reactor: Any = None
) -> RustoriumServerFactory:
    """
    The production factory (and so its protocol options) with the echo
    protocol.
    """
    factory = RustoriumServerFactory(
        EchoServer(echo_settings(max_message_size)), path=API_PATH, reactor=reactor
    )
    factory.protocol = EchoProtocol
    return factory


def listen(port: int, factory: RustoriumServerFactory, reactor: Any) -> Any:
    """
    Listen on 127.0.0.1 the way the service does: the production site on
    a write-through port. Returns the listening port's Deferred.
    """
    # The operators' pages (health, metrics) need the whole service: the
    # echo mode leaves them out (404).
    site = build_site(
        factory, factory.api_server.settings.handshake_timeout, NoResource(), NoResource()
    )
    endpoint = endpoints.serverFromString(
        listening_reactor(reactor), f"tcp:{port}:interface=127.0.0.1"
    )
    return endpoint.listen(site)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=9001)
    parser.add_argument(
        "--max-message-size", type=int, default=CONFORMANCE_MAX_MESSAGE_SIZE,
        help="frame and message limit in bytes (production default: "
        f"{Settings().max_message_size})",
    )
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    errors: list[dict] = []

    def count_errors(event: dict) -> None:
        if event.get("log_level") in (LogLevel.error, LogLevel.critical) or event.get("isError"):
            errors.append(event)

    def to_stderr(event: dict) -> None:
        text = formatEventAsClassicLogText(event)
        if text:
            sys.stderr.write(text)

    globalLogBeginner.beginLoggingTo(
        [count_errors,
         FilteringLogObserver(to_stderr, [LogLevelFilterPredicate(LogLevel.warn)])],
        redirectStandardIO=False,
    )

    factory = echo_factory(args.max_message_size, reactor)
    d = listen(args.port, factory, reactor)

    def listening(port: Any) -> None:
        host = port.getHost()
        print(f"listening on ws://{host.host}:{host.port}{API_PATH} "
              f"(max-message-size {args.max_message_size})", flush=True)

    def failed(failure: Any) -> None:
        print(f"cannot listen: {failure.getErrorMessage()}", file=sys.stderr, flush=True)
        errors.append({"log_failure": failure})
        reactor.stop()

    d.addCallbacks(listening, failed)
    reactor.run()
    print(f"errors logged: {len(errors)}", flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
