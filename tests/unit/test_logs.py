"""
Log observers: secrets never reach the output.
"""

import io
import json

import pytest
from twisted.logger import Logger

from rustorium.logs import RedactingObserver, json_observer, redact

KEY = "rk_9sH3kd83JdkS0dke93kd93kDKd93kdkd93kDk3kd9"


@pytest.mark.parametrize(
    "text",
    [
        f"GET /v1?api_key={KEY} HTTP/1.1",
        "GET /v1?x=1&api_key=secret&y=2 HTTP/1.1",
        f"Authorization: Bearer {KEY}",
        f"key {KEY} refused",
    ],
)
def test_redact(text):
    cleaned = redact(text)
    assert KEY not in cleaned
    assert "secret" not in cleaned
    assert "<redacted>" in cleaned


def test_observer_cleans_fields_and_format():
    events = []
    log = Logger(observer=RedactingObserver(events.append))
    log.info("request {line}", line=f"GET /v1?api_key={KEY}")
    log.info("plain {n}", n=3)
    assert KEY not in repr(events)
    assert events[1]["n"] == 3


def test_shown_secret_passes():
    events = []
    log = Logger(observer=RedactingObserver(events.append))
    log.info("demo {demo_key}", demo_key=KEY, show_secret=True)
    assert events[0]["demo_key"] == KEY


def test_json_lines(monkeypatch):
    """
    The JSON observer writes exactly one JSON object per line, multi-line
    messages included, with keys redacted unless shown on purpose.
    """
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    log = Logger(observer=json_observer())
    log.info("Connection opened: {peer} with key {key}", peer="tcp4:127.0.0.1:1", key="bot")
    log.info("request {line}", line=f"GET /v1?api_key={KEY}")
    log.info("two\nlines {demo_key}", demo_key=KEY, show_secret=True)
    lines = out.getvalue().split("\n")
    assert lines.pop() == ""
    events = [json.loads(line) for line in lines]
    assert len(events) == 3
    assert events[0]["peer"] == "tcp4:127.0.0.1:1"
    assert events[0]["key"] == "bot"
    assert KEY not in lines[1]
    assert events[2]["demo_key"] == KEY
