#!/bin/sh
# Upgrading the server itself while it serves (issue 13), in one run: the demo app
# (4 workers, one release) under uptime-probe at $CONCURRENCY keep-alive clients,
# first $DURATION s without upgrades (steady), then while $UPGRADES upgrades of the
# server run back to back.
#
# Rows:
# - forkpool, USR2 in place: two builds alternate at the path forkpool was started
#   by (the release binary, and a copy with bytes appended: another build id),
#   renamed into place; USR2; until the status file says upgrade=ok with the count
#   one up. Time: from the USR2 to that line (median / max), measured by the shell
#   polling the status file every 2 ms (so a few ms of it are the poll).
# - forkpool, full chain restart: TERM to the chain (tcplisten + forkpool, one
#   process), wait for its end, start it again on the same port, until the status
#   file says every worker is ready. The socket is closed meanwhile.
# - gunicorn, USR2 + QUIT: USR2 to the master (a new master and its workers start
#   beside the old ones, on the inherited socket), wait until the new master's pid
#   file (PIDFILE.2) is there and its workers have booted, QUIT the old master,
#   until the new master has taken PIDFILE over.
#
# Run by scripts/bench ($BIN = target/release on PATH, .venv/bin on PATH).
# Environment: UPGRADES (default 50), CONCURRENCY (16), DURATION (10 s), WORKERS (4),
# ROWS (any of inplace restart gunicorn; default all), GUNICORN, BENCH_QUICK=1 (a
# smoke run: 5 upgrades, 8 clients, 2 s).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$top/target/release}
export BIN
PATH="$BIN:$top/.venv/bin:$PATH"
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    UPGRADES=${UPGRADES:-5} CONCURRENCY=${CONCURRENCY:-8} DURATION=${DURATION:-2}
else
    UPGRADES=${UPGRADES:-50} CONCURRENCY=${CONCURRENCY:-16} DURATION=${DURATION:-10}
fi
WORKERS=${WORKERS:-4}
GUNICORN=${GUNICORN:-$(command -v gunicorn || echo "$top/.venv/bin/gunicorn")}
ROWS=${ROWS:-"inplace restart gunicorn"}

# shellcheck source=../bench-lib.sh
. "$top/scripts/bench-lib.sh"

work=$(mktemp -d)
srv_pid= probe_pid=
cleanup() {
    stop_pid "$probe_pid"
    stop_pid "$srv_pid"
    if [ -s "$work/gunicorn.pid" ]; then kill -TERM "$(cat "$work/gunicorn.pid")" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=../../demo/lib.sh
. "$top/demo/lib.sh"

fail() { echo "48-upgrade: fatal: $*" >&2; exit 111; }
st_get() { sed -n "s/^$1=//p" "$STATE/status" 2>/dev/null | head -n 1; }

# The two builds, and the path the chain runs.
mkdir -p "$work/bin"
cp "$BIN/forkpool" "$work/forkpool.a"
cp "$BIN/forkpool" "$work/forkpool.b"
printf '\0bench build b\0' >>"$work/forkpool.b"
install_build() { cp "$work/forkpool.$1" "$work/bin/forkpool.new" && mv "$work/bin/forkpool.new" "$work/bin/forkpool"; }
install_build a

# chain PORT: tcplisten + forkpool in $STATE on PORT (0: any), in the background.
chain() {
    rm -f "$STATE/status" "$STATE/port"
    "$BIN/tcplisten" -1 127.0.0.1 "$1" "$work/bin/forkpool" -n "$WORKERS" -m cutover -d 3 \
        -t 10000 -k 10000 -p "$STATE/current" -S "$STATE/status" \
        ./bin/app --root . --ready-fd 3 </dev/null >"$STATE/port" 2>>"$STATE/log" &
    srv_pid=$!
}

# until_ready: every worker ready (30 s).
until_ready() {
    end=$(($(now_ms) + 30000))
    until [ "$(st_get ready)" = "$WORKERS" ] && [ "$(st_get workers)" = "$WORKERS" ]; do
        [ "$(now_ms)" -lt "$end" ] || fail "the chain never became ready: $(tail -n 3 "$STATE/log")"
        sleep 0.002
    done
}

start() {
    STATE=$work/$1
    mkdir -p "$STATE/releases"
    rel=u1
    build_release "$rel" >/dev/null 2>&1
    "$BIN/atomic-symlink" "releases/$rel" "$STATE/current"
    case $1 in
    gunicorn)
        BENCH_CURRENT=$STATE/current "$GUNICORN" -w "$WORKERS" -k sync -b 127.0.0.1:0 \
            --pid "$work/gunicorn.pid" --graceful-timeout 10 --log-level info \
            --pythonpath "$top/scripts" benchwsgi:app </dev/null >/dev/null 2>"$STATE/log" &
        srv_pid=$!
        i=0
        until grep -q 'Listening at: ' "$STATE/log"; do
            i=$((i + 1))
            [ $i -lt 3000 ] || fail "gunicorn did not start: $(tail -n 3 "$STATE/log")"
            sleep 0.01
        done
        port=$(sed -n 's/.*Listening at: http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$STATE/log" | head -n 1)
        ;;
    *)
        chain 0
        i=0
        until [ -s "$STATE/port" ]; do
            i=$((i + 1))
            [ $i -lt 1000 ] || fail "tcplisten printed no port: $(tail -n 3 "$STATE/log")"
            sleep 0.01
        done
        port=$(head -n 1 "$STATE/port")
        until_ready
        ;;
    esac
    wait_release "$port" "$rel" || fail "release $rel never answered on port $port"
}

# upgrade ROW N: one upgrade; its time in ms appended to $work/times.
upgrade() {
    t0=$(now_ms)
    case $1 in
    inplace)
        pid=$(st_get pid) count=$(st_get upgrades)
        if [ $(($2 % 2)) = 0 ]; then install_build b; else install_build a; fi
        t0=$(now_ms)
        kill -USR2 "$pid"
        end=$((t0 + 30000))
        until [ "$(st_get upgrades)" = $((count + 1)) ] && [ "$(st_get upgrade)" = ok ]; do
            [ "$(st_get upgrade)" = failed ] && fail "upgrade refused: $(st_get reason)"
            [ "$(now_ms)" -lt "$end" ] || fail "upgrade $2 not over in 30 s"
            sleep 0.002
        done
        [ "$(st_get pid)" = "$pid" ] || fail "the pid changed"
        ;;
    restart)
        stop_pid "$srv_pid"
        chain "$port"
        until_ready
        ;;
    gunicorn)
        # gunicorn 2x: the new master writes PIDFILE.2, and takes PIDFILE over
        # once the old master is gone.
        old=$(cat "$work/gunicorn.pid")
        booted=$(grep -c 'Booting worker' "$STATE/log")
        rm -f "$work/gunicorn.pid.2"
        kill -USR2 "$old"
        end=$((t0 + 60000))
        until [ -s "$work/gunicorn.pid.2" ] &&
            [ "$(grep -c 'Booting worker' "$STATE/log")" -ge $((booted + WORKERS)) ]; do
            [ "$(now_ms)" -lt "$end" ] || fail "gunicorn's new master did not come up: $(tail -n 3 "$STATE/log")"
            sleep 0.005
        done
        new=$(cat "$work/gunicorn.pid.2")
        kill -QUIT "$old"
        # the first master is our child: reap it
        if [ "$old" = "$srv_pid" ]; then wait "$srv_pid" 2>/dev/null || true; srv_pid=; fi
        until [ "$(cat "$work/gunicorn.pid" 2>/dev/null)" = "$new" ] && ! kill -0 "$old" 2>/dev/null; do
            [ "$(now_ms)" -lt "$end" ] || fail "gunicorn's old master did not go, or the new one did not take the pid file over"
            sleep 0.005
        done
        ;;
    esac
    echo $(($(now_ms) - t0)) >>"$work/times"
}

row() {
    start "$1"
    : >"$work/times"
    url=http://127.0.0.1:$port/
    "$BIN/uptime-probe" --json -q -c "$CONCURRENCY" -d "$DURATION" "$url" >"$work/steady.json" 2>>"$work/probe.err" || true
    "$BIN/uptime-probe" --json -q -c "$CONCURRENCY" -t 30000 "$url" >"$work/during.json" 2>>"$work/probe.err" &
    probe_pid=$!
    sleep 0.5
    n=0
    while [ $n -lt "$UPGRADES" ]; do
        upgrade "$1" "$n"
        n=$((n + 1))
    done
    sleep 0.5
    stop_pid "$probe_pid"
    probe_pid=
    if [ "$1" = gunicorn ]; then
        kill -TERM "$(cat "$work/gunicorn.pid")" 2>/dev/null || true
        rm -f "$work/gunicorn.pid"
    fi
    stop_pid "$srv_pid"
    srv_pid=
    sj=$work/steady.json dj=$work/during.json
    failed=$(json failed "$dj")
    if [ "${failed:-0}" != 0 ]; then
        failed="$failed ($(failed_why "$dj"))"
    fi
    t=$(sort -n "$work/times" | awk '{ v[NR] = $1 } END { printf "%d / %d ms", v[int((NR + 1) / 2)], v[NR] }')
    case $1 in
    inplace) label="forkpool, USR2 in place" ;;
    restart) label="forkpool, full chain restart (TERM, start again)" ;;
    gunicorn) label="gunicorn, USR2 + QUIT" ;;
    esac
    printf '| %s | %s | %s | %s | %s | %s | %s ms | %s ms | %s | %s ms |\n' \
        "$label" "$n" "$t" "$(json requests "$dj")" "$failed" "$(json mixed "$dj")" \
        "$(json p99 "$sj")" "$(json p99 "$dj")" "$(p99_ratio "$sj" "$dj")" "$(json max "$dj")"
}

gver=
if [ -x "$GUNICORN" ]; then
    gver=$("$GUNICORN" --version 2>&1 | head -n 1)
else
    ROWS=$(echo "$ROWS" | sed 's/gunicorn//')
fi

echo "## Upgrading the server itself while it serves"
echo
echo "The demo app with $WORKERS workers (one release), uptime-probe with $CONCURRENCY keep-alive"
echo "clients: *steady* $DURATION s without upgrades, then $UPGRADES upgrades of the server back to"
echo "back while the probe runs (the counts are from that run). time: from the signal (or the"
echo "TERM) until the new server serves, median / max, as a shell polling every 2-5 ms sees it."
echo "$(nproc) cores, shared by server, probe and script."
[ -n "$gver" ] || echo "gunicorn not found: its row is left out."
echo
echo "| server | upgrades | time | requests | failed | mixed | p99 steady | p99 upgrades | ratio | max |"
echo "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|"
for r in $ROWS; do
    row "$r"
done
echo
echo "In place: same pid, same workers, the socket never closed; the time is forkpool's"
echo "check (the new binary reads the state) plus the exec and the new image's start."
if [ -n "$gver" ]; then
    echo "gunicorn: $gver, \`-k sync\`; the master's pid changes at each upgrade."
fi
