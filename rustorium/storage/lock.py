"""
One server per SQLite database: an OS file lock beside the database.

The server keeps the ledger's state in memory and writes it through, so two
servers on one file disagree on balances and collide on transaction
numbers. A server therefore holds C{fcntl.flock} on C{PATH.lock} for as long
as it runs. The kernel drops the lock when the process ends however it ends
(SIGKILL, a crash), so a stale lock file is harmless and never needs
removing. The lock is on the open file, not the process: it survives
twistd's fork into the background.

Only servers take the lock: C{rustorium keys} runs short transactions that
SQLite itself serialises, and must work beside a running server.
"""

import fcntl
import os

import attrs


class DatabaseLockError(RuntimeError):
    """
    The database is held by another running server, or its lock file
    cannot be opened; the message names the database and says what to do.
    """


def lock_path(database: str) -> str:
    """
    The lock file of a database file: beside it, with C{.lock} added, after
    resolving symbolic links so that every name of the file shares a lock.
    """
    return os.path.realpath(database) + ".lock"


@attrs.define
class DatabaseLock:
    """
    The held lock on one database; L{release} it when the server stops.
    """

    database: str
    path: str
    _file: int | None

    def release(self) -> None:
        """
        Let another server use the database (idempotent).
        """
        if self._file is not None:
            os.close(self._file)
            self._file = None

    def record_holder(self) -> None:
        """
        Write this process's id into the lock file, for the message another
        server shows; again after twistd forks into the background.
        """
        if self._file is not None:
            os.ftruncate(self._file, 0)
            os.pwrite(self._file, f"{os.getpid()}\n".encode(), 0)


def lock_database(database: str) -> DatabaseLock:
    """
    Take the lock of the SQLite database file C{database}, without waiting.

    @raise DatabaseLockError: if another live process holds it, or the lock
        file cannot be opened.
    """
    path = lock_path(database)
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        raise DatabaseLockError(f"{database}: directory {directory} does not exist")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise DatabaseLockError(
            f"cannot open the lock file {path} of the database {database}: {e.strerror}"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_pid(fd)
        os.close(fd)
        raise DatabaseLockError(
            f"the database {database} is in use by another running Rustorium server"
            f"{f' (pid {holder})' if holder else ''}; stop it, or give this one "
            f"another --database"
        ) from None
    except OSError as e:
        os.close(fd)
        raise DatabaseLockError(f"cannot lock {path}: {e.strerror}") from None
    lock = DatabaseLock(database, path, fd)
    lock.record_holder()
    return lock


def _read_pid(fd: int) -> int | None:
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip())
    except (OSError, ValueError):
        return None
