"""
Scenarios on the stores of a cluster: durable transfers on PostgreSQL
(``pgcommands``) and a reconnect storm from a killed node to a surviving
one (``clusterstorm``).

Both start throwaway services for every measurement, as the other
scenarios start a fresh server: a PostgreSQL (``bench/postgres.py``) and,
for the storm, a Redis (``servers.RedisProcess``), each on a free loopback
port and pinned to the generator's CPU, standing for the other hosts they
run on in a cluster; the node under test keeps CPU 0.

``pgcommands``
    One node on ``--database postgresql://...`` (local broker): N
    connections keep ``--cmd-depth`` ``execute_transaction`` in flight, with
    the default group commit and with ``commit-batch = 1``.  Besides the
    acknowledgements per second it reads, over the same window, the CPU of
    the node's reactor thread (the main thread), of its other threads (the
    database pool's) and of every PostgreSQL process, so that the report
    can say what bounds the rate.
``clusterstorm``
    Two nodes (``node-b`` started first, so it runs the market; then
    ``node-a``) on one Redis and one PostgreSQL; N clients subscribe on
    node A and receive updates at 10/s; the generator SIGKILLs node A and
    every client reconnects to node B with ``reconnect`` (its last message
    id and subscription id).  The figure is the time from the kill until
    every client has its ``reconnect_confirmation`` (each subscription
    ``resumed``, ``recovered: true``) and every update it announced as
    replayed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from postgres import PostgresProcess
from servers import (
    GEN_CPU,
    GEN_DIR,
    RedisProcess,
    Running,
    RustoriumServer,
    Server,
    SetupError,
    log,
    pin,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")

# Durable transfers on PostgreSQL: acknowledgements per second on one node,
# and the ratio to one commit per transfer, in the same run.
PG_TARGET_RATE = 5000.0
PG_TARGET_RATIO = 5.0
# The storm: every client of the killed node resumed within this many seconds.
STORM_TARGET_S = 10.0
STORM_TICK = 0.1
# Clients connecting at once (TCP and WebSocket handshakes in progress): a
# dead node's clients all reconnect at once, from as many addresses; the
# generator has one, so the nodes lift their limit of handshakes in
# progress per address (256 by default), as STORM_CONFIG says.
STORM_CONC = 1024
STORM_CONFIG = {"max-handshakes-per-address": 0}


# -- CPU accounting ------------------------------------------------------------

def _stat_cpu(path: str) -> float | None:
    """utime + stime in seconds from a /proc .../stat file."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid`` (the main thread's id is ``pid``)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        cpu = _stat_cpu(f"/proc/{pid}/task/{tid}/stat")
        if cpu is not None:
            out[int(tid)] = cpu
    return out


def _pg_kind(pid: int) -> str:
    """What a PostgreSQL process is: ``backend``, ``walwriter``, ``checkpointer``, ..."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            "utf-8", "replace")
    except OSError:
        return "?"
    if not title.startswith("postgres: "):
        return "postmaster"
    words = title[len("postgres: "):].split()
    # "postgres: postgres rustorium 127.0.0.1(5555) idle": a backend.
    return "backend" if len(words) >= 3 and "(" in words[2] else " ".join(words[:2])


class CpuSplit:
    """
    The CPU of the node's reactor thread, of its other threads and of the
    PostgreSQL processes between two samples (``start`` and ``stop``).
    """

    def __init__(self, node_pid: int, postgres: PostgresProcess | None) -> None:
        self.node_pid, self.postgres = node_pid, postgres
        self._first: tuple | None = None
        self.result: dict = {}

    def _sample(self) -> tuple:
        pg = {}
        if self.postgres is not None:
            for pid in self.postgres.pids():
                cpu = _stat_cpu(f"/proc/{pid}/stat")
                if cpu is not None:
                    pg[pid] = (cpu, _pg_kind(pid))
        return time.monotonic(), thread_cpu(self.node_pid), pg

    def start(self) -> None:
        self._first = self._sample()

    def stop(self) -> None:
        if self._first is None:
            return
        (t0, th0, pg0), (t1, th1, pg1) = self._first, self._sample()
        win = t1 - t0
        threads = {tid: cpu - th0.get(tid, 0.0) for tid, cpu in th1.items()}
        reactor = threads.pop(self.node_pid, 0.0)
        kinds: dict[str, float] = {}
        for pid, (cpu, kind) in pg1.items():
            kinds[kind] = kinds.get(kind, 0.0) + cpu - pg0.get(pid, (0.0, kind))[0]
        busy = sorted(threads.values(), reverse=True)
        self.result = {
            "split_window_s": win,
            "reactor_cpu_pct": 100.0 * reactor / win,
            # The database pool's threads (and any other): their sum, and the
            # busiest one (adbapi runs one interaction at a time per thread).
            "threads_cpu_pct": 100.0 * sum(busy) / win,
            "busiest_thread_cpu_pct": 100.0 * busy[0] / win if busy else 0.0,
            "postgres_cpu_pct": 100.0 * sum(kinds.values()) / win,
            "postgres_by_kind_pct": {k: round(100.0 * v / win, 1) for k, v in
                                     sorted(kinds.items(), key=lambda kv: -kv[1])},
        }


def run_gen_marked(server: Running, mode: str, conns: int, *args: str, budget: float,
                   split: CpuSplit | None = None, port: int | None = None,
                   server_pid: int | None = None, aux_pid: int | None = None) -> dict:
    """
    Run ``wsgen`` (pinned to the generator's CPU) and return its JSON;
    ``split`` is sampled when the generator logs the start and the end of
    its measurement window.
    """
    argv = [*pin(GEN_CPU), str(GEN_DIR / "wsgen"), "--port", str(port or server.port),
            "--path", server.path or "/v1", "--mode", mode, "--conns", str(conns),
            "--server-pid", str(server_pid or server.pid), *args]
    if aux_pid:
        argv += ["--aux-pid", str(aux_pid)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(budget, proc.kill)
    timer.start()
    lines = []
    try:
        for line in proc.stderr:
            line = line.rstrip("\n")
            if split is not None and line.endswith("window start"):
                split.start()
            elif split is not None and line.endswith("window end"):
                split.stop()
            lines.append(line)
            log(line)
        out = proc.stdout.read()
        proc.wait()
    finally:
        timer.cancel()
    if proc.returncode == -signal.SIGKILL:
        raise SetupError(f"wsgen did not finish within {budget:.0f}s")
    if proc.returncode != 0 or not out.strip():
        raise SetupError(f"wsgen failed ({proc.returncode}): " + "\n".join(lines)[-1000:])
    return json.loads(out.strip().splitlines()[-1])


# -- pgcommands ------------------------------------------------------------------

class RustoriumPostgresServer(RustoriumServer):
    """
    ``rustorium`` on a throwaway PostgreSQL of its own (fresh for every
    start) instead of SQLite; the local broker, one node.
    """

    name = "rustorium"

    def __init__(self, base: RustoriumServer) -> None:
        super().__init__(python=base.python, repo=base.repo)

    def prepare(self) -> None:
        """The base server was prepared; PostgreSQL needs only its binaries."""
        from postgres import available

        why = available()
        if why:
            raise SetupError(why)

    def database(self, workdir: Path) -> tuple[str, list]:
        pg = PostgresProcess(cpu=GEN_CPU)
        return pg.url, [pg]


def postgres_of(server: Running) -> PostgresProcess | None:
    return next((c for c in server.companions if isinstance(c, PostgresProcess)), None)


def pg_commands(server: Running, n: int, depth: int, warmup: float, duration: float) -> dict:
    """
    n connections each keeping ``depth`` transfers in flight against a node on
    PostgreSQL: acknowledgements per second and the CPU split.
    """
    info = server.info
    data = {"from": info["owner"], "to": info["other"], "amount": "1",
            "token_id": info["tokens"][0]}
    pg = postgres_of(server)
    split = CpuSplit(server.pid, pg)
    st = 30.0 + n / 50.0
    res = run_gen_marked(server, "cmd", n, "--cmd-type", "execute_transaction",
                         "--cmd-data", json.dumps(data), "--expect", "transaction_response",
                         "--depth", str(depth), "--warmup", str(warmup),
                         "--duration", str(duration), "--setup-timeout", str(st),
                         budget=st + warmup + duration + 60, split=split)
    win = res["window_s"]
    cpu = res["server_cpu_s"]
    fig = {
        "conns": res["conns_open"], "depth": depth,
        "replies_per_s": res["replies"] / win if win else 0.0, "replies": res["replies"],
        "available": not res["cmd_unavailable"], "errors": res["errors"],
        "server_cpu_pct": 100.0 * cpu / win if win and cpu >= 0 else None,
        "gen_cpu_pct": res["gen_cpu_pct"], "cpu0_busy_pct": res["cpu0_busy_pct"],
        "cpu1_busy_pct": res["cpu1_busy_pct"], **split.result,
    }
    # Busy time of each core that neither the node (CPU 0) nor the
    # generator and PostgreSQL (CPU 1) account for: another process.
    if fig["server_cpu_pct"] is not None:
        fig["cpu0_other_pct"] = res["cpu0_busy_pct"] - fig["server_cpu_pct"]
    fig["cpu1_other_pct"] = res["cpu1_busy_pct"] - res["gen_cpu_pct"] - \
        split.result.get("postgres_cpu_pct", 0.0)
    fig["noisy"] = max(fig.get("cpu0_other_pct", 0.0), fig["cpu1_other_pct"]) > 20.0
    if pg is not None:
        fig["postgres"] = pg.version()
        fig["pg_settings"] = pg.query(
            "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings "
            "WHERE name IN ('fsync', 'synchronous_commit', 'wal_sync_method', "
            "'full_page_writes')")
    return fig


# -- clusterstorm ------------------------------------------------------------------

class _ClusterNode(RustoriumServer):
    """One node of the cluster: the shared database and broker, a name."""

    def __init__(self, base: RustoriumServer, node: str, database: str, broker: str) -> None:
        super().__init__(python=base.python, repo=base.repo)
        self.node, self._database, self._broker = node, database, broker

    def database(self, workdir: Path) -> tuple[str, list]:
        return self._database, []

    def broker(self, workdir: Path) -> tuple[list[str], list]:
        return ["--broker", self._broker, "--node-name", self.node], []


class _Scratch:
    """A directory removed with the cluster (the Redis's)."""

    def __init__(self, path: Path) -> None:
        self.path, self.pid = path, 0

    def stop(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def wait_healthy(node: Running, timeout: float = 60.0) -> None:
    """Until the node's ``/healthz`` answers 200 (it answers 503 until it has its broker)."""
    deadline = time.monotonic() + timeout
    url = f"http://127.0.0.1:{node.port}/healthz"
    while time.monotonic() < deadline:
        if node.proc.poll() is not None:
            raise SetupError(f"node exited with {node.proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)
    raise SetupError(f"node on port {node.port} not healthy within {timeout:.0f} s")


class RustoriumCluster(Server):
    """
    Two ``rustorium`` nodes on one throwaway Redis and one throwaway
    PostgreSQL (both pinned to the generator's CPU, the nodes to CPU 0).

    ``node-b`` starts first and so holds the sources' lease: it runs the
    market, whose updates keep flowing while node A's clients move to it.
    ``start`` returns node A (the one the clients connect to, and that the
    generator kills); ``info["peer"]`` is node B, and node B, the Redis and
    the PostgreSQL are stopped with it.
    """

    name = "rustorium"

    def __init__(self, base: RustoriumServer) -> None:
        self.base = base

    def prepare(self) -> None:
        from postgres import available

        why = available()
        if why:
            raise SetupError(why)
        if shutil.which("redis-server") is None:
            raise SetupError("redis-server is not installed (Debian package redis-server)")

    def start(self, tick_interval: float, config: dict | None = None) -> Running:
        scratch = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
        started: list = [_Scratch(scratch)]
        try:
            redis = RedisProcess(scratch, GEN_CPU)
            started.append(redis)
            pg = PostgresProcess(cpu=GEN_CPU)
            started.append(pg)
            b = _ClusterNode(self.base, "node-b", pg.url, redis.url).start(tick_interval, config)
            started.append(b)
            wait_healthy(b)
            a = _ClusterNode(self.base, "node-a", pg.url, redis.url).start(tick_interval, config)
            wait_healthy(a)
        except BaseException:
            for process in reversed(started):
                process.stop()
            raise
        # Stopped after node A, in this order.
        a.companions += [b, redis, pg, started[0]]
        a.info["peer"] = b
        a.aux_pid = redis.pid
        return a


def cluster_storm(cluster: Running, n: int, conc: int = STORM_CONC) -> dict:
    """
    n clients of node A subscribe to one market (10 updates/s from node B);
    node A is SIGKILLed and every client reconnects to node B with
    ``reconnect``, ``conc`` of them connecting at a time: the time until
    all are resumed.
    """
    peer: Running = cluster.info["peer"]
    symbol = cluster.info["symbols"][0]
    st = 30.0 + n / 50.0
    res = run_gen_marked(cluster, "reconnect", n, "--symbols", symbol, "--setup-timeout", str(st),
                         "--resume-timeout", str(st), "--settle", "1", "--conc", str(conc),
                         "--kill-pid", str(cluster.pid), "--reconnect-port", str(peer.port),
                         budget=2 * st + 60, server_pid=peer.pid, aux_pid=cluster.aux_pid)
    cluster.proc.wait(timeout=10)
    fig = {
        "conns": res["conns_open"], "ready": res["ready_before_drop"],
        "confirmed": res["confirmed"], "resumed": res["resumed"],
        "resume_errors": res["resume_errors"], "not_resumed": res["not_resumed"],
        "not_recovered": res["not_recovered"], "replayed": res["replayed_claimed"],
        "reconnect_failed": res["reconnect_failed"], "resume_s": res["resume_s"],
        "confirm_s": res["confirm_s"], "updates_after_resumed": res["updates_after_resumed"],
        "setup_s": res["setup_s"], "errors": res["errors"],
        "killed_exit": cluster.proc.returncode,
        "peer_cpu_s": res["server_cpu_s"], "redis_cpu_s": res.get("aux_cpu_s"),
        "conc": conc,
        "available": res["confirmed"] > 0 and res["resume_errors"] == 0
        and res["not_resumed"] == 0,
    }
    # Every client of the killed node resumed, each subscription resumed with
    # recovered: true, its announced replay received, within the target.
    fig["all_recovered"] = (fig["ready"] >= n and fig["resumed"] >= fig["ready"]
                            and fig["not_recovered"] == 0 and fig["not_resumed"] == 0
                            and fig["resume_errors"] == 0)
    return fig


# -- orchestration and report (called from run.py) ---------------------------------

SCENARIOS = ("pgcommands", "clusterstorm")
FAST = {"rate-limit": 100000, "rate-burst": 100000}
PG_GROUP = "pg:execute_transaction"
PG_SINGLE = "pg:execute_transaction:commit-batch-1"


def storm_n(prof) -> int:
    """The storm's clients: twice the single-node reconnect scenario's (10,000 in full)."""
    return 2 * prof.reconnect_n


def run(bench, scenario: str, rep: int) -> None:
    """
    Measure ``scenario`` once (repetition ``rep``) through ``bench.measure``,
    on variants of the prepared ``rustorium`` server.
    """
    base = bench.servers.get("rustorium")
    if base is None:
        if rep == 0:
            log(f"{scenario}: runs on rustorium only, which was not chosen")
        return
    prof, args = bench.prof, bench.args
    if scenario == "pgcommands":
        server = RustoriumPostgresServer(base)
        try:
            server.prepare()
        except SetupError as exc:
            bench.record(PG_GROUP, "rustorium", prof.cmd_conns, rep, {"failed": str(exc)})
            return
        for scen, extra in ((PG_GROUP, {}), (PG_SINGLE, {"commit-batch": 1})):
            bench.measure(scen, "rustorium", prof.cmd_conns, rep, 1.0,
                          lambda s: pg_commands(s, prof.cmd_conns, args.cmd_depth, prof.warmup,
                                                prof.cmd_duration),
                          config={**FAST, **extra}, kind=server)
    elif scenario == "clusterstorm":
        server = RustoriumCluster(base)
        n = storm_n(prof)
        try:
            server.prepare()
        except SetupError as exc:
            bench.record(scenario, "rustorium", n, rep, {"failed": str(exc)})
            return
        bench.measure(scenario, "rustorium", n, rep, STORM_TICK,
                      lambda s: cluster_storm(s, n), config=STORM_CONFIG, kind=server)


def report(scenario: str, rows: list[dict], table, verdicts: list[str], median_rows, verdict,
           fmt) -> None:
    """Print ``scenario``'s table and add its target lines to ``verdicts``."""
    if scenario == "pgcommands":
        _report_pg(rows, table, verdicts, median_rows, verdict, fmt)
    elif scenario == "clusterstorm":
        _report_storm(rows, table, verdicts, median_rows, verdict, fmt)


def _report_pg(rows, table, verdicts, median_rows, verdict, fmt) -> None:
    body = []
    found: dict[str, dict] = {}
    for scen, label in ((PG_GROUP, "group commit (default)"),
                        (PG_SINGLE, "commit-batch = 1")):
        for (_srv, n), r in sorted(median_rows(rows, scen).items()):
            found[scen] = r
            if "failed" in r:
                body.append([label, str(n), "FAILED: " + r["failed"][:60], *[""] * 7])
                continue
            body.append([label + ("*" if r.get("noisy") else ""), str(r["conns"]),
                         str(r.get("depth", "-")), fmt(r["replies_per_s"]),
                         fmt(r.get("server_cpu_pct")), fmt(r.get("reactor_cpu_pct")),
                         fmt(r.get("threads_cpu_pct")), fmt(r.get("postgres_cpu_pct")),
                         fmt(r.get("gen_cpu_pct")), json.dumps(r.get("errors", {}))[:30]])
    settings = next((r.get("pg_settings") for r in found.values() if r.get("pg_settings")), "")
    table("durable transfers on PostgreSQL, one node (" + (settings or "PostgreSQL") + ")",
          ["execute_transaction", "conns", "depth", "acks/s", "node CPU%", "reactor%",
           "db threads%", "postgres%", "gen CPU%", "errors"], body)
    group, single = found.get(PG_GROUP), found.get(PG_SINGLE)
    if not group or "failed" in group or not group.get("available") or not group["replies"]:
        verdicts.append(f"pgcommands: execute_transaction >= {PG_TARGET_RATE:.0f} acks/s and "
                        f">= {PG_TARGET_RATIO:.0f} x commit-batch = 1: n/a (not measured)")
        return
    rate = group["replies_per_s"]
    base = single.get("replies_per_s") if single and "failed" not in single else None
    verdicts.append(f"pgcommands: execute_transaction on PostgreSQL {fmt(rate)} acks/s >= "
                    f"{PG_TARGET_RATE:.0f}: {verdict(rate >= PG_TARGET_RATE, group)}")
    ratio = rate / base if base else None
    ok = None if ratio is None else ratio >= PG_TARGET_RATIO
    verdicts.append(f"pgcommands: {fmt(rate)} acks/s >= {PG_TARGET_RATIO:.0f} x commit-batch = 1 "
                    f"{fmt(base)} = {fmt(PG_TARGET_RATIO * base if base else None)} (ratio "
                    f"{fmt(ratio)}): {verdict(ok, group, single)}")
    if group.get("reactor_cpu_pct") is not None:
        verdicts.append(
            f"pgcommands: what bounds it: node CPU {fmt(group.get('server_cpu_pct'))}% of its "
            f"core (reactor thread {fmt(group['reactor_cpu_pct'])}%, database threads "
            f"{fmt(group.get('threads_cpu_pct'))}%), PostgreSQL "
            f"{fmt(group.get('postgres_cpu_pct'))}% of a core (no target)")


def _report_storm(rows, table, verdicts, median_rows, verdict, fmt) -> None:
    body = []
    for (_srv, n), r in sorted(median_rows(rows, "clusterstorm").items()):
        if "failed" in r:
            body.append([str(n), "FAILED: " + r["failed"][:60], *[""] * 8])
            verdicts.append(f"cluster storm N={n}: all resumed on the surviving node with "
                            f"recovered: true within {STORM_TARGET_S:.0f} s: n/a (failed)")
            continue
        if r["available"] and r["resumed"] >= r["ready"]:
            t = fmt(r["resume_s"], 3) + " s"
        else:
            t = f"only {r['resumed']} of {r['ready']} within {fmt(r['resume_s'], 1)} s"
        body.append([str(n) + ("*" if r.get("noisy") else ""), str(r["ready"]),
                     str(r["resumed"]), t, fmt(r["confirm_s"], 3), str(r["replayed"]),
                     str(r["not_recovered"]), str(r["updates_after_resumed"]),
                     fmt(r.get("peer_cpu_s"), 2), fmt(r.get("redis_cpu_s"), 2),
                     json.dumps(r.get("errors", {}))[:30]])
        ok = r.get("all_recovered") and r["resume_s"] <= STORM_TARGET_S
        verdicts.append(f"cluster storm N={n}: {r['resumed']} of {n} clients of the killed node "
                        f"resumed on the other with recovered: true in {t} <= "
                        f"{STORM_TARGET_S:.0f} s: {verdict(bool(ok), r)}")
    table("reconnect storm on a cluster (node A killed, its clients resume on node B)",
          ["clients", "ready", "resumed", "time to all resumed", "all confirmed s",
           "replayed", "not recovered", "updates in 1 s after", "node B CPU s",
           "Redis CPU s", "errors"], body)
