"""
Start-up work on the database, done once and blocking before the server
serves: create or upgrade the schema, write the genesis into an empty
database, reserve message ids, and read the ledger's state (pending
transactions are confirmed by the next block).

The demo key of the built-in genesis is made later, by L{create_demo_key}
once the server listens: only its hash is stored, so a key made by a start
that then fails (its port taken) could never be shown again. Until then the
database remembers that the key is due.
"""

import time

import attrs
from twisted.logger import Logger

from .apikeys import generate_key, hash_key
from .genesis import demo_genesis, load_genesis
from .rolling import DAY
from .storage import IDatabaseEngine, prepare_schema
from .storage.chain import TokenRow, has_chain, load_tokens, write_genesis
from .storage.keys import insert_key
from .storage.ledger import LedgerSnapshot, load_ledger
from .storage.meta import get_meta, set_meta
from .timestamps import isoformat

MESSAGE_ID_BLOCK = 1_000_000
"""How far each durable reservation of message ids reaches (see L{hub.MessageIds})."""

MESSAGE_ID_CEILING = "message_id_ceiling"
DEMO_KEY_DUE = "demo_key_due"
DEMO_KEY_NAME = "demo"

log = Logger()


@attrs.frozen
class Prepared:
    """
    What start-up found or made in the database.

    @ivar demo_key_due: whether the built-in genesis was written and its
        demo key not yet made (L{create_demo_key}).
    """

    tokens: list[TokenRow]
    first_message_id: int
    message_id_ceiling: int
    demo_key_due: bool
    genesis_source: str | None
    ledger: LedgerSnapshot


def reserve_message_ids(txn, ceiling: int) -> None:
    """
    Durably raise the message id ceiling.
    """
    set_meta(txn, MESSAGE_ID_CEILING, str(ceiling))


def raise_message_ceiling(txn, count: int) -> int:
    """
    Raise the durable message id ceiling by C{count}, atomically, and
    return the new ceiling: the numbers from C{ceiling - count + 1} to it
    belong to the caller alone, whichever node asks at the same time (the
    cluster's broker numbers from such blocks).
    """
    txn.execute(
        "UPDATE meta SET value = CAST(CAST(value AS BIGINT) + ? AS TEXT) WHERE name = ? "
        "RETURNING value",
        (count, MESSAGE_ID_CEILING),
    )
    row = txn.fetchone()
    if row is None:
        txn.execute("INSERT INTO meta (name, value) VALUES (?, ?)",
                    (MESSAGE_ID_CEILING, str(count)))
        return count
    return int(row[0])


def prepare_database(engine: IDatabaseEngine, genesis_path: str | None) -> Prepared:
    """
    Make the database ready to serve.

    @param genesis_path: the genesis for an empty database, or C{None} for
        the built-in demo; ignored (with a log line) if the database already
        holds a chain.
    @raise GenesisError: for a malformed genesis file.
    @raise SchemaError: for a database from a newer server.
    """
    connection = engine.connect()
    try:
        prepare_schema(engine, connection)
        cursor = connection.cursor()
        # Under the start-up lock: of nodes starting on one empty database,
        # one writes the genesis, and each reserves its own message ids.
        engine.begin_exclusive(cursor)
        genesis_source = None
        if has_chain(cursor):
            if genesis_path is not None:
                log.info(
                    "The database {path} already holds a chain; ignoring the genesis {genesis}",
                    path=engine.location, genesis=genesis_path,
                )
        else:
            genesis = load_genesis(genesis_path) if genesis_path else demo_genesis()
            write_genesis(cursor, genesis)
            genesis_source = genesis.source
            if genesis_path is None:
                set_meta(cursor, DEMO_KEY_DUE, "1")
            log.info(
                "Initialised {path} from the {source} ({count} tokens)",
                path=engine.location, source=genesis.source, count=len(genesis.tokens),
            )
        demo_key_due = bool(get_meta(cursor, DEMO_KEY_DUE))
        ceiling = int(get_meta(cursor, MESSAGE_ID_CEILING) or 0)
        reserve_message_ids(cursor, ceiling + MESSAGE_ID_BLOCK)
        tokens = load_tokens(cursor)
        ledger = load_ledger(cursor, time.time() - DAY)
        connection.commit()
    finally:
        connection.close()
    if ledger.pending:
        log.info("{count} pending transactions found; the next block confirms them",
                 count=len(ledger.pending))
    return Prepared(
        tokens, ceiling + 1, ceiling + MESSAGE_ID_BLOCK, demo_key_due, genesis_source, ledger
    )


def create_demo_key(cursor) -> str | None:
    """
    Make the demo key of the built-in genesis if it is still due, bound to
    the demo addresses; return it (the only time it is known), or C{None}
    if it was made before.
    """
    # Claimed in one statement: of nodes finding the key due at once, one
    # changes the row; the others wait for its commit and then change none.
    cursor.execute("UPDATE meta SET value = '' WHERE name = ? AND value = '1'", (DEMO_KEY_DUE,))
    if cursor.rowcount != 1:
        return None
    key = generate_key()
    insert_key(
        cursor, hash_key(key), DEMO_KEY_NAME, isoformat(time.time()), demo_genesis().addresses
    )
    return key
