"""
``rustorium feed prices``: reading the CSV, numbering by time, batching and
pacing, retrying what the server could not take, and the progress shown.
"""

import io
from email.message import Message
from urllib.error import HTTPError, URLError

import orjson
import pytest

from rustorium import pricefeed
from rustorium.pricefeed import FeedError, Progress, Row, Sender, paced, read_rows, replay

CSV = """timestamp,symbol,price
2026-11-26T10:00:00Z,MTK/USD,1.25
2026-11-26T10:00:00.5Z,RST/USD,3.5,12
1795687201,MTK/USD,1.26
"""


def test_read_rows():
    rows = list(read_rows(io.StringIO(CSV)))
    assert [(r.symbol, r.price, r.volume, r.line) for r in rows] == [
        ("MTK/USD", "1.25", None, 2), ("RST/USD", "3.5", "12", 3), ("MTK/USD", "1.26", None, 4)]
    assert rows[1].at - rows[0].at == 0.5
    assert rows[2].at == 1795687201.0


@pytest.mark.parametrize("text", ["1,MTK/USD,1\nyesterday,MTK/USD,1\n", "1,MTK/USD\n",
                                  "1,a,b,c,d\n", "2026-11-26T10:00:00,MTK/USD,1\n",
                                  "x,y,z\n1,MTK/USD\n"])
def test_bad_lines(text):
    with pytest.raises(FeedError) as raised:
        list(read_rows(io.StringIO(text)))
    assert raised.value.args[0].startswith("line ")


def test_entries_are_numbered_by_time():
    """
    The sequence number is the timestamp in microseconds: later prices of a
    market get higher numbers, and the same file sent twice the same ones.
    """
    row = Row(1795687200.25, "MTK/USD", "1.25", "3")
    assert row.entry() == {"symbol": "MTK/USD", "price": "1.25", "seq": 1795687200250000,
                           "timestamp": "2026-11-26T10:00:00.250000Z", "volume": "3"}
    assert row.entry(1795687300.0)["seq"] == 1795687300000000


class FakeServer:
    """
    Answers posts from a script: an answer dict, or an exception to raise.
    """

    def __init__(self, monkeypatch, *answers):
        self.answers = list(answers)
        self.bodies = []
        monkeypatch.setattr(pricefeed, "urlopen", self.urlopen)

    def urlopen(self, request, timeout):
        self.bodies.append(orjson.loads(request.data))
        assert request.headers["Authorization"] == "Bearer rk_feed"
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return io.BytesIO(orjson.dumps(answer))


def http_error(code, retry_after=None):
    headers = Message()
    if retry_after:
        headers["Retry-After"] = retry_after
    body = io.BytesIO(orjson.dumps({"error": {"code": "x", "message": f"status {code}"}}))
    return HTTPError("http://x/api/v1/prices", code, "no", headers, body)


def test_batches_and_progress(monkeypatch):
    server = FakeServer(monkeypatch, {"accepted": 2, "stale": 0}, {"accepted": 0, "stale": 1})
    out = io.StringIO()
    rows = list(read_rows(io.StringIO(CSV)))
    progress = Progress(len(rows), out)
    replay(rows, Sender("http://127.0.0.1:8765", "rk_feed"), progress, batch=2)
    assert [len(b["prices"]) for b in server.bodies] == [2, 1]
    assert (progress.accepted, progress.stale) == (2, 1)
    assert out.getvalue().splitlines() == [
        "2/3 prices sent, 2 accepted, 0 stale",
        "3/3 prices sent, 2 accepted, 1 stale",
    ]


def test_retries_what_the_server_could_not_take(monkeypatch):
    """
    429 (after Retry-After), 503 and a dropped connection are tried again;
    a refusal retrying cannot cure stops the replay.
    """
    server = FakeServer(monkeypatch, http_error(429, "3"), http_error(503),
                        URLError("connection refused"), {"accepted": 1, "stale": 0})
    slept = []
    sender = Sender("http://h:1/api/v1/", "rk_feed", sleep=slept.append)
    assert sender.url == "http://h:1/api/v1/prices"
    assert sender.post([{"symbol": "MTK/USD"}]) == (1, 0)
    assert slept == [3.0, 1.0, 2.0]
    assert len(server.bodies) == 4
    FakeServer(monkeypatch, http_error(400))
    with pytest.raises(FeedError) as raised:
        sender.post([{"symbol": "MTK/USD"}])
    assert "refused the prices (400): status 400" in str(raised.value)


def test_gives_up(monkeypatch):
    FakeServer(monkeypatch, *[http_error(503)] * pricefeed.ATTEMPTS)
    with pytest.raises(FeedError) as raised:
        Sender("http://h:1", "rk_feed", sleep=lambda s: None).post([{}])
    assert "gave up" in str(raised.value)


def test_paced_at_the_recorded_speed():
    """
    Paced, each price leaves when its time (scaled by the speed) has come,
    those due together in one batch.
    """
    now = [100.0]
    rows = [Row(at, "MTK/USD", "1") for at in (0.0, 0.0, 1.0, 3.0)]

    def sleep(seconds):
        now[0] += seconds

    sent = [(now[0], len(batch)) for batch in paced(rows, 2.0, lambda: now[0], sleep)]
    assert sent == [(100.0, 2), (100.5, 1), (101.5, 1)]


def test_restamped(monkeypatch):
    server = FakeServer(monkeypatch, {"accepted": 2, "stale": 0})
    rows = [Row(5.0, "MTK/USD", "1"), Row(1.0, "MTK/USD", "2")]
    replay(rows, Sender("http://h:1", "rk_feed"), Progress(2, io.StringIO()), restamp=True,
           clock=lambda: 1000.0)
    seqs = [p["seq"] for p in server.bodies[0]["prices"]]
    assert seqs == [1000000000, 1000000001]


def test_command_line(monkeypatch, tmp_path, capsys):
    from rustorium.cli import main

    FakeServer(monkeypatch, {"accepted": 3, "stale": 0})
    path = tmp_path / "prices.csv"
    path.write_text(CSV)
    monkeypatch.setenv("RUSTORIUM_API_KEY", "rk_feed")
    assert main(["feed", "prices", str(path)]) == 0
    assert "Sent 3 prices: 3 accepted, 0 stale." in capsys.readouterr().err
    monkeypatch.delenv("RUSTORIUM_API_KEY")
    assert main(["feed", "prices", str(path)]) == 2
    assert main(["feed", "prices", str(tmp_path / "missing.csv"), "--api-key", "k"]) == 1
    assert "cannot read" in capsys.readouterr().err
