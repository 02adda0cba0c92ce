"""
The ``rustorium`` and ``twistd rustorium`` commands run as a newcomer runs
them: their version, their usage errors, and ``rustorium keys`` on a
database that is not there.
"""

import subprocess
from pathlib import Path

import pytest

from rustorium import __version__
from tests.integration.conftest import BIN, environment


def run(*command: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / command[0]), *command[1:]], env=environment(), cwd=cwd,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("command", [["rustorium", "--version"],
                                     ["twistd", "rustorium", "--version"]])
def test_version(command):
    result = run(*command)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"rustorium {__version__}\n"


def test_help_shows_the_version():
    result = run("twistd", "rustorium", "--help")
    assert result.returncode == 0, result.stderr
    assert f"rustorium {__version__}" in result.stdout


@pytest.mark.parametrize("arguments, message", [
    (["--heartbeat-interval", "nope"], "setting 'heartbeat-interval' must be a number"),
    (["--no-such-option"], "option --no-such-option not recognized"),
])
def test_usage_error_is_short(arguments, message):
    """
    A usage error of ``twistd rustorium`` ends with its one-line message,
    after a pointer to --help rather than twistd's 70-odd lines of it.
    """
    result = run("twistd", "rustorium", *arguments)
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).splitlines()
    assert len(lines) <= 4, lines
    assert lines[-1].endswith(f"twistd rustorium: {message}"), lines
    assert "twistd rustorium --help" in lines[-2]


@pytest.mark.parametrize("action", [["create"], ["list"], ["revoke", "1"]])
def test_keys_refuse_a_missing_database(tmp_path, action):
    """
    ``rustorium keys`` on a database that does not exist (a typo, or the
    default in the wrong directory) says so in one line, exits 1 and
    creates nothing.
    """
    for database in (["--database", "sqlite:typo.db"], []):
        result = run("rustorium", "keys", action[0], *database, *action[1:], cwd=tmp_path)
        assert result.returncode == 1
        assert result.stdout == ""
        (line,) = result.stderr.splitlines()
        name = "typo.db" if database else "rustorium.db"
        assert line.startswith(f"rustorium: no database at {tmp_path / name} "), line
    assert list(tmp_path.iterdir()) == []


def test_keys_create_database_when_asked(tmp_path):
    """
    ``keys create --create-database`` makes the database, and the key is
    listed from then on.
    """
    created = run("rustorium", "keys", "create", "--create-database", "--name", "early",
                  cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines()[-1].startswith("rk_")
    assert (tmp_path / "rustorium.db").exists()
    listed = run("rustorium", "keys", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "\tearly\tactive\t" in listed.stdout
