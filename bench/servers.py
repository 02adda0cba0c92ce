"""
Build the benchmark's tools and start the servers under test.

Every server is started the way its users start it, as a separate process
pinned to CPU 0 (the load generator gets CPU 1), so that its CPU time can be
read from ``/proc/PID/stat`` and nothing else competes for its core:

* ``rustorium``: ``twistd -n rustorium ...`` from a Python that can import
  the package (the current interpreter, ``--python``, or ``bench/.venv``,
  which is created and filled with ``pip install REPO`` when needed);
* ``rustorium-redis``: the same server with ``--broker redis://...``, against
  a throwaway ``redis-server`` started for it on a free loopback port and
  pinned to the generator's CPU (standing for another host), so the node's
  core is the node's alone;
* ``reference``: ``bench/gen/refserver``, the bare C fan-out server (the
  floor of the machine);
* ``node-ws``: ``node bench/node/server.js`` with ``ws`` installed by npm
  into ``bench/node/node_modules``.

Everything the harness needs is built here, so a fresh clone runs with one
command; the binaries, the venv and ``node_modules`` are gitignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
GEN_DIR = BENCH_DIR / "gen"
NODE_DIR = BENCH_DIR / "node"
VENV_DIR = BENCH_DIR / ".venv"

SERVER_CPU = 0
GEN_CPU = 1


class SetupError(RuntimeError):
    """A tool or server could not be built, installed or started."""


def log(msg: str) -> None:
    """Progress goes to stderr so that stdout holds only the figures."""
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def raise_nofile() -> int:
    """
    Raise this process's soft fd limit to the hard limit.

    Children inherit it, so both the server (10,000 idle connections) and the
    generator can open enough sockets.  Returns the new soft limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def pin(cpu: int) -> list[str]:
    """A ``taskset`` prefix pinning a command to ``cpu``, or nothing if unavailable."""
    if shutil.which("taskset") and (os.cpu_count() or 1) > cpu and (os.cpu_count() or 1) >= 2:
        return ["taskset", "-c", str(cpu)]
    return []


def build_c() -> None:
    """Compile the generator and the reference server with gcc -O2 when stale."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise SetupError("no C compiler (gcc) found")
    for name in ("wsgen", "refserver"):
        src, out = GEN_DIR / f"{name}.c", GEN_DIR / name
        if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
            continue
        log(f"compiling {out.relative_to(REPO_DIR)}")
        subprocess.run([cc, "-O2", "-Wall", "-o", str(out), str(src)], check=True)


def free_port() -> int:
    """A currently free loopback port (the server binds it right after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    """Poll until the port accepts a TCP connection; fail if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SetupError(f"server exited with {proc.returncode}; log:\n{tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SetupError(f"server did not accept on port {port} within {timeout}s; log:\n"
                     f"{tail(log_path)}")


def tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM one child we started, then SIGKILL after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class RedisProcess:
    """
    A throwaway ``redis-server`` for one measurement: a free loopback port
    (never the machine's own Redis on 6379), nothing kept on disk, stopped
    by its process id with the server that uses it.

    Why one per measurement: every measurement starts a fresh server with a
    fresh database, and the broker's state in Redis (the message counter,
    histories, subscriptions, the sources' lease) belongs with it.
    """

    def __init__(self, workdir: Path, cpu: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SetupError("redis-server is not installed (Debian package redis-server)")
        self.port = free_port()
        if self.port == 6379:
            raise SetupError("refusing port 6379: that is the machine's own Redis")
        self.log_path = workdir / "redis.log"
        self.proc = subprocess.Popen(
            [*pin(cpu), binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(workdir),
             "--logfile", str(self.log_path), "--maxmemory-policy", "noeviction"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            self._wait(10.0)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait(self, timeout: float) -> None:
        """Until it answers PING; fail if it exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SetupError(f"redis-server exited with {self.proc.returncode}; log:\n"
                                 f"{tail(self.log_path)}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise SetupError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class Running:
    """A started server: its process, where to connect, and what it knows."""

    name: str
    proc: subprocess.Popen
    port: int
    path: str
    workdir: Path
    log_path: Path
    info: dict = field(default_factory=dict)
    # Started for this server and stopped after it (its Redis).
    companions: list = field(default_factory=list)
    # A companion whose CPU the generator reads beside the server's (its Redis).
    aux_pid: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """
        SIGTERM, then SIGKILL after 10 s; then the companions; remove the
        scratch directory.
        """
        stop_process(self.proc)
        for companion in self.companions:
            companion.stop()
        if os.environ.get("BENCH_KEEP_WORKDIR"):
            log(f"kept {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


class Server:
    """A kind of server under test; ``prepare`` once, then ``start`` per measurement."""

    name = "?"
    # Started on SERVER_CPU alone (the generator has the other core).
    pinned = True

    def prepare(self) -> None:
        """Build or install what this server needs (idempotent)."""

    def versions(self) -> dict[str, str]:
        """Versions worth recording with the figures."""
        return {}

    def start(self, tick_interval: float, config: dict | None = None) -> Running:
        """
        Start one server; ``config`` holds extra server settings (rustorium's
        TOML keys, e.g. ``{"rate-limit": 100000}``), ignored by the references.
        """
        raise NotImplementedError

    def _spawn(self, argv: list[str], workdir: Path, port: int, path: str,
               info: dict | None = None, timeout: float = 60.0,
               companions: list | None = None) -> Running:
        log_path = workdir / "server.log"
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen((pin(SERVER_CPU) if self.pinned else []) + argv,
                                    cwd=workdir, stdout=logf,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        running = Running(self.name, proc, port, path, workdir, log_path, info or {},
                          list(companions or []))
        try:
            wait_port(port, proc, timeout, log_path)
        except BaseException:
            running.stop()
            raise
        return running


class ReferenceServer(Server):
    """The bare C fan-out server: pre-framed updates written straight to sockets."""

    name = "reference"

    def prepare(self) -> None:
        build_c()

    def versions(self) -> dict[str, str]:
        return {"reference": "bench/gen/refserver.c (C, epoll, write-through)"}

    def start(self, tick_interval: float, config: dict | None = None) -> Running:
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="bench-ref-"))
        return self._spawn([str(GEN_DIR / "refserver"), "--port", str(port),
                            "--tick-interval", repr(tick_interval)], workdir, port, "/v1")


class NodeWsServer(Server):
    """The Node.js ``ws`` fan-out server, for the "at least as cheap as Node" targets."""

    name = "node-ws"

    def prepare(self) -> None:
        if not shutil.which("node") or not shutil.which("npm"):
            raise SetupError("node and npm are needed for the node-ws server")
        if not (NODE_DIR / "node_modules" / "ws" / "package.json").exists():
            log("npm ci in bench/node")
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                           cwd=NODE_DIR, check=True, stdout=sys.stderr)

    def versions(self) -> dict[str, str]:
        node = subprocess.run(["node", "--version"], check=False, capture_output=True,
                              text=True).stdout
        try:
            ws = json.loads((NODE_DIR / "node_modules/ws/package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            ws = "?"
        return {"node": node.strip(), "ws": ws}

    def start(self, tick_interval: float, config: dict | None = None) -> Running:
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix="bench-node-"))
        # --wait-ready: ticks start when the generator has set up every client
        # (see server.js); the generator is told so by info["ready_signal"].
        return self._spawn(["node", str(NODE_DIR / "server.js"), "--port", str(port),
                            "--tick-interval", repr(tick_interval), "--wait-ready"],
                           workdir, port, "/v1", {"ready_signal": True})


def _hex40(seed: str) -> str:
    """A deterministic 0x-prefixed 40-hex-digit id (token or address)."""
    return "0x" + hashlib.sha1(seed.encode()).hexdigest()


class RustoriumServer(Server):
    """
    The real server, installed with pip and started with ``twistd -n rustorium``.

    Each start gets a fresh scratch directory with its own SQLite database,
    a genesis of ``n_tokens`` tokens (one market ``TKi/USD`` each) whose whole
    supply belongs to the bench address, an API key for that address, and a
    TOML config with heartbeats effectively off.
    """

    name = "rustorium"
    n_tokens = 10

    def __init__(self, python: str | None = None, repo: Path = REPO_DIR) -> None:
        self.python = python
        self.repo = repo

    # -- installation --------------------------------------------------------

    def _probe(self, python: str) -> dict | None:
        """
        Where ``python`` imports rustorium from, if ``twistd`` can find the plugin.

        Importable is not enough: an editable install imports fine but its
        ``twisted/plugins`` directory is invisible to twistd's plugin scan.
        """
        probe = ("import json, rustorium\n"
                 "from twisted.plugin import getPlugins\n"
                 "from twisted.application.service import IServiceMaker\n"
                 "names = {p.tapname for p in getPlugins(IServiceMaker)}\n"
                 "print(json.dumps({'file': rustorium.__file__, 'plugin': 'rustorium' in names}))")
        out = subprocess.run([python, "-c", probe], check=False, capture_output=True, text=True,
                             cwd=tempfile.gettempdir())
        try:
            found = json.loads(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None
        return found if found.get("plugin") else None

    def _importable(self, python: str) -> bool:
        return self._probe(python) is not None

    def _source_stamp(self) -> str:
        """A hash of the repository's server sources (HEAD plus local changes, bench/ excluded)."""
        def git(*args: str) -> str:
            return subprocess.run(["git", "-C", str(self.repo), *args], check=False,
                                  capture_output=True,
                                  text=True).stdout
        exclude = ":(exclude)bench"
        parts = [git("rev-parse", "HEAD^{tree}"), git("diff", "HEAD", "--", ".", exclude),
                 git("ls-files", "--others", "--exclude-standard", "--", ".", exclude)]
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    def prepare(self) -> None:
        if self.python:
            if not self._importable(self.python):
                raise SetupError(f"{self.python} cannot import rustorium")
            return
        # The current interpreter is used when it runs this very checkout's server
        # (or when asked to with BENCH_USE_CURRENT_PYTHON=1); otherwise bench/.venv,
        # so that the figures are never those of some other installed copy.
        found = self._probe(sys.executable)
        if found and (os.environ.get("BENCH_USE_CURRENT_PYTHON") == "1"
                      or Path(found["file"]).resolve().is_relative_to(self.repo)):
            self.python = sys.executable
            log(f"rustorium: using the current interpreter {sys.executable}")
            return
        if not (self.repo / "setup.cfg").exists():
            raise SetupError(f"no setup.cfg in {self.repo}: the server is not there yet")
        py = VENV_DIR / "bin" / "python"
        if not py.exists():
            log(f"creating {VENV_DIR}")
            subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"],
                           check=True, stdout=sys.stderr)
        stamp_file = VENV_DIR / "rustorium.stamp"
        stamp = self._source_stamp()
        if not stamp_file.exists() or stamp_file.read_text() != stamp or not self._importable(
                str(py)):
            log(f"pip install {self.repo} into {VENV_DIR}")
            pip = [str(py), "-m", "pip", "install", "-q"]
            subprocess.run([*pip, str(self.repo)], check=True, stdout=sys.stderr)
            # Same version number, new code: force the package itself to be replaced.
            subprocess.run([*pip, "--no-deps", "--force-reinstall", str(self.repo)], check=True,
                           stdout=sys.stderr)
            stamp_file.write_text(stamp)
        self.python = str(py)

    def versions(self) -> dict[str, str]:
        code = ("import json, sys, twisted, autobahn, rustorium; print(json.dumps({"
                "'python': sys.version.split()[0], 'twisted': twisted.__version__, "
                "'autobahn': autobahn.__version__, 'rustorium': getattr(rustorium, "
                "'__version__', '?')}))")
        out = subprocess.run([self.python, "-c", code], check=False, capture_output=True, text=True,
                             cwd=tempfile.gettempdir())
        try:
            return json.loads(out.stdout)
        except ValueError:
            return {}

    # -- one server ----------------------------------------------------------

    def genesis(self) -> dict:
        """The bench's genesis: ``n_tokens`` tokens, all owned by the bench address."""
        owner = _hex40("bench-owner")
        tokens = []
        for i in range(self.n_tokens):
            tokens.append({
                "token_id": _hex40(f"bench-token-{i}"), "name": f"Token {i}",
                "symbol": f"TK{i}", "decimals": 18, "total_supply": "1000000000",
                "price": "1.23", "balances": {owner: "1000000000"},
            })
        return {"tokens": tokens}

    def _cli(self) -> list[str]:
        script = Path(self.python).parent / "rustorium"
        return [str(script)] if script.exists() else [self.python, "-m", "rustorium.cli"]

    def _twistd(self) -> list[str]:
        script = Path(self.python).parent / "twistd"
        return [str(script)] if script.exists() else [self.python, "-m", "twisted.scripts.twistd"]

    def create_key(self, database: str, address: str, workdir: Path) -> str:
        """``rustorium keys create``; the key is the last line of its stdout."""
        out = subprocess.run([*self._cli(), "keys", "create", "--database", database,
                              "--name", "bench", "--address", address],
                             check=False, capture_output=True, text=True, cwd=workdir,
                             timeout=60)
        lines = out.stdout.strip().splitlines()
        if out.returncode != 0 or not lines:
            raise SetupError(f"rustorium keys create failed ({out.returncode}): "
                             f"{out.stderr.strip()[-2000:]}")
        return lines[-1].strip()

    def broker(self, workdir: Path) -> tuple[list[str], list]:
        """The server's broker arguments and the processes started for them."""
        return [], []

    def known_lines(self, lines: list[str]) -> list[str]:
        """The TOML lines this server's version accepts (all of them, for the current one)."""
        return lines

    def database(self, workdir: Path) -> tuple[str, list]:
        """The server's database URL and the processes started for it."""
        return f"sqlite:{workdir / 'bench.db'}", []

    def start(self, tick_interval: float, config: dict | None = None) -> Running:
        port = free_port()
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        genesis = self.genesis()
        (workdir / "genesis.json").write_text(json.dumps(genesis, indent=1))
        try:
            database, stores = self.database(workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        owner = next(iter(genesis["tokens"][0]["balances"]))
        lines = [
            "# Written by bench/servers.py for one benchmark run.",
            "heartbeat-interval = 3600",
            "max-subscriptions = 100",
            # Every simulated client shares one API key: lift the limits
            # that stand for one customer.
            "key-rate-limit = 1000000",
            "key-rate-burst = 1000000",
            "max-detached-per-key = 1000000",
        ]
        for key, value in (config or {}).items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines = self.known_lines(lines)
        (workdir / "bench.toml").write_text("\n".join(lines) + "\n")
        info = {
            "tokens": [t["token_id"] for t in genesis["tokens"]],
            "symbols": [f"{t['symbol']}/USD" for t in genesis["tokens"]],
            "owner": owner,
            "other": _hex40("bench-recipient"),
        }
        try:
            key = self.create_key(database, owner, workdir)
            key_after_start = False
        except SetupError:
            # Some schemas only exist once the server has loaded the genesis.
            key, key_after_start = "", True
        try:
            broker_args, companions = self.broker(workdir)
        except BaseException:
            for store in stores:
                store.stop()
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        argv = [*self._twistd(), "-n", "--pidfile=", "rustorium",
                "--listen", f"tcp:{port}:interface=127.0.0.1", "--database", database,
                "--genesis", str(workdir / "genesis.json"),
                "--tick-interval", repr(tick_interval), "--config", str(workdir / "bench.toml"),
                *broker_args]
        try:
            running = self._spawn(argv, workdir, port, "", info,
                                  companions=[*companions, *stores])
        except BaseException:
            for companion in [*companions, *stores]:
                companion.stop()
            raise
        if companions:
            running.aux_pid = companions[0].pid
        try:
            if key_after_start:
                key = self.create_key(database, owner, workdir)
        except BaseException:
            running.stop()
            raise
        running.path = f"/v1?api_key={key}"
        return running


class RustoriumRedisServer(RustoriumServer):
    """
    The real server with the Redis broker (``--broker redis://...``), on
    SQLite as ``rustorium`` is (one node may keep SQLite with Redis).

    Why it is measured beside ``rustorium``: the fan-out stays per process
    (a node listens to a key in Redis once however many of its connections
    follow it), so the broker should cost per update, not per subscriber,
    and the CPU per delivery should stay close to the local broker's.
    Each start gets its own empty ``redis-server`` (see L{RedisProcess}),
    pinned to the generator's CPU: in a cluster Redis runs on another host,
    so it must not take the node's core.
    """

    name = "rustorium-redis"

    def prepare(self) -> None:
        if shutil.which("redis-server") is None:
            raise SetupError("redis-server is not installed (Debian package redis-server); "
                             "it is needed for the rustorium-redis server")
        super().prepare()

    def versions(self) -> dict[str, str]:
        out = subprocess.run(["redis-server", "--version"], check=False, capture_output=True,
                             text=True).stdout.split()
        version = next((w.split("=", 1)[1] for w in out if w.startswith("v=")), "?")
        return {**super().versions(), "redis": version}

    def broker(self, workdir: Path) -> tuple[list[str], list]:
        redis = RedisProcess(workdir, GEN_CPU)
        return ["--broker", redis.url], [redis]


class BaselineServer(RustoriumServer):
    """
    The server as it was at an earlier commit (``--baseline REV``), measured
    in the same run as today's to tell a regression from a machine that is
    slower or busier than the one of an earlier run.

    The commit's tree is extracted with ``git archive`` into
    ``bench/.baseline/REV`` and installed into its own ``bench/.venv-REV``
    (both gitignored, kept between runs).  Settings that an older server does
    not know (the bench's config names some that came later) are left out of
    its TOML file, so it runs on its own defaults for them.
    """

    def __init__(self, rev: str, repo: Path = REPO_DIR) -> None:
        commit = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", f"{rev}^{{commit}}"],
            check=False, capture_output=True, text=True).stdout.strip()
        if not commit:
            raise SetupError(f"--baseline {rev}: no such commit in {repo}")
        super().__init__(python=None, repo=BENCH_DIR / ".baseline" / commit)
        self.rev, self.source = commit, repo
        self.name = f"rustorium@{commit}"
        self.settings: set[str] = set()

    def prepare(self) -> None:
        if not (self.repo / "setup.cfg").exists():
            log(f"extracting {self.rev} into {self.repo}")
            self.repo.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(["git", "-C", str(self.source), "archive", self.rev],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(self.repo)], input=archive, check=True)
        venv = BENCH_DIR / f".venv-{self.rev}"
        py = venv / "bin" / "python"
        if not py.exists() or not self._importable(str(py)):
            log(f"installing {self.rev} into {venv}")
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", str(self.repo)], check=True,
                           stdout=sys.stderr)
        self.python = str(py)
        out = subprocess.run([self.python, "-c", "import json; from rustorium.config import "
                              "SETTINGS; print(json.dumps([s.name for s in SETTINGS]))"],
                             check=False, capture_output=True, text=True,
                             cwd=tempfile.gettempdir())
        try:
            self.settings = set(json.loads(out.stdout))
        except ValueError as exc:
            raise SetupError(f"cannot read {self.name}'s settings: {out.stderr[-500:]}") from exc

    def versions(self) -> dict[str, str]:
        return {"baseline": self.rev}

    def known_lines(self, lines: list[str]) -> list[str]:
        return [line for line in lines
                if line.startswith("#") or line.split("=", 1)[0].strip() in self.settings]


SERVERS = {
    "rustorium": RustoriumServer,
    "rustorium-redis": RustoriumRedisServer,
    "reference": ReferenceServer,
    "node-ws": NodeWsServer,
}
