"""
The operator console's sign-in sessions, kept in this node's memory.

Signing in with an C{admin} key opens a session: a random token (the
C{rustorium_console} cookie, HttpOnly and SameSite=Strict) and a second
random token for forms (sent back in the C{X-CSRF-Token} header of every
request that changes something). The key itself is not kept: a session
holds the key's id and name, and each request checks that the key still
exists, unrevoked, with its C{admin} scope.

Sessions live in the memory of the node that opened them: a browser that
ends up on another node of a cluster (or on this one after a restart)
signs in again. They expire a fixed time after sign-in
(C{console-session-lifetime}), not on activity, so a forgotten tab does
not stay signed in for ever.
"""

import hashlib
import hmac
import secrets
from collections.abc import Iterator
from typing import Any

import attrs

COOKIE = b"rustorium_console"
"""The session cookie's name."""

MAX_SESSIONS = 1000
"""Sessions kept at once; past it the oldest is ended (a flood of sign-ins
cannot grow memory)."""


def _digest(token: str) -> bytes:
    """
    How a token is kept: a lookup by the hash, so the table holds no
    usable cookie.
    """
    return hashlib.sha256(token.encode("utf-8")).digest()


@attrs.define
class ConsoleSession:
    """
    One signed-in browser.

    @ivar csrf: the token that requests changing something must carry in
        C{X-CSRF-Token}.
    @ivar key_id: the id of the admin key it signed in with.
    @ivar key_name: that key's name, to show who is signed in.
    @ivar expires: when it ends (reactor seconds).
    @ivar ended: whether it was closed (signed out, its key revoked).
    """

    csrf: str
    key_id: int
    key_name: str
    expires: float
    ended: bool = False

    def check_csrf(self, presented: str | None) -> bool:
        """
        Whether C{presented} is this session's CSRF token (compared in
        constant time).
        """
        return presented is not None and hmac.compare_digest(
            presented.encode("utf-8"), self.csrf.encode("utf-8")
        )


class SessionStore:
    """
    The open sessions, by the hash of their cookie token.
    """

    def __init__(self, clock: Any, lifetime: float, limit: int = MAX_SESSIONS) -> None:
        self._clock = clock
        self.lifetime = lifetime
        self._limit = limit
        self._sessions: dict[bytes, ConsoleSession] = {}

    def open(self, key_id: int, key_name: str) -> tuple[str, ConsoleSession]:
        """
        A new session for an admin key; returns the cookie token (known
        only now) and the session.
        """
        self._prune()
        while len(self._sessions) >= self._limit:
            self._end(next(iter(self._sessions)))
        token = secrets.token_urlsafe(32)
        session = ConsoleSession(
            secrets.token_urlsafe(32), key_id, key_name, self._clock.seconds() + self.lifetime
        )
        self._sessions[_digest(token)] = session
        return token, session

    def find(self, token: str | None) -> ConsoleSession | None:
        """
        The live session of a cookie token, or C{None} (an expired one is
        forgotten here).
        """
        if not token or len(token) > 100:
            return None
        digest = _digest(token)
        session = self._sessions.get(digest)
        if session is not None and session.expires <= self._clock.seconds():
            self._end(digest)
            return None
        return session

    def close(self, token: str | None) -> None:
        """
        End the session of C{token}, if any (signing out).
        """
        if token and _digest(token) in self._sessions:
            self._end(_digest(token))

    def end_key(self, key_id: int) -> int:
        """
        End every session of a key (revoked, or no longer admin); return
        how many.
        """
        doomed = [d for d, s in self._sessions.items() if s.key_id == key_id]
        for digest in doomed:
            self._end(digest)
        return len(doomed)

    def alive(self, session: ConsoleSession) -> bool:
        """
        Whether C{session} is still open and unexpired.
        """
        return not session.ended and session.expires > self._clock.seconds()

    def key_ids(self) -> set[int]:
        """
        The keys of the open sessions.
        """
        return {s.key_id for s in self}

    def _prune(self) -> None:
        now = self._clock.seconds()
        for digest in [d for d, s in self._sessions.items() if s.expires <= now]:
            self._end(digest)

    def _end(self, digest: bytes) -> None:
        self._sessions.pop(digest).ended = True

    def __iter__(self) -> Iterator[ConsoleSession]:
        self._prune()
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        self._prune()
        return len(self._sessions)
