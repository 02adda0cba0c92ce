"""
Token and balance rows, and writing a genesis into an empty database.
"""

import attrs

from ..genesis import Genesis


@attrs.frozen
class TokenRow:
    """
    A token as stored: amounts in base units, the starting price in units of
    10**-8 USD.
    """

    token_id: str
    name: str
    symbol: str
    decimals: int
    total_supply: int
    initial_price: int


def has_chain(txn) -> bool:
    """
    Whether a genesis has been written.
    """
    txn.execute("SELECT COUNT(*) FROM tokens")
    return txn.fetchone()[0] > 0


def write_genesis(txn, genesis: Genesis) -> None:
    """
    Write a genesis's tokens and balances.
    """
    for token in genesis.tokens:
        txn.execute(
            "INSERT INTO tokens (token_id, name, symbol, decimals, total_supply, initial_price) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (token.token_id, token.name, token.symbol, token.decimals,
             str(token.total_supply), str(token.price)),
        )
        for address, amount in sorted(token.balances.items()):
            txn.execute(
                "INSERT INTO balances (address, token_id, amount) VALUES (?, ?, ?)",
                (address, token.token_id, str(amount)),
            )


def load_tokens(txn) -> list[TokenRow]:
    """
    Every token, by symbol.
    """
    txn.execute(
        "SELECT token_id, name, symbol, decimals, total_supply, initial_price "
        "FROM tokens ORDER BY symbol"
    )
    return [
        TokenRow(t, n, s, int(d), int(supply), int(price))
        for t, n, s, d, supply, price in txn.fetchall()
    ]
