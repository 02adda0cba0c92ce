"""
API keys: making them, checking them at the handshake, and closing the
connections of keys revoked while connected.

A key is C{rk_} and 43 URL-safe characters (256 random bits). Only its
SHA-256 is stored: a fast hash is right for keys this random, and it keeps
the handshake cheap.
"""

import hashlib
import secrets
import weakref
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .closecodes import CloseCode
from .storage import Database
from .storage.keys import (
    ApiKey,
    find_key_by_id,
    find_keys,
    insert_key,
    list_keys,
    revoke_key,
    revoked_among,
)
from .timestamps import isoformat

KEY_PREFIX = "rk_"
_MAX_KEY_LENGTH = 256


def generate_key() -> str:
    """
    A new random API key.
    """
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """
    The stored form of a key.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


class KeyStore:
    """
    Checks presented keys against the database, so a key created or revoked
    by C{rustorium keys} while the server runs takes effect at once.

    The keys presented in one reactor turn are looked up together, in one
    database interaction (thousands of clients reconnecting at once would
    otherwise queue one each behind the pool's few connections); the
    lookup starts after every one of them arrived, so none is accepted on
    a record older than its handshake.
    """

    def __init__(self, database: Database, clock: Any) -> None:
        self._database = database
        self._clock = clock
        self._waiting: list[tuple[str, Deferred]] = []
        # One record object per distinct record among the live connections:
        # a key's thousands of connections share it (the records are
        # frozen), rather than each holding its own copy (~650 bytes).
        # Keyed by the record's fields (a record as its own key would keep
        # itself alive).
        self._records: weakref.WeakValueDictionary[tuple, ApiKey] = (
            weakref.WeakValueDictionary()
        )

    def authenticate(self, key: str | None) -> "Deferred[ApiKey | None]":
        """
        The key's record if it exists and is not revoked, else C{None}.
        """
        if not key or len(key) > _MAX_KEY_LENGTH:
            return succeed(None)
        d: Deferred = Deferred()
        if not self._waiting:
            self._clock.callLater(0, self._look_up)
        self._waiting.append((hash_key(key), d))
        return d

    def _look_up(self) -> None:
        waiting, self._waiting = self._waiting, []

        def found(records: dict[str, ApiKey]) -> None:
            for key_hash, d in waiting:
                record = records.get(key_hash)
                d.callback(self._valid(record))

        def failed(failure: Failure) -> None:
            for _, d in waiting:
                d.errback(failure)

        looked_up = self._database.run(find_keys, list({h for h, _ in waiting}))
        looked_up.addCallbacks(found, failed)

    def _valid(self, found: ApiKey | None) -> ApiKey | None:
        if found is None or found.revoked:
            return None
        return self._records.setdefault(attrs.astuple(found, recurse=False), found)

    def revoked_among(self, key_ids: list[int]) -> "Deferred[set[int]]":
        """
        Which of these key ids may no longer be used.
        """
        return self._database.run(revoked_among, key_ids)

    def create(
        self, name: str, scopes: frozenset[str], addresses: list[str], now: float
    ) -> "Deferred[tuple[ApiKey, str]]":
        """
        Make a key; fires with its record and the key itself (known only
        now: only its hash is stored).
        """
        key = generate_key()

        def made(txn: object) -> ApiKey:
            key_id = insert_key(txn, hash_key(key), name, isoformat(now), addresses, scopes)
            return find_key_by_id(txn, key_id)

        return self._database.run(made).addCallback(lambda record: (record, key))

    def find(self, key_id: int) -> "Deferred[ApiKey | None]":
        """
        The key with this id (revoked or not), or C{None}.
        """
        return self._database.run(find_key_by_id, key_id)

    def list(self) -> "Deferred[list[ApiKey]]":
        """
        Every key, oldest first.
        """
        return self._database.run(list_keys)

    def revoke(self, key_id: int, now: float) -> "Deferred[bool]":
        """
        Revoke a key; fires with C{False} if there is no such key or it
        was revoked already.
        """
        return self._database.run(revoke_key, key_id, isoformat(now))


class RevocationService(TimerService):
    """
    Every few seconds, close connections whose key has been revoked (close
    code 4001), so revoking a key cuts its sessions, not only new ones.
    """

    log = Logger()

    def __init__(self, interval: float, keys: KeyStore, sessions: Callable[[], list], clock):
        super().__init__(interval, self._check)
        self.clock = clock
        self._keys = keys
        self._sessions = sessions

    def _check(self) -> "Deferred[None] | None":
        sessions = self._sessions()
        if not sessions:
            return None
        d = self._keys.revoked_among(sorted({s.api_key.key_id for s in sessions}))

        def close(revoked: set[int]) -> None:
            for session in sessions:
                if session.api_key.key_id in revoked:
                    self.log.info("Closing {peer} (key {key_name}): its API key was revoked",
                                  peer=session.connection.peer, key_name=session.api_key.name)
                    session.close(CloseCode.KEY_REVOKED, "API key revoked")

        d.addCallback(close)
        d.addErrback(lambda f: self.log.failure("Checking for revoked API keys failed", f))
        return d
