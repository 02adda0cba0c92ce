#!/usr/bin/env bash
# Run the Autobahn|Testsuite (wstest -m fuzzingclient) against the echo mode
# of the server's own WebSocket stack (conformance/echo_server.py) on
# 127.0.0.1, print a summary, and exit non-zero if any case failed.
#
# usage: conformance/run.sh [--quick] [--cases JSON_LIST] [--production-limits] [--port PORT]
#        conformance/run.sh --install-only
#   --quick   leave out 12.* and 13.* (permessage-deflate; never negotiated here)
#   --cases   a JSON list of case patterns instead, e.g. '["1.*","5.*"]'
#   --install-only  only install what the run needs (exit 1 if that fails)
#   --production-limits  keep the production 64 KiB message limit instead of
#             16 MiB: the 9.* cases above it must then end in close 1009
#             (they count as the documented "limits" exception, see summarize.py)
#
# What it needs, installed on first use (idempotent; later runs reuse it):
#   - python2.7 (wstest is Python 2 only): $PYTHON27 if set, else
#     /usr/bin/python2.7, else Debian 11's python2.7 from the machine's own
#     Debian mirror, with the bullseye suite pinned low (priority 100) for
#     this install only, then removed again (needs root);
#   - a Python 2.7 virtualenv with autobahntestsuite under .cache/conformance
#     (made by virtualenv 20.21.1, the last one that still makes 2.7 envs;
#     versions pinned by conformance/constraints-py27.txt).
# ($CONFORMANCE_CACHE moves that cache elsewhere.)
# The echo server runs on $PYTHON (default: .venv/bin/python if present,
# else python3), which must have the project's dependencies.
# Reports: .cache/conformance/reports/<full|quick|custom>/index.html
# (summary.json beside it). docs/conformance.rst records the results.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE="${CONFORMANCE_CACHE:-$ROOT/.cache/conformance}"
AUTOBAHNTESTSUITE=autobahntestsuite==25.10.1
VIRTUALENV=virtualenv==20.21.1

mode=full
cases='["*"]'
port=
limits=conformance
install_only=
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) mode=quick; shift ;;
        --install-only) install_only=1; shift ;;
        --cases) mode=custom; cases=$2; shift 2 ;;
        --production-limits) limits=production; shift ;;
        --port) port=$2; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
exclude='[]'
[ "$mode" = quick ] && exclude='["12.*", "13.*"]'
server_args=()
summary_args=()
# The testsuite's case counts (autobahntestsuite 25.10.1): a report with
# fewer means cases did not run.
case "$mode" in
    full) summary_args=(--expect-cases 517) ;;
    quick) summary_args=(--expect-cases 301) ;;
esac
if [ "$limits" = production ]; then
    server_args=(--max-message-size 65536)
    summary_args+=(--production-limits)
    mode="$mode-limits"
fi

mkdir -p "$CACHE"
started=$(date +%s)
say() { echo "[conformance $(( $(date +%s) - started ))s] $*"; }

# --- python2.7 ----------------------------------------------------------------

install_python27() {
    # Debian 11's python2.7 beside this Debian 12: the bullseye suite of the
    # mirror this machine already uses, pinned low so that nothing else is
    # ever taken from it, and removed again afterwards.
    if [ "$(id -u)" != 0 ]; then
        echo "python2.7 is missing and installing it needs root (or set PYTHON27)" >&2
        return 1
    fi
    local src=/etc/apt/sources.list.d/conformance-bullseye.sources
    local pin=/etc/apt/preferences.d/conformance-bullseye
    local uri= keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
        keyring=$(awk '/^Signed-By:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
        keyring=${keyring:-/usr/share/keyrings/debian-archive-keyring.gpg}
    elif [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $3 ~ /^(bookworm|bullseye)$/ {print $2; exit}' /etc/apt/sources.list)
    fi
    if [ -z "$uri" ]; then
        echo "cannot find this machine's Debian mirror in /etc/apt" >&2
        return 1
    fi
    printf 'Types: deb\nURIs: %s\nSuites: bullseye\nComponents: main\nSigned-By: %s\n' \
        "$uri" "$keyring" > "$src"
    printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n' > "$pin"
    say "installing python2.7 from Debian 11 (log: $CACHE/apt.log)"
    local rc=0
    apt-get update -qq >> "$CACHE/apt.log" 2>&1 \
        && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            python2.7 python2.7-dev >> "$CACHE/apt.log" 2>&1 \
        || rc=$?
    rm -f "$src" "$pin"
    apt-get update -qq >> "$CACHE/apt.log" 2>&1 || true
    if [ "$rc" != 0 ]; then
        tail -n 20 "$CACHE/apt.log" >&2
        return 1
    fi
}

find_python27() {
    if [ -n "${PYTHON27:-}" ]; then
        echo "$PYTHON27"
    elif [ -x /usr/bin/python2.7 ]; then
        echo /usr/bin/python2.7
    else
        install_python27 >&2 && echo /usr/bin/python2.7
    fi
}

# --- the wstest virtualenv (under a lock: two runs may start at once) ----------

ensure_wstest() {
    local py27 want
    py27=$(find_python27)
    want="$AUTOBAHNTESTSUITE $VIRTUALENV $py27 $(cksum < "$ROOT/conformance/constraints-py27.txt")"
    if [ -x "$CACHE/venv27/bin/wstest" ] && [ "$(cat "$CACHE/venv27/.installed" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    say "creating the wstest virtualenv (log: $CACHE/venv.log)"
    rm -rf "$CACHE/venvtool" "$CACHE/venv27"
    if ! {
        python3 -m venv "$CACHE/venvtool" \
        && "$CACHE/venvtool/bin/pip" install --quiet --disable-pip-version-check "$VIRTUALENV" \
        && "$CACHE/venvtool/bin/virtualenv" --quiet -p "$py27" "$CACHE/venv27" \
        && "$CACHE/venv27/bin/pip" install --quiet --disable-pip-version-check \
            --no-python-version-warning -c "$ROOT/conformance/constraints-py27.txt" \
            "$AUTOBAHNTESTSUITE" \
        && "$CACHE/venv27/bin/wstest" -a
    } > "$CACHE/venv.log" 2>&1; then
        tail -n 30 "$CACHE/venv.log" >&2
        return 1
    fi
    echo "$want" > "$CACHE/venv27/.installed"
}

(
    flock -w 600 9 || { echo "could not lock $CACHE/lock" >&2; exit 1; }
    # An interrupted install must not leave the bullseye suite configured.
    trap 'rm -f /etc/apt/sources.list.d/conformance-bullseye.sources \
        /etc/apt/preferences.d/conformance-bullseye 2>/dev/null || true' EXIT
    ensure_wstest
) 9> "$CACHE/lock" || exit 1
say "wstest ready: $("$CACHE/venv27/bin/wstest" -a 2>&1 | tr '\n' ' ')"
[ -n "$install_only" ] && exit 0

# --- the echo server ------------------------------------------------------------

if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
# Port 0 (the default): the server takes a free port and says which.
port=${port:-0}
out="$CACHE/reports/$mode"
rm -rf "$out"
mkdir -p "$out"

(cd "$ROOT" && exec "$PYTHON" -m conformance.echo_server --port "$port" "${server_args[@]}") \
    > "$out/server.out" 2> "$out/server.err" &
server_pid=$!
stop_server() {
    if kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$server_pid" 2>/dev/null || true
    fi
    wait "$server_pid" 2>/dev/null || true
}
trap stop_server EXIT
for _ in $(seq 1 300); do
    grep -q '^listening on' "$out/server.out" 2>/dev/null && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if ! grep -q '^listening on' "$out/server.out"; then
    echo "the echo server did not start:" >&2
    cat "$out/server.out" "$out/server.err" >&2
    exit 1
fi
url=$(sed -n 's/^listening on \(ws:[^ ]*\).*/\1/p' "$out/server.out" | head -n 1)
say "echo server: $(head -n 1 "$out/server.out")"

# --- wstest ---------------------------------------------------------------------

version=$("$PYTHON" -c 'import rustorium; print(rustorium.__version__)')
cat > "$out/fuzzingclient.json" <<JSON
{"outdir": "$out", "servers": [{"agent": "Rustorium-$version", "url": "$url"}],
 "cases": $cases, "exclude-cases": $exclude, "exclude-agent-cases": {}}
JSON
limit=1800
case "$mode" in quick*) limit=600 ;; esac
say "running wstest -m fuzzingclient ($mode: cases $cases, excluded $exclude)"
run_started=$(date +%s)
status=0
(cd "$out" && timeout "$limit" "$CACHE/venv27/bin/wstest" -m fuzzingclient -s fuzzingclient.json) \
    > "$out/wstest.log" 2>&1 || status=$?
run_seconds=$(( $(date +%s) - run_started ))
stop_server
trap - EXIT
if [ "$status" != 0 ]; then
    echo "wstest exited with $status after ${run_seconds}s (log: $out/wstest.log):" >&2
    tail -n 20 "$out/wstest.log" >&2
    exit 1
fi

# --- summary --------------------------------------------------------------------

say "wstest took ${run_seconds}s; report: $out/index.html"
failed=0
"$PYTHON" "$ROOT/conformance/summarize.py" "$out/index.json" --json "$out/summary.json" "${summary_args[@]}" \
    || failed=1
server_errors=$(sed -n 's/^errors logged: //p' "$out/server.out")
echo "errors logged by the server: ${server_errors:-unknown (it did not stop cleanly)}"
if [ "${server_errors:-x}" != 0 ]; then
    sed -n '1,40p' "$out/server.err" >&2
    failed=1
fi
say "done: $mode run, wstest ${run_seconds}s, $([ $failed = 0 ] && echo PASSED || echo FAILED)"
exit $failed
