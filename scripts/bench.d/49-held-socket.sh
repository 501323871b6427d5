#!/bin/sh
# The chain killed, the socket held or not (issue 28): the demo app under forkpool
# ($WORKERS workers) under a restart loop like runsv's (the run script again, a
# second after it ended), uptime-probe at $CONCURRENCY keep-alive clients, and
# forkpool killed with -9 $KILLS times (each time once the restarted chain serves
# again); right after each kill, 4 more clients (curl) connect and send a request
# while no chain runs. Two forms, one run:
#   plain: tcplisten binds in the run script (examples/service/run's form): the
#          socket dies with the chain;
#   held:  s6-fdholder-daemon holds it, the run script retrieves it
#          (examples/held-socket/run): tcplisten -F 0.
# Columns: the probe's counts over the whole run; "waiting at a kill" = of the
# curl clients, how many got a 200.
#
# Run by scripts/bench ($BIN = target/release on PATH). Environment: WORKERS (4),
# CONCURRENCY (8), KILLS (5), BENCH_QUICK=1 (a smoke run: 2 kills).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$top/target/release}
export BIN
PATH="$BIN:$PATH"
if [ "${BENCH_QUICK:-0}" = 1 ]; then KILLS=${KILLS:-2}; else KILLS=${KILLS:-5}; fi
CONCURRENCY=${CONCURRENCY:-8}
WORKERS=${WORKERS:-4}

# shellcheck source=../bench-lib.sh
. "$top/scripts/bench-lib.sh"
# shellcheck source=../../demo/lib.sh
. "$top/demo/lib.sh"

for p in s6-fdholder-daemon s6-fdholder-store s6-fdholder-retrieve curl; do
    command -v "$p" >/dev/null || { echo "49-held-socket: $p not found (scripts/test-deps)" >&2; exit 111; }
done

work=$(mktemp -d)
loop_pid= holder_pid= probe_pid=
cleanup() {
    stop_pid "$probe_pid"
    # the loop's group: the shell loop and the chain (the workers follow forkpool)
    [ -z "$loop_pid" ] || kill -TERM "-$loop_pid" 2>/dev/null || true
    stop_pid "$holder_pid"
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "49-held-socket: fatal: $*" >&2; exit 111; }

STATE=$work/state
mkdir -p "$STATE/releases"
build_release h1 >/dev/null 2>&1
"$BIN/atomic-symlink" releases/h1 "$STATE/current"

st_get() { sed -n "s/^$1=//p" "$STATE/status" 2>/dev/null | head -n 1; }
# serving_pid: forkpool's pid once generation 1 serves with every worker ready
serving_pid() {
    p=$(st_get pid)
    [ -n "$p" ] && [ "$(st_get serving_generation)" = 1 ] && [ "$(st_get ready)" = "$WORKERS" ] &&
        kill -0 "$p" 2>/dev/null && echo "$p"
}
wait_new_pid() { # wait_new_pid OLD: the pid of a chain other than OLD that serves (60 s)
    end=$(($(now_ms) + 60000))
    while :; do
        p=$(serving_pid || :)
        [ -n "$p" ] && [ "$p" != "$1" ] && { echo "$p"; return 0; }
        [ "$(now_ms)" -lt "$end" ] || return 1
        sleep 0.02
    done
}

# the holder (examples/held-socket/holder-run), its rules: this user, names tcp:*
h=$work/holder
uid=$(id -u)
mkdir -p "$h/rules/uid/$uid/env"
touch "$h/rules/uid/$uid/allow"
echo '^tcp:' >"$h/rules/uid/$uid/env/S6_FDHOLDER_STORE_REGEX"
echo '^tcp:' >"$h/rules/uid/$uid/env/S6_FDHOLDER_RETRIEVE_REGEX"
(cd "$h" && exec "$top/examples/held-socket/holder-run" >"$work/holder.ready") &
holder_pid=$!

row() { # row FORM RUNSCRIPT
    sv=$work/sv-$1
    mkdir -p "$sv"
    cp "$2" "$sv/run"
    printf 'STATE=%s\nPORT=0\nWORKERS=%s\nBIN=%s\nHOLDER=%s\nID=tcp:127.0.0.1:bench\n' \
        "$STATE" "$WORKERS" "$BIN" "$h/s" >"$sv/conf"
    rm -f "$STATE/port" "$STATE/status"
    (cd "$sv" && exec setsid sh -c 'while :; do ./run >/dev/null 2>&1; sleep 1; done') &
    loop_pid=$!
    pid=$(wait_new_pid none) || fail "$1: the chain never served"
    port=$(cat "$STATE/port")
    uptime-probe -c "$CONCURRENCY" --json "http://127.0.0.1:$port/" >"$work/probe.json" 2>/dev/null &
    probe_pid=$!
    sleep 1
    answered=0 waiting=0
    k=0
    while [ $k -lt "$KILLS" ]; do
        k=$((k + 1))
        kill -KILL "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.01; done
        for c in 1 2 3 4; do
            curl -s -o /dev/null -w '%{http_code}\n' --max-time 30 "http://127.0.0.1:$port/release" \
                >"$work/waiting.$k.$c" 2>/dev/null &
        done
        pid=$(wait_new_pid "$pid") || fail "$1: no chain serves after kill $k"
        sleep 1
    done
    wait_curls=$(jobs -p | grep -vx "$probe_pid" | grep -vx "$loop_pid" | grep -vx "$holder_pid" || :)
    for j in $wait_curls; do wait "$j" 2>/dev/null || :; done
    for f in "$work"/waiting.*; do
        waiting=$((waiting + 1))
        [ "$(cat "$f")" = 200 ] && answered=$((answered + 1))
    done
    rm -f "$work"/waiting.*
    kill -INT "$probe_pid"
    wait "$probe_pid" 2>/dev/null || :
    probe_pid=
    kill -TERM "-$loop_pid" 2>/dev/null || :
    wait "$loop_pid" 2>/dev/null || :
    # the chain ends with its loop (TERM to its group); wait for its port to close
    end=$(($(now_ms) + 30000))
    while [ -n "$(serving_pid || :)" ] && [ "$(now_ms)" -lt "$end" ]; do sleep 0.05; done
    loop_pid=
    j=$work/probe.json
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s of %s | %s | %s |\n' "$1" "$KILLS" \
        "$(json requests "$j")" "$(json failed "$j")" "$(json refused "$j")" "$(json reset "$j")" \
        "$(json eof "$j")" "$(json retried "$j")" "$answered" "$waiting" "$(json p99 "$j")" "$(json max "$j")"
}

echo "### The chain killed with -9, the socket held or not"
echo
echo "forkpool -n $WORKERS of the demo app under a restart loop (1 s, like runsv), $CONCURRENCY keep-alive clients, $KILLS kills -9 of forkpool, 4 clients connecting right after each kill."
echo
echo "| socket | kills | requests | failed | refused | reset | eof | retried | waiting at a kill answered | p99 ms | max ms |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
row "plain: tcplisten binds (examples/service/run)" "$top/examples/service/run"
row "held: s6-fdholder-daemon, tcplisten -F 0 (examples/held-socket/run)" "$top/examples/held-socket/run"
