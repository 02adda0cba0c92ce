"""
A client that stops reading: the server's memory stays bounded, other
subscribers are unaffected, and past the lossless bound the slow one is
closed with 4101.
"""

import base64
import json
import os
import socket
import struct
import time

from tests.integration.client import Client

ALICE = "0xa11ce00000000000000000000000000000000001"
CAROL = "0x" + "c" * 40
MTK = "0x00000000000000000000000000000000004d544b"
SYMBOLS = ["MTK/USD", "STK/USD", "RST/USD"]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def masked(payload: bytes) -> bytes:
    mask = os.urandom(4)
    header = struct.pack("!BB", 0x81, 0x80 | 126) + struct.pack("!H", len(payload))
    if len(payload) < 126:
        header = struct.pack("!BB", 0x81, 0x80 | len(payload))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def stalled_client(port: int, key: str) -> socket.socket:
    """
    A raw WebSocket client with a tiny receive buffer that subscribes and
    then reads nothing.
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    nonce = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET /v1?api_key={key} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert b" 101 " in response.split(b"\r\n")[0], response
    for data in ({"channel": "market_data", "symbols": SYMBOLS},
                 {"channel": "transaction_updates", "address": CAROL}):
        sock.sendall(masked(json.dumps({"type": "subscribe", "data": data}).encode()))
    return sock


def close_code(sock: socket.socket, timeout: float = 10.0) -> int | None:
    """
    Read what the server sends until its close frame; the close code.
    """
    sock.settimeout(timeout)
    buffer = b""
    while True:
        while len(buffer) >= 2:
            opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    break
                length, offset = struct.unpack("!H", buffer[2:4])[0], 4
            elif length == 127:
                if len(buffer) < 10:
                    break
                length, offset = struct.unpack("!Q", buffer[2:10])[0], 10
            if len(buffer) < offset + length:
                break
            if opcode == 8:
                return struct.unpack("!H", buffer[offset:offset + 2])[0]
            buffer = buffer[offset + length:]
        try:
            chunk = sock.recv(1 << 20)
        except (TimeoutError, ConnectionResetError):
            return None
        if not chunk:
            return None
        buffer += chunk


def test_slow_reader(start_server):
    server = start_server("--tick-interval", "0.01", "--max-backlog", "65536",
                          "--send-buffer", "16384",
                          "--rate-limit", "5000", "--rate-burst", "5000",
                          "--key-rate-limit", "5000", "--key-rate-burst", "5000")
    key = server.demo_key()
    pid = server.process.pid
    with Client(server.url, key) as watcher:
        watcher.request("subscribe", {"channel": "market_data", "symbols": SYMBOLS})
        stalled = stalled_client(server.port, key)
        time.sleep(1.0)
        baseline = rss_kib(pid)
        started = time.monotonic()
        received = 0
        while time.monotonic() - started < 4:
            if watcher.receive()["type"] == "update":
                received += 1
        grown = rss_kib(pid) - baseline
        # About 400 ticks of 3 markets went by: the watcher got them all
        # while the stalled reader, conflated, held at most one per market.
        assert received > 3 * 300, received
        assert grown < 10 * 1024, f"RSS grew by {grown} KiB"

        # Lossless transaction updates past max-backlog close it with 4101.
        with Client(server.url, key) as payer:
            for n in range(600):
                payer.send({"id": n, "type": "execute_transaction",
                            "data": {"from": ALICE, "to": CAROL, "amount": "0.01",
                                     "token_id": MTK}})
            for _ in range(600):
                payer.until(lambda m: m["type"] in ("transaction_response", "error"))
        assert close_code(stalled) == 4101
        assert watcher.request("ping")["type"] == "pong"
    stalled.close()
    assert "it reads too slowly" in server.output()
