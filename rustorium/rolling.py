"""
Trailing 24-hour sums in one-minute buckets, so that recording costs O(1)
however often it happens: traded volume and opening price for markets,
confirmed transfer volume for tokens.
"""

from collections import deque

DAY = 24 * 60 * 60.0
BUCKET = 60.0


class RollingWindow:
    """
    A sum over the trailing 24 h, and the first value recorded in the
    oldest minute still inside it.
    """

    __slots__ = ("_buckets", "_total")

    def __init__(self) -> None:
        # [bucket start, sum in the bucket, first value in the bucket]
        self._buckets: deque[list] = deque()
        self._total = 0

    def record(self, now: float, amount: int, value: int | None = None) -> None:
        """
        Add C{amount} at time C{now}, with an optional C{value} (a price)
        observed then.
        """
        start = now - now % BUCKET
        buckets = self._buckets
        if not buckets or buckets[-1][0] < start:
            buckets.append([start, 0, value])
        buckets[-1][1] += amount
        self._total += amount
        self.expire(now)

    def expire(self, now: float) -> None:
        """
        Forget what fell out of the trailing 24 h.
        """
        buckets = self._buckets
        while buckets and buckets[0][0] <= now - DAY:
            self._total -= buckets.popleft()[1]

    @property
    def total(self) -> int:
        """
        The sum over the trailing 24 h (as of the last record or expire).
        """
        return self._total

    @property
    def opening_value(self) -> int | None:
        """
        The oldest value within the trailing 24 h.
        """
        return self._buckets[0][2] if self._buckets else None
