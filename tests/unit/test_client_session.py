"""
The client session driven directly, over a fake connection and a fake
clock: request correlation, typed errors, heartbeats, dead-connection
detection, pacing, and the reconnect handshake (reconnect first, replay
without duplicates, expired subscriptions renewed, gaps reported).
"""

import orjson

from rustorium.client.errors import (
    ClientStopped,
    ConnectionLost,
    InsufficientFunds,
    NotFound,
    RateLimitExceeded,
    RustoriumError,
)
from rustorium.client.session import ClientSession, State
from rustorium.client.subscription import Gap
from rustorium.ratelimit import TokenBucket
from tests.client_helpers import FakeClientConnection, failure_of, result_of

MTK = "0x00000000000000000000000000000000004d544b"
ALICE = "0xa11ce00000000000000000000000000000000001"
BOB = "0xb0b0000000000000000000000000000000000002"


class Driver:
    """
    A session, its connection, and the server's side of the conversation.
    """

    def __init__(self, clock, **kwargs):
        self.clock = clock
        self.ready_count = 0
        self.reconnects: list[dict] = []
        self.session = ClientSession(
            clock, on_ready=self._ready, on_reconnect=self.reconnects.append, **kwargs
        )
        self.connection: FakeClientConnection | None = None

    def _ready(self):
        self.ready_count += 1

    def open(self) -> FakeClientConnection:
        self.connection = FakeClientConnection()
        self.session.connection_opened(self.connection)
        return self.connection

    def lose(self) -> None:
        self.session.connection_lost()
        self.connection = None

    def receive(self, message: dict) -> None:
        self.session.message_received(orjson.dumps(message))

    def answer(self, request: dict, kind: str, data: dict) -> None:
        self.receive({"id": request["id"], "type": kind, "data": data})

    def error(self, request: dict, code: str, message: str = "no", **extra) -> None:
        self.answer(request, "error", {"code": code, "message": message, **extra})

    def update(self, n: int, **data) -> None:
        self.receive({"id": f"msg_{n}", "type": "update", "data": data})

    def price(self, n: int, symbol: str = "MTK/USD") -> None:
        self.update(n, channel="market_data", symbol=symbol, price="1",
                    change_24h="0", volume_24h="0", timestamp="2026-01-01T00:00:00Z")

    def sent(self) -> list[dict]:
        """
        What the session sent since last asked, without the server_info it
        sends on every connection.
        """
        return [m for m in self.connection.take() if m["type"] != "server_info"]

    def subscribe(self, symbols=("MTK/USD",), on_gap=None, sub_id="sub_1"):
        """
        Subscribe to market_data and confirm; return the subscription and
        the list its updates go to.
        """
        updates: list[dict] = []
        d = self.session.subscribe("market_data", {"symbols": list(symbols)},
                                   updates.append, on_gap)
        (request,) = self.sent()
        assert request["type"] == "subscribe"
        self.answer(request, "subscription_confirmation",
                    {"status": "subscribed", "subscription_id": sub_id,
                     "channel": "market_data", "symbols": sorted(s.upper() for s in symbols)})
        return result_of(d), updates


def numbers(updates: list[dict]) -> list[int]:
    return [int(u["id"][4:]) for u in updates]


# Requests and replies


def test_replies_matched_by_id(clock):
    """
    Replies fire the Deferred of the request with the same id, whatever the
    order they come back in, with the reply's data for commands.
    """
    driver = Driver(clock)
    driver.open()
    first = driver.session.request("get_token_info", {"token_id": MTK})
    second = driver.session.request("ping")
    info_request, ping_request = driver.sent()
    assert info_request["type"] == "get_token_info"
    assert info_request["data"] == {"token_id": MTK}
    assert info_request["id"] != ping_request["id"]
    driver.answer(ping_request, "pong", {"timestamp": "t"})
    driver.answer(info_request, "token_info", {"token_id": MTK, "symbol": "MTK"})
    assert result_of(first)["data"]["symbol"] == "MTK"
    assert result_of(second) == {"id": ping_request["id"], "type": "pong",
                             "data": {"timestamp": "t"}}


def test_error_reply_is_typed(clock):
    """
    An error reply fails the request with the exception class of its code,
    carrying the code, the message and the whole data.
    """
    driver = Driver(clock)
    driver.open()
    d = driver.session.request("execute_transaction", {"from": ALICE})
    (request,) = driver.sent()
    driver.error(request, "insufficient_funds", "only 5 available")
    error = failure_of(d, InsufficientFunds)
    assert isinstance(error, RustoriumError)
    assert (error.code, error.message) == ("insufficient_funds", "only 5 available")
    assert error.reply["id"] == request["id"]


def test_unknown_error_code(clock):
    """
    A code this client does not know still fails with RustoriumError.
    """
    driver = Driver(clock)
    driver.open()
    d = driver.session.request("ping")
    (request,) = driver.sent()
    driver.error(request, "brand_new_code", "what")
    error = failure_of(d, RustoriumError)
    assert type(error) is RustoriumError
    assert error.code == "brand_new_code"


def test_requests_wait_for_a_connection(clock):
    """
    A request made while offline is sent once a connection is ready.
    """
    driver = Driver(clock)
    d = driver.session.request("ping")
    assert not d.called
    driver.open()
    (request,) = driver.sent()
    assert request["type"] == "ping"


def test_server_info_learnt_on_connect(clock):
    """
    Each connection asks for server_info, and its heartbeat timeout is
    used to detect a dead connection.
    """
    driver = Driver(clock)
    connection = driver.open()
    (info,) = connection.take()
    assert info["type"] == "server_info"
    driver.answer(info, "server_info", {"heartbeat_interval": 5.0, "heartbeat_timeout": 15.0,
                                        "limits": {"rate_limit": 10.0, "rate_burst": 10}})
    clock.advance(14.9)
    assert connection.aborted is None
    clock.advance(0.2)
    assert connection.aborted is not None


# Heartbeats and dead connections


def test_heartbeat_answered(clock):
    """
    A heartbeat is answered at once with a heartbeat_response echoing its
    timestamp.
    """
    driver = Driver(clock)
    connection = driver.open()
    connection.take()
    driver.receive({"type": "heartbeat", "data": {"timestamp": "2026-11-26T10:37:48.515469Z"}})
    assert connection.take() == [{"type": "heartbeat_response",
                                  "data": {"timestamp": "2026-11-26T10:37:48.515469Z"}}]


def test_silence_drops_the_connection(clock):
    """
    No message of any kind for the heartbeat timeout (90 s by default):
    the connection is dropped as dead. Any message restarts the wait.
    """
    driver = Driver(clock)
    connection = driver.open()
    clock.advance(60)
    driver.receive({"type": "heartbeat", "data": {"timestamp": "t"}})
    clock.advance(89)
    assert connection.aborted is None
    clock.advance(1)
    assert connection.aborted == "nothing received for 90 s"


def test_one_timer_however_busy(clock):
    """
    Messages do not each move a timer: the watchdog keeps one call and
    re-arms it only when it fires.
    """
    driver = Driver(clock)
    driver.open()
    for _ in range(100):
        clock.advance(0.5)
        driver.receive({"type": "heartbeat", "data": {"timestamp": "t"}})
    assert len(clock.getDelayedCalls()) == 1


def test_watchdog_stops_with_the_connection(clock):
    driver = Driver(clock)
    driver.open()
    driver.lose()
    assert clock.getDelayedCalls() == []


# Pacing


def test_paced_under_the_rate_limit(clock):
    """
    A burst of requests is sent no faster than the server's bucket (10 per
    second, a burst of 10) would take them, with some to spare.
    """
    driver = Driver(clock)
    connection = driver.open()
    for _ in range(30):
        driver.session.request("ping")
    sent_at: list[float] = []
    for _ in range(60):
        sent_at += [clock.seconds()] * len(connection.take())
        clock.advance(0.05)
    assert len(sent_at) == 31  # and the server_info
    now = [sent_at[0]]
    server_bucket = TokenBucket(10.0, 10, lambda: now[0])
    for t in sent_at:
        now[0] = t
        assert server_bucket.take()
    # ... and not much slower than that either.
    assert sent_at[-1] - sent_at[0] < 3.0


def test_rate_limited_request_sent_again(clock):
    """
    A request refused with rate_limit_exceeded was not executed, so it is
    sent again after retry_after; after a few refusals it fails.
    """
    driver = Driver(clock)
    driver.open()
    d = driver.session.request("ping")
    (request,) = driver.sent()
    driver.error(request, "rate_limit_exceeded", "slow down", retry_after=0.5)
    clock.advance(0.49)
    assert driver.sent() == []
    clock.advance(0.02)
    (again,) = driver.sent()
    assert again == request
    for _ in range(3):
        driver.error(again, "rate_limit_exceeded", "slow down", retry_after=0.5)
        clock.advance(0.6)
        sent = driver.sent()
        if sent:
            (again,) = sent
    error = failure_of(d, RateLimitExceeded)
    assert error.retry_after == 0.5


# Subscriptions and updates


def test_updates_routed_to_matching_subscriptions(clock):
    """
    Updates go to the subscriptions whose parameters cover them, by
    channel and by symbol, token id or address.
    """
    driver = Driver(clock)
    driver.open()
    _, mtk = driver.subscribe(["mtk/usd"], sub_id="sub_m")
    tokens: list[dict] = []
    driver.session.subscribe("token_updates", {"token_id": "0x..."}, tokens.append)
    (request,) = driver.sent()
    driver.answer(request, "subscription_confirmation",
                  {"status": "subscribed", "subscription_id": "sub_t",
                   "channel": "token_updates", "token_id": "*"})
    transfers: list[dict] = []
    driver.session.subscribe("transaction_updates", {"address": BOB}, transfers.append)
    (request,) = driver.sent()
    driver.answer(request, "subscription_confirmation",
                  {"status": "subscribed", "subscription_id": "sub_x",
                   "channel": "transaction_updates", "address": BOB})
    driver.price(1, "MTK/USD")
    driver.price(2, "STK/USD")
    driver.update(3, channel="token_updates", token_id=MTK, price="1", volume="0")
    driver.update(4, channel="transaction_updates", transaction_id="0x1", status="pending",
                  **{"from": ALICE, "to": BOB})
    driver.update(5, channel="transaction_updates", transaction_id="0x2", status="pending",
                  **{"from": ALICE, "to": "0x" + "c" * 40})
    assert numbers(mtk) == [1]
    assert numbers(tokens) == [3]
    assert numbers(transfers) == [4]


def test_subscription_takes_normal_form(clock):
    """
    The subscription gets the id and the normal-form parameters of its
    confirmation.
    """
    driver = Driver(clock)
    driver.open()
    subscription, _ = driver.subscribe(["stk/usd", "mtk/usd"], sub_id="sub_9")
    assert subscription.id == "sub_9"
    assert subscription.params == {"symbols": ["MTK/USD", "STK/USD"]}
    assert driver.session.subscriptions == [subscription]


def test_failing_callback_does_not_stop_delivery(clock, logged_errors):
    """
    An exception in one callback is logged; other subscriptions and later
    updates are still delivered.
    """
    driver = Driver(clock)
    driver.open()
    d = driver.session.subscribe("market_data", {"symbols": ["MTK/USD"]},
                                 lambda u: 1 / 0)
    (request,) = driver.sent()
    driver.answer(request, "subscription_confirmation",
                  {"status": "subscribed", "subscription_id": "sub_bad",
                   "channel": "market_data", "symbols": ["MTK/USD"]})
    assert d.called
    _, good = driver.subscribe(sub_id="sub_good", symbols=["MTK/USD", "STK/USD"])
    driver.price(1)
    driver.price(2)
    assert numbers(good) == [1, 2]
    assert len(logged_errors) == 2
    logged_errors.clear()


def test_unsubscribe(clock):
    """
    Unsubscribing stops delivery at once and asks the server.
    """
    driver = Driver(clock)
    driver.open()
    subscription, updates = driver.subscribe()
    d = driver.session.unsubscribe(subscription)
    (request,) = driver.sent()
    assert request["type"] == "unsubscribe"
    assert request["data"] == {"subscription_id": "sub_1"}
    driver.price(1)
    assert updates == []
    driver.answer(request, "subscription_confirmation",
                  {"status": "unsubscribed", "channel": "market_data", "subscription_id": "sub_1"})
    assert result_of(d)["status"] == "unsubscribed"
    assert not subscription.active


def test_unsubscribe_offline(clock):
    """
    Unsubscribing while offline needs no request: the next reconnect does
    not name the subscription, so the server lets it expire.
    """
    driver = Driver(clock)
    driver.open()
    subscription, _ = driver.subscribe()
    driver.lose()
    d = driver.session.unsubscribe(subscription)
    assert result_of(d)["status"] == "unsubscribed"
    driver.open()
    assert driver.sent() == []
    assert driver.session.state is State.READY


# Lost connections


def test_lost_connection_fails_commands(clock):
    """
    A command sent but not answered when the connection is lost fails with
    ConnectionLost; it is not sent again.
    """
    driver = Driver(clock)
    driver.open()
    d = driver.session.request("get_balance", {"address": ALICE, "token_id": MTK})
    driver.sent()
    driver.lose()
    failure_of(d, ConnectionLost)
    driver.open()
    assert driver.sent() == []


def test_lost_connection_resends_idempotent_requests(clock):
    """
    A subscribe, and an execute_transaction (which has an idempotency
    key), are sent again on the next connection, in their order, and their
    Deferreds fire with the new replies.
    """
    from rustorium.client.session import OnLost

    driver = Driver(clock)
    driver.open()
    data = {"from": ALICE, "to": BOB, "amount": "5", "token_id": MTK,
            "idempotency_key": "k-1"}
    transaction = driver.session.request("execute_transaction", data, OnLost.RESEND)
    subscribed = driver.session.subscribe("market_data", {"symbols": ["MTK/USD"]}, print)
    first = driver.sent()
    driver.lose()
    assert not transaction.called and not subscribed.called
    driver.open()
    second = driver.sent()
    assert second == first
    driver.answer(second[0], "transaction_response",
                  {"transaction_id": "0xab", "status": "pending"})
    driver.answer(second[1], "subscription_confirmation",
                  {"status": "subscribed", "subscription_id": "sub_2", "channel": "market_data",
                   "symbols": ["MTK/USD"]})
    assert result_of(transaction)["data"]["transaction_id"] == "0xab"
    assert result_of(subscribed).id == "sub_2"


def test_stop_fails_everything_pending(clock):
    """
    Stopping fails sent and queued requests with ClientStopped, ends the
    subscriptions, and refuses later requests.
    """
    driver = Driver(clock)
    driver.open()
    subscription, _ = driver.subscribe()
    sent = driver.session.request("ping")
    driver.lose()
    queued = driver.session.request("ping")
    waiting = driver.session.when_ready()
    driver.session.stop()
    for d in (queued, waiting):
        failure_of(d, ClientStopped)
    failure_of(sent, ConnectionLost)
    assert not subscription.active
    later = driver.session.request("ping")
    failure_of(later, ClientStopped)


# Reconnecting


def test_reconnect_is_the_first_message(clock):
    """
    On a new connection the session sends reconnect first, with the
    largest message id received and its subscription ids, and holds the
    user's requests until the confirmation.
    """
    driver = Driver(clock)
    driver.open()
    _, updates = driver.subscribe(["MTK/USD"], sub_id="sub_a")
    driver.subscribe(["STK/USD"], sub_id="sub_b")
    driver.price(7)
    driver.price(12, "STK/USD")
    driver.price(9)  # an older id is still a duplicate, even on another key
    driver.lose()
    ping = driver.session.request("ping")
    connection = driver.open()
    first, second = connection.take()
    assert first["type"] == "reconnect"
    assert first["data"] == {"last_message_id": "msg_12", "subscriptions": ["sub_a", "sub_b"]}
    assert second["type"] == "server_info"
    assert driver.session.state is State.RESUMING
    assert driver.ready_count == 1
    driver.answer(first, "reconnect_confirmation", {
        "recovered": True, "replayed": 0,
        "subscriptions": [
            {"subscription_id": "sub_a", "status": "resumed", "recovered": True, "replayed": 0},
            {"subscription_id": "sub_b", "status": "resumed", "recovered": True, "replayed": 0}]})
    assert driver.session.state is State.READY
    assert driver.ready_count == 2
    (request,) = driver.sent()
    assert request["type"] == "ping"
    assert not ping.called
    assert numbers(updates) == [7]


def test_first_connection_sends_no_reconnect(clock):
    driver = Driver(clock)
    connection = driver.open()
    assert [m["type"] for m in connection.take()] == ["server_info"]
    assert driver.session.state is State.READY


def test_replay_delivered_once_in_order(clock):
    """
    Replayed updates reach the same callbacks; any the client already had
    is dropped, so each update is delivered exactly once, in order.
    """
    driver = Driver(clock)
    driver.open()
    _, updates = driver.subscribe(["MTK/USD"])
    for n in (3, 5, 8):
        driver.price(n)
    driver.lose()
    connection = driver.open()
    reconnect = connection.take()[0]
    assert reconnect["data"]["last_message_id"] == "msg_8"
    driver.answer(reconnect, "reconnect_confirmation", {
        "recovered": True, "replayed": 4,
        "subscriptions": [{"subscription_id": "sub_1", "status": "resumed",
                           "recovered": True, "replayed": 4}]})
    for n in (5, 8, 10, 13, 13, 21):
        driver.price(n)
    assert numbers(updates) == [3, 5, 8, 10, 13, 21]
    assert driver.session.duplicates == 3
    assert driver.reconnects[0]["recovered"] is True


def test_expired_subscription_renewed(clock):
    """
    An expired subscription is subscribed again with its parameters; the
    same Subscription object takes the new id and keeps its callback, and
    on_gap is told continuity was lost.
    """
    gaps: list[tuple] = []
    driver = Driver(clock)
    driver.open()
    subscription, updates = driver.subscribe(
        ["STK/USD", "MTK/USD"], on_gap=lambda s, g: gaps.append((s, g)), sub_id="sub_old")
    driver.price(4)
    driver.lose()
    connection = driver.open()
    reconnect = connection.take()[0]
    driver.answer(reconnect, "reconnect_confirmation", {
        "recovered": False, "replayed": 0,
        "subscriptions": [{"subscription_id": "sub_old", "status": "expired"}]})
    (resubscribe,) = driver.sent()
    assert resubscribe["type"] == "subscribe"
    assert resubscribe["data"] == {"channel": "market_data", "symbols": ["MTK/USD", "STK/USD"]}
    assert subscription.id is None
    assert gaps == []
    driver.answer(resubscribe, "subscription_confirmation",
                  {"status": "subscribed", "subscription_id": "sub_new",
                   "channel": "market_data", "symbols": ["MTK/USD", "STK/USD"]})
    assert subscription.id == "sub_new"
    assert gaps == [(subscription, Gap("expired", "sub_old"))]
    driver.price(30)
    assert numbers(updates) == [4, 30]
    assert driver.session.subscriptions == [subscription]


def test_incomplete_replay_reported(clock):
    """
    A resumed subscription whose replay is incomplete keeps its id, and
    on_gap gets the range the server could not replay.
    """
    gaps: list[Gap] = []
    driver = Driver(clock, on_gap=lambda s, g: gaps.append(g))
    driver.open()
    subscription, _ = driver.subscribe()
    driver.lose()
    connection = driver.open()
    reconnect = connection.take()[0]
    driver.answer(reconnect, "reconnect_confirmation", {
        "recovered": False, "replayed": 5,
        "subscriptions": [{"subscription_id": "sub_1", "status": "resumed", "recovered": False,
                           "replayed": 5, "lost": {"from": "msg_101", "to": "msg_180"}}]})
    assert gaps == [Gap("incomplete", "sub_1", "msg_101", "msg_180")]
    assert subscription.id == "sub_1"
    assert driver.sent() == []


def test_refused_reconnect_subscribes_again(clock):
    """
    If the server refuses the reconnect itself, every subscription is
    subscribed again.
    """
    gaps: list[Gap] = []
    driver = Driver(clock, on_gap=lambda s, g: gaps.append(g))
    driver.open()
    driver.subscribe()
    driver.lose()
    connection = driver.open()
    reconnect = connection.take()[0]
    driver.error(reconnect, "invalid_request", "no")
    (resubscribe,) = driver.sent()
    assert resubscribe["type"] == "subscribe"
    assert driver.session.state is State.READY


def test_failed_resubscription_ends_the_subscription(clock):
    """
    When subscribing again is refused (the market is gone), the
    subscription ends and on_gap says so.
    """
    gaps: list[Gap] = []
    driver = Driver(clock, on_gap=lambda s, g: gaps.append(g))
    driver.open()
    subscription, _ = driver.subscribe()
    driver.lose()
    connection = driver.open()
    reconnect = connection.take()[0]
    driver.answer(reconnect, "reconnect_confirmation", {
        "recovered": False, "replayed": 0,
        "subscriptions": [{"subscription_id": "sub_1", "status": "expired"}]})
    (resubscribe,) = driver.sent()
    driver.error(resubscribe, "not_found", "no market MTK/USD")
    assert not subscription.active
    (gap,) = gaps
    assert gap.reason == "failed"
    assert isinstance(gap.error, NotFound)
    assert driver.session.subscriptions == []


def test_lost_during_resubscription(clock):
    """
    A connection lost while subscribing again: the subscribe is sent again
    on the next connection (after its reconnect, which no longer names the
    subscription), and on_gap still comes once.
    """
    gaps: list[Gap] = []
    driver = Driver(clock, on_gap=lambda s, g: gaps.append(g))
    driver.open()
    subscription, _ = driver.subscribe(sub_id="sub_1")
    driver.subscribe(["STK/USD"], sub_id="sub_2")
    driver.lose()
    connection = driver.open()
    reconnect = connection.take()[0]
    driver.answer(reconnect, "reconnect_confirmation", {
        "recovered": False, "replayed": 0,
        "subscriptions": [{"subscription_id": "sub_1", "status": "expired"},
                          {"subscription_id": "sub_2", "status": "resumed",
                           "recovered": True}]})
    assert [m["type"] for m in driver.sent()] == ["subscribe"]
    driver.lose()
    connection = driver.open()
    first, _info = connection.take()[:2]
    assert first["data"]["subscriptions"] == ["sub_2"]
    driver.answer(first, "reconnect_confirmation", {
        "recovered": True, "replayed": 0,
        "subscriptions": [{"subscription_id": "sub_2", "status": "resumed"}]})
    (resubscribe,) = driver.sent()
    driver.answer(resubscribe, "subscription_confirmation",
                  {"status": "subscribed", "subscription_id": "sub_3",
                   "channel": "market_data", "symbols": ["MTK/USD"]})
    assert subscription.id == "sub_3"
    assert [g.reason for g in gaps] == ["expired"]


def test_reconnect_before_any_update(clock):
    """
    With no update received yet, reconnect leaves last_message_id out, so
    the server replays everything since the subscription was made.
    """
    driver = Driver(clock)
    driver.open()
    driver.subscribe()
    driver.lose()
    connection = driver.open()
    assert connection.take()[0]["data"] == {"subscriptions": ["sub_1"]}
