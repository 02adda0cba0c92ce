"""
Creating and upgrading the database schema.

``schema/v1.sql`` creates the first schema; ``schema/upgrade-<N>-to-<N+1>.sql``
upgrades one step. An empty database gets the first schema and every upgrade
in one transaction, so new and upgraded databases are made by the same
statements. Each upgrade of an existing database runs in one transaction, so
a failed one leaves the database as it was, and the file is copied aside
before the first step.
"""

import sqlite3
from importlib import resources

from twisted.logger import Logger

LATEST_VERSION = 3

log = Logger()


class SchemaError(RuntimeError):
    """
    A database this version of the server cannot use.
    """


def _script(name: str) -> str:
    return resources.files("rustorium.storage").joinpath(f"schema/{name}").read_text("utf-8")


def current_version(connection: sqlite3.Connection) -> int | None:
    """
    The schema version of a database, or C{None} for an empty one.
    """
    row = connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if row is None:
        return None
    (version,) = connection.execute("SELECT version FROM schema_version").fetchone()
    return int(version)


def _run_script(connection: sqlite3.Connection, script: str) -> None:
    try:
        connection.executescript("BEGIN IMMEDIATE;\n" + script + "\nCOMMIT;")
    except BaseException:
        if connection.in_transaction:
            connection.rollback()
        raise


def prepare_schema(
    connection: sqlite3.Connection, path: str, latest: int = LATEST_VERSION
) -> tuple[int | None, int]:
    """
    Create the schema in an empty database, or upgrade an older one in place.

    @param path: the database file, copied to C{PATH.v<N>.bak} before the
        first upgrade step.
    @return: the version found (C{None} if empty) and the version now.
    @raise SchemaError: if the database is newer than this server.
    """
    found = current_version(connection)
    if found is None:
        scripts = [_script("v1.sql")]
        scripts += [_script(f"upgrade-{v}-to-{v + 1}.sql") for v in range(1, latest)]
        _run_script(connection, "\n".join(scripts))
        return None, latest
    if found > latest:
        raise SchemaError(
            f"{path}: schema version {found} was written by a newer Rustorium "
            f"(this one knows up to {latest})"
        )
    if found < latest:
        backup = f"{path}.v{found}.bak"
        with sqlite3.connect(backup) as target:
            connection.backup(target)
        target.close()
        log.info(
            "Upgrading database {path} from schema {found} to {latest}; "
            "a copy of the old one is {backup}",
            path=path, found=found, latest=latest, backup=backup,
        )
        for version in range(found, latest):
            _run_script(connection, _script(f"upgrade-{version}-to-{version + 1}.sql"))
    return found, latest
