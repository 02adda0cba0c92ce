"""
The token bucket, the per-key buckets and the flood window, on a fake clock.
"""

import pytest
from twisted.internet.task import Clock

from rustorium.ratelimit import FloodWindow, KeyBuckets, TokenBucket


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


class TestKeyBuckets:
    def test_one_bucket_per_key(self):
        """
        Every lookup of a key finds the same bucket; other keys have their
        own.
        """
        clock = Clock()
        buckets = KeyBuckets(100, 2, clock.seconds)
        assert buckets.bucket(1).take()
        assert buckets.bucket(1).take()
        assert not buckets.bucket(1).take()
        assert buckets.bucket(2).take()

    def test_only_full_buckets_are_forgotten(self):
        """
        Once enough keys come and go, buckets that have refilled are
        dropped (a new one would be the same), and a bucket still short of
        tokens is kept: reconnecting never refills it early.
        """
        clock = Clock()
        buckets = KeyBuckets(1, 10, clock.seconds)
        for _ in range(10):
            buckets.bucket(0).take()
        clock.advance(5)
        for key_id in range(1, 64):
            buckets.bucket(key_id)
        buckets.bucket(64)
        assert len(buckets) == 2
        assert buckets.bucket(0).available() == 5

    def test_memory_stays_bounded(self):
        """
        Thousands of keys each sending once, with time passing, leave a
        bounded number of buckets.
        """
        clock = Clock()
        buckets = KeyBuckets(100, 200, clock.seconds)
        for key_id in range(10_000):
            buckets.bucket(key_id).take()
            clock.advance(0.1)
        assert len(buckets) <= 128
