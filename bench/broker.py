"""
The Redis broker's own costs: how fast one node publishes, and what a node
pays per update it receives.

Starts a throwaway ``redis-server`` on a free loopback port (nothing on
disk; never the machine's own Redis), then measures, each for a bounded
time:

``publish``
    One node publishes batches of 10 updates (10 market keys), with 1
    publish call in flight (each waits for the previous: latency-bound)
    and with 64 in flight (calls made while one is in flight share the
    next script call). Figures: updates/s, batches/s, script calls.
``receive``
    A second process publishes batches of 10 as fast as it can while this
    one listens to the 10 keys; the listener's CPU time (user + system)
    per update received, and updates/s received.
``decode``
    The subscriber connection alone, fed recorded pub/sub bytes: CPU per
    update from bytes to a framed ``Update``, with a no-op ``prepare`` and
    with the server's (the Autobahn frame).

Run from the repository root: ``python bench/broker.py [--seconds 5]``.
Needs ``redis-server`` and rustorium's dependencies (txredisapi, hiredis).
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 10
KEYS = [f"market_data:M{i}/USD" for i in range(BATCH)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(directory: str) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory, "--logfile", f"{directory}/redis.log"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return process, port
        except OSError:
            time.sleep(0.02)
    process.kill()
    sys.exit("redis-server did not start")


class Ceiling:
    """
    Stands for the database's durable ceiling (reservations are instant);
    started from the clock so that each process's blocks lie above the
    previous one's.
    """

    def __init__(self) -> None:
        self.ceiling = time.time_ns() // 1000

    def reserve(self, count: int) -> int:
        self.ceiling += count
        return self.ceiling


def make_broker(reactor, url: str, name: str, prepare=lambda payload: payload):
    from rustorium.broker.redis import RedisBroker

    return RedisBroker(reactor, url, name, prepare, Ceiling().reserve)


def batch(i: int):
    from rustorium.broker import Publication

    return [Publication("market_data", key, {"symbol": key[12:], "price": f"{i}.{j:02d}",
                                             "volume_24h": "123456.78"})
            for j, key in enumerate(KEYS)]


def publish_for(reactor, broker, seconds: float, in_flight: int):
    """
    Publish batches with C{in_flight} calls outstanding for C{seconds};
    fires with (batches, elapsed).
    """
    from twisted.internet.defer import Deferred

    done: Deferred = Deferred()
    state = {"sent": 0, "acked": 0, "outstanding": 0}
    started = time.perf_counter()
    deadline = started + seconds

    def send() -> None:
        while state["outstanding"] < in_flight and time.perf_counter() < deadline:
            state["outstanding"] += 1
            state["sent"] += 1
            broker.publish(batch(state["sent"])).addCallbacks(acked, failed)

    def acked(_: object) -> None:
        state["outstanding"] -= 1
        state["acked"] += 1
        if time.perf_counter() < deadline:
            send()
        elif state["outstanding"] == 0 and not done.called:
            done.callback((state["acked"], time.perf_counter() - started))

    def failed(failure) -> None:
        if not done.called:
            done.errback(failure)

    send()
    return done


def run_publish(url: str, seconds: float) -> list[dict]:
    from twisted.internet import defer, reactor

    results = []

    @defer.inlineCallbacks
    def main():
        broker = make_broker(reactor, url, "bench-publisher")
        yield broker.start()
        yield publish_for(reactor, broker, 0.5, 8)  # warm up
        for in_flight in (1, 64):
            calls_before = broker._publishing.commits
            batches, elapsed = yield publish_for(reactor, broker, seconds, in_flight)
            results.append({
                "figure": "publish", "in_flight": in_flight, "batches": batches,
                "updates_per_s": round(batches * BATCH / elapsed),
                "batches_per_s": round(batches / elapsed),
                "script_calls": broker._publishing.commits - calls_before,
            })
        yield broker.stop()

    run(reactor, main)
    return results


def publisher_process(url: str, seconds: float) -> None:
    """
    The child process of the receive measurement: publish as fast as
    possible, print the count.
    """
    from twisted.internet import defer, reactor

    @defer.inlineCallbacks
    def main():
        broker = make_broker(reactor, url, "bench-child")
        yield broker.start()
        print("ready", flush=True)
        batches, elapsed = yield publish_for(reactor, broker, seconds, 64)
        print(json.dumps({"batches": batches, "elapsed": elapsed}), flush=True)
        yield broker.stop()

    run(reactor, main)


def run_receive(url: str, seconds: float) -> dict:
    from twisted.internet import defer, reactor

    result: dict = {}

    @defer.inlineCallbacks
    def main():
        from rustorium.websocket import prepare_frame

        broker = make_broker(reactor, url, "bench-listener", prepare_frame)
        counts = {"updates": 0, "batches": 0, "first": None, "last": None}

        def on_updates(updates):
            now = (time.perf_counter(), time.process_time())
            if counts["first"] is None:
                counts["first"] = now
            counts["last"] = now
            counts["updates"] += len(updates)
            counts["batches"] += 1

        broker.on_updates = on_updates
        yield broker.start()
        for key in KEYS:
            yield broker.listen(key)
        child = subprocess.Popen(
            [sys.executable, __file__, "--publisher", url, "--seconds", str(seconds)],
            stdout=subprocess.PIPE, text=True,
        )
        # Wait for the child to finish while the reactor runs.
        while child.poll() is None:
            yield deferLater(reactor, 0.05)
        report = json.loads(child.stdout.read().splitlines()[-1])
        yield deferLater(reactor, 0.5)  # the last updates in transit
        (wall0, cpu0), (wall1, cpu1) = counts["first"], counts["last"]
        updates = counts["updates"]
        result.update({
            "figure": "receive", "published": report["batches"] * BATCH, "received": updates,
            "received_per_s": round(updates / (wall1 - wall0)),
            "cpu_us_per_update": round((cpu1 - cpu0) / updates * 1e6, 2),
            "updates_per_on_updates_call": round(updates / counts["batches"], 1),
        })
        yield broker.stop()

    run(reactor, main)
    return result


def deferLater(reactor, seconds):
    from twisted.internet.task import deferLater as later

    return later(reactor, seconds, lambda: None)


def run_decode(count: int = 200_000) -> list[dict]:
    """
    Feed recorded pub/sub messages straight to the subscriber connection.
    """
    from twisted.internet import reactor

    from rustorium.broker.redislink import SubscriberProtocol
    from rustorium.websocket import prepare_frame

    payload = (b'{"id":"msg_%d","type":"update","data":{"channel":"market_data",'
               b'"symbol":"M1/USD","price":"1.01","volume_24h":"123456.78",'
               b'"timestamp":"2026-01-01T00:00:00.000000Z"}}')
    messages = []
    for i in range(count):
        channel = f"rustorium:updates:{KEYS[i % BATCH]}".encode()
        body = b"%d 1767225600.123 1 " % i + payload % i
        messages.append(b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n"
                        % (len(channel), channel, len(body), body))
    data = b"".join(messages)
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    results = []
    for name, prepare in (("none", lambda payload: payload), ("autobahn", prepare_frame)):
        broker = make_broker(reactor, "redis://127.0.0.1:1/0", "bench-decode", prepare)
        for key in KEYS:
            channel = broker.keys.updates(key).encode()
            broker._channels[channel] = key
        received = []
        broker.on_updates = received.extend
        protocol = SubscriberProtocol(charset=None, convertNumbers=False)
        protocol.receiver = broker
        started = time.process_time()
        for chunk in chunks:
            protocol.dataReceived(chunk)
        elapsed = time.process_time() - started
        assert len(received) == count
        results.append({"figure": "decode", "prepare": name,
                        "cpu_us_per_update": round(elapsed / count * 1e6, 2)})
    return results


def run(reactor, main) -> None:
    def go():
        d = main()
        d.addErrback(lambda f: (f.printTraceback(), None))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--publisher", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--phase", choices=["publish", "receive", "decode"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publisher:
        publisher_process(args.publisher, args.seconds)
        return
    if args.phase:
        # One phase per process: a Twisted reactor runs once.
        if args.phase == "publish":
            figures = run_publish(args.url, args.seconds)
        elif args.phase == "receive":
            figures = [run_receive(args.url, args.seconds)]
        else:
            figures = run_decode()
        for figure in figures:
            print(json.dumps(figure), flush=True)
        return
    with tempfile.TemporaryDirectory() as directory:
        process, port = start_redis(directory)
        url = f"redis://127.0.0.1:{port}/0"
        try:
            print(f"redis-server on 127.0.0.1:{port}; {args.seconds} s per measurement")
            for phase in ("publish", "receive", "decode"):
                out = subprocess.run(
                    [sys.executable, __file__, "--phase", phase, "--url", url,
                     "--seconds", str(args.seconds)],
                    check=True, capture_output=True, text=True, env=dict(os.environ),
                ).stdout
                for line in out.splitlines():
                    if line.startswith("{"):
                        print(line)
        finally:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
