"""
The benchmark's scenarios at scale (issue 13): many connections on one node,
100,000 connections on the machine, and ``--workers`` scaling.

``manyconn``
    As many connections as one process may hold (the open-file limit less
    ``FD_MARGIN``: 19,000 where ``ulimit -Hn`` is 20,000), each subscribed
    to one market, one update per second (``--tick-interval 1``), on
    rustorium, node-ws and the C reference in the same run: the time to
    connect them all, the server's RSS per connection, updates missed, and
    the delivery latency (publish time in ``data.timestamp`` to receive).
``machine100k``
    100,000 connections on this machine: ``rustorium --workers W`` (W =
    ceil(N / (fd limit - margin))) with a throwaway Redis and PostgreSQL,
    one update per second; memory per connection (sum over the workers),
    misses and latency.
``workers``
    ``--workers 1`` against ``--workers 2`` (both with Redis and PostgreSQL)
    at saturation: N subscribers of one market, at a ladder of tick rates
    beyond what one worker delivers; updates delivered per second.

Why several generator processes: one ``wsgen`` is capped by the open-file
limit too, so 100,000 connections take six.  They measure one window
together (``wsgen --sync``): each connects its share and says READY, the
harness sends every one the same window (wall-clock times), and the window
is defined by the updates' publish time, so the receipts of each update can
be added across processes and compared with the open connections (a miss is
a connection that did not get an update published in the window).  Clients
bind round-robin to several loopback source addresses (``--sources``),
because one address has only ~28,000 ephemeral ports towards one port.

Pinning: ``manyconn`` pins as the rest of the harness does (server on CPU 0,
generators on CPU 1).  ``machine100k`` and ``workers`` pin nothing: workers
are meant to use every core, so the workers, the generators, Redis and
PostgreSQL share the machine, and ``workers`` gives its one-worker baseline
the same unpinned machine (one worker can use at most one core by
construction).  The generator's CPU is reported beside each figure: on a
two-core machine it takes a large share of the second core.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from postgres import PostgresProcess
from servers import (
    GEN_CPU,
    GEN_DIR,
    RedisProcess,
    Running,
    RustoriumServer,
    SetupError,
    log,
    pin,
)

SCENARIOS = ("manyconn", "machine100k", "workers")

FD_MARGIN = 1000
"""Open files kept free in each server and generator process for everything
but connections (listening sockets, the database, logs, epoll, Node's and
Python's own files)."""

UNPINNED = 1 << 30
"""A CPU number ``servers.pin`` pins to nothing (no machine has it)."""

# Targets (issue 13).
CONNECT_S = 30.0  # all of manyconn's connections connected and subscribed within
KIB_PER_CONN = 10.0  # server RSS per connection, at most
P99_VS_NODE = 0.5  # rustorium's p99 at most this times node-ws's, same run
WORKERS_RATIO = 1.5  # --workers 2 over --workers 1, updates delivered per second
BACKLOG_MS = 50.0  # updates older than this on arrival (p50): a backlog, not keeping pace
NOISY_PCT = 20.0  # other processes' busy time (% of one core) that marks a row disturbed


@dataclass(frozen=True)
class ScaleProfile:
    """Sizes of the scale scenarios for one kind of run."""

    manyconn_ns: tuple[int, ...] | None  # None: the open-file limit less FD_MARGIN
    manyconn_duration: float
    machine_n: int
    machine_duration: float
    workers_n: int
    workers_ticks: tuple[float, ...]
    workers_duration: float
    per_process: int | None  # connections per server worker / generator (None: fd budget)
    warmup: float
    drain: float


FULL = ScaleProfile(manyconn_ns=None, manyconn_duration=20.0, machine_n=100_000,
                    machine_duration=20.0, workers_n=2000, workers_ticks=(0.01, 0.005, 0.0025),
                    workers_duration=6.0, per_process=None, warmup=2.0, drain=5.0)
# Small, but every path: two generator processes, two workers, two sources.
QUICK = ScaleProfile(manyconn_ns=(600,), manyconn_duration=4.0, machine_n=1200,
                     machine_duration=4.0, workers_n=200, workers_ticks=(0.01,),
                     workers_duration=3.0, per_process=400, warmup=1.0, drain=2.0)


def add_arguments(ap) -> None:
    """The scale scenarios' options on run.py's command line."""
    ap.add_argument("--manyconn-n", default=None,
                    help="comma-separated N for manyconn (default: the open-file limit less "
                         f"{FD_MARGIN}, e.g. 19000; 1000,19000 compares the cost per delivery)")
    ap.add_argument("--machine-n", type=int, default=None,
                    help="connections for machine100k (default 100000)")
    ap.add_argument("--workers-n", type=int, default=None,
                    help="subscribers for the workers scenario (default 2000)")
    ap.add_argument("--workers-ticks", default=None,
                    help="comma-separated tick intervals of the workers scenario's ladder "
                         "(default 0.01,0.005,0.0025)")


def profile(args) -> ScaleProfile:
    """The profile for this run, with the command line's overrides."""
    prof = QUICK if args.quick or args.smoke else FULL
    if getattr(args, "manyconn_n", None):
        prof = replace(prof, manyconn_ns=tuple(int(x) for x in args.manyconn_n.split(",")))
    if getattr(args, "machine_n", None):
        prof = replace(prof, machine_n=args.machine_n)
    if getattr(args, "workers_n", None):
        prof = replace(prof, workers_n=args.workers_n)
    if getattr(args, "workers_ticks", None):
        prof = replace(prof, workers_ticks=tuple(float(x)
                                                 for x in args.workers_ticks.split(",")))
    return prof


def fd_budget() -> int:
    """Connections one process may hold: the hard open-file limit less the margin."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1] - FD_MARGIN


def per_process(prof: ScaleProfile) -> int:
    return prof.per_process or fd_budget()


# -- processes ------------------------------------------------------------------

def _proc_table() -> dict[int, tuple[int, float, int, float]]:
    """pid -> (ppid, utime+stime in seconds, RSS in KiB, stime) of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        # fields[0] is field 3 (state): ppid 4, utime 14, stime 15, rss 24.
        table[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick,
                                  int(fields[21]) * page_kib, int(fields[12]) / tick)
    return table


def tree(root: int, table: dict | None = None) -> list[int]:
    """``root`` and all its descendants (a supervisor and its workers)."""
    table = table if table is not None else _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out.append(pid)
            todo.extend(children.get(pid, ()))
    return out


def usage(roots: list[int]) -> tuple[float, int, int, float]:
    """
    CPU seconds, RSS KiB, process count and system CPU seconds of the trees
    under ``roots``.
    """
    table = _proc_table()
    pids = {p for r in roots for p in tree(r, table)}
    return (sum(table[p][1] for p in pids), sum(table[p][2] for p in pids), len(pids),
            sum(table[p][3] for p in pids))


def busy_jiffies() -> tuple[int, int, int]:
    """(busy, total, cpus) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v), os.cpu_count() or 1


def listening_sockets(port: int) -> int:
    """Sockets listening on a local TCP port (one per worker with SO_REUSEPORT)."""
    count = 0
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        count += 1
        except OSError:
            pass
    return count


def _start_time(pid: int) -> str | None:
    """A process's start time (field 22 of its stat), to tell it from a later one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]


class _Leftovers:
    """
    The workers of a supervisor, killed (SIGKILL, by process id) if they are
    still running after it: the harness stops the supervisor with SIGTERM
    and kills it after 10 s, which can be before its workers have closed
    thousands of connections each.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = {pid: _start_time(pid) for pid in pids}

    def stop(self) -> None:
        for pid, started in self.pids.items():
            if started is not None and _start_time(pid) == started:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def _favour(pid: int | None) -> None:
    """
    Run a service (Redis, PostgreSQL) at a higher priority: in a cluster it
    has a host of its own, and here it shares two cores with the workers and
    the generators (a node that waits more than 5 s for Redis declares it
    lost).
    """
    if pid:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, -10)
        except OSError as exc:
            log(f"could not raise the priority of {pid}: {exc}")


class RustoriumWorkers(RustoriumServer):
    """
    ``rustorium --workers W`` as a cluster on one host: a throwaway Redis
    broker and PostgreSQL database per start, nothing pinned.

    Why Redis and PostgreSQL: workers are whole nodes sharing state through
    the broker and the database (``--workers`` above 1 refuses the local
    broker and SQLite).  ``--workers 1`` runs the same single node with the
    same services, the baseline of the ``workers`` scenario.
    """

    # Workers are meant to use every core: not pinned to the server's.
    pinned = False

    def __init__(self, base: RustoriumServer, workers: int) -> None:
        super().__init__(python=base.python, repo=base.repo)
        self.workers = workers
        self.name = f"rustorium-w{workers}"
        self._database_url: str | None = None

    def versions(self) -> dict[str, str]:
        return {}

    def start(self, tick_interval: float, config: dict | None = None) -> Running:
        self._database_url = None
        running = super().start(tick_interval, config)
        try:
            deadline = time.monotonic() + 120
            while listening_sockets(running.port) < self.workers:
                if time.monotonic() > deadline or running.proc.poll() is not None:
                    raise SetupError(f"only {listening_sockets(running.port)} of {self.workers} "
                                     "workers listen after 120 s")
                time.sleep(0.2)
            running.companions.insert(0, _Leftovers(tree(running.pid)[1:]))
        except BaseException:
            running.stop()
            raise
        return running

    def broker(self, workdir: Path) -> tuple[list[str], list]:
        redis = RedisProcess(workdir, UNPINNED)
        _favour(redis.pid)
        try:
            # Unpinned, and enough connections for every worker's pool.
            pg = PostgresProcess(settings={"max_connections": "300"})
            self._database_url = pg.url
            _favour(pg.pid)  # the postmaster: its backends inherit the priority
        except BaseException:
            redis.stop()
            raise
        # twistd's options: the last --database wins over the SQLite one.
        return (["--broker", redis.url, "--database", self._database_url,
                 "--workers", str(self.workers)], [redis, pg])

    def create_key(self, database: str, address: str, workdir: Path) -> str:
        if self._database_url is None:
            # Before the start: the key must go to PostgreSQL, made once the
            # server has created its schema.
            raise SetupError("the database is not started yet")
        return super().create_key(self._database_url, address, workdir)


# -- several generators, one window -------------------------------------------

def _reader(proc: subprocess.Popen, lines: list, ready: threading.Event) -> None:
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("READY "):
            ready.set()
    ready.set()


def percentile(hist: dict[int, int], q: float) -> float | None:
    """The q-quantile (lower bucket bound, microseconds) of a merged histogram."""
    total = sum(hist.values())
    if not total:
        return None
    want = min(int(q * total), total - 1)
    acc = 0
    for lower in sorted(hist):
        acc += hist[lower]
        if acc > want:
            return float(lower)
    return float(max(hist))


def measure_window(server: Running, n: int, *, tick: float, duration: float, warmup: float,
                   drain: float, per_gen: int, gen_cpu: int | None, setup_timeout: float,
                   aux: list[int] = (), conc: int = 128) -> dict:
    """
    Connect ``n`` clients with as many ``wsgen --sync`` processes as the
    open-file limit needs, subscribe them to one market, measure one window
    of ``duration`` seconds and merge the processes' results.

    The server's CPU and RSS are those of its process tree (a supervisor's
    workers included); ``aux`` are the trees of its Redis and PostgreSQL,
    whose CPU is reported apart.  ``conc``: connections each generator has
    in the making at once.
    """
    gens = max(1, math.ceil(n / per_gen))
    sources = max(2, math.ceil(n / 20000) + 1)
    shares = [n // gens + (1 if i < n % gens else 0) for i in range(gens)]
    symbol = (server.info.get("symbols") or ["TK0/USD"])[0]
    time.sleep(1.0)  # let the freshly started server settle before the baseline
    _, rss_before, nprocs, _ = usage([server.pid])
    prefix = pin(gen_cpu) if gen_cpu is not None else []
    procs: list[subprocess.Popen] = []
    outputs: list[list[str]] = []
    readies: list[threading.Event] = []
    readers: list[threading.Thread] = []
    errs = []
    started = time.monotonic()
    try:
        for share in shares:
            err = tempfile.TemporaryFile(mode="w+")
            errs.append(err)
            argv = [*prefix, str(GEN_DIR / "wsgen"), "--port", str(server.port),
                    "--path", server.path or "/v1", "--mode", "fanout", "--conns", str(share),
                    "--symbols", symbol, "--sources", str(sources), "--conc", str(conc),
                    "--setup-timeout", str(setup_timeout), "--sync"]
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    stderr=err, text=True)
            procs.append(proc)
            lines: list[str] = []
            ready = threading.Event()
            reader = threading.Thread(target=_reader, args=(proc, lines, ready), daemon=True)
            reader.start()
            readers.append(reader)
            outputs.append(lines)
            readies.append(ready)
        deadline = started + setup_timeout + 30
        for ready in readies:
            if not ready.wait(max(0.0, deadline - time.monotonic())):
                raise SetupError(f"generators not set up within {setup_timeout:.0f} s")
        connect_s = time.monotonic() - started
        ready_info = []
        for i, lines in enumerate(outputs):
            line = next((x for x in lines if x.startswith("READY ")), None)
            if line is None:
                err = errs[i]
                err.seek(0)
                raise SetupError(f"wsgen {i} ended during setup: {err.read()[-1000:]}")
            ready_info.append(json.loads(line[6:]))
        if server.info.get("ready_signal"):
            os.kill(server.pid, signal.SIGUSR2)  # node-ws ticks from now on
        t0 = time.time() + warmup
        t1 = t0 + duration
        for proc in procs:
            proc.stdin.write(f"GO {int(t0 * 1e6)} {int(t1 * 1e6)} {drain}\n")
            proc.stdin.flush()
        time.sleep(max(0.0, t0 - time.time()))
        cpu0, _, _, sys0 = usage([server.pid])
        aux0 = usage(list(aux))[0] if aux else 0.0
        j0 = busy_jiffies()
        time.sleep(max(0.0, t1 - time.time()))
        cpu1, rss_after, nprocs, sys1 = usage([server.pid])
        aux1 = usage(list(aux))[0] if aux else 0.0
        j1 = busy_jiffies()
        window = t1 - t0
        results = []
        for i, proc in enumerate(procs):
            try:
                proc.wait(timeout=drain + 60)
            except subprocess.TimeoutExpired as exc:
                raise SetupError(f"wsgen {i} did not finish") from exc
            readers[i].join(timeout=30)  # the rest of its output
            err = errs[i]
            err.seek(0)
            for line in err.read().splitlines()[-5:]:
                log(line)
            final = [x for x in outputs[i] if x.startswith("{")]
            if proc.returncode != 0 or not final:
                raise SetupError(f"wsgen {i} failed ({proc.returncode})")
            results.append(json.loads(final[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for err in errs:
            err.close()

    opened = sum(r["conns_open"] for r in ready_info)
    open_end = sum(r["conns_open_end"] for r in results)
    ids: dict[int, int] = {}
    hist: dict[int, int] = {}
    for r in results:
        for num, count in r["ids"]:
            ids[num] = ids.get(num, 0) + count
        for lower, count in r["lat_hist"]:
            hist[lower] = hist.get(lower, 0) + count
    receipts = sum(ids.values())
    arrivals = sum(r["window_arrivals"] for r in results)
    gen_cpu_s = sum(r["gen_cpu_s"] for r in results)
    server_cpu = cpu1 - cpu0
    busy = 100.0 * (j1[0] - j0[0]) / max(1, j1[1] - j0[1]) * j1[2]  # % of one core
    other = busy - 100.0 * (server_cpu + gen_cpu_s + (aux1 - aux0)) / window
    expected_ids = round(duration / tick) if tick > 0 else None

    def ms(q: float) -> float | None:
        v = percentile(hist, q)
        return None if v is None else v / 1000

    return {
        "conns": opened, "conns_open_end": open_end,
        "conns_failed": sum(r["conns_failed"] for r in results),
        "closed_by_peer": sum(r["closed_by_peer"] for r in results),
        "generators": gens, "sources": sources, "server_processes": nprocs,
        "connect_s": connect_s, "setup_s_max": max(r["setup_s"] for r in ready_info),
        "rss_before_kib": rss_before, "rss_after_kib": rss_after,
        "kib_per_conn": (rss_after - rss_before) / opened if opened else None,
        "rss_total_kib_per_conn": rss_after / opened if opened else None,
        "window_s": window, "tick_interval": tick, "updates": len(ids),
        "updates_expected": expected_ids,
        "deliveries": receipts, "missed": open_end * len(ids) - receipts,
        "ids_dropped": sum(r["ids_dropped"] for r in results),
        "arrivals": arrivals, "deliveries_per_s": arrivals / window,
        "p50_ms": ms(0.50), "p90_ms": ms(0.90), "p99_ms": ms(0.99), "p999_ms": ms(0.999),
        "max_ms": max(r["lat_max_us"] for r in results) / 1000,
        "negative": sum(r["lat_negative"] for r in results),
        "server_cpu_pct": 100.0 * server_cpu / window,
        "server_us_per_delivery": server_cpu * 1e6 / arrivals if arrivals else None,
        # The kernel's part (system time): the rest is the process's own code.
        "server_sys_us_per_delivery": (sys1 - sys0) * 1e6 / arrivals if arrivals else None,
        "gen_cpu_pct": 100.0 * gen_cpu_s / window,
        "gen_us_per_delivery": gen_cpu_s * 1e6 / arrivals if arrivals else None,
        "aux_cpu_pct": 100.0 * (aux1 - aux0) / window if aux else None,
        "machine_busy_pct": busy, "other_pct": other, "noisy": other > NOISY_PCT,
        "update_bytes": sum(r["update_bytes_avg"] * r["updates_total"] for r in results)
        / max(1, sum(r["updates_total"] for r in results)),
        "errors": {k: v for r in results for k, v in r["errors"].items()},
        "lat_hist": {str(k): v for k, v in sorted(hist.items())},
    }


def setup_timeout(n: int) -> float:
    """A bound on connecting n clients (far above the 30 s target)."""
    return min(900.0, 60.0 + n / 50.0)


# -- scenarios -------------------------------------------------------------------

def _aux_pids(server: Running) -> list[int]:
    return [c.pid for c in server.companions if getattr(c, "pid", None)]


# Connections each of machine100k's generators has in the making at once:
# 100,000 connections opened as fast as possible on two cores keep every
# worker's reactor so busy that its Redis replies wait past the broker's 5 s
# timeout (the node then closes its connections, 4103, so they resume).
MACHINE_CONC = 16

# Settings for a server holding thousands of loopback clients: every client
# comes from a few addresses and shares one API key.
SCALE_CONFIG = {"max-handshakes-per-address": 0, "max-connections-per-key": 0}


def run(bench, scenario: str, rep: int) -> None:
    """Run one scale scenario for repetition ``rep`` (called by run.py's Bench.run)."""
    prof = profile(bench.args)
    if scenario == "manyconn":
        servers = [(s, bench.servers[s]) for s in bench.servers
                   if s in ("rustorium", "node-ws", "reference")]
        if "rustorium" in bench.servers and shutil.which("redis-server"):
            # The same node spreading each burst over two worker processes
            # (the other way to a shorter burst): two cores send at
            # once, each to its half of the connections.
            spread = RustoriumWorkers(bench.servers["rustorium"], 2)
            servers.append((spread.name, spread))
        for n in prof.manyconn_ns or (fd_budget(),):
            for name, server_obj in servers:
                bench.measure(scenario, name, n, rep, 1.0,
                        lambda s, n=n: measure_window(
                            s, n, tick=1.0, duration=prof.manyconn_duration,
                            warmup=prof.warmup, drain=prof.drain, per_gen=per_process(prof),
                            gen_cpu=GEN_CPU, setup_timeout=setup_timeout(n)),
                        config=SCALE_CONFIG, kind=server_obj)
        return
    base = bench.servers.get("rustorium")
    if base is None:
        if rep == 0:
            log(f"{scenario}: runs on rustorium only; leaving it out")
        return
    if scenario == "machine100k":
        n = prof.machine_n
        workers = max(1, math.ceil(n / per_process(prof)))
        need_kib = n * 80 + workers * 200_000  # server, kernel and generators, generous
        avail = _mem_available_kib()
        if avail is not None and avail < need_kib:
            bench.record(scenario, f"rustorium-w{workers}", n, rep, {
                "failed": f"needs about {need_kib // 1024} MiB of memory, "
                          f"{avail // 1024} MiB available"})
            return
        server_obj = RustoriumWorkers(base, workers)
        bench.measure(scenario, server_obj.name, n, rep, 1.0,
                lambda s: {**measure_window(
                    s, n, tick=1.0, duration=prof.machine_duration, warmup=prof.warmup,
                    drain=prof.drain, per_gen=per_process(prof), gen_cpu=None,
                    setup_timeout=setup_timeout(n), aux=_aux_pids(s), conc=MACHINE_CONC),
                    "workers": workers},
                config=SCALE_CONFIG, kind=server_obj)
        return
    if scenario == "workers":
        n = prof.workers_n
        for tick in prof.workers_ticks:
            for workers in (1, 2):
                server_obj = RustoriumWorkers(base, workers)
                bench.measure(f"workers:{tick:g}", server_obj.name, n, rep, tick,
                        lambda s, tick=tick, workers=workers: {**measure_window(
                            s, n, tick=tick, duration=prof.workers_duration,
                            warmup=prof.warmup, drain=prof.drain, per_gen=per_process(prof),
                            gen_cpu=None, setup_timeout=setup_timeout(n), aux=_aux_pids(s)),
                            "workers": workers, "offered_per_s": n / tick},
                        config=SCALE_CONFIG, kind=server_obj)


def _mem_available_kib() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


# -- report ---------------------------------------------------------------------

def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if abs(v) >= 10000:
            return f"{v / 1000:.1f}k"
        return f"{v:.{digits}f}"
    return str(v)


def report(rows: list[dict], scenarios: list[str], table, verdict, median_rows) -> list[str]:
    """The scale scenarios' tables; returns their verdict lines."""
    verdicts: list[str] = []
    if "manyconn" in scenarios:
        med = median_rows(rows, "manyconn")
        for n in sorted({k[1] for k in med}):
            body = []
            node_p99 = (med.get(("node-ws", n)) or {}).get("p99_ms")
            for (srv, nn), r in sorted(med.items()):
                if nn != n:
                    continue
                if "failed" in r:
                    body.append([srv, "FAILED: " + r["failed"][:60], *[""] * 15])
                    continue
                body.append([srv + ("*" if r.get("noisy") else ""), str(r["conns"]),
                             _fmt(r["connect_s"]), _fmt(r["rss_before_kib"] / 1024),
                             _fmt(r["rss_after_kib"] / 1024), _fmt(r["kib_per_conn"], 2),
                             f"{r['updates']}/{r['updates_expected']}", str(r["deliveries"]),
                             str(r["missed"]), _fmt(r["p50_ms"]), _fmt(r["p90_ms"]),
                             _fmt(r["p99_ms"]), _fmt(r["max_ms"]),
                             _fmt(r["server_us_per_delivery"], 2),
                             _fmt(r.get("server_sys_us_per_delivery"), 2),
                             _fmt(r["gen_cpu_pct"]), _fmt(r["other_pct"])])
                if srv == "rustorium-w2":
                    p99 = r["p99_ms"]
                    ok = None if not (p99 and node_p99) else p99 <= P99_VS_NODE * node_p99
                    verdicts.append(
                        f"manyconn N={n}: rustorium --workers 2 p99 {_fmt(p99)} ms <= "
                        f"{P99_VS_NODE:g} x node-ws {_fmt(node_p99)} = "
                        f"{_fmt(P99_VS_NODE * node_p99 if node_p99 else None)} ms (one burst "
                        f"spread over two workers): {verdict(ok, r, med.get(('node-ws', n)))}")
                    verdicts.append(
                        f"manyconn N={n}: rustorium --workers 2 {_fmt(r['kib_per_conn'], 2)} "
                        f"KiB RSS/connection, {r['missed']} missed, connected in "
                        f"{_fmt(r['connect_s'])} s")
                if srv != "rustorium":
                    continue
                ok = r["conns"] >= n and r["connect_s"] <= CONNECT_S
                verdicts.append(f"manyconn N={n}: rustorium all {r['conns']} connected and "
                                f"subscribed in {_fmt(r['connect_s'])} s <= {CONNECT_S:g} s: "
                                f"{verdict(ok, r)}")
                kib = r["kib_per_conn"]
                verdicts.append(f"manyconn N={n}: rustorium {_fmt(kib, 2)} KiB RSS/connection "
                                f"<= {KIB_PER_CONN:g}: "
                                f"{verdict(None if kib is None else kib <= KIB_PER_CONN, r)}")
                ok = r["missed"] == 0 and r["updates"] > 0 and r["closed_by_peer"] == 0
                verdicts.append(f"manyconn N={n}: rustorium nothing dropped ({r['missed']} "
                                f"missed of {r['updates']} updates x {r['conns_open_end']} "
                                f"connections, {r['closed_by_peer']} closed): "
                                f"{verdict(ok, r)}")
                p99 = r["p99_ms"]
                ok = None if not (p99 and node_p99) else p99 <= P99_VS_NODE * node_p99
                verdicts.append(f"manyconn N={n}: rustorium p99 {_fmt(p99)} ms <= "
                                f"{P99_VS_NODE:g} x node-ws {_fmt(node_p99)} = "
                                f"{_fmt(P99_VS_NODE * node_p99 if node_p99 else None)} ms: "
                                f"{verdict(ok, r, med.get(('node-ws', n)))}")
            table(f"manyconn: N connections on one node, one market, 1 update/s, N={n} "
                  "(latency: publish to receive, ms)",
                  ["server", "conns", "connect s", "RSS before MiB", "RSS after MiB",
                   "KiB/conn", "updates", "deliveries", "missed", "p50", "p90", "p99", "max",
                   "srv us/deliv", "kernel us/deliv", "gen CPU%", "other%"], body)
    if "machine100k" in scenarios:
        body = []
        for (srv, n), r in sorted(median_rows(rows, "machine100k").items()):
            if "failed" in r:
                body.append([srv, str(n), "FAILED: " + r["failed"][:60], *[""] * 11])
                verdicts.append(f"machine100k N={n}: {srv} FAILED: {r['failed'][:80]}")
                continue
            body.append([srv + ("*" if r.get("noisy") else ""), str(r["conns"]),
                         _fmt(r["connect_s"]), _fmt(r["rss_after_kib"] / 1024),
                         _fmt(r["kib_per_conn"], 2), _fmt(r["rss_total_kib_per_conn"], 2),
                         f"{r['updates']}/{r['updates_expected']}", str(r["missed"]),
                         _fmt(r["p50_ms"]), _fmt(r["p99_ms"]), _fmt(r["max_ms"]),
                         _fmt(r["server_cpu_pct"]), _fmt(r["gen_cpu_pct"]),
                         _fmt(r["aux_cpu_pct"])])
            ok = r["conns"] >= n and r["missed"] == 0 and r["updates"] > 0
            verdicts.append(f"machine100k N={n}: {srv} {r['conns']} connected, {r['missed']} "
                            f"missed, {_fmt(r['kib_per_conn'], 2)} KiB/connection, p99 "
                            f"{_fmt(r['p99_ms'])} ms: {verdict(ok, r)}")
        table("machine100k: connections across --workers, 1 update/s (Redis, PostgreSQL)",
              ["server", "conns", "connect s", "RSS sum MiB", "KiB/conn", "RSS/conn KiB",
               "updates", "missed", "p50 ms", "p99 ms", "max ms", "srv CPU%", "gen CPU%",
               "Redis+PG CPU%"], body)
    if "workers" in scenarios:
        body = []
        best: dict[int, dict] = {}
        for scen in sorted({r["scenario"] for r in rows if r["scenario"].startswith("workers:")},
                           key=lambda s: -float(s.split(":")[1])):
            for (srv, _n), r in sorted(median_rows(rows, scen).items()):
                tick = float(scen.split(":")[1])
                if "failed" in r:
                    body.append([srv, _fmt(tick, 4), "FAILED: " + r["failed"][:60], *[""] * 8])
                    continue
                body.append([srv + ("*" if r.get("noisy") else ""), _fmt(tick, 4),
                             _fmt(r["offered_per_s"]), _fmt(r["updates"] / r["window_s"]),
                             _fmt(r["deliveries_per_s"]),
                             _fmt(r["server_cpu_pct"]), _fmt(r["server_us_per_delivery"], 2),
                             _fmt(r["gen_cpu_pct"]), _fmt(r["aux_cpu_pct"]),
                             _fmt(r["p50_ms"]), str(r["conns"])])
                w = r["workers"]
                if w not in best or r["deliveries_per_s"] > best[w]["deliveries_per_s"]:
                    best[w] = r
        table("workers: updates delivered per second at saturation (nothing pinned; Redis, "
              "PostgreSQL)", ["server", "tick s", "offered/s", "ticks/s", "delivered/s", "srv CPU%",
                              "srv us/deliv", "gen CPU%", "Redis+PG CPU%", "age p50 ms",
                              "conns"], body)
        if 1 in best and 2 in best:
            one, two = best[1], best[2]
            ratio = two["deliveries_per_s"] / one["deliveries_per_s"] \
                if one["deliveries_per_s"] else None
            verdicts.append(
                f"workers: --workers 2 {_fmt(two['deliveries_per_s'])}/s >= {WORKERS_RATIO:g} x "
                f"--workers 1 {_fmt(one['deliveries_per_s'])}/s (ratio {_fmt(ratio, 2)}; "
                f"generator CPU {_fmt(one['gen_cpu_pct'])}% and {_fmt(two['gen_cpu_pct'])}% "
                f"of a core, server {_fmt(one['server_cpu_pct'])}% and "
                f"{_fmt(two['server_cpu_pct'])}%; updates {_fmt(one['p50_ms'])} and "
                f"{_fmt(two['p50_ms'])} ms old at p50): "
                f"{verdict(None if ratio is None else ratio >= WORKERS_RATIO, one, two)}"
                + "".join(f" ({r['server']} wrote a backlog: updates {_fmt(r['p50_ms'])} ms old,"
                          " coalesced writes are cheaper)" for r in (one, two)
                          if (r.get("p50_ms") or 0) > BACKLOG_MS))
    return verdicts
