"""
A raw WebSocket client over a plain socket, for tests that need what no
client library does: never read, never answer pings, send frames no
library would, or stop mid-handshake.
"""

import base64
import os
import socket
import struct

PING = 0x9
TEXT = 0x1
CONTINUATION = 0x0


def handshake_request(key: str, path: str = "/v1") -> bytes:
    nonce = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path}?api_key={key} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def frame(payload: bytes, opcode: int = TEXT, fin: bool = True) -> bytes:
    """
    A masked client frame.
    """
    mask = os.urandom(4)
    first = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        header = struct.pack("!BB", first, 0x80 | len(payload))
    else:
        header = struct.pack("!BBH", first, 0x80 | 126, len(payload))
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def raw_client(port: int, key: str, receive_buffer: int | None = None) -> socket.socket:
    """
    A raw WebSocket connection past its opening handshake.
    """
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(handshake_request(key))
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = sock.recv(1)
        assert chunk, response
        response += chunk
    assert b" 101 " in response.split(b"\r\n")[0], response
    return sock


def read_frames(sock: socket.socket, timeout: float = 10.0):
    """
    Yield (opcode, payload) of each server frame until the connection
    ends or C{timeout} passes with nothing received.
    """
    sock.settimeout(timeout)
    buffer = b""
    while True:
        while len(buffer) >= 2:
            opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
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
            yield opcode, buffer[offset:offset + length]
            buffer = buffer[offset + length:]
        try:
            chunk = sock.recv(1 << 20)
        except (TimeoutError, ConnectionResetError):
            return
        if not chunk:
            return
        buffer += chunk


def close_code(sock: socket.socket, timeout: float = 10.0) -> int | None:
    """
    The code of the server's close frame, reading past everything before
    it; C{None} if the connection ends or stalls without one.
    """
    for opcode, payload in read_frames(sock, timeout):
        if opcode == 8:
            return struct.unpack("!H", payload[:2])[0]
    return None
