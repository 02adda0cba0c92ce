"""
The ledger: balances and transactions, the part that must never be wrong.

State lives in memory and every change is written through to the database
before it counts:

- C{confirmed} balances change only when a block holding the transaction
  has been committed;
- C{pending outflows} are reserved the moment a transaction is accepted, so
  the available balance (confirmed minus pending outflows) can never be
  spent twice, however many commands race for one address; everything runs
  in the reactor thread, so the check and the reservation are one step;
- an accepted transaction is answered only once the group commit holding
  it is on disk; if that commit fails, the reservation is released and the
  client gets C{internal_error}: nothing unanswered is kept, nothing
  answered is lost.

Blocks confirm pending transactions in submission order. Idempotency keys
(per API key, for 24 hours) return the first transaction for a repeat with
the same parameters and an error for a repeat with different ones.
"""

import random
import secrets
from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from .amounts import format_units
from .catalog import Catalog, Token
from .errors import ErrorCode, RequestError
from .groupcommit import GroupCommit
from .requests import ExecuteTransaction
from .rolling import DAY, RollingWindow
from .storage import Database
from .storage.keys import ApiKey
from .storage.ledger import (
    LedgerSnapshot,
    TransactionRow,
    find_transaction,
    insert_transactions,
    transactions_of,
    write_block,
)
from .timestamps import isoformat
from .transfers import known_token, validate_transfer

PENDING = "pending"
CONFIRMED = "confirmed"
FAILED = "failed"

IDEMPOTENCY_WINDOW = DAY
"""How long an idempotency key is remembered."""


class ILedgerStore(Interface):
    """
    Where the ledger writes; each call runs in one database transaction.
    """

    def insert(rows: list[TransactionRow]) -> Deferred:
        """
        Store accepted transactions durably, except those of API keys that
        are revoked when they are stored (checked in the same database
        transaction); fire with the set of those keys' ids.
        """

    def write_block(
        number: int,
        timestamp: float,
        seqs: tuple[int, int],
        count: int,
        failed: list[tuple[str, str]],
        balances: dict[tuple[str, str], int],
    ) -> Deferred:
        """
        Store a block of C{count} transactions: all pending ones numbered
        within C{seqs} are confirmed but the C{failed} (id, reason), and the
        new balances of the addresses it touched.
        """

    def find(transaction_id: str) -> Deferred:
        """
        Read one transaction, or C{None}.
        """

    def transactions_of(address: str, limit: int) -> Deferred:
        """
        Fires with the last C{limit} transactions from or to C{address},
        newest first.
        """


@implementer(ILedgerStore)
class DatabaseLedgerStore:
    """
    The ledger's store on the server's database.
    """

    def __init__(self, database: Database) -> None:
        self._database = database

    def insert(self, rows):
        return self._database.run(insert_transactions, rows)

    def write_block(self, number, timestamp, seqs, count, failed, balances):
        return self._database.run(write_block, number, timestamp, seqs, count, failed, balances)

    def find(self, transaction_id):
        return self._database.run(find_transaction, transaction_id)

    def transactions_of(self, address, limit):
        return self._database.run(transactions_of, address, limit)


_ids = random.Random(secrets.token_bytes(32))


def new_transaction_id() -> str:
    """
    A fresh transaction id: C{0x} and 64 hex digits, from a generator seeded
    by the system's at start (ids must be unique, not secret; one system
    call per transaction would cost more than the rest of its validation).
    """
    return f"0x{_ids.getrandbits(256):064x}"


@attrs.define
class _Idempotent:
    """
    What an idempotency key was first used for.

    @ivar waiting: Deferreds of repeats that arrived before the first was
        committed; C{None} once it was.
    """

    parameters: tuple
    transaction: TransactionRow
    waiting: list[Deferred] | None = attrs.Factory(list)


class Ledger:
    """
    Balances, pending transactions and blocks.
    """

    log = Logger()

    def __init__(
        self,
        catalog: Catalog,
        store: ILedgerStore,
        announce: Callable[[list[TransactionRow]], None],
        clock: Any,
        snapshot: LedgerSnapshot,
        commit_batch: int = 1000,
        block_size: int = 100_000,
    ) -> None:
        self._catalog = catalog
        self._store = store
        self._publish = announce
        self._clock = clock
        self._block_size = block_size
        self._confirmed: dict[tuple[str, str], int] = dict(snapshot.balances)
        self._pending_out: dict[tuple[str, str], int] = {}
        self._pending: list[TransactionRow] = []
        self._idempotent: dict[tuple[int, str], _Idempotent] = {}
        self._volume: dict[str, RollingWindow] = {t: RollingWindow() for t in catalog.tokens}
        self._last_seq = snapshot.last_seq
        self.last_block = snapshot.last_block
        self._block_in_progress = False
        self._to_announce: list[TransactionRow] = []
        self._committer: GroupCommit[TransactionRow] = GroupCommit(store.insert, commit_batch)
        for row in snapshot.pending:
            self._reserve(row)
            self._pending.append(row)
        for row in snapshot.recent:
            self._idempotent[row.key_id, row.idempotency_key] = _Idempotent(
                _parameters(row), row, None
            )
        for at, token_id, amount in snapshot.confirmed_volume:
            if token_id in self._volume:
                self._volume[token_id].record(at, amount)

    # Queries

    def balance(self, address: str, token_id: str) -> tuple[int, int]:
        """
        The confirmed and the available balance, in base units.
        """
        key = (address, token_id)
        confirmed = self._confirmed.get(key, 0)
        return confirmed, confirmed - self._pending_out.get(key, 0)

    def volume_24h(self, token_id: str) -> int:
        """
        Confirmed transfer volume of a token over the trailing 24 h.
        """
        window = self._volume.get(token_id)
        if window is None:
            return 0
        window.expire(self._clock.seconds())
        return window.total

    def token(self, token_id: str) -> Token:
        """
        @raise RequestError: C{not_found} for an unknown token.
        """
        return known_token(self._catalog, token_id)

    def find(self, transaction_id: str) -> "Deferred[TransactionRow | None]":
        """
        A transaction by id (as committed).
        """
        return self._store.find(transaction_id)

    def transactions_of(self, address: str, limit: int) -> "Deferred[list[TransactionRow]]":
        """
        The last C{limit} transactions from or to C{address}, newest first
        (as committed).
        """
        return self._store.transactions_of(address, limit)

    def chain_state(self) -> "Deferred[tuple[int, int]]":
        """
        Fires with the block height and the number of pending transactions.
        """
        return succeed((self.last_block, self.pending_count))

    @property
    def busy(self) -> bool:
        """
        Whether a commit or a block is being written.
        """
        return self._block_in_progress or self._committer.busy

    @property
    def pending_count(self) -> int:
        """
        Accepted transactions not yet in a block.
        """
        return len(self._pending) + self._committer.queued

    # Commands

    def submit(self, api_key: ApiKey, request: ExecuteTransaction) -> "Deferred[TransactionRow]":
        """
        Validate and accept a transfer. Fires with the transaction once it
        is committed to disk.

        @raise RequestError: at once, for a request that is refused.
        """
        token, amount = validate_transfer(self._catalog, api_key, request)
        parameters = (request.sender, request.recipient, request.token_id, amount)
        if request.idempotency_key is not None:
            repeat = self._repeat(api_key.key_id, request.idempotency_key, parameters)
            if repeat is not None:
                return repeat
        _, available = self.balance(request.sender, request.token_id)
        if available < amount:
            raise RequestError(
                ErrorCode.INSUFFICIENT_FUNDS,
                f"the available balance of {request.sender} is "
                f"{format_units(available, token.decimals)} {token.symbol}, less than "
                f"{format_units(amount, token.decimals)}",
            )
        self._last_seq += 1
        row = TransactionRow(
            self._last_seq, new_transaction_id(), request.sender, request.recipient,
            request.token_id, amount, PENDING, api_key.key_id, request.idempotency_key,
            self._clock.seconds(),
        )
        self._reserve(row)
        entry = None
        if request.idempotency_key is not None:
            entry = self._idempotent[api_key.key_id, request.idempotency_key] = _Idempotent(
                parameters, row
            )
        d: Deferred[TransactionRow] = Deferred()
        self._committer.add(row, lambda failure: self._stored(failure, row, entry, d))
        return d

    def _stored(
        self, outcome: "set[int] | Failure", row: TransactionRow, entry: _Idempotent | None,
        d: "Deferred[TransactionRow]",
    ) -> None:
        if isinstance(outcome, Failure):
            d.errback(self._not_accepted(outcome, row, entry))
        elif outcome and row.key_id in outcome:
            d.errback(self._refused(row, entry))
        else:
            d.callback(self._accepted(row, entry))

    def _repeat(self, key_id: int, idempotency_key: str, parameters: tuple) -> Deferred | None:
        entry = self._idempotent.get((key_id, idempotency_key))
        if entry is None:
            return None
        if (
            entry.waiting is None
            and entry.transaction.submitted_at < self._clock.seconds() - IDEMPOTENCY_WINDOW
        ):
            del self._idempotent[key_id, idempotency_key]
            return None
        if entry.parameters != parameters:
            raise RequestError(
                ErrorCode.INVALID_PARAMS,
                f"idempotency_key {idempotency_key!r} was already used for transaction "
                f"{entry.transaction.transaction_id} with other parameters",
            )
        if entry.waiting is None:
            return succeed(entry.transaction)
        d: Deferred[TransactionRow] = Deferred()
        entry.waiting.append(d)
        return d

    def _reserve(self, row: TransactionRow) -> None:
        key = (row.sender, row.token_id)
        self._pending_out[key] = self._pending_out.get(key, 0) + row.amount

    def _release(self, row: TransactionRow) -> None:
        key = (row.sender, row.token_id)
        left = self._pending_out[key] - row.amount
        if left:
            self._pending_out[key] = left
        else:
            del self._pending_out[key]

    def _accepted(self, row: TransactionRow, entry: _Idempotent | None) -> TransactionRow:
        self._pending.append(row)
        # Announce "pending" once the callers have answered, so a client
        # sees its transaction_response before updates about it.
        if not self._to_announce:
            self._clock.callLater(0, self._announce_pending)
        self._to_announce.append(row)
        if entry is not None:
            waiting, entry.waiting = entry.waiting, None
            for d in waiting:
                d.callback(row)
        return row

    def _not_accepted(
        self, failure: Failure, row: TransactionRow, entry: _Idempotent | None
    ) -> RequestError:
        self.log.failure("Storing transaction {id} failed; it was not accepted", failure,
                         id=row.transaction_id)
        return self._forget(row, entry, RequestError(
            ErrorCode.INTERNAL_ERROR,
            "the transaction could not be stored and was not accepted; send it again",
        ))

    def _refused(self, row: TransactionRow, entry: _Idempotent | None) -> RequestError:
        # The key was revoked after the request was checked but before its
        # commit: the store left the row out.
        return self._forget(row, entry, RequestError(
            ErrorCode.FORBIDDEN,
            "this API key has been revoked; the transaction was not accepted",
        ))

    def _forget(
        self, row: TransactionRow, entry: _Idempotent | None, error: RequestError
    ) -> RequestError:
        """
        Undo the acceptance of a row that was not stored: release its
        reservation and its idempotency key, and fail repeats waiting for it.
        """
        self._release(row)
        if entry is not None:
            key = (row.key_id, row.idempotency_key)
            if self._idempotent.get(key) is entry:
                del self._idempotent[key]
            for d in entry.waiting:
                d.errback(error)
        return error

    def _announce_pending(self) -> None:
        rows, self._to_announce = self._to_announce, []
        if rows:
            self._publish(rows)

    # Blocks

    def produce_block(self) -> "Deferred[int | None]":
        """
        Confirm pending transactions in submission order in one database
        transaction; fires with the new block number, or C{None} if there
        was nothing to confirm or a block is already being written.
        """
        if self._block_in_progress or not self._pending:
            return succeed(None)
        batch = self._pending[: self._block_size]
        number = self.last_block + 1
        now = self._clock.seconds()
        balances: dict[tuple[str, str], int] = {}
        outcomes: list[tuple[str, str, str | None]] = []
        for row in batch:
            source = (row.sender, row.token_id)
            have = balances.get(source, self._confirmed.get(source, 0))
            if have < row.amount:
                # Cannot happen while reservations hold; kept as a guard.
                outcomes.append((row.transaction_id, FAILED, "insufficient confirmed balance"))
                continue
            target = (row.recipient, row.token_id)
            balances[source] = have - row.amount
            balances[target] = balances.get(target, self._confirmed.get(target, 0)) + row.amount
            outcomes.append((row.transaction_id, CONFIRMED, None))
        self._block_in_progress = True
        failed = [(t, reason) for t, status, reason in outcomes if status == FAILED]
        d = self._store.write_block(
            number, now, (batch[0].seq, batch[-1].seq), len(batch), failed, balances
        )
        d.addCallbacks(
            self._block_written, self._block_failed,
            (number, now, batch, outcomes, balances), None, (number,),
        )
        return d

    def _block_written(self, _, number, now, batch, outcomes, balances) -> int:
        self._announce_pending()
        self._block_in_progress = False
        self.last_block = number
        del self._pending[: len(batch)]
        self._confirmed.update(balances)
        volume: dict[str, int] = {}
        for row, (_, status, reason) in zip(batch, outcomes, strict=True):
            self._release(row)
            row.status = status
            row.reason = reason
            row.block_number = number
            row.confirmed_at = now
            if status == CONFIRMED:
                volume[row.token_id] = volume.get(row.token_id, 0) + row.amount
        self._publish(batch)
        for token_id, amount in volume.items():
            self._volume[token_id].record(now, amount)
        self._forget_old_keys(now)
        return number

    def _block_failed(self, failure: Failure, number: int) -> None:
        self._block_in_progress = False
        self.log.failure("Writing block {number} failed; its transactions stay pending",
                         failure, number=number)

    def _forget_old_keys(self, now: float) -> None:
        horizon = now - IDEMPOTENCY_WINDOW
        # Entries are kept in submission order: look only at the old ones.
        old = []
        for key, entry in self._idempotent.items():
            if entry.transaction.submitted_at >= horizon:
                break
            if entry.waiting is None:
                old.append(key)
        for key in old:
            del self._idempotent[key]


def describe_transaction(row: TransactionRow, token: Token) -> dict[str, object]:
    """
    The C{data} of a C{transaction} reply.
    """
    data: dict[str, object] = {
        "transaction_id": row.transaction_id,
        "from": row.sender,
        "to": row.recipient,
        "amount": format_units(row.amount, token.decimals),
        "token_id": row.token_id,
        "status": row.status,
        "block_number": row.block_number,
        "timestamp": isoformat(row.submitted_at),
    }
    if row.reason is not None:
        data["reason"] = row.reason
    return data


def _parameters(row: TransactionRow) -> tuple:
    return (row.sender, row.recipient, row.token_id, row.amount)


