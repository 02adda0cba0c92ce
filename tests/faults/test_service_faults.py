"""
Redis and PostgreSQL failing under load: Redis killed and restarted empty
(scenario 4), PostgreSQL stopped and crashed (5), and one node cut off
from both by the network while its clients stay connected (6).
"""

import signal
import time

from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.faults.checker import close_codes, refused_handshakes
from tests.faults.history import History
from tests.faults.scenario import finish, resumes_after, wait_for, warm_up, workload
from tests.faults.test_node_faults import NODES, _seconds, _summary

HEARTBEAT_TIMEOUT = 10.0
"""The nodes' --heartbeat-timeout (tests/faults/cluster.py FAULT_FLAGS)."""


def handshake_status(url: str, key: str) -> int:
    """
    The HTTP status of a WebSocket opening handshake: 101 if accepted.
    """
    try:
        with connect(f"{url}?api_key={key}", open_timeout=5):
            return 101
    except InvalidStatus as e:
        return e.response.status_code


def connected_to(history: History, url: str, moment: float) -> set[str]:
    """
    The subscribers connected to C{url} at C{moment}.
    """
    where: dict[str, str | None] = {}
    for event in history.events:
        if event["t"] > moment or "client" not in event:
            continue
        if event["kind"] == "connect":
            where[event["client"]] = event["node"]
        elif event["kind"] == "closed":
            where[event["client"]] = None
    return {client for client, node in where.items() if node == url}


def test_redis_killed_and_restarted_empty(cluster, tmp_path, figures):
    """
    Scenario 4: Redis gets SIGKILL and comes back empty. Every node closes
    its connections with 4103, answers handshakes and health checks with
    503, reconnects by itself with backoff and publishes again in a new
    epoch; clients that come back are told honestly that their
    subscriptions expired (the registry went with Redis), never
    recovered: true, and get the current state when they subscribe
    again. Transfers acknowledged before and after are all confirmed.
    """
    cluster.start(NODES)
    history = History()
    load = workload(cluster, history).start()
    warm_up(load)
    dumps = [cluster.dump_redis()]
    killed_at = history.fault("SIGKILL Redis")
    cluster.redis.kill()
    nodes = list(cluster.nodes.values())
    wait_for(lambda: all(n.health() == 503 for n in nodes), 20,
             "every node failing its health check")
    unhealthy_after = time.monotonic() - killed_at
    assert {handshake_status(n.url, cluster.key) for n in nodes} == {503}
    time.sleep(2.0)
    restarted_at = history.fault("start Redis again, empty")
    cluster.redis.start()
    wait_for(lambda: all(n.health() == 200 for n in nodes), 30, "every node healthy again")
    healthy_after = time.monotonic() - restarted_at
    assert load.wait_live(60)
    load.wait_acknowledged(50)
    outcome = finish(cluster, load, history, dumps, tmp_path=tmp_path)
    outcome.report.assert_ok()

    closed = [e for e in history.of("closed", by="server") if e["t"] > killed_at]
    assert closed and {e["code"] for e in closed} == {4103}
    resumed = resumes_after(history, killed_at)
    assert resumed and not any(r["message"]["data"]["recovered"] for r in resumed)
    assert all(s["status"] == "expired" for r in resumed
               for s in r["message"]["data"]["subscriptions"])
    new_base = outcome.dumps[-1].base
    assert new_base > dumps[0].base
    published_again = [e["t"] for e in history.of("received")
                       if e["message"]["type"] == "update"
                       and int(e["message"]["id"][4:]) > new_base]
    assert published_again
    waits = _seconds([r["t"] - restarted_at for r in resumed])
    figures("4 Redis killed, restarted empty", {
        **_summary(outcome), "faults": 1,
        "all nodes 503 after s": round(unhealthy_after, 2),
        "nodes healthy after restart s": round(healthy_after, 2),
        "publishing again after restart s": round(min(published_again) - restarted_at, 2),
        "time to resume max s": waits["max"],
        "close codes": close_codes(history), "refused handshakes": refused_handshakes(history),
        "expired": outcome.report.figures["expired"],
    })


def test_postgresql_stopped_and_crashed(cluster, tmp_path, figures):
    """
    Scenario 5: PostgreSQL is stopped (a fast shutdown), started, then
    crashed (SIGKILL of the postmaster alone) and started. While it is
    down every transfer is answered at once with internal_error (never an
    acknowledgement, never left unanswered), and balance reads too; the
    health check fails; streams go on. When it is back the nodes serve
    again by themselves, and every transfer acknowledged before is there
    and confirmed.
    """
    cluster.start(NODES)
    history = History()
    load = workload(cluster, history, readers=2).start()
    warm_up(load)
    postgres = cluster.postgres
    nodes = list(cluster.nodes.values())
    outages = []
    for what, take_down in (("stop PostgreSQL (fast shutdown)", postgres.stop),
                            ("SIGKILL the PostgreSQL postmaster", postgres.crash)):
        history.fault(what)
        take_down()
        down_at = time.monotonic()
        wait_for(lambda: all(n.health() == 503 for n in nodes), 20,
                 "every node failing its health check")
        time.sleep(2.0)
        up_at = history.fault("start PostgreSQL again")
        postgres.start_again()
        started = time.monotonic()
        load.wait_acknowledged(20, timeout=60)
        outages.append((down_at, up_at, time.monotonic() - started))
    assert load.wait_live(30)
    outcome = finish(cluster, load, history, tmp_path=tmp_path)
    outcome.report.assert_ok()

    latencies = []
    for down_at, up_at, _ in outages:
        invokes = {(e["sender"], e["op"], e["attempt"]): e["t"] for e in history.of("invoke")
                   if down_at < e["t"] < up_at}
        assert invokes, "no transfer was sent while the database was down"
        answers = {(e["sender"], e["op"], e["attempt"]): e for e in history.events
                   if e["kind"] in ("reply", "lost") and e.get("sender") is not None}
        for attempt, sent in invokes.items():
            answer = answers.get(attempt)
            assert answer is not None and answer["kind"] == "reply", (attempt, answer)
            message = answer["message"]
            assert message["type"] == "error", ("acknowledged while the database was down",
                                                message)
            assert message["data"]["code"] == "internal_error", message
            latencies.append(answer["t"] - sent)
        reads = [e for e in history.of("read") if down_at < e["t"] - (e["latency"] or 0) < up_at]
        assert reads and all(e.get("message", {}).get("type") == "error" for e in reads), reads
    figures("5 PostgreSQL stopped, then crashed", {
        **_summary(outcome), "faults": 2,
        "refusal while down max s": round(max(latencies), 3),
        "transfers acknowledged again after s": [round(o[2], 2) for o in outages],
    })


def test_a_node_cut_off_from_redis_and_postgresql(host_cluster, namespace_host, tmp_path,
                                                  figures):
    """
    Scenario 6: one node loses Redis and PostgreSQL to the network (its
    services link cut: packets dropped, nothing reset) while its clients
    stay connected to it. Within the heartbeat timeout it closes them with
    4103 so that they resume on a healthy node, rather than serve them a
    stream that silently stopped; when the network is back it serves
    again by itself. Without network namespaces (not root, or no
    iproute2) Redis and PostgreSQL are frozen (SIGSTOP) instead, which
    cuts every node off; the test says so.
    """
    cluster = host_cluster
    host = namespace_host
    on_host = "node-c" if host is not None else None
    cluster.start(NODES, on_host=on_host)
    victim = cluster.nodes["node-c"]
    history = History()
    load = workload(cluster, history).start()
    warm_up(load)
    if host is not None:
        how = "network namespace: node-c's link to Redis and PostgreSQL cut"
        cut, heal = host.cut, host.heal
        watched = [victim]
    else:
        how = "fallback, no network namespaces: Redis and PostgreSQL frozen with SIGSTOP"
        print(f"scenario 6 falls back: {how}")

        def cut():
            cluster.redis.freeze()
            cluster.postgres.freeze()

        def heal():
            cluster.redis.thaw()
            cluster.postgres.thaw()

        watched = list(cluster.nodes.values())
    cut_at = history.fault(f"cut off ({how})")
    clients = set().union(*(connected_to(history, n.url, cut_at) for n in watched))
    assert clients, "no client on the node cut off"
    cut()

    def all_closed():
        closes = {e["client"]: e for e in history.of("closed", by="server")
                  if e["t"] > cut_at and e["client"] in clients}
        return closes if len(closes) == len(clients) else None

    closes = wait_for(all_closed, 60, "the cut-off node closing its clients")
    closed_within = max(e["t"] for e in closes.values()) - cut_at
    # Long enough for the leader to see the node gone (it stops announcing
    # itself) and detach its subscriptions, resumed elsewhere by now.
    time.sleep(8.0)
    healed_at = history.fault("network back")
    heal()
    for node in watched:
        wait_for(lambda node=node: node.health() == 200, 60, f"{node.name} healthy again")
    healthy_after = time.monotonic() - healed_at
    assert load.wait_live(60)
    load.wait_acknowledged(30)
    outcome = finish(cluster, load, history, tmp_path=tmp_path)
    outcome.report.assert_ok()
    assert {e["code"] for e in closes.values()} == {4103}
    assert closed_within < HEARTBEAT_TIMEOUT, closed_within
    figures("6 node cut off from Redis and PostgreSQL", {
        **_summary(outcome), "faults": 1, "how": how,
        "clients closed within s": round(closed_within, 2),
        "healthy again after s": round(healthy_after, 2),
    })
    assert signal  # the fallback freezes with SIGSTOP (hosts.py)
