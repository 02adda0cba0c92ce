"""
Creating and upgrading the database schema, on either engine.

``schema/v1.sql`` creates the first schema; ``schema/upgrade-<N>-to-<N+1>.sql``
upgrades one step. An empty database gets the first schema and every upgrade,
so new and upgraded databases are made by the same statements.

The scripts are portable SQL: statements ending with ``;`` at the end of a
line, 64-bit ``BIGINT`` integers and ``DOUBLE PRECISION`` times (which SQLite
reads as INTEGER and REAL), and the three types that differ written in
braces (``{id_key}``, ``{int_key}``, ``{amount}``), which each engine spells
its own way (L{IDatabaseEngine.column_types}).

All the work runs in one transaction holding the engine's start-up lock: a
failed step leaves the database as it was, and of several processes
preparing one database at once, one does the work and the others find it
done. Before upgrading, an SQLite file is copied aside.
"""

import re
from importlib import resources
from typing import Any

from twisted.logger import Logger

from .engines import IDatabaseEngine

LATEST_VERSION = 5

log = Logger()


class SchemaError(RuntimeError):
    """
    A database this version of the server cannot use.
    """


def _script(name: str) -> str:
    return resources.files("rustorium.storage").joinpath(f"schema/{name}").read_text("utf-8")


_TYPE = re.compile(r"\{(\w+)\}")


def statements(engine: IDatabaseEngine, script: str) -> list[str]:
    """
    The statements of a script, with the engine's column types filled in.

    @raise KeyError: for a type in braces that the engine does not know.
    """
    script = _TYPE.sub(lambda m: engine.column_types[m.group(1)], script)
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in re.split(r";\s*$", "\n".join(lines), flags=re.M) if s.strip()]


def current_version(engine: IDatabaseEngine, cursor: Any) -> int | None:
    """
    The schema version of a database, or C{None} for an empty one.
    """
    if not engine.has_table(cursor, "schema_version"):
        return None
    cursor.execute("SELECT version FROM schema_version")
    (version,) = cursor.fetchone()
    return int(version)


def prepare_schema(
    engine: IDatabaseEngine, connection: Any, latest: int = LATEST_VERSION
) -> tuple[int | None, int]:
    """
    Create the schema in an empty database, or upgrade an older one in place.

    @return: the version found (C{None} if empty) and the version now.
    @raise SchemaError: if the database is newer than this server.
    """
    cursor = connection.cursor()
    try:
        engine.begin_exclusive(cursor)
        found = current_version(engine, cursor)
        if found is None:
            scripts = [_script("v1.sql")]
            scripts += [_script(f"upgrade-{v}-to-{v + 1}.sql") for v in range(1, latest)]
        elif found > latest:
            raise SchemaError(
                f"{engine.location}: schema version {found} was written by a newer "
                f"Rustorium (this one knows up to {latest})"
            )
        else:
            scripts = [_script(f"upgrade-{v}-to-{v + 1}.sql") for v in range(found, latest)]
            if scripts:
                backup = engine.backup(connection, found)
                log.info(
                    "Upgrading database {location} from schema {found} to {latest}{copy}",
                    location=engine.location, found=found, latest=latest,
                    copy=f"; a copy of the old one is {backup}" if backup else "",
                )
        for script in scripts:
            for statement in statements(engine, script):
                cursor.execute(statement)
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        cursor.close()
    return found, latest
