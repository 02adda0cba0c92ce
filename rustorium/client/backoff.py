"""
The reconnect schedule: how long to wait before each retry.

The specification asks for a first retry after 1 second, exponential
backoff, and never more than 30 seconds between retries. Many clients that
lost the same server at the same moment must not retry in step, so the wait
has *equal jitter*: half of each nominal wait is fixed, the other half
random.
"""

import random as _random
from collections.abc import Callable

FIRST_RETRY = 1.0
"""Seconds before the first retry, at least."""
FACTOR = 2.0
"""Each failed retry doubles the wait."""
MAX_DELAY = 30.0
"""Never wait longer than this."""


def backoff(attempt: int, random: Callable[[], float] = _random.random) -> float:
    """
    Seconds to wait before retry number C{attempt} (1 for the first).

    The nominal wait of retry n is C{min(30, 2 * 2**(n-1))}; the retry waits
    a random time between half of it and all of it (equal jitter). So the
    first retry waits 1 to 2 s, the second 2 to 4 s, each lower bound
    doubling, and from the fifth on 15 to 30 s: never sooner than the
    specification's 1 s, never longer than its 30 s.

    @param random: returns a float in [0, 1); tests pass a fake.
    """
    exponent = min(max(attempt, 1) - 1, 32)
    nominal = min(MAX_DELAY, 2 * FIRST_RETRY * FACTOR**exponent)
    half = nominal / 2
    return min(MAX_DELAY, half + half * random())
