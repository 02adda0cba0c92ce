"""
Heartbeats and the silence timeout, for every connection from two
service-level timers (never one per connection).

Every heartbeat interval one C{heartbeat} message is encoded and framed once
(in production followed by a WebSocket ping, which client libraries answer
by themselves: L{rustorium.websocket.prepare_heartbeat}) and sent to every
session. Every second the sessions that have sent nothing, not a message
and not a frame, pongs included, for the silence timeout are closed with
4100 (reconnect with backoff); the registry keeps sessions ordered by when
each was last heard from, so that check looks only at the silent ones.
"""

from collections.abc import Callable
from typing import Any

import orjson
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.logger import Logger

from .closecodes import CloseCode
from .server import Server
from .timestamps import isoformat

SWEEP_INTERVAL = 1.0


class HeartbeatService(MultiService):
    """
    Sends heartbeats and closes silent connections.
    """

    log = Logger()

    def __init__(self, server: Server, clock: Any, prepare: Callable[[bytes], Any]) -> None:
        super().__init__()
        self._server = server
        self._clock = clock
        self._prepare = prepare
        settings = server.settings
        self._timeout = settings.silence_timeout
        for interval, job in (
            (settings.heartbeat_interval, self.beat),
            (min(SWEEP_INTERVAL, self._timeout), self.sweep),
        ):
            timer = TimerService(interval, job)
            timer.clock = clock
            timer.setServiceParent(self)

    def beat(self) -> None:
        """
        Send one heartbeat (and ping) to every session.
        """
        try:
            payload = orjson.dumps(
                {"type": "heartbeat", "data": {"timestamp": isoformat(self._clock.seconds())}}
            )
            frame = self._prepare(payload)
            for session in self._server.sessions:
                session.send_frame(frame)
        except Exception:
            self.log.failure("Sending heartbeats failed")

    def sweep(self) -> None:
        """
        Close every session silent for longer than the timeout.
        """
        try:
            deadline = self._clock.seconds() - self._timeout
            for session in self._server.sessions.silent_since(deadline):
                session.close(
                    CloseCode.HEARTBEAT_TIMEOUT,
                    f"nothing received for {self._timeout:g} s; "
                    "answer heartbeats with heartbeat_response",
                )
        except Exception:
            self.log.failure("Closing silent connections failed")
