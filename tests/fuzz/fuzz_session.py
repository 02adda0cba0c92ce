"""
Coverage-guided fuzzing of the session layer with atheris (libFuzzer): each
input is sent as a text message through L{Session.message_received} and
checked by the same oracle as the Hypothesis tests
(L{tests.fuzz.session_oracle}); any broken rule raises, which atheris
reports as a crash and saves as C{crash-*}.

Not part of the pytest run. From the repository root, with atheris
installed (C{pip install atheris})::

    python tests/fuzz/fuzz_session.py -max_total_time=60

By default it seeds from C{tests/fuzz/corpus} (real protocol messages),
uses the JSON token dictionary C{tests/fuzz/json.dict}, keeps the inputs it
finds in C{.cache/fuzz/corpus} and writes crashes to C{.cache/fuzz/};
libFuzzer flags given on the command line come first. Messages that hit a
known bug (L{KNOWN_BUGS}) are tolerated and counted; C{--strict-known}
makes them crashes too. Every 131,072 messages it prints how many it has
tried and what the first replies were; libFuzzer's closing line
(C{Done N runs}) is the final count.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

import atheris  # noqa: E402

with atheris.instrument_imports(include=["rustorium"]):
    import rustorium.session  # noqa: F401
    from tests.fuzz import session_oracle

from twisted.logger import LogLevel, globalLogBeginner  # noqa: E402

STRICT_KNOWN = "--strict-known" in sys.argv
if STRICT_KNOWN:
    sys.argv.remove("--strict-known")
    session_oracle.KNOWN_BUGS.clear()

logged: list[dict] = []


def observe(event: dict) -> None:
    if event.get("log_level") in (LogLevel.error, LogLevel.critical) or event.get("isError"):
        logged.append(event)


# Logged events go to the oracle only (a known bug would otherwise print its
# traceback on every hit; any other is in the oracle's crash report).
globalLogBeginner.beginLoggingTo([observe], redirectStandardIO=False)
harness = session_oracle.Harness(logged, "atheris")


REPORT_EVERY = 1 << 17


def TestOneInput(data: bytes) -> None:
    harness.one(data)
    if session_oracle.COUNTS["atheris"] % REPORT_EVERY == 0:
        report()


def report() -> None:
    """
    Print the counts so far (libFuzzer exits without running Python's
    exit handlers; its closing "Done N runs" line is the final count).
    """
    replies = sorted(session_oracle.REPLIES.items(), key=lambda item: -item[1])
    known = ", ".join(f"{k} {v}" for k, v in session_oracle.KNOWN_HITS.items()) or "none"
    print(
        f"fuzz: {session_oracle.COUNTS['atheris']} messages through "
        "Session.message_received; first replies: "
        + ", ".join(f"{k} {v}" for k, v in replies)
        + f"; known bugs hit: {known}",
        file=sys.stderr, flush=True,
    )


def default_arguments(argv: list[str]) -> list[str]:
    """
    libFuzzer's arguments: the dictionary, crash folder and corpus folders
    unless given.
    """
    work = ROOT / ".cache" / "fuzz"
    corpus = work / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    flags = [a for a in argv[1:] if a.startswith("-")]
    folders = [a for a in argv[1:] if not a.startswith("-")]
    if not any(f.startswith("-dict=") for f in flags):
        flags.append(f"-dict={HERE / 'json.dict'}")
    if not any(f.startswith("-artifact_prefix=") for f in flags):
        flags.append(f"-artifact_prefix={work}{os.sep}")
    if not folders:
        # libFuzzer adds what it finds to the first folder: keep the seeds
        # in the repository untouched.
        folders = [str(corpus), str(HERE / "corpus")]
    return [argv[0], *flags, *folders]


if __name__ == "__main__":
    atheris.Setup(default_arguments(sys.argv), TestOneInput)
    atheris.Fuzz()
