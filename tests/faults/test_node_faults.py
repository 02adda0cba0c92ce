"""
Nodes killed and restarted under load: a node SIGKILLed (scenario 1), the
node producing blocks SIGKILLed mid-burst (2), a rolling restart (3), and
SIGTERM during a transfer burst (7). Each runs the recorded workload on
three nodes, checks the history (L{tests.faults.checker}) and prints what
it measured.
"""

import signal
import statistics
import time

from tests.faults.checker import check_ledger, check_streams, close_codes
from tests.faults.history import History
from tests.faults.plant import (
    apply_twice,
    drop_live_update,
    drop_replayed_update,
    duplicate_update,
    lose_acknowledged,
    swap_updates,
)
from tests.faults.scenario import Outcome, finish, resumes_after, wait_for, warm_up, workload

NODES = ["node-a", "node-b", "node-c"]


def _seconds(values: list[float]) -> dict:
    if not values:
        return {"max": None, "median": None}
    return {"max": round(max(values), 2), "median": round(statistics.median(values), 2)}


def assert_planted_faults_caught(outcome: Outcome) -> None:
    """
    The checker, passed on the real history, fails the same history with
    one update dropped from a replay or from a live stream, one received
    twice or two swapped, and the same ledger with one transfer applied
    twice or one acknowledged transfer gone.
    """
    history, ledger, dumps = outcome.history, outcome.ledger, outcome.dumps
    for planted, expected in (
        (drop_replayed_update(history), "never received"),
        (drop_live_update(history), "never received"),
        (duplicate_update(history), "twice"),
        (swap_updates(history), "after msg_"),
    ):
        violations = check_streams(planted, dumps).violations
        assert any(expected in v for v in violations), (expected, violations)
    acknowledged = next(e["message"]["data"]["transaction_id"] for e in history.of("reply")
                        if e["message"]["type"] == "transaction_response")
    for planted, expected in (
        (apply_twice(ledger), "applied 2 times"),
        (lose_acknowledged(ledger, acknowledged), "not stored"),
    ):
        violations = check_ledger(history, planted).violations
        assert any(expected in v for v in violations), (expected, violations)


def test_sigkill_of_a_node_under_load(cluster, tmp_path, figures):
    """
    Scenario 1: a node gets SIGKILL while its clients follow every stream
    and its senders transfer. Its clients reconnect to the other nodes and
    resume with every missed update replayed, recovered: true; its
    senders retry their unanswered transfer with the same idempotency key;
    nothing acknowledged is lost. The checker also fails this history
    with faults planted in it.
    """
    cluster.start(NODES)
    history = History()
    load = workload(cluster, history).start()
    warm_up(load)
    killed_at = history.fault("SIGKILL node-b")
    cluster.nodes["node-b"].stop(signal.SIGKILL)
    assert load.wait_live(60), "the killed node's clients did not resume elsewhere"
    load.wait_acknowledged(60)
    outcome = finish(cluster, load, history, tmp_path=tmp_path)
    outcome.report.assert_ok()
    resumed = resumes_after(history, killed_at)
    assert resumed, "no client was on the killed node"
    assert all(r["message"]["data"]["recovered"] for r in resumed)
    assert set(close_codes(history)) == {1006}
    waits = _seconds([r["t"] - killed_at for r in resumed])
    figures("1 SIGKILL of a node", {
        **_summary(outcome), "faults": 1,
        "time to resume max s": waits["max"], "time to resume median s": waits["median"],
    })
    assert_planted_faults_caught(outcome)


def test_sigkill_of_the_block_producer_mid_burst(cluster, tmp_path, figures):
    """
    Scenario 2: the node holding the lease for the market and the blocks
    gets SIGKILL while transfers stream in through every node. Another
    node takes the lease (it expires after two block intervals) and
    confirms every transfer the dead one had acknowledged; the market
    continues.
    """
    cluster.start(NODES)
    assert cluster.leader() == "node-a"
    history = History()
    load = workload(cluster, history, interval=0.03).start()
    warm_up(load)
    blocks_before = len(cluster.ledger().blocks)
    killed_wall = time.time()
    killed_at = history.fault("SIGKILL node-a (the block producer)")
    cluster.nodes["node-a"].stop(signal.SIGKILL)
    leader = cluster.wait_leader(other_than="node-a", timeout=30)
    led_at = time.monotonic()

    def block_after_kill():
        later = [at for _, at in cluster.ledger().blocks if at > killed_wall]
        return min(later) if later else None

    first_block = wait_for(block_after_kill, 30, "a block from another node")
    assert load.wait_live(60)
    load.wait_acknowledged(100)
    outcome = finish(cluster, load, history, tmp_path=tmp_path)
    outcome.report.assert_ok()
    assert len(outcome.ledger.blocks) > blocks_before
    figures("2 SIGKILL of the block producer", {
        **_summary(outcome), "faults": 1, "new leader": leader,
        "lease taken after s": round(led_at - killed_at, 2),
        "first block after s": round(first_block - killed_wall, 2),
    })


def test_rolling_restart(cluster, tmp_path, figures):
    """
    Scenario 3: every node in turn gets SIGTERM and is started again once
    it has exited. Each closes its connections with 4200 (reconnect at
    once); every client resumes, recovered: true, and nothing is lost or
    duplicated.
    """
    cluster.start(NODES)
    history = History()
    load = workload(cluster, history).start()
    warm_up(load)
    stops = []
    for name in NODES:
        node = cluster.nodes[name]
        stopped_at = history.fault(f"SIGTERM {name}")
        status = node.stop(signal.SIGTERM)
        assert status in (0, -signal.SIGTERM), node.output()
        stops.append(time.monotonic() - stopped_at)
        history.fault(f"start {name}")
        cluster.start_node(name)
        assert load.wait_live(60)
        load.wait_acknowledged(30)
    outcome = finish(cluster, load, history, tmp_path=tmp_path)
    outcome.report.assert_ok()
    figures_ = outcome.report.figures
    assert figures_["reconnects"] > 0
    assert figures_["recovered"] == figures_["reconnects"], "every client recovered"
    assert set(close_codes(history)) == {4200}
    resumed = resumes_after(history, 0)
    waits = _seconds([r["t"] - c["t"] for r, c in _closes_before(history, resumed)])
    figures("3 rolling restart", {
        **_summary(outcome), "faults": len(NODES),
        "shutdown max s": round(max(stops), 2),
        "time to resume max s": waits["max"], "time to resume median s": waits["median"],
    })


def test_sigterm_during_a_transfer_burst(cluster, tmp_path, figures):
    """
    Scenario 7: the node producing blocks, also accepting transfers, gets
    SIGTERM in the middle of a burst. It finishes its commits and block,
    closes its connections with 4200 and exits cleanly; every transfer it
    acknowledged is stored and confirmed (by the next leader), nothing
    is half-written (balances match the confirmed transfers).
    """
    cluster.start(NODES)
    history = History()
    load = workload(cluster, history, interval=0.0).start()
    warm_up(load)
    stopped_at = history.fault("SIGTERM node-a (the block producer) mid-burst")
    status = cluster.nodes["node-a"].stop(signal.SIGTERM)
    exited_after = time.monotonic() - stopped_at
    assert status in (0, -signal.SIGTERM)
    cluster.wait_leader(other_than="node-a", timeout=30)
    assert load.wait_live(60)
    load.wait_acknowledged(100)
    outcome = finish(cluster, load, history, tmp_path=tmp_path)
    outcome.report.assert_ok()
    through_a = {e["op"] for e in history.of("invoke") if "node-a" in _node_name(cluster, e)}
    assert through_a, "no transfer went through the stopped node"
    figures("7 SIGTERM mid-burst", {
        **_summary(outcome), "faults": 1, "exited after s": round(exited_after, 2),
    })


def _node_name(cluster, event) -> str:
    for name, node in cluster.nodes.items():
        if node.url == event.get("node"):
            return name
    return ""


def _closes_before(history: History, resumes: list[dict]) -> list[tuple[dict, dict]]:
    """
    Each resume with the close of the same client's connection before it.
    """
    pairs = []
    for resume in resumes:
        closes = [c for c in history.of("closed", client=resume["client"])
                  if c["t"] < resume["t"] and c["by"] == "server"]
        if closes:
            pairs.append((resume, closes[-1]))
    return pairs


def _summary(outcome: Outcome) -> dict:
    """
    The figures every scenario reports.
    """
    f = outcome.report.figures
    return {
        "clients": f["subscribers"] + len({e["sender"] for e in outcome.history.of("invoke")}),
        "transfers": f["transfers"], "acknowledged": f["acknowledged"],
        "updates received": f["updates received"],
        "lost": f["transfers lost"] + f["updates lost"],
        "duplicated": f["transfers duplicated"] + f["updates duplicated"],
        "reconnects": f["reconnects"], "recovered %": f["recovered %"],
        "events never published": f["pending never published"]
        + f["confirmed never published"],
    }
