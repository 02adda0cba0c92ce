"""
``rustorium feed prices FILE.csv``: replay recorded prices into a server's
HTTP API (C{POST /api/v1/prices}, with a C{publish} key), as fast as the
server takes them or at the recorded pace, with a progress bar.

The file has one price a line, C{timestamp,symbol,price} and an optional
fourth column, C{volume} (tokens traded since the market's previous
price); a first line naming the columns is skipped. A timestamp is RFC
3339 (C{2026-11-26T10:37:17Z}) or POSIX seconds.

Each price's sequence number is its timestamp in microseconds, so that the
server orders prices by when they were observed: a retried batch, or the
same file replayed twice, moves no price backwards (the second replay is
all stale). With C{--restamp} the prices are stamped, and numbered, with
the time they are sent instead, for replaying an old recording as live
data.

A batch the server refuses for a reason that retrying cannot cure (a bad
key, a bad row) stops the tool with exit status 1; one it could not take
now (429, 503, a dropped connection) is sent again after a pause, which the
sequence numbers make safe.
"""

import argparse
import csv
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import IO, Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

import attrs
import orjson

from .timestamps import isoformat

DEFAULT_URL = "http://127.0.0.1:8765"
KEY_VARIABLE = "RUSTORIUM_API_KEY"
BATCH = 500
"""Prices per request when sending as fast as possible (the server takes
at most 1000)."""
ATTEMPTS = 8
"""Tries per batch before giving up, waiting more each time."""


class FeedError(Exception):
    """
    The replay cannot go on; the message says why, for a person.
    """


@attrs.frozen
class Row:
    """
    One recorded price.

    @ivar at: when it was observed, POSIX seconds.
    """

    at: float
    symbol: str
    price: str
    volume: str | None = None
    line: int = 0

    def entry(self, restamped: float | None = None) -> dict[str, object]:
        """
        The price as C{POST /api/v1/prices} takes it.
        """
        at = self.at if restamped is None else restamped
        entry: dict[str, object] = {
            "symbol": self.symbol,
            "price": self.price,
            "seq": round(at * 1_000_000),
            "timestamp": isoformat(at),
        }
        if self.volume:
            entry["volume"] = self.volume
        return entry


def _timestamp(text: str) -> float | None:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def read_rows(lines: IO[str]) -> Iterator[Row]:
    """
    The prices of a CSV file, in its order.

    @raise FeedError: for a line that is not C{timestamp,symbol,price[,volume]}.
    """
    for number, fields in enumerate(csv.reader(lines), start=1):
        if not fields or not "".join(fields).strip():
            continue
        at = _timestamp(fields[0]) if fields else None
        if at is None and number == 1 and not any(c.isdigit() for c in fields[0]):
            continue  # the header
        if at is None or len(fields) not in (3, 4) or not math.isfinite(at):
            raise FeedError(
                f"line {number}: expected timestamp,symbol,price[,volume] with an RFC 3339 "
                f"or POSIX timestamp, not {','.join(fields)[:80]!r}"
            )
        volume = fields[3].strip() if len(fields) == 4 else None
        yield Row(at, fields[1].strip(), fields[2].strip(), volume or None, number)


class Progress:
    """
    A progress bar on a terminal, or a line every tenth of the way
    elsewhere (a log).
    """

    WIDTH = 30

    def __init__(self, total: int, out: IO[str]) -> None:
        self.total = total
        self.out = out
        self.sent = self.accepted = self.stale = 0
        self._tty = out.isatty()
        self._shown_tenth = -1

    def add(self, sent: int, accepted: int, stale: int) -> None:
        self.sent += sent
        self.accepted += accepted
        self.stale += stale
        done = self.sent / self.total if self.total else 1.0
        line = (f"{self.sent}/{self.total} prices sent, {self.accepted} accepted, "
                f"{self.stale} stale")
        if self._tty:
            filled = int(done * self.WIDTH)
            self.out.write(f"\r[{'#' * filled}{' ' * (self.WIDTH - filled)}] {line}")
            if self.sent >= self.total:
                self.out.write("\n")
        elif int(done * 10) > self._shown_tenth:
            self._shown_tenth = int(done * 10)
            self.out.write(line + "\n")
        self.out.flush()


class Sender:
    """
    Posts batches of prices, pausing and sending again what the server
    could not take now.
    """

    def __init__(self, url: str, key: str, sleep: Callable[[float], None] = time.sleep,
                 timeout: float = 30.0) -> None:
        base = url.rstrip("/")
        if not base.endswith("/api/v1"):
            base += "/api/v1"
        self.url = base + "/prices"
        self._key = key
        self._sleep = sleep
        self._timeout = timeout

    def post(self, entries: list[dict]) -> tuple[int, int]:
        """
        Post one batch; return how many were accepted and how many stale.

        @raise FeedError: if the server refuses it for good, or cannot be
            reached after L{ATTEMPTS} tries.
        """
        body = orjson.dumps({"prices": entries})
        problem = ""
        for attempt in range(ATTEMPTS):
            request = Request(self.url, data=body, method="POST", headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {self._key}",
            })
            try:
                with urlopen(request, timeout=self._timeout) as response:
                    answer = orjson.loads(response.read())
                    return int(answer["accepted"]), int(answer["stale"])
            except HTTPError as e:
                error = _error(e)
                if e.code not in (429, 503) and e.code < 500:
                    raise FeedError(f"the server refused the prices ({e.code}): {error}") from None
                problem = f"{e.code}: {error}"
                retry_after = e.headers.get("Retry-After")
                delay = float(retry_after) if retry_after and retry_after.isdigit() else None
            except (URLError, OSError) as e:
                problem = str(getattr(e, "reason", e))
                delay = None
            self._sleep(delay if delay is not None else min(30.0, 0.5 * 2**attempt))
        raise FeedError(f"gave up after {ATTEMPTS} tries: {problem}")


def _error(e: HTTPError) -> str:
    try:
        return orjson.loads(e.read())["error"]["message"]
    except Exception:
        return e.reason or "no reason given"


def batches(rows: list[Row], size: int) -> Iterator[list[Row]]:
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def paced(rows: list[Row], speed: float, clock: Callable[[], float],
          sleep: Callable[[float], None]) -> Iterator[list[Row]]:
    """
    The rows in batches of those due together, each when its time comes:
    C{speed} times as fast as they were recorded.
    """
    if not rows:
        return
    start, first = clock(), rows[0].at
    index = 0
    while index < len(rows):
        due = first + (clock() - start) * speed
        batch = []
        while index < len(rows) and rows[index].at <= due and len(batch) < 1000:
            batch.append(rows[index])
            index += 1
        if batch:
            yield batch
            continue
        sleep(max(0.0, (rows[index].at - due) / speed))


def replay(rows: list[Row], sender: Sender, progress: Progress, speed: float | None = None,
           restamp: bool = False, batch: int = BATCH,
           clock: Callable[[], float] = time.time,
           sleep: Callable[[float], None] = time.sleep) -> None:
    """
    Send the rows: as fast as the server takes them (C{speed} C{None}) or
    paced; stamped with their own time or, with C{restamp}, the time sent.
    """
    groups = batches(rows, batch) if speed is None else paced(rows, speed, clock, sleep)
    last = 0.0
    for group in groups:
        entries = []
        for row in group:
            stamp = None
            if restamp:
                # Increasing even when the clock is coarse or steps back.
                stamp = last = max(clock(), last + 1e-6)
            entries.append(row.entry(stamp))
        accepted, stale = sender.post(entries)
        progress.add(len(group), accepted, stale)


def add_command(commands: Any) -> None:
    """
    Add C{feed prices} to the C{rustorium} command's subparsers.
    """
    feed = commands.add_parser("feed", help="send data into a server's HTTP API")
    kinds = feed.add_subparsers(dest="feed", required=True)
    prices = kinds.add_parser(
        "prices", help="replay a CSV of timestamp,symbol,price[,volume] into POST /api/v1/prices",
        description="Replay recorded prices (a CSV of timestamp,symbol,price and an optional "
                    "volume) into a server started with --market-source external, with a "
                    "publish (or admin) key. Each price is numbered by its timestamp, so a "
                    "replay never moves a price backwards.",
    )
    prices.add_argument("file", help="the CSV file ('-' for standard input)")
    prices.add_argument("--url", default=DEFAULT_URL,
                        help=f"the server's HTTP URL (default: {DEFAULT_URL})")
    prices.add_argument("--api-key", default=None,
                        help=f"a publish key (default: ${KEY_VARIABLE})")
    prices.add_argument("--speed", type=float, default=None,
                        help="replay at the recorded pace times this (1: as recorded); by "
                             "default as fast as the server takes them")
    prices.add_argument("--restamp", action="store_true",
                        help="stamp and number the prices with the time they are sent")
    prices.add_argument("--batch", type=int, default=BATCH,
                        help=f"prices per request when not paced (default: {BATCH}, at "
                             "most 1000)")


def run(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """
    Run C{feed prices}, showing progress on C{out} (standard error); return
    the exit status.
    """
    out = out or sys.stderr
    key = args.api_key or os.environ.get(KEY_VARIABLE)
    if not key:
        print(f"rustorium: give a publish key with --api-key or ${KEY_VARIABLE}", file=out)
        return 2
    if args.speed is not None and not args.speed > 0:
        print("rustorium: --speed must be more than 0", file=out)
        return 2
    if not 1 <= args.batch <= 1000:
        print("rustorium: --batch must be from 1 to 1000", file=out)
        return 2
    try:
        if args.file == "-":
            rows = list(read_rows(sys.stdin))
        else:
            with open(args.file, newline="", encoding="utf-8") as f:
                rows = list(read_rows(f))
        progress = Progress(len(rows), out)
        replay(rows, Sender(args.url, key), progress, args.speed, args.restamp, args.batch)
    except OSError as e:
        print(f"rustorium: cannot read {args.file}: {e.strerror or e}", file=out)
        return 1
    except FeedError as e:
        print(f"rustorium: {e}", file=out)
        return 1
    except KeyboardInterrupt:
        print("\nrustorium: interrupted", file=out)
        return 130
    print(f"Sent {progress.sent} prices: {progress.accepted} accepted, {progress.stale} stale.",
          file=out)
    return 0
