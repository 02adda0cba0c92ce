"""
The worker supervisor of ``--workers N``, on a fake reactor: what it runs,
how it restarts a child that dies, and how it stops them all.
"""

import signal

import pytest
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.python.failure import Failure

from rustorium.config import Settings, load_toml
from rustorium.tap import Options, _child_twistd_args
from rustorium.workers import (
    RESTART_DELAYS,
    STOP_GRACE,
    TWISTD,
    WorkerSupervisor,
    settings_as_toml,
)

CLUSTER = {
    "broker": "redis://127.0.0.1:6390/0",
    "database": "postgresql://postgres@127.0.0.1:5439/rustorium",
    "listen": ["tcp:8765:interface=127.0.0.1"],
}


class Process:
    def __init__(self, protocol, pid):
        self.protocol = protocol
        self.pid = pid
        self.signals: list[int] = []

    def signalProcess(self, number):
        self.signals.append(number)

    def end(self, reason=None):
        self.protocol.processEnded(Failure(reason or ProcessDone(0)))


class Reactor(Clock):
    def __init__(self):
        super().__init__()
        self.spawned: list[tuple[list[str], Process]] = []

    def spawnProcess(self, protocol, executable, args, env=None, childFDs=None):
        assert executable == args[0]
        process = Process(protocol, 1000 + len(self.spawned))
        self.spawned.append((args, process))
        return process


def supervisor(tmp_path, workers=2, **settings):
    reactor = Reactor()
    config = Settings.from_sources({**CLUSTER, "workers": workers, **settings})
    service = WorkerSupervisor(
        config, reactor, ("--logger", "rustorium.logs.json_observer"),
        executable="/venv/bin/python", directory=str(tmp_path),
    )
    return service, reactor


def test_settings_survive_the_trip_through_a_child_config_file(tmp_path):
    settings = Settings.from_sources({
        **CLUSTER, "heartbeat-interval": 7.5, "allowed-origins": ["https://a.example"],
        "write-through": False, "genesis": 'dir "x"/genesis.json',
    })
    path = tmp_path / "child.toml"
    path.write_text(settings_as_toml(settings, workers=1, **{"node-name": "n-1"}))
    again = Settings.from_sources(load_toml(str(path)))
    assert again == Settings.from_sources(
        {**CLUSTER, "heartbeat-interval": 7.5, "allowed-origins": ["https://a.example"],
         "write-through": False, "genesis": 'dir "x"/genesis.json', "node-name": "n-1"}
    )


def test_starts_one_named_node_per_worker_on_a_shared_port(tmp_path):
    service, reactor = supervisor(tmp_path, workers=3, **{"node-name": "ws"})
    service.startService()
    assert len(reactor.spawned) == 3
    names = []
    for args, _ in reactor.spawned:
        assert args[:5] == ["/venv/bin/python", "-c", TWISTD, "--nodaemon", "--pidfile="]
        assert args[5:9] == ["--logger", "rustorium.logs.json_observer", "rustorium", "--config"]
        child = Settings.from_sources(load_toml(args[9]))
        assert (child.workers, child.reuse_port) == (1, True)
        assert child.listen == ("tcp:8765:interface=127.0.0.1",)
        names.append(child.node_name)
    assert names == ["ws-1", "ws-2", "ws-3"]


def test_restarts_a_child_that_dies_after_a_growing_pause(tmp_path):
    service, reactor = supervisor(tmp_path, workers=1)
    service.startService()
    for attempt, delay in enumerate(RESTART_DELAYS[:3], start=1):
        reactor.spawned[-1][1].end(ProcessTerminated(signal=signal.SIGKILL))
        assert len(reactor.spawned) == attempt
        reactor.advance(delay - 0.01)
        assert len(reactor.spawned) == attempt, "not restarted before its pause"
        reactor.advance(0.01)
        assert len(reactor.spawned) == attempt + 1


def test_stop_terms_every_child_and_waits_for_them(tmp_path):
    service, reactor = supervisor(tmp_path, workers=2)
    service.startService()
    stopped = service.stopService()
    processes = [p for _, p in reactor.spawned]
    assert [p.signals for p in processes] == [[signal.SIGTERM], [signal.SIGTERM]]
    assert not stopped.called
    processes[0].end()
    assert not stopped.called
    processes[1].end()
    assert stopped.called
    reactor.advance(100)
    assert len(reactor.spawned) == 2, "nothing is restarted while stopping"
    assert [p.signals for p in processes] == [[signal.SIGTERM], [signal.SIGTERM]]


def test_stop_kills_a_child_that_does_not_exit(tmp_path):
    service, reactor = supervisor(tmp_path, workers=1)
    service.startService()
    service.stopService()
    process = reactor.spawned[0][1]
    reactor.advance(Settings().close_timeout + STOP_GRACE)
    assert process.signals == [signal.SIGTERM, signal.SIGKILL]


def test_stop_cancels_a_pending_restart(tmp_path):
    service, reactor = supervisor(tmp_path, workers=1)
    service.startService()
    reactor.spawned[0][1].end(ProcessTerminated(exitCode=1))
    assert service.stopService().called
    reactor.advance(60)
    assert len(reactor.spawned) == 1


@pytest.mark.parametrize(
    "flags",
    [
        ["--workers", "2"],
        ["--workers", "2", "--broker", CLUSTER["broker"]],
        ["--workers", "2", "--database", CLUSTER["database"]],
    ],
)
def test_more_than_one_worker_needs_a_shared_broker_and_database(flags):
    with pytest.raises(usage.UsageError, match="--workers 2 needs state the workers can share"):
        Options().parseOptions(flags)


def test_children_get_the_logger_and_reactor_options():
    argv = ["twistd", "-n", "--pidfile=", "--logger", "x.y", "--reactor=epoll", "rustorium",
            "--workers", "2"]
    assert _child_twistd_args(argv) == ["--logger", "x.y", "--reactor=epoll"]
