"""
What the fault scenarios run on: throwaway Redis and PostgreSQL that can be
killed, crashed, frozen and restarted on the same port, and a test host in
a network namespace of its own that can be cut off from them.

A L{NamespaceHost} is a network namespace joined to the root namespace by
two veth links on addresses of 198.18.0.0/15 (the range set aside for
network tests, RFC 2544), which never leave the machine: a services link,
over which a node in the namespace reaches Redis and PostgreSQL, and a
clients link, over which the test's clients reach the node. Cutting the
services link (its inner end taken down) is a partition: the node's packets
to Redis and PostgreSQL are dropped, nothing tells it so, and its clients
stay connected. Namespaces need root and iproute2; L{NamespaceHost.check}
says why they cannot be had, so a scenario can fall back and say so.
"""

import os
import shutil
import signal
import subprocess
import time
from ipaddress import ip_network

from tests.redis_server import RedisServer
from tests.services import PostgresServer


def _ip(*args: str, namespace: str | None = None) -> None:
    command = ["ip", *args] if namespace is None else ["ip", "netns", "exec", namespace,
                                                       "ip", *args]
    subprocess.run(command, check=True, capture_output=True, timeout=10)


class NamespaceHost:
    """
    A test host in a network namespace (see the module docstring).

    @ivar services_address: where, seen from the host, Redis and
        PostgreSQL listen (the root end of the services link).
    @ivar address: the host's own address on the clients link, where the
        test's clients reach what it runs.
    """

    def __init__(self) -> None:
        pid = os.getpid()
        block = pid % 250
        self.namespace = f"rustorium-fault-{pid}"
        self._services = (f"rfs{pid}a", f"rfs{pid}b")
        self._clients = (f"rfc{pid}a", f"rfc{pid}b")
        self.services_address = f"198.18.{block}.1"
        self._inner_services = f"198.18.{block}.2"
        self._outer_clients = f"198.18.{block}.5"
        self.address = f"198.18.{block}.6"
        self.created = False

    @staticmethod
    def check() -> str | None:
        """
        Why namespaces cannot be used here, or C{None} if they can
        (C{RUSTORIUM_FAULTS_NETNS=0} forbids them, to try the fallback).
        """
        if os.environ.get("RUSTORIUM_FAULTS_NETNS") == "0":
            return "RUSTORIUM_FAULTS_NETNS=0"
        if os.geteuid() != 0:
            return "network namespaces need root"
        if shutil.which("ip") is None:
            return "iproute2's ip is not installed"
        probe = f"rustorium-probe-{os.getpid()}"
        try:
            _ip("netns", "add", probe)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
            return f"ip netns add failed: {getattr(e, 'stderr', b'').decode().strip() or e}"
        _ip("netns", "del", probe)
        return None

    def create(self) -> "NamespaceHost":
        ns = self.namespace
        _ip("netns", "add", ns)
        self.created = True
        _ip("link", "set", "lo", "up", namespace=ns)
        for (outer, inner), (outer_address, inner_address) in (
            (self._services, (self.services_address, self._inner_services)),
            (self._clients, (self._outer_clients, self.address)),
        ):
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("addr", "add", f"{outer_address}/30", "dev", outer)
            _ip("link", "set", outer, "up")
            _ip("addr", "add", f"{inner_address}/30", "dev", inner, namespace=ns)
            _ip("link", "set", inner, "up", namespace=ns)
        return self

    def command(self, argv: list[str]) -> list[str]:
        """
        C{argv} run inside the namespace (C{ip netns exec} execs it: the
        process id is the command's own).
        """
        return ["ip", "netns", "exec", self.namespace, *argv]

    def cut(self) -> None:
        """
        Cut the host off from the services: packets both ways are dropped.
        """
        _ip("link", "set", self._services[1], "down", namespace=self.namespace)

    def heal(self) -> None:
        _ip("link", "set", self._services[1], "up", namespace=self.namespace)

    def destroy(self) -> None:
        if not self.created:
            return
        for outer, _ in (self._services, self._clients):
            subprocess.run(["ip", "link", "del", outer], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=10)
        self.created = False


class FaultRedis(RedisServer):
    """
    A throwaway Redis that also listens on C{extra_addresses}, with the
    history a scenario needs to keep whole.
    """

    def __init__(self, directory, extra_addresses: tuple[str, ...] = ()) -> None:
        # Protected mode would refuse the namespace host: Redis listens on
        # the loopback and the test's own link only.
        super().__init__(directory, "--bind", "127.0.0.1", *extra_addresses,
                         "--protected-mode", "no", "--maxmemory-policy", "noeviction")
        self._frozen = False

    def freeze(self) -> None:
        """
        Stop the process (SIGSTOP): connections stay open, nothing answers.
        """
        os.kill(self.process.pid, signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        if self._frozen:
            os.kill(self.process.pid, signal.SIGCONT)
            self._frozen = False


class FaultPostgres(PostgresServer):
    """
    A throwaway PostgreSQL that also listens on C{extra_addresses} (trusted
    like the loopback), and can be crashed as a power cut would: SIGKILL of
    the postmaster alone.
    """

    def __init__(self, extra_addresses: tuple[str, ...] = ()) -> None:
        self.extra_addresses = extra_addresses
        super().__init__()
        self._frozen = False

    def command(self) -> list[str]:
        command = super().command()
        if self.extra_addresses:
            index = command.index("listen_addresses=127.0.0.1")
            command[index] = "listen_addresses=" + ",".join(("127.0.0.1", *self.extra_addresses))
        return command

    def _start_once(self) -> None:
        if not self._initialised and self.extra_addresses:
            self._initdb_then_trust()
        super()._start_once()

    def _initdb_then_trust(self) -> None:
        result = subprocess.run(
            [self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"],
            stdin=subprocess.DEVNULL, capture_output=True, cwd=self.directory,
            **self.popen_kwargs(),
        )
        if result.returncode != 0:
            raise AssertionError("initdb failed:\n"
                                 + (result.stdout + result.stderr).decode("utf-8", "replace"))
        with open(self.data / "pg_hba.conf", "a") as hba:
            for address in self.extra_addresses:
                # The clients come from the other end of a /30 link.
                hba.write(f"host all all {ip_network(address + '/30', strict=False)} trust\n")
        self._initialised = True

    def crash(self, timeout: float = 20.0) -> None:
        """
        SIGKILL the postmaster alone, as a crash would; its backends notice
        and exit, and the next start recovers from the write-ahead log.
        """
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.killpg(self.process.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            # Backends that outstayed their postmaster.
            os.killpg(self.process.pid, signal.SIGKILL)
        self._group = None

    def start_again(self) -> None:
        """
        Start on the same port and data after a L{crash} or L{stop}.
        """
        self._start_once()

    def freeze(self) -> None:
        """
        Stop every process of the server (SIGSTOP): connections stay open
        and nothing answers.
        """
        os.killpg(self.process.pid, signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        if self._frozen:
            os.killpg(self.process.pid, signal.SIGCONT)
            self._frozen = False
