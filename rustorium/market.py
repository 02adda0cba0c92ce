"""
The market service: a seeded random walk per market, and the rolling 24 h
figures published with it.

Every tick moves each market's price by a normally distributed step (5 %
daily volatility, scaled to the tick interval) and records a simulated
traded volume; it then publishes a C{market_data} update per market and a
C{token_updates} update per token (price from its market, volume from the
ledger's trailing 24 h on-chain transfers). The same seed gives the same
prices tick for tick, whatever the order of the markets.
"""

import math
import random
from collections.abc import Callable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .amounts import format_units
from .broker.interface import Publication
from .catalog import Catalog, Market
from .genesis import PRICE_DECIMALS
from .hub import channel_key
from .requests import MARKET_DATA, TOKEN_UPDATES
from .rolling import DAY, RollingWindow

DAILY_VOLATILITY = 0.05
MIN_STEP_INTERVAL = 0.001
"""The tick interval assumed for volatility when ticks run every reactor turn."""


def percent_change(price: int, reference: int) -> str:
    """
    The change from C{reference} to C{price} in percent, two decimals at
    most, truncated toward zero.

    >>> percent_change(10520, 10000)
    '5.2'
    """
    hundredths = abs(price - reference) * 10000 // reference
    return format_units(-hundredths if price < reference else hundredths, 2)


@attrs.define
class MarketState:
    """
    One market's moving state.
    """

    market: Market
    rng: random.Random
    price: int
    window: RollingWindow = attrs.Factory(RollingWindow)


@attrs.frozen
class Quote:
    """
    A market's figures after a tick.

    @ivar volume_24h: traded over the trailing 24 h, in units of
        C{10**-volume_decimals} (the simulator counts whole units; prices
        posted from outside carry the token's base units).
    """

    market: Market
    price: int
    change_24h: str
    volume_24h: int
    volume_decimals: int = 0


class MarketSimulator:
    """
    The random walks of every market; pure, with time passed in.
    """

    def __init__(self, catalog: Catalog, seed: int, tick_interval: float) -> None:
        step = max(tick_interval, MIN_STEP_INTERVAL)
        self._sigma = DAILY_VOLATILITY * math.sqrt(step / DAY)
        self._states = [
            MarketState(market, random.Random(f"{seed}:{market.symbol}"), market.initial_price)
            for market in catalog.markets.values()
        ]

    def continue_from(self, prices: dict[str, int]) -> None:
        """
        Continue the walks from these last prices (by market symbol), as a
        node taking over the market from another does.
        """
        for state in self._states:
            price = prices.get(state.market.symbol)
            if price is not None and price > 0:
                state.price = price

    def tick(self, now: float) -> list[Quote]:
        """
        Move every market one step; return the new quotes.
        """
        quotes = []
        sigma = self._sigma
        for state in self._states:
            rng = state.rng
            state.price = max(1, round(state.price * math.exp(rng.gauss(0.0, sigma))))
            traded = rng.randrange(0, 1000)
            state.window.record(now, traded, state.price)
            quotes.append(
                Quote(
                    state.market,
                    state.price,
                    percent_change(state.price, state.window.opening_value),
                    state.window.total,
                )
            )
        return quotes


class MarketService(Service):
    """
    Ticks the markets on the reactor's clock and publishes their updates.
    """

    log = Logger()

    def __init__(
        self,
        catalog: Catalog,
        publish: Callable[[list[Publication]], object],
        clock,
        tick_interval: float,
        seed: int,
        token_volume: Callable[[str], int],
        last_prices: Callable[[], Any] | None = None,
    ) -> None:
        """
        @param last_prices: fires with the last published price of each
            market (by symbol, in units of L{PRICE_DECIMALS}); the walk
            continues from them when this service starts, so that prices do
            not jump back when another node takes the market over.
        """
        self._last_prices = last_prices
        self._publish_batch = publish
        self._clock = clock
        self._interval = tick_interval
        self._token_volume = token_volume
        self._simulator = MarketSimulator(catalog, seed, tick_interval)
        self._loop = LoopingCall(self.tick)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        if self._last_prices is None:
            self._start_ticking()
            return
        d = maybeDeferred(self._last_prices)
        d.addCallback(self._simulator.continue_from)
        d.addErrback(lambda f: self.log.failure("Reading the last prices failed", f))
        d.addCallback(lambda _: self._start_ticking())

    def _start_ticking(self) -> None:
        if not self.running or self._loop.running:
            return
        self._loop.start(self._interval, now=True).addErrback(
            lambda f: self.log.failure("The market ticks stopped", f)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def tick(self) -> None:
        """
        Move the markets and publish; a failure is logged and the next tick
        still comes.
        """
        try:
            self._publish(self._simulator.tick(self._clock.seconds()))
        except Exception:
            self.log.failure("A market tick failed")

    def _publish(self, quotes: list[Quote]) -> None:
        """
        Publish the tick as one batch, so a client following several
        markets gets them all in one write.
        """
        self._publish_batch(quote_publications(quotes, self._token_volume))


def quote_publications(
    quotes: list[Quote], token_volume: Callable[[str], int]
) -> list[Publication]:
    """
    The updates of some quotes: a C{market_data} update per market and a
    C{token_updates} update per token (its price from its market, its
    volume, C{token_volume(token_id)}, from the ledger's confirmed
    transfers).
    """
    batch = []
    for quote in quotes:
        market = quote.market
        token = market.token
        price = format_units(quote.price, PRICE_DECIMALS)
        batch.append(Publication(
            MARKET_DATA,
            channel_key(MARKET_DATA, market.symbol),
            {
                "symbol": market.symbol,
                "price": price,
                "change_24h": quote.change_24h,
                "volume_24h": format_units(quote.volume_24h, quote.volume_decimals),
            },
        ))
        batch.append(Publication(
            TOKEN_UPDATES,
            channel_key(TOKEN_UPDATES, token.token_id),
            {
                "token_id": token.token_id,
                "price": price,
                "volume": format_units(token_volume(token.token_id), token.decimals),
            },
        ))
    return batch
