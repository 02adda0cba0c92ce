"""
TLS terminated in-process, with the certificate renewed without a restart.

Twisted's stock C{ssl:} endpoint strings keep working, but they cannot set
a minimum TLS version or the ciphers, and they read the certificate once.
The server therefore handles one more kind of listen description itself
(no Twisted plugin), C{wss:}::

    wss:PORT:certificate=PATH[:privateKey=PATH][:chain=PATH]
        [:minimumVersion=1.2|1.3][:ciphers=OPENSSL-CIPHER-STRING]
        [:dhParameters=PATH][:interface=ADDRESS][:backlog=N]

Escaping is Twisted's: a backslash makes the next character literal
(C{interface=\\:\\:1}). C{certificate} may hold the whole chain, leaf first
(certbot's C{fullchain.pem}); C{privateKey} defaults to the certificate
file and the other way round, as with C{ssl:}; C{certKey} and
C{extraCertChain} are accepted as the C{ssl:} names of C{certificate} and
C{chain}. The prefix is not C{tls:}, because recent Twisted releases
already own C{tls:} (a directory of PEM files chosen by SNI).

The listener is TLS (L{TLSMemoryBIOFactory}) over C{reactor.listenTCP}, so
the write-through reactor of L{rustorium.output} applies beneath TLS too.

Renewal: a L{ReloadingCertificate} is the connection creator of one
listener and holds its current L{CertificateOptions}. Reloading builds new
options from the files and swaps them in: new handshakes use the new
certificate, established connections keep the one they started with. A
reload that fails (unreadable file, key not matching) keeps the old
certificate and logs an error naming the file. L{CertificateReloadService}
reloads on SIGHUP and when a file watch (one timer for all listeners) sees
the files change.
"""

import os
import re
import signal
import threading
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IStreamServerEndpoint
from twisted.internet.ssl import (
    AcceptableCiphers,
    CertificateOptions,
    DiffieHellmanParameters,
    TLSVersion,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.filepath import FilePath
from zope.interface import implementer

from .config import ConfigError
from .internals import raises_synchronously

log = Logger()

PREFIX = "wss"

MINIMUM_VERSIONS = {"1.2": TLSVersion.TLSv1_2, "1.3": TLSVersion.TLSv1_3}

# The ssl: endpoint's names for the same things, so that an ssl: string
# becomes a wss: string by changing its prefix.
_ALIASES = {"certKey": "certificate", "extraCertChain": "chain"}
_KEYWORDS = (
    "port", "certificate", "privateKey", "chain", "minimumVersion", "ciphers",
    "dhParameters", "interface", "backlog",
)


class TLSEndpointError(ConfigError):
    """
    A C{wss:} description that cannot be used: malformed, or naming files
    that cannot be read or do not fit together.

    @ivar description: the listen description.
    @ivar detail: what is wrong, naming the file when it is a file.
    """

    def __init__(self, description: str, detail: str) -> None:
        super().__init__(f"bad listen endpoint {description!r}: {detail}")
        self.description = description
        self.detail = detail


def split_description(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split an endpoint description into positional and keyword arguments by
    Twisted's rules, which only private functions of Twisted implement:
    unescaped C{:} separates arguments, the first unescaped C{=} of an
    argument makes it C{key=value}, and a backslash makes the next character
    literal. The first positional argument is the endpoint type.

    @raise ValueError: for a trailing backslash or a keyword given twice.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    key: str | None = None
    current: list[str] = []

    def finish() -> None:
        text = "".join(current)
        if key is None:
            args.append(text)
        elif key in kwargs:
            raise ValueError(f"{key}= is given twice")
        else:
            kwargs[key] = text

    characters = iter(description)
    for character in characters:
        if character == "\\":
            escaped = next(characters, None)
            if escaped is None:
                raise ValueError("it ends with a lone backslash")
            current.append(escaped)
        elif character == ":":
            finish()
            key, current = None, []
        elif character == "=" and key is None:
            key, current = "".join(current), []
        else:
            current.append(character)
    finish()
    return args, kwargs


def is_tls_description(description: str) -> bool:
    """
    Whether a listen description is a C{wss:} one, handled by this module
    rather than by Twisted's C{serverFromString}.
    """
    return description.partition(":")[0].strip().lower() == PREFIX


@attrs.frozen
class TLSListen:
    """
    A parsed C{wss:} description.

    @ivar certificate: PEM file of the certificate, possibly followed by its
        chain.
    @ivar private_key: PEM file of the unencrypted private key.
    @ivar chain: PEM file of further chain certificates, or C{None}.
    @ivar minimum_version: the lowest TLS version accepted.
    @ivar ciphers: an OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are
        not chosen this way), or C{None} for Twisted's default.
    @ivar dh_parameters: PEM file of Diffie-Hellman parameters, or C{None}.
    """

    description: str
    port: int
    certificate: str
    private_key: str
    chain: str | None = None
    minimum_version: Any = TLSVersion.TLSv1_2
    ciphers: str | None = None
    dh_parameters: str | None = None
    interface: str = ""
    backlog: int = 50

    @property
    def files(self) -> tuple[str, ...]:
        """
        Every file the certificate is loaded from, in a fixed order.
        """
        names = [self.certificate, self.private_key, self.chain, self.dh_parameters]
        return tuple(dict.fromkeys(name for name in names if name is not None))


def parse(description: str, backlog: int = 50) -> TLSListen:
    """
    Parse a C{wss:} description; files are not read.

    @param backlog: the listen backlog when the description sets none.
    @raise TLSEndpointError: saying what is wrong.
    """

    def fail(detail: str) -> TLSEndpointError:
        return TLSEndpointError(description, detail)

    try:
        args, kwargs = split_description(description)
    except ValueError as e:
        raise fail(str(e)) from None
    if args[0].strip().lower() != PREFIX:
        raise fail(f"not a {PREFIX}: description")
    values: dict[str, str] = {}
    for name, value in kwargs.items():
        canonical = _ALIASES.get(name, name)
        if canonical not in _KEYWORDS:
            hint = "; use minimumVersion=" if name == "sslmethod" else ""
            raise fail(
                f"unknown parameter {name}={hint} (known: {', '.join(_KEYWORDS)})"
            )
        if canonical in values:
            raise fail(f"{canonical}= is given twice")
        values[canonical] = value
    positional = args[1:]
    if len(positional) > 1:
        raise fail(f"one port expected before the parameters, not {positional!r}")
    if positional:
        if "port" in values:
            raise fail("the port is given twice")
        values["port"] = positional[0]
    if not values.get("port"):
        raise fail("a port is required, as in wss:8443:certificate=cert.pem")
    if not (values.get("certificate") or values.get("privateKey")):
        raise fail("certificate= (and privateKey= unless the certificate file holds it) "
                   "is required")
    try:
        port = int(values["port"])
        if not 0 <= port <= 65535:
            raise ValueError
    except ValueError:
        raise fail(f"port {values['port']!r} is not a port number") from None
    try:
        listen_backlog = int(values.get("backlog", backlog))
        if listen_backlog < 1:
            raise ValueError
    except ValueError:
        raise fail(f"backlog={values['backlog']} is not a whole number of 1 or more") from None
    version = values.get("minimumVersion", "1.2")
    if version not in MINIMUM_VERSIONS:
        raise fail(f"minimumVersion={version} is not one of {', '.join(MINIMUM_VERSIONS)}")
    for name in ("certificate", "privateKey", "chain", "dhParameters", "ciphers"):
        if name in values and not values[name]:
            raise fail(f"{name}= is empty")
    certificate = values.get("certificate") or values["privateKey"]
    return TLSListen(
        description=description,
        port=port,
        certificate=certificate,
        private_key=values.get("privateKey") or certificate,
        chain=values.get("chain"),
        minimum_version=MINIMUM_VERSIONS[version],
        ciphers=values.get("ciphers"),
        dh_parameters=values.get("dhParameters"),
        interface=values.get("interface", ""),
        backlog=listen_backlog,
    )


@attrs.frozen
class LoadedCertificate:
    """
    TLS options built from the files, and the leaf certificate they serve.
    """

    options: CertificateOptions
    leaf: x509.Certificate

    @property
    def subject(self) -> str:
        """
        The leaf's subject, as RFC 4514 text, for log lines.
        """
        return self.leaf.subject.rfc4514_string()

    @property
    def not_after(self) -> str:
        """
        When the leaf expires, ISO 8601 UTC, for log lines.
        """
        return self.leaf.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    @property
    def serial(self) -> str:
        """
        The leaf's serial number in hexadecimal, as C{openssl x509 -serial}
        shows it.
        """
        return f"{self.leaf.serial_number:X}"


_PRIVATE_KEY = re.compile(
    rb"-----BEGIN ([A-Z ]*PRIVATE KEY)-----\r?\n.+?-----END \1-----", re.DOTALL
)


def _read(path: str, role: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"cannot read {role} file {path}: {e.strerror}") from None


def _certificates(path: str, role: str) -> list[x509.Certificate]:
    data = _read(path, role)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ValueError(f"{role} file {path} holds no PEM certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ValueError(f"{role} file {path} holds a bad PEM certificate: {e}") from None


def _private_key(path: str) -> Any:
    match = _PRIVATE_KEY.search(_read(path, "private key"))
    if match is None:
        raise ValueError(f"private key file {path} holds no PEM private key")
    try:
        return serialization.load_pem_private_key(match.group(0), password=None)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"private key file {path} holds a key that cannot be used "
            f"(it must be unencrypted): {e}"
        ) from None


def _public(key: Any) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load(listen: TLSListen) -> LoadedCertificate:
    """
    Read the files of a C{wss:} description and build its TLS options.

    The OpenSSL context is built here, not at the first handshake, so that
    every error shows now.

    @raise ValueError: saying what is wrong, naming the file.
    """
    certificates = _certificates(listen.certificate, "certificate")
    leaf, chain = certificates[0], certificates[1:]
    key = _private_key(listen.private_key)
    if _public(key.public_key()) != _public(leaf.public_key()):
        raise ValueError(
            f"the private key in {listen.private_key} does not match the certificate "
            f"in {listen.certificate}"
        )
    if listen.chain is not None:
        chain += _certificates(listen.chain, "chain")
    dh_parameters = None
    if listen.dh_parameters is not None:
        _read(listen.dh_parameters, "dhParameters")
        dh_parameters = DiffieHellmanParameters.fromFile(FilePath(listen.dh_parameters))
    ciphers = None
    if listen.ciphers is not None:
        try:
            ciphers = AcceptableCiphers.fromOpenSSLCipherString(listen.ciphers)
        except SSL.Error as e:
            raise ValueError(f"ciphers={listen.ciphers} is not a cipher string: {e}") from None
    try:
        options = CertificateOptions(
            # pyOpenSSL (24.3 on) takes cryptography's objects, and
            # deprecates its own.
            privateKey=key,
            certificate=leaf,
            extraCertChain=chain,
            raiseMinimumTo=listen.minimum_version,
            acceptableCiphers=ciphers,
            dhParameters=dh_parameters,
        )
    except ValueError as e:
        if ciphers is not None and "cipher" in str(e):
            raise ValueError(
                f"ciphers={listen.ciphers} selects no cipher this OpenSSL supports"
            ) from None
        raise
    try:
        options.getContext()
    except SSL.Error as e:
        if ciphers is not None and "no cipher match" in str(e):
            raise ValueError(
                f"ciphers={listen.ciphers} selects no cipher this OpenSSL supports"
            ) from None
        where = f" (dhParameters file {listen.dh_parameters})" if dh_parameters else ""
        raise ValueError(f"OpenSSL refused the TLS settings{where}: {e}") from None
    return LoadedCertificate(options, leaf)


def _signature(paths: Iterable[str]) -> tuple:
    """
    What identifies the files' current contents without reading them:
    device, inode, size and modification time of each (following symbolic
    links, so that certbot's C{live/} links moving to new files count).
    """
    result = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError as e:
            result.append((path, e.errno))
        else:
            result.append((path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
    return tuple(result)


@implementer(IOpenSSLServerConnectionCreator)
class ReloadingCertificate:
    """
    The TLS connection creator of one C{wss:} listener: each new connection
    gets the options current at its start, and L{reload} replaces them.

    @ivar listen: the parsed description.
    @ivar current: the options and certificate in use.
    """

    def __init__(self, listen: TLSListen, clock: Any) -> None:
        """
        Load the certificate now.

        @param clock: an C{IReactorTime}, to warn about a certificate that is
            not yet or no longer valid.
        @raise TLSEndpointError: if the files cannot be used.
        """
        self.listen = listen
        self._clock = clock
        signature = _signature(listen.files)
        try:
            self.current = load(listen)
        except ValueError as e:
            raise TLSEndpointError(listen.description, str(e)) from None
        # The signature last tried (loaded or failed), and the one seen at
        # the last check; see check().
        self._tried = self._seen = signature
        self._warn_if_not_valid()

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        """
        A server connection on the current certificate; established
        connections keep the context they were made with.
        """
        return SSL.Connection(self.current.options.getContext(), None)

    def reload(self) -> bool:
        """
        Load the files again and use them for new connections; on failure,
        keep the current certificate and log an error naming the file.

        @return: whether the new files are in use.
        """
        signature = _signature(self.listen.files)
        self._tried = self._seen = signature
        try:
            loaded = load(self.listen)
        except ValueError as e:
            log.error(
                "TLS certificate for {endpoint} not reloaded, still serving serial "
                "{serial}: {error}",
                endpoint=self._name, serial=self.current.serial, error=str(e),
            )
            return False
        except Exception:
            log.failure("TLS certificate for {endpoint} not reloaded", endpoint=self._name)
            return False
        self.current = loaded
        log.info(
            "TLS certificate for {endpoint} reloaded from {path}: {subject}, serial "
            "{serial}, valid until {not_after}",
            endpoint=self._name, path=self.listen.certificate, subject=loaded.subject,
            serial=loaded.serial, not_after=loaded.not_after,
        )
        self._warn_if_not_valid()
        return True

    def check(self) -> bool:
        """
        One step of the file watch: reload when the files changed and then
        stayed the same since the previous check, so that a renewal caught
        half-written (a new certificate beside the old key) is not tried.

        @return: whether a reload was tried.
        """
        signature = _signature(self.listen.files)
        if signature == self._tried or signature != self._seen:
            self._seen = signature
            return False
        self.reload()
        return True

    def log_serving(self) -> None:
        """
        Log which certificate the listener serves.
        """
        log.info(
            "TLS on {endpoint}: {subject}, serial {serial}, valid until {not_after}",
            endpoint=self._name, subject=self.current.subject,
            serial=self.current.serial, not_after=self.current.not_after,
        )

    @property
    def _name(self) -> str:
        return f"{PREFIX}:{self.listen.port}"

    def _warn_if_not_valid(self) -> None:
        now = datetime.fromtimestamp(self._clock.seconds(), UTC)
        leaf = self.current.leaf
        if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
            log.warn(
                "TLS certificate {path} is not valid now: valid from {not_before} "
                "until {not_after}",
                path=self.listen.certificate, not_before=leaf.not_valid_before_utc.isoformat(),
                not_after=leaf.not_valid_after_utc.isoformat(),
            )


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    Listens for TLS over C{reactor.listenTCP}: so the reactor given (such as
    L{rustorium.output.listening_reactor}) decides the TCP transport under
    TLS.
    """

    def __init__(
        self, reactor: Any, port: int, creator: IOpenSSLServerConnectionCreator,
        backlog: int = 50, interface: str = "",
    ) -> None:
        self._reactor = reactor
        self._port = port
        self._creator = creator
        self._backlog = backlog
        self._interface = interface

    def listen(self, protocolFactory: Any) -> defer.Deferred:
        """
        Listen on TCP with C{protocolFactory} wrapped in TLS; the reactor is
        the clock TLS schedules its buffered writes on.
        """
        return defer.execute(
            self._reactor.listenTCP,
            self._port,
            TLSMemoryBIOFactory(self._creator, False, protocolFactory, clock=self._reactor),
            backlog=self._backlog,
            interface=self._interface,
        )


def server_endpoint(
    reactor: Any, description: str, backlog: int = 50
) -> tuple[IStreamServerEndpoint, ReloadingCertificate] | None:
    """
    The endpoint for a C{wss:} listen description and its reloadable
    certificate, loaded now; C{None} for any other description (for
    Twisted's C{serverFromString}).

    @param backlog: the listen backlog when the description sets none.
    @raise TLSEndpointError: for a bad description or unusable files.
    """
    if not is_tls_description(description):
        return None
    listen = parse(description, backlog)
    certificate = ReloadingCertificate(listen, reactor)
    endpoint = TLSServerEndpoint(
        reactor, listen.port, certificate, listen.backlog, listen.interface
    )
    return endpoint, certificate


def check_description(description: str) -> None:
    """
    Check a C{wss:} description and its files, for option-time errors.

    @raise TLSEndpointError: saying what is wrong, naming the file.
    """
    listen = parse(description)
    try:
        load(listen)
    except ValueError as e:
        raise TLSEndpointError(description, str(e)) from None


class CertificateReloadService(MultiService):
    """
    Reloads the certificates of the C{wss:} listeners when their files
    change (checked every C{interval} seconds by one timer), and on SIGHUP
    if asked to (for the main program, not a host application that owns
    its signals; L{reload} is the way for such a host).
    """

    name = "tls-reload"

    def __init__(
        self, certificates: Sequence[ReloadingCertificate], reactor: Any, interval: float,
        sighup: bool = False,
    ) -> None:
        super().__init__()
        self._certificates = tuple(certificates)
        self._reactor = reactor
        self._sighup = sighup
        self._previous_handler: Any = None
        self._handler: Any = None
        timer = TimerService(interval, self._check)
        timer.clock = reactor
        timer.setServiceParent(self)

    def reload(self) -> None:
        """
        Reload every certificate from its files now.
        """
        for certificate in self._certificates:
            certificate.reload()

    def _check(self) -> None:
        # An exception would stop the timer for good; log it instead.
        for certificate in self._certificates:
            try:
                certificate.check()
            except Exception:
                log.failure("TLS certificate watch failed for {path}",
                            path=certificate.listen.certificate)

    def startService(self) -> None:
        super().startService()
        for certificate in self._certificates:
            certificate.log_serving()
        if self._sighup:
            self._install_handler()

    def stopService(self) -> Any:
        self._uninstall_handler()
        return super().stopService()

    def _install_handler(self) -> None:
        # signal.signal works only in the main thread; SIGHUP is POSIX-only.
        if not hasattr(signal, "SIGHUP"):
            return
        if threading.current_thread() is not threading.main_thread():
            log.warn("not reloading TLS certificates on SIGHUP: not in the main thread")
            return
        previous = signal.getsignal(signal.SIGHUP)

        def on_sighup(signum: int, frame: Any) -> None:
            # A signal handler runs between two bytecodes of whatever the
            # main thread is doing; reload on the reactor instead.
            self._reactor.callFromThread(self._reload_on_signal)
            if callable(previous):
                previous(signum, frame)

        self._previous_handler = previous
        self._handler = on_sighup
        signal.signal(signal.SIGHUP, on_sighup)

    def _uninstall_handler(self) -> None:
        handler, self._handler = self._handler, None
        # Put back what was there, unless someone replaced ours since.
        if handler is not None and signal.getsignal(signal.SIGHUP) is handler:
            previous = self._previous_handler
            signal.signal(signal.SIGHUP, previous if previous is not None else signal.SIG_DFL)

    def _reload_on_signal(self) -> None:
        log.info("SIGHUP: reloading TLS certificates")
        self.reload()


def listening_service(endpoint: IStreamServerEndpoint, factory: Any) -> Any:
    """
    A service listening on C{endpoint}, whose failure to listen stops
    start-up as C{strports.service} does: Twisted's, told so by its private
    C{_raiseSynchronously}, or where that attribute no longer works (see
    L{rustorium.internals}), L{EndpointListeningService}.
    """
    if not raises_synchronously():
        return EndpointListeningService(endpoint, factory)
    service = StreamServerEndpointService(endpoint, factory)
    service._raiseSynchronously = True
    return service


class EndpointListeningService(Service):
    """
    C{StreamServerEndpointService}'s job on the public endpoint API only:
    listen in C{privilegedStartService}, raising there when the endpoint
    fails at once (a port in use), log a later failure, and stop listening
    in C{stopService}.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Any) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self._listening: defer.Deferred | None = None
        self._starting = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        raised: list[Any] = []

        def failed(failure: Any) -> None:
            if self._starting:
                raised.append(failure)
            elif not failure.check(defer.CancelledError):
                log.failure("Listening on {endpoint} failed", failure, endpoint=self.endpoint)

        self._starting = True
        try:
            self._listening = self.endpoint.listen(self.factory)
            self._listening.addErrback(failed)
        finally:
            self._starting = False
        if raised:
            raised[0].raiseException()

    def startService(self) -> None:
        if self._listening is None:
            self.privilegedStartService()
        super().startService()

    def stopService(self) -> defer.Deferred:
        listening, self._listening = self._listening, None
        super().stopService()
        if listening is None:
            return defer.succeed(None)
        listening.cancel()
        return listening.addCallback(lambda port: port and port.stopListening())

