"""
A small blocking WebSocket client for integration tests, on the
``websockets`` library's sync client: a real client stack, not ours. Every
message it receives is validated against ``docs/asyncapi.yaml``.
"""

import json
import time
from contextlib import ExitStack
from urllib.request import urlopen

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.asyncapi import validate_server_message


class Client:
    """
    A connection that sends requests and collects everything received.
    """

    def __init__(self, url: str, key: str | None = None, **kwargs) -> None:
        target = f"{url}?api_key={key}" if key else url
        self._stack = ExitStack()
        self.ws = self._stack.enter_context(connect(target, open_timeout=10, **kwargs))
        self.received: list[dict] = []

    def send(self, message) -> None:
        self.ws.send(message if isinstance(message, str | bytes) else json.dumps(message))

    def receive(self, timeout: float = 5.0) -> dict:
        """
        The next message, checked against the AsyncAPI document.
        """
        message = json.loads(self.ws.recv(timeout))
        validate_server_message(message)
        self.received.append(message)
        return message

    def request(self, kind: str, data: dict | None = None, request_id="r", timeout=5.0) -> dict:
        """
        Send a request and return its reply (the next message with its id),
        keeping anything else that arrives meanwhile in C{received}.
        """
        self.send({"id": request_id, "type": kind, "data": data or {}})
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(max(0.01, deadline - time.monotonic()))
            if message.get("id") == request_id and message["type"] != "update":
                return message

    def until(self, predicate, timeout: float = 5.0) -> dict:
        """
        Receive until a message matches C{predicate}; return it.
        """
        deadline = time.monotonic() + timeout
        while True:
            message = self.receive(max(0.01, deadline - time.monotonic()))
            if predicate(message):
                return message

    def wait_closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """
        Read until the server closes; return its close code and reason.
        """
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.receive(max(0.01, deadline - time.monotonic()))
        except ConnectionClosed:
            pass
        except TimeoutError:
            raise AssertionError("the server did not close the connection") from None
        return self.ws.close_code, self.ws.close_reason

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def http_get(url: str) -> bytes:
    """
    The body of a plain HTTP GET.
    """
    with urlopen(url, timeout=5) as response:
        return response.read()
