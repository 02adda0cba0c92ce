"""
Summarize an Autobahn|Testsuite report (its ``index.json``) and judge it.

Prints the number of cases, the counts of ``behavior`` and ``behaviorClose``,
and the non-OK cases grouped by outcome; writes the same as JSON beside the
index (``summary.json``) when asked; exits 1 if any case failed.

A case passes when both its behavior and its close behavior are OK,
NON-STRICT or INFORMATIONAL (the testsuite's own legend: non-strict and
informational cases are conformant), or when it matches a documented
exception (L{COMPRESSION}, and with ``--production-limits``
L{PRODUCTION_LIMITS}). ``docs/conformance.rst`` justifies each.

Usage: python conformance/summarize.py REPORT_DIR/index.json [--json OUT]
"""

import argparse
import collections
import fnmatch
import json
import sys
from pathlib import Path

import attrs

PASSING = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})


@attrs.frozen
class Exception_:
    """
    A documented exception: cases matching C{patterns} may also have the
    outcomes C{outcomes}, if C{close_code} is None or the server closed
    with that code.
    """

    name: str
    patterns: tuple[str, ...]
    outcomes: frozenset[str]
    why: str
    close_code: int | None = None

    def covers(self, case_id: str, case: dict) -> bool:
        return any(fnmatch.fnmatchcase(case_id, p) for p in self.patterns) and (
            self.close_code is None or case.get("remoteCloseCode") == self.close_code
        )


COMPRESSION = Exception_(
    "compression",
    ("12.*", "13.*"),
    frozenset({"UNIMPLEMENTED"}),
    "permessage-deflate is deliberately never negotiated (one prepared frame "
    "serves every connection; OWASP: no compression unless needed)",
)

PRODUCTION_LIMITS = Exception_(
    "limits",
    ("9.*",),
    frozenset({"FAILED"}),
    "with --production-limits, messages over 64 KiB are refused by design: "
    "the server closed with 1009",
    close_code=1009,
)


def case_key(case_id: str) -> list[int]:
    return [int(part) for part in case_id.split(".")]


def summarize(index: dict, exceptions: tuple[Exception_, ...] = (COMPRESSION,)) -> dict:
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
        case = cases[case_id]
        outcome = {case["behavior"], case["behaviorClose"]}
        if outcome != {"OK"}:
            non_ok[f"{case['behavior']}/{case['behaviorClose']}"].append(case_id)
        if outcome <= PASSING:
            continue
        for exception in exceptions:
            if exception.covers(case_id, case) and outcome <= PASSING | exception.outcomes:
                excepted[exception.why].append(case_id)
                break
        else:
            failed.append(case_id)
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
    parser.add_argument(
        "--expect-cases", type=int,
        help="fail unless the report has exactly this many cases",
    )
    parser.add_argument(
        "--production-limits", action="store_true",
        help="the server ran with the production 64 KiB limit: 9.* cases closed "
        "with 1009 are expected",
    )
    args = parser.parse_args(argv)
    exceptions = (COMPRESSION, PRODUCTION_LIMITS) if args.production_limits else (COMPRESSION,)
    summary = summarize(json.loads(args.index.read_text()), exceptions)
    print(report(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if args.expect_cases is not None and summary["cases"] != args.expect_cases:
        print(f"expected {args.expect_cases} cases, the report has {summary['cases']}")
        return 1
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
