"""
What the publishing path is made of: an L{Update} (numbered, encoded and
framed once, shared by every subscriber that receives it), the L{ISink}
that a subscriber receives updates through, the key an update is published
on (L{channel_key}), and L{MessageIds}, the durable numbering of a single
node.

The broker (L{rustorium.broker}) numbers, keeps and carries updates; the
fan-out (L{rustorium.fanout}) hands them to this process's subscribers.
"""

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from zope.interface import Interface, implementer

Deliver = Callable[["Update"], None]


class ISink(Interface):
    """
    Where the hub sends a subscriber's updates: usually a connection.
    """

    def deliver(update: "Update") -> None:
        """
        Send an update now.
        """

    def enqueue(update: "Update") -> bool:
        """
        Queue an update to be sent by the next L{flush}, with the others of
        the same batch; return C{True} if nothing was queued before it (so
        the hub knows to flush this sink once the batch is done).
        """

    def flush() -> None:
        """
        Send what L{enqueue} queued, in one write.
        """


@implementer(ISink)
class CallableSink:
    """
    A sink that hands each update to a function (tests and simple
    subscribers).
    """

    __slots__ = ("deliver",)

    def __init__(self, deliver: Deliver) -> None:
        self.deliver = deliver

    def enqueue(self, update: "Update") -> bool:
        self.deliver(update)
        return False

    def flush(self) -> None:
        pass


def channel_key(channel: str, name: str) -> str:
    """
    The hub key of one stream of updates: a channel and what it is about
    (a market symbol, a token id, an address).
    """
    return f"{channel}:{name}"


@attrs.frozen(slots=True, weakref_slot=False)
class Update:
    """
    One published update, shared by every subscriber that receives it.

    @ivar number: the C{n} of its id C{msg_<n>}: increasing across the server
        and across restarts (not contiguous).
    @ivar key: the channel key it was published on.
    @ivar payload: the encoded JSON message.
    @ivar frame: the payload framed for the wire by the hub's C{prepare}
        function (an Autobahn prepared message in the server).
    @ivar published_at: the reactor time of publication.
    @ivar conflatable: whether a newer update on the same key makes this one
        redundant (prices and volumes), so that a slow reader may be sent
        only the newest; transaction events are never conflated.
    @ivar also: the other keys this same update was published on (a
        transfer's event on its recipient's address too): a subscriber of
        several of them gets it once.
    """

    number: int
    key: str
    payload: bytes
    frame: Any
    published_at: float
    conflatable: bool = True
    also: tuple[str, ...] = ()

    @property
    def shared(self) -> bool:
        """
        Whether it is retained in the histories of several keys, so that a
        replay merging those keys must send it once.
        """
        return bool(self.also)


class MessageIds:
    """
    Allocates the C{n} of C{msg_<n>}, increasing across restarts.

    The database holds a ceiling: no id above it was ever issued. At start-up
    the hub continues above the old ceiling and durably raises it by a block
    before serving; when half a block is used, it raises it again in the
    background. A crash therefore skips at most a block of numbers and never
    repeats one.
    """

    log = Logger()

    def __init__(
        self, first: int, ceiling: int, block: int, reserve: Callable[[int], Any] | None = None
    ) -> None:
        """
        @param first: the next number to issue.
        @param ceiling: the durable ceiling (C{first <= ceiling}).
        @param block: how far each reservation raises the ceiling.
        @param reserve: called with a new ceiling to store it; may return a
            Deferred.
        """
        self._next = first
        self._ceiling = ceiling
        self._block = block
        self._reserve = reserve
        self._reserving = False

    @property
    def last(self) -> int:
        """
        The last number issued (or the one before the first).
        """
        return self._next - 1

    def next(self) -> int:
        """
        Issue the next number.
        """
        number = self._next
        self._next = number + 1
        if not self._reserving and self._ceiling - number < self._block // 2:
            self._extend()
        return number

    def _extend(self) -> None:
        if self._reserve is None:
            self._ceiling += self._block
            return
        self._reserving = True
        target = self._ceiling + self._block
        d = maybeDeferred(self._reserve, target)

        def reserved(_: object) -> None:
            self._ceiling = target
            self._reserving = False

        def failed(failure: Any) -> None:
            self._reserving = False
            self.log.failure("Could not reserve message ids up to {target}", failure, target=target)

        d.addCallbacks(reserved, failed)
