"""
Group commit: accepted transactions from many connections share one
database commit instead of paying one sync each.

While a commit is in flight, newly accepted rows queue; when it completes,
everything queued (up to a batch size) goes in the next commit. Under light
load every row is committed alone and at once; under heavy load batches
grow by themselves. Nobody's Deferred fires before the commit holding their
row has completed, so "on disk before the response" holds for every row.
"""

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger

Row = TypeVar("Row")
Done = Callable[[Any], None]
"""Called with the result of the write that committed a row, or a Failure."""


class GroupCommit(Generic[Row]):
    """
    Batches rows into calls of C{write(rows)}, one at a time.
    """

    log = Logger()

    def __init__(self, write: Callable[[list[Row]], Any], max_batch: int) -> None:
        """
        @param write: stores a list of rows durably; returns a Deferred that
            fires once they are committed (with a result every row's
            C{done} is given).
        @param max_batch: the most rows in one commit.
        """
        self._write = write
        self._max_batch = max_batch
        self._queue: list[tuple[Row, Done]] = []
        self._writing = False
        self.commits = 0

    def add(self, row: Row, done: Done) -> None:
        """
        Queue a row; C{done(result)} is called with the result of the
        C{write} that committed it, or C{done(failure)} with the reason it
        could not be. (A callback, not a Deferred: this is on the path of
        every transaction.)
        """
        self._queue.append((row, done))
        if not self._writing:
            self._flush()

    @property
    def busy(self) -> bool:
        """
        Whether a commit is in flight or rows wait for one.
        """
        return self._writing or bool(self._queue)

    @property
    def queued(self) -> int:
        """
        Rows waiting for the next commit.
        """
        return len(self._queue)

    def _flush(self) -> None:
        batch = self._queue[: self._max_batch]
        del self._queue[: self._max_batch]
        self._writing = True
        self.commits += 1
        written = maybeDeferred(self._write, [row for row, _ in batch])
        written.addBoth(self._written, batch)

    def _written(self, result: object, batch: list[tuple[Row, Done]]) -> None:
        # Resolve this batch before the next commit starts (rows added by
        # the callbacks queue meanwhile), so that callers learn of their
        # rows strictly in the order they were added, even with a store
        # that completes at once.
        for _, done in batch:
            try:
                done(result)
            except Exception:
                # One caller's failure must not keep the others waiting.
                self.log.failure("Resolving a committed row failed")
        self._writing = False
        if self._queue:
            self._flush()
