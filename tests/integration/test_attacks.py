"""
Attacks on the real server's resources, each from loopback, bounded in count
and time: what one client or one key can take stays bounded, and another
client's round trip stays short meanwhile.
"""

import socket
import statistics
import struct
import threading
import time

import pytest

from tests.integration.client import Client, http_get
from tests.integration.raw import (
    CONTINUATION,
    PING,
    TEXT,
    close_code,
    frame,
    handshake_request,
    raw_client,
    read_frames,
)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def round_trip_ms(client: Client, count: int = 20) -> float:
    """
    The median time of a C{ping} request's reply.
    """
    times = []
    for n in range(count):
        started = time.perf_counter()
        assert client.request("ping", request_id=f"rtt{n}")["type"] == "pong"
        times.append((time.perf_counter() - started) * 1000)
        time.sleep(0.01)
    return statistics.median(times)


def test_handshakes_closed_during_the_key_lookup_free_their_slots(start_server):
    """
    Clients that close right after sending their handshake, while the key
    is being looked up, do not keep the key's connection slots: afterwards
    the key still opens as many connections as allowed.
    """
    server = start_server("--max-connections-per-key", "3")
    key = server.demo_key()
    for _ in range(200):
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(handshake_request(key))
    deadline = time.monotonic() + 10
    while True:
        clients = []
        try:
            clients = [Client(server.url, key) for _ in range(3)]
            break
        except Exception:
            # Lookups of the closed ones may still be finishing.
            assert time.monotonic() < deadline, "the key stayed locked out"
            time.sleep(0.2)
        finally:
            for client in clients:
                client.close()


def test_reply_to_a_good_request_arrives_before_the_close_of_a_bad_frame(server):
    """
    A valid C{ping} request and a frame with a reserved opcode in one TCP
    write: the pong arrives, then the close (1002, protocol error).
    """
    sock = raw_client(server.port, server.demo_key())
    sock.sendall(frame(b'{"id": "p", "type": "ping"}') + frame(b"", opcode=0x3))
    frames = []
    for opcode, payload in read_frames(sock, 5):
        frames.append((opcode, payload))
        if opcode == 8:
            break
    sock.close()
    kinds = [opcode for opcode, _ in frames]
    assert TEXT in kinds and 8 in kinds, frames
    assert kinds.index(TEXT) < kinds.index(8)
    assert b'"pong"' in frames[kinds.index(TEXT)][1]
    assert struct.unpack("!H", frames[kinds.index(8)][1][:2])[0] == 1002


def metric(server, name: str) -> float:
    for line in http_get(f"http://127.0.0.1:{server.port}/metrics").decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def flood(sock: socket.socket, data: bytes, stop: threading.Event, seconds: float = 10.0) -> int:
    """
    Send C{data} over and over until C{stop} is set, C{seconds} pass, or the
    server stops reading or closes; how many times it was sent.
    """
    sock.settimeout(0.5)
    sent = 0
    deadline = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            sock.sendall(data)
        except OSError:
            break
        sent += 1
    return sent


def test_pinging_without_reading_is_closed_as_a_slow_consumer(start_server):
    """
    A client that pings and never reads: the pongs count against
    max-backlog, so it is closed with 4101 instead of growing the server's
    memory with every pong.
    """
    server = start_server("--max-backlog", "65536", "--send-buffer", "16384",
                          "--frame-rate", "1000000", "--frame-burst", "1000000")
    key = server.demo_key()
    sock = raw_client(server.port, key, receive_buffer=4096)
    baseline = rss_kib(server.process.pid)
    pings = frame(b"p" * 125, opcode=PING) * 500
    for _ in range(80):  # 40,000 pings: 5 MB of pongs
        sock.sendall(pings)
    grown = rss_kib(server.process.pid) - baseline
    assert close_code(sock) == 4101
    sock.close()
    assert grown < 3 * 1024, f"RSS grew by {grown} KiB"
    assert metric(server, "rustorium_slow_consumers_total") == 1
    with Client(server.url, key) as other:
        assert other.request("ping")["type"] == "pong"


FLOODS = {
    "pings": frame(b"", opcode=PING) * 1000,
    "empty continuation frames": frame(b"", opcode=CONTINUATION, fin=False) * 1000,
    "heartbeat responses": frame(b'{"type": "heartbeat_response", "data": {}}') * 1000,
}


@pytest.mark.parametrize("kind", sorted(FLOODS))
def test_frame_flood_is_closed_and_others_keep_their_round_trip(start_server, kind):
    """
    A flood of cheap frames (each costs the server a parse and counts
    against nothing else) is closed with 4008 once past the frame budget,
    and meanwhile another client's round trip stays short.
    """
    server = start_server("--rate-limit", "1000", "--rate-burst", "1000")
    key = server.demo_key()
    with Client(server.url, key) as other:
        quiet = round_trip_ms(other)
        sock = raw_client(server.port, key)
        start = frame(b"", opcode=TEXT, fin=False) if kind == "empty continuation frames" else b""
        sock.sendall(start)
        stop = threading.Event()
        flooder = threading.Thread(target=flood, args=(sock, FLOODS[kind], stop))
        flooder.start()
        try:
            loaded = round_trip_ms(other)
        finally:
            stop.set()
            flooder.join()
        assert close_code(sock) == 4008
        sock.close()
        assert loaded < max(50.0, 5 * quiet), (quiet, loaded)
    assert metric(server, "rustorium_frame_floods_total") == 1


def test_a_key_in_the_url_fragment_never_reaches_the_default_log(server):
    """
    A key sent in the request line's fragment (``/v1#api_key=KEY``, which no
    browser sends but a hand-made client may) appears neither in the access
    log nor in Autobahn's warning about the fragment, in the default
    ``twistd -n`` log.
    """
    canary = "rk_" + "C4nary" * 7 + "x"
    for target in (f"/v1#api_key={canary}", f"/v1?api_key={canary}#{canary}",
                   f"/healthz#api_key={canary}", f"/v1#{canary}"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            request = handshake_request(canary).replace(
                f"GET /v1?api_key={canary} ".encode(), f"GET {target} ".encode()
            )
            sock.sendall(request)
            response = sock.recv(65536)
            assert response.startswith(b"HTTP/1.1 "), response
    with Client(server.url, server.demo_key()) as client:
        client.request("ping")
    time.sleep(0.5)
    output = server.output()
    assert "GET /healthz" in output, output
    assert "fragment" in output, output
    assert "C4nary" not in output, output


def server_closed(sock: socket.socket) -> bool:
    """
    Whether the server has closed (or reset) this connection.
    """
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


def test_slowloris_closed_at_the_handshake_deadline(start_server):
    """
    Clients trickling their handshake a byte at a time (each byte resetting
    twisted.web's idle timeout) are closed handshake-timeout after they
    connected, while an honest client connects and is served.
    """
    server = start_server("--handshake-timeout", "2")
    key = server.demo_key()
    request = handshake_request(key)
    tricklers = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(20)]
    started = time.monotonic()
    try:
        sent = 0
        while time.monotonic() - started < 5 and not all(map(server_closed, tricklers)):
            for sock in tricklers:
                try:
                    sock.send(request[sent:sent + 1])
                except OSError:
                    pass
            sent += 1
            time.sleep(0.25)
        closed_after = time.monotonic() - started
        assert all(map(server_closed, tricklers)), "trickling clients were kept open"
        assert closed_after < 4, closed_after
        with Client(server.url, key) as client:
            assert client.request("ping")["type"] == "pong"
    finally:
        for sock in tricklers:
            sock.close()
    assert metric(server, "rustorium_handshake_timeouts_total") >= 20


def test_connections_past_max_connections_are_closed_at_accept(start_server):
    server = start_server("--max-connections", "20")
    with Client(server.url, server.demo_key()) as client:
        client.request("ping")  # the start-up probe's connection is gone now
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(30)]
    try:
        time.sleep(0.5)
        closed = [server_closed(sock) for sock in held]
        assert closed.count(True) == 10, closed
    finally:
        for sock in held:
            sock.close()
    with Client(server.url, server.demo_key()) as client:
        assert client.request("ping")["type"] == "pong"
    refused = 'rustorium_connections_refused_total{reason="max-connections"}'
    assert metric(server, refused) >= 10
    assert "Refused a connection from 127.0.0.1" in server.output()


def test_one_address_cannot_take_every_handshake(start_server):
    """
    Connections from one address that send nothing are capped by
    max-handshakes-per-address; another address still connects.
    """
    server = start_server("--max-handshakes-per-address", "10")
    with Client(server.url, server.demo_key()) as client:
        client.request("ping")  # the start-up probe's connection is gone now
    held = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(15)]
    try:
        time.sleep(0.5)
        closed = [server_closed(sock) for sock in held]
        assert closed.count(True) == 5, closed
        with socket.socket() as other:
            other.bind(("127.0.0.2", 0))
            other.connect(("127.0.0.1", server.port))
            other.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            other.settimeout(5)
            assert other.recv(65536).startswith(b"HTTP/1.1 200")
    finally:
        for sock in held:
            sock.close()
    with Client(server.url, server.demo_key()) as client:
        assert client.request("ping")["type"] == "pong"
