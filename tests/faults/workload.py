"""
The workload of a fault scenario, recorded: subscribers that follow every
channel and reconnect as the specification says, senders of transfers
with idempotency keys that retry with the same key after a lost
connection, and readers of balances. It runs in an asyncio loop of its own
thread (the C{websockets} library's client: a real client stack, not
ours), so the test's thread is free to inject faults meanwhile.

A subscriber, on every connection: resumes with C{reconnect} (its last
update's id and its subscription ids) if it has subscriptions, subscribes
to whatever it lacks (expired ones), and always subscribes to
C{market_data} last, so that the current state sent then marks where its
new subscriptions start (L{tests.faults.checker} relies on that). It
answers heartbeats. When a connection closes it reconnects to another
node (as a load balancer checking the nodes' health would send it): at
once after a 42xx close code, else after the client library's backoff
(first retry 1 to 2 s, doubling, at most 30 s), never after a 40xx code.
"""

import asyncio
import itertools
import json
import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import attrs
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from rustorium.client.backoff import backoff
from tests.faults.cluster import ADDRESSES, SENDERS, TOKENS
from tests.faults.history import History

REQUEST_TIMEOUT = 15.0
"""Seconds a request waits for its reply before the connection is taken
as dead."""


def subscriptions() -> list[dict]:
    """
    Every stream of the workload, C{market_data} last.
    """
    wanted = [{"channel": "transaction_updates", "address": a} for a in ADDRESSES]
    wanted += [{"channel": "token_updates", "token_id": t.token_id} for t in TOKENS]
    wanted.append({"channel": "market_data", "symbols": [t.market for t in TOKENS]})
    return wanted


def parameters(subscription: dict) -> tuple:
    """
    What identifies a subscription: its channel and parameters.
    """
    return tuple(sorted((k, json.dumps(v)) for k, v in subscription.items()
                        if k in ("channel", "address", "token_id", "symbols")))


class RequestFailed(Exception):
    """
    A request was answered with an error.
    """

    def __init__(self, message: dict) -> None:
        super().__init__(message["data"].get("code"), message["data"].get("message"))
        self.message = message


class _Connection:
    """
    One WebSocket connection: requests matched with their replies, every
    message recorded, heartbeats answered.
    """

    def __init__(self, ws: Any, history: History, who: dict, on_update=None) -> None:
        self.ws = ws
        self._history = history
        self._who = who
        self._on_update = on_update
        self._waiting: dict[str, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "heartbeat":
                    await self.ws.send(json.dumps({
                        "type": "heartbeat_response", "data": message.get("data", {}),
                    }))
                    continue
                if self._who.get("client") is not None:
                    self._history.record("received", **self._who, message=message)
                if kind == "update":
                    if self._on_update is not None:
                        self._on_update(message)
                    continue
                waiter = self._waiting.pop(str(message.get("id")), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(message)
        except ConnectionClosed:
            pass
        finally:
            for waiter in self._waiting.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("the connection closed"))
            self._waiting.clear()

    async def request(self, kind: str, data: dict, record: bool = False) -> dict:
        """
        Send a request; its reply (raising L{RequestFailed} for an error).

        @raise ConnectionError: the connection closed first.
        @raise TimeoutError: no reply in time.
        """
        who = self._who.get("client") or self._who.get("sender") or "r"
        request_id = f"{who}-{next(self._ids)}"
        message = {"id": request_id, "type": kind, "data": data}
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = waiter
        if record:
            self._history.record("sent", **self._who, message=message)
        try:
            await self.ws.send(json.dumps(message))
        except ConnectionClosed:
            raise ConnectionError("the connection closed") from None
        reply = await asyncio.wait_for(waiter, REQUEST_TIMEOUT)
        if reply["type"] == "error":
            raise RequestFailed(reply)
        return reply

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except (TimeoutError, WebSocketException, OSError):
            pass
        try:
            await asyncio.wait_for(self.reader, 5)
        except (TimeoutError, asyncio.CancelledError):
            self.reader.cancel()


async def _open(url: str, key: str) -> Any:
    return await connect(f"{url}?api_key={key}", open_timeout=5, close_timeout=3,
                         ping_interval=None, max_size=2**24)


def _connect_failure(error: Exception) -> dict:
    if isinstance(error, InvalidStatus):
        return {"status": error.response.status_code}
    return {"error": f"{type(error).__name__}: {error}"}


class Subscriber:
    """
    A client following every stream, reconnecting as the specification
    says (see the module docstring).
    """

    def __init__(self, workload: "Workload", name: str, first: str) -> None:
        self.workload = workload
        self.name = name
        self.first = first
        self.random = random.Random(name)
        self.subscriptions: dict[str, dict] = {}
        """Subscription id -> parameters."""
        self.last: str | None = None
        self.live = False
        self.connections = 0
        self.connection: _Connection | None = None
        self._away_until = 0.0
        self._severed = False

    def _update(self, message: dict) -> None:
        self.last = message["id"]

    async def run(self) -> None:
        workload = self.workload
        history = workload.history
        url = self.first
        attempt = 0
        while not workload.stopping.is_set():
            await workload.sleep(self._away_until - time.monotonic())
            self.connections += 1
            who = {"client": self.name, "conn": self.connections}
            try:
                ws = await _open(url, workload.key)
            except (OSError, TimeoutError, WebSocketException) as e:
                history.record("connect_failed", **who, node=url, **_connect_failure(e))
                attempt += 1
                await workload.sleep(backoff(attempt, self.random.random))
                url = workload.another(url, self.random)
                continue
            history.record("connect", **who, node=url)
            connection = self.connection = _Connection(ws, history, who, self._update)
            by = "server"
            try:
                await self._establish(connection)
                history.record("live", **who)
                self.live = True
                attempt = 0
                stopping = asyncio.ensure_future(workload.stopped())
                await asyncio.wait([connection.reader, stopping],
                                   return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not connection.reader.done():
                    by = "client"
            except (ConnectionError, TimeoutError, RequestFailed) as e:
                # Refused or unanswered: close, and try again with backoff.
                if not connection.reader.done():
                    by = "client"
                    history.record("gave_up_connection", **who, error=repr(e))
            finally:
                self.live = False
                self.connection = None
                await connection.close()
            if self._severed:
                by, self._severed = "network", False
            code = ws.close_code
            history.record("closed", **who, code=code, reason=ws.close_reason, by=by)
            if workload.stopping.is_set():
                break
            if code is not None and 4000 <= code < 4100:
                history.record("stopped", **who, code=code)
                break
            if code is not None and 4200 <= code < 4300:
                attempt = 0
            else:
                attempt += 1
                await workload.sleep(backoff(attempt, self.random.random))
            url = workload.another(url, self.random)

    def sever(self, away: float) -> None:
        """
        Drop the connection as a network failure would (no closing
        handshake), and stay away for C{away} seconds.
        """
        self._away_until = time.monotonic() + away
        if self.connection is not None:
            self._severed = True
            self.connection.ws.transport.abort()

    async def _establish(self, connection: _Connection) -> None:
        """
        Resume what there is to resume, subscribe to the rest, and end with
        C{market_data}.
        """
        if self.subscriptions:
            data: dict[str, Any] = {"subscriptions": list(self.subscriptions)}
            if self.last is not None:
                data["last_message_id"] = self.last
            reply = await connection.request("reconnect", data, record=True)
            for entry in reply["data"]["subscriptions"]:
                if entry["status"] != "resumed":
                    self.subscriptions.pop(entry["subscription_id"], None)
        have = {parameters(p) for p in self.subscriptions.values()}
        wanted = subscriptions()
        missing = [s for s in wanted[:-1] if parameters(s) not in have]
        if not missing and parameters(wanted[-1]) in have and self.last is not None:
            return
        for subscription in [*missing, wanted[-1]]:
            reply = await connection.request("subscribe", subscription, record=True)
            self.subscriptions[reply["data"]["subscription_id"]] = subscription


@attrs.define
class Transfer:
    number: int
    request: dict


class Sender:
    """
    Transfers from one address through one node at a time, each with an
    idempotency key; a transfer whose reply was lost, or refused with
    C{internal_error}, is sent again with the same key (to any node, after
    reconnecting) until it is answered for good.
    """

    def __init__(self, workload: "Workload", name: str, address: str, first: str,
                 interval: float) -> None:
        self.workload = workload
        self.name = name
        self.address = address
        self.first = first
        self.interval = interval
        self.random = random.Random(name)
        self.connection: _Connection | None = None
        self.url = first
        self.acknowledged = 0
        self.finished = False

    def _transfer(self, number: int) -> Transfer:
        rng = self.random
        recipients = [a for a in ADDRESSES if a != self.address]
        weights = [4 if a in SENDERS else 1 for a in recipients]
        token = rng.choice(TOKENS)
        if token.decimals >= 4:
            amount = f"{rng.randint(1, 9)}.{number % 10**4:04d}"
        else:
            amount = f"{rng.randint(5, 40)}.{rng.randint(0, 99):02d}"
        return Transfer(number, {
            "from": self.address, "to": rng.choices(recipients, weights)[0],
            "amount": amount, "token_id": token.token_id,
            "idempotency_key": f"{self.name}-{number}",
        })

    async def _connect(self) -> _Connection | None:
        workload = self.workload
        attempt = 0
        while not workload.stopping.is_set():
            try:
                ws = await _open(self.url, workload.key)
                return _Connection(ws, workload.history, {"sender": self.name})
            except (OSError, TimeoutError, WebSocketException) as e:
                workload.history.record("connect_failed", sender=self.name, node=self.url,
                                        **_connect_failure(e))
                attempt += 1
                await workload.sleep(backoff(attempt, self.random.random))
                self.url = workload.another(self.url, self.random)
        return None

    async def run(self) -> None:
        workload = self.workload
        for number in itertools.count(1):
            if workload.senders_stopping.is_set():
                break
            await self._send(self._transfer(number))
            await workload.sleep(self.interval)
        if self.connection is not None:
            await self.connection.close()
        self.finished = True

    async def _send(self, transfer: Transfer) -> None:
        history = self.workload.history
        who = {"sender": self.name, "op": transfer.number}
        for attempt in itertools.count(1):
            if self.connection is None or self.connection.reader.done():
                self.connection = await self._connect()
                if self.connection is None:
                    history.record("abandoned", **who)
                    return
            history.record("invoke", **who, attempt=attempt, node=self.url,
                           request=transfer.request)
            try:
                reply = await self.connection.request("execute_transaction", transfer.request)
            except RequestFailed as e:
                history.record("reply", **who, attempt=attempt, message=e.message)
                if e.message["data"]["code"] not in ("internal_error", "rate_limit_exceeded"):
                    return
                if self.workload.stopping.is_set():
                    history.record("abandoned", **who)
                    return
                await self.workload.sleep(0.5)
                continue
            except (ConnectionError, TimeoutError) as e:
                history.record("lost", **who, attempt=attempt, error=repr(e))
                await self.connection.close()
                self.connection = None
                if self.workload.stopping.is_set():
                    history.record("abandoned", **who)
                    return
                self.url = self.workload.another(self.url, self.random)
                continue
            history.record("reply", **who, attempt=attempt, message=reply)
            self.acknowledged += 1
            return


class Reader:
    """
    Reads a balance through one node every C{interval}, recording each
    answer or error and how long it took.
    """

    def __init__(self, workload: "Workload", name: str, url: str, interval: float) -> None:
        self.workload = workload
        self.name = name
        self.url = url
        self.interval = interval
        self.finished = False

    async def run(self) -> None:
        workload = self.workload
        connection = None
        request = {"address": SENDERS[0], "token_id": TOKENS[0].token_id}
        while not workload.senders_stopping.is_set():
            if connection is None or connection.reader.done():
                try:
                    connection = _Connection(await _open(self.url, workload.key),
                                             workload.history, {"reader": self.name})
                except (OSError, TimeoutError, WebSocketException) as e:
                    workload.history.record("read", reader=self.name, request=request,
                                            error=repr(e), latency=None)
                    await workload.sleep(1.0)
                    continue
            started = time.monotonic()
            try:
                reply = await connection.request("get_balance", request)
                outcome = {"message": reply}
            except RequestFailed as e:
                outcome = {"message": e.message}
            except (ConnectionError, TimeoutError) as e:
                outcome = {"error": repr(e)}
            workload.history.record("read", reader=self.name, request=request,
                                    latency=time.monotonic() - started, **outcome)
            await workload.sleep(self.interval)
        if connection is not None:
            await connection.close()
        self.finished = True


class Workload:
    """
    Subscribers, senders and readers on a cluster, in a thread of their own.

    @ivar urls: the nodes' URLs, any of which a client may reconnect to.
    """

    def __init__(self, history: History, urls: Sequence[str], key: str) -> None:
        self.history = history
        self.urls = list(urls)
        self.key = key
        self.subscribers: list[Subscriber] = []
        self.senders: list[Sender] = []
        self.readers: list[Reader] = []
        self.stopping = threading.Event()
        self.senders_stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None

    def another(self, url: str, rng: random.Random) -> str:
        """
        A node to reconnect to: any but the one just left, as a load
        balancer checking the nodes' health would choose (the same one
        when it is the only one).
        """
        return rng.choice([u for u in self.urls if u != url] or self.urls)

    def subscriber(self, name: str, url: str) -> Subscriber:
        subscriber = Subscriber(self, name, url)
        self.subscribers.append(subscriber)
        return subscriber

    def sender(self, name: str, address: str, url: str, interval: float = 0.1) -> Sender:
        sender = Sender(self, name, address, url, interval)
        self.senders.append(sender)
        return sender

    def reader(self, name: str, url: str, interval: float = 0.2) -> Reader:
        reader = Reader(self, name, url, interval)
        self.readers.append(reader)
        return reader

    async def sleep(self, seconds: float) -> None:
        """
        Sleep, cut short when the workload stops.
        """
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    async def stopped(self) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(0.05)

    def start(self) -> "Workload":
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            ready.set()
            try:
                self._loop.run_until_complete(self._main())
            except BaseException as e:  # reported by stop()
                self._error = e
            finally:
                self._loop.close()

        self._thread = threading.Thread(target=run, name="workload", daemon=True)
        self._thread.start()
        ready.wait()
        return self

    async def _main(self) -> None:
        tasks = [asyncio.ensure_future(c.run())
                 for c in (*self.subscribers, *self.senders, *self.readers)]
        await asyncio.gather(*tasks)

    def sever(self, name: str, away: float = 0.0) -> None:
        """
        Drop subscriber C{name}'s connection abruptly; it reconnects after
        C{away} seconds at the soonest.
        """
        (subscriber,) = [s for s in self.subscribers if s.name == name]
        self._loop.call_soon_threadsafe(subscriber.sever, away)

    def wait_live(self, timeout: float = 60.0) -> bool:
        """
        Wait until every subscriber is connected with its subscriptions
        made or resumed; whether they all are.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.live for s in self.subscribers):
                return True
            time.sleep(0.05)
        return False

    def wait_acknowledged(self, count: int, timeout: float = 60.0) -> None:
        """
        Wait until the senders have C{count} more transfers acknowledged.
        """
        target = sum(s.acknowledged for s in self.senders) + count
        deadline = time.monotonic() + timeout
        while sum(s.acknowledged for s in self.senders) < target:
            assert time.monotonic() < deadline, "transfers are not being acknowledged"
            time.sleep(0.05)

    def stop_senders(self, timeout: float = 60.0) -> None:
        """
        Let each sender settle its transfer in flight, then stop sending.
        """
        self.senders_stopping.set()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s.finished for s in (*self.senders, *self.readers)):
                return
            time.sleep(0.05)

    def stop(self, settle: float = 60.0, drain: float = 1.5) -> None:
        """
        Stop the senders, wait (up to C{settle}) until every subscriber is
        live again and (C{drain}) for the last updates, then close
        everything.
        """
        self.stop_senders(settle)
        self.wait_live(settle)
        time.sleep(drain)
        self.history.record("stop")
        self.stopping.set()
        self._thread.join(30)
        assert not self._thread.is_alive(), "the workload did not stop"
        if self._error is not None:
            raise self._error
