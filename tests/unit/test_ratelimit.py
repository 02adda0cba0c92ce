"""
The token bucket and the flood window, on a fake clock.
"""

import pytest
from twisted.internet.task import Clock

from rustorium.ratelimit import FloodWindow, TokenBucket


def test_burst_and_refill():
    clock = Clock()
    bucket = TokenBucket(10, 10, clock.seconds)
    assert all(bucket.take() for _ in range(10))
    assert not bucket.take()
    assert bucket.retry_after() == pytest.approx(0.1)
    clock.advance(0.05)
    assert not bucket.take()
    assert bucket.retry_after() == pytest.approx(0.05)
    clock.advance(0.05)
    assert bucket.take()


def test_never_above_burst():
    clock = Clock()
    bucket = TokenBucket(10, 3, clock.seconds)
    clock.advance(1000)
    assert bucket.available() == 3
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_clock_going_backwards_adds_nothing():
    clock = Clock()
    clock.advance(100)
    bucket = TokenBucket(1, 1, clock.seconds)
    bucket.take()
    clock.rightNow = 50
    assert not bucket.take()


def test_flood_window():
    clock = Clock()
    window = FloodWindow(3, 10, clock.seconds)
    assert [window.exceeded() for _ in range(4)] == [False, False, False, True]
    clock.advance(10)
    assert not window.exceeded()
