#!/bin/sh
# The long form of tests/tests/deploy_python.rs (the suite keeps 3 deploys):
# examples/gunicorn and examples/uvicorn run as given (their `run` script: tcplisten
# + forkpool -m cutover, WORKERS workers), $DEPLOYS deploys with deploy-release
# --check under uptime-probe ($CONCURRENCY clients; gunicorn keep-alive, uvicorn a
# connection per request, as in the test). Per row: deploys that exited 0, the
# deploy's wall time (median / max), requests, failed (and why), mixed, flapping.
#
# Run by scripts/bench ($BIN = target/release; .venv/bin on PATH).
# Environment: DEPLOYS (default 10), CONCURRENCY (4), WORKERS (2),
# BENCH_QUICK=1 (2 deploys).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$top/target/release}
if [ "${BENCH_QUICK:-0}" = 1 ]; then DEPLOYS=${DEPLOYS:-2}; else DEPLOYS=${DEPLOYS:-10}; fi
CONCURRENCY=${CONCURRENCY:-4}
WORKERS=${WORKERS:-2}
PATH="$top/.venv/bin:$PATH"
export PATH

# shellcheck source=../bench-lib.sh
. "$top/scripts/bench-lib.sh"

tmp=$(mktemp -d)
chain_pid= probe_pid=
trap 'stop_pid "$probe_pid"; stop_pid "$chain_pid"; rm -rf "$tmp"' EXIT

# release SITE EXAMPLE ID: releases/ID of the example (its .py files, RELEASE).
release() {
    mkdir -p "$1/releases/$3"
    for f in app.py gunicorn.conf.py; do
        [ -f "$top/examples/$2/$f" ] && cp "$top/examples/$2/$f" "$1/releases/$3/"
    done
    echo "$3" >"$1/releases/$3/RELEASE"
}

echo "**65-python-deploys** (examples/gunicorn and examples/uvicorn as given, deploy-release --check, $DEPLOYS deploys, $CONCURRENCY clients, $WORKERS workers):"
echo
echo "| server | deploys ok | s/deploy median / max | requests | failed | mixed | flapping |"
echo "|---|---|---|---|---|---|---|"
for example in gunicorn uvicorn; do
    command -v "$example" >/dev/null 2>&1 || { echo "| $example | not installed | | | | | |"; continue; }
    site=$tmp/$example
    mkdir -p "$site"
    release "$site" "$example" r1
    ln -s releases/r1 "$site/current"
    SITE=$site PORT=0 WORKERS=$WORKERS BIN=$BIN "$top/examples/$example/run" >"$site/log" 2>&1 &
    chain_pid=$!
    end=$(($(now_ms) + 60000))
    while [ ! -s "$site/port" ]; do
        [ "$(now_ms)" -lt "$end" ] || { echo "$example: no port" >&2; exit 1; }
        sleep 0.05
    done
    port=$(cat "$site/port")
    wait_release "$port" r1 || { echo "$example: r1 never served" >&2; exit 1; }
    ka=""
    [ "$example" = uvicorn ] && ka=--no-keepalive
    "$BIN/uptime-probe" --json -c "$CONCURRENCY" -t 30000 $ka "http://127.0.0.1:$port/" \
        >"$site/probe.json" 2>/dev/null &
    probe_pid=$!
    ok=0 times=""
    i=2
    while [ "$i" -le $((DEPLOYS + 1)) ]; do
        release "$site" "$example" "r$i"
        t0=$(now_ms)
        if "$BIN/deploy-release" -t 60 -c "http://127.0.0.1:$port/release" \
            "$site/releases/r$i" "$site/current" "$site/status" >/dev/null 2>&1; then
            ok=$((ok + 1))
        fi
        times="$times $(($(now_ms) - t0))"
        i=$((i + 1))
    done
    kill -INT "$probe_pid"
    wait "$probe_pid" || true
    probe_pid=
    stats=$(echo "$times" | tr ' ' '\n' | grep . | sort -n |
        awk '{ v[NR] = $1 } END { printf "%.2f / %.2f", v[int((NR + 1) / 2)] / 1000, v[NR] / 1000 }')
    why=$(failed_why "$site/probe.json")
    echo "| $example | $ok of $DEPLOYS | $stats | $(json requests "$site/probe.json") | $(json failed "$site/probe.json")${why:+ ($why)} | $(json mixed "$site/probe.json") | $(json flapping "$site/probe.json") |"
    stop_pid "$chain_pid"
    chain_pid=
done
