#!/bin/sh
# forkpool's worker lifecycle (issue 14), three measures:
#
# 1. p99 during continuous recycling against steady: the demo app, $WORKERS workers,
#    uptime-probe at $CONCURRENCY keep-alive clients for $DURATION s, first without
#    recycling, then with --max-age 2 --surge 1 (every worker replaced about every 2 s,
#    replacement first); gunicorn --max-requests beside it (its workers exit first,
#    then the arbiter forks a new one).
# 2. Reload peak memory with and without --surge 1: $WORKERS workers of a "big app"
#    (test-worker holding 64 MiB each), a rolling reload, the sum of the workers' Pss
#    sampled every 10 ms by a sampler reading /proc (the peak), and the most workers
#    alive at once.
# 3. The cutover's switch with a long request in flight: the demo app (-m cutover,
#    --stop-timeout 5000) under the probe; before each deploy a client sends half a
#    request to an old worker and the rest 2 s later. "before": forkpool does not hear
#    the app's `stopping` line (the app's lines after readiness are withheld by a
#    wrapper, as forkpool before issue 14 ignored them); "after": it does. switch =
#    forkpool -v's "the old workers were gone after X ms", median / max.
#
# Run by scripts/bench ($BIN = target/release on PATH). Environment: WORKERS (4),
# CONCURRENCY (32), DURATION (10 s), DEPLOYS (5 per row of measure 3),
# BENCH_QUICK=1 (a smoke run: 8 clients, 3 s, 2 deploys).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$top/target/release}
export BIN
PATH="$BIN:$top/.venv/bin:$PATH"
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    CONCURRENCY=${CONCURRENCY:-8} DURATION=${DURATION:-3} DEPLOYS=${DEPLOYS:-2}
else
    CONCURRENCY=${CONCURRENCY:-32} DURATION=${DURATION:-10} DEPLOYS=${DEPLOYS:-5}
fi
WORKERS=${WORKERS:-4}
GUNICORN=${GUNICORN:-$(command -v gunicorn || echo "$top/.venv/bin/gunicorn")}

# shellcheck source=../bench-lib.sh
. "$top/scripts/bench-lib.sh"
# shellcheck source=../../demo/lib.sh
. "$top/demo/lib.sh"

work=$(mktemp -d)
srv_pid= probe_pid= client_pid=
cleanup() {
    stop_pid "$client_pid"
    stop_pid "$probe_pid"
    stop_pid "$srv_pid"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { echo "47-lifecycle: fatal: $*" >&2; exit 111; }
st_get() { sed -n "s/^$1=//p" "$STATE/status" 2>/dev/null | head -n 1; }

n_rel=0
new_release() { # a fresh release in $STATE, switched to; its id in $rel
    n_rel=$((n_rel + 1))
    rel=l$n_rel-$$
    build_release "$rel" >/dev/null 2>&1
    "$BIN/atomic-symlink" "releases/$rel" "$STATE/current"
}

# start_pool NAME FORKPOOL_OPTS... -- PROG...: tcplisten + forkpool in $work/NAME.
start_pool() {
    STATE=$work/$1
    shift
    mkdir -p "$STATE/releases" "$STATE/logs"
    new_release
    "$BIN/tcplisten" -1 127.0.0.1 0 "$BIN/forkpool" -v -S "$STATE/status" -p "$STATE/current" "$@" \
        </dev/null >"$STATE/port" 2>"$STATE/log" &
    srv_pid=$!
    i=0
    until [ -s "$STATE/port" ]; do
        i=$((i + 1))
        [ $i -lt 1000 ] || fail "tcplisten printed no port: $(tail -n 3 "$STATE/log")"
        sleep 0.01
    done
    port=$(head -n 1 "$STATE/port")
}

stop_srv() {
    stop_pid "$srv_pid"
    srv_pid=
}

probe() { # probe OUT: the probe for $DURATION s on $port
    "$BIN/uptime-probe" --json -q -c "$CONCURRENCY" -d "$DURATION" "http://127.0.0.1:$port/" >"$1" 2>>"$work/probe.err" || true
}

failed_text() {
    f=$(json failed "$1")
    [ "${f:-0}" = 0 ] && echo "${f:-?}" || echo "$f ($(failed_why "$1"))"
}

# ------------------------------------------------------------------ 1. recycling
recycling_row() { # LABEL STEADY DURING RECYCLES
    printf '| %s | %s | %s | %s | %s ms | %s ms | %s | %s ms | %s |\n' "$1" \
        "$(json requests "$3")" "$(failed_text "$3")" "$(json retried "$3")" \
        "$(json p99 "$2")" "$(json p99 "$3")" "$(p99_ratio "$2" "$3")" "$(json max "$3")" "$4"
}

recycling() {
    start_pool steady -n "$WORKERS" -d 3 -m cutover -k 10000 ./bin/app --root . --ready-fd 3
    wait_release "$port" "$rel" || fail "the app never answered"
    probe "$work/steady.json"
    stop_srv
    start_pool recycle -n "$WORKERS" -d 3 -m cutover --max-age 2 --jitter 10 --surge 1 -k 10000 \
        ./bin/app --root . --ready-fd 3
    wait_release "$port" "$rel" || fail "the app never answered"
    probe "$work/recycle.json"
    n=$(st_get recycled_age)
    stop_srv
    recycling_row "forkpool --max-age 2 --surge 1" "$work/steady.json" "$work/recycle.json" "$n"
    if [ -x "$GUNICORN" ]; then
        for g in steady recycle; do
            STATE=$work/g-$g
            mkdir -p "$STATE/releases"
            new_release
            extra=
            # about as often as forkpool's: each worker every ~2 s at gunicorn's steady rate
            if [ $g = recycle ]; then
                rate=$(json requests "$work/g-steady.json")
                per=$((rate / DURATION / WORKERS * 2))
                [ "$per" -gt 10 ] || per=10
                extra="--max-requests $per --max-requests-jitter $((per / 10 + 1))"
            fi
            # shellcheck disable=SC2086
            BENCH_CURRENT=$STATE/current "$GUNICORN" -w "$WORKERS" -k sync -b 127.0.0.1:0 $extra \
                --log-level info --pythonpath "$top/scripts" benchwsgi:app \
                </dev/null >/dev/null 2>"$STATE/log" &
            srv_pid=$!
            i=0
            until grep -q 'Listening at: ' "$STATE/log"; do
                i=$((i + 1))
                [ $i -lt 1000 ] || fail "gunicorn did not start"
                sleep 0.01
            done
            port=$(sed -n 's/.*Listening at: http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$STATE/log" | head -n 1)
            wait_release "$port" "$rel" || fail "gunicorn never answered"
            probe "$work/g-$g.json"
            stop_srv
        done
        n=$(grep -c 'Autorestarting worker' "$work/g-recycle/log" || true)
        recycling_row "gunicorn --max-requests $per" "$work/g-steady.json" "$work/g-recycle.json" "$n"
    fi
}

# ------------------------------------------------------------------ 2. peak memory
# sample PID OUT: until PID's children are 2*WORKERS... until killed, the sum of
# the Pss (KiB) of PID's children and their count, every 10 ms; the peaks to OUT.
sample() {
    python3 - "$1" "$2" <<'EOF' &
import os, sys, time, signal
pid, out = sys.argv[1], sys.argv[2]
peak_kib = peak_n = 0
stop = False
def done(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, done)
while not stop:
    kib = n = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[1] != pid:
                    continue
            with open(f"/proc/{p}/smaps_rollup") as f:
                for l in f:
                    if l.startswith("Pss:"):
                        kib += int(l.split()[1])
                        break
            n += 1
        except (OSError, IndexError):
            pass
    peak_kib, peak_n = max(peak_kib, kib), max(peak_n, n)
    time.sleep(0.01)
with open(out, "w") as f:
    f.write(f"{peak_kib} {peak_n}\n")
EOF
    sampler_pid=$!
}

memory_row() { # LABEL SURGE_OPTS...
    label=$1
    shift
    start_pool mem -n "$WORKERS" -d 3 "$@" "$BIN/test-worker" --notify-fd 3 --leak 64 --ready-delay 300
    end=$(($(now_ms) + 30000))
    until [ "$(st_get serving_generation)" = 1 ] && [ "$(st_get ready)" = "$WORKERS" ]; do
        [ "$(now_ms)" -lt "$end" ] || fail "the pool never came up: $(tail -n 3 "$STATE/log")"
        sleep 0.01
    done
    fp=$(st_get pid)
    sample "$fp" "$work/peak"
    sleep 0.5
    t0=$(now_ms)
    kill -HUP "$fp"
    until [ "$(st_get reload)" = ok ] && [ "$(grep -c '^worker=' "$STATE/status")" = "$WORKERS" ]; do
        [ "$(now_ms)" -lt $((t0 + 60000)) ] || fail "reload not over in 60 s"
        sleep 0.01
    done
    t1=$(now_ms)
    sleep 0.3
    stop_pid "$sampler_pid"
    stop_srv
    read -r kib n <"$work/peak"
    printf '| %s | %s MiB | %s | %.2f s |\n' "$label" "$((kib / 1024))" "$n" \
        "$(awk -v t=$((t1 - t0)) 'BEGIN { print t / 1000 }')"
}

# ------------------------------------------------------------------ 3. the switch
# A client that sends half a request now and the rest 2 s later.
long_request() {
    python3 - "$port" <<'EOF' &
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"GET / HTTP/1.1\r\n")
time.sleep(2)
s.sendall(b"Host: x\r\nConnection: close\r\n\r\n")
while s.recv(65536):
    pass
EOF
    client_pid=$!
}

# The app as forkpool starts it: "says" tells forkpool everything on -d 3;
# "quiet" passes only the readiness newline on (head -n 1 through a fifo) and
# withholds the lines after it, as forkpool before issue 14 ignored them.
cat >"$work/app-says" <<'EOF'
#!/bin/sh
exec ./bin/app "$@" --ready-fd 3
EOF
cat >"$work/app-quiet" <<'EOF'
#!/bin/sh
f=$(mktemp -u) && mkfifo "$f" || exit 111
head -n 1 <"$f" >&3 &
exec 3>&- 4>"$f"
rm -f "$f"
exec ./bin/app "$@" --ready-fd 4
EOF
chmod +x "$work/app-says" "$work/app-quiet"

switch_row() { # LABEL WRAPPER
    start_pool "sw-$2" -n "$WORKERS" -d 3 -m cutover -k 10000 "$work/app-$2" \
        --root . --stop-timeout 5000
    wait_release "$port" "$rel" || fail "the app never answered: $(tail -n 3 "$STATE/log")"
    # shellcheck disable=SC2046
    "$BIN/uptime-probe" --json -q -c "$CONCURRENCY" "http://127.0.0.1:$port/" >"$work/sw.json" 2>>"$work/probe.err" &
    probe_pid=$!
    sleep 0.5
    n=0
    while [ $n -lt "$DEPLOYS" ]; do
        long_request
        sleep 0.3
        g0=$(st_get generation)
        new_release
        kill -HUP "$srv_pid"
        end=$(($(now_ms) + 30000))
        until [ "$(st_get generation)" -gt "$g0" ] && [ "$(st_get reload)" = ok ]; do
            [ "$(now_ms)" -lt "$end" ] || fail "reload not over in 30 s"
            sleep 0.005
        done
        wait_release "$port" "$rel" || fail "release $rel never answered"
        wait "$client_pid" 2>/dev/null || true
        client_pid=
        n=$((n + 1))
    done
    stop_pid "$probe_pid"
    probe_pid=
    stop_srv
    sw=$(sed -n 's/.*the old workers were gone after \([0-9.]*\)ms.*/\1/p' "$STATE/log" | sort -n |
        awk '{ v[NR] = $1 } END { if (NR) printf "%.1f / %.1f ms", v[int((NR + 1) / 2)], v[NR]; else print "-" }')
    printf '| %s | %s | %s | %s | %s | %s |\n' "$1" "$n" "$(json requests "$work/sw.json")" \
        "$(failed_text "$work/sw.json")" "$(json flapping "$work/sw.json")" "$sw"
}

echo "## Worker lifecycle: recycling, surge, the switch (issue 14)"
echo
echo "Continuous recycling: the demo app, $WORKERS workers, uptime-probe with $CONCURRENCY keep-alive"
echo "clients for $DURATION s, steady (no recycling) then recycling (a fresh pool). $(nproc) cores."
echo
echo "| server | requests | failed | retried | p99 steady | p99 recycling | ratio | max | recycles |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
recycling
echo
echo "Rolling reload of $WORKERS workers holding 64 MiB each (test-worker --leak 64, ready after"
echo "300 ms): the peak of the workers' summed Pss and the most workers alive at once."
echo
echo "| forkpool | peak Pss | peak workers | reload |"
echo "|---|---:|---:|---:|"
memory_row "-m rolling"
memory_row "-m rolling --surge 1" --surge 1
echo
echo "Cutover with a 2 s request in flight on an old worker, $DEPLOYS deploys, the probe at"
echo "$CONCURRENCY clients throughout. switch: from the old generation's stop signal to the"
echo "new one's release, median / max."
echo
echo "| forkpool -m cutover | deploys | requests | failed | flapping | switch |"
echo "|---|---:|---:|---|---:|---:|"
switch_row "before: the app's stopping line withheld" quiet
switch_row "after: the app says stopping" says
