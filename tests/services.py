"""
Throwaway PostgreSQL servers for tests (Redis: L{tests.redis_server}).

Each server is started from the installed binaries, as a child process in
a session (and so a process group) of its own, on a free loopback port, with
its data in a temporary directory; it is stopped by its process id and its
directory removed. The machine's own servers on the standard ports are never
touched. Fault tests make their own instance and L{kill} or L{restart} it.

Where the binaries are missing the fixtures skip, saying why; with
C{RUSTORIUM_REQUIRE_SERVICES=1} (as CI sets) they fail instead.
"""

import atexit
import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest

STARTUP_TIMEOUT = 60.0


class ServiceUnavailable(Exception):
    """
    A server's binaries are not installed, or it would not start.
    """


def services_required() -> bool:
    """
    Whether a missing service fails tests rather than skipping them.
    """
    return os.environ.get("RUSTORIUM_REQUIRE_SERVICES") == "1"


def skip_or_fail(reason: str) -> None:
    """
    Skip the test for C{reason}, or fail it when services are required.
    """
    if services_required():
        pytest.fail(f"{reason} (RUSTORIUM_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """
    A loopback port free now (a server that loses the race fails to start
    and is retried on another).
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _find(name: str, patterns: tuple[str, ...] = ()) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for pattern in patterns:
        # The newest installed version first: /usr/lib/postgresql/15/bin, ...
        matches = sorted(glob.glob(pattern), key=lambda p: [int(s) for s in p.split("/")
                                                           if s.isdigit()], reverse=True)
        if matches:
            return matches[0]
    return None


_running: set["_ServerProcess"] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_running):
        server.kill()


class _ServerProcess:
    """
    A server as a child process in its own process group, started on a
    fixed port in a temporary directory, stopped by its id.
    """

    name = "server"
    stop_signal = signal.SIGTERM

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix=f"rustorium-{self.name}-"))
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        # The server's process group (its own, numbered by its leader's id)
        # until it has been ended.
        self._group: int | None = None
        self.log_path = self.directory / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def popen_kwargs(self) -> dict:
        return {}

    def ready(self) -> bool:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> "_ServerProcess":
        """
        Start the server and wait until it answers; on a port lost to
        another process, try another (only before the first start: a
        restarted server keeps its port, so URLs handed out stay valid).
        """
        attempts = 3 if self.port is None else 1
        for attempt in range(attempts):
            if self.port is None or attempt > 0:
                self.port = free_port()
            try:
                self._start_once()
                break
            except ServiceUnavailable:
                if attempt == attempts - 1:
                    raise
        return self

    def _start_once(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.directory, start_new_session=True, **self.popen_kwargs(),
            )
        self._group = self.process.pid
        _running.add(self)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self._end_group()
                raise ServiceUnavailable(
                    f"{self.name} exited at start (status {self.process.returncode}):\n"
                    + self.output()
                )
            if self.ready():
                return
            time.sleep(0.05)
        self.kill()
        raise ServiceUnavailable(f"{self.name} did not answer within {STARTUP_TIMEOUT} s:\n"
                                 + self.output())

    def output(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 30.0) -> None:
        """
        Shut the server down cleanly, waiting for it to exit.
        """
        if self.running:
            os.kill(self.process.pid, self.stop_signal)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                raise
        # Children that outlive their leader (none should) go too.
        self._end_group()

    def kill(self) -> None:
        """
        Kill the server and every process of its group at once (SIGKILL),
        as a crash would: nothing is flushed or closed.
        """
        self._end_group()
        if self.process is not None:
            self.process.wait(10)

    def _end_group(self) -> None:
        if self._group is not None:
            try:
                os.killpg(self._group, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._group = None
        _running.discard(self)

    def restart(self) -> "_ServerProcess":
        """
        Stop (if running) and start again on the same port and data.
        """
        self.stop()
        self._start_once()
        return self

    def cleanup(self) -> None:
        """
        Stop the server and remove its directory.
        """
        try:
            self.stop()
        finally:
            self.kill()
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.cleanup()


class PostgresServer(_ServerProcess):
    """
    A throwaway PostgreSQL cluster: C{initdb} into a temporary directory,
    then C{postgres} on 127.0.0.1 only, its socket in that directory, trust
    authentication for the C{postgres} user, durable commits (C{fsync=on}).

    PostgreSQL refuses to run as root: as root, both run as the C{postgres}
    user, which owns the directory. C{stop()} is PostgreSQL's fast shutdown
    (SIGINT: clients are disconnected); its SIGTERM ("smart") would wait
    for every client of the pool to leave first.
    """

    name = "postgres"
    stop_signal = signal.SIGINT
    user = "postgres"
    _BIN_PATTERNS = ("/usr/lib/postgresql/*/bin/{}",)

    def __init__(self) -> None:
        self.initdb = _find("initdb", tuple(p.format("initdb") for p in self._BIN_PATTERNS))
        self.postgres = _find("postgres", tuple(p.format("postgres") for p in self._BIN_PATTERNS))
        if not self.initdb or not self.postgres:
            raise ServiceUnavailable(
                "PostgreSQL is not installed (no initdb/postgres on PATH or in "
                "/usr/lib/postgresql/*/bin; apt-get install postgresql)"
            )
        super().__init__()
        self._databases = itertools.count(1)
        self._as_user: dict = {}
        if os.geteuid() == 0:
            import pwd

            try:
                entry = pwd.getpwnam(self.user)
            except KeyError:
                self.cleanup()
                raise ServiceUnavailable(
                    f"running as root and there is no {self.user!r} user to run PostgreSQL as"
                ) from None
            # Popen's user= switches in the child before exec, so the id we
            # hold is the server's own (runuser would stand between).
            self._as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        self.data = self.directory / "data"
        self._initialised = False

    def popen_kwargs(self) -> dict:
        return dict(self._as_user, env=self._environment())

    def _environment(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C.UTF-8", LANG="C.UTF-8", HOME=str(self.directory))
        return env

    def command(self) -> list[str]:
        return [
            self.postgres, "-D", str(self.data), "-p", str(self.port),
            "-k", str(self.directory),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=on",
            "-c", "max_connections=200",
            "-c", "shared_buffers=32MB",
        ]

    def _start_once(self) -> None:
        if not self._initialised:
            result = subprocess.run(
                [self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust",
                 "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
                stdin=subprocess.DEVNULL, capture_output=True, cwd=self.directory,
                **self.popen_kwargs(),
            )
            if result.returncode != 0:
                raise ServiceUnavailable(
                    "initdb failed:\n" + (result.stdout + result.stderr).decode("utf-8", "replace")
                )
            self._initialised = True
        super()._start_once()
        self._create_database("rustorium", if_missing=True)

    def ready(self) -> bool:
        try:
            psycopg.connect(self.url_for("postgres"), connect_timeout=2).close()
            return True
        except psycopg.OperationalError:
            return False

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        """
        The URL of the C{rustorium} database.
        """
        return self.url_for("rustorium")

    def _create_database(self, name: str, if_missing: bool = False) -> None:
        with psycopg.connect(self.url_for("postgres"), autocommit=True) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not (exists and if_missing):
                connection.execute(f'CREATE DATABASE "{name}"')

    def fresh_database(self) -> str:
        """
        Create an empty database and return its URL: tests on one server
        stay isolated.
        """
        name = f"test_{os.getpid()}_{next(self._databases)}"
        self._create_database(name)
        return self.url_for(name)


def start_service(kind: type[_ServerProcess]) -> _ServerProcess:
    """
    Start a server of this kind for a test, or skip (fail, when required)
    saying why it cannot run.
    """
    try:
        server = kind()
    except ServiceUnavailable as e:
        skip_or_fail(str(e))
    try:
        return server.start()
    except ServiceUnavailable as e:
        server.cleanup()
        skip_or_fail(str(e))
        raise


@pytest.fixture(scope="session")
def postgres_server():
    """
    One throwaway PostgreSQL for the session; tests that kill or restart
    their server make their own L{PostgresServer}.
    """
    server = start_service(PostgresServer)
    yield server
    server.cleanup()


@pytest.fixture
def postgres_url(postgres_server):
    """
    The URL of an empty database of its own for this test.
    """
    return postgres_server.fresh_database()
