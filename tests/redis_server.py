"""
A throwaway Redis server for tests: a child C{redis-server} on a free
loopback port, keeping nothing on disk, stopped by its process id.

The machine's own Redis (port 6379) is never touched. Without
C{redis-server} the tests that need one are skipped with the reason, unless
C{RUSTORIUM_REQUIRE_SERVICES=1} says a missing server is a failure (CI).
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REQUIRE_SERVICES = "RUSTORIUM_REQUIRE_SERVICES"


def redis_server_binary() -> str:
    """
    The path of C{redis-server}; skips the test (or fails it, when services
    are required) if it is not installed.
    """
    path = shutil.which("redis-server")
    if path is None:
        reason = "redis-server is not installed (Debian package redis-server)"
        if os.environ.get(REQUIRE_SERVICES) == "1":
            pytest.fail(f"{reason}, and {REQUIRE_SERVICES}=1")
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """
    One C{redis-server} child process. The port stays the same across
    L{restart}s, so clients reconnect to the new server as to the old one;
    every start is empty.
    """

    def __init__(self, directory: Path, *options: str, binary: str | None = None) -> None:
        """
        @param options: more C{redis-server} options (C{"--requirepass",
            "secret"}).
        """
        self.directory = directory
        self.options = options
        self.binary = binary or redis_server_binary()
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.log_path = directory / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "RedisServer":
        assert self.port != 6379, "never the machine's own Redis"
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory),
             "--logfile", str(self.log_path), *self.options],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"redis-server exited at start:\n{self.output()}")
            if self.ping():
                return self
            time.sleep(0.02)
        self.kill()
        raise AssertionError(f"redis-server did not answer within {timeout} s:\n{self.output()}")

    def ping(self) -> bool:
        """
        Whether the server answers a PING now.
        """
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
                # A server with a password answers that it wants one.
                return reply.startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def output(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return "(no log)"

    def _signal(self, signum: int, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()

    def stop(self) -> None:
        """
        Shut the server down cleanly (SIGTERM).
        """
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """
        Kill the server at once (SIGKILL), as a crash would.
        """
        self._signal(signal.SIGKILL)

    def restart(self) -> "RedisServer":
        """
        Kill the server and start an empty one on the same port.
        """
        self.kill()
        return self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@pytest.fixture
def redis_server(tmp_path):
    """
    A fresh, empty Redis server for one test, killed after it.
    """
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.kill()
