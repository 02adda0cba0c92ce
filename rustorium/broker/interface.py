"""
The broker: what every node of a cluster shares.

A node fans updates out to its own connections; the broker is what lies
between the nodes. It numbers each update from one cluster-wide sequence
(the spec's single C{last_message_id} must order the updates of every key a
connection watches), keeps each key's recent history for replay and its
latest value for snapshots, carries updates to the nodes that listen to
their keys, and keeps the state a client may resume on any node: its
resumable subscriptions. It also keeps the registry of live nodes, carries
control messages between them, and grants leases for singleton jobs.

L{IBroker} is the contract; an in-process implementation serves a single
node and the Redis one (L{rustorium.broker.redis.RedisBroker}) a cluster.
The broker costs per update and per key, never per connection: a node
listens to a key once, however many of its connections subscribe to it.
"""

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from ..hub import Update


class BrokerUnavailable(Exception):
    """
    The broker cannot be reached now (its connection is down or being
    restored): the operation was not done. Raised at once, never after a
    wait, so that a request fails visibly instead of hanging.
    """


@attrs.frozen
class Publication:
    """
    One update to publish.

    @ivar channel: the wire channel (C{"market_data"}).
    @ivar key: the hub key (C{"market_data:MTK/USD"}, see
        L{rustorium.hub.channel_key}).
    @ivar data: the update's C{data} object without C{channel} and
        C{timestamp}, which the broker adds.
    @ivar retain: keep it as the key's latest value for snapshots (prices
        and volumes are state; transaction events are not). Retained
        updates are also conflatable for slow readers.
    @ivar also: the other keys the same update belongs to (a transfer's
        event concerns its sender's address, C{key}, and its recipient's).
        It is numbered once, kept in the history of every one of its keys
        and delivered to the listeners of each, and its L{Update} carries
        them all (L{Update.also}), so that a connection watching several of
        them gets it once, live and replayed. Only events (not retained)
        may have other keys: a key's latest value is its own. Repeats, and
        C{key} itself, are dropped (a transfer to oneself has one key).

    @raise ValueError: a retained publication with other keys.
    """

    channel: str
    key: str
    data: dict
    retain: bool = True
    also: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        also = self.also
        if not also:
            return
        if self.retain:
            raise ValueError(
                f"a retained update belongs to one key: {self.key!r} cannot also be "
                f"published on {list(also)!r}"
            )
        key = self.key
        # Frozen: attrs' documented way to normalise in the initialiser.
        object.__setattr__(self, "also", tuple(k for k in dict.fromkeys(also) if k != key))

    @property
    def keys(self) -> tuple[str, ...]:
        """
        All of its keys: C{key} first, then C{also}.
        """
        return (self.key, *self.also)


@attrs.frozen
class CurrentState:
    """
    The latest values of some keys, renumbered.

    @ivar snapshots: one update per key that has a latest value, in the
        order the keys were asked for, each numbered afresh (above every
        update published before, at or below C{horizon}) so that the ids a
        connection receives keep increasing.
    @ivar horizon: the last number issued when the values were read
        (snapshot numbers included). Every update of these keys numbered at
        or below it is older than the snapshots; every later one arrives
        live to a node that was listening before the read.
    """

    snapshots: list[Update]
    horizon: int


@attrs.frozen
class ReplayResult:
    """
    The retained updates of some keys after a starting number for each.

    @ivar updates: per key, its retained updates numbered above its start,
        oldest first. An update of several keys (L{Publication.also}) is in
        the list of each of them that was asked for, equal in each (its
        C{key} is the one it was published on, its C{also} the others), so
        that merging the lists can keep one per number.
    @ivar lost: per key, the (first, last) message numbers within which
        updates of the key may be missing from C{updates} (evicted by size
        or age, or lost with the broker's data), or C{None} when nothing
        after the start is missing.
    @ivar horizon: the last number issued when the histories were read:
        every update of these keys numbered above it arrives live to a node
        that was listening before the read, and none at or below it does
        except as part of C{updates}.
    """

    updates: dict[str, list[Update]]
    lost: dict[str, tuple[int, int] | None]
    horizon: int

    @property
    def count(self) -> int:
        """
        How many updates there are to replay, over all keys.
        """
        return sum(len(updates) for updates in self.updates.values())


@attrs.frozen
class SubscriptionRecord:
    """
    A resumable subscription as the cluster keeps it: what a node needs to
    re-attach it to a connection on any node.

    @ivar owner: the id of the API key that made it; only that key may
        claim it.
    @ivar topics: the normalised parameters (see
        L{rustorium.subscriptions.Subscription}).
    @ivar keys: the hub keys it receives.
    @ivar since: the message number at which it was made: nothing at or
        below it belongs to it (the C{horizon} of the L{CurrentState} read
        when it was made).
    """

    subscription_id: str
    owner: int
    channel: str
    topics: tuple[str, ...]
    keys: tuple[str, ...]
    since: int


@attrs.frozen
class Claim:
    """
    A subscription taken to be resumed.

    @ivar attached_to: the node it was attached to when claimed (that node
        has a connection it no longer belongs to, and should be told to give
        it up), or C{None} if it was detached.
    """

    record: SubscriptionRecord
    attached_to: str | None


class IBroker(Interface):
    """
    The shared state and traffic of a cluster's nodes.

    The owner (the node's fan-out) sets the five callbacks before
    L{start}. Methods that return a L{Deferred} fail with
    L{BrokerUnavailable} at once while the broker is unreachable.
    """

    epoch = Attribute(
        """
        C{str}: the identity of the broker's data. It changes when the
        broker lost its data (an empty Redis after a restart): history and
        latest values from before are gone, so no replay may start before
        the new epoch.
        """
    )

    on_updates = Attribute(
        """
        C{Callable[[list[Update]], None]}: called with the updates of keys
        this node listens to, in increasing number order. Everything
        received together (a market tick of several keys) comes in one
        call, so a node can write it to each connection at once. The
        updates are framed once for all connections (the broker's
        C{prepare}).

        An update of several keys comes once, however many of them this
        node listens to, with all of its keys: its C{key} is the one it was
        published on (which this node may not listen to) and its C{also}
        the others. It is for the subscribers of any of them, once each.
        """
    )

    on_control = Attribute(
        """
        C{Callable[[dict], None]}: called with each message another node
        sent to this one with L{send_to_node}.
        """
    )

    on_lost = Attribute(
        """
        C{Callable[[str], None]}: called with a reason when this node may
        have missed updates: its link to the broker dropped (delivery
        between nodes is at most once), or the epoch changed. The owner must
        treat every live stream as possibly gapped and close its clients
        with a reconnect code, so that they resume by replay. Called once
        per outage.
        """
    )

    on_prices = Attribute(
        """
        C{Callable[[list[PriceTick]], None]}: called on every node with the
        ticks of each batch L{record_prices} accepted, on any node, in the
        order they were accepted. At most once: a node whose link dropped
        may miss some (L{latest_prices} has the latest of each market).
        """
    )

    on_restored = Attribute(
        """
        C{Callable[[], None]}: called when the broker is reachable again
        after L{on_lost}: every key listened to is listened to again and the
        epoch is known. It may follow L{on_lost} at once (an epoch change on
        a live link).
        """
    )

    def start() -> Deferred[None]:
        """
        Connect, learn the epoch (starting one if the broker is empty) and
        listen for this node's control messages. Fails with
        L{BrokerUnavailable} if the broker cannot be reached; after a
        success the broker reconnects by itself whenever its link drops.
        """

    def stop() -> Deferred[None]:
        """
        Disconnect, without calling L{on_lost}.
        """

    def publish(items: list[Publication]) -> Deferred[list[Update | None]]:
        """
        Number, store and deliver a batch of updates, atomically: each
        takes the next number of the cluster-wide sequence, goes into its
        key's history (and its latest value, when retained), and reaches
        every node listening to its key; one batch is one round trip. An
        update of several keys (L{Publication.also}) takes one number, goes
        into the history of each of its keys and reaches every node
        listening to any of them, once.

        Fires with the updates in the order given (C{None} for an event the
        in-process broker dropped because nobody could receive it). The
        updates reach this node's own connections through L{on_updates},
        like everyone else's, not through this result: their C{frame} may
        be C{None}.
        """

    def listen(key: str) -> Deferred[None]:
        """
        Start receiving C{key}'s updates through L{on_updates}. Fires once
        the broker confirmed: nothing published afterwards is missed while
        the link holds.

        Counted: the broker listens once per key per node; each call needs
        one L{unlisten}, and the last one stops it. A failed call is not
        counted.
        """

    def unlisten(key: str) -> None:
        """
        Undo one L{listen}.
        """

    def current_state(keys: list[str]) -> Deferred[CurrentState]:
        """
        The latest values of C{keys} as snapshot updates, renumbered, and
        the horizon, read atomically. Fires only once every update numbered
        up to the horizon, of the keys this node listens to, has been handed
        to C{on_updates}: nothing older than the read can arrive after it.

        To subscribe without a gap or a duplicate: L{listen} to the keys,
        hold what arrives, read the current state, send the held updates of
        non-retained keys numbered at or below the horizon, the snapshots,
        then the held updates above the horizon, then live ones. The
        horizon is the new subscription's C{since}.
        """

    def replay(starts: dict[str, int]) -> Deferred[ReplayResult]:
        """
        For each key, its retained updates numbered above its start, what
        may be missing, and the horizon, read atomically. Fires only once
        every update numbered up to the horizon, of the keys this node
        listens to, has been handed to C{on_updates} (as L{current_state}).

        To resume without a gap or a duplicate: L{listen} to the keys, hold
        what arrives, read the replay, send it merged by number, then the
        held updates above the horizon, then live ones.
        """

    def save_subscription(record: SubscriptionRecord) -> Deferred[None]:
        """
        Keep a new subscription, attached to this node.
        """

    def detach_subscription(subscription_id: str, now: float) -> Deferred[list[str]]:
        """
        The subscription's connection on this node is gone: keep it
        resumable for the resume window from C{now}. Each owner keeps at
        most the broker's cap of detached subscriptions: the oldest detached
        go first. Fires with the ids of the subscriptions forgotten to make
        room.

        Does nothing unless the subscription is attached to this node: once
        another node has claimed it, the connection this node saw close no
        longer owns it.
        """

    def claim_subscription(
        subscription_id: str, owner: int, node: str
    ) -> Deferred[Claim | None]:
        """
        Take a subscription to resume it on C{node}, atomically: C{None}
        unless it exists and belongs to C{owner}. One still attached
        elsewhere is taken all the same (its connection is dead but not yet
        noticed); the claim says where.
        """

    def find_subscription(
        subscription_id: str, owner: int
    ) -> Deferred[SubscriptionRecord | None]:
        """
        The subscription's record if it exists and belongs to C{owner},
        attached (to any node) or detached; C{None} otherwise. It is left
        as it is: not claimed, and its resume window not extended (a
        reconnect naming more subscriptions than it may resume reports the
        rest as not resumed, and they stay resumable).
        """

    def remove_subscription(subscription_id: str) -> Deferred[bool]:
        """
        Forget a subscription (unsubscribed), unless another node has it
        attached; fires with whether it was forgotten.
        """

    def detach_node(node: str, now: float) -> Deferred[int]:
        """
        Detach every subscription still attached to C{node} (a node that
        died without detaching them), as if their connections closed at
        C{now}; fires with how many.
        """

    def announce(info: dict, ttl: float) -> Deferred[None]:
        """
        Register or renew this node (C{info} holds its C{name}, listen
        address, version, start time, connection count): it is listed by
        L{nodes} for C{ttl} seconds unless announced again.
        """

    def nodes() -> Deferred[list[dict]]:
        """
        The live nodes' latest announcements.
        """

    def send_to_node(node: str, message: dict) -> Deferred[int]:
        """
        Send C{message} to C{node}'s L{on_control}; fires with how many
        nodes received it (0 if that node is not listening: delivery is at
        most once).
        """

    def record_prices(ticks: list) -> Deferred[list[bool]]:
        """
        Accept the ticks (L{rustorium.prices.PriceTick}) whose sequence
        number is above the last one accepted for their market, in order
        and atomically for the whole cluster: a tick is compared with the
        ones before it in the list too. Fires with whether each was
        accepted; the accepted ones go to every node's L{on_prices}, as one
        batch.
        """

    def latest_prices() -> Deferred[dict]:
        """
        The last tick accepted for each market that has one, by symbol.
        """

    def acquire_lease(name: str, holder: str, ttl: float) -> Deferred[bool]:
        """
        Take the lease C{name} for C{holder}, or renew it if C{holder}
        already has it, for C{ttl} seconds; C{False} if someone else holds
        it. A singleton job runs while its node holds the lease and renews
        it well within C{ttl}.
        """

    def release_lease(name: str, holder: str) -> Deferred[bool]:
        """
        Give the lease up, if C{holder} holds it.
        """

