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
import signal
import subprocess
import threading
import time
from pathlib import Path

from postgres import PostgresProcess
from servers import (
    GEN_CPU,
    GEN_DIR,
    Running,
    RustoriumServer,
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
