"""
Autobahn's debug lines, formatted only when they are logged.

Autobahn's WebSocket protocol formats the arguments of some debug lines
before it calls its logger: every new connection C{pformat}s its ~40
protocol options (C{_connectionMade}) and C{hltype}s a few methods, about
0.3 ms of CPU per connection, for lines that txaio drops unless Autobahn
logs at debug level. That is a third of a node's work when thousands of
clients reconnect to it at once (a node died: C{bench/run.py --scenarios
clusterstorm}). L{install} makes those two names of Autobahn's protocol
module format only while its logger is at debug (or trace) level, and
leaves everything else as it was; where a later Autobahn no longer has
them, it changes nothing.
"""

from typing import Any

from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket import protocol

_NAMES = ("pformat", "hltype")
_VERBOSE = frozenset({"debug", "trace"})
_originals: dict[str, Any] = {}


def debugging() -> bool:
    """
    Whether Autobahn's WebSocket protocol logs its debug lines (a logger
    of unknown shape counts as yes: then everything is formatted as before).
    """
    return getattr(WebSocketServerProtocol.log, "_log_level", "debug") in _VERBOSE


def _only_when_debugging(name: str, original: Any) -> Any:
    def format_if_logged(value: Any) -> str:
        if debugging():
            return original(value)
        return f"({name} skipped: Autobahn is not logging at debug level)"

    format_if_logged.__name__ = f"{name}_if_debugging"
    format_if_logged.__wrapped__ = original  # type: ignore[attr-defined]
    return format_if_logged


def install() -> bool:
    """
    Make Autobahn's protocol module format debug arguments only when
    they are logged (once; later calls do nothing). Returns whether both
    names were found and replaced.
    """
    found = 0
    for name in _NAMES:
        current = getattr(protocol, name, None)
        if current is None or not callable(current):
            continue
        found += 1
        if name not in _originals:
            _originals[name] = current
            setattr(protocol, name, _only_when_debugging(name, current))
    return found == len(_NAMES)


def uninstall() -> None:
    """
    Put Autobahn's own functions back (for tests).
    """
    for name, original in _originals.items():
        setattr(protocol, name, original)
    _originals.clear()
