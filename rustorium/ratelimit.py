"""
Rate limiting: token buckets refilled lazily from the reactor's clock, so
they need no timer and are tested with C{task.Clock}. Each connection has
one, and each API key one more that all its connections share.
"""

import math
from collections.abc import Callable

_TOLERANCE = 1e-4
"""
Tokens forgiven to float rounding: at today's epoch seconds a clock
reading is only accurate to about 2e-7 s, so a client that waits exactly
C{retry_after} could otherwise find the bucket a hair short.
"""


class TokenBucket:
    """
    A bucket of C{burst} tokens refilled at C{rate} per second; each message
    takes one.
    """

    __slots__ = ("_burst", "_now", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, now: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._now = now
        self._tokens = float(burst)
        self._stamp = now()

    def _refill(self) -> float:
        now = self._now()
        if now > self._stamp:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        return self._tokens

    def take(self) -> bool:
        """
        Take a token if there is one.
        """
        if self._refill() >= 1.0 - _TOLERANCE:
            self._tokens = max(0.0, self._tokens - 1.0)
            return True
        return False

    def available(self) -> float:
        """
        Tokens in the bucket now.
        """
        return self._refill()

    def retry_after(self) -> float:
        """
        Seconds until a token will be available (0 if one is now), rounded
        up to the millisecond.
        """
        return max(0.0, math.ceil((1.0 - self._refill()) / self._rate * 1000) / 1000)


class KeyBuckets:
    """
    One token bucket per API key, taken from by every connection of the key.

    A limit per connection alone multiplies with the connections a key
    opens, and a new connection starts with a full bucket; this one does
    neither. A key's bucket outlives its connections until it has refilled:
    a full bucket is what a new one would be, so only full buckets are ever
    forgotten, and reconnecting never refills one early.
    """

    __slots__ = ("_buckets", "_burst", "_now", "_prune_at", "_rate")

    _MIN_PRUNE = 64

    def __init__(self, rate: float, burst: int, now: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = burst
        self._now = now
        self._buckets: dict[int, TokenBucket] = {}
        self._prune_at = self._MIN_PRUNE

    def bucket(self, key_id: int) -> TokenBucket:
        """
        The key's bucket, made full if it has none.
        """
        bucket = self._buckets.get(key_id)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._forget_full()
            bucket = self._buckets[key_id] = TokenBucket(self._rate, self._burst, self._now)
        return bucket

    def _forget_full(self) -> None:
        # Amortised: after a prune, the next waits until the number of
        # buckets has doubled, so memory stays within twice the keys active
        # in the last burst / rate seconds.
        full = [k for k, b in self._buckets.items() if b.available() >= self._burst]
        for key_id in full:
            del self._buckets[key_id]
        self._prune_at = max(self._MIN_PRUNE, 2 * len(self._buckets))

    def __len__(self) -> int:
        return len(self._buckets)


class FloodWindow:
    """
    Counts rate-limited messages in fixed windows, to tell a client that
    keeps sending past the limit (which is closed) from one that overshoots
    now and then (which only gets errors).
    """

    __slots__ = ("_count", "_limit", "_now", "_start", "_window")

    def __init__(self, limit: int, window: float, now: Callable[[], float]) -> None:
        self._limit = limit
        self._window = window
        self._now = now
        self._start = now()
        self._count = 0

    def exceeded(self) -> bool:
        """
        Record one rejected message; C{True} once more than C{limit} fall
        within one window.
        """
        now = self._now()
        if now - self._start >= self._window:
            self._start = now
            self._count = 0
        self._count += 1
        return self._count > self._limit
