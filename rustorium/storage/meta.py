"""
The C{meta} table: named values the server keeps for itself (the message id
reservation, the genesis it was initialised from, a single node's last
posted price of each market).
"""

PRICE_PREFIX = "price:"


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


def save_prices(txn, prices: dict[str, str]) -> None:
    """
    Keep the last posted price of some markets (by symbol, as JSON).
    """
    for symbol, tick in sorted(prices.items()):
        set_meta(txn, PRICE_PREFIX + symbol, tick)


def load_prices(txn) -> dict[str, str]:
    """
    The last posted price of each market that has one (by symbol, as JSON).
    """
    txn.execute("SELECT name, value FROM meta WHERE name LIKE ?", (PRICE_PREFIX + "%",))
    return {name[len(PRICE_PREFIX):]: value for name, value in txn.fetchall()}
