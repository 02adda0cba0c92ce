"""
Watch an address and move tokens from it: a complete client of the
Rustorium API, built on the project's client library (``rustorium.client``).

Start a server in one shell (``.venv/bin/twistd -n rustorium``), then, with
the demo key it logged, in another::

    RUSTORIUM_API_KEY=rk_... .venv/bin/python examples/watch_and_transfer.py

It subscribes to ``transaction_updates`` for Alice, sends 1.5 MTK from
Alice to Bob, prints each update of that transaction until a block confirms
it (a couple of seconds), prints both balances, and exits 0; on an error
reply or a refused connection it prints the error and exits 1. ``--url``,
``--amount`` and ``--to`` change what it does; ``docs/client.rst`` explains
every call.
"""

import argparse
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred, TimeoutError, inlineCallbacks
from twisted.internet.error import ConnectError
from twisted.internet.task import react

from rustorium.client import (
    ConnectionRejected,
    HandshakeRefused,
    RustoriumClient,
    RustoriumError,
    TLSHandshakeFailed,
)

MTK = "0x00000000000000000000000000000000004d544b"
ALICE = "0xa11ce00000000000000000000000000000000001"
BOB = "0xb0b0000000000000000000000000000000000002"
CONFIRMATION_TIMEOUT = 30.0
"""Seconds to wait for a block to confirm the transfer."""


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--url", default="ws://127.0.0.1:8765/v1")
    parser.add_argument("--api-key", default=os.environ.get("RUSTORIUM_API_KEY"),
                        help="a key that controls Alice (default: $RUSTORIUM_API_KEY)")
    parser.add_argument("--amount", default="1.5", help="whole MTK, such as 1.5")
    parser.add_argument("--to", default=BOB, help="the receiving address")
    args = parser.parse_args(argv)
    if not args.api_key:
        parser.error("no API key: pass --api-key or set RUSTORIUM_API_KEY")
    return args


@inlineCallbacks
def watch_and_transfer(reactor: Any, args: argparse.Namespace) -> Any:
    client = RustoriumClient(args.url, args.api_key, reactor=reactor)
    client.startService()
    # Updates may come for other transactions of Alice's too, and could in
    # principle come before the reply with our transaction's id: keep all.
    seen: dict[str, list[dict]] = {}
    confirmed: Deferred = Deferred()
    ours: list[str] = []

    def on_update(update: dict) -> None:
        data = update["data"]
        seen.setdefault(data["transaction_id"], []).append(data)
        if ours and data["transaction_id"] == ours[0]:
            report(data)

    def report(data: dict) -> None:
        block = f" in block {data['block_number']}" if data.get("block_number") else ""
        print(f"transaction {data['status']}{block}: {data['amount']} MTK "
              f"from {data['from']} to {data['to']}")
        if data["status"] != "pending" and not confirmed.called:
            confirmed.callback(data)

    try:
        # Requests wait for a connection; fail now if the first one fails.
        yield client.when_ready(fail_after_failures=1)
        yield client.subscribe("transaction_updates", address=ALICE, on_update=on_update)
        print(f"watching {ALICE}")
        reply = yield client.execute_transaction(ALICE, args.to, args.amount, MTK)
        ours.append(reply["transaction_id"])
        print(f"sent {reply['transaction_id']}: {reply['status']}")
        for data in seen.get(ours[0], []):
            report(data)
        final = yield confirmed.addTimeout(CONFIRMATION_TIMEOUT, reactor)
        for address in (ALICE, args.to):
            balance = yield client.get_balance(address, MTK)
            print(f"balance of {address}: {balance['balance']} MTK")
        return 0 if final["status"] == "confirmed" else 1
    except (RustoriumError, HandshakeRefused, ConnectionRejected, TLSHandshakeFailed,
            ConnectError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"error: not confirmed within {CONFIRMATION_TIMEOUT:g} s", file=sys.stderr)
        return 1
    finally:
        yield client.stopService()


def main(argv: list[str]) -> None:
    args = arguments(argv)

    def leave(status: int) -> None:
        raise SystemExit(status)

    react(lambda reactor: watch_and_transfer(reactor, args).addCallback(leave))


if __name__ == "__main__":
    main(sys.argv[1:])
