#!/bin/sh
# The verified switch (issue 26), examples/gunicorn's recipe as given, side by
# side in one run, under uptime-probe ($CONCURRENCY clients, keep-alive):
#  1. a release that imports fine and answers 500 to everything, deployed
#     with deploy-release -c .../release: with the verified switch
#     (--confirm-timeout: the old generation parked, reverted warm), without it
#     (CONFIRM_TIMEOUT=off: the old release started again, cold), and the peer,
#     gunicorn's own HUP (no check: the 500s go on until the next deploy; counted
#     over $PEER_SECS s). deploy-release's time to its exit, the failed
#     requests, how long the new release served (deploy-release's verdict
#     line), whether the old workers are the same processes afterwards.
#  2. $DEPLOYS good deploys back to back, with and without the verified switch:
#     median and max deploy time, failed, mixed, flapping (goal: the verified
#     switch no slower than 1.2x).
#
# Run by scripts/bench ($BIN = target/release on PATH, .venv/bin on PATH).
# Environment: DEPLOYS (default 20), CONCURRENCY (8), WORKERS (4), PEER_SECS
# (10), BENCH_QUICK=1 (3 deploys, 3 s for the peer), GUNICORN (default: on
# PATH, else .venv/bin/gunicorn; without it the script says so and exits 0).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$top/target/release}
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    DEPLOYS=${DEPLOYS:-3} PEER_SECS=${PEER_SECS:-3}
else
    DEPLOYS=${DEPLOYS:-20} PEER_SECS=${PEER_SECS:-10}
fi
C=${CONCURRENCY:-8}
WORKERS=${WORKERS:-4}
GUNICORN=${GUNICORN:-$(command -v gunicorn || echo "$top/.venv/bin/gunicorn")}

# shellcheck source=../bench-lib.sh
. "$top/scripts/bench-lib.sh"

if [ ! -x "$GUNICORN" ]; then
    echo "62-verified: gunicorn is missing (scripts/test-deps): nothing measured" >&2
    exit 0
fi

tmp=$(mktemp -d)
srv_pid= probe_pid=
cleanup() {
    stop_pid "$probe_pid"
    stop_pid "$srv_pid"
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir "$tmp/bin"
for b in tcplisten forkpool deploy-release uptime-probe; do
    cp "$BIN/$b" "$tmp/bin/$b" || { echo "62-verified: fatal: $BIN/$b is missing (cargo build --release)" >&2; exit 111; }
done
BIN=$tmp/bin
PATH=$BIN:$(dirname "$GUNICORN"):$PATH
export PATH

# release SITE ID KIND: releases/ID of examples/gunicorn (KIND good or fails500).
release() {
    r=$1/releases/$2
    mkdir -p "$r"
    cp "$top/examples/gunicorn/app.py" "$top/examples/gunicorn/gunicorn.conf.py" "$r/"
    echo "$2" >"$r/RELEASE"
    if [ "$3" = fails500 ]; then
        cat >>"$r/app.py" <<'PY'


@app.before_request
def fails():
    return Response('release %s fails\n' % RELEASE, status=500, headers={'X-Release': RELEASE})
PY
    fi
}

# start_site NAME CONFIRM: a site under examples/gunicorn/run (CONFIRM: the
# CONFIRM_TIMEOUT it gets, or off); sets site, port, srv_pid.
start_site() {
    site=$tmp/$1
    mkdir -p "$site/releases"
    release "$site" r1 good
    ln -s releases/r1 "$site/current"
    SITE=$site PORT=0 WORKERS=$WORKERS CONFIRM_TIMEOUT=$2 BIN=$BIN \
        "$top/examples/gunicorn/run" >"$site/log" 2>&1 &
    srv_pid=$!
    end=$(($(now_ms) + 60000))
    until [ -s "$site/port" ]; do
        [ "$(now_ms)" -lt "$end" ] || { echo "62-verified: fatal: $1 never started" >&2; exit 111; }
        sleep 0.05
    done
    port=$(cat "$site/port")
    wait_release "$port" r1 || { echo "62-verified: fatal: $1 never served r1" >&2; exit 111; }
}

start_probe() {
    uptime-probe --json -q -c "$C" -t 30000 "http://127.0.0.1:$port/" >"$1" 2>/dev/null &
    probe_pid=$!
    sleep 1
}

stop_probe() {
    kill -INT "$probe_pid" 2>/dev/null || true
    wait "$probe_pid" 2>/dev/null || true
    probe_pid=
}

# pids_of_serving: the pids of the serving generation's workers, sorted.
pids_of_serving() {
    g=$(sed -n 's/^serving_generation=//p' "$site/status")
    awk -v g="$g" '/^worker=/ { split($0, f, " "); if (f[2] == g) print f[3] }' "$site/status" | sort -n | tr '\n' ' '
}

# deploy ID: deploy-release of releases/ID; sets rc, ms, err.
deploy() {
    t0=$(now_ms)
    rc=0
    deploy-release -t 60 -c "http://127.0.0.1:$port/release" "$site/releases/$1" \
        "$site/current" "$site/status" 2>"$tmp/err" || rc=$?
    ms=$(($(now_ms) - t0))
    err=$(cat "$tmp/err")
}

echo "### The verified switch: a release that answers 500 to everything (examples/gunicorn, $WORKERS workers, $C clients)"
echo
echo "| how | deploy-release exits | after | failed requests | the 500 release served (until undone) | old workers afterwards |"
echo "|---|---|---|---|---|---|"
for how in verified cold; do
    if [ $how = verified ]; then confirm=10000; else confirm=off; fi
    start_site "bad-$how" $confirm
    sleep 1
    before=$(pids_of_serving)
    release "$site" r2 fails500
    start_probe "$tmp/probe-bad-$how.json"
    deploy r2
    sleep 1
    stop_probe
    after=$(pids_of_serving)
    served=$(echo "$err" | sed -n 's/.*served \([0-9]*\) ms.*/\1 ms/p' | tail -n 1)
    if [ "$before" = "$after" ]; then same="the same processes"; else same="new processes (cold start)"; fi
    f=$(json failed "$tmp/probe-bad-$how.json")
    why=$(failed_why "$tmp/probe-bad-$how.json")
    case $how in
        verified) label="forkpool --confirm-timeout (parked, reverted warm)" ;;
        cold) label="forkpool -m cutover, no --confirm-timeout (cold rollback)" ;;
    esac
    printf '| %s | %s | %.2f s | %s%s | %s | %s |\n' "$label" "$rc" "$(echo "$ms" | awk '{ print $1 / 1000 }')" \
        "$f" "${why:+ ($why)}" "${served:--}" "$same"
    stop_pid "$srv_pid"
    srv_pid=
done

# the peer: gunicorn's own HUP, no check; the 500s go on until the next deploy
site=$tmp/peer
mkdir -p "$site/releases"
release "$site" r1 good
release "$site" r2 fails500
ln -s releases/r1 "$site/current"
"$GUNICORN" --chdir "$site/current" --workers "$WORKERS" --bind 127.0.0.1:0 app:app >"$site/log" 2>&1 &
srv_pid=$!
end=$(($(now_ms) + 60000))
until port=$(grep -o 'Listening at: http://127.0.0.1:[0-9]*' "$site/log" | grep -o '[0-9]*$'); do
    [ "$(now_ms)" -lt "$end" ] || { echo "62-verified: fatal: gunicorn never started" >&2; exit 111; }
    sleep 0.05
done
wait_release "$port" r1
start_probe "$tmp/probe-peer.json"
ln -s releases/r2 "$site/current.new" && mv -T "$site/current.new" "$site/current"
kill -HUP "$srv_pid"
sleep "$PEER_SECS"
stop_probe
f=$(json failed "$tmp/probe-peer.json")
printf '| gunicorn HUP (the peer: no check, no undo) | - | - | %s in %s s (%s) | until the next deploy | new processes |\n' \
    "$f" "$PEER_SECS" "$(failed_why "$tmp/probe-peer.json")"
stop_pid "$srv_pid"
srv_pid=
echo

echo "### Good deploys with and without the verified switch ($DEPLOYS deploys back to back, $C clients)"
echo
echo "| how | deploys ok | median | max | failed | mixed | flapping |"
echo "|---|---|---|---|---|---|---|"
med_verified= med_cold=
for how in verified cold; do
    if [ $how = verified ]; then confirm=10000; else confirm=off; fi
    start_site "good-$how" $confirm
    start_probe "$tmp/probe-good-$how.json"
    ok=0
    : >"$tmp/times"
    i=2
    while [ $i -le $((DEPLOYS + 1)) ]; do
        release "$site" "r$i" good
        deploy "r$i"
        [ "$rc" = 0 ] && ok=$((ok + 1))
        echo "$ms" >>"$tmp/times"
        i=$((i + 1))
    done
    stop_probe
    med=$(sort -n "$tmp/times" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
    max=$(sort -n "$tmp/times" | tail -n 1)
    j=$tmp/probe-good-$how.json
    case $how in
        verified) label="forkpool --confirm-timeout (confirm)"; med_verified=$med ;;
        cold) label="forkpool -m cutover, no --confirm-timeout"; med_cold=$med ;;
    esac
    printf '| %s | %s of %s | %.3f s | %.3f s | %s | %s | %s |\n' "$label" "$ok" "$DEPLOYS" \
        "$(echo "$med" | awk '{ print $1 / 1000 }')" "$(echo "$max" | awk '{ print $1 / 1000 }')" \
        "$(json failed "$j")" "$(json mixed "$j")" "$(json flapping "$j")"
    stop_pid "$srv_pid"
    srv_pid=
done
echo
awk -v a="$med_verified" -v b="$med_cold" 'BEGIN { if (b > 0) printf "Median deploy time, verified over not: %.2fx (goal: at most 1.2x).\n", a / b }'
echo
