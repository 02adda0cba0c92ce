#!/usr/bin/env python3
"""
Run the Rustorium server benchmarks and print every figure beside its target.

    python bench/run.py                 # everything (30-40 minutes)
    python bench/run.py --quick         # all scenarios at small N (3-5 minutes)
    python bench/run.py --smoke         # fan-out N=20 for 2 s against rustorium (and
                                        # rustorium-redis at 50 updates/s); exit 0 if
                                        # each delivered anything (for a pytest test)
    python bench/run.py --scenarios fanout,broker --servers rustorium,rustorium-redis,reference

Why it is built this way: the server under test is started as users start it
(``twistd -n rustorium``) on CPU 0, and a compiled epoll generator
(``bench/gen/wsgen``) drives it from CPU 1, so the generator is not the
bottleneck; its CPU share is printed with every fan-out figure.  The same run
measures a bare C reference server (the floor of this machine) and a Node.js
``ws`` server, because absolute numbers drift with the host by 15-25% while
ratios within one run are steady.  For the same reason the server with the
Redis broker (``rustorium-redis``, against a throwaway ``redis-server``) is
measured in the same run as the server with the local one, and the report
gives their ratio.  See ``bench/README.rst``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster  # bench/cluster.py: pgcommands, clusterstorm
import scale  # bench/scale.py: manyconn, machine100k, workers
from servers import (  # the bench directory is on sys.path, not a package
    BENCH_DIR,
    GEN_CPU,
    GEN_DIR,
    SERVERS,
    BaselineServer,
    Running,
    Server,
    SetupError,
    build_c,
    log,
    pin,
    raise_nofile,
)

# Busy time of a core not spent by the process pinned to it, above which a
# measurement is marked noisy (some is kernel softirq work, normally < 15%).
NOISY_PCT = 20.0

SCENARIOS = ("fanout", "batch10", "broker", "latency", "idle", "commands", "reconnect",
             *cluster.SCENARIOS)
SCENARIOS += scale.SCENARIOS
# Scenarios that need the real protocol (commands, reconnect) only run on rustorium.
PROTOCOL_ONLY = {"commands", "reconnect"}
# The servers the broker scenario compares: the same server with each broker.
BROKER_SERVERS = ("rustorium", "rustorium-redis")
# Scenarios that tick every reactor turn (tick-interval 0), which the Redis
# broker cannot follow: its node would publish faster than one script call
# in flight numbers the updates, queue them without bound and deliver them
# seconds late in large coalesced writes, a regime not comparable with the
# others.  The broker scenario paces the ticks instead.
SATURATING = {"fanout", "batch10"}

# The server with the Redis broker, against the same server with the local
# one: CPU per delivery at most this many times the local figure, from this
# N up (the broker is paid per update, so it weighs less the more
# subscribers share each update).
REDIS_RATIO = 1.10
# Today's server against --baseline REV's in the same run: "not regressed"
# allows this much, the spread of repeated runs of one server.
REGRESSION_RATIO = 1.05
REDIS_TARGET_N = 1000
# The broker scenario compares servers that keep pace with the ticks: each
# must deliver at least this share of N updates per tick interval, and
# updates older than BACKLOG_MS on arrival (median) mean it is writing a
# backlog (coalesced, cheaper per delivery) rather than keeping pace.
PACE_SHARE = 0.9
BACKLOG_MS = 50.0


@dataclass
class Profile:
    """Sizes and durations of one kind of run."""

    fanout_ns: tuple[int, ...]
    duration: float
    warmup: float
    batch_n: int
    latency_n: int
    latency_duration: float
    idle_n: int
    cmd_conns: int
    cmd_duration: float
    reconnect_n: int
    broker_ns: tuple[int, ...] = (1000,)
    broker_tick: float = 0.02


FULL = Profile(fanout_ns=(100, 1000, 5000), duration=6.0, warmup=1.0, batch_n=1000,
               latency_n=1000, latency_duration=10.0, idle_n=10000, cmd_conns=200,
               cmd_duration=5.0, reconnect_n=5000)
QUICK = Profile(fanout_ns=(100,), duration=2.0, warmup=0.5, batch_n=100, latency_n=100,
                latency_duration=3.0, idle_n=1000, cmd_conns=50, cmd_duration=2.0,
                reconnect_n=500, broker_ns=(100,))
SMOKE = Profile(fanout_ns=(20,), duration=2.0, warmup=0.5, batch_n=20, latency_n=20,
                latency_duration=2.0, idle_n=20, cmd_conns=5, cmd_duration=1.0,
                reconnect_n=20, broker_ns=(20,))


# -- a shared machine ----------------------------------------------------------

def _cpu_times() -> list[tuple[int, int]]:
    """(busy, total) jiffies per CPU from /proc/stat."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3:4].isdigit():
            v = [int(x) for x in line.split()[1:9]]
            out.append((sum(v) - v[3] - v[4], sum(v)))
    return out


def wait_quiet(max_wait: float, busy_pct: float = 15.0, sample: float = 0.5) -> bool:
    """
    Wait until no CPU is more than ``busy_pct`` busy over ``sample`` seconds.

    Why: on a shared 2-core machine another session's tests can take a whole
    core, which halves the server's share and distorts every figure.  Gives
    up after ``max_wait`` seconds (the measurement is then marked noisy if
    the load persists).  Returns whether the machine was quiet.
    """
    deadline = time.monotonic() + max_wait
    while True:
        a = _cpu_times()
        time.sleep(sample)
        b = _cpu_times()
        busy = [100.0 * (b1 - a1) / max(1, t1 - t0) for (a1, t0), (b1, t1) in zip(a, b,
                                                                                   strict=True)]
        if max(busy, default=0.0) <= busy_pct:
            return True
        if time.monotonic() >= deadline:
            log(f"machine still busy ({', '.join(f'{x:.0f}%' for x in busy)}) after "
                f"{max_wait:.0f}s; measuring anyway")
            return False


# -- running the generator ---------------------------------------------------

def run_gen(server: Running, mode: str, conns: int, *args: str, budget: float = 60.0) -> dict:
    """
    Run ``wsgen`` against a started server, pinned to the generator CPU.

    Returns its JSON result.  ``budget`` bounds the whole run in time (the
    generator bounds each of its phases itself as well).
    """
    argv = [*pin(GEN_CPU), str(GEN_DIR / "wsgen"), "--port", str(server.port),
            "--path", server.path or "/v1", "--mode", mode, "--conns", str(conns),
            "--server-pid", str(server.pid), *args]
    if server.info.get("ready_signal"):
        argv.append("--ready-signal")
    if server.aux_pid:
        argv += ["--aux-pid", str(server.aux_pid)]
    try:
        out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=budget)
    except subprocess.TimeoutExpired as exc:
        raise SetupError(f"wsgen did not finish within {budget:.0f}s") from exc
    for line in out.stderr.splitlines():
        log(line)
    if out.returncode != 0 or not out.stdout.strip():
        raise SetupError(f"wsgen failed ({out.returncode}): {out.stderr.strip()[-1000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def disturbance(res: dict) -> dict:
    """
    How busy the two cores were with work other than the server and the
    generator during the window; ``noisy`` when another process took a good
    part of either core (the figures are then disturbed).
    """
    win, cpu = res["window_s"], res["server_cpu_s"]
    other0 = res["cpu0_busy_pct"] - 100.0 * cpu / win if win and cpu >= 0 else 0.0
    other1 = res["cpu1_busy_pct"] - res["gen_cpu_pct"]
    # The server's Redis runs on the generator's core (servers.RedisProcess).
    aux = res.get("aux_cpu_s", -1.0)
    if win and aux > 0:
        other1 -= 100.0 * aux / win
    return {"cpu0_other_pct": other0, "cpu1_other_pct": other1,
            "noisy": other0 > NOISY_PCT or other1 > NOISY_PCT}


def symbols(server: Running, k: int) -> str:
    """The first ``k`` market symbols, comma-separated (the generator's --symbols)."""
    names = server.info.get("symbols") or [f"TK{i}/USD" for i in range(k)]
    return ",".join(names[:k])


def setup_timeout(n: int) -> float:
    """Generous time to connect and subscribe n clients to a busy server."""
    return 30.0 + n / 50.0


# -- scenarios ---------------------------------------------------------------

def fanout(server: Running, n: int, k: int, prof: Profile) -> dict:
    """N clients subscribed to k markets at the fastest tick rate: cost per delivery."""
    st = setup_timeout(n)
    # --latency here measures each update's age on arrival: an age far above a
    # tick means the server is writing a backlog (its socket buffers are full),
    # where Twisted coalesces writes and the cost per delivery drops by half.
    res = run_gen(server, "fanout", n, "--symbols", symbols(server, k), "--latency",
                  "--warmup", str(prof.warmup), "--duration", str(prof.duration),
                  "--setup-timeout", str(st), budget=st + prof.warmup + prof.duration + 60)
    win, upd, cpu = res["window_s"], res["updates"], res["server_cpu_s"]
    aux = res.get("aux_cpu_s", -1.0)
    broker = {}
    if server.aux_pid and aux >= 0:
        # The Redis broker's own CPU, beside the node's (not included in it).
        broker = {"broker_cpu_pct": 100.0 * aux / win if win else None,
                  "broker_us_per_delivery": aux * 1e6 / upd if upd else None}
    return {
        "age_p50_ms": res["latency"]["p50_us"] / 1000,
        "age_p99_ms": res["latency"]["p99_us"] / 1000,
        **disturbance(res),
        "conns": res["conns_open"], "deliveries_per_s": upd / win if win else 0.0,
        "deliveries": upd,
        "server_us_per_delivery": (cpu * 1e6 / upd) if upd and cpu >= 0 else None,
        "server_cpu_pct": 100.0 * cpu / win if win and cpu >= 0 else None,
        "gen_cpu_pct": res["gen_cpu_pct"], "gen_us_per_delivery":
            (res["gen_cpu_s"] * 1e6 / upd) if upd else None,
        "cpu0_busy_pct": res["cpu0_busy_pct"], "cpu1_busy_pct": res["cpu1_busy_pct"],
        # All of CPU 0's busy time per delivery, including softirq work that the
        # kernel runs in ksoftirqd rather than charging it to the server.
        "cpu0_us_per_delivery": (res["cpu0_busy_pct"] / 100.0 * win * 1e6 / upd)
        if upd and res["cpu0_busy_pct"] >= 0 else None,
        "update_bytes": res["update_bytes_avg"],
        "errors": res["errors"], "closed_by_peer": res["closed_by_peer"], **broker,
    }


def latency(server: Running, n: int, prof: Profile) -> dict:
    """10 updates/s to n clients: publish (data.timestamp) to receive latency."""
    st = setup_timeout(n)
    res = run_gen(server, "fanout", n, "--symbols", symbols(server, 1), "--latency",
                  "--warmup", str(prof.warmup), "--duration", str(prof.latency_duration),
                  "--setup-timeout", str(st),
                  budget=st + prof.warmup + prof.latency_duration + 60)
    lat, win = res["latency"], res["window_s"]
    return {
        "conns": res["conns_open"], "updates": res["updates"],
        "p50_ms": lat["p50_us"] / 1000, "p90_ms": lat["p90_us"] / 1000,
        "p99_ms": lat["p99_us"] / 1000, "p999_ms": lat["p999_us"] / 1000,
        "max_ms": lat["max_us"] / 1000, "negative": lat["negative"],
        "server_cpu_pct": 100.0 * res["server_cpu_s"] / win if win else None,
        "gen_cpu_pct": res["gen_cpu_pct"], "errors": res["errors"], **disturbance(res),
    }


def idle(server: Running, n: int, prof: Profile) -> dict:
    """n idle connections (handshake only): server RSS per connection."""
    time.sleep(1.0)  # let the freshly started server settle before the baseline
    st = setup_timeout(n)
    res = run_gen(server, "idle", n, "--settle", "3", "--setup-timeout", str(st),
                  budget=st + 60)
    opened = res["conns_open_end"]
    delta = res["rss_after_kb"] - res["rss_before_kb"]
    return {
        "conns": opened, "conns_failed": res["conns_failed"],
        "rss_before_kib": res["rss_before_kb"], "rss_after_kib": res["rss_after_kb"],
        "kib_per_conn": delta / opened if opened else None, "setup_s": res["setup_s"],
    }


def commands(server: Running, n: int, kind: str, prof: Profile, depth: int) -> dict:
    """n connections each keeping ``depth`` commands in flight: replies per second."""
    info = server.info
    if kind == "execute_transaction":
        data = {"from": info["owner"], "to": info["other"], "amount": "1",
                "token_id": info["tokens"][0]}
        expect = "transaction_response"
    else:
        data = {"token_id": info["tokens"][0]}
        expect = "token_info"
    st = setup_timeout(n)
    res = run_gen(server, "cmd", n, "--cmd-type", kind, "--cmd-data", json.dumps(data),
                  "--expect", expect, "--depth", str(depth), "--warmup", str(prof.warmup),
                  "--duration", str(prof.cmd_duration), "--setup-timeout", str(st),
                  budget=st + prof.warmup + prof.cmd_duration + 60)
    win = res["window_s"]
    return {
        "conns": res["conns_open"], "replies_per_s": res["replies"] / win if win else 0.0,
        "replies": res["replies"], "available": not res["cmd_unavailable"],
        "errors": res["errors"], "server_cpu_pct": 100.0 * res["server_cpu_s"] / win,
        "gen_cpu_pct": res["gen_cpu_pct"], **disturbance(res),
    }


def single_commit_rate(seconds: float = 2.0) -> float:
    """
    Transactions/s when every transaction is its own durable SQLite commit.

    This is the floor the group-commit target is measured against (>= 5x):
    WAL with synchronous=FULL (fsync per commit) on the same filesystem as
    the server's database, one INSERT + COMMIT per transaction.
    """
    with tempfile.TemporaryDirectory(prefix="bench-sqlite-") as d:
        db = sqlite3.connect(os.path.join(d, "commit.db"), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE tx (id INTEGER PRIMARY KEY, src TEXT, dst TEXT, amount TEXT)")
        count, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds and count < 1_000_000:
            db.execute("BEGIN")
            db.execute("INSERT INTO tx (src, dst, amount) VALUES ('a', 'b', '1')")
            db.execute("COMMIT")
            count += 1
        elapsed = time.monotonic() - t0
        db.close()
    return count / elapsed


def reconnect(server: Running, n: int, prof: Profile) -> dict:
    """n subscribed clients dropped at once and resumed with ``reconnect``."""
    st = setup_timeout(n)
    res = run_gen(server, "reconnect", n, "--symbols", symbols(server, 1),
                  "--setup-timeout", str(st), "--resume-timeout", str(st), "--settle", "1",
                  budget=2 * st + 60)
    return {
        "conns": res["conns_open"], "ready": res["ready_before_drop"],
        "confirmed": res["confirmed"], "resumed": res["resumed"],
        "resume_errors": res["resume_errors"], "not_resumed": res["not_resumed"],
        "not_recovered": res["not_recovered"], "replayed": res["replayed_claimed"],
        "reconnect_failed": res["reconnect_failed"], "resume_s": res["resume_s"],
        "confirm_s": res["confirm_s"], "updates_after_resumed": res["updates_after_resumed"],
        "errors": res["errors"],
        # An error, or subscriptions reported "expired" instead of "resumed",
        # means the server does not resume yet.
        "available": res["confirmed"] > 0 and res["resume_errors"] == 0
        and res["not_resumed"] == 0,
    }


# -- orchestration -----------------------------------------------------------

class Bench:
    """Runs the chosen scenarios on the chosen servers and collects result rows."""

    def __init__(self, servers: dict[str, Server], prof: Profile, args: argparse.Namespace):
        self.servers, self.prof, self.args = servers, prof, args
        self.rows: list[dict] = []
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.out_path = BENCH_DIR / "results" / f"run-{stamp}.jsonl"
        self.out_path.parent.mkdir(exist_ok=True)

    def record(self, scenario: str, server: str, n: int, rep: int, fig: dict) -> None:
        row = {"scenario": scenario, "server": server, "n": n, "rep": rep, **fig}
        self.rows.append(row)
        with open(self.out_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        log(f"{scenario} {server} n={n}: " + ", ".join(
            f"{k}={_fmt(v)}" for k, v in fig.items() if not isinstance(v, dict)))

    def measure(self, scenario: str, name: str, n: int, rep: int, tick: float, fn,
                config: dict | None = None, kind: Server | None = None) -> None:
        """
        Start a fresh server, run one measurement, stop it; record errors as rows.

        Waits for the machine to be quiet first, and measures again (up to
        ``--retries`` times) when another process disturbed the measurement.
        ``kind`` starts the server instead of ``self.servers[name]`` (a
        variant of it: on PostgreSQL, a cluster, --workers).
        """
        for attempt in range(1 + max(0, self.args.retries)):
            if self.args.quiet_wait > 0:
                wait_quiet(self.args.quiet_wait)
            server = None
            try:
                server = (kind or self.servers[name]).start(tick, config=config)
                fig = fn(server)
            except (SetupError, subprocess.SubprocessError, OSError, KeyError,
                    ValueError) as exc:
                log(f"{scenario} {name} n={n}: FAILED: {exc}")
                fig = {"failed": str(exc)[:2000]}
            finally:
                if server is not None:
                    server.stop()
            fig["attempt"] = attempt + 1
            if not fig.get("noisy"):
                break
            log(f"{scenario} {name} n={n}: disturbed by another process (attempt "
                f"{attempt + 1})")
        self.record(scenario, name, n, rep, fig)

    def names(self, scenario: str) -> list[str]:
        """The servers a scenario runs on, in the order they were given."""
        if scenario in PROTOCOL_ONLY:
            return [s for s in self.servers if s == "rustorium" or s.startswith("rustorium@")]
        if scenario == "broker":
            # The smoke run has measured the local broker in fanout already.
            skip = {"rustorium"} if self.args.smoke else set()
            return [s for s in self.servers
                    if (s in BROKER_SERVERS or s.startswith("rustorium@")) and s not in skip]
        if scenario in SATURATING:
            return [s for s in self.servers if s != "rustorium-redis"]
        return list(self.servers)

    def run(self) -> None:
        p, a = self.prof, self.args
        for rep in range(a.reps):
            for scenario in a.scenarios:
                names = self.names(scenario)
                if not names and rep == 0:
                    log(f"{scenario}: none of the chosen servers runs it (rustorium-redis runs "
                        "broker, latency and idle; commands and reconnect are rustorium's)")
                if scenario == "fanout":
                    for n in p.fanout_ns:
                        for name in names:
                            self.measure(scenario, name, n, rep, 0.0,
                                         lambda s, n=n: fanout(s, n, 1, p))
                elif scenario == "batch10":
                    for name in names:
                        self.measure(scenario, name, p.batch_n, rep, 0.0,
                                     lambda s: fanout(s, p.batch_n, 10, p))
                elif scenario == "broker":
                    for n in p.broker_ns:
                        for name in names:
                            self.measure(scenario, name, n, rep, p.broker_tick,
                                         lambda s, n=n: {**fanout(s, n, 1, p),
                                                         "tick_interval": p.broker_tick})
                elif scenario == "latency":
                    for name in names:
                        self.measure(scenario, name, p.latency_n, rep, 0.1,
                                     lambda s: latency(s, p.latency_n, p))
                elif scenario == "idle":
                    for name in names:
                        self.measure(scenario, name, p.idle_n, rep, 1.0,
                                     lambda s: idle(s, p.idle_n, p))
                elif scenario == "commands":
                    if rep == 0:
                        rate = single_commit_rate()
                        self.record("single_commit", "sqlite", 1, rep,
                                    {"commits_per_s": rate})
                    fast = {"rate-limit": 100000, "rate-burst": 100000}
                    for name in names:
                        for scen, kind, extra in (
                                ("cmd:execute_transaction", "execute_transaction", {}),
                                # one database commit per transaction: the baseline
                                ("cmd:execute_transaction:commit-batch-1",
                                 "execute_transaction", {"commit-batch": 1}),
                                ("cmd:get_token_info", "get_token_info", {})):
                            self.measure(scen, name, p.cmd_conns, rep, 1.0,
                                         lambda s, kind=kind: commands(
                                             s, p.cmd_conns, kind, p, a.cmd_depth),
                                         config={**fast, **extra})
                elif scenario in cluster.SCENARIOS:
                    cluster.run(self, scenario, rep)
                elif scenario == "reconnect":
                    for name in names:
                        self.measure(scenario, name, p.reconnect_n, rep, 0.1,
                                     lambda s: reconnect(s, p.reconnect_n, p))
                elif scenario in scale.SCENARIOS:
                    scale.run(self, scenario, rep)


# -- report ------------------------------------------------------------------

def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 10000:
            return f"{v / 1000:.1f}k"
        return f"{v:.{digits}f}"
    return str(v)


def median_rows(rows: list[dict], scenario: str) -> dict[tuple[str, int], dict]:
    """Median of every numeric figure over repetitions, per (server, n)."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        if r["scenario"] == scenario:
            groups.setdefault((r["server"], r["n"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        ok = [r for r in rs if "failed" not in r]
        if not ok:
            out[key] = rs[-1]
            continue
        clean = [r for r in ok if not r.get("noisy")]
        noisy = len(ok) - len(clean)
        ok = clean or ok  # prefer undisturbed repetitions
        merged = dict(ok[-1])
        for k, v in ok[-1].items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("n", "rep"):
                vals = [r[k] for r in ok if isinstance(r.get(k), (int, float))]
                merged[k] = statistics.median(vals) if vals else v
        merged["reps"] = len(ok)
        merged["noisy_reps"] = noisy
        out[key] = merged
    return out


def verdict(ok: bool | None, *rows: dict | None) -> str:
    """PASS / FAIL / n/a, flagged when a row it rests on was disturbed."""
    text = "n/a" if ok is None else ("PASS" if ok else "FAIL")
    if any(r and r.get("noisy") for r in rows):
        text += " (disturbed*)"
    return text


def report(rows: list[dict], scenarios: list[str]) -> list[str]:
    """Tables of every figure with its target; returns the verdict lines."""
    verdicts: list[str] = []

    def failed(r: dict) -> bool:
        return "failed" in r

    def table(title: str, head: list[str], body: list[list[str]]) -> None:
        widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h)
                  for i, h in enumerate(head)]
        print(f"\n== {title}")
        print("  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in
                        enumerate(zip(head, widths, strict=True))))
        for row in body:
            print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in
                            enumerate(zip(row, widths, strict=True))))

    def fan_tables(scenario: str, title: str) -> None:
        med = median_rows(rows, scenario)
        broker_rows: list[list[str]] = []
        for n in sorted({k[1] for k in med}):
            ref_row, node_row = med.get(("reference", n)), med.get(("node-ws", n))
            ref = (ref_row or {}).get("server_us_per_delivery")
            node = (node_row or {}).get("server_us_per_delivery")
            body = []
            for (srv, nn), r in sorted(med.items()):
                if nn != n:
                    continue
                if failed(r):
                    body.append([srv, "FAILED: " + r["failed"][:60], *[""] * 11])
                    continue
                us = r.get("server_us_per_delivery")
                mark = "*" if r.get("noisy") else ""
                body.append([srv + mark, _fmt(r["deliveries_per_s"]), _fmt(us, 2),
                             _fmt(us / ref, 2) if us and ref else "-",
                             _fmt(us / node, 2) if us and node else "-",
                             _fmt(r["server_cpu_pct"]), _fmt(r["gen_cpu_pct"]),
                             _fmt(r.get("gen_us_per_delivery"), 2),
                             _fmt(r.get("cpu0_other_pct")), _fmt(r.get("cpu1_other_pct")),
                             _fmt(r.get("cpu0_us_per_delivery"), 2),
                             _fmt(r.get("age_p50_ms"), 1), _fmt(r.get("update_bytes"), 0)])
            table(f"{title}, N={n}", ["server", "deliv/s", "srv us/deliv", "x ref", "x node",
                                      "srv CPU%", "gen CPU%", "gen us/deliv", "CPU0 other%",
                                      "CPU1 other%", "CPU0 us/deliv", "age p50 ms",
                                      "bytes/upd"], body)
            rr = med.get(("rustorium", n))
            for (srv, nn), base in sorted(med.items()):
                if nn == n and srv.startswith("rustorium@") and rr and not failed(rr) \
                        and not failed(base):
                    us, base_us = rr.get("server_us_per_delivery"), base.get(
                        "server_us_per_delivery")
                    ok = None if not (us and base_us) else us <= REGRESSION_RATIO * base_us
                    verdicts.append(
                        f"{scenario} N={n}: rustorium {_fmt(us, 2)} us/delivery <= "
                        f"{REGRESSION_RATIO:.2f} x {srv} {_fmt(base_us, 2)} (not regressed; "
                        f"ratio {_fmt(us / base_us if us and base_us else None, 3)}): "
                        f"{verdict(ok, rr, base)}")
            if scenario == "broker":
                compare_brokers(n, rr, med.get(("rustorium-redis", n)), broker_rows)
                continue
            if not rr or failed(rr):
                continue
            us = rr.get("server_us_per_delivery")
            if scenario == "fanout":
                t1 = None if not (us and node) else us <= node
                t2 = None if not (us and ref) else us <= 1.3 * ref
                verdicts.append(f"fanout N={n}: rustorium {_fmt(us, 2)} us/delivery <= node-ws "
                                f"{_fmt(node, 2)}: {verdict(t1, rr, node_row)}")
                verdicts.append(f"fanout N={n}: rustorium {_fmt(us, 2)} us/delivery <= 1.3 x "
                                f"reference {_fmt(ref, 2)} = {_fmt(1.3 * ref if ref else None, 2)}"
                                f": {verdict(t2, rr, ref_row)}")
            else:
                t1 = None if us is None else us <= 2.5
                t2 = None if not (us and node) else us <= node / 3
                verdicts.append(f"batch10 N={n}: rustorium {_fmt(us, 2)} us/delivery <= 2.5: "
                                f"{verdict(t1, rr)}")
                verdicts.append(f"batch10 N={n}: rustorium {_fmt(us, 2)} us/delivery <= node-ws/3"
                                f" = {_fmt(node / 3 if node else None, 2)}: "
                                f"{verdict(t2, rr, node_row)}")
        if broker_rows:
            table("the Redis broker beside the local one: the node's CPU per delivery "
                  "(Redis's own CPU apart, then added)",
                  ["N", "local us/deliv", "redis us/deliv", "redis/local", "Redis CPU%",
                   "Redis us/deliv", "(node+Redis)/local", "local age p50 ms",
                   "redis age p50 ms"], broker_rows)

    def compare_brokers(n: int, local: dict | None, redis: dict | None,
                        out: list[list[str]]) -> None:
        """The broker scenario's comparison row and its target, when both were measured."""
        if not local or not redis or failed(local) or failed(redis):
            return
        us, redis_us = local.get("server_us_per_delivery"), redis.get("server_us_per_delivery")
        ratio = redis_us / us if redis_us and us else None
        broker_us = redis.get("broker_us_per_delivery")
        total = (redis_us + broker_us) / us if redis_us and us and broker_us is not None \
            else None
        out.append([str(n), _fmt(us, 2) + ("*" if local.get("noisy") else ""),
                    _fmt(redis_us, 2) + ("*" if redis.get("noisy") else ""), _fmt(ratio, 3),
                    _fmt(redis.get("broker_cpu_pct")), _fmt(broker_us, 3), _fmt(total, 3),
                    _fmt(local.get("age_p50_ms"), 1), _fmt(redis.get("age_p50_ms"), 1)])
        if n < REDIS_TARGET_N:
            return
        ok = None if ratio is None else ratio <= REDIS_RATIO
        text = (f"broker N={n}: rustorium-redis {_fmt(redis_us, 2)} us/delivery <= "
                f"{REDIS_RATIO:.2f} x rustorium {_fmt(us, 2)} = "
                f"{_fmt(REDIS_RATIO * us if us else None, 2)} (ratio {_fmt(ratio, 3)}): "
                f"{verdict(ok, local, redis)}")
        for name, r in (("local", local), ("redis", redis)):
            tick = r.get("tick_interval")
            pace = r["deliveries_per_s"] * tick / n if tick else None
            if pace is not None and pace < PACE_SHARE:
                text += (f" ({name} did not keep pace: {100 * pace:.0f}% of the ticks' "
                         "deliveries)")
            if (r.get("age_p50_ms") or 0) > BACKLOG_MS:
                text += f" ({name} wrote a backlog: updates {_fmt(r['age_p50_ms'])} ms old)"
        verdicts.append(text)

    if "fanout" in scenarios:
        fan_tables("fanout", "fan-out, one market, one update per tick (tick-interval 0)")
    if "batch10" in scenarios:
        fan_tables("batch10", "fan-out batch 10: each client subscribed to 10 markets")
    if "broker" in scenarios:
        ticks = {r.get("tick_interval") for r in rows if r["scenario"] == "broker"} - {None}
        fan_tables("broker", "fan-out through each broker, one market, tick-interval "
                   + ", ".join(f"{t:g}" for t in sorted(ticks)))
    if "latency" in scenarios:
        med = median_rows(rows, "latency")
        body = []
        for (srv, n), r in sorted(med.items()):
            if failed(r):
                body.append([srv, str(n), "FAILED: " + r["failed"][:60], "", "", "", "", ""])
                continue
            body.append([srv + ("*" if r.get("noisy") else ""), str(r["conns"]),
                         _fmt(r["p50_ms"], 2), _fmt(r["p90_ms"], 2),
                         _fmt(r["p99_ms"], 2), _fmt(r["max_ms"], 2), _fmt(r["server_cpu_pct"]),
                         _fmt(r["gen_cpu_pct"])])
            if srv == "rustorium":
                verdicts.append(f"latency N={n} at 10 updates/s: rustorium p99 "
                                f"{_fmt(r['p99_ms'], 2)} ms < 10 ms: "
                                f"{verdict(r['p99_ms'] < 10, r)}")
        table("latency, 10 updates/s, publish (data.timestamp) to receive, ms",
              ["server", "conns", "p50", "p90", "p99", "max", "srv CPU%", "gen CPU%"], body)
    if "idle" in scenarios:
        med = median_rows(rows, "idle")
        body = []
        for (srv, n), r in sorted(med.items()):
            if failed(r):
                body.append([srv, str(n), "FAILED: " + r["failed"][:60], "", ""])
                continue
            body.append([srv, str(r["conns"]), _fmt(r["rss_before_kib"] / 1024),
                         _fmt(r["rss_after_kib"] / 1024), _fmt(r["kib_per_conn"], 2)])
            if srv == "rustorium":
                ok = r["kib_per_conn"] is not None and r["conns"] >= n and \
                    r["kib_per_conn"] <= 12
                verdicts.append(f"idle memory N={n}: rustorium {_fmt(r['kib_per_conn'], 2)} "
                                f"KiB/connection <= 12 ({r['conns']} open): {verdict(ok)}")
        table("idle memory", ["server", "open conns", "RSS before MiB", "RSS after MiB",
                              "KiB/conn"], body)
    if "commands" in scenarios:
        floor = median_rows(rows, "single_commit").get(("sqlite", 1), {}).get("commits_per_s")
        single = median_rows(rows, "cmd:execute_transaction:commit-batch-1").get(
            ("rustorium", max((r["n"] for r in rows if r["scenario"].startswith("cmd:")),
                              default=0)), {})
        base, base_name = floor, "bare SQLite one-commit-per-transaction loop"
        if single and not failed(single) and single.get("available") and single["replies"]:
            base, base_name = single["replies_per_s"], "rustorium with commit-batch = 1"
        body = []
        for scen, label in (("cmd:execute_transaction", "execute_transaction"),
                            ("cmd:execute_transaction:commit-batch-1",
                             "execute_transaction, commit-batch = 1"),
                            ("cmd:get_token_info", "get_token_info")):
            for (srv, n), r in sorted(median_rows(rows, scen).items()):
                if failed(r):
                    body.append([label, srv, str(n), "FAILED: " + r["failed"][:60], "", ""])
                    continue
                avail = r["available"] and r["replies"] > 0
                rate = _fmt(r["replies_per_s"]) if avail else "not available"
                body.append([label, srv + ("*" if r.get("noisy") else ""), str(r["conns"]), rate,
                             _fmt(r["server_cpu_pct"]),
                             json.dumps(r["errors"])[:40]])
                if scen == "cmd:execute_transaction" and srv == "rustorium":
                    if not avail:
                        why = "unknown_type" if not r["available"] else "no replies"
                        verdicts.append(f"commands: execute_transaction not available ({why}); "
                                        "targets >= 3000/s and >= 5x single-commit: n/a")
                    else:
                        v = r["replies_per_s"]
                        verdicts.append(f"commands: execute_transaction {_fmt(v)} acks/s >= "
                                        f"3000: {verdict(v >= 3000, r)}")
                        verdicts.append(f"commands: execute_transaction {_fmt(v)} acks/s >= 5 x "
                                        f"{base_name} {_fmt(base)} = "
                                        f"{_fmt(5 * base if base else None)}: "
                                        f"{verdict(v >= 5 * base if base else None, r, single)}")
        table(f"commands (bare SQLite one-commit-per-transaction floor: {_fmt(floor)} "
              "commits/s)", ["command", "server", "conns", "replies/s", "srv CPU%", "errors"],
              body)
    if "reconnect" in scenarios:
        body = []
        for (srv, n), r in sorted(median_rows(rows, "reconnect").items()):
            if failed(r):
                body.append([srv, str(n), "FAILED: " + r["failed"][:60], "", "", ""])
                continue
            if r["available"] and r["resumed"] >= r["ready"]:
                t = _fmt(r["resume_s"], 3) + " s"
            elif r["available"]:
                t = f"only {r['resumed']} of {r['ready']} within {_fmt(r['resume_s'], 1)} s"
            elif r["confirmed"] and r["not_resumed"]:
                t = (f"not available ({r['not_resumed']} subscriptions expired; all answered "
                     f"in {_fmt(r['confirm_s'], 3)} s)")
            else:
                t = "not available " + json.dumps(r["errors"])[:40]
            body.append([srv, str(r["ready"]), str(r["resumed"]), t, _fmt(r["confirm_s"], 3),
                         str(r["replayed"]), str(r["not_recovered"]),
                         str(r["updates_after_resumed"]), str(r["resume_errors"])])
            verdicts.append(f"reconnect storm N={n}: {srv} all resumed with replay: {t} "
                            "(no numeric target)")
        table("reconnect storm (resumed = confirmation and every replayed update received)",
              ["server", "dropped", "resumed", "time to all resumed", "all confirmed s",
               "replayed", "not recovered", "updates in 1 s after", "errors"], body)
    verdicts += scale.report(rows, scenarios, table, verdict, median_rows)
    for scenario in cluster.SCENARIOS:
        if scenario in scenarios:
            cluster.report(scenario, rows, table, verdicts, median_rows, verdict, _fmt)
    if any(r.get("noisy") for r in rows):
        print(f"\n* another process used more than {NOISY_PCT:.0f}% of the server's or the "
              "generator's core in every repetition of that row: figures disturbed; rows "
              "are medians of the undisturbed repetitions when there are some.")
    if verdicts:
        print("\n== targets")
        for v in verdicts:
            print("  " + v)
    return verdicts


def machine(servers: dict[str, Server]) -> dict:
    """The machine and software versions, printed with the figures."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "harness_python": platform.python_version(),
            "pinning": "server CPU 0, generator CPU 1" if pin(1) else "none"}
    for s in servers.values():
        try:
            info.update(s.versions())
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="all scenarios at small N")
    ap.add_argument("--smoke", action="store_true",
                    help="fan-out N=20 for 2 s against rustorium (and rustorium-redis when "
                         "redis-server is installed); exit 0 if each delivered anything")
    ap.add_argument("--servers", default=None,
                    help="comma-separated: " + ",".join(SERVERS) + " (default: all; "
                         "rustorium-redis only when redis-server is installed)")
    ap.add_argument("--scenarios", default=None,
                    help="comma-separated: " + ",".join(SCENARIOS) + " (default: all)")
    ap.add_argument("--reps", type=int, default=1, help="repetitions (medians are reported)")
    ap.add_argument("--fanout-n", default=None, help="comma-separated N for fanout")
    ap.add_argument("--broker-n", default=None,
                    help="comma-separated N for the broker scenario (default 1000)")
    ap.add_argument("--broker-tick", type=float, default=None,
                    help="tick interval of the broker scenario in seconds (default 0.02: "
                         "50 updates/s, which both brokers follow without a backlog)")
    ap.add_argument("--duration", type=float, default=None, help="fan-out window in seconds")
    ap.add_argument("--cmd-depth", type=int, default=1,
                    help="commands in flight per connection in the commands scenario")
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="seconds to wait, before each measurement, for the other processes on "
                         "the machine to leave the CPUs idle (0: don't wait; default 30, "
                         "--quick 5, --smoke 0)")
    ap.add_argument("--retries", type=int, default=None,
                    help="measure again when another process disturbed a measurement "
                         "(default 2, --quick and --smoke 0)")
    scale.add_arguments(ap)
    ap.add_argument("--python", default=None,
                    help="Python that has rustorium installed (default: current or bench/.venv)")
    ap.add_argument("--repo", default=None, help="repository to pip install (default: ..)")
    ap.add_argument("--baseline", default=None, metavar="REV",
                    help="also measure the server as it was at commit REV (server "
                         "rustorium@REV) where rustorium runs, to tell a regression "
                         "from a slower machine")
    args = ap.parse_args(argv)

    prof = SMOKE if args.smoke else QUICK if args.quick else FULL
    # --smoke and --quick should take seconds to a minute or two, not wait long.
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.smoke else 5.0 if args.quick else 30.0
    if args.retries is None:
        args.retries = 0 if args.smoke or args.quick else 2
    if args.fanout_n:
        prof = replace(prof, fanout_ns=tuple(int(x) for x in args.fanout_n.split(",")))
    if args.broker_n:
        prof = replace(prof, broker_ns=tuple(int(x) for x in args.broker_n.split(",")))
    if args.broker_tick is not None:
        prof = replace(prof, broker_tick=args.broker_tick)
    if args.duration:
        prof = replace(prof, duration=args.duration)
    default_servers = "rustorium,rustorium-redis" if args.smoke else ",".join(SERVERS)
    names = [s for s in (args.servers or default_servers).split(",") if s]
    # Servers that may be left out when what they need is missing: the
    # Redis variant when it was not asked for by name.
    optional = set() if args.servers else {"rustorium-redis"}
    args.scenarios = [s for s in (args.scenarios or ("fanout,broker" if args.smoke else
                                                      ",".join(SCENARIOS))).split(",") if s]
    for s in names:
        if s not in SERVERS:
            ap.error(f"unknown server {s!r}; choose from {', '.join(SERVERS)}")
    for s in args.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")

    nofile = raise_nofile()
    servers: dict[str, Server] = {}
    try:
        build_c()
        for s in names:
            kw = {}
            if s.startswith("rustorium"):
                kw = {"python": args.python}
                if args.repo:
                    kw["repo"] = Path(args.repo).resolve()
            srv = SERVERS[s](**kw)
            try:
                srv.prepare()
            except SetupError as exc:
                if s not in optional:
                    raise
                log(f"leaving out {s}: {exc}")
                continue
            servers[s] = srv
        if args.baseline:
            base = BaselineServer(args.baseline)
            base.prepare()
            servers[base.name] = base
    except (SetupError, subprocess.CalledProcessError, OSError) as exc:
        log(f"setup failed: {exc}")
        return 2
    if nofile < max(prof.idle_n, max(prof.fanout_ns)) + 100:
        log(f"warning: fd limit {nofile} is low for {prof.idle_n} connections")

    info = machine(servers)
    print("== machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    bench = Bench(servers, prof, args)
    with open(bench.out_path, "a") as f:
        f.write(json.dumps({"machine": info, "argv": sys.argv[1:]}) + "\n")
    bench.run()
    report(bench.rows, args.scenarios)
    print(f"\nraw results: {bench.out_path}")
    if args.smoke:
        silent = [name for name in servers if not any(
            r.get("deliveries", 0) > 0 for r in bench.rows
            if r["scenario"] in ("fanout", "broker") and r["server"] == name)]
        print("smoke: " + (f"FAILED: no deliveries from {', '.join(silent)}" if silent else
                           f"OK, deliveries measured from {', '.join(servers)}"))
        return 1 if silent else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
