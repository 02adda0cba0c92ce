"""
One key's retained updates in memory, for replay after a reconnect.
"""

from bisect import bisect_right
from collections import deque

from ..hub import Update


class KeyHistory:
    """
    A key's updates, oldest first, bounded by count and age.

    @ivar evicted: the highest message number evicted so far (0 if none):
        a replay from below it may have missed something.
    @ivar watchers: how many subscriptions watch the key.
    """

    __slots__ = ("entries", "evicted", "watchers")

    def __init__(self) -> None:
        self.entries: deque[Update] = deque()
        self.evicted = 0
        self.watchers = 0

    def append(self, update: Update, size: int, oldest: float) -> None:
        """
        Keep C{update}, evicting the oldest beyond C{size} or published
        before C{oldest}.
        """
        self.entries.append(update)
        if len(self.entries) > size:
            self.evicted = self.entries.popleft().number
        self.expire(oldest)

    def expire(self, oldest: float) -> None:
        """
        Evict the updates published before C{oldest}.
        """
        entries = self.entries
        while entries and entries[0].published_at < oldest:
            self.evicted = entries.popleft().number

    def after(self, start: int) -> tuple[list[Update], tuple[int, int] | None]:
        """
        The updates numbered above C{start}, and the range of numbers in
        which some may have been evicted (C{None} if none was).
        """
        entries = list(self.entries)
        index = bisect_right(entries, start, key=lambda update: update.number)
        lost = (start + 1, self.evicted) if self.evicted > start else None
        return entries[index:], lost
