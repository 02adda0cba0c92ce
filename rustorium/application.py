"""
The application layer: every operation of the API, in one place, for any
front end.

The WebSocket session parses a client's messages, rate-limits them, calls
this object and writes its answers; an HTTP API or an operator console
calls the same methods. Nothing here knows WebSocket or HTTP: answers are
the C{data} of replies, refusals are L{RequestError}s, and a client's
subscriptions are a L{Feed} delivering to whatever sink the front end
gives it.

Below it, the engines: the broker (numbering, history, resumable
subscriptions, the other nodes), this process's fan-out, and the ledger.
"""

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from . import __version__
from .admission import default_max_connections
from .amounts import format_units
from .broker.interface import IBroker, Publication
from .catalog import Catalog
from .config import Settings
from .errors import ErrorCode, RequestError
from .fanout import Fanout
from .feed import Feed, unavailable
from .hub import ISink, channel_key
from .ledger import describe_transaction
from .requests import CHANNELS, TRANSACTION_UPDATES, ExecuteTransaction
from .storage.keys import ApiKey
from .storage.ledger import TransactionRow
from .timestamps import isoformat
from .transfers import known_token

GIVE_UP = "give_up"
"""A control message: another node resumed one of this node's
subscriptions; stop delivering it here."""


def transaction_event(row: TransactionRow, decimals: int) -> dict[str, object]:
    """
    The C{data} of a C{transaction_updates} update about C{row}.
    """
    data: dict[str, object] = {
        "transaction_id": row.transaction_id,
        "status": row.status,
        "from": row.sender,
        "to": row.recipient,
        "amount": format_units(row.amount, decimals),
        "token_id": row.token_id,
    }
    if row.block_number is not None:
        data["block_number"] = row.block_number
    if row.reason is not None:
        data["reason"] = row.reason
    return data


class Application:
    """
    See the module docstring.

    @ivar node: this node's name in the cluster.
    @ivar attached: the feed each subscription attached here belongs to.
    @ivar describe_node: returns this node as the cluster's registry lists
        it (it is listed by C{server_info} even before its first
        announcement reached the broker).
    @ivar on_lost: called with a reason when this node may have missed
        updates (its broker link dropped): the front ends close their
        clients with a reconnect code, so that they resume by replay.
    """

    log = Logger()

    def __init__(
        self,
        settings: Settings,
        clock: Any,
        node: str,
        catalog: Catalog,
        ledger: Any,
        broker: IBroker,
        fanout: Fanout,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.node = node
        self.catalog = catalog
        self.ledger = ledger
        self.broker = broker
        self.fanout = fanout
        self.version = __version__
        self.attached: dict[str, Feed] = {}
        self.on_lost: Callable[[str], None] = lambda reason: None
        self.describe_node: Callable[[], dict] | None = None
        broker.on_updates = fanout.deliver
        broker.on_control = self._control
        broker.on_lost = lambda reason: self.on_lost(reason)

    # Subscriptions

    def open_feed(self, api_key: ApiKey, sink: ISink) -> Feed:
        """
        A new client's feed of updates, delivered to C{sink}.
        """
        return Feed(self, api_key, sink)

    def take_over(self, subscription_id: str, attached_to: str | None) -> None:
        """
        A subscription was claimed from the node C{attached_to}: tell it
        to stop delivering it there.
        """
        if attached_to is None:
            return
        if attached_to == self.node:
            self._give_up(subscription_id)
            return
        d = self.broker.send_to_node(attached_to, {"type": GIVE_UP,
                                                   "subscription_id": subscription_id})
        d.addErrback(lambda f: self.log.failure("Telling {node} to give up {id} failed", f,
                                                node=attached_to, id=subscription_id))

    def _give_up(self, subscription_id: str) -> None:
        feed = self.attached.get(subscription_id)
        if feed is not None:
            feed.give_up(subscription_id)

    def _control(self, message: dict) -> None:
        if message.get("type") == GIVE_UP:
            self._give_up(str(message.get("subscription_id")))
        else:
            self.log.warn("Ignored a control message of type {type!r}", type=message.get("type"))

    # Reads

    def token_info(self, token_id: str) -> dict[str, object]:
        """
        @raise RequestError: C{not_found}.
        """
        return known_token(self.catalog, token_id).info()

    def balance(self, address: str, token_id: str) -> Deferred:
        """
        Fires with the C{balance} reply's data.
        """
        token = self.ledger.token(token_id)

        def answer(balances: tuple[int, int]) -> dict[str, object]:
            confirmed, available = balances
            return {
                "address": address,
                "token_id": token_id,
                "balance": format_units(confirmed, token.decimals),
                "available": format_units(available, token.decimals),
            }

        return maybeDeferred(self.ledger.balance, address, token_id).addCallback(answer)

    def transaction(self, transaction_id: str) -> Deferred:
        """
        Fires with the C{transaction} reply's data, or fails with
        C{not_found}.
        """

        def found(row: TransactionRow | None) -> dict[str, object]:
            if row is None:
                raise RequestError(ErrorCode.NOT_FOUND, f"no transaction {transaction_id}")
            return describe_transaction(row, self.ledger.token(row.token_id))

        return self.ledger.find(transaction_id).addCallback(found)

    def ping(self) -> dict[str, object]:
        return {"timestamp": isoformat(self.clock.seconds())}

    def server_info(self) -> Deferred:
        """
        Fires with what any client may know of this server: version, time,
        this node's name and the cluster's live nodes, heartbeat, limits,
        channels, markets and tokens.
        """
        d = self.broker.nodes()
        d.addErrback(unavailable)
        return d.addCallback(self._server_info)

    def _server_info(self, nodes: list[dict]) -> dict[str, object]:
        settings = self.settings
        if self.describe_node is not None and not any(n.get("name") == self.node for n in nodes):
            nodes = [*nodes, self.describe_node()]
        return {
            "version": self.version,
            "timestamp": isoformat(self.clock.seconds()),
            "node": self.node,
            "nodes": sorted(nodes, key=lambda node: node.get("name", "")),
            "heartbeat_interval": settings.heartbeat_interval,
            "heartbeat_timeout": settings.silence_timeout,
            "limits": {
                "max_subscriptions": settings.max_subscriptions,
                "rate_limit": settings.rate_limit,
                "rate_burst": settings.rate_burst,
                "key_rate_limit": settings.key_rate_limit,
                "key_rate_burst": settings.key_rate_burst,
                "max_detached_per_key": settings.max_detached_per_key,
                "max_message_size": settings.max_message_size,
                "frame_rate": settings.frame_rate,
                "frame_burst": settings.frame_burst,
                "max_backlog": settings.max_backlog,
                "handshake_timeout": settings.handshake_timeout,
                "max_connections": settings.max_connections or default_max_connections(),
                "max_handshakes_per_address": settings.max_handshakes_per_address,
            },
            "channels": list(CHANNELS),
            "markets": list(self.catalog.markets),
            "tokens": list(self.catalog.tokens),
        }

    # Commands

    def execute_transaction(self, api_key: ApiKey, request: ExecuteTransaction) -> Deferred:
        """
        Fires with the C{transaction_response}'s data once the transfer is
        stored, or fails with a L{RequestError}.
        """
        d = maybeDeferred(self.ledger.submit, api_key, request)
        return d.addCallback(
            lambda row: {"transaction_id": row.transaction_id, "status": row.status}
        )

    # Publishing

    def publish(self, items: list[Publication]) -> Deferred:
        """
        Publish updates through the broker (which numbers them and brings
        them to every node's subscribers); a failure is logged.
        """
        d = self.broker.publish(items)
        d.addErrback(lambda f: self.log.failure("Publishing {count} updates failed", f,
                                                count=len(items)))
        return d

    def announce_transactions(self, rows: list[TransactionRow]) -> None:
        """
        Publish each transaction's new status once, on both its addresses'
        keys: a client following both gets it once.
        """
        heard = getattr(self.broker, "heard", None)
        items = []
        for row in rows:
            keys = (channel_key(TRANSACTION_UPDATES, row.sender),
                    channel_key(TRANSACTION_UPDATES, row.recipient))
            if heard is not None and not (heard(keys[0]) or heard(keys[1])):
                continue
            token = self.catalog.tokens[row.token_id]
            items.append(Publication(
                TRANSACTION_UPDATES, keys[0], transaction_event(row, token.decimals),
                retain=False, also=keys[1:],
            ))
        if items:
            self.publish(items)
