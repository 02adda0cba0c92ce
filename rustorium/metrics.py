"""
Prometheus metrics and the health check, served beside the WebSocket API on
every listening port (C{GET /metrics}, C{GET /healthz}).

Nothing on the hot path touches Prometheus: sessions and the hub count in
plain Python counters (L{rustorium.server.Counters}, C{hub.deliveries}), and
L{ServerCollector} turns them into metric families when Prometheus scrapes.
The only Prometheus object updated live is the fan-out histogram, once per
publish (not per subscriber).
"""

from collections import Counter
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .requests import CHANNELS
from .server import Server

FAN_OUT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class ServerCollector:
    """
    Reads the server's counters and state at scrape time.
    """

    def __init__(self, server: Server) -> None:
        self._server = server

    def collect(self):
        server = self._server
        counters = server.counters
        yield GaugeMetricFamily(
            "rustorium_connections", "Open WebSocket sessions.", value=len(server.sessions)
        )
        app = server.app
        by_channel = Counter({channel: 0 for channel in CHANNELS})
        for subscription_id, feed in app.attached.items():
            by_channel[feed.subscriptions[subscription_id].channel] += 1
        subscriptions = GaugeMetricFamily(
            "rustorium_subscriptions",
            "Subscriptions attached to this node's connections, by channel.",
            labels=["channel"],
        )
        for channel, count in sorted(by_channel.items()):
            subscriptions.add_metric([channel], count)
        yield subscriptions
        detached = getattr(app.broker, "detached_count", None)
        if detached is not None:
            yield GaugeMetricFamily(
                "rustorium_subscriptions_detached",
                "Subscriptions whose connection was lost, resumable until the window passes "
                "(kept by the in-process broker; a cluster keeps them in Redis).",
                value=detached,
            )
        yield _counter("rustorium_messages_received", "Client messages, by type.", "type",
                       counters.received)
        yield _counter("rustorium_replies_sent", "Replies sent, by type.", "type", counters.sent)
        delivered = Counter(server.app.fanout.deliveries)
        delivered.subtract(counters.console_deliveries)
        yield _counter("rustorium_updates_delivered", "Updates handed to connections, by channel.",
                       "channel", delivered)
        yield _counter("rustorium_errors", "Error replies, by code.", "code", counters.errors)
        yield CounterMetricFamily("rustorium_rate_limited", "Messages refused by the rate limit.",
                                  value=counters.rate_limited)
        yield CounterMetricFamily(
            "rustorium_slow_consumers", "Connections closed for reading too slowly (4101).",
            value=counters.slow_consumers,
        )
        yield CounterMetricFamily(
            "rustorium_frame_floods",
            "Connections closed for sending WebSocket frames past frame-rate (4008).",
            value=counters.frame_floods,
        )
        refused = Counter({"max-connections": 0, "max-handshakes-per-address": 0})
        refused.update(counters.connections_refused)
        yield _counter(
            "rustorium_connections_refused",
            "TCP connections closed at accept, by the cap that was reached.",
            "reason", refused,
        )
        yield CounterMetricFamily(
            "rustorium_handshake_timeouts",
            "Connections closed for not completing the opening handshake in handshake-timeout.",
            value=counters.handshake_timeouts,
        )
        yield CounterMetricFamily(
            "rustorium_conflated_updates",
            "Price and volume updates a slow reader was spared because a newer one replaced them.",
            value=counters.conflated,
        )
        http = CounterMetricFamily(
            "rustorium_http_responses",
            "HTTP API answers, by operation (unknown: no such endpoint) and status.",
            labels=["operation", "status"],
        )
        for (operation, status), count in sorted(counters.http_responses.items()):
            http.add_metric([operation, str(status)], count)
        yield http
        yield GaugeMetricFamily("rustorium_block_height", "The last block's number.",
                                value=server.ledger.last_block)
        yield GaugeMetricFamily(
            "rustorium_pending_transactions", "Accepted transactions not yet in a block.",
            value=server.ledger.pending_count,
        )
        last_number = getattr(app.broker, "last_number", None)
        if last_number is not None:
            yield GaugeMetricFamily(
                "rustorium_last_message_id", "The n of the last msg_<n> issued.",
                value=last_number,
            )


def _counter(name: str, documentation: str, label: str, values: Counter) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value, count in sorted(values.items()):
        family.add_metric([str(value)], count)
    return family


def make_registry(server: Server) -> CollectorRegistry:
    """
    A registry with the server's metrics, the fan-out latency histogram
    (wired to the hub) and the process's own (memory, CPU, file
    descriptors). One per service, so that embedding several is safe.
    """
    registry = CollectorRegistry(auto_describe=True)
    registry.register(ServerCollector(server))
    ProcessCollector(registry=registry)
    histogram = Histogram(
        "rustorium_fan_out_seconds",
        "Time to hand one published update (or one batch) to every subscriber.",
        buckets=FAN_OUT_BUCKETS,
        registry=registry,
    )
    server.app.fanout.on_fan_out = histogram.observe
    return registry


class MetricsPage(Resource):
    """
    C{GET /metrics}: the Prometheus text format, collected in the reactor
    thread (the counters are not thread-safe to read elsewhere).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: http.Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


class HealthPage(Resource):
    """
    C{GET /healthz}: 200 once the services run and the database answers,
    503 otherwise; a JSON body says which.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, server: Server, check_database: Any) -> None:
        """
        @param check_database: returns a Deferred that fires once the
            database answered a trivial query.
        """
        super().__init__()
        self._server = server
        self._check_database = check_database

    def render_GET(self, request: http.Request) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        if not self._server.ready:
            request.setResponseCode(503)
            return orjson.dumps({"status": "starting"})
        if not self._server.broker_ready:
            request.setResponseCode(503)
            return orjson.dumps({"status": "broker unavailable"})
        d = self._check_database()

        def healthy(_: object) -> None:
            server = self._server
            _finish(request, 200, {
                "status": "ok",
                "version": server.version,
                "connections": len(server.sessions),
                "block_height": server.ledger.last_block,
            })

        def unhealthy(failure: Any) -> None:
            self.log.failure("Health check: the database did not answer", failure)
            _finish(request, 503, {"status": "database unavailable"})

        d.addCallbacks(healthy, unhealthy)
        return NOT_DONE_YET


def _finish(request: http.Request, code: int, body: dict) -> None:
    if request.finished or request.channel is None:
        return
    request.setResponseCode(code)
    request.write(orjson.dumps(body))
    request.finish()
