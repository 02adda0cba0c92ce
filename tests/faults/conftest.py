"""
Fixtures of the fault suite; every test under C{tests/faults/} is marked
C{faults} (C{pytest -m faults} runs the suite alone, C{-m "not faults"}
everything else), and the figures the scenarios measured are printed in a
table at the end of the run (and appended, as JSON lines, to the file
C{RUSTORIUM_FAULT_FIGURES} names, if set).
"""

import json
import os
from pathlib import Path

import pytest

from tests.faults.cluster import FaultCluster
from tests.faults.hosts import NamespaceHost
from tests.services import ServiceUnavailable, skip_or_fail

HERE = Path(__file__).parent
FIGURES: list[tuple[str, dict]] = []


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.faults)


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    terminalreporter.section("fault scenarios: measured figures")
    for scenario, figures in FIGURES:
        shown = ", ".join(f"{name}: {value}" for name, value in figures.items())
        terminalreporter.write_line(f"{scenario}: {shown}")


@pytest.fixture
def figures(request):
    """
    Record a scenario's figures: C{figures(name, {...})} prints them now
    and in the run's summary.
    """

    def record(scenario: str, measured: dict) -> None:
        print(f"{scenario}: {measured}")
        FIGURES.append((scenario, measured))
        path = os.environ.get("RUSTORIUM_FAULT_FIGURES")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps({"test": request.node.name, "scenario": scenario,
                                    **measured}) + "\n")

    return record


def _cluster(tmp_path, host=None):
    try:
        return FaultCluster(tmp_path, host)
    except ServiceUnavailable as e:
        skip_or_fail(str(e))


@pytest.fixture
def cluster(tmp_path):
    """
    A cluster of this test's own (its nodes started by the test).
    """
    cluster = _cluster(tmp_path)
    yield cluster
    cluster.stop()


@pytest.fixture
def namespace_host():
    """
    A test host in a network namespace, or C{None} with the reason printed
    where namespaces cannot be had.
    """
    why = NamespaceHost.check()
    if why is not None:
        print(f"network namespaces unavailable ({why})")
        yield None
        return
    host = NamespaceHost().create()
    try:
        yield host
    finally:
        host.destroy()


@pytest.fixture
def host_cluster(tmp_path, namespace_host):
    """
    A cluster whose services the namespace host (if any) can reach.
    """
    cluster = _cluster(tmp_path, namespace_host)
    yield cluster
    cluster.stop()
