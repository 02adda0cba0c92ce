"""
A throwaway PostgreSQL for one benchmark measurement.

``PgServer().start()`` runs ``initdb`` into a temporary directory, starts
``postgres`` on a free loopback port (never the machine's own 5432) with
its socket in that directory, creates the ``rustorium`` database and
returns its URL; ``stop()`` shuts it down (fast shutdown, by its process
id) and removes the directory.  Commits are durable (``fsync=on``), as in
production.

Why its own module: the scenarios that need a database the nodes can share
(``--workers``, clusters) each start one beside their Redis, and a
measurement must never touch the machine's own PostgreSQL.  Only the
installed binaries are used (``initdb``, ``postgres``, ``pg_isready``,
``createdb`` from ``/usr/lib/postgresql/*/bin`` or ``PATH``; Debian package
``postgresql``), so the harness needs no database driver.  As root, both
run as the ``postgres`` user, which owns the directory (PostgreSQL refuses
to run as root).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

STARTUP_TIMEOUT = 60.0


class PgUnavailable(RuntimeError):
    """PostgreSQL is not installed, or it would not start."""


def find_binary(name: str) -> str | None:
    """An installed PostgreSQL program: on PATH, else the newest versioned one."""
    found = shutil.which(name)
    if found:
        return found
    matches = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
    matches.sort(key=lambda p: [int(s) for s in p.split("/") if s.isdigit()], reverse=True)
    return matches[0] if matches else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """
    One throwaway PostgreSQL cluster: ``start() -> url``, ``stop()``.

    @ivar pid: the postmaster's process id once started.
    """

    user = "postgres"

    def __init__(self, cpu_prefix: list[str] | None = None, max_connections: int = 300) -> None:
        """
        @param cpu_prefix: a command prefix for the server (a ``taskset``
            pinning), or nothing.
        @param max_connections: PostgreSQL's connection limit (every worker
            of every node keeps a pool).
        """
        self.binaries = {name: find_binary(name)
                         for name in ("initdb", "postgres", "pg_isready", "createdb")}
        missing = [name for name, path in self.binaries.items() if path is None]
        if missing:
            raise PgUnavailable(f"PostgreSQL is not installed (no {', '.join(missing)}; "
                                "Debian package postgresql)")
        self.cpu_prefix = list(cpu_prefix or [])
        self.max_connections = max_connections
        self.directory: Path | None = None
        self.port: int | None = None
        self.proc: subprocess.Popen | None = None
        self._as_user: dict = {}

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/rustorium"

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", HOME=str(self.directory))
        return env

    def _run(self, argv: list[str], timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              cwd=self.directory, env=self._env(), timeout=timeout,
                              **self._as_user)

    def start(self) -> str:
        """Initialise, start and wait for the server; the ``rustorium`` database's URL."""
        self.directory = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        try:
            if os.geteuid() == 0:
                import pwd

                try:
                    entry = pwd.getpwnam(self.user)
                except KeyError:
                    raise PgUnavailable("running as root and there is no 'postgres' user "
                                        "to run PostgreSQL as") from None
                self._as_user = {"user": entry.pw_uid, "group": entry.pw_gid,
                                 "extra_groups": []}
                os.chown(self.directory, entry.pw_uid, entry.pw_gid)
            data = self.directory / "data"
            out = self._run([self.binaries["initdb"], "-D", str(data), "-U", "postgres",
                             "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"])
            if out.returncode != 0:
                raise PgUnavailable(f"initdb failed: {(out.stdout + out.stderr)[-2000:]}")
            self.port = _free_port()
            if self.port == 5432:
                raise PgUnavailable("refusing port 5432: that is the machine's own PostgreSQL")
            log_path = self.directory / "postgres.log"
            with open(log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    [*self.cpu_prefix, self.binaries["postgres"], "-D", str(data),
                     "-p", str(self.port), "-k", str(self.directory),
                     "-c", "listen_addresses=127.0.0.1", "-c", "fsync=on",
                     "-c", f"max_connections={self.max_connections}",
                     "-c", "shared_buffers=128MB"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    cwd=self.directory, env=self._env(), start_new_session=True,
                    **self._as_user)
            self._wait(log_path)
            out = self._run([self.binaries["createdb"], "-h", "127.0.0.1", "-p", str(self.port),
                             "-U", "postgres", "rustorium"])
            if out.returncode != 0:
                raise PgUnavailable(f"createdb failed: {(out.stdout + out.stderr)[-2000:]}")
        except BaseException:
            self.stop()
            raise
        return self.url

    def _wait(self, log_path: Path) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise PgUnavailable(f"postgres exited with {self.proc.returncode}: "
                                    f"{log_path.read_text(errors='replace')[-2000:]}")
            ready = self._run([self.binaries["pg_isready"], "-q", "-h", "127.0.0.1",
                               "-p", str(self.port), "-U", "postgres"], timeout=10)
            if ready.returncode == 0:
                return
            time.sleep(0.1)
        raise PgUnavailable(f"postgres did not answer on port {self.port} within "
                            f"{STARTUP_TIMEOUT:.0f} s")

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL after 30 s; remove the directory."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.directory is not None:
            if os.environ.get("BENCH_KEEP_WORKDIR"):
                print(f"[bench] kept {self.directory}", flush=True)
            else:
                shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

