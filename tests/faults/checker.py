"""
The checker: the properties every fault scenario's history must have.

L{check_ledger} compares the senders' history with what PostgreSQL holds:

- every acknowledged transfer is stored once, as acknowledged, and
  confirmed; no transfer is applied twice (two transactions for one
  idempotency key); a retry is answered with the first transaction; a
  refused transfer is not stored; nothing is stored that nobody sent;
- replaying the confirmed transfers from the genesis in block order never
  takes a balance below zero (no overspend), ends at the stored balances,
  and conserves each token's supply; the pending outflows are what the
  pending transfers say.

L{check_streams} compares what each subscriber received with what was
published. What was published (the truth) is every update in Redis's
histories (read at the end, and before any fault that empties Redis) and
every live update any client received; current-state updates are not in it
(each is numbered for one client alone: the first update of a retained
stream after a subscribe, and any other retained update whose data repeats
an earlier update's). Then, for each client, across all its connections:

- it received each update once, in increasing id order, and only updates
  of streams it follows;
- a subscription's streams are covered from the current state that
  followed its subscription (the workload always subscribes to
  C{market_data} last, so its current state marks the start) until the end,
  except over the gap a C{reconnect} reported (C{recovered: false}: up to
  the C{lost} range's end, or for a retained stream up to the current state
  sent after it) or after it C{expired}; every update of the truth in a
  covered span reached the client: a C{reconnect} said C{recovered: true}
  only when nothing was missing. A C{recovered: false} over a span where
  nothing was in fact missing is counted (it is allowed: the server could
  not prove the span complete), not failed;
- the same id always carries the same data, and no transaction status was
  published twice.

Both return a L{Report}: the violations, and the figures a scenario prints.
"""

import json
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from rustorium.hub import channel_key
from tests.faults.cluster import TOKENS, LedgerSnapshot, RedisDump, units
from tests.faults.history import History

RETAINED = ("market_data", "token_updates")
STOP_MARGIN = 1.0
"""Seconds within which every live client has received any update another
client received: a client live when the workload stopped is owed every
update received anywhere this long before."""
RETRIED_CODES = ("internal_error", "rate_limit_exceeded")
DECIMALS = {t.token_id: t.decimals for t in TOKENS}


@attrs.define
class Report:
    """
    What a check found.
    """

    violations: list[str] = attrs.Factory(list)
    figures: dict[str, Any] = attrs.Factory(dict)

    def fail(self, message: str) -> None:
        self.violations.append(message)

    def merge(self, other: "Report") -> "Report":
        self.violations += other.violations
        self.figures.update(other.figures)
        return self

    def assert_ok(self) -> None:
        shown = self.violations[:25]
        more = len(self.violations) - len(shown)
        assert not self.violations, (
            f"{len(self.violations)} violations:\n" + "\n".join(shown)
            + (f"\n... and {more} more" if more else "")
        )


def number(message_id: str) -> int:
    return int(message_id.removeprefix("msg_"))


def update_keys(data: dict) -> tuple[str, ...]:
    """
    The streams an update belongs to.
    """
    channel = data["channel"]
    if channel == "market_data":
        return (channel_key(channel, data["symbol"]),)
    if channel == "token_updates":
        return (channel_key(channel, data["token_id"]),)
    return tuple(dict.fromkeys(channel_key(channel, a) for a in (data["from"], data["to"])))


def subscription_keys(description: dict) -> tuple[str, ...]:
    """
    The streams of a subscription, from its description in a reply.
    """
    channel = description["channel"]
    if channel == "market_data":
        return tuple(channel_key(channel, s) for s in description["symbols"])
    if channel == "token_updates":
        return (channel_key(channel, description["token_id"]),)
    return (channel_key(channel, description["address"]),)


def _canonical(data: dict) -> str:
    return json.dumps(data, sort_keys=True)


# The ledger.


def check_ledger(history: History, ledger: LedgerSnapshot) -> Report:
    report = Report()
    ops: dict[tuple[str, int], dict] = defaultdict(
        lambda: {"requests": [], "replies": [], "unknown": False}
    )
    for event in history.events:
        kind = event["kind"]
        if kind not in ("invoke", "reply", "lost", "abandoned"):
            continue
        op = ops[event["sender"], event["op"]]
        if kind == "invoke":
            op["requests"].append(event["request"])
        elif kind == "reply":
            op["replies"].append(event["message"])
        else:
            op["unknown"] = True

    rows_by_key = defaultdict(list)
    for row in ledger.transactions:
        rows_by_key[row.idempotency_key].append(row)

    acknowledged = refused = retried = unknown = lost = duplicated = 0
    refusals: dict[str, int] = defaultdict(int)
    keys_sent = set()
    for (sender, op_number), op in sorted(ops.items()):
        name = f"{sender} transfer {op_number}"
        if not op["requests"]:
            continue
        request = op["requests"][0]
        key = request["idempotency_key"]
        keys_sent.add(key)
        if any(r != request for r in op["requests"]):
            report.fail(f"{name}: retried with other parameters (a workload bug)")
        if len(op["requests"]) > 1:
            retried += 1
        acks = [m["data"]["transaction_id"] for m in op["replies"]
                if m["type"] == "transaction_response"]
        codes = [m["data"]["code"] for m in op["replies"] if m["type"] == "error"]
        final = [c for c in codes if c not in RETRIED_CODES]
        rows = rows_by_key.get(key, [])
        if len(rows) > 1:
            duplicated += 1
            report.fail(f"{name}: applied {len(rows)} times (idempotency key {key}: "
                        f"{', '.join(r.transaction_id for r in rows)})")
        if len(set(acks)) > 1:
            report.fail(f"{name}: retries were answered with different transactions {acks}")
        if acks:
            acknowledged += 1
            if not any(r.transaction_id == acks[0] for r in rows):
                lost += 1
                report.fail(f"{name}: acknowledged as {acks[0]} but not stored")
                continue
            row = next(r for r in rows if r.transaction_id == acks[0])
            if (row.sender, row.recipient, row.token_id, row.amount) != (
                request["from"], request["to"], request["token_id"],
                units(request["amount"], DECIMALS[request["token_id"]]),
            ):
                report.fail(f"{name}: stored as {row}, not as sent {request}")
            if row.status != "confirmed":
                report.fail(f"{name}: acknowledged {acks[0]} is {row.status}, never confirmed")
            if final:
                report.fail(f"{name}: both acknowledged and refused ({final})")
        elif final:
            refused += 1
            refusals[final[-1]] += 1
            if rows:
                report.fail(f"{name}: refused with {final[-1]} but stored as "
                            f"{rows[0].transaction_id}")
        else:
            unknown += 1

    for key, rows in rows_by_key.items():
        if key not in keys_sent:
            for row in rows:
                report.fail(f"transaction {row.transaction_id} (key {key}) was never sent")

    _check_balances(ledger, report)
    report.figures.update({
        "transfers": len(ops), "acknowledged": acknowledged, "refused": refused,
        "refusals": dict(refusals), "retried": retried, "unknown outcome": unknown,
        "transfers lost": lost, "transfers duplicated": duplicated,
    })
    return report


def _check_balances(ledger: LedgerSnapshot, report: Report) -> None:
    balances: dict[tuple[str, str], int] = defaultdict(int, ledger.genesis)
    pending: dict[tuple[str, str], int] = defaultdict(int)
    confirmed = sorted((t for t in ledger.transactions if t.status == "confirmed"),
                       key=lambda t: (t.block_number, t.seq))
    for t in confirmed:
        source = (t.sender, t.token_id)
        balances[source] -= t.amount
        if balances[source] < 0:
            report.fail(f"{t.transaction_id} (block {t.block_number}) overspends {t.sender}: "
                        f"its balance would be {balances[source]}")
        balances[(t.recipient, t.token_id)] += t.amount
    for t in ledger.transactions:
        if t.status == "pending":
            pending[(t.sender, t.token_id)] += t.amount
    for place in set(balances) | set(ledger.balances):
        stored, stored_pending = ledger.balances.get(place, (0, 0))
        if stored != balances[place]:
            report.fail(f"balance of {place[0]} in {place[1]} is {stored}, but its "
                        f"confirmed transfers make {balances[place]}")
        if stored_pending != pending[place]:
            report.fail(f"pending outflows of {place[0]} in {place[1]} are {stored_pending}, "
                        f"but its pending transfers make {pending[place]}")
        if stored - stored_pending < 0:
            report.fail(f"{place[0]} has a negative available balance in {place[1]}")
    for token, supply in ledger.supply.items():
        total = sum(amount for (_, t), (amount, _) in ledger.balances.items() if t == token)
        if total != supply:
            report.fail(f"token {token}: balances add up to {total}, not its supply {supply}")


# The streams.


@attrs.define
class _Observed:
    number: int
    keys: tuple[str, ...]
    data: dict
    client: str
    conn: int


def _truth(history: History, dumps: Sequence[RedisDump], report: Report) -> tuple[
    dict[str, set[int]], set[int], dict[int, dict]
]:
    """
    What was published, by stream; the current-state updates; each
    number's data.
    """
    published: dict[int, tuple[set[str], dict]] = {}
    for dump in dumps:
        for update in dump.updates:
            entry = published.setdefault(update.number, (set(), update.data))
            entry[0].add(update.key)
            if entry[1] != update.data:
                report.fail(f"msg_{update.number} stored with two payloads")
    observed: list[_Observed] = []
    snapshots: set[int] = set()
    awaiting: dict[tuple[str, int], set[str]] = {}
    for event in history.events:
        if event["kind"] != "received":
            continue
        message = event["message"]
        connection = (event["client"], event["conn"])
        if message["type"] == "subscription_confirmation" and \
                message["data"].get("status") == "subscribed" and \
                message["data"]["channel"] in RETAINED:
            awaiting.setdefault(connection, set()).update(subscription_keys(message["data"]))
        if message["type"] != "update":
            continue
        data = message["data"]
        n = number(message["id"])
        keys = update_keys(data)
        observed.append(_Observed(n, keys, data, *connection))
        waiting = awaiting.get(connection, set())
        if data["channel"] in RETAINED and keys[0] in waiting:
            waiting.discard(keys[0])
            if n not in published:
                snapshots.add(n)
    by_value: dict[tuple[str, str], int] = {}
    for n, (keys, data) in published.items():
        if data["channel"] in RETAINED:
            for key in keys:
                value = (key, _canonical(data))
                by_value[value] = min(n, by_value.get(value, n))
    for o in observed:
        if o.data["channel"] in RETAINED and o.number not in published:
            value = (o.keys[0], _canonical(o.data))
            by_value[value] = min(o.number, by_value.get(value, o.number))
    for o in observed:
        if o.data["channel"] in RETAINED and o.number not in published and \
                by_value[(o.keys[0], _canonical(o.data))] < o.number:
            snapshots.add(o.number)

    data_of: dict[int, dict] = {n: data for n, (_, data) in published.items()}
    truth: dict[str, set[int]] = defaultdict(set)
    for n, (keys, _) in published.items():
        for key in keys:
            truth[key].add(n)
    for o in observed:
        known = data_of.setdefault(o.number, o.data)
        if known != o.data:
            report.fail(f"msg_{o.number} reached {o.client} as {o.data}, elsewhere as {known}")
        if o.number not in snapshots:
            for key in o.keys:
                truth[key].add(o.number)
    statuses: dict[tuple[str, str], set[int]] = defaultdict(set)
    for n, data in data_of.items():
        if data["channel"] == "transaction_updates" and n not in snapshots:
            statuses[(data["transaction_id"], data["status"])].add(n)
    for (transaction, status), numbers in statuses.items():
        if len(numbers) > 1:
            report.fail(f"{transaction} was published {status} {len(numbers)} times: "
                        f"{sorted(numbers)}")
    return truth, snapshots, data_of


@attrs.define
class _Interval:
    low: int
    """Covered after this number..."""
    high: int | None = None
    """... up to this one (None: to the end)."""


class _Client:
    """
    One subscriber's walk through its history (see L{check_streams}).
    """

    def __init__(self, name: str, snapshots: set[int], report: Report) -> None:
        self.name = name
        self.snapshots = snapshots
        self.report = report
        self.subscriptions: dict[str, tuple[str, ...]] = {}
        self.coverage: dict[str, list[_Interval]] = defaultdict(list)
        self.followed: set[str] = set()
        self.received: set[int] = set()
        self.last = 0
        self.updates = 0
        self.duplicates = 0
        self.disorder = 0
        self.conn = 0
        self.closed_at: float | None = None
        self.closed_by = ""
        self.established = False
        self.sent: dict[str, dict] = {}
        self.resumes: list[dict] = []
        # The subscribe phase in progress on this connection: keys to start
        # covering once the market's current state is in.
        self.starting: set[str] = set()
        self.market_keys: set[str] = set()
        self.reopen: dict[str, int] = {}

    def live_at(self, moment: float | None) -> bool:
        """
        Whether the client was connected, its subscriptions made, until
        C{moment} (when the workload stopped).
        """
        return moment is not None and self.closed_at is not None and \
            self.closed_at >= moment and self.closed_by == "client" and self.established

    def _open(self, key: str, low: int) -> None:
        intervals = self.coverage[key]
        if intervals and intervals[-1].high is None:
            return
        intervals.append(_Interval(low))

    def _close(self, key: str, high: int) -> None:
        intervals = self.coverage[key]
        if intervals and intervals[-1].high is None:
            intervals[-1].high = high

    def event(self, event: dict) -> None:
        kind = event["kind"]
        if event.get("conn") != self.conn and kind in ("connect", "received", "sent"):
            self.conn = event["conn"]
            self._end_phase()
        if kind == "connect":
            self.established = False
        elif kind == "live":
            self.established = True
        elif kind == "closed":
            self.closed_at = event["t"]
            self.closed_by = event["by"]
            self._end_phase()
        elif kind == "sent":
            self.sent[event["message"]["id"]] = event["message"]
        elif kind == "received":
            self._message(event)

    def _message(self, event: dict) -> None:
        message = event["message"]
        kind = message["type"]
        data = message["data"]
        if kind == "update":
            self._update(message)
        elif kind == "subscription_confirmation" and data.get("status") == "subscribed":
            keys = subscription_keys(data)
            known = self.subscriptions.get(data["subscription_id"])
            self.subscriptions[data["subscription_id"]] = keys
            self.followed.update(keys)
            if known is None:
                self.starting.update(keys)
            elif data["channel"] in RETAINED:
                # The current state sent again supersedes what was held
                # meanwhile: covered again from it.
                for key in keys:
                    self._close(key, self.last)
                self.starting.update(keys)
            if data["channel"] == "market_data":
                self.market_keys = set(keys)
                self.market_from = self.last
                if not self.market_keys:
                    self._end_phase()
        elif kind == "reconnect_confirmation":
            self._resumed(event, self.sent.get(message["id"], {}).get("data", {}))

    def _update(self, message: dict) -> None:
        n = number(message["id"])
        data = message["data"]
        keys = update_keys(data)
        self.updates += 1
        if n in self.received:
            self.duplicates += 1
            self.report.fail(f"{self.name} received msg_{n} twice")
        elif n < self.last:
            self.disorder += 1
            self.report.fail(f"{self.name} received msg_{n} after msg_{self.last}")
        if not self.followed.intersection(keys):
            self.report.fail(f"{self.name} received msg_{n} of {keys}, which it does not follow")
        self.received.add(n)
        self.last = max(self.last, n)
        key = keys[0]
        if key in self.reopen and n in self.snapshots:
            self.reopen.pop(key)
            self._open(key, n)
        if self.market_keys and key in self.market_keys:
            self.market_keys.discard(key)
            if n in self.snapshots:
                self.market_from = max(self.market_from, n)
            if not self.market_keys:
                self._end_phase()

    def _end_phase(self) -> None:
        """
        The market's current state is in (or the connection ended): start
        covering what was subscribed.
        """
        if self.starting:
            low = max(getattr(self, "market_from", self.last), 0)
            if self.market_keys:
                # Its current state never came: cover from where we are.
                low = self.last
            for key in self.starting:
                self._open(key, low)
            self.starting = set()
        self.market_keys = set()
        for key, low in self.reopen.items():
            self._open(key, low)
        self.reopen = {}

    def _resumed(self, event: dict, request: dict) -> None:
        reply = event["message"]["data"]
        last = number(request["last_message_id"]) if request.get("last_message_id") else 0
        if last != self.last:
            self.report.fail(f"{self.name} resumed from msg_{last}, not its last msg_{self.last}")
        every = True
        gaps = []
        for entry in reply["subscriptions"]:
            subscription_id = entry["subscription_id"]
            if entry["status"] != "resumed":
                every = False
                for key in self.subscriptions.pop(subscription_id, ()):
                    self._close(key, last)
                continue
            keys = subscription_keys(entry)
            if subscription_id not in self.subscriptions:
                self.report.fail(f"{self.name} resumed {subscription_id}, which it never had")
            self.subscriptions[subscription_id] = keys
            if not entry["recovered"]:
                every = False
                high = number(entry["lost"]["to"]) if "lost" in entry else last
                gaps.append((keys, last, high))
                for key in keys:
                    self._close(key, last)
                    if key.split(":", 1)[0] in RETAINED:
                        # Covered again from the current state sent after
                        # the replay.
                        self.reopen[key] = high
                    else:
                        self._open(key, high)
        if reply["recovered"] != every:
            self.report.fail(f"{self.name}: reconnect said recovered: {reply['recovered']}, "
                             f"but its subscriptions say {every}")
        self.resumes.append({
            "t": event["t"],
            "after": None if self.closed_at is None else event["t"] - self.closed_at,
            "recovered": reply["recovered"], "gaps": gaps,
            "expired": sum(e["status"] == "expired" for e in reply["subscriptions"]),
        })

    def lost(self, truth: dict[str, set[int]], end: int) -> list[tuple[str, int]]:
        """
        What the client was owed and never received, the open spans
        ending at C{end}.
        """
        missing = []
        for key, intervals in self.coverage.items():
            for interval in intervals:
                high = end if interval.high is None else interval.high
                missing += [(key, n) for n in truth.get(key, ())
                            if interval.low < n <= high and n not in self.received]
        return sorted(missing, key=lambda m: m[1])


def check_streams(history: History, dumps: Sequence[RedisDump]) -> Report:
    report = Report()
    truth, snapshots, _ = _truth(history, dumps, report)
    clients: dict[str, _Client] = {}
    for event in history.events:
        name = event.get("client")
        if name is None:
            continue
        client = clients.get(name)
        if client is None:
            client = clients[name] = _Client(name, snapshots, report)
        client.event(event)
    stop = next((e["t"] for e in history.events if e["kind"] == "stop"), None)
    horizon = max((number(e["message"]["id"]) for e in history.events
                   if e["kind"] == "received" and e["message"]["type"] == "update"
                   and stop is not None and e["t"] <= stop - STOP_MARGIN), default=0)
    lost = 0
    conservative = 0
    resumes = []
    for client in clients.values():
        client._end_phase()
        end = max(client.last, horizon) if client.live_at(stop) else client.last
        missing = client.lost(truth, end)
        lost += len(missing)
        for key, n in missing[:10]:
            report.fail(f"{client.name} never received msg_{n} of {key}, "
                        f"in a span it was owed it{_blame(client, n)}")
        if len(missing) > 10:
            report.fail(f"{client.name}: {len(missing) - 10} more missed")
        for resume in client.resumes:
            for keys, low, high in resume["gaps"]:
                if not any(low < n <= high and n not in client.received
                           for key in keys for n in truth.get(key, ())):
                    conservative += 1
        resumes += client.resumes
    waits = [r["after"] for r in resumes if r["after"] is not None]
    recovered = sum(r["recovered"] for r in resumes)
    report.figures.update({
        "subscribers": len(clients),
        "updates received": sum(c.updates for c in clients.values()),
        "reconnects": len(resumes),
        "recovered": recovered,
        "recovered %": round(100 * recovered / len(resumes), 1) if resumes else None,
        "expired": sum(r["expired"] for r in resumes),
        "unrecovered where nothing was missed": conservative,
        "updates lost": lost,
        "updates duplicated": sum(c.duplicates for c in clients.values()),
        "out of order": sum(c.disorder for c in clients.values()),
        "resume time max s": round(max(waits), 2) if waits else None,
        "resume time median s": round(statistics.median(waits), 2) if waits else None,
    })
    return report


def unpublished_events(history: History, dumps: Sequence[RedisDump],
                       ledger: LedgerSnapshot) -> dict[str, int]:
    """
    Stored transfers whose C{pending} or C{confirmed} update was never
    published (not a gap in any stream: nobody could receive it). The node
    that stored or confirmed a transfer publishes its update after the
    commit: if it dies in between, or Redis is away, there is none, and a
    client learns the status only from C{get_transaction}.
    """
    _, _, data_of = _truth(history, dumps, Report())
    published = {(d["transaction_id"], d["status"]) for d in data_of.values()
                 if d["channel"] == "transaction_updates"}
    return {
        "pending never published": sum((t.transaction_id, "pending") not in published
                                       for t in ledger.transactions),
        "confirmed never published": sum((t.transaction_id, "confirmed") not in published
                                         for t in ledger.transactions
                                         if t.status == "confirmed"),
    }


def _blame(client: _Client, n: int) -> str:
    before = [r for r in client.resumes if r["recovered"]]
    if before:
        return f" (its reconnect at t={before[-1]['t']:.2f} said recovered: true)"
    return ""


def close_codes(history: History) -> dict[int | None, int]:
    """
    How often each close code ended a subscriber's connection.
    """
    counts: dict[int | None, int] = defaultdict(int)
    for event in history.of("closed"):
        if event["by"] == "server":
            counts[event["code"]] += 1
    return dict(counts)


def refused_handshakes(history: History) -> dict[Any, int]:
    counts: dict[Any, int] = defaultdict(int)
    for event in history.of("connect_failed"):
        counts[event.get("status", "no answer")] += 1
    return dict(counts)


def first(events: Iterable[dict]) -> dict | None:
    return next(iter(events), None)
