"""
Embedding: the Rustorium service attached to another Twisted application
beside its other services, and the API mounted in an existing twisted.web
site, each talked to by a real client over a real socket.
"""

from urllib.error import HTTPError

import orjson
import pytest
import pytest_twisted
from twisted.application.service import MultiService, Service
from twisted.internet import reactor, threads
from twisted.web.resource import Resource
from twisted.web.server import Site

from rustorium.service import makeService
from tests.integration.client import Client, http_get
from tests.integration.conftest import free_port


class HostPage(Resource):
    """
    A page of the host application's own site.
    """

    isLeaf = True

    def render_GET(self, request):
        return b"host page"


class OtherService(Service):
    """
    The host application's own service.
    """

    def startService(self):
        super().startService()
        self.started = True


def talk(url: str, key: str) -> list[str]:
    """
    A client session: subscribe, wait for an update, ping.
    """
    with Client(url, key) as client:
        kinds = [client.request("subscribe", {"channel": "market_data",
                                              "symbols": ["MTK/USD"]})["type"]]
        kinds.append(client.until(lambda m: m["type"] == "update")["type"])
        kinds.append(client.request("ping")["type"])
        return kinds


@pytest_twisted.inlineCallbacks
def test_beside_another_service(tmp_path):
    application = MultiService()
    other = OtherService()
    other.setServiceParent(application)
    port = free_port()
    rustorium = makeService(
        {"listen": [f"tcp:{port}:interface=127.0.0.1"],
         "database": f"sqlite:{tmp_path / 'embedded.db'}", "tick-interval": 0.1},
        reactor,
    )
    rustorium.setServiceParent(application)
    application.startService()
    try:
        assert other.started
        kinds = yield threads.deferToThread(
            talk, f"ws://127.0.0.1:{port}/v1", rustorium.demo_key
        )
        assert kinds == ["subscription_confirmation", "update", "pong"]
    finally:
        yield application.stopService()


@pytest_twisted.inlineCallbacks
def test_mounted_in_a_site(tmp_path):
    """
    websocket_resource() serves the API at any path of the host's site, and
    the host's own pages still work.
    """
    rustorium = makeService(
        {"listen": [], "database": f"sqlite:{tmp_path / 'mounted.db'}", "tick-interval": 0.1},
        reactor,
    )
    root = Resource()
    root.putChild(b"hello", HostPage())
    api = Resource()
    root.putChild(b"api", api)
    api.putChild(b"ws", rustorium.websocket_resource())
    api.putChild(b"http", rustorium.http_api_resource())
    listening = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    rustorium.startService()
    try:
        port = listening.getHost().port
        kinds = yield threads.deferToThread(
            talk, f"ws://127.0.0.1:{port}/api/ws", rustorium.demo_key
        )
        assert kinds == ["subscription_confirmation", "update", "pong"]
        page = yield threads.deferToThread(http_get, f"http://127.0.0.1:{port}/hello")
        assert page == b"host page"
        with pytest.raises(HTTPError) as raised:
            yield threads.deferToThread(http_get, f"http://127.0.0.1:{port}/api/ws")
        assert raised.value.code == 426
        document = yield threads.deferToThread(
            http_get, f"http://127.0.0.1:{port}/api/http/openapi.json")
        assert orjson.loads(document)["openapi"] == "3.1.0"
        with pytest.raises(HTTPError) as raised:
            yield threads.deferToThread(http_get, f"http://127.0.0.1:{port}/api/http/info")
        assert raised.value.code == 401
    finally:
        yield rustorium.stopService()
        yield listening.stopListening()
