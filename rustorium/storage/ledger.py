"""
Ledger rows: transactions, blocks and confirmed balances.

The running ledger keeps its state in memory and writes through these
functions; on start it reads it back with L{load_ledger}.
"""

import attrs

from .keys import revoked_among


@attrs.define(slots=True)
class TransactionRow:
    """
    A transaction, as stored and as the ledger holds it in memory (where a
    block changes its status in place). C{amount} is in base units; times
    are POSIX seconds.
    """

    seq: int
    transaction_id: str
    sender: str
    recipient: str
    token_id: str
    amount: int
    status: str
    key_id: int
    idempotency_key: str | None
    submitted_at: float
    reason: str | None = None
    block_number: int | None = None
    confirmed_at: float | None = None


@attrs.frozen
class LedgerSnapshot:
    """
    What the ledger needs in memory, read at start.

    @ivar balances: confirmed balances by (address, token id).
    @ivar pending: pending transactions in submission order.
    @ivar recent: transactions with an idempotency key submitted since the
        given time, for deduplicating retries.
    @ivar confirmed_volume: (confirmed at, token id, amount) of transactions
        confirmed since the given time, for the 24 h volume.
    """

    balances: dict[tuple[str, str], int]
    pending: list[TransactionRow]
    recent: list[TransactionRow]
    confirmed_volume: list[tuple[float, str, int]]
    last_seq: int
    last_block: int


_COLUMNS = (
    "seq, transaction_id, sender, recipient, token_id, amount, status, key_id, "
    "idempotency_key, submitted_at, reason, block_number, confirmed_at"
)


def _row(values) -> TransactionRow:
    (seq, transaction_id, sender, recipient, token_id, amount, status, key_id,
     idempotency_key, submitted_at, reason, block_number, confirmed_at) = values
    return TransactionRow(seq, transaction_id, sender, recipient, token_id, int(amount), status,
                          key_id, idempotency_key, submitted_at, reason, block_number,
                          confirmed_at)


def insert_transactions(txn, rows: list[TransactionRow]) -> set[int]:
    """
    Store newly accepted transactions, all in the caller's transaction,
    except those of API keys revoked (or gone) by then; return the ids of
    those keys.

    The rows are written first and the keys checked after: the first write
    takes the database's write lock, so the check reads the latest keys and
    no revocation can commit between it and this transaction's commit. A
    revocation is therefore either seen here or stored after these rows.
    (PostgreSQL will need C{FOR SHARE} on the keys' rows for the same.)
    """
    txn.executemany(
        f"INSERT INTO transactions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(r.seq, r.transaction_id, r.sender, r.recipient, r.token_id, str(r.amount), r.status,
          r.key_id, r.idempotency_key, r.submitted_at, r.reason, r.block_number, r.confirmed_at)
         for r in rows],
    )
    refused = revoked_among(txn, sorted({r.key_id for r in rows}))
    if refused:
        txn.executemany(
            "DELETE FROM transactions WHERE seq = ?",
            [(r.seq,) for r in rows if r.key_id in refused],
        )
    return refused


def write_block(
    txn,
    block_number: int,
    timestamp: float,
    seqs: tuple[int, int],
    count: int,
    failed: list[tuple[str, str]],
    balances: dict[tuple[str, str], int],
) -> None:
    """
    Record a block of C{count} transactions: every pending transaction
    numbered within C{seqs} (first, last) is confirmed, except the
    C{failed} ones (id, reason); the new balances of every address it
    touched are written, and the block.

    One statement confirms the whole range (the block holds a prefix of the
    pending transactions in submission order), so a block of ten thousand
    transactions costs one index range scan, not ten thousand lookups.
    """
    first, last = seqs
    txn.executemany(
        "UPDATE transactions SET status = 'failed', reason = ?, block_number = ?, "
        "confirmed_at = ? WHERE transaction_id = ? AND status = 'pending'",
        [(reason, block_number, timestamp, transaction_id) for transaction_id, reason in failed],
    )
    txn.execute(
        "UPDATE transactions SET status = 'confirmed', block_number = ?, confirmed_at = ? "
        "WHERE seq BETWEEN ? AND ? AND status = 'pending'",
        (block_number, timestamp, first, last),
    )
    txn.executemany(
        "INSERT INTO balances (address, token_id, amount) VALUES (?, ?, ?) "
        "ON CONFLICT (address, token_id) DO UPDATE SET amount = excluded.amount",
        [(address, token_id, str(amount)) for (address, token_id), amount in balances.items()],
    )
    txn.execute(
        "INSERT INTO blocks (block_number, timestamp, transaction_count, first_seq, last_seq) "
        "VALUES (?, ?, ?, ?, ?)",
        (block_number, timestamp, count, first, last),
    )


def find_transaction(txn, transaction_id: str) -> TransactionRow | None:
    txn.execute(f"SELECT {_COLUMNS} FROM transactions WHERE transaction_id = ?",
                (transaction_id,))
    row = txn.fetchone()
    return None if row is None else _row(row)


def transactions_of(txn, address: str, limit: int) -> list[TransactionRow]:
    """
    The last C{limit} transactions from or to C{address}, newest first (by
    either index, sender's or recipient's, read backwards).
    """
    txn.execute(
        f"SELECT {_COLUMNS} FROM transactions WHERE seq IN "
        "(SELECT seq FROM transactions WHERE sender = ? ORDER BY seq DESC LIMIT ?) "
        "OR seq IN (SELECT seq FROM transactions WHERE recipient = ? ORDER BY seq DESC LIMIT ?) "
        "ORDER BY seq DESC LIMIT ?",
        (address, limit, address, limit, limit),
    )
    return [_row(r) for r in txn.fetchall()]


def load_ledger(txn, since: float) -> LedgerSnapshot:
    """
    Read the ledger's state; C{since} bounds the idempotency keys and the
    confirmed volume read (the trailing 24 h).
    """
    txn.execute("SELECT address, token_id, amount FROM balances")
    balances = {(address, token_id): int(amount) for address, token_id, amount in txn.fetchall()}
    # Blocks confirm prefixes in seq order: every pending transaction comes
    # after the last block's range.
    txn.execute("SELECT COALESCE(MAX(last_seq), 0) FROM blocks")
    (confirmed_up_to,) = txn.fetchone()
    txn.execute(
        f"SELECT {_COLUMNS} FROM transactions WHERE seq > ? AND status = 'pending' ORDER BY seq",
        (confirmed_up_to,),
    )
    pending = [_row(r) for r in txn.fetchall()]
    txn.execute(
        f"SELECT {_COLUMNS} FROM transactions "
        "WHERE idempotency_key IS NOT NULL AND submitted_at >= ? ORDER BY seq",
        (since,),
    )
    recent = [_row(r) for r in txn.fetchall()]
    # The blocks since then give the range of transactions to read, so no
    # index on confirmation time is needed.
    txn.execute("SELECT MIN(first_seq) FROM blocks WHERE timestamp >= ?", (since,))
    (first,) = txn.fetchone()
    txn.execute(
        "SELECT confirmed_at, token_id, amount FROM transactions "
        "WHERE seq >= ? AND status = 'confirmed' ORDER BY seq",
        (first if first is not None else 2**62,),
    )
    volume = [(at, token_id, int(amount)) for at, token_id, amount in txn.fetchall()]
    txn.execute("SELECT COALESCE(MAX(seq), 0) FROM transactions")
    (last_seq,) = txn.fetchone()
    txn.execute("SELECT COALESCE(MAX(block_number), 0) FROM blocks")
    (last_block,) = txn.fetchone()
    return LedgerSnapshot(balances, pending, recent, volume, last_seq, last_block)
