"""
Integration fixtures: the real server, started as users start it
(``twistd -n rustorium``) on a free loopback port, and real clients.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KEY_PATTERN = re.compile(rb"demo API key \(shown only now\): (rk_[A-Za-z0-9_-]+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment() -> dict[str, str]:
    """
    The environment for child processes: this checkout first on the path,
    so twistd finds its plugin and code even without an install.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


class ServerProcess:
    """
    A ``twistd -n rustorium`` child process.
    """

    def __init__(
        self, directory: Path, *args: str, port: int | None = None, twistd_args: tuple = (),
        database: str | None = None,
    ) -> None:
        self.directory = directory
        self.twistd_args = tuple(twistd_args)
        self.port = port or free_port()
        self.database = database or f"sqlite:{directory / 'rustorium.db'}"
        self.args = args
        self.log_path = directory / f"server-{self.port}-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [str(BIN / "twistd"), "-n", "--pidfile=", *self.twistd_args, "rustorium",
                "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                "--database", self.database, *self.args]

    def start(self, timeout: float = 20.0) -> "ServerProcess":
        self._log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.directory, env=environment(), stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited at start:\n{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"server did not listen within {timeout} s:\n{self.output()}")

    def run_refused(self, timeout: float = 30.0) -> tuple[int, str]:
        """
        Run a server expected to refuse to start: its exit status and
        output (standard output and error together).
        """
        result = subprocess.run(
            self.command(), cwd=self.directory, env=environment(), timeout=timeout,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        return result.returncode, result.stdout.decode("utf-8", "replace")

    def output(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def demo_key(self, timeout: float = 10.0) -> str:
        """
        The demo key the server logged (waiting for the line: the port may
        accept connections a moment before it is written).
        """
        deadline = time.monotonic() + timeout
        while True:
            match = KEY_PATTERN.search(self.log_path.read_bytes())
            if match:
                return match.group(1).decode()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.02)

    def create_key(self, *args: str) -> str:
        result = subprocess.run(
            [str(BIN / "rustorium"), "keys", "create", "--database", self.database, *args],
            env=environment(), capture_output=True, check=True, cwd=self.directory,
        )
        return result.stdout.decode().splitlines()[-1]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()


@pytest.fixture
def start_server(tmp_path):
    """
    Start servers in a temporary directory; all are stopped at the end.
    """
    started: list[ServerProcess] = []

    def start(
        *args: str, port: int | None = None, twistd_args: tuple = (), database: str | None = None
    ) -> ServerProcess:
        server = ServerProcess(
            tmp_path, *args, port=port, twistd_args=twistd_args, database=database
        ).start()
        started.append(server)
        return server

    yield start
    for server in started:
        try:
            server.stop()
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


@pytest.fixture
def server(start_server):
    """
    A server on the demo genesis with fast ticks.
    """
    return start_server("--tick-interval", "0.2")
