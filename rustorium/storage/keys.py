"""
API key rows. Only a key's SHA-256 hash is stored; the key itself is shown
once, when it is created.
"""

import attrs


@attrs.frozen
class ApiKey:
    """
    An API key as the server knows it (never the key itself).

    @ivar addresses: the addresses this key may send transactions from.
    """

    key_id: int
    name: str
    addresses: frozenset[str]
    created_at: str
    revoked_at: str | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def insert_key(txn, key_hash: str, name: str, created_at: str, addresses: list[str]) -> int:
    """
    Store a new key and the addresses it controls; return its id.
    """
    txn.execute(
        "INSERT INTO api_keys (key_hash, name, created_at) VALUES (?, ?, ?)",
        (key_hash, name, created_at),
    )
    txn.execute("SELECT key_id FROM api_keys WHERE key_hash = ?", (key_hash,))
    (key_id,) = txn.fetchone()
    for address in sorted(set(addresses)):
        txn.execute(
            "INSERT INTO api_key_addresses (key_id, address) VALUES (?, ?)", (key_id, address)
        )
    return key_id


def _addresses(txn, key_id: int) -> frozenset[str]:
    txn.execute("SELECT address FROM api_key_addresses WHERE key_id = ?", (key_id,))
    return frozenset(row[0] for row in txn.fetchall())


def find_key(txn, key_hash: str) -> ApiKey | None:
    """
    Look a key up by its hash.
    """
    txn.execute(
        "SELECT key_id, name, created_at, revoked_at FROM api_keys WHERE key_hash = ?",
        (key_hash,),
    )
    row = txn.fetchone()
    if row is None:
        return None
    key_id, name, created_at, revoked_at = row
    return ApiKey(key_id, name, _addresses(txn, key_id), created_at, revoked_at)


def list_keys(txn) -> list[ApiKey]:
    """
    Every key, oldest first.
    """
    txn.execute("SELECT key_id, name, created_at, revoked_at FROM api_keys ORDER BY key_id")
    rows = txn.fetchall()
    return [ApiKey(k, n, _addresses(txn, k), c, r) for k, n, c, r in rows]


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
