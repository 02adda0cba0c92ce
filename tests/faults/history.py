"""
The history of a fault scenario: every operation of the workload and every
fault, in the order they happened, as plain JSON-ready dictionaries, so a
failing run can be saved and read again, and a test can plant a fault in
a copy.

Each event has C{t} (seconds on the monotonic clock) and C{kind}:

- C{fault}: C{what} the test did (C{"SIGKILL node-b"}).
- C{stop}: the workload stopped (every subscriber live, the senders done).
- Subscribers (C{client}, and C{conn}, the connection's number): C{connect}
  (C{node}), C{connect_failed} (C{node}, C{status} of a refused handshake or
  C{error}), C{sent} (C{message}), C{received} (C{message}: every message
  but heartbeats), C{live} (its subscriptions made or resumed), C{closed}
  (C{code}, C{reason}, C{by}: C{"server"}, C{"client"}, or C{"network"} when
  the test severed it).
- Senders (C{sender}, C{op}: the transfer's number, C{attempt}):
  C{invoke} (C{node}, C{request}: its data, idempotency key included),
  C{reply} (C{message}), C{lost} (C{error}: no reply, the outcome unknown),
  C{abandoned} (the workload stopped before the transfer was settled).
- Readers (C{reader}): C{read} (C{request}, C{message} or C{error},
  C{latency}).
"""

import json
import threading
import time
from pathlib import Path
from typing import Any


class History:
    """
    Events, appended from any thread.
    """

    def __init__(self, events: list[dict] | None = None) -> None:
        self.events: list[dict] = [] if events is None else events
        self._lock = threading.Lock()

    def record(self, kind: str, **fields: Any) -> dict:
        event = {"t": time.monotonic(), "kind": kind, **fields}
        with self._lock:
            self.events.append(event)
        return event

    def fault(self, what: str) -> float:
        """
        Record a fault the test injects now; its time.
        """
        return self.record("fault", what=what)["t"]

    def of(self, kind: str, **match: Any) -> list[dict]:
        return [e for e in self.events
                if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())]

    def copy(self) -> "History":
        return History(json.loads(json.dumps(self.events)))

    def save(self, path: Path) -> None:
        with open(path, "w") as f:
            for event in self.events:
                f.write(json.dumps(event) + "\n")

    @classmethod
    def load(cls, path: Path) -> "History":
        with open(path) as f:
            return cls([json.loads(line) for line in f])
