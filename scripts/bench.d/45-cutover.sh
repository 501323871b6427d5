#!/bin/sh
# forkpool's reload modes beside gunicorn's HUP, in one run (issue 9): the demo app
# (4 workers) under one uptime-probe run at $CONCURRENCY keep-alive clients: $DURATION s
# without deploys, then $BURSTS bursts of deploys ($DEPLOYS in all, back to back or
# paced) with $QUIET s without deploys between them; each burst is a marked part of
# the probe's run (a SIGUSR1 as it begins, another $SETTLE_MS ms after its last deploy),
# so that steady (unmarked) and during the deploys (marked) alternate and whatever
# else the machine does falls on both alike. A deploy: a new release directory (demo/lib.sh's
# build_release; for gunicorn the same files), atomic-symlink `current`, HUP (forkpool:
# poolctl reload, which waits until the new generation serves), wait until /release
# answers the new release. Failed, mixed, flapping, p99 steady against p99 during the
# deploys, max; for the cutover rows,
# the switch (from the old generation's stop signal to the release of the new one).
#
# Rows: forkpool -m rolling, -m all-at-once, -m cutover (the app reads the hold
# descriptor), -m cutover --handoff (the app hands its kept connections to the
# new generation: retried should be 0), -m rolling --handoff and -m all-at-once
# --handoff (the same hand-over, one old worker at a time or all at once, no
# hold: what the switch's moment costs), a control (that server and probe, no
# deploys: the ratio's noise), -m cutover with the app not reading it (SIGSTOP
# alone holds it), and gunicorn (sync workers) reloaded with HUP.
#
# Run by scripts/bench ($BIN = target/release on PATH, .venv/bin on PATH).
# Environment: DEPLOYS (default 50), CONCURRENCY (32), DURATION (2 s), BURSTS (10),
# QUIET (1 s), SETTLE_MS (100), WORKERS (4),
# ROWS (any of rolling all-at-once cutover cutover-handoff rolling-handoff
# all-at-once-handoff control cutover-stop gunicorn; default all),
# GUNICORN (default: gunicorn on PATH, else .venv/bin/gunicorn; its row is left out
# without it), PACE_MS (a deploy every PACE_MS ms; default 0, back to back),
# BENCH_QUICK=1 (a smoke run: 5 deploys, 8 clients, 2 s).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$top/target/release}
export BIN
PATH="$BIN:$top/.venv/bin:$PATH"
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    DEPLOYS=${DEPLOYS:-5} CONCURRENCY=${CONCURRENCY:-8} DURATION=${DURATION:-1} BURSTS=${BURSTS:-2}
else
    DEPLOYS=${DEPLOYS:-50} CONCURRENCY=${CONCURRENCY:-32} DURATION=${DURATION:-2} BURSTS=${BURSTS:-10}
fi
QUIET=${QUIET:-1}
SETTLE_MS=${SETTLE_MS:-100}
[ "$BURSTS" -ge 1 ] && [ "$BURSTS" -le "$DEPLOYS" ] || { echo "45-cutover: fatal: BURSTS must be 1 to DEPLOYS ($DEPLOYS)" >&2; exit 100; }
WORKERS=${WORKERS:-4}
PACE_MS=${PACE_MS:-0}
GUNICORN=${GUNICORN:-$(command -v gunicorn || echo "$top/.venv/bin/gunicorn")}
ROWS=${ROWS:-"rolling all-at-once cutover cutover-handoff rolling-handoff all-at-once-handoff control cutover-stop gunicorn"}

# shellcheck source=../bench-lib.sh
. "$top/scripts/bench-lib.sh"

# The state in a tmpfs where there is one: with it on this machine's disk, the
# first deploy after the releases were written took 0.6 to 20.9 s in its
# atomic-symlink (6 runs of 6; once 21 requests timed out meanwhile), time of the
# machine, not of the switch (BENCHMARKS.md, 2026-12-07).
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    work=$(mktemp -d -p /dev/shm)
else
    work=$(mktemp -d)
fi
srv_pid= probe_pid=
cleanup() {
    stop_pid "$probe_pid"
    stop_pid "$srv_pid"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# build_release ID: demo/lib.sh's release layout (RELEASE, htdocs with data-release,
# bin/app), in $STATE/releases. (It sets the globals tmp, d, id, kind and flags:
# this script uses none of those names.)
# shellcheck source=../../demo/lib.sh
. "$top/demo/lib.sh"

fail() { echo "45-cutover: fatal: $*" >&2; exit 111; }

# st_get KEY: KEY's value in forkpool's status file.
st_get() { sed -n "s/^$1=//p" "$STATE/status" 2>/dev/null | head -n 1; }


n_rel=0
new_release() { # the next release in $STATE (built unless it is), switched to; its id in $rel
    n_rel=$((n_rel + 1))
    rel=b$n_rel-$$
    [ -d "$STATE/releases/$rel" ] || build_release "$rel" >/dev/null 2>&1
    "$BIN/atomic-symlink" "releases/$rel" "$STATE/current"
}

# build_ahead N: the next N releases built now, before the probe runs: a deploy
# here is the switch, not the copying of its files (a release is unpacked before
# it is deployed; 50 of them built inside the deploys' window would take the
# server's CPU there and nowhere else).
build_ahead() {
    k=$n_rel
    while [ $k -lt $((n_rel + $1)) ]; do
        k=$((k + 1))
        build_release "b$k-$$" >/dev/null 2>&1
    done
}

# start ROW: the server for ROW on a free port ($srv_pid, $port).
start() {
    STATE=$work/$1
    mkdir -p "$STATE/releases" "$STATE/logs"
    new_release
    case $1 in
    gunicorn)
        BENCH_CURRENT=$STATE/current "$GUNICORN" -w "$WORKERS" -k sync -b 127.0.0.1:0 \
            --graceful-timeout 10 --log-level info --pythonpath "$top/scripts" benchwsgi:app \
            </dev/null >/dev/null 2>"$STATE/log" &
        srv_pid=$!
        i=0
        until grep -q 'Listening at: ' "$STATE/log"; do
            i=$((i + 1))
            [ $i -lt 1000 ] || fail "gunicorn did not start: $(tail -n 3 "$STATE/log")"
            sleep 0.01
        done
        port=$(sed -n 's/.*Listening at: http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$STATE/log" | head -n 1)
        ;;
    *)
        mode=${1%-stop} mode=${mode%-handoff}
        [ "$1" = control ] && mode=cutover
        hold= handoff=
        [ "$1" = cutover-stop ] && hold="env -u FORKPOOL_HOLD_FD"
        case $1 in *-handoff | control) handoff=--handoff ;; esac
        # shellcheck disable=SC2086
        "$BIN/tcplisten" -1 127.0.0.1 0 "$BIN/forkpool" -v -n "$WORKERS" -m "$mode" -d 3 \
            -t 10000 -k 10000 -p "$STATE/current" -S "$STATE/status" $handoff \
            $hold ./bin/app --root . --ready-fd 3 </dev/null >"$STATE/port" 2>"$STATE/log" &
        srv_pid=$!
        i=0
        until [ -s "$STATE/port" ]; do
            i=$((i + 1))
            [ $i -lt 1000 ] || fail "tcplisten printed no port: $(tail -n 3 "$STATE/log")"
            sleep 0.01
        done
        port=$(head -n 1 "$STATE/port")
        ;;
    esac
    wait_release "$port" "$rel" || fail "release $rel never answered on port $port"
}

# deploy ROW: one deploy, over when the new release answers. forkpool: poolctl
# reload, which waits until the new generation serves, reading the status file in
# one process (the probe's count of releases says afterwards that each one
# answered); the earlier loop of sed and sleep forked about 2,000 processes a
# second beside the server and a curl a deploy took 4 ms of CPU, which the p99
# during the deploys paid for. gunicorn: HUP, then GET /release until it answers.
deploy() {
    if [ "$1" = control ]; then
        mark "$STATE/logs/marks" "no deploy"
        sleep 0.05
        return
    fi
    new_release
    mark "$STATE/logs/marks" "$rel"
    if [ "$1" = gunicorn ]; then
        kill -HUP "$srv_pid"
        wait_release "$port" "$rel" || fail "release $rel never answered on port $port"
    else
        "$BIN/poolctl" reload -t 30 "$STATE/status" >/dev/null || fail "reload failed: $(st_get reason)"
    fi
}

# med_max: "median / max ms" of the numbers on stdin, one a line ("-" if none).
med_max() {
    sort -n | awk '{ v[NR] = $1 } END { if (NR) printf "%.1f / %.1f ms", v[int((NR + 1) / 2)], v[NR]; else print "-" }'
}

# load1: the 1-minute load average (what else the machine ran).
load1() { cut -d ' ' -f 1 /proc/loadavg; }

row() {
    load0=$(load1)
    start "$1"
    url=http://127.0.0.1:$port/
    [ "$1" = control ] || build_ahead "$DEPLOYS"
    # One probe for the row, its clients' connections the same throughout
    # (two probes, one for steady and one for the deploys, each spread its 32
    # connections over the workers its own way, and the steady p99 moved with
    # the spread: 0.6x between two runs without deploys). Each burst of
    # deploys is a marked part of the run, the quiet stretches between them
    # the unmarked: one steady stretch before all the deploys put a
    # neighbour's busy seconds on one side only (the control alone showed
    # 0.6x to 1.4x that way). A burst's part ends SETTLE_MS after its last
    # deploy, so what a deploy leaves behind is counted with the deploys.
    # shellcheck disable=SC2046
    "$BIN/uptime-probe" --json -q -c "$CONCURRENCY" $(picture "cutover-$1" "$STATE/logs/marks") "$url" >"$work/run.json" 2>>"$work/probe.err" &
    probe_pid=$!
    sleep "$DURATION"
    n=0 b=0 busy=0
    while [ $b -lt "$BURSTS" ]; do
        b=$((b + 1))
        [ $b -eq 1 ] || sleep "$QUIET"
        kill -USR1 "$probe_pid"
        t0=$(now_ms) k=0 burst=$((DEPLOYS * b / BURSTS - n))
        while [ $k -lt $burst ]; do
            deploy "$1"
            k=$((k + 1))
            if [ "$PACE_MS" -gt 0 ]; then
                left=$((t0 + k * PACE_MS - $(now_ms)))
                [ "$left" -le 0 ] || sleep "$(awk -v m="$left" 'BEGIN { print m / 1000 }')"
            fi
        done
        n=$((n + k)) busy=$((busy + $(now_ms) - t0))
        sleep "$(awk -v m="$SETTLE_MS" 'BEGIN { print m / 1000 }')"
        kill -USR1 "$probe_pid"
    done
    stop_pid "$probe_pid"
    probe_pid=
    stop_pid "$srv_pid"
    srv_pid=
    dj=$work/run.json
    seen=$(grep -o '"first_seen_s"' "$dj" | wc -l)
    want=$((n + 1))
    [ "$1" != control ] || want=1
    # (the probe names the first 64 releases; later ones it counts as untracked)
    [ "$want" -le 64 ] || { [ "$(json untracked "$dj")" -gt 0 ] && want=64; }
    [ "$seen" -eq "$want" ] || fail "the probe saw $seen releases, not $want"
    p99s=$(part unmarked p99 "$dj") p99d=$(part marked p99 "$dj")
    ratio=$(part_ratio "$dj")
    failed=$(json failed "$dj")
    if [ "${failed:-0}" != 0 ]; then
        failed="$failed ($(failed_why "$dj"))"
    fi
    # the switch: "the old workers were gone after 3.2ms" per cutover (forkpool -v)
    sw=$(sed -n 's/.*the old workers were gone after \([0-9.]*\)ms.*/\1/p' "$STATE/log" | med_max)
    # where it goes: each old worker's stopping notice, as forkpool heard it,
    # after the stop signals (the signal's way in and the notice's way back)
    heard=$(sed -n 's/.*stopped accepting \([0-9.]*\)ms after the switch began.*/\1/p' "$STATE/log" | med_max)
    case $1 in
    gunicorn) label="gunicorn, HUP" ;;
    cutover-stop) label="forkpool -m cutover, SIGSTOP only (app ignores the hold fd)" ;;
    cutover-handoff) label="forkpool -m cutover --handoff (kept connections handed over)" ;;
    *-handoff) label="forkpool -m ${1%-handoff} --handoff" ;;
    control) label="control: cutover --handoff, no deploys (50 ms waits instead)" ;;
    *) label="forkpool -m $1" ;;
    esac
    printf '| %s | %s | %.2f s | %s | %s | %s | %s | %s | %s ms | %s ms | %s | %s ms | %s | %s | %s |\n' \
        "$label" "$n" "$(awk -v t=$busy -v n="$n" 'BEGIN { print t / n / 1000 }')" \
        "$(part marked answered "$dj")" "$failed" "$(json retried "$dj")" "$(json mixed "$dj")" \
        "$(json flapping "$dj")" "$p99s" "$p99d" "$ratio" "$(part marked max "$dj")" "$sw" "$heard" "$load0 - $(load1)"
}

gver=
if [ -x "$GUNICORN" ]; then
    gver=$("$GUNICORN" --version 2>&1 | head -n 1)
else
    ROWS=$(echo "$ROWS" | sed 's/gunicorn//')
fi

echo "## Cutover: no client sees the old release after the new one"
echo
echo "The demo app with $WORKERS workers, uptime-probe with $CONCURRENCY keep-alive clients, one probe"
echo "run a row: $DURATION s without deploys, then $DEPLOYS deploys in $BURSTS bursts with $QUIET s"
echo "without deploys between them. *p99 deploys*: the bursts (each a marked part of the probe's"
echo "run, from its first deploy to $SETTLE_MS ms after its last); *p99 steady*: the rest, so that"
echo "the two alternate. requests, p99 deploys and max: the bursts'; failed, retried, mixed,"
echo "flapping: the whole run. s/deploy: the bursts' time over the deploys. A deploy: new release,"
echo "atomic-symlink, HUP (forkpool: poolctl reload, which waits until the new generation"
echo "serves), until /release answers it. flapping: responses"
echo "older than a release the same client had already seen. switch: cutover only, from the"
echo "old generation's stop signal to the new one's release, median / max (the queueing"
echo "delay of a deploy). heard: each old worker's stopping notice as forkpool heard it, after"
echo "the stop signals, median / max (the signal's way into the worker and the notice's way back:"
echo "the switch is the slowest worker's, plus forkpool's turn). load: the 1-minute load average"
echo "at the row's start and end. $(nproc) cores, shared by server, probe, deploys and whatever"
echo "else the machine runs. control: the cutover --handoff row's run with no deploys, its bursts"
echo "waits of 50 ms: the ratio that the two parts of one run show by chance on this machine."
[ "$PACE_MS" = 0 ] || echo "Deploys paced: one every $PACE_MS ms."
[ -n "$gver" ] || echo "gunicorn not found: its row is left out."
echo
echo "| server | deploys | s/deploy | requests | failed | retried | mixed | flapping | p99 steady | p99 deploys | ratio | max | switch | heard | load |"
echo "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for r in $ROWS; do
    row "$r"
done
if [ -n "$gver" ] && echo "$ROWS" | grep -q gunicorn; then
    echo
    echo "gunicorn: $gver, \`-k sync\`, each worker loads the release \`current\` names when it starts."
fi
