"""
The market simulation: reproducible walks, rolling 24 h figures, and what
the service publishes each tick.
"""

import orjson
import pytest

from rustorium.broker.local import LocalBroker
from rustorium.fanout import Fanout
from rustorium.hub import MessageIds, channel_key
from rustorium.market import MarketService, MarketSimulator, percent_change
from rustorium.rolling import DAY, RollingWindow
from tests.helpers import MTK, demo_catalog


def walk(seed, ticks=50):
    simulator = MarketSimulator(demo_catalog(), seed, 1.0)
    return [[(q.market.symbol, q.price) for q in simulator.tick(float(t))] for t in range(ticks)]


def test_same_seed_same_prices():
    assert walk(7) == walk(7)


def test_other_seed_other_prices():
    assert walk(7) != walk(8)


def test_prices_move_and_stay_positive():
    prices = [p for tick in walk(1, 500) for _, p in tick]
    assert len(set(prices)) > 100
    assert min(prices) > 0


@pytest.mark.parametrize(
    ("price", "reference", "expected"),
    [(10520, 10000, "5.2"), (10000, 10000, "0"), (9480, 10000, "-5.2"), (1, 3, "-66.66"),
     (30000, 10000, "200")],
)
def test_percent_change(price, reference, expected):
    assert percent_change(price, reference) == expected


def test_rolling_window():
    """
    Volume sums the trailing 24 h; the opening price is the oldest price
    still inside the window.
    """
    window = RollingWindow()
    window.record(0.0, 5, 100)
    window.record(30.0, 5, 110)
    window.record(3600.0, 7, 120)
    assert window.total == 17
    assert window.opening_value == 100
    window.record(DAY + 61.0, 1, 130)
    assert window.total == 8
    assert window.opening_value == 120
    window.expire(2 * DAY + 3600.0)
    assert window.total == 0
    assert window.opening_value is None


def test_service_publishes_market_and_token_updates(clock):
    """
    Each tick publishes a market_data update per market and a token_updates
    update per token, with the token's price from its market and its volume
    from the ledger.
    """
    broker = LocalBroker(clock, MessageIds(1, 10**9, 10**6), "node")
    fanout = Fanout()
    broker.on_updates = fanout.deliver
    received = []
    fanout.subscribe(channel_key("market_data", "MTK/USD"), "m", received.append)
    fanout.subscribe(channel_key("token_updates", MTK.token_id), "t", received.append)
    service = MarketService(demo_catalog(), broker.publish, clock, 1.0, 1,
                            lambda token_id: 25 * 10**17 if token_id == MTK.token_id else 0)
    service.startService()
    clock.advance(1.0)
    service.stopService()
    clock.advance(5.0)
    assert len(received) == 4
    market, token = (orjson.loads(u.payload)["data"] for u in received[:2])
    assert market["channel"] == "market_data"
    assert market["symbol"] == "MTK/USD"
    assert set(market) == {"channel", "symbol", "price", "change_24h", "volume_24h", "timestamp"}
    assert token == {"channel": "token_updates", "token_id": MTK.token_id,
                     "price": market["price"], "volume": "2.5",
                     "timestamp": market["timestamp"]}


def test_failing_tick_keeps_ticking(clock, logged_errors):
    """
    A tick that fails is logged and the next tick still comes.
    """
    broker = LocalBroker(clock, MessageIds(1, 10**9, 10**6), "node")
    calls = []

    def volume(token_id):
        calls.append(token_id)
        raise RuntimeError("ledger down")

    service = MarketService(demo_catalog(), broker.publish, clock, 1.0, 1, volume)
    service.startService()
    clock.advance(1.0)
    service.stopService()
    assert len(calls) == 2
    assert len(logged_errors) == 2
    logged_errors.clear()


def test_a_new_market_node_continues_from_the_last_prices(clock):
    """
    A node that takes the market over continues each walk from the last
    published price, so prices do not jump back to where the genesis began.
    """
    broker = LocalBroker(clock, MessageIds(1, 10**9, 10**6), "node")
    published = []
    broker.on_updates = published.extend
    service = MarketService(demo_catalog(), broker.publish, clock, 1.0, 1, lambda t: 0,
                            lambda: {"MTK/USD": 5 * 10**12})
    service.startService()
    service.stopService()
    first = orjson.loads(published[0].payload)["data"]
    assert first["symbol"] == "MTK/USD"
    assert 49_000 < float(first["price"]) < 51_000
