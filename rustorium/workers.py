"""
Several worker processes on one host, sharing its listening ports.

``twistd -n rustorium --workers N`` does not serve by itself: it starts N
child processes, each a whole node of the cluster (``twistd -n rustorium``
with the same settings and a node name of its own), and watches them. Each
child listens on the same ports with C{SO_REUSEPORT}, so the kernel spreads
new connections over them (the approach of Crossbar's shared ports); the
children share state through the broker and the database like nodes on
different hosts.

The supervisor restarts a child that dies, after a pause that grows while
it keeps dying, and on SIGTERM stops every child with SIGTERM (each closes
its connections with 4200 and finishes its commits), waiting for them
before it exits itself.
"""

import os
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from .config import SETTINGS, Settings

RESTART_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds before restarting a child that died, by how often it died
within the last minute."""

TWISTD = "from twisted.scripts.twistd import run; run()"
"""The twistd command, run by this Python whatever its install's scripts."""

STOP_GRACE = 10.0
"""Seconds a child gets beyond its close timeout to exit on SIGTERM before
it is killed."""


def default_node_name() -> str:
    """
    This process's node name when none is configured: host and pid.
    """
    return f"{socket.gethostname()}-{os.getpid()}"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def settings_as_toml(settings: Settings, **overrides: object) -> str:
    """
    A TOML settings file that gives a child process exactly these
    settings (with C{overrides}, by hyphenated name).
    """
    lines = []
    for setting in SETTINGS:
        value = overrides.get(setting.name, getattr(settings, setting.attribute))
        if value is not None:
            lines.append(f"{setting.name} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


@attrs.define(eq=False)
class _Child:
    index: int
    name: str
    config: str
    transport: Any = None
    exited: Deferred | None = None
    deaths: list[float] = attrs.Factory(list)
    restart: Any = None


class _ChildProtocol(ProcessProtocol):
    def __init__(self, supervisor: "WorkerSupervisor", child: _Child) -> None:
        self._supervisor = supervisor
        self._child = child

    def processEnded(self, reason: Any) -> None:
        self._supervisor._ended(self._child, reason.value)


class WorkerSupervisor(Service):
    """
    Starts, watches and stops the worker processes.

    @ivar children: one entry per worker, with its node name.
    """

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        reactor: Any,
        twistd_args: Sequence[str] = (),
        executable: str = sys.executable,
        directory: str | None = None,
    ) -> None:
        """
        @param twistd_args: twistd's own options for the children (such as
            C{--logger}), placed before the plugin name.
        @param directory: where the children's settings files are written.
        """
        self._settings = settings
        self._reactor = reactor
        self._twistd_args = tuple(twistd_args)
        self._executable = executable
        self._directory = directory or tempfile.mkdtemp(prefix="rustorium-workers-")
        base = settings.node_name or default_node_name()
        self.children = [
            _Child(index, f"{base}-{index}", self._write_config(index, f"{base}-{index}"))
            for index in range(1, settings.workers + 1)
        ]
        self._stopping = False

    def _write_config(self, index: int, name: str) -> str:
        path = os.path.join(self._directory, f"worker-{index}.toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(settings_as_toml(
                self._settings, workers=1, **{"node-name": name, "reuse-port": True}
            ))
        return path

    def command(self, child: _Child) -> list[str]:
        """
        The command line that runs one worker.
        """
        return [
            self._executable, "-c", TWISTD, "--nodaemon", "--pidfile=",
            *self._twistd_args, "rustorium", "--config", child.config,
        ]

    def startService(self) -> None:
        super().startService()
        self.log.info("Starting {count} workers", count=len(self.children))
        for child in self.children:
            self._spawn(child)

    def _spawn(self, child: _Child) -> None:
        child.restart = None
        if self._stopping:
            return
        child.exited = Deferred()
        args = self.command(child)
        child.transport = self._reactor.spawnProcess(
            _ChildProtocol(self, child), args[0], args, env=dict(os.environ),
            childFDs={0: "w", 1: 1, 2: 2},
        )
        self.log.info("Worker {name} started (pid {pid})", name=child.name,
                      pid=child.transport.pid)

    def _ended(self, child: _Child, reason: Any) -> None:
        exited, child.exited, child.transport = child.exited, None, None
        if self._stopping:
            self.log.info("Worker {name} stopped", name=child.name)
        else:
            now = self._reactor.seconds()
            child.deaths = [t for t in child.deaths if t > now - 60] + [now]
            delay = RESTART_DELAYS[min(len(child.deaths), len(RESTART_DELAYS)) - 1]
            self.log.warn("Worker {name} exited ({reason}); restarting it in {delay:g} s",
                          name=child.name, reason=reason, delay=delay)
            child.restart = self._reactor.callLater(delay, self._spawn, child)
        if exited is not None:
            exited.callback(None)

    def stopService(self) -> Deferred:
        """
        SIGTERM every worker and wait until each has exited (killing one
        that takes longer than its close timeout and a grace period).
        """
        super().stopService()
        self._stopping = True
        waits = []
        for child in self.children:
            if child.restart is not None and child.restart.active():
                child.restart.cancel()
            if child.transport is None:
                continue
            waits.append(child.exited)
            self._signal(child, signal.SIGTERM)
            kill = self._reactor.callLater(
                self._settings.close_timeout + STOP_GRACE, self._signal, child, signal.SIGKILL
            )
            child.exited.addBoth(lambda result, kill=kill: kill.active() and kill.cancel())
        if not waits:
            return succeed(None)
        return DeferredList(waits).addCallback(lambda _: None)

    def _signal(self, child: _Child, number: int) -> None:
        if child.transport is not None:
            try:
                child.transport.signalProcess(number)
            except OSError:
                pass
