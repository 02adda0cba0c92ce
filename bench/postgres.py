"""
A throwaway PostgreSQL for one measurement (the bench may not import
``tests/``; ``tests/services.py`` has the tests' equivalent).

``initdb`` into a temporary directory, then ``postgres`` on a free
loopback port (never the machine's own server on 5432), its socket in that
directory, trust authentication for the ``postgres`` user and durable
commits: ``fsync = on``, ``synchronous_commit = on`` (PostgreSQL's
defaults, written out so that nobody mistakes the figures for those of an
unsafe setup).  As root, both run as the ``postgres`` user, which owns the
directory (PostgreSQL refuses to run as root).  Stopped by its process id
with PostgreSQL's fast shutdown, its directory removed.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from servers import SetupError, free_port, log, pin, tail

USER = "postgres"
DATABASE = "rustorium"
SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_connections": "200",
    "shared_buffers": "128MB",
    # Keep the measurement free of a checkpoint's burst of writes: a
    # checkpoint every 5 minutes or 1 GB of WAL, whichever first (a run
    # lasts seconds).
    "max_wal_size": "1GB",
    "log_min_messages": "warning",
}


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else the newest ``/usr/lib/postgresql/*/bin/name``."""
    found = shutil.which(name)
    if found:
        return found
    matches = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
                     key=lambda p: [int(s) for s in p.split("/") if s.isdigit()], reverse=True)
    return matches[0] if matches else None


def available() -> str | None:
    """Why PostgreSQL cannot be started here, or None when it can."""
    if not find_binary("initdb") or not find_binary("postgres"):
        return ("PostgreSQL is not installed (no initdb/postgres on PATH or in "
                "/usr/lib/postgresql/*/bin; Debian package postgresql)")
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam(USER)
        except KeyError:
            return f"running as root and there is no {USER!r} user to run PostgreSQL as"
    return None


class PostgresProcess:
    """
    One throwaway PostgreSQL server with an empty ``rustorium`` database.

    ``cpu`` pins it (all its processes inherit the affinity): the bench
    puts it on the generator's core, standing for the database host of a
    cluster, so that the node's core is the node's alone.
    """

    def __init__(self, cpu: int | None = None, settings: dict[str, str] | None = None) -> None:
        why = available()
        if why:
            raise SetupError(why)
        self.initdb, self.postgres = find_binary("initdb"), find_binary("postgres")
        # Its own directory under the system's temporary one (a server's
        # scratch directory is private to root; PostgreSQL runs as postgres).
        self.directory = Path(tempfile.mkdtemp(prefix="bench-postgres-"))
        self.data = self.directory / "data"
        self.log_path = self.directory / "postgres.log"
        self._as_user: dict = {}
        if os.geteuid() == 0:
            import pwd

            entry = pwd.getpwnam(USER)
            self._as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self.port = free_port()
        if self.port == 5432:
            raise SetupError("refusing port 5432: that is the machine's own PostgreSQL")
        self.proc: subprocess.Popen | None = None
        try:
            self._initdb()
            self._start(cpu, {**SETTINGS, **(settings or {})})
            self._create_database()
        except BaseException:
            self.stop()
            raise

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", HOME=str(self.directory))
        return env

    def _initdb(self) -> None:
        # --no-sync: the cluster's files are new and thrown away; commits
        # made afterwards are fsynced as usual (fsync = on).
        out = subprocess.run(
            [self.initdb, "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
             "--locale=C.UTF-8", "--no-sync"],
            stdin=subprocess.DEVNULL, capture_output=True, cwd=self.directory, env=self._env(),
            timeout=120, **self._as_user)
        if out.returncode != 0:
            raise SetupError("initdb failed:\n" + (out.stdout + out.stderr).decode(
                "utf-8", "replace")[-2000:])

    def _start(self, cpu: int | None, settings: dict[str, str]) -> None:
        argv = [self.postgres, "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.directory)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        with open(self.log_path, "ab") as logf:
            os.chown(self.log_path, *(
                (self._as_user["user"], self._as_user["group"]) if self._as_user else (-1, -1)))
            self.proc = subprocess.Popen(
                [*(pin(cpu) if cpu is not None else []), *argv], stdin=subprocess.DEVNULL,
                stdout=logf, stderr=subprocess.STDOUT, cwd=self.directory, env=self._env(),
                start_new_session=True, **self._as_user)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SetupError(f"postgres exited with {self.proc.returncode}; log:\n"
                                 f"{tail(self.log_path)}")
            if self._psql("SELECT 1", database="postgres", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise SetupError(f"postgres did not answer on port {self.port} within 60 s")

    def _psql(self, sql: str, database: str = DATABASE,
              check: bool = True) -> subprocess.CompletedProcess:
        """Run one statement with ``psql`` (no Python driver needed here)."""
        psql = find_binary("psql")
        if psql is None:
            raise SetupError("psql is not installed")
        out = subprocess.run(
            [psql, "-X", "-q", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER,
             "-d", database, "-v", "ON_ERROR_STOP=1", "-c", sql],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, env=self._env(),
            timeout=60)
        if check and out.returncode != 0:
            raise SetupError(f"psql {sql!r} failed: {out.stderr.strip()[-1000:]}")
        return out

    def query(self, sql: str, database: str = DATABASE) -> str:
        """One statement's output (unaligned, tuples only)."""
        return self._psql(sql, database).stdout.strip()

    def _create_database(self) -> None:
        self._psql(f'CREATE DATABASE "{DATABASE}"', database="postgres")

    @property
    def url(self) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def pids(self) -> list[int]:
        """The postmaster and every process it started (backends, writers)."""
        if not self.proc:
            return []
        found = [self.proc.pid]
        for stat in glob.glob("/proc/[0-9]*/stat"):
            try:
                text = Path(stat).read_text()
            except OSError:
                continue
            fields = text[text.rfind(")") + 2:].split()
            if int(fields[1]) == self.proc.pid:
                found.append(int(stat.split("/")[2]))
        return found

    def version(self) -> str:
        out = subprocess.run([self.postgres, "--version"], check=False, capture_output=True,
                             text=True).stdout.split()
        return out[2] if len(out) > 2 else "?"

    def stop(self) -> None:
        """Fast shutdown (SIGINT), then SIGKILL of its whole group; remove the files."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                pass
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log(f"postgres {self.proc.pid} did not exit")
        if os.environ.get("BENCH_KEEP_WORKDIR"):
            log(f"kept {self.directory}")
        else:
            shutil.rmtree(self.directory, ignore_errors=True)

