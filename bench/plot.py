#!/usr/bin/env python3
"""
Draw the benchmark's figures from the raw results that ``bench/run.py``
writes (one JSON object per line: ``bench/results/run-<stamp>.jsonl``).

    python bench/plot.py                                  # every bench/results/*.jsonl
    python bench/plot.py bench/results/2026-12-01/*.jsonl --out docs/_static/bench

Writes, for the scenarios the files hold:

``cpu_per_delivery.png``
    Server CPU per delivery (µs) against N, one line per server: fan-out
    (a tick every reactor turn) and manyconn (one update per second).
``latency.png``
    Delivery latency percentiles (p50, p90, p99, p99.9, max) per server:
    the latency scenario (10 updates/s) and manyconn (one burst per second
    to N connections).
``workers.png``
    Updates delivered per second against the number of workers, one line
    per tick interval, with the offered rate.

Rows that several repetitions or files measured are plotted as medians.
Needs matplotlib, a benchmark-only dependency (not one of the package's):
``pip install matplotlib``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
SERVER_ORDER = ("rustorium", "rustorium-redis", "node-ws", "reference")
COLOURS = {"rustorium": "tab:blue", "rustorium-redis": "tab:cyan", "node-ws": "tab:green",
           "reference": "tab:gray", "rustorium-w2": "tab:orange"}


def colour(server: str) -> str | None:
    """A server's colour; an earlier commit's server (``--baseline``) in purple."""
    return "tab:purple" if server.startswith("rustorium@") else COLOURS.get(server)
PERCENTILES = (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9"),
               ("max_ms", "max"))


def load(paths: list[Path]) -> list[dict]:
    """Every result row of the files (machine lines and failed rows left out)."""
    rows = []
    for path in paths:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if "scenario" in row and "failed" not in row:
                rows.append(row)
    return rows


def medians(rows: list[dict], scenario: str, key: str) -> dict[tuple[str, int], float]:
    """(server, n) -> median of ``key`` over the rows of ``scenario``."""
    groups: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        if r["scenario"] == scenario and isinstance(r.get(key), (int, float)):
            groups.setdefault((r["server"], r["n"]), []).append(float(r[key]))
    return {k: statistics.median(v) for k, v in groups.items()}


def servers_of(keys) -> list[str]:
    names = {k[0] for k in keys}
    return [s for s in SERVER_ORDER if s in names] + sorted(names - set(SERVER_ORDER))


def plot_cpu(plt, rows: list[dict], out: Path) -> Path | None:
    series = [("fanout", "fan-out, tick every turn", "-o"),
              ("manyconn", "1 update/s (manyconn)", "--s")]
    data = {scen: medians(rows, scen, "server_us_per_delivery") for scen, _, _ in series}
    if not any(data.values()):
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for scen, label, style in series:
        for server in servers_of(data[scen]):
            points = sorted((n, v) for (s, n), v in data[scen].items() if s == server)
            ax.plot([p[0] for p in points], [p[1] for p in points], style,
                    color=colour(server), label=f"{server}: {label}")
    ax.set_xscale("log")
    ax.set_xlabel("connections N")
    ax.set_ylabel("server CPU per delivery (µs)")
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Server CPU per delivery against N")
    path = out / "cpu_per_delivery.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency(plt, rows: list[dict], out: Path) -> Path | None:
    panels = []
    for scen, title in (("latency", "latency scenario: 10 updates/s"),
                        ("manyconn", "manyconn: one update/s to N connections")):
        per = {key: medians(rows, scen, key) for key, _ in PERCENTILES}
        for n in sorted({k[1] for k in per["p99_ms"]}):
            panels.append((f"{title}, N={n}", n, per))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (title, n, per) in zip(axes[0], panels, strict=True):
        servers = servers_of(k for k in per["p99_ms"] if k[1] == n)
        width = 0.8 / max(1, len(servers))
        for i, server in enumerate(servers):
            values = [per[key].get((server, n), 0.0) for key, _ in PERCENTILES]
            xs = [j + (i - (len(servers) - 1) / 2) * width for j in range(len(PERCENTILES))]
            ax.bar(xs, values, width, color=colour(server), label=server)
        ax.set_xticks(range(len(PERCENTILES)), [label for _, label in PERCENTILES])
        ax.set_ylabel("publish to receive (ms)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    path = out / "latency.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_workers(plt, rows: list[dict], out: Path) -> Path | None:
    ticks = sorted({r["scenario"].split(":", 1)[1] for r in rows
                    if r["scenario"].startswith("workers:")}, key=lambda t: -float(t))
    if not ticks:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    for tick in ticks:
        scen = f"workers:{tick}"
        delivered: dict[int, list[float]] = {}
        for r in rows:
            if r["scenario"] == scen and "workers" in r:
                delivered.setdefault(r["workers"], []).append(r["deliveries_per_s"])
        points = sorted((w, statistics.median(v)) for w, v in delivered.items())
        offered = next((r["offered_per_s"] for r in rows if r["scenario"] == scen), None)
        label = f"tick {tick} s" + (f" (offered {offered / 1000:.0f}k/s)" if offered else "")
        ax.plot([p[0] for p in points], [p[1] / 1000 for p in points], "-o", label=label)
    ax.set_xlabel("--workers")
    ax.set_ylabel("updates delivered per second (thousands)")
    ax.set_xticks(sorted({r["workers"] for r in rows if r["scenario"].startswith("workers:")
                          and "workers" in r}))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Throughput against workers (nothing pinned, generator on the same machine)",
                 fontsize=10)
    path = out / "workers.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path,
                    help="result files (default: bench/results/*.jsonl)")
    ap.add_argument("--out", type=Path, default=BENCH_DIR / "results" / "plots",
                    help="directory for the PNGs (default bench/results/plots)")
    args = ap.parse_args(argv)
    try:
        import matplotlib
    except ImportError:
        print("bench/plot.py needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 2
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = args.files or sorted((BENCH_DIR / "results").glob("*.jsonl"))
    if not files:
        print("no result files", file=sys.stderr)
        return 1
    rows = load(files)
    args.out.mkdir(parents=True, exist_ok=True)
    written = [p for p in (plot_cpu(plt, rows, args.out), plot_latency(plt, rows, args.out),
                           plot_workers(plt, rows, args.out)) if p is not None]
    for path in written:
        print(path)
    if not written:
        print("nothing to plot: no fanout, latency, manyconn or workers rows", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
