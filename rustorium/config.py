"""
Server settings: one table of every setting, read from flags and a TOML file.

Each setting has one hyphenated name, used both as the ``twistd rustorium``
flag (``--tick-interval``) and as the TOML key (``tick-interval = 1``).
Precedence: flags, then the TOML file given by ``--config``, then the
defaults below. ``etc/rustorium.toml`` documents every setting.
"""

import tomllib
from collections.abc import Callable, Mapping
from typing import Any

import attrs

DEFAULT_LISTEN = "tcp:8765:interface=127.0.0.1"


class ConfigError(ValueError):
    """
    A setting with a bad value, or a TOML file that cannot be used; the
    message names the setting.
    """


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a number")
    try:
        number = float(value)
    except ValueError:
        raise ValueError("must be a number") from None
    if not 0 <= number < float("inf"):
        raise ValueError("must be a number, zero or more")
    return number


def _positive_seconds(value: object) -> float:
    number = _seconds(value)
    if number <= 0:
        raise ValueError("must be more than zero")
    return number


def _count(value: object) -> int:
    number = _integer(value)
    if number < 1:
        raise ValueError("must be at least 1")
    return number


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _optional_text(value: object) -> str | None:
    if value is None or value == "":
        return None
    return _text(value)


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("must be a whole number")
    try:
        return int(value)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "off", "0"):
        return False
    raise ValueError("must be true or false")


def normalise_origin(origin: str) -> str:
    """
    An origin as compared with the allow-list: lower case, without the
    scheme's default port (C{https://App.example.com:443} is
    C{https://app.example.com}).
    """
    origin = origin.strip().lower()
    for scheme, port in (("https://", ":443"), ("http://", ":80")):
        if origin.startswith(scheme) and origin.endswith(port):
            return origin[: -len(port)]
    return origin



def _origins(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list | tuple) or not all(
        (isinstance(v, str) and "://" in v) or v == "null" for v in value
    ):
        raise ValueError('must be a list of origins such as "https://app.example.com"')
    return tuple(normalise_origin(v) for v in value)


def _whole(value: object) -> int:
    number = _integer(value)
    if number < 0:
        raise ValueError("must be zero or more")
    return number


def _broker(value: object) -> str:
    text = _text(value)
    if text != "local" and not text.startswith(("redis://", "rediss://")):
        raise ValueError('must be "local" or a URL such as "redis://127.0.0.1:6379/0"')
    return text


MARKET_SOURCES = ("simulator", "external")


def _market_source(value: object) -> str:
    if value not in MARKET_SOURCES:
        raise ValueError(f"must be one of {', '.join(MARKET_SOURCES)}")
    return str(value)


def _endpoints(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(
        isinstance(v, str) and v for v in value
    ):
        raise ValueError("must be a list of endpoint strings such as \"tcp:8765\"")
    return tuple(value)


@attrs.frozen
class Setting:
    """
    One configurable setting.

    @ivar name: the flag and TOML key, hyphenated.
    @ivar parse: turns a flag string or TOML value into the typed value, or
        raises L{ValueError} saying what is expected.
    @ivar help: one line for ``--help`` and ``etc/rustorium.toml``.
    """

    name: str
    parse: Callable[[object], Any]
    help: str

    @property
    def default(self) -> Any:
        """
        The value when neither flag nor file sets it: the L{Settings}
        field's default, written only there.
        """
        return attrs.fields_dict(Settings)[self.attribute].default

    @property
    def attribute(self) -> str:
        """
        The L{Settings} attribute name (underscored).
        """
        return self.name.replace("-", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("listen", _endpoints,
            "Twisted server endpoint strings to listen on (repeatable flag)."),
    Setting("database", _text,
            "Database URL: sqlite:PATH or postgresql://USER@HOST:PORT/DATABASE."),
    Setting("broker", _broker,
            "Where nodes share message numbers, history and subscriptions: local "
            "(this process only) or redis://HOST:PORT/DB (a cluster)."),
    Setting("node-name", _optional_text,
            "This node's name in the cluster (default: host and process id)."),
    Setting("workers", _count,
            "Worker processes sharing the listening ports on this host (more than 1 "
            "needs a redis:// broker and a postgresql:// database)."),
    Setting("reuse-port", _boolean,
            "Listen with SO_REUSEPORT so several processes share a port (set for each "
            "worker by --workers)."),
    Setting("genesis", _optional_text,
            "Genesis JSON file for an empty database (default: the built-in demo)."),
    Setting("heartbeat-interval", _positive_seconds,
            "Seconds between heartbeat messages."),
    Setting("heartbeat-timeout", _positive_seconds,
            "Seconds of client silence before the connection is closed "
            "(default: three heartbeat intervals)."),
    Setting("tick-interval", _seconds,
            "Seconds between market ticks (0: every reactor turn)."),
    Setting("block-interval", _positive_seconds,
            "Seconds between blocks that confirm pending transactions."),
    Setting("commit-batch", _count,
            "Most accepted transactions sharing one database commit (1: a commit each)."),
    Setting("market-seed", _integer,
            "Seed of the markets' random walk; the same seed gives the same prices."),
    Setting("market-source", _market_source,
            "What moves prices: simulator (a random walk) or external (only prices posted "
            "to POST /api/v1/prices)."),
    Setting("resume-window", _positive_seconds,
            "Seconds a lost connection's subscriptions stay resumable with reconnect."),
    Setting("history-size", _count,
            "Updates retained per channel key for replay on reconnect."),
    Setting("history-age", _positive_seconds,
            "Seconds an update is retained for replay on reconnect."),
    Setting("allowed-origins", _origins,
            "Origins browsers may connect from (exact match); empty allows any. "
            "Clients that send no Origin (non-browsers) are always allowed."),
    Setting("max-connections", _whole,
            "TCP connections open at once on the server's own ports; more are refused "
            "at accept (0: the open-file limit less 100)."),
    Setting("max-handshakes-per-address", _whole,
            "Connections from one IP address still sending their HTTP request; more are "
            "refused at accept (0: no limit)."),
    Setting("max-connections-per-key", _whole,
            "Open connections allowed per API key (0: no limit); more get HTTP 429."),
    Setting("max-subscriptions", _count,
            "Active subscriptions allowed per connection."),
    Setting("rate-limit", _positive_seconds,
            "Messages per second allowed per connection (token bucket refill rate)."),
    Setting("rate-burst", _count,
            "Messages a connection may send at once (token bucket size)."),
    Setting("key-rate-limit", _positive_seconds,
            "Messages per second allowed per API key across all its connections "
            "(token bucket refill rate, kept across reconnects)."),
    Setting("key-rate-burst", _count,
            "Messages an API key's connections may send at once together (token bucket size)."),
    Setting("max-detached-per-key", _count,
            "Subscriptions of lost connections kept resumable per API key; past it the "
            "oldest expire first."),
    Setting("flood-limit", _count,
            "Rate-limited messages within 10 seconds after which a connection is closed (4008)."),
    Setting("frame-rate", _positive_seconds,
            "WebSocket frames per second allowed per connection, of every kind (pings, "
            "pongs and continuation frames included; token bucket refill rate)."),
    Setting("frame-burst", _count,
            "Frames a connection may send at once (token bucket size); a connection past "
            "its frame budget is closed (4008)."),
    Setting("max-message-size", _count,
            "Largest incoming message in bytes; larger ones close the connection (1009)."),
    Setting("max-backlog", _count,
            "Bytes of transaction updates and replies held for a client that reads too "
            "slowly; past it the connection is closed (4101)."),
    Setting("send-buffer", _whole,
            "Kernel send buffer per connection in bytes (SO_SNDBUF; 0: the system's)."),
    Setting("write-through", _boolean,
            "Send to the socket at once when nothing is buffered (faster fan-out)."),
    Setting("handshake-timeout", _positive_seconds,
            "Seconds a client has, from connecting, to complete the WebSocket opening "
            "handshake (TLS, HTTP request and upgrade in all)."),
    Setting("close-timeout", _positive_seconds,
            "Seconds to wait for a closing handshake before dropping the connection."),
    Setting("backlog", _count,
            "Listen backlog for tcp: and ssl: endpoints that do not set backlog=."),
    Setting("http-rate-limit", _positive_seconds,
            "HTTP API requests per second allowed per API key (token bucket refill rate)."),
    Setting("http-rate-burst", _count,
            "HTTP API requests an API key may make at once (token bucket size)."),
    Setting("http-max-body", _count,
            "Largest HTTP API request body in bytes; larger ones get 413."),
    Setting("console", _boolean,
            "Serve the operator console at /admin/ (sign in with an admin key)."),
    Setting("console-session-lifetime", _positive_seconds,
            "Seconds a console sign-in lasts before the browser must sign in again."),
    Setting("key-check-interval", _positive_seconds,
            "Seconds between checks for revoked API keys of open connections."),
    Setting("tls-reload-interval", _positive_seconds,
            "Seconds between checks of wss: certificate files for a renewal."),
    Setting("tls-reload-signal", _boolean,
            "Reload wss: certificates on SIGHUP."),
)

SETTINGS_BY_NAME: Mapping[str, Setting] = {s.name: s for s in SETTINGS}


@attrs.frozen(kw_only=True)
class Settings:
    """
    The server's settings, parsed and validated; see L{SETTINGS} for each.
    """

    listen: tuple[str, ...] = (DEFAULT_LISTEN,)
    database: str = "sqlite:rustorium.db"
    broker: str = "local"
    node_name: str | None = None
    workers: int = 1
    reuse_port: bool = False
    genesis: str | None = None
    heartbeat_interval: float = 30.0
    heartbeat_timeout: float | None = None
    tick_interval: float = 1.0
    block_interval: float = 2.0
    commit_batch: int = 1000
    market_seed: int = 1
    market_source: str = "simulator"
    resume_window: float = 300.0
    history_size: int = 1000
    history_age: float = 300.0
    allowed_origins: tuple[str, ...] = ()
    max_connections: int = 0
    max_handshakes_per_address: int = 256
    max_connections_per_key: int = 0
    max_subscriptions: int = 100
    rate_limit: float = 10.0
    rate_burst: int = 10
    key_rate_limit: float = 100.0
    key_rate_burst: int = 200
    max_detached_per_key: int = 1000
    flood_limit: int = 50
    frame_rate: float = 500.0
    frame_burst: int = 2000
    max_message_size: int = 65536
    max_backlog: int = 1048576
    send_buffer: int = 0
    write_through: bool = True
    handshake_timeout: float = 10.0
    close_timeout: float = 5.0
    backlog: int = 4096
    http_rate_limit: float = 20.0
    http_rate_burst: int = 100
    http_max_body: int = 1048576
    console: bool = True
    console_session_lifetime: float = 8 * 3600.0
    key_check_interval: float = 5.0
    tls_reload_interval: float = 10.0
    tls_reload_signal: bool = True

    @property
    def silence_timeout(self) -> float:
        """
        Seconds of silence after which a connection is closed.
        """
        if self.heartbeat_timeout is not None:
            return self.heartbeat_timeout
        return 3 * self.heartbeat_interval

    @classmethod
    def from_sources(
        cls, *sources: Mapping[str, object], origin: Mapping[int, str] | None = None
    ) -> "Settings":
        """
        Build settings from mappings of hyphenated names to raw values, the
        first mapping that has a name winning (flags first, then the file).
        A value of C{None} counts as not set.

        @param origin: names for the sources in error messages, by position.
        @raise ConfigError: for an unknown name or a bad value.
        """
        values: dict[str, object] = {}
        for index, source in enumerate(sources):
            where = (origin or {}).get(index, "")
            for name, raw in source.items():
                setting = SETTINGS_BY_NAME.get(name)
                if setting is None:
                    raise ConfigError(f"{where}unknown setting {name!r}")
                if raw is None or setting.attribute in values:
                    continue
                try:
                    values[setting.attribute] = setting.parse(raw)
                except ValueError as e:
                    raise ConfigError(f"{where}setting {name!r} {e}") from None
        return cls(**values)


def load_toml(path: str) -> dict[str, object]:
    """
    Read a TOML settings file.

    @raise ConfigError: if it cannot be read or parsed.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
