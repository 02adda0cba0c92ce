"""
Summarize an Autobahn|Testsuite report (its ``index.json``) and judge it.

Prints the number of cases, the counts of ``behavior`` and ``behaviorClose``,
and the non-OK cases grouped by outcome; writes the same as JSON beside the
index (``summary.json``) when asked; exits 1 if any case failed.

A case passes when both its behavior and its close behavior are OK,
NON-STRICT or INFORMATIONAL (the testsuite's own legend: non-strict and
informational cases are conformant), or when it matches a documented
exception in L{EXCEPTIONS}. ``docs/conformance.rst`` justifies each.

Usage: python conformance/summarize.py REPORT_DIR/index.json [--json OUT]
"""

import argparse
import collections
import fnmatch
import json
import sys
from pathlib import Path

PASSING = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})

EXCEPTIONS: dict[str, tuple[frozenset[str], str]] = {
    # case pattern: (outcomes allowed besides PASSING, why)
    "12.*": (
        frozenset({"UNIMPLEMENTED"}),
        "permessage-deflate is deliberately never negotiated (prepared frames "
        "serve every connection; OWASP: no compression unless needed)",
    ),
    "13.*": (
        frozenset({"UNIMPLEMENTED"}),
        "permessage-deflate is deliberately never negotiated (as 12.*)",
    ),
}


def case_key(case_id: str) -> list[int]:
    return [int(part) for part in case_id.split(".")]


def allowed(case_id: str) -> tuple[frozenset[str], str | None]:
    """
    The outcomes a case may have, and the exception that widened them.
    """
    for pattern, (extra, why) in EXCEPTIONS.items():
        if fnmatch.fnmatchcase(case_id, pattern):
            return PASSING | extra, why
    return PASSING, None


def summarize(index: dict) -> dict:
    """
    The summary of a testsuite index (one agent).
    """
    if len(index) != 1:
        raise ValueError(f"expected one agent in the report, found {sorted(index)}")
    ((agent, cases),) = index.items()
    behavior = collections.Counter(c["behavior"] for c in cases.values())
    behavior_close = collections.Counter(c["behaviorClose"] for c in cases.values())
    non_ok: dict[str, list[str]] = collections.defaultdict(list)
    failed: list[str] = []
    excepted: dict[str, list[str]] = collections.defaultdict(list)
    for case_id in sorted(cases, key=case_key):
        outcome = (cases[case_id]["behavior"], cases[case_id]["behaviorClose"])
        if outcome != ("OK", "OK"):
            non_ok["/".join(outcome)].append(case_id)
        ok, why = allowed(case_id)
        if not set(outcome) <= ok:
            failed.append(case_id)
        elif not set(outcome) <= PASSING:
            excepted[why].append(case_id)
    return {
        "agent": agent,
        "cases": len(cases),
        "behavior": dict(behavior.most_common()),
        "behaviorClose": dict(behavior_close.most_common()),
        "non_ok": dict(non_ok),
        "excepted": dict(excepted),
        "failed": failed,
        "duration_ms": sum(c.get("duration", 0) for c in cases.values()),
    }


def ranges(case_ids: list[str], limit: int = 30) -> str:
    shown = " ".join(case_ids[:limit])
    return shown + (f" ... ({len(case_ids)} in all)" if len(case_ids) > limit else "")


def report(summary: dict) -> str:
    lines = [
        f"agent {summary['agent']}: {summary['cases']} cases, "
        f"sum of case durations {summary['duration_ms'] / 1000:.1f} s",
        "behavior:      " + ", ".join(f"{k} {v}" for k, v in summary["behavior"].items()),
        "behaviorClose: " + ", ".join(f"{k} {v}" for k, v in summary["behaviorClose"].items()),
    ]
    if summary["non_ok"]:
        lines.append("not OK/OK (behavior/behaviorClose: cases):")
        for outcome, case_ids in summary["non_ok"].items():
            lines.append(f"  {outcome}: {len(case_ids)}: {ranges(case_ids)}")
    for why, case_ids in summary["excepted"].items():
        lines.append(f"documented exception ({len(case_ids)} cases): {why}")
    lines.append(
        f"FAILED: {len(summary['failed'])}"
        + (f": {ranges(summary['failed'])}" if summary["failed"] else "")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Summarize an Autobahn|Testsuite report.")
    parser.add_argument("index", type=Path, help="the report's index.json")
    parser.add_argument("--json", type=Path, help="also write the summary as JSON here")
    args = parser.parse_args(argv)
    summary = summarize(json.loads(args.index.read_text()))
    print(report(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
