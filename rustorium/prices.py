"""
Prices from outside: what a feed posts to C{POST /api/v1/prices}, how the
cluster orders it, and the service that turns it into updates.

Each market's prices carry a sequence number that the feed increases; the
broker keeps the last one accepted per market (L{IBroker.record_prices};
Redis for a cluster, the database for a single node: L{DatabasePrices}),
so that whichever node a batch is posted to, a retried or reordered batch
never moves a price backwards: an entry whose number is not above the last
is stale, counted and dropped, in one atomic step for the whole cluster.

Accepted prices are published by the node that runs the market (the one
holding the C{sources} lease), with the same updates as the simulator's:
only it has the day's confirmed transfer volume that C{token_updates}
carry, and one publisher keeps each market's updates in sequence order.
The broker tells every node of each accepted batch at once
(L{IBroker.on_prices}); that node publishes it, and besides reads the
broker's latest prices every tick interval, so that a price it missed (its
broker link dropped, or it took the market over from a node that died)
still reaches subscribers, within a tick.

With C{--market-source external} the random walk is off and only these
prices move the markets; with the simulator, posting prices is refused
(two sources would fight over every price).
"""

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import attrs
import orjson
from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .amounts import AmountError, parse_units
from .broker.interface import Publication
from .catalog import Catalog, Market
from .errors import ErrorCode, RequestError
from .genesis import PRICE_DECIMALS
from .market import Quote, percent_change, quote_publications
from .rolling import RollingWindow
from .storage.meta import save_prices

MAX_PRICES = 1000
"""The most prices one request may post."""

MAX_SEQ = 2**53 - 1
"""The largest sequence number: every JSON parser (and Redis's Lua) holds
integers up to it exactly."""


@attrs.frozen
class PriceTick:
    """
    One price of one market, as posted.

    @ivar price: in units of 10**-L{PRICE_DECIMALS} USD.
    @ivar seq: the feed's sequence number for the market.
    @ivar observed_at: when the price was observed (POSIX seconds): the
        time it counts at in the 24 h figures.
    @ivar volume: the token's base units traded since the market's
        previous price (0 when the feed does not say).
    """

    symbol: str
    price: int
    seq: int
    observed_at: float
    volume: int = 0

    def to_json(self) -> bytes:
        """
        The tick as the broker keeps and sends it.
        """
        return orjson.dumps({
            "symbol": self.symbol, "price": str(self.price), "seq": self.seq,
            "at": self.observed_at, "volume": str(self.volume),
        })

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "PriceTick":
        """
        The tick of a decoded L{to_json}.
        """
        return cls(str(data["symbol"]), int(data["price"]), int(data["seq"]),
                   float(data["at"]), int(data["volume"]))


class DatabasePrices:
    """
    Where a single node's in-process broker keeps the last posted price of
    each market, so that a restart neither forgets the prices nor accepts
    an old sequence number again (a cluster's Redis keeps them itself).
    """

    def __init__(self, database: Any, stored: dict[str, str]) -> None:
        """
        @param stored: what L{load_prices} read at start (before listening:
            the broker, and so the server, is ready at once).
        """
        self._database = database
        self._stored = {symbol: PriceTick.from_json(orjson.loads(tick))
                        for symbol, tick in stored.items()}

    def load(self) -> Any:
        """
        Fires (at once) with the last tick of each market, by symbol.
        """
        return succeed(dict(self._stored))

    def save(self, ticks: list[PriceTick]) -> Any:
        """
        Keep these ticks (the last of each market wins).
        """
        latest = {tick.symbol: tick.to_json().decode() for tick in ticks}
        return self._database.run(save_prices, latest)


def _invalid(field: str, message: str) -> RequestError:
    return RequestError(ErrorCode.INVALID_PARAMS, f"{field}: {message}", field=field)


def _timestamp(value: object, field: str) -> float:
    """
    POSIX seconds of an RFC 3339 time with a zone (C{2026-01-01T00:00:00Z}).
    """
    if isinstance(value, str) and 0 < len(value) <= 40:
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if moment.tzinfo is not None:
                return moment.timestamp()
    raise _invalid(field, 'must be an RFC 3339 time with a zone, such as '
                          '"2026-01-01T12:00:00Z"')


def parse_prices(body: object, catalog: Catalog, now: float) -> list[PriceTick]:
    """
    The ticks of a C{POST /api/v1/prices} body, all valid or none.

    @raise RequestError: C{invalid_params}, naming the field (also as
        C{field}, for a program).
    """
    if not isinstance(body, dict):
        raise _invalid("body", 'must be an object such as {"prices": [...]}')
    unknown = sorted(set(body) - {"prices"})
    if unknown:
        raise _invalid(unknown[0][:40], "is not a field of this request (it takes prices)")
    prices = body.get("prices")
    if not isinstance(prices, list) or not prices:
        raise _invalid("prices", "must be a list of 1 to "
                                 f"{MAX_PRICES} prices")
    if len(prices) > MAX_PRICES:
        raise _invalid("prices", f"has {len(prices)} entries; at most {MAX_PRICES} "
                                 "may be posted at once")
    ticks = []
    for index, entry in enumerate(prices):
        where = f"prices[{index}]"
        if not isinstance(entry, dict):
            raise _invalid(where, 'must be an object such as '
                                  '{"symbol": "MTK/USD", "price": "1.25", "seq": 1}')
        for name in ("symbol", "price", "seq"):
            if name not in entry:
                raise _invalid(f"{where}.{name}", "is missing")
        extra = sorted(set(entry) - {"symbol", "price", "seq", "timestamp", "volume"})
        if extra:
            raise _invalid(f"{where}.{extra[0][:40]}", "is not a field of a price")
        symbol = entry["symbol"]
        market = catalog.markets.get(symbol.upper()) if isinstance(symbol, str) else None
        if market is None:
            known = ", ".join(catalog.markets)
            raise _invalid(f"{where}.symbol", f"is not a market of this server ({known})")
        try:
            price = parse_units(entry["price"], PRICE_DECIMALS, "price")
        except AmountError as e:
            raise _invalid(f"{where}.price", str(e)) from None
        if price == 0:
            raise _invalid(f"{where}.price", "must be more than zero")
        seq = entry["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
            raise _invalid(f"{where}.seq", f"must be a whole number from 0 to {MAX_SEQ}")
        observed_at = now
        if entry.get("timestamp") is not None:
            observed_at = _timestamp(entry["timestamp"], f"{where}.timestamp")
        volume = 0
        if entry.get("volume") is not None:
            try:
                volume = parse_units(entry["volume"], market.token.decimals, "volume")
            except AmountError as e:
                raise _invalid(f"{where}.volume", str(e)) from None
        ticks.append(PriceTick(market.symbol, price, seq, observed_at, volume))
    return ticks


@attrs.define
class _ExternalMarket:
    market: Market
    seq: int = -1
    window: RollingWindow = attrs.Factory(RollingWindow)


class ExternalMarkets:
    """
    The markets as posted prices move them; pure, with time passed in.
    """

    def __init__(self, catalog: Catalog) -> None:
        self._markets = {symbol: _ExternalMarket(m) for symbol, m in catalog.markets.items()}

    def apply(self, tick: PriceTick, now: float) -> Quote | None:
        """
        Take a tick newer than the last one applied to its market; return
        the market's new quote, or C{None} for a tick not newer (or of a
        market this server has not).
        """
        state = self._markets.get(tick.symbol)
        if state is None or tick.seq <= state.seq:
            return None
        state.seq = tick.seq
        window = state.window
        window.record(min(tick.observed_at, now), tick.volume, tick.price)
        window.expire(now)
        opening = window.opening_value or tick.price
        return Quote(state.market, tick.price, percent_change(tick.price, opening),
                     window.total, state.market.token.decimals)


class ExternalMarketService(Service):
    """
    Publishes the prices posted from outside, on the node that runs the
    market (see the module docstring).
    """

    log = Logger()

    def __init__(
        self,
        catalog: Catalog,
        publish: Callable[[list[Publication]], object],
        clock: Any,
        interval: float,
        token_volume: Callable[[str], int],
        latest_prices: Callable[[], Any],
    ) -> None:
        """
        @param interval: seconds between reads of the broker's latest
            prices.
        @param latest_prices: fires with the broker's latest accepted tick
            of each market, by symbol.
        """
        self._markets = ExternalMarkets(catalog)
        self._publish = publish
        self._clock = clock
        self._token_volume = token_volume
        self._latest_prices = latest_prices
        self._loop = LoopingCall(self.catch_up)
        self._loop.clock = clock
        self._interval = max(interval, 0.1)

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._interval, now=True).addErrback(
            lambda f: self.log.failure("Reading the posted prices stopped", f)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def prices_received(self, ticks: list[PriceTick]) -> None:
        """
        The broker accepted these ticks (on any node): publish them, if
        this node runs the market.
        """
        self._apply(ticks)

    def catch_up(self) -> Any:
        """
        Publish what the broker accepted and this node has not applied.
        """
        d = maybeDeferred(self._latest_prices)
        d.addCallback(lambda latest: self._apply(sorted(latest.values(),
                                                        key=lambda t: t.symbol)))
        d.addErrback(lambda f: self.log.failure("Reading the posted prices failed", f))
        return d

    def _apply(self, ticks: list[PriceTick]) -> None:
        if not self.running:
            return
        try:
            now = self._clock.seconds()
            quotes = [q for q in (self._markets.apply(t, now) for t in ticks) if q is not None]
            if quotes:
                self._publish(quote_publications(quotes, self._token_volume))
        except Exception:
            self.log.failure("Publishing posted prices failed")
