"""
TLS terminated in-process: C{wss:} descriptions, the TLS options built from
them (checked by real handshakes in memory), and certificate reload.
"""

import os
import signal
import time

import pytest
from twisted.application.service import MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, TLSVersion, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor
from twisted.logger import globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.test import iosim
from zope.interface import implementer

from rustorium import tls
from rustorium.output import WriteThroughPort, listening_reactor
from tests.tlsfiles import Authority


@pytest.fixture
def now_clock():
    """
    A fake clock at the real time, so that fresh certificates are valid.
    """
    clock = Clock()
    clock.advance(time.time())
    return clock


@pytest.fixture
def authority():
    """
    A test CA.
    """
    return Authority.create()


@pytest.fixture
def files(tmp_path, authority):
    """
    A certificate for localhost with its key and its CA as chain.
    """
    return authority.issue("localhost").write(tmp_path / "tls", authority)


@pytest.fixture
def events():
    """
    Every event logged during the test.
    """
    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    yield seen
    globalLogPublisher.removeObserver(seen.append)


@implementer(IHandshakeListener)
class Peer(Protocol):
    """
    One side of a connection, recording the handshake and what it receives.
    """

    def __init__(self) -> None:
        self.handshake_done = False
        self.received = b""
        self.lost = None

    def handshakeCompleted(self) -> None:
        self.handshake_done = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.lost = reason


class Connection:
    """
    A TLS client and server connected in memory.
    """

    def __init__(self, creator, client_options, clock) -> None:
        address = IPv4Address("TCP", "127.0.0.1", 8443)
        server = TLSMemoryBIOFactory(creator, False, Factory.forProtocol(Peer), clock=clock)
        client = TLSMemoryBIOFactory(client_options, True, Factory.forProtocol(Peer), clock=clock)
        self.server_tls = server.buildProtocol(address)
        self.client_tls = client.buildProtocol(address)
        self.server: Peer = self.server_tls.wrappedProtocol
        self.client: Peer = self.client_tls.wrappedProtocol
        self.pump = iosim.connect(
            self.server_tls, iosim.makeFakeServer(self.server_tls),
            self.client_tls, iosim.makeFakeClient(self.client_tls),
            greet=False, clock=clock,
        )
        self.pump.flush()

    @property
    def tls(self):
        return self.client_tls._tlsConnection

    @property
    def serial(self) -> int:
        return self.tls.get_peer_certificate(as_cryptography=True).serial_number

    def exchange(self, data: bytes) -> tuple[bytes, bytes]:
        """
        Send C{data} both ways; return what each side received.
        """
        self.server.received = self.client.received = b""
        self.client.transport.write(data)
        self.server.transport.write(data)
        self.pump.flush()
        return self.server.received, self.client.received


def client_options(authority, hostname="localhost", **extra):
    return optionsForClientTLS(
        hostname, trustRoot=Certificate.loadPEM(authority.pem()),
        extraCertificateOptions=extra or None,
    )


def certificate_for(description, clock) -> tls.ReloadingCertificate:
    return tls.ReloadingCertificate(tls.parse(description), clock)


# Descriptions.

@pytest.mark.parametrize(
    ("description", "args", "kwargs"),
    [
        ("wss:8443", ["wss", "8443"], {}),
        ("wss:8443:certificate=a.pem", ["wss", "8443"], {"certificate": "a.pem"}),
        ("wss:interface=\\:\\:1", ["wss"], {"interface": "::1"}),
        ("wss:ciphers=A=B", ["wss"], {"ciphers": "A=B"}),
        ("wss:certificate=C\\:\\\\a.pem", ["wss"], {"certificate": "C:\\a.pem"}),
        ("wss:a\\=b", ["wss", "a=b"], {}),
    ],
)
def test_split_description(description, args, kwargs):
    """
    Descriptions split by Twisted's rules: colons separate, the first equals
    sign makes a keyword, a backslash escapes.
    """
    assert tls.split_description(description) == (args, kwargs)


def test_parse_defaults():
    """
    The port can be positional; the key defaults to the certificate file,
    TLS 1.2 is the minimum, and the backlog is the caller's default.
    """
    listen = tls.parse("wss:8443:certificate=/c.pem", backlog=4096)
    assert listen == tls.TLSListen(
        description="wss:8443:certificate=/c.pem", port=8443, certificate="/c.pem",
        private_key="/c.pem", chain=None, minimum_version=TLSVersion.TLSv1_2,
        ciphers=None, dh_parameters=None, interface="", backlog=4096,
    )


def test_parse_everything():
    """
    Every parameter, with the ssl: names for the certificate and the chain.
    """
    description = (
        "WSS:port=443:certKey=/c.pem:privateKey=/k.pem:extraCertChain=/ch.pem:"
        "minimumVersion=1.3:ciphers=ECDHE+AESGCM\\:ECDHE+CHACHA20:dhParameters=/dh.pem:"
        "interface=\\:\\:1:backlog=10"
    )
    listen = tls.parse(description, backlog=4096)
    assert (
        listen.port, listen.certificate, listen.private_key, listen.chain,
        listen.minimum_version, listen.ciphers, listen.dh_parameters, listen.interface,
        listen.backlog,
    ) == (
        443, "/c.pem", "/k.pem", "/ch.pem", TLSVersion.TLSv1_3,
        "ECDHE+AESGCM:ECDHE+CHACHA20", "/dh.pem", "::1", 10,
    )
    assert listen.files == ("/c.pem", "/k.pem", "/ch.pem", "/dh.pem")


def test_parse_private_key_only():
    """
    A combined file given as privateKey= is the certificate file too, as
    with ssl:.
    """
    listen = tls.parse("wss:443:privateKey=/both.pem")
    assert (listen.certificate, listen.private_key) == ("/both.pem", "/both.pem")
    assert listen.files == ("/both.pem",)


@pytest.mark.parametrize(
    ("description", "message"),
    [
        ("wss", "a port is required"),
        ("wss:certificate=c.pem", "a port is required"),
        ("wss:8443", "certificate= (and privateKey="),
        ("wss:http:certificate=c.pem", "port 'http' is not a port number"),
        ("wss:70000:certificate=c.pem", "port '70000' is not a port number"),
        ("wss:1:2:certificate=c.pem", "one port expected"),
        ("wss:1:port=2:certificate=c.pem", "the port is given twice"),
        ("wss:1:certificate=c.pem:certKey=d.pem", "certificate= is given twice"),
        ("wss:1:certificate=c.pem:certificate=d.pem", "certificate= is given twice"),
        ("wss:1:certificate=c.pem:minimumVersion=1.1", "minimumVersion=1.1 is not one of 1.2, 1.3"),
        ("wss:1:certificate=c.pem:sslmethod=TLSv1_2_METHOD", "sslmethod=; use minimumVersion="),
        ("wss:1:certificate=c.pem:cert=x", "unknown parameter cert= (known: port, certificate"),
        ("wss:1:certificate=c.pem:backlog=0", "backlog=0 is not a whole number"),
        ("wss:1:certificate=", "certificate= (and privateKey="),
        ("wss:1:certificate=c.pem:chain=", "chain= is empty"),
        ("wss:1:certificate=c.pem\\", "lone backslash"),
    ],
)
def test_parse_errors(description, message):
    """
    A bad description is refused with a message that says what is wrong and
    names the description.
    """
    with pytest.raises(tls.TLSEndpointError) as caught:
        tls.parse(description)
    assert message in caught.value.detail
    assert repr(description) in str(caught.value)


def test_other_descriptions_are_twisteds(now_clock):
    """
    server_endpoint leaves every other description, including Twisted's own
    tls: and ssl:, to serverFromString.
    """
    for description in ("tcp:8765", "ssl:8443:privateKey=k.pem", "tls:/etc/certs:port=443"):
        assert tls.server_endpoint(now_clock, description) is None
    assert tls.is_tls_description("wss:8443")
    assert tls.is_tls_description("WSS:8443")


# Loading the files.

def test_load_names_the_missing_file(tmp_path):
    """
    A missing file is an error naming it.
    """
    missing = tmp_path / "missing.pem"
    with pytest.raises(ValueError, match=f"cannot read certificate file {missing}: No such file"):
        tls.load(tls.parse(f"wss:1:certificate={missing}"))


def test_load_names_the_file_without_a_key(files):
    """
    A certificate file without a key, given alone, is an error naming it.
    """
    with pytest.raises(ValueError, match=f"private key file {files.certificate} holds no PEM"):
        tls.load(tls.parse(f"wss:1:certificate={files.certificate}"))


def test_load_names_a_file_without_certificate(files):
    """
    A certificate file without a certificate is an error naming it.
    """
    with pytest.raises(ValueError, match=f"certificate file {files.key} holds no PEM certificate"):
        tls.load(tls.parse(f"wss:1:certificate={files.key}:privateKey={files.key}"))


def test_load_refuses_a_key_of_another_certificate(tmp_path, authority, files):
    """
    A key that does not belong to the certificate is refused, naming both.
    """
    other = authority.issue("localhost").write(tmp_path / "other")
    with pytest.raises(
        ValueError,
        match=f"the private key in {other.key} does not match the certificate in "
              f"{files.certificate}",
    ):
        tls.load(tls.parse(files.listen(1).replace(str(files.key), str(other.key))))


def test_load_refuses_an_encrypted_key(tmp_path, files, authority):
    """
    An encrypted key cannot be used (there is nobody to type a password at
    a reload); the error names the file.
    """
    from cryptography.hazmat.primitives import serialization

    server = authority.issue("localhost")
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(server.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ))
    with pytest.raises(ValueError, match=f"private key file {encrypted} holds a key that cannot"):
        tls.load(tls.parse(files.listen(1).replace(str(files.key), str(encrypted))))


def test_load_names_an_empty_chain_file(tmp_path, files):
    """
    A chain file without certificates is an error naming it.
    """
    empty = tmp_path / "chain.pem"
    empty.write_text("")
    with pytest.raises(ValueError, match=f"chain file {empty} holds no PEM certificate"):
        tls.load(tls.parse(files.listen(1, f"chain={empty}")))


@pytest.mark.parametrize("ciphers", ["NO-SUCH-CIPHER", "eNULL"])
def test_load_refuses_ciphers_selecting_nothing(files, ciphers):
    """
    A cipher string that selects no usable cipher is refused at load.
    """
    with pytest.raises(ValueError, match=f"ciphers={ciphers} "):
        tls.load(tls.parse(files.listen(1, f"ciphers={ciphers}")))


def test_reloading_certificate_reports_bad_files(tmp_path, now_clock):
    """
    A ReloadingCertificate that cannot load is a TLSEndpointError naming
    the description and the file.
    """
    missing = tmp_path / "missing.pem"
    with pytest.raises(tls.TLSEndpointError, match=f"cannot read certificate file {missing}"):
        certificate_for(f"wss:1:certificate={missing}", now_clock)


# Handshakes in memory.

def test_handshake(files, authority, now_clock):
    """
    A client trusting the CA connects to localhost, by TLS 1.3 by default,
    and data flows both ways.
    """
    certificate = certificate_for(files.listen(1), now_clock)
    connection = Connection(certificate, client_options(authority), now_clock)
    assert connection.client.handshake_done
    assert connection.tls.get_protocol_version_name() == "TLSv1.3"
    assert connection.serial == certificate.current.leaf.serial_number
    assert connection.exchange(b"hello") == (b"hello", b"hello")


def test_hostname_is_checked(files, authority, now_clock):
    """
    A client asking for another host name refuses the certificate
    (service-identity's check).
    """
    certificate = certificate_for(files.listen(1), now_clock)
    connection = Connection(certificate, client_options(authority, "example.com"), now_clock)
    assert not connection.client.handshake_done
    assert connection.client.lost is not None


def test_minimum_version_refuses_older_clients(files, authority, now_clock):
    """
    With minimumVersion=1.3 a client that speaks at most TLS 1.2 is refused,
    and one that speaks 1.3 is served.
    """
    certificate = certificate_for(files.listen(1, "minimumVersion=1.3"), now_clock)
    old = Connection(
        certificate, client_options(authority, lowerMaximumSecurityTo=TLSVersion.TLSv1_2),
        now_clock,
    )
    assert not old.client.handshake_done
    assert "protocol version" in str(old.client.lost.value)
    current = Connection(certificate, client_options(authority), now_clock)
    assert current.client.handshake_done
    assert current.tls.get_protocol_version_name() == "TLSv1.3"


def test_minimum_version_default_serves_tls_1_2(files, authority, now_clock):
    """
    By default a TLS 1.2 client is served.
    """
    certificate = certificate_for(files.listen(1), now_clock)
    old = Connection(
        certificate, client_options(authority, lowerMaximumSecurityTo=TLSVersion.TLSv1_2),
        now_clock,
    )
    assert old.tls.get_protocol_version_name() == "TLSv1.2"


def test_ciphers(files, authority, now_clock):
    """
    ciphers= decides the TLS 1.2 cipher: a TLS 1.2 client gets the one
    allowed, and a client offering only others is refused.
    """
    certificate = certificate_for(
        files.listen(1, "ciphers=ECDHE-ECDSA-AES128-GCM-SHA256"), now_clock
    )
    connection = Connection(
        certificate, client_options(authority, lowerMaximumSecurityTo=TLSVersion.TLSv1_2),
        now_clock,
    )
    assert connection.tls.get_cipher_name() == "ECDHE-ECDSA-AES128-GCM-SHA256"

    from twisted.internet.ssl import AcceptableCiphers

    refused = Connection(
        certificate,
        client_options(
            authority, lowerMaximumSecurityTo=TLSVersion.TLSv1_2,
            acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(
                "ECDHE-ECDSA-AES256-GCM-SHA384"
            ),
        ),
        now_clock,
    )
    assert not refused.client.handshake_done


@pytest.mark.parametrize("layout", ["chain", "fullchain"])
def test_chain(tmp_path, now_clock, layout):
    """
    A certificate from an intermediate CA verifies for a client that trusts
    only the root when the intermediate is sent: from chain=, or after the
    leaf in the certificate file (certbot's fullchain.pem).
    """
    root = Authority.create("Root")
    intermediate = Authority.create("Intermediate", issuer=root)
    server = intermediate.issue("localhost")
    files = server.write(tmp_path, intermediate)
    if layout == "chain":
        description = files.listen(1, f"chain={files.chain}")
    else:
        files.certificate.write_bytes(server.certificate_pem() + intermediate.pem())
        description = files.listen(1)
    served = Connection(certificate_for(description, now_clock), client_options(root), now_clock)
    assert served.client.handshake_done
    leaf_only = server.write(tmp_path / "leaf-only").listen(1)
    unchained = Connection(certificate_for(leaf_only, now_clock), client_options(root), now_clock)
    assert not unchained.client.handshake_done


# Reload.

def renew(files, authority, serial=None):
    """
    Replace the files with a new certificate and key, as a renewal does.
    """
    server = authority.issue("localhost", serial=serial)
    server.write(files.certificate.parent, authority)
    # Make sure the change shows even on a file system with coarse times.
    for path in (files.certificate, files.key):
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    return server


def test_reload_serves_new_connections_only(files, authority, now_clock, events):
    """
    After a reload, new connections get the new certificate; an established
    connection is untouched and keeps exchanging data; a line says which
    certificate is now served.
    """
    certificate = certificate_for(files.listen(1), now_clock)
    before = Connection(certificate, client_options(authority), now_clock)
    old_serial = before.serial
    new = renew(files, authority, serial=4242)
    assert certificate.reload()
    after = Connection(certificate, client_options(authority), now_clock)
    assert after.serial == 4242 != old_serial
    assert before.serial == old_serial
    assert before.exchange(b"still here") == (b"still here", b"still here")
    [line] = [e for e in events if "reloaded from" in e.get("log_format", "")]
    assert line["serial"] == "1092"
    assert line["subject"] == "CN=localhost"
    assert line["not_after"] == new.certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_failed_reload_keeps_the_old_certificate(files, authority, now_clock, logged_errors):
    """
    A reload that meets a bad file keeps serving the old certificate and
    logs an error naming the file.
    """
    certificate = certificate_for(files.listen(1), now_clock)
    serial = certificate.current.leaf.serial_number
    files.certificate.write_text("not a certificate\n")
    assert not certificate.reload()
    assert Connection(certificate, client_options(authority), now_clock).serial == serial
    [error] = logged_errors
    assert f"certificate file {files.certificate} holds no PEM certificate" in error["error"]
    logged_errors.clear()


def test_failed_reload_on_a_key_mismatch(files, authority, now_clock, logged_errors):
    """
    A new certificate beside the old key (a renewal half done) is refused,
    naming the key file.
    """
    certificate = certificate_for(files.listen(1), now_clock)
    serial = certificate.current.leaf.serial_number
    files.certificate.write_bytes(authority.issue("localhost").certificate_pem())
    assert not certificate.reload()
    assert certificate.current.leaf.serial_number == serial
    [error] = logged_errors
    assert f"the private key in {files.key} does not match" in error["error"]
    logged_errors.clear()


def test_watch_waits_for_the_files_to_settle(files, authority, now_clock):
    """
    The file watch reloads once the files changed and then stayed the same
    for one check, and does not reload unchanged files.
    """
    certificate = certificate_for(files.listen(1), now_clock)
    assert not certificate.check()
    renew(files, authority, serial=7)
    assert not certificate.check()
    assert certificate.check()
    assert certificate.current.leaf.serial_number == 7
    assert not certificate.check()


def test_watch_tries_a_bad_file_once(files, authority, now_clock, logged_errors):
    """
    A bad file is tried (and logged) once, not at every check; fixing it is
    picked up.
    """
    certificate = certificate_for(files.listen(1), now_clock)
    files.certificate.write_text("broken")
    certificate.check()
    assert certificate.check()
    assert len(logged_errors) == 1
    assert not certificate.check()
    assert not certificate.check()
    assert len(logged_errors) == 1
    logged_errors.clear()
    renew(files, authority, serial=8)
    certificate.check()
    assert certificate.check()
    assert certificate.current.leaf.serial_number == 8


def test_watch_follows_a_moved_symlink(tmp_path, authority, now_clock):
    """
    certbot's live/ files are symbolic links moved to new files at renewal:
    the watch sees the new files.
    """
    first = authority.issue("localhost", serial=1).write(tmp_path / "archive1")
    second = authority.issue("localhost", serial=2).write(tmp_path / "archive2")
    live = tmp_path / "live"
    live.mkdir()
    (live / "cert.pem").symlink_to(first.certificate)
    (live / "key.pem").symlink_to(first.key)
    certificate = certificate_for(
        f"wss:1:certificate={live / 'cert.pem'}:privateKey={live / 'key.pem'}", now_clock
    )
    for name, target in (("cert.pem", second.certificate), ("key.pem", second.key)):
        (live / f"{name}.new").symlink_to(target)
        os.replace(live / f"{name}.new", live / name)
    certificate.check()
    assert certificate.check()
    assert certificate.current.leaf.serial_number == 2


# The reload service.

class SignalReactor(Clock):
    """
    A fake reactor that runs callFromThread calls at once.
    """

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


def test_service_watches_on_its_timer(files, authority, now_clock):
    """
    The service checks every certificate each interval on the given clock.
    """
    certificate = certificate_for(files.listen(1), now_clock)
    service = tls.CertificateReloadService([certificate], now_clock, 5)
    service.startService()
    try:
        renew(files, authority, serial=11)
        now_clock.advance(5)
        assert certificate.current.leaf.serial_number != 11
        now_clock.advance(5)
        assert certificate.current.leaf.serial_number == 11
    finally:
        service.stopService()


def test_service_survives_a_failing_check(files, now_clock, logged_errors):
    """
    An exception in one check is logged and the timer goes on.
    """
    certificate = certificate_for(files.listen(1), now_clock)
    calls = []

    def broken():
        calls.append(1)
        raise RuntimeError("boom")

    certificate.check = broken
    service = tls.CertificateReloadService([certificate], now_clock, 1)
    service.startService()
    now_clock.advance(1)
    now_clock.advance(1)
    service.stopService()
    assert len(calls) == 3
    assert len(logged_errors) == 3
    logged_errors.clear()


def test_sighup_reloads(files, authority):
    """
    With sighup=True, SIGHUP reloads every certificate on the reactor, the
    handler found before is still called, and stopping restores it.
    """
    reactor = SignalReactor()
    reactor.advance(time.time())
    certificate = certificate_for(files.listen(1), reactor)
    earlier = []
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: earlier.append(signum))
    try:
        service = tls.CertificateReloadService([certificate], reactor, 10, sighup=True)
        service.startService()
        renew(files, authority, serial=12)
        os.kill(os.getpid(), signal.SIGHUP)
        assert certificate.current.leaf.serial_number == 12
        assert earlier == [signal.SIGHUP]
        service.stopService()
        os.kill(os.getpid(), signal.SIGHUP)
        assert earlier == [signal.SIGHUP, signal.SIGHUP]
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_no_sighup_by_default(files, now_clock):
    """
    Without sighup=True (an embedding application owns its signals) the
    SIGHUP handler is left alone; reload() is the way to reload.
    """
    certificate = certificate_for(files.listen(1), now_clock)
    before = signal.getsignal(signal.SIGHUP)
    service = tls.CertificateReloadService([certificate], now_clock, 10)
    parent = MultiService()
    service.setServiceParent(parent)
    parent.startService()
    assert signal.getsignal(signal.SIGHUP) is before
    assert parent.getServiceNamed("tls-reload") is service
    parent.stopService()


# Listening.

def test_endpoint_listens_with_tls_over_tcp(files, now_clock):
    """
    The endpoint listens through the reactor's listenTCP, with the port,
    backlog and interface of the description, TLS wrapping the factory.
    """
    reactor = MemoryReactor()
    reactor.seconds = now_clock.seconds
    endpoint, _ = tls.server_endpoint(
        reactor, files.listen(8443, "interface=127.0.0.1"), backlog=4096
    )
    factory = Factory.forProtocol(Protocol)
    endpoint.listen(factory)
    [(port, wrapping, backlog, interface)] = reactor.tcpServers
    assert (port, backlog, interface) == (8443, 4096, "127.0.0.1")
    assert isinstance(wrapping, TLSMemoryBIOFactory)
    assert wrapping.wrappedFactory is factory


def test_endpoint_is_write_through(files, now_clock):
    """
    Through the write-through reactor, the TCP port under TLS is a
    write-through port.
    """
    from twisted.internet import reactor

    endpoint, _ = tls.server_endpoint(
        listening_reactor(reactor), files.listen(0, "interface=127.0.0.1")
    )
    result = []
    endpoint.listen(Factory.forProtocol(Protocol)).addCallback(result.append)
    [port] = result
    try:
        assert isinstance(port, WriteThroughPort)
    finally:
        port.stopListening()


def test_options_check_names_the_missing_file(tmp_path):
    """
    twistd rustorium --listen wss:... with a missing file is a usage error
    naming the file.
    """
    from rustorium.tap import Options

    missing = tmp_path / "cert.pem"
    options = Options()
    with pytest.raises(usage.UsageError, match=f"cannot read certificate file {missing}"):
        options.parseOptions([
            "--listen", f"wss:8443:certificate={missing}",
            "--database", f"sqlite:{tmp_path / 'db.sqlite'}",
        ])


def test_options_accept_a_good_description(tmp_path, files):
    """
    A good wss: description and the reload interval pass the option checks.
    """
    from rustorium.tap import Options

    options = Options()
    options.parseOptions([
        "--listen", files.listen(8443, "minimumVersion=1.3"),
        "--database", f"sqlite:{tmp_path / 'db.sqlite'}",
        "--tls-reload-interval", "2",
    ])
    assert options.settings.listen == (files.listen(8443, "minimumVersion=1.3"),)
    assert options.settings.tls_reload_interval == 2.0


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_other_key_types(tmp_path, authority, now_clock, kind):
    """
    RSA and Ed25519 keys serve as well as EC ones.
    """
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa" else ed25519.Ed25519PrivateKey.generate()
    )
    files = authority.issue("localhost", key=key).write(tmp_path)
    connection = Connection(
        certificate_for(files.listen(1), now_clock), client_options(authority), now_clock
    )
    assert connection.client.handshake_done


def test_ciphers_separated_by_commas(files, authority, now_clock):
    """
    A cipher string may separate its parts with commas, so that it needs
    no escaping in an endpoint string.
    """
    certificate = certificate_for(
        files.listen(1, "ciphers=ECDHE-ECDSA-CHACHA20-POLY1305,ECDHE-ECDSA-AES256-GCM-SHA384"),
        now_clock,
    )
    connection = Connection(
        certificate, client_options(authority, lowerMaximumSecurityTo=TLSVersion.TLSv1_2),
        now_clock,
    )
    assert connection.tls.get_cipher_name() in (
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES256-GCM-SHA384"
    )


def test_dh_parameters_file_is_checked(tmp_path, files):
    """
    A missing or bad dhParameters file is an error naming it.
    """
    missing = tmp_path / "dh.pem"
    with pytest.raises(ValueError, match=f"cannot read dhParameters file {missing}"):
        tls.load(tls.parse(files.listen(1, f"dhParameters={missing}")))
    missing.write_text("not parameters")
    with pytest.raises(ValueError, match=f"dhParameters file {missing}"):
        tls.load(tls.parse(files.listen(1, f"dhParameters={missing}")))


def test_warns_about_a_certificate_not_valid_now(files, events):
    """
    A certificate outside its validity period is served, with a warning.
    """
    long_ago = Clock()
    certificate_for(files.listen(1), long_ago)
    [warning] = [e for e in events if "is not valid now" in e.get("log_format", "")]
    assert warning["path"] == str(files.certificate)


def test_make_service_with_wss(tmp_path, files):
    """
    makeService serves a wss: listener and adds the reload service, with
    the interval and signal settings.
    """
    from twisted.internet.testing import MemoryReactorClock

    from rustorium.service import connect_url, makeService

    reactor = MemoryReactorClock()
    reactor.advance(time.time())
    description = files.listen(8443, "interface=127.0.0.1")
    service = makeService(
        {"listen": [description], "database": f"sqlite:{tmp_path / 'db.sqlite'}",
         "tls-reload-interval": 3, "tls-reload-signal": False},
        reactor,
    )
    reload = service.getServiceNamed("tls-reload")
    assert isinstance(reload, tls.CertificateReloadService)
    assert not reload._sighup
    [timer] = list(reload)
    assert timer.step == 3
    assert connect_url(description) == "wss://127.0.0.1:8443/v1"


def test_stopping_leaves_a_newer_sighup_handler(files):
    """
    Stopping does not remove a SIGHUP handler installed after the
    service's own.
    """
    reactor = SignalReactor()
    reactor.advance(time.time())
    certificate = certificate_for(files.listen(1), reactor)
    previous = signal.getsignal(signal.SIGHUP)
    try:
        service = tls.CertificateReloadService([certificate], reactor, 10, sighup=True)
        service.startService()
        assert signal.getsignal(signal.SIGHUP) is not previous

        def newer(signum, frame):
            pass

        signal.signal(signal.SIGHUP, newer)
        service.stopService()
        assert signal.getsignal(signal.SIGHUP) is newer
    finally:
        signal.signal(signal.SIGHUP, previous)
