"""
The genesis file: the tokens, their starting balances and market prices that
initialise an empty database.

Format::

    {"tokens": [{"token_id": "0x<40 hex>", "name": "My Token", "symbol": "MTK",
                 "decimals": 18, "total_supply": "1000000", "price": "1.23",
                 "balances": {"0x<40 hex>": "1000000"}}]}

Amounts are in whole tokens (decimal strings); balances must add up to the
total supply. Each token gets the market ``SYMBOL/USD`` starting at ``price``.
A malformed file stops start-up with a message that names the problem.
"""

import json
import re
from importlib import resources

import attrs

from .amounts import AmountError, format_units, parse_units
from .identifiers import normalise_address

PRICE_DECIMALS = 8
"""Prices are held as integers of 10**-8 of the quote currency."""

MAX_DECIMALS = 36
QUOTE_CURRENCY = "USD"
DEMO_GENESIS = "built-in demo genesis"

_SYMBOL = re.compile(r"[A-Z0-9]{1,12}\Z")
_TOKEN_FIELDS = {"token_id", "name", "symbol", "decimals", "total_supply", "price", "balances"}


class GenesisError(ValueError):
    """
    A genesis file that cannot be used; the message names the file, the token
    and the field.
    """


@attrs.frozen
class TokenGenesis:
    """
    One token of the genesis, with amounts in base units.
    """

    token_id: str
    name: str
    symbol: str
    decimals: int
    total_supply: int
    price: int
    """Starting price of the market, in units of 10**-8 USD."""
    balances: dict[str, int]

    @property
    def market(self) -> str:
        """
        The token's market symbol, C{SYMBOL/USD}.
        """
        return f"{self.symbol}/{QUOTE_CURRENCY}"


@attrs.frozen
class Genesis:
    """
    A validated genesis.

    @ivar source: where it came from, for log lines.
    """

    tokens: tuple[TokenGenesis, ...]
    source: str

    @property
    def addresses(self) -> list[str]:
        """
        Every address holding a balance at genesis, sorted.
        """
        return sorted({a for t in self.tokens for a in t.balances})


def load_genesis(path: str) -> Genesis:
    """
    Read and validate a genesis file.

    @raise GenesisError: naming the problem.
    """
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise GenesisError(f"cannot read genesis file {path}: {e.strerror}") from None
    return parse_genesis(text, path)


def demo_genesis() -> Genesis:
    """
    The demo genesis shipped inside the package (also in C{etc/genesis.json}).
    """
    text = resources.files("rustorium").joinpath("data/genesis.json").read_bytes()
    return parse_genesis(text, DEMO_GENESIS)


def parse_genesis(text: bytes | str, source: str) -> Genesis:
    """
    Validate the JSON text of a genesis.

    @raise GenesisError: naming the problem.
    """
    try:
        document = json.loads(text)
    except ValueError as e:
        raise GenesisError(f"{source}: not valid JSON: {e}") from None
    if not isinstance(document, dict) or not isinstance(document.get("tokens"), list):
        raise GenesisError(f'{source}: expected an object with a "tokens" list')
    if not document["tokens"]:
        raise GenesisError(f'{source}: "tokens" is empty; a chain needs at least one token')
    tokens = tuple(
        _parse_token(entry, f"{source}: tokens[{index}]")
        for index, entry in enumerate(document["tokens"])
    )
    for field in ("token_id", "symbol"):
        seen: set[str] = set()
        for token in tokens:
            value = getattr(token, field)
            if value in seen:
                raise GenesisError(f"{source}: two tokens have the {field} {value}")
            seen.add(value)
    return Genesis(tokens, source)


def _parse_token(entry: object, where: str) -> TokenGenesis:
    if not isinstance(entry, dict):
        raise GenesisError(f"{where}: expected an object")
    missing = _TOKEN_FIELDS - entry.keys()
    if missing:
        raise GenesisError(f"{where}: missing {', '.join(sorted(missing))}")
    unknown = entry.keys() - _TOKEN_FIELDS
    if unknown:
        raise GenesisError(f"{where}: unknown field {', '.join(sorted(unknown))}")
    token_id = normalise_address(entry["token_id"])
    if token_id is None:
        raise GenesisError(f"{where}: token_id must be 0x followed by 40 hex digits")
    name = entry["name"]
    if not isinstance(name, str) or not name.strip() or len(name) > 64:
        raise GenesisError(f"{where}: name must be a non-empty string of at most 64 characters")
    symbol = entry["symbol"]
    if not isinstance(symbol, str) or not _SYMBOL.match(symbol):
        raise GenesisError(f"{where}: symbol must be 1 to 12 capital letters or digits")
    where = f"{where} ({symbol})"
    decimals = entry["decimals"]
    if isinstance(decimals, bool) or not isinstance(decimals, int) or not (
        0 <= decimals <= MAX_DECIMALS
    ):
        raise GenesisError(f"{where}: decimals must be a whole number from 0 to {MAX_DECIMALS}")
    try:
        total_supply = parse_units(entry["total_supply"], decimals, "total_supply")
        price = parse_units(entry["price"], PRICE_DECIMALS, "price")
    except AmountError as e:
        raise GenesisError(f"{where}: {e}") from None
    if total_supply <= 0:
        raise GenesisError(f"{where}: total_supply must be more than zero")
    if price <= 0:
        raise GenesisError(f"{where}: price must be more than zero")
    balances = _parse_balances(entry["balances"], decimals, where)
    total = sum(balances.values())
    if total != total_supply:
        raise GenesisError(
            f"{where}: balances add up to {format_units(total, decimals)}, "
            f"not the total_supply {entry['total_supply']}"
        )
    return TokenGenesis(token_id, name, symbol, decimals, total_supply, price, balances)


def _parse_balances(raw: object, decimals: int, where: str) -> dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        raise GenesisError(f"{where}: balances must be an object of address to amount")
    balances: dict[str, int] = {}
    for key, value in raw.items():
        address = normalise_address(key)
        if address is None:
            raise GenesisError(f"{where}: balance address {key!r} is not 0x and 40 hex digits")
        if address in balances:
            raise GenesisError(f"{where}: address {address} appears twice in balances")
        try:
            balances[address] = parse_units(value, decimals, f"balance of {address}")
        except AmountError as e:
            raise GenesisError(f"{where}: {e}") from None
    return balances
