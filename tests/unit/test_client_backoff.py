"""
The reconnect schedule: 1 s first, doubling, capped at 30 s, equal jitter.
"""

import pytest

from rustorium.client.backoff import MAX_DELAY, backoff


def never_random() -> float:
    return 0.0


def almost_one() -> float:
    return 0.999999


def test_first_retry_waits_one_second_at_least():
    """
    The specification's first retry comes after 1 second; jitter only adds
    (up to another second).
    """
    assert backoff(1, never_random) == 1.0
    assert 1.0 < backoff(1, almost_one) < 2.0


def test_doubles_until_the_cap():
    """
    Each attempt doubles the lower bound until the nominal wait reaches 30 s.
    """
    assert [backoff(n, never_random) for n in range(1, 8)] == [1, 2, 4, 8, 15, 15, 15]
    assert [round(backoff(n, almost_one)) for n in range(1, 8)] == [2, 4, 8, 16, 30, 30, 30]


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6, 10, 100, 10**6])
@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.999999])
def test_jitter_bounds(attempt, draw):
    """
    Equal jitter: the wait lies between half the nominal wait and all of
    it, and never above 30 s, even for absurd attempt numbers.
    """
    nominal = min(MAX_DELAY, 2.0 ** attempt if attempt < 64 else MAX_DELAY)
    wait = backoff(attempt, lambda: draw)
    assert nominal / 2 <= wait <= nominal
    assert wait <= MAX_DELAY
    assert wait == pytest.approx(nominal / 2 * (1 + draw))


def test_jitter_spreads_clients():
    """
    With a real random source, clients that failed together do not retry
    in step.
    """
    waits = {backoff(3) for _ in range(50)}
    assert len(waits) > 40
    assert all(4.0 <= w <= 8.0 for w in waits)


def test_attempt_zero_is_treated_as_first():
    assert backoff(0, never_random) == backoff(1, never_random) == 1.0
