"""
Keeping under the server's rate limit.

The server takes 10 messages per second per connection (a token bucket
holding 10) and refuses the excess with C{rate_limit_exceeded}; a client
that keeps going is disconnected. After a reconnect the client may have
many subscriptions to renew at once, so it queues its messages and sends
them no faster than a bucket a little smaller and slower than the
server's: network jitter can bunch messages up on the way.
"""

from typing import Any

from ..ratelimit import TokenBucket

DEFAULT_RATE = 10.0
DEFAULT_BURST = 10
RATE_MARGIN = 0.9
"""Send at most this fraction of the server's rate."""
BURST_MARGIN = 2
"""Keep this many of the server's tokens in reserve."""


class Pacer:
    """
    Decides when the next queued message may be sent.
    """

    def __init__(self, clock: Any, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST) -> None:
        self._clock = clock
        self._rate = rate
        self._burst = burst
        self._hold_until = 0.0
        self.reset()

    def configure(self, rate: float, burst: int) -> None:
        """
        Use the server's limits (from C{server_info}).
        """
        if rate > 0 and burst >= 1 and (rate, burst) != (self._rate, self._burst):
            self._rate, self._burst = rate, burst
            self.reset()

    def reset(self) -> None:
        """
        A new connection: the server's bucket for it starts full.
        """
        self._bucket = TokenBucket(self._rate * RATE_MARGIN,
                                   max(1, self._burst - BURST_MARGIN), self._clock.seconds)
        self._hold_until = 0.0

    def hold(self, seconds: float) -> None:
        """
        Send nothing for C{seconds} (the server's C{retry_after}).
        """
        self._hold_until = max(self._hold_until, self._clock.seconds() + seconds)

    def take(self) -> float:
        """
        Take a token for one message: 0 if it may go now, else the seconds
        to wait before asking again.
        """
        wait = self._hold_until - self._clock.seconds()
        if wait > 0:
            return wait
        if self._bucket.take():
            return 0.0
        return max(self._bucket.retry_after(), 0.001)
