"""
The catalog: the tokens of the chain and their markets, fixed at genesis.
"""

import attrs

from .amounts import format_units
from .genesis import QUOTE_CURRENCY
from .storage.chain import TokenRow


@attrs.frozen
class Token:
    """
    A token, with its supply in base units.
    """

    token_id: str
    name: str
    symbol: str
    decimals: int
    total_supply: int

    @property
    def market(self) -> str:
        """
        The symbol of the token's market, C{SYMBOL/USD}.
        """
        return f"{self.symbol}/{QUOTE_CURRENCY}"

    def info(self) -> dict[str, object]:
        """
        The C{data} of a C{token_info} reply.
        """
        return {
            "token_id": self.token_id,
            "name": self.name,
            "symbol": self.symbol,
            "total_supply": format_units(self.total_supply, self.decimals),
            "decimals": self.decimals,
        }


@attrs.frozen
class Market:
    """
    A market: a token quoted in USD, starting at C{initial_price} (units of
    10**-8 USD).
    """

    symbol: str
    token: Token
    initial_price: int


class Catalog:
    """
    The tokens and markets, looked up by token id and market symbol.
    """

    def __init__(self, rows: list[TokenRow]) -> None:
        self.tokens: dict[str, Token] = {}
        self.markets: dict[str, Market] = {}
        for row in rows:
            token = Token(row.token_id, row.name, row.symbol, row.decimals, row.total_supply)
            self.tokens[token.token_id] = token
            self.markets[token.market] = Market(token.market, token, row.initial_price)
