"""
The ledger's statements when the database, not one process, guards the
money: several nodes accept transfers from the same addresses at once, so
the available-balance check, the reservation and the insert happen in one
database transaction, with the balance rows locked.

Locks are always taken in (address, token id) order, so two nodes' batches
never deadlock; an idempotency key is claimed in its own table with an
upsert, so the same key sent to two nodes at once yields one transaction
(the second insert waits for the first and then sees it).

Every function takes the pool's cursor first and runs inside the caller's
transaction (L{rustorium.storage.Database.run}); C{dialect} says what
differs between the engines (row locks, the block producer's lock).
"""

from collections.abc import Iterable

import attrs

from .ledger import _COLUMNS, TransactionRow, _row

ACCEPTED = "accepted"
REPEAT = "repeat"
CONFLICT = "conflict"
INSUFFICIENT = "insufficient"
REVOKED = "revoked"

BLOCK_LOCK = 0x52555354_424C4B  # "RUSTBLK": only one node writes a block at a time


@attrs.frozen
class Dialect:
    """
    The few statements that differ between SQLite and PostgreSQL.

    @ivar lock_rows: appended to a SELECT to lock the rows it reads until
        the transaction ends (SQLite has one writer at a time, so nothing).
    @ivar share_rows: appended to a SELECT so that the rows it reads cannot
        change until the transaction ends (a key's revocation waits for the
        commit that checked it).
    @ivar try_block_lock: a statement whose single boolean result says
        whether this transaction may write a block, or C{None} where only
        one process can write anyway.
    @ivar arrays: whether the engine takes arrays as parameters, so that
        the rows of a batch, however many, go in one fixed statement
        (C{unnest}): one round trip, and a statement the driver parses
        and the server plans once, where a statement of one placeholder
        per value would be parsed again for every batch.
    """

    lock_rows: str = ""
    share_rows: str = ""
    try_block_lock: str | None = None
    arrays: bool = False


SQLITE = Dialect()
POSTGRESQL = Dialect(
    " FOR UPDATE", " FOR SHARE", f"SELECT pg_try_advisory_xact_lock({BLOCK_LOCK})", True
)


@attrs.frozen
class Transfer:
    """
    A transfer validated by a node, not yet stored.
    """

    transaction_id: str
    sender: str
    recipient: str
    token_id: str
    amount: int
    key_id: int
    idempotency_key: str | None
    submitted_at: float

    @property
    def parameters(self) -> tuple:
        return (self.sender, self.recipient, self.token_id, self.amount)


@attrs.frozen
class Outcome:
    """
    What became of one transfer of a batch.

    @ivar kind: L{ACCEPTED} (stored, pending), L{REPEAT} (its idempotency
        key names an earlier transaction with the same parameters, given
        as C{row}), L{CONFLICT} (the key names one with other parameters),
        L{INSUFFICIENT} (C{available} does not cover it) or L{REVOKED} (its
        API key was revoked).
    """

    kind: str
    row: TransactionRow | None = None
    available: int = 0


@attrs.frozen
class Block:
    """
    A block as written: its number and time, the transactions it settled
    (statuses set), and the confirmed volume per token.
    """

    number: int
    timestamp: float
    rows: list[TransactionRow]
    volume: dict[str, int]


def _lock_balances(
    txn, dialect: Dialect, pairs: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], list[int]]:
    """
    Read and lock the balance rows of C{pairs}, in sorted order; return
    [confirmed, pending out] for each pair that has a row.
    """
    found = {}
    ordered = sorted(set(pairs))
    if dialect.arrays:
        # One statement: the rows are locked as the sort hands them out
        # (PostgreSQL locks above the sort), in the same byte order as
        # Python's, so every batch and block takes its locks in one order.
        txn.execute(
            "SELECT address, token_id, amount, pending_out FROM balances "
            "WHERE (address, token_id) IN (SELECT * FROM unnest(?::text[], ?::text[])) "
            'ORDER BY address COLLATE "C", token_id COLLATE "C"' + dialect.lock_rows,
            ([a for a, _ in ordered], [t for _, t in ordered]),
        )
        for address, token_id, amount, pending_out in txn.fetchall():
            found[address, token_id] = [int(amount), int(pending_out)]
        return found
    for address, token_id in ordered:
        txn.execute(
            "SELECT amount, pending_out FROM balances WHERE address = ? AND token_id = ?"
            + dialect.lock_rows,
            (address, token_id),
        )
        row = txn.fetchone()
        if row is not None:
            found[address, token_id] = [int(row[0]), int(row[1])]
    return found


def _revoked(txn, dialect: Dialect, key_ids: set[int]) -> set[int]:
    """
    Which of the keys are revoked; a revocation not seen here waits until
    this transaction ends, so none is acknowledged after one committed.
    """
    if not key_ids:
        return set()
    marks = ", ".join("?" * len(key_ids))
    txn.execute(
        f"SELECT key_id, revoked_at FROM api_keys WHERE key_id IN ({marks}) ORDER BY key_id"
        + dialect.share_rows,
        tuple(sorted(key_ids)),
    )
    return {key_id for key_id, revoked_at in txn.fetchall() if revoked_at is not None}


def _find(txn, transaction_id: str) -> TransactionRow:
    txn.execute(f"SELECT {_COLUMNS} FROM transactions WHERE transaction_id = ?",
                (transaction_id,))
    return _row(txn.fetchone())


def _claim_key(txn, transfer: Transfer, expired_before: float) -> TransactionRow | None:
    """
    Claim C{transfer}'s idempotency key for it (taking over a key older
    than C{expired_before}); return the transaction that holds the key if
    another does.
    """
    txn.execute(
        "INSERT INTO idempotency_keys (key_id, idempotency_key, transaction_id, created_at) "
        "VALUES (?, ?, ?, ?) "
        "ON CONFLICT (key_id, idempotency_key) DO UPDATE SET "
        "transaction_id = excluded.transaction_id, created_at = excluded.created_at "
        "WHERE idempotency_keys.created_at < ? "
        "RETURNING transaction_id",
        (transfer.key_id, transfer.idempotency_key, transfer.transaction_id,
         transfer.submitted_at, expired_before),
    )
    if txn.fetchone() is not None:
        return None
    txn.execute(
        "SELECT transaction_id FROM idempotency_keys WHERE key_id = ? AND idempotency_key = ?",
        (transfer.key_id, transfer.idempotency_key),
    )
    (holder,) = txn.fetchone()
    return _find(txn, holder)


def accept_transfers(
    txn, dialect: Dialect, transfers: list[Transfer], expired_before: float
) -> list[Outcome]:
    """
    Store the transfers that the available balances cover, in order, as
    pending, reserving their amounts; return an L{Outcome} per transfer.

    @param expired_before: idempotency keys claimed before this time may be
        used again (they are remembered for 24 h).
    """
    balances = _lock_balances(txn, dialect, ((t.sender, t.token_id) for t in transfers))
    revoked = _revoked(txn, dialect, {t.key_id for t in transfers})
    outcomes: list[Outcome] = []
    reserved: dict[tuple[str, str], int] = {}
    accepted: list[Transfer] = []
    for transfer in transfers:
        if transfer.key_id in revoked:
            outcomes.append(Outcome(REVOKED))
            continue
        if transfer.idempotency_key is not None:
            holder = _claim_key(txn, transfer, expired_before)
            if holder is not None:
                same = (holder.sender, holder.recipient, holder.token_id, holder.amount)
                kind = REPEAT if same == transfer.parameters else CONFLICT
                outcomes.append(Outcome(kind, holder))
                continue
        pair = (transfer.sender, transfer.token_id)
        confirmed, pending_out = balances.get(pair, (0, 0))
        available = confirmed - pending_out - reserved.get(pair, 0)
        if available < transfer.amount:
            if transfer.idempotency_key is not None:
                # Free the key again: nothing was stored under it.
                txn.execute(
                    "DELETE FROM idempotency_keys WHERE key_id = ? AND idempotency_key = ?",
                    (transfer.key_id, transfer.idempotency_key),
                )
            outcomes.append(Outcome(INSUFFICIENT, available=available))
            continue
        reserved[pair] = reserved.get(pair, 0) + transfer.amount
        accepted.append(transfer)
        outcomes.append(Outcome(ACCEPTED))
    seqs = _insert(txn, dialect, accepted)
    rows = iter(
        TransactionRow(seqs[t.transaction_id], t.transaction_id, t.sender, t.recipient,
                       t.token_id, t.amount, "pending", t.key_id, t.idempotency_key,
                       t.submitted_at)
        for t in accepted
    )
    outcomes = [Outcome(ACCEPTED, next(rows)) if o.kind == ACCEPTED else o for o in outcomes]
    _set_balances(txn, dialect, [
        (pair, balances[pair][0], balances[pair][1] + amount) for pair, amount in reserved.items()
    ], pending_only=True)
    return outcomes


def _set_balances(
    txn, dialect: Dialect, rows: list[tuple[tuple[str, str], int, int]], pending_only: bool
) -> None:
    """
    Write ((address, token id), confirmed, pending out) to existing
    balance rows (locked by this transaction), or only their pending out.
    """
    if not rows:
        return
    if dialect.arrays:
        addresses, tokens, amounts, pendings = [], [], [], []
        for (address, token_id), confirmed, pending in rows:
            addresses.append(address)
            tokens.append(token_id)
            amounts.append(str(confirmed))
            pendings.append(str(pending))
        if pending_only:
            txn.execute(
                "UPDATE balances AS b SET pending_out = u.pending_out "
                "FROM unnest(?::text[], ?::text[], ?::numeric[]) AS u(address, token_id, "
                "pending_out) WHERE b.address = u.address AND b.token_id = u.token_id",
                (addresses, tokens, pendings),
            )
        else:
            txn.execute(
                "UPDATE balances AS b SET amount = u.amount, pending_out = u.pending_out "
                "FROM unnest(?::text[], ?::text[], ?::numeric[], ?::numeric[]) "
                "AS u(address, token_id, amount, pending_out) "
                "WHERE b.address = u.address AND b.token_id = u.token_id",
                (addresses, tokens, amounts, pendings),
            )
        return
    if pending_only:
        txn.executemany(
            "UPDATE balances SET pending_out = ? WHERE address = ? AND token_id = ?",
            [(str(pending), *pair) for pair, _, pending in rows],
        )
    else:
        txn.executemany(
            "UPDATE balances SET amount = ?, pending_out = ? WHERE address = ? AND token_id = ?",
            [(str(confirmed), str(pending), *pair) for pair, confirmed, pending in rows],
        )


_INSERT_COLUMNS = ("transaction_id, sender, recipient, token_id, amount, status, key_id, "
                   "idempotency_key, submitted_at")


def _insert(txn, dialect: Dialect, transfers: list[Transfer]) -> dict[str, int]:
    """
    Insert pending transactions, letting the database number them in
    their order; return each one's C{seq} by transaction id.
    """
    if not transfers:
        return {}
    if dialect.arrays:
        # Identifiers (0x and hex digits), amounts, key ids and times never
        # hold a comma: each column goes as one comma-separated string,
        # which costs far less to build than an array parameter (whose
        # every element the driver checks for quoting). Idempotency keys
        # are the clients' own text: an array.
        columns = (
            ",".join([t.transaction_id for t in transfers]),
            ",".join([t.sender for t in transfers]),
            ",".join([t.recipient for t in transfers]),
            ",".join([t.token_id for t in transfers]),
            ",".join([str(t.amount) for t in transfers]),
            ",".join([str(t.key_id) for t in transfers]),
            [t.idempotency_key for t in transfers],
            ",".join([repr(t.submitted_at) for t in transfers]),
        )
        # WITH ORDINALITY ... ORDER BY: the identity is drawn in the
        # batch's order, which blocks confirm in.
        txn.execute(
            f"INSERT INTO transactions ({_INSERT_COLUMNS}) "
            "SELECT i, s, r, t, a, 'pending', k, ik, at FROM unnest("
            "string_to_array(?, ','), string_to_array(?, ','), string_to_array(?, ','), "
            "string_to_array(?, ','), string_to_array(?, ',')::numeric[], "
            "string_to_array(?, ',')::bigint[], ?::text[], "
            "string_to_array(?, ',')::double precision[]) "
            "WITH ORDINALITY AS u(i, s, r, t, a, k, ik, at, n) "
            "ORDER BY n RETURNING transaction_id, seq",
            columns,
        )
        return dict(txn.fetchall())
    seqs: dict[str, int] = {}
    # A few hundred rows per statement keeps within every engine's limit on
    # parameters while sparing a round trip per row.
    for start in range(0, len(transfers), 500):
        chunk = transfers[start:start + 500]
        values = ", ".join(["(?, ?, ?, ?, ?, 'pending', ?, ?, ?)"] * len(chunk))
        parameters = []
        for t in chunk:
            parameters += [t.transaction_id, t.sender, t.recipient, t.token_id, str(t.amount),
                           t.key_id, t.idempotency_key, t.submitted_at]
        txn.execute(
            f"INSERT INTO transactions ({_INSERT_COLUMNS}) VALUES {values} "
            "RETURNING transaction_id, seq",
            parameters,
        )
        seqs.update(txn.fetchall())
    return seqs


def read_balance(txn, address: str, token_id: str) -> tuple[int, int]:
    """
    The confirmed and the available balance of an address.
    """
    txn.execute(
        "SELECT amount, pending_out FROM balances WHERE address = ? AND token_id = ?",
        (address, token_id),
    )
    row = txn.fetchone()
    if row is None:
        return 0, 0
    confirmed = int(row[0])
    return confirmed, confirmed - int(row[1])


def count_pending(txn) -> int:
    txn.execute("SELECT COUNT(*) FROM transactions WHERE status = 'pending'")
    return txn.fetchone()[0]


def last_block(txn) -> tuple[int, float]:
    """
    The number and time of the last block (0 and 0.0 before the first).
    """
    txn.execute("SELECT block_number, timestamp FROM blocks ORDER BY block_number DESC LIMIT 1")
    row = txn.fetchone()
    return (0, 0.0) if row is None else (row[0], row[1])


def write_next_block(
    txn, dialect: Dialect, now: float, settled_before: float, min_interval: float,
    block_size: int,
) -> Block | None:
    """
    Confirm the oldest pending transactions submitted before
    C{settled_before}, in submission order, as the next block; C{None} when
    another node is writing one, wrote one less than C{min_interval} ago,
    or nothing is pending.
    """
    if dialect.try_block_lock is not None:
        txn.execute(dialect.try_block_lock)
        if not txn.fetchone()[0]:
            return None
    number, at = last_block(txn)
    if now - at < min_interval:
        return None
    txn.execute(
        f"SELECT {_COLUMNS} FROM transactions WHERE status = 'pending' AND submitted_at < ? "
        "ORDER BY seq LIMIT ?",
        (settled_before, block_size),
    )
    rows = [_row(r) for r in txn.fetchall()]
    if not rows:
        return None
    number += 1
    # Every transaction is written as confirmed before the balance rows
    # are locked, and the rare failed one corrected after: the rows that
    # every node's commits lock are then held for the few statements
    # that follow, not for the long update of a whole block's
    # transactions (which would stall every node's acceptance).
    for row in rows:
        row.status = "confirmed"
        row.block_number = number
        row.confirmed_at = now
    _settle(txn, dialect, rows, number, now)
    balances = _lock_balances(
        txn, dialect,
        [(r.sender, r.token_id) for r in rows] + [(r.recipient, r.token_id) for r in rows],
    )
    new_pairs = set()
    volume: dict[str, int] = {}
    failed = []
    for row in rows:
        source = balances[row.sender, row.token_id]
        source[1] -= row.amount
        if source[0] < row.amount:
            # Reservations make this impossible; kept as a guard.
            row.status = "failed"
            row.reason = "insufficient confirmed balance"
            failed.append(row)
            continue
        source[0] -= row.amount
        target = balances.get((row.recipient, row.token_id))
        if target is None:
            target = balances[row.recipient, row.token_id] = [0, 0]
            new_pairs.add((row.recipient, row.token_id))
        target[0] += row.amount
        volume[row.token_id] = volume.get(row.token_id, 0) + row.amount
    if failed:
        _settle(txn, dialect, failed, number, now)
    txn.executemany(
        "INSERT INTO balances (address, token_id, amount, pending_out) VALUES (?, ?, ?, ?)",
        [(*pair, str(balances[pair][0]), str(balances[pair][1])) for pair in sorted(new_pairs)],
    )
    _set_balances(txn, dialect, [
        (pair, confirmed, pending)
        for pair, (confirmed, pending) in sorted(balances.items()) if pair not in new_pairs
    ], pending_only=False)
    txn.execute(
        "INSERT INTO blocks (block_number, timestamp, transaction_count, first_seq, last_seq) "
        "VALUES (?, ?, ?, ?, ?)",
        (number, now, len(rows), rows[0].seq, rows[-1].seq),
    )
    txn.executemany(
        "INSERT INTO block_volumes (block_number, token_id, amount, timestamp) "
        "VALUES (?, ?, ?, ?)",
        [(number, token_id, str(amount), now) for token_id, amount in sorted(volume.items())],
    )
    return Block(number, now, rows, volume)


def _settle(txn, dialect: Dialect, rows: list[TransactionRow], number: int, now: float) -> None:
    """
    Write the new status (and reason) of a block's transactions.
    """
    if dialect.arrays:
        txn.execute(
            "UPDATE transactions AS t SET status = u.status, reason = u.reason, "
            "block_number = ?, confirmed_at = ? "
            "FROM unnest(?::bigint[], ?::text[], ?::text[]) AS u(seq, status, reason) "
            "WHERE t.seq = u.seq",
            (number, now, [r.seq for r in rows], [r.status for r in rows],
             [r.reason for r in rows]),
        )
        return
    txn.executemany(
        "UPDATE transactions SET status = ?, reason = ?, block_number = ?, confirmed_at = ? "
        "WHERE seq = ?",
        [(r.status, r.reason, number, now, r.seq) for r in rows],
    )


def confirmed_volume_since(txn, since: float) -> list[tuple[float, str, int]]:
    """
    (block time, token id, amount) of the volume each block since C{since}
    confirmed, for the trailing 24 h volume of a node that takes over the
    market: one row per token per block, however many transfers a block
    held.
    """
    txn.execute(
        "SELECT timestamp, token_id, amount FROM block_volumes WHERE timestamp >= ? "
        "ORDER BY block_number",
        (since,),
    )
    return [(at, token_id, int(amount)) for at, token_id, amount in txn.fetchall()]
