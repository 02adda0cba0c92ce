"""
The ``twistd rustorium`` command: its options and its service.

Every setting of L{rustorium.config.SETTINGS} is a flag here and a key in
the TOML file named by ``--config``; flags win over the file, the file over
the defaults.
"""

import sys
from typing import Any

from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from . import __version__, tls
from .collector import CollectorService
from .config import SETTINGS, ConfigError, Settings, load_toml
from .genesis import GenesisError, load_genesis
from .service import ListenError, RustoriumService
from .storage import DatabaseURLError, SchemaError, engine_from_url
from .storage.lock import DatabaseLockError
from .workers import WorkerSupervisor


def _help(setting) -> str:
    default = setting.default
    if isinstance(default, tuple):
        default = " ".join(default)
    if default is None or default == "":
        return setting.help
    return f"{setting.help} [default: {default}]"


class Options(usage.Options):
    """
    Options of ``twistd rustorium``.
    """

    synopsis = "[options]"
    longdesc = (
        f"Run the Rustorium WebSocket API server (rustorium {__version__}). Every "
        "option can also be set in a TOML file given with --config (keys are the "
        "option names)."
    )
    optParameters = [
        ["config", "c", None, "TOML file of settings (flags win over it)."],
    ] + [
        [setting.name, None, None, _help(setting)]
        for setting in SETTINGS
        if setting.name != "listen"
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self._failed = False

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError:
            self._failed = True
            raise

    def getUsage(self, width: int | None = None) -> str:
        """
        The options' help; after a usage error, one line pointing to it.
        twistd prints this before the error's message (and it is 70-odd
        lines), which would bury the message.
        """
        if self._failed:
            return "Run 'twistd rustorium --help' for the options."
        return super().getUsage(width)

    def opt_version(self) -> None:
        """
        Print the version of rustorium and exit.
        """
        print(f"rustorium {__version__}")
        sys.exit(0)

    def opt_listen(self, endpoint: str) -> None:
        """
        Twisted server endpoint string to listen on, such as tcp:8765,
        ssl:8443:privateKey=key.pem:certKey=cert.pem or
        wss:8443:certificate=cert.pem:privateKey=key.pem (repeatable)
        [default: tcp:8765:interface=127.0.0.1]
        """
        self["listen"].append(endpoint)

    def postOptions(self) -> None:
        flags = {s.name: self.get(s.name) for s in SETTINGS}
        flags["listen"] = self["listen"] or None
        try:
            if self["config"]:
                self.settings = Settings.from_sources(
                    flags, load_toml(self["config"]), origin={1: f"{self['config']}: "}
                )
            else:
                self.settings = Settings.from_sources(flags)
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None
        self._check(self.settings)

    @staticmethod
    def _check(settings: Settings) -> None:
        """
        Fail now, with a usage message, on what would fail at start-up.
        """
        if settings.workers > 1 and (
            settings.broker == "local" or settings.database.startswith("sqlite:")
        ):
            raise usage.UsageError(
                f"--workers {settings.workers} needs state the workers can share: set "
                "--broker redis://HOST:PORT/DB and --database postgresql://USER@HOST/DB "
                "(docs/operations.rst, Running a cluster), or run one worker"
            )
        try:
            engine_from_url(settings.database)
            if settings.genesis is not None:
                load_genesis(settings.genesis)
        except (DatabaseURLError, GenesisError) as e:
            raise usage.UsageError(str(e)) from None
        from twisted.internet import reactor

        for endpoint in settings.listen:
            if tls.is_tls_description(endpoint):
                try:
                    tls.check_description(endpoint)
                except tls.TLSEndpointError as e:
                    raise usage.UsageError(
                        f"bad --listen endpoint {endpoint!r}: {e.detail}"
                    ) from None
                continue
            try:
                serverFromString(reactor, endpoint)
            except Exception as e:
                raise usage.UsageError(f"bad --listen endpoint {endpoint!r}: {e}") from None


def _child_twistd_args(argv: list[str]) -> list[str]:
    """
    The twistd options of this command line that worker processes need
    too (the logger and the reactor), from the arguments before the
    plugin name.
    """
    try:
        end = argv.index("rustorium")
    except ValueError:
        return []
    kept = []
    arguments = iter(argv[1:end])
    for argument in arguments:
        name = argument.split("=", 1)[0]
        if name in ("--logger", "--reactor", "-r"):
            kept.append(argument)
            if "=" not in argument:
                kept.append(next(arguments, ""))
    return kept


class _CommandService(RustoriumService):
    """
    The service as ``twistd rustorium`` runs it: an endpoint that cannot
    listen ends the process with one line, not twistd's traceback; the
    process is the server's, so full garbage collections are paced for it
    (L{CollectorService}).
    """

    def __init__(self, settings: Settings, reactor: Any) -> None:
        super().__init__(settings, reactor)
        CollectorService(reactor).setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenError as e:
            raise SystemExit(f"rustorium: {e}") from None


def makeService(options: Options, reactor: Any = None) -> "RustoriumService | WorkerSupervisor":
    """
    The service ``twistd rustorium`` runs: the server, or with
    C{--workers} above 1, the supervisor of its worker processes. What
    stops the server's start-up (a bad genesis or database, a database
    another server holds, a port it cannot listen on) ends the process
    with one line.
    """
    if reactor is None:
        from twisted.internet import reactor
    if options.settings.workers > 1:
        return WorkerSupervisor(options.settings, reactor, _child_twistd_args(sys.argv))
    try:
        return _CommandService(options.settings, reactor)
    except (GenesisError, SchemaError, DatabaseURLError, DatabaseLockError) as e:
        raise SystemExit(f"rustorium: {e}") from None
