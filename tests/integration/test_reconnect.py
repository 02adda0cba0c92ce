"""
Reconnect against the real server: a client whose TCP connection dies
mid-stream resumes with replay and, compared with a client that stayed
connected, misses nothing and sees nothing twice.
"""

import socket
import time

from tests.integration.client import Client


def number(message):
    return int(message["id"][4:])


def updates_until(client, deadline):
    """
    The update ids received until a monotonic deadline.
    """
    numbers = []
    while time.monotonic() < deadline:
        try:
            message = client.receive(max(0.01, deadline - time.monotonic()))
        except TimeoutError:
            break
        if message["type"] == "update":
            numbers.append(number(message))
    return numbers


def test_dropped_connection_resumes_without_gap(start_server):
    server = start_server("--tick-interval", "0.05")
    key = server.demo_key()
    subscribe = {"channel": "market_data", "symbols": ["MTK/USD"]}
    with Client(server.url, key) as observer:
        observer.request("subscribe", subscribe)
        observer.until(lambda m: m["type"] == "update")
        first = Client(server.url, key)
        subscription_id = first.request("subscribe", subscribe)["data"]["subscription_id"]
        before = updates_until(first, time.monotonic() + 0.5)
        # Kill the TCP connection without a closing handshake.
        first.ws.socket.shutdown(socket.SHUT_RDWR)
        first.ws.socket.close()
        time.sleep(1.0)
        with Client(server.url, key) as second:
            reply = second.request("reconnect", {"last_message_id": f"msg_{before[-1]}",
                                                 "subscriptions": [subscription_id]})
            assert reply["data"]["recovered"] is True, reply
            assert reply["data"]["replayed"] >= 15
            after = updates_until(second, time.monotonic() + 0.5)
        updates_until(observer, time.monotonic() + 0.3)
    # Each client's first update is its own snapshot, with a fresh id.
    received = before[1:] + after
    assert received == sorted(set(received)), "duplicates or disorder"
    watched = [number(m) for m in observer.received[2:] if m["type"] == "update"]
    assert received == [n for n in watched if received[0] <= n <= received[-1]]
