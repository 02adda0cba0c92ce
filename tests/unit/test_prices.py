"""
Prices posted from outside: parsing a batch, ordering by sequence number
in the in-process broker, the markets they move (24 h change and volume)
and the service that publishes them on the node running the market.
"""

import orjson
import pytest
from twisted.internet.defer import Deferred, fail, succeed

from rustorium.broker.local import LocalBroker
from rustorium.errors import ErrorCode, RequestError
from rustorium.fanout import Fanout
from rustorium.hub import MessageIds, channel_key
from rustorium.prices import (
    MAX_PRICES,
    MAX_SEQ,
    DatabasePrices,
    ExternalMarkets,
    ExternalMarketService,
    PriceTick,
    parse_prices,
)
from rustorium.rolling import DAY
from tests.helpers import MTK, RST, demo_catalog

NOW = 1_700_000_000.0


def parse(body):
    return parse_prices(body, demo_catalog(), NOW)


def refusal(body) -> RequestError:
    with pytest.raises(RequestError) as raised:
        parse(body)
    assert raised.value.code == ErrorCode.INVALID_PARAMS
    return raised.value


class TestParse:
    def test_a_batch(self):
        ticks = parse({"prices": [
            {"symbol": "MTK/USD", "price": "1.25", "seq": 17},
            {"symbol": "rst/usd", "price": "0.00000001", "seq": 0,
             "timestamp": "2023-11-14T22:13:00Z", "volume": "2.5"},
        ]})
        assert ticks == [
            PriceTick("MTK/USD", 125_000_000, 17, NOW),
            PriceTick("RST/USD", 1, 0, 1_700_000_000 - 20.0, 25 * 10 ** (RST.decimals - 1)),
        ]

    @pytest.mark.parametrize(("body", "field"), [
        ([], "body"),
        ({}, "prices"),
        ({"prices": []}, "prices"),
        ({"prices": "MTK/USD"}, "prices"),
        ({"prices": [], "extra": 1}, "extra"),
        ({"prices": [1]}, "prices[0]"),
        ({"prices": [{"price": "1", "seq": 1}]}, "prices[0].symbol"),
        ({"prices": [{"symbol": "MTK/USD", "seq": 1}]}, "prices[0].price"),
        ({"prices": [{"symbol": "MTK/USD", "price": "1"}]}, "prices[0].seq"),
        ({"prices": [{"symbol": "XYZ/USD", "price": "1", "seq": 1}]}, "prices[0].symbol"),
        ({"prices": [{"symbol": 5, "price": "1", "seq": 1}]}, "prices[0].symbol"),
        ({"prices": [{"symbol": "MTK/USD", "price": 1.25, "seq": 1}]}, "prices[0].price"),
        ({"prices": [{"symbol": "MTK/USD", "price": "1e3", "seq": 1}]}, "prices[0].price"),
        ({"prices": [{"symbol": "MTK/USD", "price": "-1", "seq": 1}]}, "prices[0].price"),
        ({"prices": [{"symbol": "MTK/USD", "price": "NaN", "seq": 1}]}, "prices[0].price"),
        ({"prices": [{"symbol": "MTK/USD", "price": "0", "seq": 1}]}, "prices[0].price"),
        ({"prices": [{"symbol": "MTK/USD", "price": "0.000000001", "seq": 1}]},
         "prices[0].price"),
        ({"prices": [{"symbol": "MTK/USD", "price": "1", "seq": "1"}]}, "prices[0].seq"),
        ({"prices": [{"symbol": "MTK/USD", "price": "1", "seq": True}]}, "prices[0].seq"),
        ({"prices": [{"symbol": "MTK/USD", "price": "1", "seq": -1}]}, "prices[0].seq"),
        ({"prices": [{"symbol": "MTK/USD", "price": "1", "seq": MAX_SEQ + 1}]}, "prices[0].seq"),
        ({"prices": [{"symbol": "MTK/USD", "price": "1", "seq": 1.5}]}, "prices[0].seq"),
        ({"prices": [{"symbol": "MTK/USD", "price": "1", "seq": 1, "timestamp": "yesterday"}]},
         "prices[0].timestamp"),
        ({"prices": [{"symbol": "MTK/USD", "price": "1", "seq": 1,
                      "timestamp": "2026-01-01T00:00:00"}]}, "prices[0].timestamp"),
        ({"prices": [{"symbol": "MTK/USD", "price": "1", "seq": 1, "volume": 3}]},
         "prices[0].volume"),
        ({"prices": [{"symbol": "MTK/USD", "price": "1", "seq": 1, "colour": "red"}]},
         "prices[0].colour"),
        ({"prices": [{"symbol": "MTK/USD", "price": "1", "seq": 1}] * (MAX_PRICES + 1)},
         "prices"),
    ])
    def test_refused_naming_the_field(self, body, field):
        """
        A bad batch is refused whole, with the field named in the message
        and in C{field}.
        """
        error = refusal(body)
        assert error.extra == {"field": field}
        assert error.message.startswith(f"{field}: ")

    def test_the_most_at_once(self):
        body = {"prices": [{"symbol": "MTK/USD", "price": "1", "seq": n}
                           for n in range(MAX_PRICES)]}
        assert len(parse(body)) == MAX_PRICES


class TestLocalBroker:
    def test_sequence_per_market(self, clock):
        """
        A tick is accepted only above its market's last sequence number,
        also within one batch; the accepted ones are handed on in one
        batch, and the latest of each market kept.
        """
        broker = LocalBroker(clock, MessageIds(1, 10**9, 10**6), "node")
        heard = []
        broker.on_prices = heard.append
        ticks = [PriceTick("MTK/USD", 100, 5, 1.0), PriceTick("MTK/USD", 90, 4, 1.0),
                 PriceTick("RST/USD", 7, 1, 1.0), PriceTick("MTK/USD", 110, 6, 2.0)]
        assert broker.record_prices(ticks).result == [True, False, True, True]
        assert broker.record_prices([ticks[3]]).result == [False]
        assert heard == [[ticks[0], ticks[2], ticks[3]]]
        assert broker.latest_prices().result == {"MTK/USD": ticks[3], "RST/USD": ticks[2]}

    def test_a_failing_listener_loses_nothing(self, clock, logged_errors):
        broker = LocalBroker(clock, MessageIds(1, 10**9, 10**6), "node")

        def broken(ticks):
            raise RuntimeError("no")

        broker.on_prices = broken
        tick = PriceTick("MTK/USD", 100, 5, 1.0)
        assert broker.record_prices([tick]).result == [True]
        assert broker.latest_prices().result == {"MTK/USD": tick}
        assert len(logged_errors) == 1
        logged_errors.clear()


class HeldStore:
    """
    A price store whose writes wait for the test.
    """

    def __init__(self, stored=None):
        self.stored = dict(stored or {})
        self.held = []

    def load(self):
        return succeed(dict(self.stored))

    def save(self, ticks):
        d = Deferred()
        self.held.append((d, ticks))
        return d

    def release(self):
        held, self.held = self.held, []
        for d, ticks in held:
            self.stored.update({t.symbol: t for t in ticks})
            d.callback(None)


class TestKeptPrices:
    def test_kept_before_published_and_read_at_start(self, clock):
        """
        With a store, accepted prices are ordered at once, kept, and only
        then handed on and answered; a broker starting again reads them
        back, so an old sequence number stays stale after a restart.
        """
        store = HeldStore()
        broker = LocalBroker(clock, MessageIds(1, 10**9, 10**6), "node", prices=store)
        broker.start()
        heard = []
        broker.on_prices = heard.append
        first = broker.record_prices([PriceTick("MTK/USD", 100, 5, 1.0)])
        second = broker.record_prices([PriceTick("MTK/USD", 90, 5, 1.0)])
        assert second.result == [False]
        assert not first.called and heard == []
        store.release()
        assert first.result == [True]
        assert heard == [[PriceTick("MTK/USD", 100, 5, 1.0)]]
        broker.stop()
        again = LocalBroker(clock, MessageIds(1, 10**9, 10**6), "node", prices=store)
        again.start()
        assert again.latest_prices().result == {"MTK/USD": PriceTick("MTK/USD", 100, 5, 1.0)}
        assert again.record_prices([PriceTick("MTK/USD", 1, 4, 2.0)]).result == [False]
        again.stop()

    def test_a_broker_on_the_database_starts_at_once(self, clock):
        """
        The prices are read before the server listens, so the in-process
        broker (and so the server) is ready at once: a start waiting on
        the database held the first handshakes at 503.
        """
        tick = PriceTick("MTK/USD", 100, 5, 1.0)
        store = DatabasePrices(None, {"MTK/USD": tick.to_json().decode()})
        broker = LocalBroker(clock, MessageIds(1, 10**9, 10**6), "node", prices=store)
        started = broker.start()
        assert started.called
        assert broker.latest_prices().result == {"MTK/USD": tick}
        broker.stop()

    def test_in_the_database(self, database_url):
        """
        The database keeps the last tick of each market, on either engine.
        """
        from rustorium.bootstrap import prepare_database
        from rustorium.storage import engine_from_url, run_blocking
        from rustorium.storage.meta import load_prices, save_prices

        engine = engine_from_url(database_url)
        prepare_database(engine, None)
        assert run_blocking(engine, load_prices) == {}
        ticks = [PriceTick("MTK/USD", 100, 5, 1.5, 3), PriceTick("RST/USD", 7, 1, 2.0)]
        run_blocking(engine, save_prices, {t.symbol: t.to_json().decode() for t in ticks})
        later = PriceTick("MTK/USD", 110, 6, 2.5)
        run_blocking(engine, save_prices, {later.symbol: later.to_json().decode()})
        stored = run_blocking(engine, load_prices)
        assert {s: PriceTick.from_json(orjson.loads(t)) for s, t in stored.items()} == {
            "MTK/USD": later, "RST/USD": ticks[1]}


class TestExternalMarkets:
    def test_change_and_volume_follow_the_ticks(self):
        """
        The 24 h change is against the first price of the oldest minute
        still within 24 h; the volume sums the ticks' volumes over 24 h;
        a tick not newer than the last applied moves nothing.
        """
        markets = ExternalMarkets(demo_catalog())
        first = markets.apply(PriceTick("MTK/USD", 100, 1, 0.0, 5), 0.0)
        assert (first.price, first.change_24h, first.volume_24h) == (100, "0", 5)
        assert first.volume_decimals == MTK.decimals
        later = markets.apply(PriceTick("MTK/USD", 110, 2, 3600.0, 7), 3600.0)
        assert (later.change_24h, later.volume_24h) == ("10", 12)
        assert markets.apply(PriceTick("MTK/USD", 50, 2, 3601.0), 3601.0) is None
        next_day = markets.apply(PriceTick("MTK/USD", 99, 3, DAY + 120.0), DAY + 120.0)
        assert (next_day.change_24h, next_day.volume_24h) == ("-10", 7)
        assert markets.apply(PriceTick("XYZ/USD", 1, 9, 0.0), 0.0) is None

    def test_a_time_from_the_future_counts_as_now(self):
        markets = ExternalMarkets(demo_catalog())
        markets.apply(PriceTick("MTK/USD", 100, 1, 10 * DAY, 5), 0.0)
        quote = markets.apply(PriceTick("MTK/USD", 100, 2, DAY + 60.0), DAY + 60.0)
        assert quote.volume_24h == 0


def service_on(clock, broker, volume=lambda token_id: 0):
    broker.on_updates = Fanout().deliver
    service = ExternalMarketService(demo_catalog(), broker.publish, clock, 1.0, volume,
                                    broker.latest_prices)
    broker.on_prices = service.prices_received
    return service


class TestService:
    def test_publishes_what_is_accepted(self, clock):
        """
        Accepted ticks become a market_data and a token_updates update each,
        at once; nothing is published while the service is stopped, and
        what was accepted meanwhile is published when it starts.
        """
        broker = LocalBroker(clock, MessageIds(1, 10**9, 10**6), "node")
        published = []
        service = service_on(clock, broker,
                             lambda t: 25 * 10**17 if t == MTK.token_id else 0)
        broker.on_updates = published.extend
        broker.record_prices([PriceTick("MTK/USD", 125_000_000, 1, clock.seconds(), 10**18)])
        assert published == []
        service.startService()
        data = [orjson.loads(u.payload)["data"] for u in published]
        assert [d["channel"] for d in data] == ["market_data", "token_updates"]
        assert data[0]["price"] == "1.25" and data[0]["volume_24h"] == "1"
        assert data[0]["change_24h"] == "0"
        assert data[1] == {"channel": "token_updates", "token_id": MTK.token_id,
                           "price": "1.25", "volume": "2.5", "timestamp": data[1]["timestamp"]}
        published.clear()
        broker.record_prices([PriceTick("MTK/USD", 150_000_000, 2, clock.seconds())])
        data = [orjson.loads(u.payload)["data"] for u in published]
        assert data[0]["price"] == "1.5" and data[0]["change_24h"] == "20"
        published.clear()
        clock.advance(5.0)  # the catch-up reads republish nothing
        assert published == []
        service.stopService()
        broker.record_prices([PriceTick("MTK/USD", 1, 3, clock.seconds())])
        assert published == []

    def test_catches_up_on_ticks_it_missed(self, clock):
        """
        A tick the push missed (a dropped broker link) is published at the
        next read, within a tick interval.
        """
        broker = LocalBroker(clock, MessageIds(1, 10**9, 10**6), "node")
        published = []
        service = service_on(clock, broker)
        broker.on_updates = published.extend
        service.startService()
        broker.on_prices = lambda ticks: None
        broker.record_prices([PriceTick("RST/USD", 300_000_000, 8, clock.seconds())])
        assert published == []
        clock.advance(1.0)
        assert [orjson.loads(u.payload)["data"]["channel"] for u in published] == [
            "market_data", "token_updates"]
        assert published[0].key == channel_key("market_data", "RST/USD")
        service.stopService()

    def test_a_failed_read_is_logged_and_the_next_comes(self, clock, logged_errors):
        calls = []

        def latest():
            calls.append(1)
            return fail(RuntimeError("broker down")) if len(calls) == 1 else succeed({})

        service = ExternalMarketService(demo_catalog(), lambda batch: None, clock, 1.0,
                                        lambda t: 0, latest)
        service.startService()
        clock.advance(1.0)
        service.stopService()
        assert len(calls) == 2
        assert len(logged_errors) == 1
        logged_errors.clear()
