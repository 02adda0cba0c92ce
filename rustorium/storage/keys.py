"""
API key rows. Only a key's SHA-256 hash is stored; the key itself is shown
once, when it is created.

A key's scopes say what it may do, and are a set, not a ladder:

- C{client}: open WebSocket sessions on C{/v1} (every key made before
  scopes existed is one);
- C{publish}: post prices to C{POST /api/v1/prices};
- C{admin}: every HTTP API operation, publishing included.

Only a key with C{client} opens a WebSocket session, whatever else it may
do: an admin or feed key is a server-side secret, and one that could also
open sessions would be tempting to paste into a browser or an app, where it
leaks. A console that needs both asks for both (C{--scope client --scope
admin}), knowingly.
"""

import attrs

CLIENT = "client"
PUBLISH = "publish"
ADMIN = "admin"
SCOPES = (CLIENT, PUBLISH, ADMIN)
"""Every scope, in the order they are listed."""


def parse_scopes(text: str) -> frozenset[str]:
    """
    The scopes of a stored C{scopes} column (names separated by spaces;
    names this server does not know are ignored).
    """
    return frozenset(scope for scope in text.split() if scope in SCOPES)


def format_scopes(scopes: frozenset[str] | set[str]) -> str:
    """
    Scopes as stored and shown: space-separated, in L{SCOPES} order.
    """
    return " ".join(scope for scope in SCOPES if scope in scopes)


@attrs.frozen
class ApiKey:
    """
    An API key as the server knows it (never the key itself).

    @ivar addresses: the addresses this key may send transactions from.
    @ivar scopes: what it may do (see the module docstring).
    """

    key_id: int
    name: str
    addresses: frozenset[str]
    created_at: str
    revoked_at: str | None = None
    scopes: frozenset[str] = frozenset({CLIENT})

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def allows(self, scope: str) -> bool:
        """
        Whether the key may do what C{scope} grants: C{admin} grants
        C{publish} too; C{client} is granted by nothing but itself.
        """
        return scope in self.scopes or (scope == PUBLISH and ADMIN in self.scopes)

    def describe(self) -> dict[str, object]:
        """
        The key as the HTTP API lists it: never the key itself.
        """
        return {
            "id": self.key_id,
            "name": self.name,
            "scopes": [scope for scope in SCOPES if scope in self.scopes],
            "addresses": sorted(self.addresses),
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


def insert_key(
    txn,
    key_hash: str,
    name: str,
    created_at: str,
    addresses: list[str],
    scopes: frozenset[str] | set[str] = frozenset({CLIENT}),
) -> int:
    """
    Store a new key, its scopes and the addresses it controls; return its
    id.

    @raise ValueError: for no scope, or a scope this server does not know.
    """
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}, not {sorted(scopes)}")
    txn.execute(
        "INSERT INTO api_keys (key_hash, name, created_at, scopes) VALUES (?, ?, ?, ?)",
        (key_hash, name, created_at, format_scopes(scopes)),
    )
    txn.execute("SELECT key_id FROM api_keys WHERE key_hash = ?", (key_hash,))
    (key_id,) = txn.fetchone()
    for address in sorted(set(addresses)):
        txn.execute(
            "INSERT INTO api_key_addresses (key_id, address) VALUES (?, ?)", (key_id, address)
        )
    return key_id


_KEY_COLUMNS = "key_id, name, created_at, revoked_at, scopes"


def _key(txn, row) -> ApiKey:
    key_id, name, created_at, revoked_at, scopes = row
    return ApiKey(
        key_id, name, _addresses(txn, key_id), created_at, revoked_at, parse_scopes(scopes)
    )


def _addresses(txn, key_id: int) -> frozenset[str]:
    txn.execute("SELECT address FROM api_key_addresses WHERE key_id = ?", (key_id,))
    return frozenset(row[0] for row in txn.fetchall())


def find_key(txn, key_hash: str) -> ApiKey | None:
    """
    Look a key up by its hash.
    """
    return find_keys(txn, [key_hash]).get(key_hash)


def _select_in(txn, query: str, values: list) -> list:
    """
    The rows of C{query} (with C{{marks}} where its C{IN} list goes) for
    every value, asked 500 at a time (SQLite's limit on parameters).
    """
    rows: list = []
    for start in range(0, len(values), 500):
        chunk = values[start:start + 500]
        txn.execute(query.format(marks=", ".join("?" * len(chunk))), tuple(chunk))
        rows += txn.fetchall()
    return rows


def find_keys(txn, key_hashes: list[str]) -> dict[str, ApiKey]:
    """
    Look several keys up by their hashes at once (the handshakes of one
    reactor turn): the keys found, by hash.
    """
    rows = _select_in(
        txn, f"SELECT key_hash, {_KEY_COLUMNS} FROM api_keys WHERE key_hash IN ({{marks}})",
        key_hashes,
    )
    addresses: dict[int, set[str]] = {row[1]: set() for row in rows}
    for key_id, address in _select_in(
        txn, "SELECT key_id, address FROM api_key_addresses WHERE key_id IN ({marks})",
        list(addresses),
    ):
        addresses[key_id].add(address)
    return {
        key_hash: ApiKey(key_id, name, frozenset(addresses[key_id]), created_at, revoked_at,
                         parse_scopes(scopes))
        for key_hash, key_id, name, created_at, revoked_at, scopes in rows
    }


def find_key_by_id(txn, key_id: int) -> ApiKey | None:
    """
    Look a key up by its id.
    """
    txn.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,))
    row = txn.fetchone()
    return None if row is None else _key(txn, row)


def list_keys(txn) -> list[ApiKey]:
    """
    Every key, oldest first.
    """
    txn.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY key_id")
    rows = txn.fetchall()
    return [_key(txn, row) for row in rows]


def revoke_key(txn, key_id: int, revoked_at: str) -> bool:
    """
    Revoke a key; return C{False} if there is no such key or it was already
    revoked.
    """
    txn.execute(
        "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
        (revoked_at, key_id),
    )
    return txn.rowcount == 1


def revoked_among(txn, key_ids: list[int]) -> set[int]:
    """
    Which of these keys are no longer usable (revoked, or deleted).
    """
    live: set[int] = set()
    for start in range(0, len(key_ids), 500):
        chunk = key_ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        txn.execute(
            f"SELECT key_id FROM api_keys WHERE revoked_at IS NULL AND key_id IN ({marks})",
            chunk,
        )
        live.update(row[0] for row in txn.fetchall())
    return set(key_ids) - live
