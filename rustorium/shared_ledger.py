"""
The ledger of a cluster: the database guards the money.

Several nodes accept transfers from the same addresses, so no node's memory
can hold the available balance. Each node validates a transfer (token,
amount, addresses, the key's right to send: L{rustorium.transfers}), then
its group commit hands a batch to the database, which in one transaction
locks the senders' balance rows, refuses what the available balance
(confirmed minus pending outflows) does not cover, claims idempotency keys
and stores the rest as pending with their reservations
(L{rustorium.storage.shared_ledger.accept_transfers}). Only then is the
client answered: nothing answered is lost, and no address is overspent
however many nodes race.

Blocks are written by whichever node runs the sources (see
L{rustorium.leadership}); the database also lets only one transaction at a
time write a block, and none sooner than half a block interval after the
last, so a node that still thinks it leads cannot double a block. A block
confirms, in submission order, the pending transfers older than a short
grace period: their C{pending} update, published by the accepting node just
after its commit, then comes before the C{confirmed} one.
"""

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .amounts import format_units
from .catalog import Catalog, Token
from .errors import ErrorCode, RequestError
from .groupcommit import GroupCommit
from .ledger import IDEMPOTENCY_WINDOW, new_transaction_id
from .requests import ExecuteTransaction
from .rolling import DAY, RollingWindow
from .storage import Database
from .storage.keys import ApiKey
from .storage.ledger import TransactionRow, find_transaction, transactions_of
from .storage.shared_ledger import (
    ACCEPTED,
    CONFLICT,
    INSUFFICIENT,
    REPEAT,
    REVOKED,
    Block,
    Dialect,
    Outcome,
    Transfer,
    accept_transfers,
    confirmed_volume_since,
    count_pending,
    last_block,
    read_balance,
    write_next_block,
)
from .transfers import known_token, validate_transfer

PENDING_GRACE = 0.5
"""Seconds a pending transfer waits before a block may confirm it, so
that its C{pending} update (published by the node that accepted it, right
after the commit) goes out first."""


@attrs.define
class _InFlight:
    """
    An idempotency key whose transfer is being stored by this node: repeats
    sent to this node meanwhile wait for it.
    """

    parameters: tuple
    waiting: list[Callable[[], None]] = attrs.Factory(list)


def _chain_state(txn: Any) -> tuple[int, int]:
    return last_block(txn)[0], count_pending(txn)


class SharedLedger:
    """
    Transfers, balances and blocks on a database shared by every node.

    @ivar last_block: the number of the last block this node wrote or saw.
    """

    log = Logger()

    def __init__(
        self,
        catalog: Catalog,
        database: Database,
        dialect: Dialect,
        clock: Any,
        announce: Callable[[list[TransactionRow]], None],
        block_interval: float,
        commit_batch: int = 1000,
        block_size: int = 100_000,
    ) -> None:
        """
        @param announce: publishes transaction updates for rows whose
            status changed (pending, then confirmed or failed).
        """
        self._catalog = catalog
        self._database = database
        self._dialect = dialect
        self._clock = clock
        self._announce = announce
        self._block_interval = block_interval
        self._block_size = block_size
        self._committer: GroupCommit[Transfer] = GroupCommit(self._store, commit_batch)
        self._in_flight: dict[tuple[int, str], _InFlight] = {}
        self._to_announce: list[TransactionRow] = []
        self._volume: dict[str, RollingWindow] = {t: RollingWindow() for t in catalog.tokens}
        self._block_in_progress = False
        self._pending_seen = 0
        self.last_block = 0

    # Queries

    def token(self, token_id: str) -> Token:
        """
        @raise RequestError: C{not_found} for an unknown token.
        """
        return known_token(self._catalog, token_id)

    def balance(self, address: str, token_id: str) -> "Deferred[tuple[int, int]]":
        """
        The confirmed and the available balance, in base units.
        """
        return self._database.run(read_balance, address, token_id)

    def find(self, transaction_id: str) -> "Deferred[TransactionRow | None]":
        return self._database.run(find_transaction, transaction_id)

    def transactions_of(self, address: str, limit: int) -> "Deferred[list[TransactionRow]]":
        """
        The last C{limit} transactions from or to C{address}, newest first.
        """
        return self._database.run(transactions_of, address, limit)

    def chain_state(self) -> "Deferred[tuple[int, int]]":
        """
        Fires with the block height and the number of pending transactions,
        as the database has them (whichever node writes the blocks).
        """
        return self._database.run(_chain_state)

    def volume_24h(self, token_id: str) -> int:
        """
        Confirmed transfer volume of a token over the trailing 24 h, as
        this node knows it: complete on the node that writes the blocks
        (after L{load_volume}).
        """
        window = self._volume.get(token_id)
        if window is None:
            return 0
        window.expire(self._clock.seconds())
        return window.total

    def load_volume(self) -> Deferred:
        """
        Read the trailing 24 h of block volumes, for a node about to run
        the market.
        """
        d = self._database.run(confirmed_volume_since, self._clock.seconds() - DAY)

        def loaded(volumes: list[tuple[float, str, int]]) -> None:
            self._volume = {t: RollingWindow() for t in self._catalog.tokens}
            for at, token_id, amount in volumes:
                if token_id in self._volume:
                    self._volume[token_id].record(at, amount)

        return d.addCallback(loaded)

    @property
    def busy(self) -> bool:
        """
        Whether a commit or a block is being written.
        """
        return self._block_in_progress or self._committer.busy

    @property
    def pending_count(self) -> int:
        """
        Pending transfers as of the last block this node wrote, plus those
        queued here.
        """
        return self._pending_seen + self._committer.queued

    # Commands

    def submit(self, api_key: ApiKey, request: ExecuteTransaction) -> "Deferred[TransactionRow]":
        """
        Validate a transfer and have the database accept it. Fires with the
        transaction once it is committed (or with the first transaction of
        a repeated idempotency key).

        @raise RequestError: at once, for a request refused before the
            database is asked.
        """
        token, amount = validate_transfer(self._catalog, api_key, request)
        parameters = (request.sender, request.recipient, request.token_id, amount)
        d: Deferred[TransactionRow] = Deferred()
        key = request.idempotency_key
        if key is not None:
            in_flight = self._in_flight.get((api_key.key_id, key))
            if in_flight is not None:
                # Wait for the first use of the key to be stored here, then
                # ask again: the database gives the same transaction.
                if in_flight.parameters != parameters:
                    raise RequestError(
                        ErrorCode.INVALID_PARAMS,
                        f"idempotency_key {key!r} is being used for another transaction "
                        "with other parameters",
                    )
                in_flight.waiting.append(
                    lambda: self._queue(api_key, request, token, amount, parameters, d)
                )
                return d
        self._queue(api_key, request, token, amount, parameters, d)
        return d

    def _queue(
        self, api_key: ApiKey, request: ExecuteTransaction, token: Token, amount: int,
        parameters: tuple, d: Deferred,
    ) -> None:
        key = request.idempotency_key
        if key is not None:
            if (api_key.key_id, key) in self._in_flight:
                self._in_flight[api_key.key_id, key].waiting.append(
                    lambda: self._queue(api_key, request, token, amount, parameters, d)
                )
                return
            self._in_flight[api_key.key_id, key] = _InFlight(parameters)
        transfer = Transfer(
            new_transaction_id(), request.sender, request.recipient, request.token_id, amount,
            api_key.key_id, key, self._clock.seconds(),
        )
        self._committer.add(transfer, lambda result: self._stored(result, transfer, token, d))

    def _store(self, transfers: list[Transfer]) -> "Deferred[dict[str, Outcome]]":
        """
        Have the database accept a batch; fires with each transfer's
        L{Outcome} by transaction id.
        """
        expired_before = self._clock.seconds() - IDEMPOTENCY_WINDOW
        d = self._database.run(accept_transfers, self._dialect, transfers, expired_before)
        return d.addCallback(
            lambda outcomes: {t.transaction_id: o for t, o in zip(transfers, outcomes, strict=True)}
        )

    def _stored(
        self, result: "dict[str, Outcome] | Failure", transfer: Transfer, token: Token,
        d: Deferred,
    ) -> None:
        waiting = []
        if transfer.idempotency_key is not None:
            in_flight = self._in_flight.pop((transfer.key_id, transfer.idempotency_key), None)
            waiting = in_flight.waiting if in_flight is not None else []
        if isinstance(result, Failure):
            self.log.failure("Storing transaction {id} failed; it was not accepted", result,
                             id=transfer.transaction_id)
            d.errback(RequestError(
                ErrorCode.INTERNAL_ERROR,
                "the transaction could not be stored and was not accepted; send it again",
            ))
        else:
            self._answer(result[transfer.transaction_id], transfer, token, d)
        for retry in waiting:
            retry()

    def _answer(self, outcome: Outcome, transfer: Transfer, token: Token, d: Deferred) -> None:
        if outcome.kind == ACCEPTED:
            if not self._to_announce:
                self._clock.callLater(0, self._announce_pending)
            self._to_announce.append(outcome.row)
            d.callback(outcome.row)
        elif outcome.kind == REPEAT:
            d.callback(outcome.row)
        elif outcome.kind == CONFLICT:
            d.errback(RequestError(
                ErrorCode.INVALID_PARAMS,
                f"idempotency_key {transfer.idempotency_key!r} was already used for "
                f"transaction {outcome.row.transaction_id} with other parameters",
            ))
        elif outcome.kind == INSUFFICIENT:
            d.errback(RequestError(
                ErrorCode.INSUFFICIENT_FUNDS,
                f"the available balance of {transfer.sender} is "
                f"{format_units(outcome.available, token.decimals)} {token.symbol}, less than "
                f"{format_units(transfer.amount, token.decimals)}",
            ))
        else:
            assert outcome.kind == REVOKED, outcome
            d.errback(RequestError(ErrorCode.FORBIDDEN, "this API key has been revoked"))

    def _announce_pending(self) -> None:
        rows, self._to_announce = self._to_announce, []
        self._announce(rows)

    # Blocks

    def produce_block(self) -> "Deferred[int | None]":
        """
        Write the next block if it is due and anything is pending; fires
        with its number, or C{None}.
        """
        if self._block_in_progress:
            return succeed(None)
        self._block_in_progress = True
        now = self._clock.seconds()
        d = self._database.run(
            write_next_block, self._dialect, now, now - PENDING_GRACE,
            self._block_interval / 2, self._block_size,
        )
        d.addBoth(self._block_done)
        d.addCallback(self._block_written)
        return d

    def _block_done(self, result: object) -> object:
        self._block_in_progress = False
        return result

    def _block_written(self, block: Block | None) -> "Deferred[int | None]":
        if block is None:
            return self._database.run(count_pending).addCallback(self._counted)
        self.last_block = block.number
        for token_id, amount in block.volume.items():
            if token_id in self._volume:
                self._volume[token_id].record(block.timestamp, amount)
        self._announce(block.rows)
        d = self._database.run(count_pending).addCallback(self._counted)
        return d.addCallback(lambda _: block.number)

    def _counted(self, pending: int) -> None:
        self._pending_seen = pending
