"""
The database lock: one server per SQLite database, never outliving its
holder.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rustorium.storage.lock import DatabaseLockError, lock_database, lock_path


def test_second_lock_refused(tmp_path):
    """
    While one holder has the database, another is refused with a message
    naming the database and the holder's pid; once released, it is free.
    """
    database = str(tmp_path / "r.db")
    first = lock_database(database)
    with pytest.raises(DatabaseLockError) as raised:
        lock_database(database)
    assert database in str(raised.value)
    assert f"pid {os.getpid()}" in str(raised.value)
    first.release()
    first.release()
    lock_database(database).release()


def test_every_name_shares_one_lock(tmp_path):
    """
    A symbolic link to the database is the same database.
    """
    database = tmp_path / "r.db"
    database.touch()
    (tmp_path / "link.db").symlink_to(database)
    assert lock_path(str(tmp_path / "link.db")) == lock_path(str(database))
    held = lock_database(str(database))
    try:
        with pytest.raises(DatabaseLockError):
            lock_database(str(tmp_path / "link.db"))
    finally:
        held.release()


def test_missing_directory(tmp_path):
    with pytest.raises(DatabaseLockError) as raised:
        lock_database(str(tmp_path / "nowhere" / "r.db"))
    assert "does not exist" in str(raised.value)


def test_killed_holder_leaves_no_lock(tmp_path):
    """
    A holder killed with SIGKILL (no clean-up runs) leaves the lock file
    but not the lock.
    """
    database = str(tmp_path / "r.db")
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from rustorium.storage.lock import lock_database; "
         f"lock_database({database!r}); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(DatabaseLockError):
            lock_database(database)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        holder.stdout.close()
    assert os.path.exists(lock_path(database))
    lock_database(database).release()
