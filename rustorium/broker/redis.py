r"""
The Redis broker: the nodes of a cluster share one Redis.

Key layout (every name starts with the prefix, C{rustorium:} by default):

    counter               the last message number issued, cluster-wide
    ceiling               the highest number the counter may reach: the top
                          of a block reserved durably in the database
    epoch                 hash: id (random), base (every number at or below
                          it predates the epoch), run (the Redis run id)
    history:<key>         stream of the key's updates, entry id <n>-0,
                          fields p (payload), v (the key's previous number),
                          r (retained), t (publication time), and for an
                          update of several keys k (all its keys, a JSON
                          array, the one it was published on first);
                          trimmed to history-size entries, gone after
                          history-age of silence
    top:<key>             the key's last number; outlives its history (a
                          day), so a replay can tell a quiet key from one
                          whose history expired
    latest:<key>          hash: b (data object), t: the key's latest
                          retained value, for snapshots
    subscription:<id>     hash: owner, channel, topics, keys, since, and
                          node (attached) or detached_at (expires after the
                          resume window)
    detached:<owner>      sorted set of the owner's detached subscriptions
                          by detach time (for the cap)
    attached:<node>       set of the subscriptions attached to a node
    nodes, node:<name>    registry: names by expiry; each announcement
    lease:<name>          the holder of a lease
    price_seqs, prices    hashes by market symbol: the last sequence number
                          accepted from outside, and that tick (JSON)

Pub/sub channels: C{updates:<key>}, C{control:<node>} (JSON), C{epoch} (a
new epoch's id), C{prices} (each batch of accepted ticks, a JSON
array). An update of one key is C{"<n> <time> <r> <payload>"} (C{r}: 1
retained, 0 not); an event of several keys (L{Publication.also})
is C{"<n> <time> m <keys>\n<payload>"}, C{keys} as in its history's C{k}
(JSON holds no raw newline). It is sent on each of its keys' channels back
to back: a node listening to several of them keeps the first copy and
drops the adjacent repeats.

Every numbering happens inside one Lua script with the storing and the
PUBLISH (publish.lua, current_state.lua), so numbers are issued, stored and
sent in one order across the cluster, and a node receives each key's
updates in number order.

Numbers never repeat or go backwards, even when Redis restarts empty or
from an old dump: the counter never passes the ceiling, every ceiling comes
from a block the database reserved for this broker alone (C{reserve_ids}),
and a new epoch starts its counter at the bottom of a freshly reserved
block, above every number ever issued.

Run Redis with C{maxmemory-policy noeviction}: an evicted top or counter
would make the broker's gap detection wrong.
"""

import secrets
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import orjson
from twisted.internet.defer import (
    Deferred,
    FirstError,
    fail,
    gatherResults,
    inlineCallbacks,
    maybeDeferred,
    succeed,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from ..groupcommit import GroupCommit
from ..hub import Update
from ..prices import PriceTick
from ..timestamps import isoformat
from .interface import (
    BrokerUnavailable,
    Claim,
    CurrentState,
    IBroker,
    Publication,
    ReplayResult,
    SubscriptionRecord,
)
from .redislink import (
    CommandProtocol,
    GraceCall,
    RedisAddress,
    RedisLink,
    Script,
    SubscriberProtocol,
    evaluate,
    execute,
)

PUBLISH = Script.load("publish")
CURRENT_STATE = Script.load("current_state")
REPLAY = Script.load("replay")
ADOPT = Script.load("adopt")
SEED = Script.load("seed")
RAISE = Script.load("raise")
SAVE = Script.load("save")
DETACH = Script.load("detach.lib", "detach")
DETACH_NODE = Script.load("detach.lib", "detach_node")
CLAIM = Script.load("claim")
REMOVE = Script.load("remove")
ANNOUNCE = Script.load("announce")
NODES = Script.load("nodes")
ACQUIRE = Script.load("acquire")
RELEASE = Script.load("release")
PRICES = Script.load("prices")

TOP_AGE = 86400.0
"""
Seconds a key's top number outlives its last update. A replay needs it
while a client that may have missed that update can still resume: longer
than the resume window plus the time to notice a dead connection.
"""

NUMBERING_ATTEMPTS = 5

PUBLISH_GROUP = 64
REPLAY_GROUP = 1024
CLAIM_GROUP = 1024
"""The most subscriptions claimed by one script call (those claimed in one
reactor turn share one)."""
"""The most replays (a resuming client's each) read by one script call:
those asked for in one reactor turn share one, up to this many."""
"""
The most publish calls numbered by one script call. One call is in flight
per node at a time, so a node's updates are numbered in the order it
published them; calls made meanwhile share the next script call.
"""


class NumberingFailed(Exception):
    """
    Message numbers could not be had (the reserved blocks kept running out
    or the data kept vanishing); nothing was published.
    """


@attrs.frozen
class Keys:
    """
    The names of the broker's keys and channels, under one prefix.
    """

    prefix: str = "rustorium:"

    @property
    def counter(self) -> str:
        return self.prefix + "counter"

    @property
    def ceiling(self) -> str:
        return self.prefix + "ceiling"

    @property
    def epoch(self) -> str:
        return self.prefix + "epoch"

    @property
    def epoch_channel(self) -> str:
        return self.prefix + "epoch"

    @property
    def nodes(self) -> str:
        return self.prefix + "nodes"

    @property
    def price_seqs(self) -> str:
        return self.prefix + "price_seqs"

    @property
    def prices(self) -> str:
        return self.prefix + "prices"

    @property
    def prices_channel(self) -> str:
        return self.prefix + "prices"

    def history(self, key: str) -> str:
        return f"{self.prefix}history:{key}"

    def top(self, key: str) -> str:
        return f"{self.prefix}top:{key}"

    def latest(self, key: str) -> str:
        return f"{self.prefix}latest:{key}"

    def updates(self, key: str) -> str:
        return f"{self.prefix}updates:{key}"

    def control(self, node: str) -> str:
        return f"{self.prefix}control:{node}"

    def subscription(self, subscription_id: str) -> str:
        return f"{self.prefix}subscription:{subscription_id}"

    def attached(self, node: str) -> str:
        return f"{self.prefix}attached:{node}"

    def node(self, name: str) -> str:
        return f"{self.prefix}node:{name}"

    def lease(self, name: str) -> str:
        return f"{self.prefix}lease:{name}"


class _Listen:
    """
    One key this node listens to: how many listens, whether Redis confirmed
    the subscription, and who waits for that.
    """

    __slots__ = ("channel", "confirmed", "count", "waiters")

    def __init__(self, channel: bytes) -> None:
        self.channel = channel
        self.count = 1
        self.confirmed = False
        self.waiters: list[Deferred] = []


class _Batch:
    """
    The updates of one L{RedisBroker.publish} call, waiting to be numbered.
    """

    __slots__ = ("bodies", "first", "items", "published_at")

    def __init__(self, items: list[Publication], bodies: list[bytes], published_at: float):
        self.items = items
        self.bodies = bodies
        self.published_at = published_at
        self.first = 0

    def updates(self) -> list[Update | None]:
        """
        The numbered updates (unframed: they reach this node's connections
        through the subscriber, like everyone's).
        """
        return [
            Update(
                number,
                item.key,
                b'{"id":"msg_%d","type":"update","data":%s}' % (number, body),
                None,
                self.published_at,
                item.retain,
                item.also,
            )
            for number, item, body in zip(
                range(self.first, self.first + len(self.items)), self.items, self.bodies,
                strict=True,
            )
        ]


class _Shared:
    """
    One operation in flight that several callers wait for (a reservation,
    a new epoch): the first call starts it, later ones wait for the same
    result.
    """

    def __init__(self) -> None:
        self._waiters: list[Deferred] | None = None

    def run(self, operation: Callable[[], Deferred]) -> Deferred:
        waiter: Deferred = Deferred()
        if self._waiters is not None:
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]

        def done(result: Any) -> None:
            waiters, self._waiters = self._waiters, None
            for w in waiters:
                if isinstance(result, Failure):
                    w.errback(result)
                else:
                    w.callback(result)

        maybeDeferred(operation).addBoth(done)
        return waiter


def _ignore(result: Any) -> None:
    return None


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


RECENT_UPDATES = 4096
"""Updates this node received or replayed last, kept by number: a storm of
clients resuming after the same message replays the same few updates to
each, read and framed once."""


@attrs.define
class _ReplayRead:
    """
    What one replay script call read: the horizon, the epoch's base, and
    per key its top and its retained updates (numbers, updates, and the
    number before each) above the lowest start asked for.
    """

    horizon: int
    base: int
    keys: dict[str, tuple[int, list[int], list[Update], list[int]]] = attrs.Factory(dict)

    def part(self, starts: dict[str, int]) -> ReplayResult:
        """
        The replay of one request, from its own starts.
        """
        updates: dict[str, list[Update]] = {}
        lost: dict[str, tuple[int, int] | None] = {}
        for key, start in starts.items():
            start = int(start)
            top, numbers, key_updates, previous = self.keys[key]
            first = bisect_right(numbers, start)
            updates[key] = key_updates[first:]
            # The highest number that may be missing: the one before the
            # first update kept (or the key's top, if none is), and anything
            # before this epoch.
            missing = previous[first] if first < len(numbers) else top
            missing = max(missing, self.base)
            lost[key] = (start + 1, missing) if missing > start else None
        return ReplayResult(updates, lost, self.horizon)


@implementer(IBroker)
class RedisBroker:
    """
    The broker of a cluster, in Redis (see the module's docstring for the
    layout).

    Two connections: one for commands and scripts, one in pub/sub mode for
    the keys this node listens to, its control channel and epoch changes.
    Listening is counted here: one SUBSCRIBE per key per node.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        url: str,
        node_name: str,
        prepare: Callable[[bytes], Any],
        reserve_ids: Callable[[int], Any],
        history_size: int = 1000,
        history_age: float = 300.0,
        resume_window: float = 300.0,
        max_detached_per_key: int = 100,
        id_block: int = 1_000_000,
        prefix: str = "rustorium:",
        reply_timeout: float = 5.0,
        keepalive: float = 1.0,
        connect_timeout: float = 5.0,
        retry_delay: Callable[[int], float] | None = None,
        clock: Any = None,
    ) -> None:
        """
        @param url: C{redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]}.
        @param node_name: this node's name, unique in the cluster.
        @param prepare: frames an encoded payload for the wire, once per
            update for all local connections.
        @param reserve_ids: C{reserve_ids(count)} durably raises the
            database's message id ceiling by C{count} and returns (or fires
            with) the new ceiling C. It must be atomic: concurrent callers,
            on any node, get disjoint blocks, so that numbers C - count + 1
            to C are this caller's alone.
        @param history_size: the most updates retained per key.
        @param history_age: seconds an update is retained for replay.
        @param resume_window: seconds a detached subscription stays
            resumable.
        @param max_detached_per_key: the most detached subscriptions one API
            key may have waiting; the oldest go first.
        @param id_block: how many numbers each reservation takes.
        @param reply_timeout: seconds to wait for a reply before the
            connection is taken as dead (and closed).
        @param keepalive: seconds between PINGs on the subscriber
            connection, which otherwise sends nothing: a Redis that stopped
            answering (a network cut, say) is noticed within C{keepalive +
            reply_timeout}, and this node's clients are told to resume
            elsewhere (C{on_lost}) instead of waiting for updates that do
            not come.
        @param clock: the C{IReactorTime} that dates publications and
            bounds the history's age (the reactor by default).
        """
        self._reactor = reactor
        self._clock = reactor if clock is None else clock
        self.address = RedisAddress.from_url(url)
        self.node_name = node_name
        self._prepare = prepare
        self._reserve_ids = reserve_ids
        self._history_size = history_size
        self._history_age = history_age
        self._resume_window = resume_window
        self._max_detached = max_detached_per_key
        self._id_block = id_block
        self._reply_timeout = reply_timeout
        self.keys = keys = Keys(prefix)
        self._node_prefix = keys.node("")
        self._control_channel = keys.control(node_name).encode()
        self._epoch_channel = keys.epoch_channel.encode()
        self._prices_channel = keys.prices_channel.encode()

        self.epoch = ""
        self.on_updates: Callable[[list[Update]], None] = _ignore
        self.on_control: Callable[[dict], None] = _ignore
        self.on_lost: Callable[[str], None] = _ignore
        self.on_restored: Callable[[], None] = _ignore
        self.on_prices: Callable[[list], None] = _ignore

        self._run_id = ""
        self._listens: dict[str, _Listen] = {}
        self._channels: dict[bytes, str] = {}
        self._received: list[Update] = []
        self._recent: OrderedDict[int, Update] = OrderedDict()
        self._last_shared = 0
        self._reserving = _Shared()
        self._demand = 0
        self._publishing: GroupCommit[_Batch] = GroupCommit(self._publish, PUBLISH_GROUP)
        self._replays: list[tuple[dict[str, int], Deferred]] = []
        self._claims: list[tuple[str, int, str, Deferred]] = []
        self.replay_reads = 0
        self._seeding = _Shared()
        self._outage: str | None = None
        self._started = False

        link_options = {"connect_timeout": connect_timeout}
        if retry_delay is not None:
            link_options["retry_delay"] = retry_delay
        self._commands = RedisLink(
            reactor, self.address, "command", self._command_protocol,
            self._commands_connected, self._link_ready, self._commands_lost, **link_options,
        )
        self._subscriber = RedisLink(
            reactor, self.address, "subscriber", self._subscriber_protocol,
            self._subscriber_connected, self._link_ready, self._subscriber_lost,
            keepalive=keepalive, **link_options,
        )

    # Connections.

    def _command_protocol(self) -> CommandProtocol:
        return CommandProtocol(
            charset=None, replyTimeout=self._reply_timeout, convertNumbers=False
        )

    def _subscriber_protocol(self) -> SubscriberProtocol:
        protocol = SubscriberProtocol(
            charset=None, replyTimeout=self._reply_timeout, convertNumbers=False
        )
        protocol.receiver = self
        return protocol

    @inlineCallbacks
    def start(self) -> Any:
        try:
            yield self._commands.start()
            yield self._subscriber.start()
        except BaseException:
            yield self.stop()
            raise
        self._started = True
        self.log.info("Redis broker at {address}: node {node}, epoch {epoch}",
                      address=self.address, node=self.node_name, epoch=self.epoch)

    def stop(self) -> Deferred:
        self._started = False
        d1 = self._commands.stop()
        d2 = self._subscriber.stop()
        return d1.addCallback(lambda _: d2)

    @inlineCallbacks
    def _commands_connected(self, protocol: CommandProtocol) -> Any:
        """
        A new command connection: learn which Redis process this is, and
        adopt its epoch or seed a new one.
        """
        info = yield execute(protocol, self.address, "INFO", "server")
        self._run_id = _run_id(info)
        keys = self.keys
        epoch = yield evaluate(
            protocol, self.address, ADOPT, [keys.counter, keys.epoch], [self._run_id]
        )
        if epoch is None:
            epoch = yield self._seed(protocol)
        self._set_epoch(epoch.decode())

    def _subscriber_connected(self, protocol: SubscriberProtocol) -> Deferred:
        """
        A new subscriber connection: listen again to everything, and fire
        the waiting listens once Redis confirmed.
        """
        listens = [listen for listen in self._listens.values()]
        channels = [self._control_channel, self._epoch_channel, self._prices_channel]
        channels += [listen.channel for listen in listens]
        confirmations = [self._subscribe(protocol, channel) for channel in channels]
        d = _all(confirmations)

        def confirmed(_: object) -> None:
            for listen in listens:
                if self._channels.get(listen.channel) is None:
                    # Unlistened meanwhile.
                    execute(protocol, self.address, "UNSUBSCRIBE", listen.channel).addErrback(
                        _ignore
                    )
                self._confirm(listen)

        return d.addCallback(confirmed)

    def _subscribe(self, protocol: SubscriberProtocol, channel: bytes) -> Deferred:
        """
        SUBSCRIBE to one channel; the connection is closed if Redis does not
        confirm in time (txredisapi applies no timeout to SUBSCRIBE).
        """
        d = execute(protocol, self.address, "SUBSCRIBE", channel, timeout=False)

        def expired() -> None:
            self.log.warn("Redis did not confirm a SUBSCRIBE in time; reconnecting")
            protocol.transport.abortConnection()

        timer = GraceCall(self._reactor, self._reply_timeout, expired)

        def settled(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(settled)

    def _link_ready(self) -> None:
        if self._outage is None or not self._started:
            return
        if self._commands.protocol is None or self._subscriber.protocol is None:
            return
        self._outage = None
        self.log.info("Redis broker at {address} is back (epoch {epoch})",
                      address=self.address, epoch=self.epoch)
        self._call(self.on_restored)

    def _subscriber_lost(self, reason: str) -> None:
        """
        Updates published from now until the subscriber is back are missed.
        """
        self._lost(f"the broker link dropped ({reason})")

    def _commands_lost(self, reason: str) -> None:
        """
        Commands fail until the link is back, but no update is missed: that
        is the subscriber's business. Once back, the epoch is read again.
        """

    def _lost(self, reason: str) -> None:
        if self._outage is not None or not self._started:
            return
        self._outage = reason
        self._call(self.on_lost, reason)

    def _set_epoch(self, epoch: str) -> None:
        """
        The epoch in force is C{epoch}: if it changed, Redis lost its data
        and every live stream may have a gap.
        """
        previous, self.epoch = self.epoch, epoch
        if not previous or previous == epoch:
            return
        self.log.warn("Redis broker epoch changed from {previous} to {epoch}: history was lost",
                      previous=previous, epoch=epoch)
        self._lost(f"the broker's data was lost (epoch {previous} became {epoch})")
        self._link_ready()

    def _call(self, callback: Callable, *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            self.log.failure("Broker callback {callback} failed", callback=callback)

    # Receiving.

    def message(self, channel: bytes, data: bytes) -> None:
        """
        A pub/sub message arrived (called by the subscriber connection).
        """
        key = self._channels.get(channel)
        if key is not None:
            try:
                number, at, retained, payload = data.split(b" ", 3)
                if retained == b"m":
                    update = self._shared_update(int(number), float(at), payload)
                else:
                    update = Update(int(number), key, payload, self._prepare(payload),
                                    float(at), retained == b"1")
            except Exception:
                self.log.failure("Ignored a malformed update on {channel!r}", channel=channel)
                return
            if update is not None:
                self._received.append(update)
                self._remember(update)
        elif channel == self._control_channel:
            try:
                message = orjson.loads(data)
            except orjson.JSONDecodeError:
                self.log.warn("Ignored a control message that is not JSON: {data!r}", data=data)
                return
            self._call(self.on_control, message)
        elif channel == self._epoch_channel:
            self._set_epoch(data.decode())
        elif channel == self._prices_channel:
            try:
                ticks = [PriceTick.from_json(tick) for tick in orjson.loads(data)]
            except Exception:
                self.log.failure("Ignored malformed prices: {data!r}", data=data[:200])
                return
            self._call(self.on_prices, ticks)

    def _remember(self, update: Update) -> None:
        recent = self._recent
        recent[update.number] = update
        if len(recent) > RECENT_UPDATES:
            recent.popitem(last=False)

    def _shared_update(self, number: int, at: float, rest: bytes) -> Update | None:
        r"""
        An update of several keys (C{"<keys>\n<payload>"} follows its
        number and time), or C{None} for a repeat of the one just received:
        published on each of its keys' channels back to back, it arrives
        once per key this node listens to, the copies adjacent.
        """
        if number == self._last_shared:
            return None
        self._last_shared = number
        keys, payload = rest.split(b"\n", 1)
        key, *also = orjson.loads(keys)
        return Update(number, key, payload, self._prepare(payload), at, False, tuple(also))

    def received(self) -> None:
        """
        Everything read at once has been handed to L{message}: deliver the
        updates as one batch.
        """
        if self._received:
            updates, self._received = self._received, []
            self._call(self.on_updates, updates)

    def listen(self, key: str) -> Deferred:
        protocol = self._subscriber.protocol
        if protocol is None:
            return fail(BrokerUnavailable(
                f"Redis at {self.address} is unreachable: {self._subscriber.down_reason}"
            ))
        listen = self._listens.get(key)
        if listen is not None:
            listen.count += 1
            if listen.confirmed:
                return succeed(None)
            waiter: Deferred = Deferred()
            listen.waiters.append(waiter)
            return waiter
        channel = self.keys.updates(key).encode()
        listen = self._listens[key] = _Listen(channel)
        self._channels[channel] = key
        waiter = Deferred()
        listen.waiters.append(waiter)
        self._subscribe(protocol, channel).addCallbacks(
            lambda _: self._confirm(listen), lambda failure: self._forget(listen, failure)
        )
        return waiter

    def _confirm(self, listen: _Listen) -> None:
        if listen.confirmed:
            return
        listen.confirmed = True
        waiters, listen.waiters = listen.waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _forget(self, listen: _Listen, failure: Any) -> None:
        """
        A listen was not confirmed: it and everyone waiting for it fail.
        """
        if listen.confirmed:
            return
        key = self._channels.pop(listen.channel, None)
        if key is not None and self._listens.get(key) is listen:
            del self._listens[key]
        waiters, listen.waiters = listen.waiters, []
        for waiter in waiters:
            waiter.errback(failure)

    def unlisten(self, key: str) -> None:
        listen = self._listens.get(key)
        if listen is None:
            return
        listen.count -= 1
        if listen.count > 0:
            return
        del self._listens[key]
        self._channels.pop(listen.channel, None)
        protocol = self._subscriber.protocol
        if protocol is not None:
            execute(protocol, self.address, "UNSUBSCRIBE", listen.channel).addErrback(_ignore)

    @property
    def listening(self) -> dict[str, int]:
        """
        The keys this node listens to, with their listen counts.
        """
        return {key: listen.count for key, listen in self._listens.items()}

    # Numbering.

    @inlineCallbacks
    def _numbered(self, script: Script, keys: list, args: list) -> Any:
        """
        Run a script that issues numbers: when the counter is missing, seed
        a new epoch; when the ceiling is reached, reserve a block; then run
        it again.
        """
        for _ in range(NUMBERING_ATTEMPTS):
            reply = yield self._commands.evaluate(script, keys, args)
            status = reply[0]
            if status == b"ok":
                self._set_epoch(reply[1].decode())
                return reply
            if status == b"noepoch":
                yield self._seeding.run(self._seed_now)
            elif status == b"ceiling":
                self._demand += int(reply[1])
                yield self._reserving.run(self._reserve_demand)
            else:
                raise NumberingFailed(f"unexpected reply from {script.name}: {reply!r}")
        raise NumberingFailed(
            f"could not number updates after {NUMBERING_ATTEMPTS} attempts "
            "(reserved blocks ran out, or Redis kept losing its data)"
        )

    def _reserve_demand(self) -> Deferred:
        """
        Reserve enough for every call refused since the last reservation
        started (calls refused together are served together), and at least
        a block.
        """
        demand, self._demand = self._demand, 0
        return self._reserve(demand)

    @inlineCallbacks
    def _reserve(self, count: int) -> Any:
        """
        Reserve a block of at least C{count} numbers in the database and
        raise Redis's ceiling to it.
        """
        block = max(self._id_block, count)
        ceiling = yield maybeDeferred(self._reserve_ids, block)
        keys = self.keys
        status = yield self._commands.evaluate(
            RAISE, [keys.counter, keys.ceiling, keys.epoch], [ceiling, block]
        )
        if status == b"noepoch":
            yield self._seeding.run(self._seed_now)

    def _reserve_failed(self, failure: Failure) -> None:
        if failure.check(BrokerUnavailable):
            # Tried again when the block runs out.
            self.log.warn("Could not reserve message ids ahead: {reason}",
                          reason=failure.getErrorMessage())
        else:
            self.log.failure("Reserving message ids failed", failure)

    def _seed_now(self) -> Deferred:
        try:
            protocol = self._commands._require()
        except BrokerUnavailable:
            return fail()
        return self._seed(protocol).addCallback(lambda epoch: self._set_epoch(epoch.decode()))

    @inlineCallbacks
    def _seed(self, protocol: CommandProtocol) -> Any:
        """
        Start a new epoch above every number ever issued, unless another
        node just did; fires with the epoch in force.
        """
        block = self._id_block
        ceiling = yield maybeDeferred(self._reserve_ids, block)
        keys = self.keys
        epoch = secrets.token_hex(8)
        current = yield evaluate(
            protocol, self.address, SEED, [keys.counter, keys.ceiling, keys.epoch],
            [self._run_id, epoch, ceiling, block, keys.epoch_channel],
        )
        if current.decode() == epoch:
            self.log.info("Redis broker started epoch {epoch} at message number {base}",
                          epoch=epoch, base=ceiling - block)
        return current

    # Publishing and reading.

    def publish(self, items: list[Publication]) -> Deferred:
        if not items:
            return succeed([])
        now = self._clock.seconds()
        timestamp = isoformat(now)
        try:
            bodies = [
                orjson.dumps({"channel": item.channel, **item.data, "timestamp": timestamp})
                for item in items
            ]
        except TypeError:
            return fail()
        batch = _Batch(items, bodies, now)
        published: Deferred = Deferred()

        def done(failure: Failure | None) -> None:
            if failure is not None:
                published.errback(failure)
            else:
                published.callback(batch.updates())

        self._publishing.add(batch, done)
        return published

    def _publish(self, batches: list["_Batch"]) -> Deferred:
        """
        Number, store and send several batches in one script call (the
        batches that queued while the previous call was in flight).
        """
        keys = self.keys
        script_keys = [keys.counter, keys.ceiling, keys.epoch]
        args: list[Any] = [
            self._history_size, _ms(self._history_age), _ms(max(TOP_AGE, self._resume_window)),
            sum(len(batch.items) for batch in batches),
        ]
        for batch in batches:
            at = repr(batch.published_at)
            for item, body in zip(batch.items, batch.bodies, strict=True):
                key = item.key
                if not item.also:
                    script_keys += [keys.latest(key), keys.history(key), keys.top(key)]
                    args += [1, b"1" if item.retain else b"0", body, at, b"",
                             keys.updates(key)]
                    continue
                every = item.keys
                script_keys.append(keys.latest(key))
                for one in every:
                    script_keys += [keys.history(one), keys.top(one)]
                args += [len(every), b"0", body, at, orjson.dumps(every)]
                args += [keys.updates(one) for one in every]

        def numbered(reply: list) -> None:
            number = int(reply[2])
            for batch in batches:
                batch.first = number
                number += len(batch.items)
            if int(reply[3]) - number < self._id_block // 2:
                # Reserve the next block before it is needed.
                self._reserving.run(self._reserve_demand).addErrback(
                    self._reserve_failed
                )

        return self._numbered(PUBLISH, script_keys, args).addCallback(numbered)

    def current_state(self, keys: Sequence[str]) -> Deferred:
        keys = list(keys)
        layout = self.keys
        script_keys = [layout.counter, layout.ceiling, layout.epoch]
        script_keys += [layout.latest(key) for key in keys]

        def read(reply: list) -> CurrentState:
            snapshots = []
            for index, key in enumerate(keys):
                number, payload, at = reply[3 + 3 * index: 6 + 3 * index]
                if number is not None:
                    snapshots.append(
                        Update(int(number), key, payload, self._prepare(payload), float(at), True)
                    )
            return CurrentState(snapshots, int(reply[2]))

        d = self._numbered(CURRENT_STATE, script_keys, []).addCallback(read)
        return d.addCallback(self._caught_up)

    def _caught_up(self, result: Any) -> Deferred:
        """
        Fire with C{result} once the subscriber connection has handed over
        every update Redis sent it before now. A script's reply comes on the
        command connection, while the updates numbered before it may still
        be on their way on the other: held back by a feed until the read,
        they would otherwise arrive after it, live, and be sent twice (once
        replayed) or out of order (after the current state). A PING on the
        subscriber connection, answered after them, is the barrier.
        """
        return self._subscriber.execute("PING").addCallback(lambda _: result)

    def replay(self, starts: dict[str, int]) -> Deferred:
        """
        See L{IBroker.replay}. Replays asked for in the same reactor turn
        share one read (a reconnect storm is thousands of clients asking
        for the same keys from the same message): one script call, one
        barrier, each update built once, each client given its part from
        its own starts. Every one of them was asked for before that read
        began, so its horizon is valid for each. Reads do not wait for one
        another.
        """
        commands = self._commands
        if commands.protocol is None:
            return fail(BrokerUnavailable(
                f"Redis at {self.address} is unreachable: {commands.down_reason}"
            ))
        d: Deferred = Deferred()
        if not self._replays:
            self._reactor.callLater(0, self._read_replays)
        self._replays.append((dict(starts), d))
        return d

    def _read_replays(self) -> None:
        """
        Read the replays asked for since the last turn, up to
        L{REPLAY_GROUP} per script call: every key any of them wants, from
        the lowest start any of them has for it.
        """
        queued, self._replays = self._replays, []
        for first in range(0, len(queued), REPLAY_GROUP):
            group = queued[first:first + REPLAY_GROUP]
            merged: dict[str, int] = {}
            for starts, _ in group:
                for key, start in starts.items():
                    start = int(start)
                    if start < merged.get(key, start + 1):
                        merged[key] = start
            self.replay_reads += 1
            self._read_replay(merged).addBoth(self._replays_read, group)

    @staticmethod
    def _replays_read(
        result: "_ReplayRead | Failure", group: list[tuple[dict[str, int], Deferred]]
    ) -> None:
        for starts, d in group:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result.part(starts))

    @inlineCallbacks
    def _read_replay(self, starts: dict[str, int]) -> Any:
        layout = self.keys
        keys = list(starts)
        script_keys = [layout.counter, layout.epoch]
        for key in keys:
            script_keys += [layout.history(key), layout.top(key)]
        cutoff = self._clock.seconds() - self._history_age
        args = [repr(cutoff), *(int(starts[key]) for key in keys)]
        for _ in range(NUMBERING_ATTEMPTS):
            reply = yield self._commands.evaluate(REPLAY, script_keys, args)
            if reply[0] == b"ok":
                break
            yield self._seeding.run(self._seed_now)
        else:
            raise NumberingFailed("Redis kept losing its data while reading a replay")
        self._set_epoch(reply[1].decode())
        yield self._caught_up(None)
        prepare = self._prepare
        recent = self._recent
        read = _ReplayRead(int(reply[2]), int(reply[3]))
        for index, key in enumerate(keys):
            top, entries = reply[4 + 2 * index: 6 + 2 * index]
            numbers, key_updates, previous = [], [], []
            for entry_id, fields in entries:
                number = int(entry_id[:-2])
                update = recent.get(number)
                if update is None:
                    payload = fields[1]
                    if len(fields) > 8:
                        # An update of several keys: the same in each one's
                        # replay, so that a merged replay can keep one.
                        first, *also = orjson.loads(fields[9])
                        update = Update(number, first, payload, prepare(payload),
                                        float(fields[7]), False, tuple(also))
                    else:
                        update = Update(number, key, payload, prepare(payload),
                                        float(fields[7]), fields[5] == b"1")
                    self._remember(update)
                numbers.append(number)
                key_updates.append(update)
                previous.append(int(fields[3]))
            read.keys[key] = (int(top), numbers, key_updates, previous)
        return read

    # Resumable subscriptions.

    def save_subscription(self, record: SubscriptionRecord) -> Deferred:
        keys = self.keys
        return self._commands.evaluate(
            SAVE,
            [keys.subscription(record.subscription_id), keys.attached(self.node_name)],
            [record.subscription_id, self.node_name, record.owner, record.channel,
             orjson.dumps(list(record.topics)), orjson.dumps(list(record.keys)), record.since],
        ).addCallback(_ignore)

    def detach_subscription(self, subscription_id: str, now: float) -> Deferred:
        keys = self.keys
        return self._commands.evaluate(
            DETACH,
            [keys.subscription(subscription_id)],
            [keys.prefix, subscription_id, self.node_name, repr(now),
             repr(self._resume_window), self._max_detached],
        ).addCallback(lambda ids: [i.decode() for i in ids])

    def claim_subscription(self, subscription_id: str, owner: int, node: str) -> Deferred:
        """
        See L{IBroker.claim_subscription}. The claims of one reactor turn
        go in one script call (a reconnect storm claims thousands).
        """
        commands = self._commands
        if commands.protocol is None:
            return fail(BrokerUnavailable(
                f"Redis at {self.address} is unreachable: {commands.down_reason}"
            ))
        d: Deferred = Deferred()
        if not self._claims:
            self._reactor.callLater(0, self._claim_queued)
        self._claims.append((subscription_id, owner, node, d))
        return d

    def _claim_queued(self) -> None:
        queued, self._claims = self._claims, []
        by_node: dict[str, list[tuple[str, int, Deferred]]] = {}
        for subscription_id, owner, node, d in queued:
            by_node.setdefault(node, []).append((subscription_id, owner, d))
        keys = self.keys
        for node, claims in by_node.items():
            for first in range(0, len(claims), CLAIM_GROUP):
                group = claims[first:first + CLAIM_GROUP]
                args: list[Any] = [keys.prefix, node]
                for subscription_id, owner, _ in group:
                    args += [subscription_id, owner]
                self._commands.evaluate(
                    CLAIM, [keys.subscription(i) for i, _, _ in group], args
                ).addBoth(self._claimed, group)

    @staticmethod
    def _claimed(replies: "list | Failure", group: list[tuple[str, int, Deferred]]) -> None:
        for index, (subscription_id, owner, d) in enumerate(group):
            if isinstance(replies, Failure):
                d.errback(replies)
                continue
            reply = replies[index]
            if reply is None:
                d.callback(None)
                continue
            channel, topics, record_keys, since, previous = reply
            record = SubscriptionRecord(
                subscription_id, owner, channel.decode(), tuple(orjson.loads(topics)),
                tuple(orjson.loads(record_keys)), int(since),
            )
            d.callback(Claim(record, previous.decode() if previous is not None else None))

    def find_subscription(self, subscription_id: str, owner: int) -> Deferred:
        def found(fields: list) -> SubscriptionRecord | None:
            stored_owner, channel, topics, record_keys, since = fields
            if stored_owner is None or int(stored_owner) != owner:
                return None
            return SubscriptionRecord(
                subscription_id, owner, channel.decode(), tuple(orjson.loads(topics)),
                tuple(orjson.loads(record_keys)), int(since),
            )

        # A plain read: no script, and the record's expiry is left alone.
        return self._commands.execute(
            "HMGET", self.keys.subscription(subscription_id),
            "owner", "channel", "topics", "keys", "since",
        ).addCallback(found)

    def remove_subscription(self, subscription_id: str) -> Deferred:
        keys = self.keys
        return self._commands.evaluate(
            REMOVE, [keys.subscription(subscription_id)],
            [keys.prefix, subscription_id, self.node_name],
        ).addCallback(bool)

    def detach_node(self, node: str, now: float) -> Deferred:
        keys = self.keys
        return self._commands.evaluate(
            DETACH_NODE, [keys.attached(node)],
            [keys.prefix, repr(now), repr(self._resume_window), self._max_detached],
        )

    # Nodes, control messages and leases.

    def announce(self, info: dict, ttl: float) -> Deferred:
        info = {**info, "name": self.node_name}
        keys = self.keys
        return self._commands.evaluate(
            ANNOUNCE, [keys.node(self.node_name), keys.nodes],
            [self.node_name, orjson.dumps(info), _ms(ttl)],
        ).addCallback(_ignore)

    def nodes(self) -> Deferred:
        return self._commands.evaluate(NODES, [self.keys.nodes], [self._node_prefix]).addCallback(
            lambda infos: [orjson.loads(info) for info in infos]
        )

    def send_to_node(self, node: str, message: dict) -> Deferred:
        return self._commands.execute("PUBLISH", self.keys.control(node), orjson.dumps(message))

    def record_prices(self, ticks: list) -> Deferred:
        if not ticks:
            return succeed([])
        keys = self.keys
        args: list[Any] = [keys.prices_channel]
        for tick in ticks:
            args += [tick.symbol, tick.seq, tick.to_json()]
        return self._commands.evaluate(
            PRICES, [keys.price_seqs, keys.prices], args
        ).addCallback(lambda flags: [bool(int(flag)) for flag in flags])

    def latest_prices(self) -> Deferred:
        def read(reply: list) -> dict:
            ticks = (PriceTick.from_json(orjson.loads(value)) for value in reply[1::2])
            return {tick.symbol: tick for tick in ticks}

        return self._commands.execute("HGETALL", self.keys.prices).addCallback(read)

    def acquire_lease(self, name: str, holder: str, ttl: float) -> Deferred:
        return self._commands.evaluate(
            ACQUIRE, [self.keys.lease(name)], [holder, _ms(ttl)]
        ).addCallback(bool)

    def release_lease(self, name: str, holder: str) -> Deferred:
        return self._commands.evaluate(
            RELEASE, [self.keys.lease(name)], [holder]
        ).addCallback(bool)


def _run_id(info: bytes) -> str:
    """
    The C{run_id} of C{INFO server}: it changes whenever Redis restarts.
    """
    for line in info.splitlines():
        if line.startswith(b"run_id:"):
            return line[7:].strip().decode()
    raise ValueError("INFO server has no run_id")


def _all(deferreds: list[Deferred]) -> Deferred:
    """
    Fires once every Deferred has succeeded, or with the first failure
    (the others' failures are consumed).
    """
    d = gatherResults(deferreds, consumeErrors=True)

    def unwrap(failure: Failure) -> Failure:
        if failure.check(FirstError):
            return failure.value.subFailure
        return failure

    return d.addErrback(unwrap)
