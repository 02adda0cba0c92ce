"""
Noticing a dead connection.

A TCP connection whose peer vanished (a pulled cable, a crashed host, a
NAT that forgot the mapping) can look open for a long time. The server
sends a heartbeat every 30 s and updates in between, so a connection on
which nothing at all has arrived for the heartbeat timeout (three
intervals) is taken as dead.
"""

from collections.abc import Callable
from typing import Any

DEFAULT_TIMEOUT = 90.0
"""Seconds of silence before a connection counts as dead, until the server says."""


class SilenceWatchdog:
    """
    Calls C{on_silence} when nothing has been received for C{timeout}
    seconds.

    It keeps one timer and does not move it for every message: a message
    only records the time, and when the timer fires it either finds the
    connection silent or sets itself again for the end of the new window.
    That is one C{callLater} per timeout, however busy the connection.
    """

    def __init__(self, clock: Any, on_silence: Callable[[], object],
                 timeout: float = DEFAULT_TIMEOUT) -> None:
        """
        @param clock: an C{IReactorTime}.
        """
        self._clock = clock
        self._on_silence = on_silence
        self.timeout = timeout
        self._last = 0.0
        self._call: Any = None

    def start(self) -> None:
        """
        Start watching (a connection has just opened).
        """
        self.stop()
        self._last = self._clock.seconds()
        self._call = self._clock.callLater(self.timeout, self._check)

    def touch(self) -> None:
        """
        Something was received.
        """
        self._last = self._clock.seconds()

    def set_timeout(self, timeout: float) -> None:
        """
        Use another timeout (as learnt from C{server_info}) from now on.
        """
        self.timeout = timeout
        if self._call is not None:
            self._call.cancel()
            self._schedule()

    def stop(self) -> None:
        if self._call is not None:
            if self._call.active():
                self._call.cancel()
            self._call = None

    def _schedule(self) -> None:
        delay = max(0.0, self._last + self.timeout - self._clock.seconds())
        self._call = self._clock.callLater(delay, self._check)

    def _check(self) -> None:
        if self._clock.seconds() - self._last >= self.timeout:
            self._call = None
            self._on_silence()
        else:
            self._schedule()
