"""
TLS terminated by the real server (``twistd -n rustorium --listen wss:...``)
for a real TLS WebSocket client: Autobahn over Twisted's TLS client, which
checks the host name with service-identity, against a CA and a certificate
for C{localhost} that the tests make.
"""

import json
import os
import signal
import subprocess

import pytest
import pytest_twisted
from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
from twisted.internet.ssl import Certificate, TLSVersion, optionsForClientTLS

from tests.asyncapi import validate_server_message
from tests.integration.conftest import BIN, environment, free_port
from tests.tlsfiles import Authority

pytestmark = pytest.mark.integration

TIMEOUT = 10


@pytest.fixture(scope="session")
def authority():
    """
    The test CA, made once per session.
    """
    return Authority.create()


@pytest.fixture(scope="session")
def localhost_certificate(authority):
    """
    A certificate for localhost from the test CA, made once per session.
    """
    return authority.issue("localhost")


@pytest.fixture
def files(tmp_path, authority, localhost_certificate):
    """
    The localhost certificate, key and chain, in this test's directory
    (renewal tests replace them).
    """
    return localhost_certificate.write(tmp_path / "tls", authority)


class Client(WebSocketClientProtocol):
    """
    A WebSocket client that queues every message it receives.
    """

    def __init__(self) -> None:
        super().__init__()
        self.messages: defer.DeferredQueue = defer.DeferredQueue()
        self.opened: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self.lost_reason = None

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        message = json.loads(payload)
        validate_server_message(message)
        self.messages.put(message)

    def connectionLost(self, reason) -> None:
        self.lost_reason = reason
        super().connectionLost(reason)
        self.closed.callback(None)

    @property
    def serial(self) -> int:
        """
        The serial number of the certificate the server presented.
        """
        return self.transport.getPeerCertificate().to_cryptography().serial_number

    @property
    def tls_version(self) -> str:
        return self.transport._tlsConnection.get_protocol_version_name()

    def send(self, kind: str, data: dict | None = None, request_id="r") -> None:
        self.sendMessage(json.dumps({"id": request_id, "type": kind, "data": data or {}}).encode())

    async def until(self, predicate) -> dict:
        """
        Receive until a message matches C{predicate}; return it.
        """
        from twisted.internet import reactor

        while True:
            message = await self.messages.get().addTimeout(TIMEOUT, reactor)
            if predicate(message):
                return message

    async def request(self, kind: str, data: dict | None = None) -> dict:
        self.send(kind, data, request_id=kind)
        return await self.until(lambda m: m.get("id") == kind and m["type"] != "update")

    async def close(self) -> None:
        if not self.closed.called:
            self.sendClose()
        from twisted.internet import reactor

        await self.closed.addTimeout(TIMEOUT, reactor)


def client_options(authority, hostname="localhost", **extra):
    return optionsForClientTLS(
        hostname, trustRoot=Certificate.loadPEM(authority.pem()),
        extraCertificateOptions=extra or None,
    )


async def connect(port: int, key: str, options) -> Client:
    """
    Open a WebSocket over TLS to 127.0.0.1:C{port}, verifying the
    certificate with C{options}; the Deferred fails if the TLS or WebSocket
    handshake does.
    """
    from twisted.internet import reactor

    factory = WebSocketClientFactory(f"wss://localhost:{port}/v1?api_key={key}")
    factory.protocol = Client
    endpoint = wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port))
    client = await endpoint.connect(factory)
    opened = defer.DeferredList([client.opened, client.closed], fireOnOneCallback=True)
    _, which = await opened.addTimeout(TIMEOUT, reactor)
    if which == 1:
        raise ConnectionError(client.lost_reason)
    return client


async def wait_for(predicate, timeout: float = TIMEOUT) -> None:
    from twisted.internet import reactor

    for _ in range(int(timeout / 0.05)):
        if await predicate():
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("timed out")


def start_tls(start_server, files, *extra: str, tls_port=None, options=()):
    """
    A server listening on TCP (as the fixture does) and on wss: at C{tls_port}.
    """
    tls_port = tls_port or free_port()
    description = files.listen(tls_port, "interface=127.0.0.1", *extra)
    server = start_server("--tick-interval", "0.1", "--listen", description, *options)
    return server, tls_port


async def subscribe(client: Client) -> None:
    reply = await client.request(
        "subscribe", {"channel": "market_data", "symbols": ["MTK/USD"]}
    )
    assert reply["type"] == "subscription_confirmation"
    await client.until(lambda m: m["type"] == "update")


@pytest_twisted.ensureDeferred
async def test_subscribe_over_tls(start_server, files, authority, localhost_certificate):
    """
    A client that trusts the CA and checks the host name connects over TLS
    1.3, subscribes and receives updates.
    """
    server, port = start_tls(start_server, files)
    client = await connect(port, server.demo_key(), client_options(authority))
    try:
        assert client.serial == localhost_certificate.serial
        assert client.tls_version == "TLSv1.3"
        await subscribe(client)
        assert (await client.request("ping"))["type"] == "pong"
    finally:
        await client.close()
    assert "TLS on wss:" in server.output()


@pytest_twisted.ensureDeferred
async def test_wrong_hostname_is_refused(start_server, files, authority):
    """
    A client that trusts the CA but asks for another host name refuses the
    certificate: the host name check is done.
    """
    server, port = start_tls(start_server, files)
    with pytest.raises(ConnectionError) as caught:
        await connect(port, server.demo_key(), client_options(authority, "wrong.example"))
    failure = caught.value.args[0]
    assert failure.check(VerificationError), failure


@pytest_twisted.ensureDeferred
async def test_untrusted_certificate_is_refused(start_server, files, logged_errors):
    """
    A client that does not trust the CA refuses the certificate (and
    Twisted's client logs why).
    """
    server, port = start_tls(start_server, files)
    with pytest.raises(ConnectionError) as caught:
        await connect(port, server.demo_key(), client_options(Authority.create("Other CA")))
    assert "certificate verify failed" in str(caught.value.args[0].value)
    assert logged_errors
    assert all("certificate verify failed" in str(e) for e in logged_errors)
    logged_errors.clear()


@pytest_twisted.ensureDeferred
async def test_minimum_version(start_server, files, authority, logged_errors):
    """
    With minimumVersion=1.3 a client limited to TLS 1.2 is refused and a
    TLS 1.3 client is served.
    """
    server, port = start_tls(start_server, files, "minimumVersion=1.3")
    key = server.demo_key()
    with pytest.raises(ConnectionError) as caught:
        await connect(
            port, key, client_options(authority, lowerMaximumSecurityTo=TLSVersion.TLSv1_2)
        )
    assert caught.value.args[0].check(SSL.Error)
    assert "protocol version" in str(caught.value.args[0].value)
    assert all("protocol version" in str(e) for e in logged_errors)
    logged_errors.clear()
    client = await connect(port, key, client_options(authority))
    try:
        assert client.tls_version == "TLSv1.3"
    finally:
        await client.close()


async def renewal(server, port, files, authority, trigger) -> None:
    """
    With a connection open, replace the certificate and key with a new
    certificate and C{trigger} a reload: a new connection gets the new
    certificate, and the open one still receives updates.
    """
    key = server.demo_key()
    before = await connect(port, key, client_options(authority))
    try:
        old_serial = before.serial
        await subscribe(before)
        new = authority.issue("localhost")
        new.write(files.certificate.parent, authority)
        trigger()

        async def serves_new_certificate() -> bool:
            probe = await connect(port, key, client_options(authority))
            serial = probe.serial
            await probe.close()
            return serial == new.serial

        await wait_for(serves_new_certificate)
        assert before.serial == old_serial
        before.messages.pending.clear()
        await before.until(lambda m: m["type"] == "update")
        assert (await before.request("ping"))["type"] == "pong"
    finally:
        await before.close()
    assert "reloaded from" in server.output()


@pytest_twisted.ensureDeferred
async def test_renewal_picked_up_by_the_file_watch(start_server, files, authority):
    """
    A renewal on disk is picked up by the file watch, without dropping an
    open connection.
    """
    server, port = start_tls(start_server, files, options=("--tls-reload-interval", "0.1"))
    await renewal(server, port, files, authority, lambda: None)


@pytest_twisted.ensureDeferred
async def test_renewal_picked_up_on_sighup(start_server, files, authority):
    """
    SIGHUP reloads the certificate at once (the file watch being an hour
    away), without dropping an open connection.
    """
    server, port = start_tls(start_server, files, options=("--tls-reload-interval", "3600"))
    await renewal(
        server, port, files, authority, lambda: os.kill(server.process.pid, signal.SIGHUP)
    )
    assert "SIGHUP: reloading TLS certificates" in server.output()


@pytest_twisted.ensureDeferred
async def test_stock_ssl_endpoint(start_server, files, authority, localhost_certificate):
    """
    Twisted's own ssl: endpoint strings still work.
    """
    port = free_port()
    server = start_server(
        "--listen",
        f"ssl:{port}:privateKey={files.key}:certKey={files.certificate}:interface=127.0.0.1",
    )
    client = await connect(port, server.demo_key(), client_options(authority))
    try:
        assert client.serial == localhost_certificate.serial
        assert (await client.request("ping"))["type"] == "pong"
    finally:
        await client.close()


def test_missing_certificate_is_a_usage_error(start_server, tmp_path):
    """
    A wss: listener naming a missing file stops start-up with a message
    naming the file.
    """
    missing = tmp_path / "nowhere" / "cert.pem"
    with pytest.raises(AssertionError, match=f"cannot read certificate file {missing}"):
        start_server("--listen", f"wss:{free_port()}:certificate={missing}")


def test_command_line_client_over_tls(start_server, files):
    """
    The project's own client (``rustorium call``) talks to a wss: listener,
    trusting the test CA through OpenSSL's SSL_CERT_FILE, as docs/tls.rst
    shows.
    """
    server, port = start_tls(start_server, files)
    env = environment()
    env["SSL_CERT_FILE"] = str(files.chain)
    result = subprocess.run(
        [str(BIN / "rustorium"), "call", "--url", f"wss://localhost:{port}/v1",
         "--api-key", server.demo_key(), "ping"],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["type"] == "pong"


@pytest.mark.parametrize("command", [["call", "ping"], ["listen", "market_data", "MTK/USD"]])
def test_command_line_client_names_an_untrusted_certificate(start_server, files, command):
    """
    Without the CA, ``rustorium call`` and ``rustorium listen`` exit 1 at
    once with one line that says why OpenSSL refused the certificate
    (``call`` used to say "no reply within 10 s", ``listen`` retried for
    ever), without ``-v``.
    """
    server, port = start_tls(start_server, files)
    env = environment()
    env.pop("SSL_CERT_FILE", None)
    url = f"wss://localhost:{port}/v1"
    result = subprocess.run(
        [str(BIN / "rustorium"), command[0], "--url", url, "--api-key", server.demo_key(),
         *command[1:]],
        env=env, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"rustorium: cannot connect to {url}: TLS handshake failed: certificate verify "
        f"failed: unable to get local issuer certificate"], result.stderr
