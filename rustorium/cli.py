"""
The ``rustorium`` command: managing API keys from a shell, and a
command-line client of the API.

    rustorium keys create [--database URL] [--create-database] [--name NAME]
                          [--scope client|publish|admin]... [--address 0x..]...
    rustorium keys list [--database URL]
    rustorium keys revoke [--database URL] KEY_ID
    rustorium listen [--url URL] [--api-key KEY] CHANNEL [PARAM...]
    rustorium call [--url URL] [--api-key KEY] [--timeout S] TYPE [JSON-DATA]
    rustorium feed prices [--url URL] [--api-key KEY] [--speed X] [--restamp] FILE.csv
    rustorium --version

``keys create`` prints the new key alone on the last line of standard
output; it is shown only then. ``--scope`` may be given several times (a
key's scopes are a set, see L{rustorium.storage.keys}); without it the key
is a client key, as every key was before scopes. Keys work at once, also
on a running server.
The database must exist (the server creates it when it first starts):
a mistyped ``--database``, or the command run in another directory, is an
error rather than a new, empty database. ``keys create --create-database``
makes one, for keys made before the server's first start.

``listen`` and ``call`` (in L{rustorium.client.commandline}) take the key
from ``--api-key`` or ``RUSTORIUM_API_KEY`` and print JSON on standard
output: one update a line, or the reply. ``feed prices`` (in
L{rustorium.pricefeed}) replays a CSV of prices into the HTTP API.
"""

import argparse
import os
import sys
import time
from collections.abc import Sequence

from . import __version__, pricefeed
from .apikeys import generate_key, hash_key
from .client import commandline
from .identifiers import normalise_address
from .storage import DatabaseURLError, SchemaError, engine_from_url, prepare_schema, run_blocking
from .storage.keys import CLIENT, SCOPES, format_scopes, insert_key, list_keys, revoke_key
from .timestamps import isoformat

DEFAULT_DATABASE = "sqlite:rustorium.db"


def _address(value: str) -> str:
    address = normalise_address(value)
    if address is None:
        raise argparse.ArgumentTypeError(f"{value!r} is not 0x followed by 40 hex digits")
    return address


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rustorium",
                                     description="Rustorium server tools and client.")
    parser.add_argument("--version", action="version", version=f"rustorium {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="action", required=True)

    def with_database(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--database", default=DEFAULT_DATABASE,
                       help=f"database URL (default: {DEFAULT_DATABASE})")
        return p

    create = with_database(actions.add_parser("create", help="create a key and print it"))
    create.add_argument("--create-database", action="store_true",
                        help="create the database if it does not exist (by default that is "
                             "an error, so that a mistyped --database makes no new one)")
    create.add_argument("--name", default="key", help="a name to recognise the key by")
    create.add_argument("--address", action="append", default=[], type=_address,
                        help="an address the key may send transactions from (repeatable)")
    create.add_argument("--scope", action="append", choices=SCOPES, dest="scopes",
                        help="what the key may do (repeatable): client opens WebSocket "
                             "sessions, publish posts prices, admin uses the whole HTTP API "
                             f"(default: {CLIENT})")
    with_database(actions.add_parser("list", help="list keys (never the keys themselves)"))
    revoke = with_database(actions.add_parser("revoke", help="revoke a key by its id"))
    revoke.add_argument("key_id", type=int, help="the id shown by 'rustorium keys list'")
    commandline.add_commands(commands)
    pricefeed.add_command(commands)
    return parser


class MissingDatabase(Exception):
    """
    The database named does not exist, and creating it was not asked for.
    """


def _engine(url: str, create: bool = False):
    engine = engine_from_url(url)
    if engine.name == "sqlite" and not create and not os.path.exists(engine.path):
        raise MissingDatabase(f"no database at {os.path.abspath(engine.path)} (--database {url})")
    connection = engine.connect()
    try:
        prepare_schema(engine, connection)
    finally:
        connection.close()
    return engine


def _keys(args: argparse.Namespace) -> int:
    engine = _engine(args.database, create=getattr(args, "create_database", False))
    if args.action == "create":
        key = generate_key()
        scopes = frozenset(args.scopes or [CLIENT])
        key_id = run_blocking(
            engine, insert_key, hash_key(key), args.name, isoformat(time.time()), args.address,
            scopes,
        )
        addresses = ", ".join(args.address) or "no addresses"
        print(f"Created API key {key_id} ({args.name}, scopes: {format_scopes(scopes)}) "
              f"for {addresses}. It is shown only now:")
        print(key)
    elif args.action == "list":
        keys = run_blocking(engine, list_keys)
        if not keys:
            print("No API keys.")
        for k in keys:
            state = f"revoked {k.revoked_at}" if k.revoked else "active"
            addresses = ", ".join(sorted(k.addresses)) or "-"
            # Scopes last: scripts that read the earlier columns still can.
            print(f"{k.key_id}\t{k.name}\t{state}\tcreated {k.created_at}\t{addresses}"
                  f"\t{format_scopes(k.scopes)}")
    else:
        if not run_blocking(engine, revoke_key, args.key_id, isoformat(time.time())):
            print(f"rustorium: no active key {args.key_id}", file=sys.stderr)
            return 1
        print(f"Revoked API key {args.key_id}; its connections close within seconds.")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the command; return the exit status.
    """
    args = _parser().parse_args(argv)
    if args.command in ("listen", "call"):
        commandline.check_arguments(args)
        return commandline.run(args)
    if args.command == "feed":
        return pricefeed.run(args)
    try:
        return _keys(args)
    except MissingDatabase as e:
        if args.action == "create":
            hint = "pass --create-database to create it"
        else:
            hint = "the server creates it when it first starts"
        print(f"rustorium: {e}; {hint}", file=sys.stderr)
        return 1
    except (DatabaseURLError, SchemaError) as e:
        print(f"rustorium: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
