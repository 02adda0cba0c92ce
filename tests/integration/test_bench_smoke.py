"""
The benchmark harness keeps working: its smoke mode (fan-out to 20
clients for 2 seconds against the real server) measures deliveries.
"""

import shutil
import subprocess
import sys

import pytest

from tests.integration.conftest import ROOT, environment


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the load generator is compiled C")
def test_bench_smoke():
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke"],
        cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "deliv" in output, output
