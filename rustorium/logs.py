"""
Log observers for ``twistd --logger``: JSON lines for log shippers, or
text, both with secrets redacted.

    twistd -n --logger=rustorium.logs.json_observer rustorium
    twistd -n --logger=rustorium.logs.text_observer rustorium

The server never logs an API key itself (except the demo key, once, when it
is created), but libraries may: Autobahn's debug logging prints the request
line, query string included. These observers cut anything that looks like a
key (C{rk_...}, C{api_key=...}, C{Bearer ...}) out of every event, unless
the event is marked C{show_secret=True}.
"""

import re
import sys
from typing import Any

from twisted.logger import (
    ILogObserver,
    formatEventAsClassicLogText,
    jsonFileLogObserver,
    textFileLogObserver,
)
from zope.interface import implementer

_SECRETS = re.compile(
    r"(?P<key>rk_[A-Za-z0-9_-]{8,})"
    r"|(?P<query>api_key=)[^&\s\"']+"
    r"|(?P<bearer>[Bb]earer )[^\s\"']+"
)


def redact(text: str) -> str:
    """
    Replace every API key in C{text} with a placeholder.
    """

    def replace(match: re.Match) -> str:
        if match.group("key"):
            return "rk_<redacted>"
        return (match.group("query") or match.group("bearer")) + "<redacted>"

    return _SECRETS.sub(replace, text)


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes):
        return redact(value.decode("utf-8", "replace")).encode("utf-8")
    return value


@implementer(ILogObserver)
class RedactingObserver:
    """
    Passes each event on with secrets cut out of its fields and of its
    formatted text.
    """

    def __init__(self, observer: ILogObserver) -> None:
        self._observer = observer

    def __call__(self, event: dict) -> None:
        if event.get("show_secret"):
            self._observer(event)
            return
        clean = {key: _redacted(value) for key, value in event.items()}
        text = formatEventAsClassicLogText(event)
        if text is not None and _SECRETS.search(text):
            # The secret came in through formatting: log the cleaned text.
            clean["log_format"] = "{log_text}"
            clean["log_text"] = redact(text.split("] ", 1)[-1].rstrip("\n"))
        self._observer(clean)


def json_observer() -> ILogObserver:
    """
    One JSON object per line on standard output (C{twisted.logger}'s
    event format, readable back with C{eventsFromJSONLogFile}), without
    the RFC 7464 record separator Twisted puts before each by default, so
    that every line is JSON to C{json.loads}, C{jq} and log shippers.
    """
    return RedactingObserver(jsonFileLogObserver(sys.stdout, recordSeparator=""))


def text_observer() -> ILogObserver:
    """
    Twisted's classic text format on standard output.
    """
    return RedactingObserver(textFileLogObserver(sys.stdout))
