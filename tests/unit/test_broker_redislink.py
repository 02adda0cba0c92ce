"""
The pieces of the Redis link that need no server.
"""

import hashlib

import pytest
import txredisapi

from rustorium.broker.redislink import CommandProtocol, RedisAddress, Script, backoff


def test_address_from_url():
    assert RedisAddress.from_url("redis://cache.example:6380/2") == RedisAddress(
        "cache.example", 6380, 2
    )
    assert RedisAddress.from_url("redis://127.0.0.1") == RedisAddress("127.0.0.1", 6379, 0)
    assert RedisAddress.from_url("redis://:s%40cret@h:1/0").password == "s@cret"
    assert RedisAddress.from_url("redis://u:p@h:1/0").username == "u"
    assert str(RedisAddress.from_url("redis://:secret@h:1/3")) == "redis://h:1/3"


@pytest.mark.parametrize("url", ["http://h:1/0", "redis:///0", "redis://h:1/x", "h:6379"])
def test_address_rejects_other_urls(url):
    with pytest.raises(ValueError):
        RedisAddress.from_url(url)


def test_backoff_doubles_up_to_a_bound_with_jitter():
    delays = [backoff(attempt) for attempt in range(1, 12)]
    assert 0.09 <= delays[0] <= 0.11
    assert 0.18 <= delays[1] <= 0.22
    assert all(4.5 <= d <= 5.5 for d in delays[7:])
    assert backoff(10_000) <= 5.5


def test_script_is_run_by_the_sha1_of_its_source():
    script = Script.load("detach.lib", "detach")
    assert script.name == "detach"
    assert script.sha == hashlib.sha1(script.source).hexdigest()
    assert b"local function detach" in script.source
    assert script.source.index(b"local function detach") < script.source.index(b"ARGV[3]")


def test_commands_are_encoded_as_txredisapi_encodes_them():
    """
    The faster encoder writes the same bytes as txredisapi's own.
    """
    args = ("EVALSHA", b"\x00bytes\r\n", 3, 1.5, "caf\u00e9", -7, bytearray(b"ba"))
    ours = CommandProtocol(charset=None, convertNumbers=False)._build_command(*args)
    theirs = txredisapi.BaseRedisProtocol(charset=None)._build_command(*args)
    assert ours == theirs
    assert ours.startswith(b"*7\r\n$7\r\nEVALSHA\r\n$8\r\n\x00bytes\r\n\r\n")


class TestGraceCall:
    """
    A reply's timeout, once due, waits for one poll of I/O: a reply that
    came while the reactor was busy cancels it then.
    """

    def test_runs_one_turn_after_it_is_due(self):
        from twisted.internet.task import Clock

        from rustorium.broker.redislink import GraceCall

        clock, ran = Clock(), []
        call = GraceCall(clock, 5.0, ran.append, "timed out")
        clock.advance(5.0)
        # Due: not run yet, still cancellable (the reply may be in the socket).
        assert ran == [] and call.active()
        clock.advance(0.001)
        assert ran == ["timed out"] and not call.active()

    def test_a_reply_read_in_that_turn_cancels_it(self):
        from twisted.internet.task import Clock

        from rustorium.broker.redislink import GraceCall

        clock, ran = Clock(), []
        call = GraceCall(clock, 5.0, ran.append, "timed out")
        clock.advance(5.0)
        call.cancel()  # as the reply's Deferred does (txredisapi's cancel_timeout)
        clock.advance(1)
        assert ran == [] and not call.active()

    def test_the_protocol_times_replies_out_with_it(self):
        from rustorium.broker.redislink import CommandProtocol, GraceCall

        protocol = CommandProtocol()
        assert isinstance(protocol.callLater(5.0, lambda: None), GraceCall)
