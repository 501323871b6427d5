#!/bin/sh
# Deploys under load, side by side in one run (issue 7):
#  1. demo/serve + demo/deploy with forkpool (each reload mode in $MODES) and with
#     loop-forever; gunicorn (sync workers) reloaded with HUP; gunicorn stopped and
#     started again. uptime-probe at $CONCURRENCY clients, keep-alive on and off:
#     once $DURATION s without deploys (steady), once while $DEPLOYS deploys run
#     back to back (and for at least $DURATION s). Failed, retried, mixed,
#     flapping, p99 steady against p99 during the deploys, max.
#  2. Throughput (wrk) of the demo app behind tcplisten + forkpool (demo/serve)
#     against the same app binding its own socket (app --listen --workers N).
#
# Run by scripts/bench ($BIN = target/release on PATH, .venv/bin on PATH).
# Environment: DEPLOYS (default 50), CONCURRENCY (32), DURATION (10 s), WORKERS (4),
# RESTART_DEPLOYS (instead of DEPLOYS for gunicorn stop/start, 10: each is slow and
# its failures are plain after a few), MODES (forkpool -m modes, default "cutover rolling all-at-once"), TP_SECS (seconds per wrk
# run, 3), TP_ROUNDS (wrk runs per row and server, the median is shown, 5; 0: none),
# BENCH_QUICK=1 (a smoke run: 3 deploys, 8 clients, 2 s, one 2 s wrk run), SERVERS
# (which rows: any of forkpool-MODE loop gunicorn-hup gunicorn-restart; default all;
# " " for none, the throughput alone),
# GUNICORN (default: gunicorn on PATH, else .venv/bin/gunicorn; its rows are left out
# without it).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$top/target/release}
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    DEPLOYS=${DEPLOYS:-3} CONCURRENCY=${CONCURRENCY:-8} DURATION=${DURATION:-2}
    TP_SECS=${TP_SECS:-2} TP_ROUNDS=${TP_ROUNDS:-1}
else
    DEPLOYS=${DEPLOYS:-50} CONCURRENCY=${CONCURRENCY:-32} DURATION=${DURATION:-10}
    TP_SECS=${TP_SECS:-3} TP_ROUNDS=${TP_ROUNDS:-5}
fi
WORKERS=${WORKERS:-4}
RESTART_DEPLOYS=${RESTART_DEPLOYS:-10}
MODES=${MODES:-"cutover rolling all-at-once"}
GUNICORN=${GUNICORN:-$(command -v gunicorn || echo "$top/.venv/bin/gunicorn")}
C=$CONCURRENCY

# shellcheck source=../bench-lib.sh
. "$top/scripts/bench-lib.sh"

tmp=$(mktemp -d)
# Every process this script starts is in one of these, killed by pid on exit.
srv_pid= probe_pid= app_pid=
cleanup() {
    stop_pid "$probe_pid"
    stop_pid "$srv_pid"
    stop_pid "$app_pid"
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The binaries measured are a copy taken now: nobody's rebuild of target/release
# changes them halfway, and demo/serve, given a BIN of its own, only checks it
# (with target/release it would run cargo at every start).
mkdir "$tmp/bin"
for b in tcplisten forkpool loop-forever setlock atomic-symlink deploy-release poolctl app uptime-probe; do
    cp "$BIN/$b" "$tmp/bin/$b" || { echo "60-deploys: fatal: $BIN/$b is missing (cargo build --release)" >&2; exit 111; }
done
BIN=$tmp/bin
export BIN
PATH="$BIN:$top/.venv/bin:$PATH"

# wait_for_file FILE: until FILE is not empty (10 s), else fail with LOG.
wait_for_file() {
    i=0
    while [ ! -s "$1" ]; do
        i=$((i + 1))
        [ $i -lt 1000 ] || { echo "60-deploys: fatal: $1 did not appear: $(tail -n 3 "$2" 2>/dev/null)" >&2; exit 111; }
        sleep 0.01
    done
}

# ---------------------------------------------------------------- the servers
# start_server KIND (forkpool-MODE, loop, gunicorn-hup, gunicorn-restart):
# sets $srv_pid and $port; the state is in $st.
start_server() {
    st=$tmp/$1
    mkdir -p "$st/logs"
    case $1 in
    forkpool-* | loop)
        if [ "$1" = loop ]; then sm=loop rm_=; else sm=forkpool rm_=${1#forkpool-}; fi
        STATE=$st PORT=0 WORKERS=$WORKERS SERVE_MODE=$sm RELOAD_MODE=$rm_ \
            "$top/demo/serve" </dev/null >/dev/null 2>>"$st/log" &
        srv_pid=$!
        wait_for_file "$st/port" "$st/log"
        port=$(cat "$st/port")
        wait_release "$port" "$(cat "$st/current/RELEASE")" || { echo "60-deploys: fatal: $1 does not answer" >&2; exit 111; }
        ;;
    gunicorn-*)
        gen=0
        mkdir -p "$st/releases"
        g_release
        gunicorn_start 0
        ;;
    esac
}

# deploy KIND: one deploy; its exit status.
deploy() {
    case $1 in
    forkpool-* | loop) STATE=$st "$top/demo/deploy" </dev/null >/dev/null 2>>"$st/log" ;;
    gunicorn-hup)
        g_release
        mark "$st/logs/marks" "$rel"
        kill -HUP "$srv_pid"
        wait_release "$port" "$rel"
        ;;
    gunicorn-restart)
        g_release
        mark "$st/logs/marks" "$rel"
        stop_pid "$srv_pid"
        srv_pid=
        gunicorn_start "$port"
        ;;
    esac
}

# g_release: a new release directory for gunicorn, switched to atomically ($rel).
g_release() {
    gen=$((gen + 1))
    rel=g$gen-$$
    # demo/lib.sh's release layout (gunicorn's app reads RELEASE and htdocs/)
    (STATE=$st && . "$top/demo/lib.sh" && build_release "$rel") >/dev/null 2>&1 ||
        { echo "60-deploys: fatal: unable to build release $rel in $st" >&2; exit 111; }
    "$BIN/atomic-symlink" "releases/$rel" "$st/current"
}

# gunicorn_start PORT (0: any; the chosen one is read from its log): sets $srv_pid,
# $port; returns when the current release answers.
gunicorn_start() {
    : >"$st/log"
    BENCH_CURRENT=$st/current "$GUNICORN" -w "$WORKERS" -k sync -b "127.0.0.1:$1" \
        --graceful-timeout 10 --log-level info --pythonpath "$top/scripts" benchwsgi:app \
        </dev/null >/dev/null 2>>"$st/log" &
    srv_pid=$!
    if [ "$1" = 0 ]; then
        i=0
        until grep -q 'Listening at: ' "$st/log"; do
            i=$((i + 1))
            [ $i -lt 1000 ] || { echo "60-deploys: fatal: gunicorn did not start: $(tail -n 3 "$st/log")" >&2; exit 111; }
            sleep 0.01
        done
        port=$(sed -n 's/.*Listening at: http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$st/log" | head -n 1)
    fi
    wait_release "$port" "$(cat "$st/current/RELEASE")"
}


# ------------------------------------------------------------ one scenario
# scenario KIND LABEL KA(on|off): steady run, then the deploys under load; one row.
scenario() {
    if [ "$3" = off ]; then ka=--no-keepalive; else ka=; fi
    url=http://127.0.0.1:$port/
    "$BIN/uptime-probe" --json -q -c "$C" -d "$DURATION" $ka "$url" >"$tmp/steady.json" 2>>"$tmp/probe.err" || true
    # shellcheck disable=SC2046
    "$BIN/uptime-probe" --json -q -c "$C" $ka $(picture "deploys-$1-keepalive-$3" "$st/logs/marks") "$url" >"$tmp/during.json" 2>>"$tmp/probe.err" &
    probe_pid=$!
    sleep 0.5 # the clients connect and settle before the first deploy
    want=$DEPLOYS
    [ "$1" != gunicorn-restart ] || [ "$RESTART_DEPLOYS" -ge "$want" ] || want=$RESTART_DEPLOYS
    n=0 bad=0
    t0=$(now_ms)
    while [ $n -lt "$want" ] || [ $(($(now_ms) - t0)) -lt $((DURATION * 1000)) ]; do
        deploy "$1" || bad=$((bad + 1))
        n=$((n + 1))
    done
    t1=$(now_ms)
    sleep 0.5
    stop_pid "$probe_pid"
    probe_pid=
    s=$tmp/steady.json d=$tmp/during.json
    p99s=$(json p99 "$s") p99d=$(json p99 "$d")
    ratio=$(p99_ratio "$s" "$d")
    failed=$(json failed "$d")
    if [ "${failed:-0}" != 0 ]; then
        failed="$failed = $(awk -v f="$failed" -v r="$(json requests "$d")" 'BEGIN { printf "%.1f%%", 100 * f / r }') ($(failed_why "$d"))"
    fi
    per=$(awk -v t=$((t1 - t0)) -v n=$n 'BEGIN { printf "%.2f", t / n / 1000 }')
    printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s ms | %s ms | %s | %s ms |\n' \
        "$2" "$3" "$((n - bad))/$n" "$per s" "$(json requests "$d")" "$failed" "$(json retried "$d")" \
        "$(json mixed "$d")" "$(json flapping "$d")" "$p99s" "$p99d" "$ratio" "$(json max "$d")"
}

kinds=
for m in $MODES; do kinds="$kinds forkpool-$m"; done
kinds="$kinds loop"
gver=
if [ -x "$GUNICORN" ]; then
    kinds="$kinds gunicorn-hup gunicorn-restart"
    gver=$("$GUNICORN" --version 2>&1 | head -n 1)
fi
kinds=${SERVERS:-$kinds}

echo "## Deploys under load"
echo
echo "uptime-probe, $C clients, against each server with $WORKERS workers (loop-forever: 1),"
echo "keep-alive on and off. *steady*: $DURATION s without deploys; then $DEPLOYS deploys back to"
echo "back (more if they take less than $DURATION s) while the probe runs; the counts are from the"
echo "run with deploys. A deploy is demo/deploy (new release, atomic-symlink, HUP, wait until"
echo "the new release answers), or for gunicorn the same steps with gunicorn's HUP, or TERM"
echo "and a fresh start on the same port (a plain restart). retried: failed before any byte on"
echo "a reused keep-alive connection, then served on a fresh one. flapping: a client saw an"
echo "older release after a newer one (expected when old and new workers accept side by"
echo "side; cutover, demo/serve's default, holds the new ones until the old ones stopped"
echo "accepting). ratio: p99 deploys / p99 steady. gunicorn stop/start: $RESTART_DEPLOYS restarts (or"
echo "as many as $DURATION s take); a refused connect fails at once and its client tries again"
echo "at once, so there *requests* counts attempts, not users. $(nproc) cores, shared by server,"
echo "probe and deploys."
[ -n "$gver" ] || echo "gunicorn not found: its rows are left out."
echo
echo "| server | keep-alive | deploys ok | s/deploy | requests | failed | retried | mixed | flapping | p99 steady | p99 deploys | ratio | max |"
echo "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"
for k in $kinds; do
    case $k in
    forkpool-*) label="forkpool -m ${k#forkpool-}" ;;
    loop) label="loop-forever" ;;
    gunicorn-hup) label="gunicorn, HUP" ;;
    gunicorn-restart) label="gunicorn, stop/start" ;;
    *)
        echo "60-deploys: fatal: unknown server $k in SERVERS (forkpool-MODE loop gunicorn-hup gunicorn-restart)" >&2
        exit 100
        ;;
    esac
    start_server "$k"
    for kav in on off; do
        scenario "$k" "$label" "$kav"
    done
    stop_pid "$srv_pid"
    srv_pid=
done
if [ -n "$gver" ]; then
    echo
    echo "gunicorn: $gver, \`-k sync\` (sync workers close every connection: keep-alive on is off for them)."
fi

# ------------------------------------------------------------ throughput
# wrk_rps CONNS KA: requests/s
wrk_rps() {
    if [ "$2" = off ]; then
        wrk -t 2 -c "$1" -d "${TP_SECS}s" -H 'Connection: close' "$url" >"$tmp/wrk.out" 2>&1 || true
    else
        wrk -t 2 -c "$1" -d "${TP_SECS}s" "$url" >"$tmp/wrk.out" 2>&1 || true
    fi
    rps=$(sed -n 's/^Requests\/sec: *//p' "$tmp/wrk.out")
    echo "${rps:-0}"
}

[ "$TP_ROUNDS" -gt 0 ] || exit 0
st=$tmp/tp
mkdir -p "$st"
STATE=$st PORT=0 WORKERS=$WORKERS "$top/demo/serve" </dev/null >/dev/null 2>>"$st/log" &
srv_pid=$!
wait_for_file "$st/port" "$st/log"
fp_port=$(cat "$st/port")
"$BIN/app" --root "$st/current" --listen 127.0.0.1:0 --workers "$WORKERS" >"$tmp/app.port" 2>>"$st/log" &
app_pid=$!
wait_for_file "$tmp/app.port" "$st/log"
app_port=$(head -n 1 "$tmp/app.port")
wait_release "$fp_port" "$(cat "$st/current/RELEASE")"
wait_release "$app_port" "$(cat "$st/current/RELEASE")"

echo
echo "## Throughput: tcplisten + forkpool against the self-bound app"
echo
echo "wrk ($(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2), 2 threads) against the demo app with $WORKERS workers: behind"
echo "demo/serve (setlock, tcplisten, forkpool -n $WORKERS; the workers accept on the inherited fd 0)"
echo "and binding its own socket (\`app --listen 127.0.0.1:0 --workers $WORKERS\`). Median of $TP_ROUNDS runs of"
echo "$TP_SECS s each, the two alternating (each first in every other round); same release,"
echo "$(nproc) cores shared by wrk and the app. Target: within 5%."
echo
echo "| connections | keep-alive | tcplisten + forkpool (req/s) | self-bound app (req/s) | ratio | each run: ours / self-bound |"
echo "|---:|---|---:|---:|---:|---|"
# median VALUES...
median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for conns in "$WORKERS" "$C"; do
    for kav in on off; do
        all_fp= all_app=
        r=0
        while [ $r -lt "$TP_ROUNDS" ]; do
            # each goes first in every other round
            if [ $((r % 2)) = 0 ]; then
                url=http://127.0.0.1:$fp_port/
                all_fp="$all_fp $(wrk_rps "$conns" "$kav")"
            fi
            url=http://127.0.0.1:$app_port/
            all_app="$all_app $(wrk_rps "$conns" "$kav")"
            if [ $((r % 2)) = 1 ]; then
                url=http://127.0.0.1:$fp_port/
                all_fp="$all_fp $(wrk_rps "$conns" "$kav")"
            fi
            r=$((r + 1))
        done
        # shellcheck disable=SC2086
        m_fp=$(median $all_fp) m_app=$(median $all_app)
        ratio=$(awk -v a="$m_fp" -v b="$m_app" 'BEGIN { if (b > 0) printf "%.1f%%", 100 * a / b; else print "-" }')
        # shellcheck disable=SC2086
        printf '| %s | %s | %.0f | %.0f | %s | %s |\n' "$conns" "$kav" "$m_fp" "$m_app" "$ratio" \
            "$(printf '%s\n' $all_fp $all_app | awk '{ printf "%s%.0f", (NR > 1 ? (NR == '"$TP_ROUNDS"' + 1 ? " / " : ", ") : ""), $1 }')"
    done
done
echo
