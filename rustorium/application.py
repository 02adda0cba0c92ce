"""
The application layer: every operation of the API, in one place, for any
front end.

The WebSocket session parses a client's messages, rate-limits them, calls
this object and writes its answers; the HTTP API (L{rustorium.httpapi})
calls the same methods, and those only operators and feeds may use. Nothing
here knows WebSocket or HTTP: answers are the C{data} of replies (or the
bodies of responses), refusals are L{RequestError}s, and a client's
subscriptions are a L{Feed} delivering to whatever sink the front end
gives it.

Operators see and steer the whole cluster from any node: a question about
connections (list them, close one, close a key's) goes to every node that
may hold one as a control message through the broker, and each answers the
asking node the same way (L{ASK}, L{ANSWER}); a node that does not answer
within L{ASK_TIMEOUT} is reported as such.

Below it, the engines: the broker (numbering, history, resumable
subscriptions, the other nodes), this process's fan-out, and the ledger.
"""

import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import orjson
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import __version__
from .admission import default_max_connections
from .amounts import format_units
from .broker.interface import BrokerUnavailable, IBroker, Publication
from .catalog import Catalog
from .closecodes import CloseCode
from .config import Settings
from .errors import ErrorCode, HttpErrorCode, RequestError
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
"""A control message: another node resumed some of this node's
subscriptions (C{subscription_ids}; C{subscription_id} is the first, for
nodes that know only one per message); stop delivering them here."""

ASK = "ask"
"""A control message: an operator's question about this node's
connections (C{question}), to answer to the node C{reply_to}."""

ANSWER = "answer"
"""A control message: a node's answer to an L{ASK}."""

ASK_TIMEOUT = 3.0
"""Seconds a node waits for the other nodes' answers."""

NODE_FIELDS = ("name", "address", "version", "started", "connections")
"""What C{server_info} tells clients of each node (operators see more)."""


def connection_node(connection_id: str) -> str | None:
    """
    The node that holds a connection, from its id (C{c<run>-<n>@<node>}),
    or C{None} for a string that is not a connection id.
    """
    number, at, node = connection_id.partition("@")
    run, dash, count = number[1:].partition("-")
    if at and node and number[:1] == "c" and dash and run.isalnum() and count.isdigit():
        return node
    return None


@attrs.define
class _Question:
    """
    A question sent to other nodes, waiting for their answers.
    """

    done: Deferred
    waiting: set[str]
    answers: dict[str, Any]
    timer: Any = None

    def answered(self, node: str, answer: Any) -> None:
        if node in self.waiting:
            self.waiting.discard(node)
            self.answers[node] = answer
            self._check()

    def gone(self, node: str) -> None:
        """
        C{node} cannot answer (it is not listening, or sending failed).
        """
        self.waiting.discard(node)
        self._check()

    def _check(self) -> None:
        if not self.waiting and not self.done.called:
            if self.timer is not None and self.timer.active():
                self.timer.cancel()
            self.done.callback(self.answers)

    def expire(self) -> None:
        self.waiting.clear()
        if not self.done.called:
            self.done.callback(self.answers)


def _broker_down(failure: Failure) -> Failure:
    """
    A broker that cannot be reached, as the HTTP API reports it (503).
    """
    if failure.check(BrokerUnavailable):
        return Failure(RequestError(
            HttpErrorCode.UNAVAILABLE,
            "this node cannot reach the cluster's broker right now; nothing was changed, "
            "try again shortly or on another node",
        ))
    return failure


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
    @ivar on_prices: called with the prices the broker accepted, on any
        node (the market publishes them, on the node that runs it).
    @ivar connections: this node's open connections, by id (each has an
        C{api_key}, a C{connection} with a C{peer}, C{opened_at}, a
        C{feed} and C{close(code, reason)}: a
        L{rustorium.session.Session}).
    @ivar keys: the API keys (L{rustorium.apikeys.KeyStore}), for
        operators.
    @ivar database_errors: the exceptions of a database that cannot be
        reached, reported as unavailable rather than as failures.
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
        keys: Any = None,
        database_errors: tuple[type[BaseException], ...] = (),
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
        self.on_prices: Callable[[list], None] = lambda ticks: None
        self.keys: Any = keys
        self.database_errors = database_errors
        self.connections: dict[str, Any] = {}
        self._connection_numbers = 0
        # Ids of this run of the node: a restarted node with the same name
        # never reuses an id an operator may still hold.
        self._run = secrets.token_hex(3)
        self._questions: dict[str, _Question] = {}
        self._giving_up: dict[str, list[str]] = {}
        broker.on_updates = fanout.deliver
        broker.on_control = self._control
        broker.on_lost = lambda reason: self.on_lost(reason)
        broker.on_prices = lambda ticks: self.on_prices(ticks)

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
        # One message per node per reactor turn: a reconnect storm takes
        # over thousands of a dead node's subscriptions.
        if not self._giving_up:
            self.clock.callLater(0, self._send_give_ups)
        self._giving_up.setdefault(attached_to, []).append(subscription_id)

    def _send_give_ups(self) -> None:
        giving_up, self._giving_up = self._giving_up, {}
        for node, ids in giving_up.items():
            d = self.broker.send_to_node(node, {"type": GIVE_UP, "subscription_id": ids[0],
                                                "subscription_ids": ids})
            d.addErrback(lambda f, node=node, ids=ids: self.log.failure(
                "Telling {node} to give up {count} subscriptions failed", f,
                node=node, count=len(ids)))

    def _give_up(self, subscription_id: str) -> None:
        feed = self.attached.get(subscription_id)
        if feed is not None:
            feed.give_up(subscription_id)

    def _control(self, message: dict) -> None:
        kind = message.get("type")
        if kind == GIVE_UP:
            ids = message.get("subscription_ids")
            if not isinstance(ids, list):
                ids = [message.get("subscription_id")]
            for subscription_id in ids:
                self._give_up(str(subscription_id))
        elif kind == ASK:
            self._answer_question(message)
        elif kind == ANSWER:
            question = self._questions.get(str(message.get("id")))
            if question is not None:
                question.answered(str(message.get("node")), message.get("answer"))
        else:
            self.log.warn("Ignored a control message of type {type!r}", type=kind)

    # Connections: this node's, and the cluster's through questions.

    def add_connection(self, session: Any) -> str:
        """
        Register an open connection; return its id, unique in the cluster.
        """
        self._connection_numbers += 1
        connection_id = f"c{self._run}-{self._connection_numbers}@{self.node}"
        self.connections[connection_id] = session
        return connection_id

    def remove_connection(self, connection_id: str) -> None:
        self.connections.pop(connection_id, None)

    def describe_connection(self, connection_id: str, session: Any) -> dict[str, object]:
        """
        A connection as operators see it (never its key).
        """
        return {
            "id": connection_id,
            "node": self.node,
            "key_id": session.api_key.key_id,
            "key_name": session.api_key.name,
            "peer": session.connection.peer,
            "opened": isoformat(session.opened_at),
            "subscriptions": session.feed.describe(),
        }

    def subscription_counts(self) -> dict[str, int]:
        """
        The subscriptions attached to this node's connections, by channel.
        """
        counts = Counter({channel: 0 for channel in CHANNELS})
        for subscription_id, feed in self.attached.items():
            subscription = feed.subscriptions.get(subscription_id)
            if subscription is not None:
                counts[subscription.channel] += 1
        return dict(counts)

    def _local_answer(self, question: dict) -> Any:
        """
        This node's answer to an operator's question.
        """
        kind = question.get("kind")
        if kind == "connections":
            key_name = question.get("key_name")
            limit = int(question.get("limit", 1000))
            found = []
            for connection_id, session in list(self.connections.items()):
                if key_name is None or session.api_key.name == key_name:
                    found.append(self.describe_connection(connection_id, session))
                    if len(found) >= limit:
                        break
            return found
        if kind == "close_connection":
            session = self.connections.get(str(question.get("connection_id")))
            if session is None:
                return False
            self.log.info("Closing {peer} (key {key_name}) as an operator asked: {code} {reason}",
                          peer=session.connection.peer, key_name=session.api_key.name,
                          code=question["code"], reason=question["reason"])
            session.close(int(question["code"]), str(question["reason"]))
            return True
        if kind == "close_key":
            key_id = question.get("key_id")
            doomed = [s for s in list(self.connections.values()) if s.api_key.key_id == key_id]
            for session in doomed:
                self.log.info("Closing {peer} (key {key_name}): its API key was revoked",
                              peer=session.connection.peer, key_name=session.api_key.name)
                session.close(CloseCode.KEY_REVOKED, "API key revoked")
            return len(doomed)
        raise ValueError(f"no such question: {kind!r}")

    def _answer_question(self, message: dict) -> None:
        reply_to = message.get("reply_to")
        try:
            answer = self._local_answer(message.get("question") or {})
        except Exception:
            self.log.failure("Answering a question from {node} failed", node=reply_to)
            return
        if not isinstance(reply_to, str):
            return
        d = self.broker.send_to_node(
            reply_to, {"type": ANSWER, "id": message.get("id"), "node": self.node,
                       "answer": answer},
        )
        d.addErrback(lambda f: self.log.failure("Answering {node} failed", f, node=reply_to))

    def ask(self, nodes: Iterable[str], question: dict) -> Deferred:
        """
        Ask C{nodes} (this one included, or not) a question about their
        connections; fires with the answers by node, without the nodes
        that could not be reached or did not answer in time.
        """
        nodes = set(nodes)
        answers: dict[str, Any] = {}
        if self.node in nodes:
            nodes.discard(self.node)
            answers[self.node] = self._local_answer(question)
        if not nodes:
            return succeed(answers)
        question_id = secrets.token_hex(8)
        pending = _Question(Deferred(), set(nodes), answers)
        self._questions[question_id] = pending
        pending.timer = self.clock.callLater(ASK_TIMEOUT, pending.expire)
        pending.done.addBoth(lambda result: (self._questions.pop(question_id, None), result)[1])
        message = {"type": ASK, "id": question_id, "reply_to": self.node, "question": question}
        for node in sorted(nodes):
            d = self.broker.send_to_node(node, message)
            d.addCallbacks(
                lambda received, node=node: None if received else pending.gone(node),
                lambda failure, node=node: pending.gone(node),
            )
        return pending.done

    def _node_names(self) -> Deferred:
        """
        Fires with the names of the cluster's live nodes, this one included.
        """
        d = self.broker.nodes()
        d.addErrback(_broker_down)
        return d.addCallback(lambda nodes: {n["name"] for n in nodes} | {self.node})

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

    def _with_this_node(self, nodes: list[dict]) -> list[dict]:
        """
        The registry's nodes, with this one as it is now rather than as it
        last announced itself (listed even before its first announcement).
        """
        if self.describe_node is not None:
            nodes = [n for n in nodes if n.get("name") != self.node] + [self.describe_node()]
        return sorted(nodes, key=lambda node: node.get("name", ""))

    def _server_info(self, nodes: list[dict]) -> dict[str, object]:
        settings = self.settings
        nodes = [{field: n[field] for field in NODE_FIELDS if field in n}
                 for n in self._with_this_node(nodes)]
        return {
            "version": self.version,
            "timestamp": isoformat(self.clock.seconds()),
            "node": self.node,
            "nodes": nodes,
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
                "http_rate_limit": settings.http_rate_limit,
                "http_rate_burst": settings.http_rate_burst,
                "http_max_body": settings.http_max_body,
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

    # Operators and feeds: what the HTTP API offers beside the WebSocket
    # API. Each fails with a RequestError the front end maps to a status.

    def _database_down(self, failure: Failure) -> Failure:
        """
        A database that cannot be reached, as the HTTP API reports it (503).
        """
        if self.database_errors and failure.check(*self.database_errors):
            self.log.failure("The database failed", failure)
            return Failure(RequestError(
                HttpErrorCode.UNAVAILABLE,
                "the database cannot be reached right now; try again shortly",
            ))
        return failure

    def publish_prices(self, ticks: list) -> Deferred:
        """
        Record prices posted from outside (L{rustorium.prices}); fires with
        how many were accepted and how many were stale.

        @raise RequestError: C{conflict} unless the market's source is
            external.
        """
        if self.settings.market_source != "external":
            raise RequestError(
                HttpErrorCode.CONFLICT,
                "this server's prices come from its simulator; start it with "
                "--market-source external to post prices",
            )
        d = self.broker.record_prices(ticks)
        d.addErrback(_broker_down)

        def counted(flags: list[bool]) -> dict[str, int]:
            accepted = sum(flags)
            return {"accepted": accepted, "stale": len(flags) - accepted}

        return d.addCallback(counted)

    def cluster_info(self) -> Deferred:
        """
        Fires with what operators see of the cluster: each node (with its
        uptime and subscriptions by channel, as last announced), the
        totals, the block height and the pending transactions.
        """
        d = self.broker.nodes()
        d.addErrback(_broker_down)

        def chain(nodes: list[dict]) -> Deferred:
            nodes = self._with_this_node(nodes)
            state = maybeDeferred(self.ledger.chain_state)
            state.addErrback(self._database_down)
            return state.addCallback(lambda state: self._cluster_info(nodes, *state))

        return d.addCallback(chain)

    def _cluster_info(self, nodes: list[dict], height: int, pending: int) -> dict[str, object]:
        subscriptions = Counter({channel: 0 for channel in CHANNELS})
        for node in nodes:
            subscriptions.update(node.get("subscriptions") or {})
        return {
            "node": self.node,
            "timestamp": isoformat(self.clock.seconds()),
            "market_source": self.settings.market_source,
            "nodes": nodes,
            "totals": {
                "nodes": len(nodes),
                "connections": sum(int(node.get("connections", 0)) for node in nodes),
                "subscriptions": dict(subscriptions),
            },
            "block_height": height,
            "pending_transactions": pending,
        }

    def list_connections(self, key_name: str | None, limit: int) -> Deferred:
        """
        Fires with the open connections of every node (of the key named
        C{key_name}, if given), at most C{limit}, and the nodes that did not
        answer.
        """
        # One more than shown, to tell whether there were more.
        question = {"kind": "connections", "key_name": key_name, "limit": limit + 1}

        def asked(nodes: set[str]) -> Deferred:
            return self.ask(nodes, question).addCallback(gathered, nodes)

        def gathered(answers: dict[str, list], nodes: set[str]) -> dict[str, object]:
            connections = [c for node in sorted(answers) for c in answers[node] or ()]
            return {
                "connections": connections[:limit],
                "truncated": len(connections) > limit,
                "unanswered": sorted(nodes - set(answers)),
            }

        return self._node_names().addCallback(asked)

    def close_connection(self, connection_id: str, code: int, reason: str) -> Deferred:
        """
        Close a connection, on whatever node holds it, with C{code} and
        C{reason}; fires with its id.

        @raise RequestError: C{not_found} (also through the Deferred) if no
            live node holds it.
        """
        node = connection_node(connection_id)
        missing = RequestError(ErrorCode.NOT_FOUND, f"no open connection {connection_id[:80]}")
        if node is None:
            raise missing
        question = {"kind": "close_connection", "connection_id": connection_id,
                    "code": code, "reason": reason}

        def closed(answers: dict[str, Any]) -> dict[str, object]:
            if not answers.get(node):
                raise missing
            return {"id": connection_id, "node": node, "closed": True, "code": code}

        return self.ask({node}, question).addCallback(closed)

    def history(self, channel: str, name: str, since: int, limit: int) -> Deferred:
        """
        Fires with the retained updates of one key numbered above
        C{since}, oldest first, at most C{limit}; C{next} is the id to ask
        from for more, and C{lost} the range of ids within which some may
        have been evicted.
        """
        key = channel_key(channel, name)
        d = self.broker.replay({key: since})
        d.addErrback(_broker_down)

        def page(result: Any) -> dict[str, object]:
            updates = result.updates.get(key, [])
            lost = result.lost.get(key)
            shown = updates[:limit]
            return {
                "channel": channel,
                "name": name,
                "updates": [orjson.loads(update.payload) for update in shown],
                "next": f"msg_{shown[-1].number}" if len(updates) > limit else None,
                "lost": None if lost is None else {"from": f"msg_{lost[0]}",
                                                   "to": f"msg_{lost[1]}"},
            }

        return d.addCallback(page)

    def create_key(self, name: str, scopes: frozenset[str], addresses: list[str]) -> Deferred:
        """
        Make an API key; fires with its description and, this once, the
        key itself.
        """
        d = self.keys.create(name, scopes, addresses, self.clock.seconds())
        d.addErrback(self._database_down)

        def made(created: tuple[ApiKey, str]) -> dict[str, object]:
            record, key = created
            self.log.info("Created API key {key_id} ({key_name}, scopes {scopes})",
                          key_id=record.key_id, key_name=record.name,
                          scopes=sorted(record.scopes))
            return {**record.describe(), "key": key}

        return d.addCallback(made)

    def list_keys(self) -> Deferred:
        """
        Fires with every API key's description (never a key itself).
        """
        d = self.keys.list()
        d.addErrback(self._database_down)
        return d.addCallback(lambda keys: {"keys": [key.describe() for key in keys]})

    def revoke_key(self, key_id: int) -> Deferred:
        """
        Revoke an API key and close its connections on every node (close
        code 4001); fires with its description and how many connections
        were closed.

        @raise RequestError: (through the Deferred) C{not_found} for no
            such key, C{conflict} for a key revoked already.
        """
        d = self.keys.revoke(key_id, self.clock.seconds())
        d.addErrback(self._database_down)

        def revoked(done: bool) -> Deferred:
            d = self.keys.find(key_id)
            d.addErrback(self._database_down)
            return d.addCallback(found, done)

        def found(key: ApiKey | None, done: bool) -> Any:
            if key is None:
                raise RequestError(ErrorCode.NOT_FOUND, f"no API key {key_id}")
            if not done:
                raise RequestError(HttpErrorCode.CONFLICT,
                                   f"API key {key_id} was revoked at {key.revoked_at}")
            self.log.info("Revoked API key {key_id} ({key_name})",
                          key_id=key_id, key_name=key.name)
            # Every node also finds it at its next key check; this is at
            # once. A broker that cannot be reached leaves that to them.
            closing = self._node_names()
            closing.addCallback(self.ask, {"kind": "close_key", "key_id": key_id})
            closing.addCallback(lambda answers: sum(int(n or 0) for n in answers.values()))
            closing.addErrback(lambda failure: None)
            return closing.addCallback(lambda count: {**key.describe(),
                                                      "connections_closed": count})

        return d.addCallback(revoked)

    def address_transactions(self, address: str, limit: int) -> Deferred:
        """
        Fires with the last C{limit} transactions from or to C{address},
        newest first.
        """
        d = self.ledger.transactions_of(address, limit)
        d.addErrback(self._database_down)
        return d.addCallback(lambda rows: {
            "address": address,
            "transactions": [describe_transaction(row, self.ledger.token(row.token_id))
                             for row in rows],
        })
