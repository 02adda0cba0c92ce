"""
The C{meta} table: named values the server keeps for itself (the message id
reservation, the genesis it was initialised from).
"""


def get_meta(txn, name: str) -> str | None:
    """
    Read a named value, or C{None} if unset.
    """
    txn.execute("SELECT value FROM meta WHERE name = ?", (name,))
    row = txn.fetchone()
    return None if row is None else row[0]


def set_meta(txn, name: str, value: str) -> None:
    """
    Write a named value.
    """
    txn.execute(
        "INSERT INTO meta (name, value) VALUES (?, ?) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (name, value),
    )
