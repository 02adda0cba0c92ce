"""
The Rustorium service: everything the server runs, as one C{IService}.

L{makeService} is the public entry point for embedding::

    from rustorium.service import makeService
    rustorium = makeService({"listen": ["tcp:8765"], "database": "sqlite:app.db"})
    rustorium.setServiceParent(application)

and L{RustoriumService.websocket_resource} mounts the API in an existing
C{twisted.web} site instead of (or beside) its own listening ports, and
L{RustoriumService.http_api_resource} the HTTP API::

    root.putChild(b"v1", rustorium.websocket_resource())
    root.putChild(b"rustorium-api", rustorium.http_api_resource())
"""

import errno
import re
from collections.abc import Mapping
from typing import Any

import orjson
from autobahn.twisted.resource import WebSocketResource
from twisted.application import strports
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.web.resource import Resource

from . import tls
from .amounts import parse_units
from .apikeys import KeyStore, RevocationService
from .application import Application
from .bootstrap import (
    MESSAGE_ID_BLOCK,
    create_demo_key,
    prepare_database,
    raise_message_ceiling,
    reserve_message_ids,
)
from .broker.local import LocalBroker
from .catalog import Catalog
from .chain import ChainService
from .closecodes import CloseCode
from .config import Settings
from .console import Console, Monitor, SessionStore
from .console.monitor import describe_messages
from .fanout import Fanout
from .genesis import PRICE_DECIMALS
from .heartbeat import HeartbeatService
from .httpapi import HttpApi
from .hub import MessageIds, channel_key
from .leadership import SingletonService
from .ledger import DatabaseLedgerStore, Ledger
from .market import MarketService
from .metrics import HealthPage, MetricsPage, make_registry
from .nodes import NodeAnnouncer
from .output import listening_reactor
from .prices import DatabasePrices, ExternalMarketService
from .requests import MARKET_DATA
from .server import Server
from .shared_ledger import SharedLedger
from .storage import Database, engine_from_url, run_blocking
from .storage.lock import DatabaseLock, lock_database
from .storage.meta import load_prices
from .storage.shared_ledger import POSTGRESQL
from .timestamps import isoformat
from .web import WebSocketEndpoint, build_site
from .websocket import RustoriumServerFactory, prepare_frame, prepare_heartbeat
from .workers import default_node_name

log = Logger()

SHUTDOWN_LEDGER_TIMEOUT = 5.0
"""Seconds a shutdown waits for the block and commits in progress."""

_BACKLOG_ENDPOINTS = re.compile(r"(tcp6?|ssl|unix):", re.IGNORECASE)


def with_backlog(endpoint: str, backlog: int) -> str:
    """
    Add C{backlog=N} to a tcp, ssl or unix endpoint string that does not set
    one: Twisted's default of 50 drops connections when thousands of clients
    reconnect at once.
    """
    if _BACKLOG_ENDPOINTS.match(endpoint) and "backlog=" not in endpoint:
        return f"{endpoint}:backlog={backlog}"
    return endpoint


def connect_url(endpoint: str) -> str:
    """
    The URL clients use for a listening endpoint string, for log lines:
    C{tcp:8765:interface=127.0.0.1} gives C{ws://127.0.0.1:8765/v1}.
    """
    try:
        args, kwargs = tls.split_description(endpoint)
    except ValueError:
        args, kwargs = [], {}
    kind = args[0].lower() if args else ""
    port = kwargs.get("port") or (args[1] if len(args) > 1 else "")
    host = kwargs.get("interface", "")
    scheme = "wss" if kind in ("ssl", "wss") else "ws"
    host = "HOST" if host in ("", "0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port if port.isdigit() else 'PORT'}/v1"


class ListenError(Exception):
    """
    A listening endpoint could not be opened (its port taken, say); the
    message is one line for the operator, naming the address and the
    C{--listen} flag.
    """


def cannot_listen_message(error: CannotListenError) -> str:
    """
    One line for an endpoint that could not listen: the address, why, and
    what to change.
    """
    interface, port = error.interface, error.port
    address = f"[{interface}]:{port}" if ":" in (interface or "") else (
        f"{interface}:{port}" if interface else str(port)
    )
    cause = error.socketError
    strerror = getattr(cause, "strerror", None)
    why = strerror[0].lower() + strerror[1:] if strerror else str(cause)
    if getattr(cause, "errno", None) != errno.EADDRINUSE:
        return f"cannot listen on {address}: {why}; choose another endpoint with --listen"
    example = ""
    if isinstance(port, int) and ":" not in (interface or ""):
        other = f"tcp:{port + 1}" + (f":interface={interface}" if interface else "")
        example = f", such as --listen {other}"
    return (
        f"cannot listen on {address}: {why} (another program, perhaps another "
        f"server, listens there); stop it, or choose another port with --listen{example}"
    )


def sources_lease(settings: Settings) -> float:
    """
    Seconds the node running the market and the blocks holds its lease:
    two block intervals, so that when it dies another node takes over
    within three (it renews four times per lease).
    """
    return max(2 * settings.block_interval, 2 * settings.tick_interval, 1.0)


BROKER_RETRY = 1.0
"""Seconds between attempts to reach the broker at start."""


class BrokerService(Service):
    """
    Starts and stops the broker with the server. A broker that cannot be
    reached at start is tried again every second meanwhile; until it
    answers, C{ready(False)} holds handshakes and health checks at 503.
    """

    log = Logger()

    def __init__(self, broker: Any, ready: Any, clock: Any) -> None:
        self._broker = broker
        self._ready = ready
        self._clock = clock
        self._retry: Any = None

    def startService(self) -> None:
        super().startService()
        self._start()

    def _start(self) -> None:
        self._retry = None
        self._ready(False)
        d = self._broker.start()

        def started(_: object) -> None:
            self._ready(True)

        def failed(failure: Any) -> None:
            if not self.running:
                return
            self.log.warn("Cannot reach the broker ({error}); trying again in {delay:g} s",
                          error=failure.getErrorMessage(), delay=BROKER_RETRY)
            self._retry = self._clock.callLater(BROKER_RETRY, self._start)

        d.addCallbacks(started, failed)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        return self._broker.stop()


def make_broker(
    settings: Settings, reactor: Any, node: str, ids: MessageIds, database: Database
) -> Any:
    """
    The broker C{settings.broker} names: in-process, or Redis.
    """
    if settings.broker == "local":
        return LocalBroker(
            reactor, ids, node, prepare_frame,
            history_size=settings.history_size, history_age=settings.history_age,
            resume_window=settings.resume_window,
            max_detached_per_key=settings.max_detached_per_key,
            prices=DatabasePrices(database, run_blocking(database.engine, load_prices)),
        )
    # Imported only here: txredisapi installs the default reactor when
    # imported, which must not happen before twistd installs its own.
    from .broker.redis import RedisBroker

    return RedisBroker(
        reactor, settings.broker, node, prepare_frame,
        reserve_ids=lambda count: database.run(raise_message_ceiling, count),
        history_size=settings.history_size, history_age=settings.history_age,
        resume_window=settings.resume_window,
        max_detached_per_key=settings.max_detached_per_key,
    )


def make_ledger(
    settings: Settings, reactor: Any, engine: Any, database: Database, catalog: Catalog,
    prepared: Any, announce: Any,
) -> Any:
    """
    The ledger for the database: on SQLite, one process holds the balances
    in memory (the fastest); on PostgreSQL, the database guards them for
    every node.
    """
    if engine.name == "sqlite":
        return Ledger(
            catalog, DatabaseLedgerStore(database), announce, reactor, prepared.ledger,
            commit_batch=settings.commit_batch,
        )
    return SharedLedger(
        catalog, database, POSTGRESQL, reactor, announce, settings.block_interval,
        commit_batch=settings.commit_batch,
    )


def last_prices(broker: Any, catalog: Catalog) -> Deferred:
    """
    Fires with the last published price of each market, by symbol, in
    units of L{PRICE_DECIMALS}: what a node taking over the market
    continues from.
    """
    keys = [channel_key(MARKET_DATA, symbol) for symbol in catalog.markets]

    def read(state: Any) -> dict[str, int]:
        prices = {}
        for update in state.snapshots:
            data = orjson.loads(update.payload)["data"]
            prices[data["symbol"]] = parse_units(data["price"], PRICE_DECIMALS)
        return prices

    return broker.current_state(keys).addCallback(read)


class _LoadVolume(Service):
    """
    When this node takes over the sources, read the day's confirmed
    volume, for the token updates it is about to publish.
    """

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger

    def startService(self) -> None:
        super().startService()
        load = getattr(self._ledger, "load_volume", None)
        if load is not None:
            load().addErrback(lambda f: log.failure("Reading the day's volume failed", f))


def _ping_database(txn: Any) -> None:
    txn.execute("SELECT 1")
    txn.fetchall()


class _DatabaseService(Service):
    """
    Closes the database pool when the application stops, then lets another
    server take the database.
    """

    def __init__(self, database: Database, lock: DatabaseLock | None) -> None:
        self._database = database
        self._lock = lock

    def startService(self) -> None:
        super().startService()
        if self._lock is not None:
            # twistd may have forked into the background since the lock was taken.
            self._lock.record_holder()

    def stopService(self) -> None:
        super().stopService()
        self._database.close()
        if self._lock is not None:
            self._lock.release()


class RustoriumService(MultiService):
    """
    The whole server: storage, the hub, the market and heartbeat timers, and
    a listener per configured endpoint.

    A SQLite database is locked (L{lock_database}) from construction until
    the service stops, so a second server on it refuses to start.

    @ivar server: the shared L{Server} state.
    @ivar demo_key: the demo API key, if this start created it (once
        listening: see L{startService}).
    """

    demo_key: str | None = None

    def __init__(self, settings: Settings, reactor: Any) -> None:
        super().__init__()
        self.settings = settings
        self._reactor = reactor
        self._engine = engine = engine_from_url(settings.database)
        lock = lock_database(engine.path) if engine.name == "sqlite" else None
        try:
            prepared = prepare_database(engine, settings.genesis)
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        self._demo_key_due = prepared.demo_key_due
        database = Database(engine, reactor)
        _DatabaseService(database, lock).setServiceParent(self)
        ids = MessageIds(
            prepared.first_message_id,
            prepared.message_id_ceiling,
            MESSAGE_ID_BLOCK,
            reserve=lambda ceiling: database.run(reserve_message_ids, ceiling),
        )
        self.node = node = settings.node_name or default_node_name()
        broker = make_broker(settings, reactor, node, ids, database)
        catalog = Catalog(prepared.tokens)
        ledger = make_ledger(
            settings, reactor, engine, database, catalog, prepared,
            lambda rows: app.announce_transactions(rows),
        )
        self.app = app = Application(
            settings, reactor, node, catalog, ledger, broker, Fanout(), KeyStore(database, reactor),
            (engine.module.OperationalError, engine.module.InterfaceError),
        )
        self.server = server = Server(app, app.keys)
        app.on_lost = self._broker_lost
        app.describe_node = self._describe_node
        broker.on_restored = self._broker_restored
        BrokerService(broker, self._broker_ready, reactor).setServiceParent(self)

        sources = MultiService()
        _LoadVolume(ledger).setServiceParent(sources)
        if settings.market_source == "external":
            market = ExternalMarketService(
                catalog, app.publish, reactor, settings.tick_interval, ledger.volume_24h,
                broker.latest_prices,
            )
            app.on_prices = market.prices_received
            market.setServiceParent(sources)
        else:
            MarketService(
                catalog, app.publish, reactor, settings.tick_interval, settings.market_seed,
                ledger.volume_24h, lambda: last_prices(broker, catalog),
            ).setServiceParent(sources)
        ChainService(ledger, settings.block_interval, reactor).setServiceParent(sources)
        self._sources = sources = SingletonService(
            "sources", node, broker, sources, sources_lease(settings), reactor
        )
        sources.setServiceParent(self)
        self._started_at = reactor.seconds()
        self._announcer = NodeAnnouncer(
            broker, self._describe_node, lambda: sources.leading, reactor,
            reachable=lambda: server.broker_ready,
        )
        self._announcer.setServiceParent(self)
        HeartbeatService(server, reactor, prepare_heartbeat).setServiceParent(self)
        RevocationService(
            settings.key_check_interval, server.keys, lambda: list(server.sessions), reactor
        ).setServiceParent(self)

        self._factories = [factory := RustoriumServerFactory(server, reactor=reactor)]
        self.metrics = make_registry(server)
        self.console: Console | None = None
        self._messages = describe_messages(server.counters, app.fanout)
        if settings.console:
            sessions = SessionStore(reactor, settings.console_session_lifetime)
            monitor = Monitor(server, sessions, reactor, settings.key_check_interval)
            monitor.setServiceParent(self)
            self.console = Console(server, sessions, monitor)
        self.site = build_site(
            factory,
            settings.handshake_timeout,
            HealthPage(server, lambda: database.run(_ping_database)),
            MetricsPage(self.metrics),
            HttpApi(server),
            settings.http_max_body,
            self.console,
        )
        # The listeners are not children: they start after everything else
        # and stop before anything else (see stopService).
        self._listeners = MultiService()
        listening = (
            listening_reactor(reactor, settings.write_through, settings.reuse_port)
            if settings.write_through or settings.reuse_port
            else reactor
        )
        certificates = []
        for description in settings.listen:
            found = tls.server_endpoint(listening, description, settings.backlog)
            if found is not None:
                endpoint, certificate = found
                certificates.append(certificate)
                tls.listening_service(endpoint, self.site).setServiceParent(self._listeners)
                continue
            # strports.service makes a failure to listen stop start-up.
            strports.service(
                with_backlog(description, settings.backlog), self.site, reactor=listening
            ).setServiceParent(self._listeners)
        if certificates:
            tls.CertificateReloadService(
                certificates, reactor, settings.tls_reload_interval,
                sighup=settings.tls_reload_signal,
            ).setServiceParent(self)

    def _describe_node(self) -> dict:
        """
        This node as the cluster's registry lists it.
        """
        settings = self.settings
        return {
            "name": self.node,
            "address": connect_url(settings.listen[0]) if settings.listen else "",
            "version": self.app.version,
            "started": isoformat(self._started_at),
            "connections": len(self.server.sessions),
            "uptime": round(self._reactor.seconds() - self._started_at, 3),
            "subscriptions": self.app.subscription_counts(),
            "runs_market": self._sources.leading,
            "messages": self._messages(),
        }

    def _broker_ready(self, ready: bool) -> None:
        self.server.broker_ready = ready
        if ready:
            self._announcer.announce_now()

    def _broker_restored(self) -> None:
        log.info("The broker is reachable again")
        self.server.broker_ready = True
        self._announcer.announce_now()

    def _broker_lost(self, reason: str) -> None:
        """
        This node may have missed updates (its link to the broker dropped):
        close every connection with a reconnect code, so that each client
        resumes by replay, here once the link is back or on another node.
        """
        self.server.broker_ready = False
        sessions = list(self.server.sessions)
        log.warn("Lost the broker ({reason}): closing {count} connections so they resume",
                 reason=reason, count=len(sessions))
        for session in sessions:
            session.close(CloseCode.BROKER_LOST, "this node lost the cluster's broker; reconnect")

    def websocket_resource(self) -> WebSocketResource:
        """
        The WebSocket API as a resource to mount in another C{twisted.web}
        site, at any path.
        """
        factory = RustoriumServerFactory(self.server, path=None, reactor=self._reactor)
        self._factories.append(factory)
        return WebSocketEndpoint(factory)

    def http_api_resource(self) -> Resource:
        """
        The HTTP API (C{docs/http-api.rst}) as a resource to mount in
        another C{twisted.web} site, at any path. Bodies past
        C{http-max-body} get 413 there too, but are buffered first unless
        the site's C{requestFactory} is L{rustorium.web.LimitedRequest}
        (with the site's C{max_body} set).
        """
        return HttpApi(self.server)

    def privilegedStartService(self) -> None:
        """
        Listen (before twistd drops privileges).

        @raise ListenError: if an endpoint cannot listen.
        """
        super().privilegedStartService()
        self._listen(self._listeners.privilegedStartService)

    def startService(self) -> None:
        """
        Start the services and listen, then, on the first start with the
        built-in genesis, make and log the demo key: only now, when clients
        can use it, since it can never be shown again.

        @raise ListenError: if an endpoint cannot listen.
        """
        super().startService()
        self._listen(self._listeners.startService)
        self.server.ready = True
        if self._demo_key_due:
            self._demo_key_due = False
            self.demo_key = run_blocking(self._engine, create_demo_key)
            if self.demo_key is not None:
                url = connect_url(self.settings.listen[0]) if self.settings.listen else "URL"
                log.info(
                    "Created the demo API key (shown only now): {demo_key}\n"
                    "Connect with {url}?api_key={demo_key}",
                    demo_key=self.demo_key, url=url, show_secret=True,
                )

    def _listen(self, start: Any) -> None:
        """
        Start the listeners with C{start}, turning a failure to listen into
        a L{ListenError} whose message names the address and C{--listen}.
        """
        try:
            start()
        except CannotListenError as e:
            raise ListenError(cannot_listen_message(e)) from None

    def stopService(self) -> "Deferred[None]":
        """
        Shut down gracefully, within about C{close-timeout} + 5 seconds:
        stop accepting connections, close every connection with 4200
        (reconnect at once), let the block and the commits in progress
        finish, wait for the closing handshakes, then stop the timers and
        close the database. Accepted transactions are on disk already;
        pending ones are confirmed by the first block after a restart.
        """
        return ensureDeferred(self._shut_down())

    async def _shut_down(self) -> None:
        server = self.server
        server.ready = False
        if self._listeners.running:
            await self._listeners.stopService()
        sessions = list(server.sessions)
        log.info("Shutting down: closing {count} connections", count=len(sessions))
        for session in sessions:
            session.close(CloseCode.SHUTTING_DOWN, "server shutting down")
        await self._until(lambda: not server.ledger.busy, SHUTDOWN_LEDGER_TIMEOUT)
        await self._until(
            lambda: not any(f.open_connections for f in self._factories),
            self.settings.close_timeout + 1,
        )
        await MultiService.stopService(self)

    async def _until(self, condition: Any, timeout: float) -> None:
        """
        Wait, polling on the reactor's clock, until C{condition()} holds or
        C{timeout} seconds pass.
        """
        deadline = self._reactor.seconds() + timeout
        while not condition() and self._reactor.seconds() < deadline:
            await deferLater(self._reactor, 0.05, lambda: None)


def makeService(config: Settings | Mapping[str, object], reactor: Any = None) -> RustoriumService:
    """
    Build the Rustorium service.

    @param config: L{Settings}, or a mapping of setting names (hyphenated,
        as in the TOML file) to values.
    @param reactor: the reactor to run on; the global one by default.
    @raise ConfigError: for a bad setting.
    @raise GenesisError: for a malformed genesis file.
    @raise SchemaError: for a database from a newer server.
    """
    if reactor is None:
        from twisted.internet import reactor
    settings = config if isinstance(config, Settings) else Settings.from_sources(config)
    return RustoriumService(settings, reactor)
