#!/bin/sh
# The costs of the second attack round's fixes (issue 24), with the peer beside
# ours: pool-health's check while K idle clients hold connections (poll loop;
# the demo app beside it), the end-to-end check (-c: one request through the
# site) beside the plain one and beside that request alone, and the bounded,
# non-blocking status read of poolctl beside cat(1). Run by scripts/bench ($BIN set).
set -eu
BIN=${BIN:-target/release}
tmp=$(mktemp -d)
chain_pid=
health_pid=
crowd_pid=
stop_pid() {
    [ -n "$1" ] || return 0
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
stop_all() {
    stop_pid "$crowd_pid"
    crowd_pid=
    stop_pid "$health_pid"
    health_pid=
    stop_pid "$chain_pid"
    chain_pid=
}
trap 'stop_all; rm -rf "$tmp"' EXIT

mkdir -p "$tmp/rel/htdocs"
echo r1 >"$tmp/rel/RELEASE"
echo '<!doctype html><body data-release="r1">r1</body>' >"$tmp/rel/htdocs/index.html"

# wait_file FILE: until FILE is not empty (5 s)
wait_file() {
    i=0
    while [ ! -s "$1" ]; do
        i=$((i + 1))
        [ $i -lt 500 ] || { echo "$1 never came" >&2; exit 1; }
        sleep 0.01
    done
}

# the site: tcplisten + forkpool -n 2 -S status + app; $port
(ulimit -n 4096; exec "$BIN/tcplisten" -1 127.0.0.1 0 "$BIN/forkpool" -n 2 -d 3 -S "$tmp/status" \
    "$BIN/app" --root "$tmp/rel" --ready-fd 3) >"$tmp/port" 2>"$tmp/chain.err" &
chain_pid=$!
wait_file "$tmp/port"
port=$(head -n 1 "$tmp/port")
i=0
until grep -q '^ready=2$' "$tmp/status" 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 1000 ] || { echo "the pool never got ready" >&2; exit 1; }; sleep 0.01
done

# health ARGS...: pool-health behind tcplisten; $hport
health() {
    stop_pid "$health_pid"
    : >"$tmp/hport"
    (ulimit -n 4096; exec "$BIN/tcplisten" -1 127.0.0.1 0 "$BIN/pool-health" "$@") >"$tmp/hport" 2>"$tmp/health.err" &
    health_pid=$!
    wait_file "$tmp/hport"
    hport=$(head -n 1 "$tmp/hport")
}

# crowd PORT K: K idle connections held until killed; waits until connected
crowd() {
    stop_pid "$crowd_pid"
    : >"$tmp/crowd.ok"
    python3 - "$1" "$2" "$tmp/crowd.ok" <<'PY' &
import resource, socket, sys, time
port, k, ok = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
socks = []
for i in range(k):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        pass
    socks.append(s)
open(ok, "w").write("ok\n")
time.sleep(600)
PY
    crowd_pid=$!
    i=0
    while [ ! -s "$tmp/crowd.ok" ]; do
        i=$((i + 1)); [ $i -lt 6000 ] || { echo "the crowd did not connect" >&2; exit 1; }; sleep 0.01
    done
    sleep 0.3
}

# timed_get URL: ms of one GET (curl, fresh connection); "> 30 s" when it gives up
timed_get() {
    t=$(curl -s -o /dev/null -m 30 -w '%{time_total}' "$1") || t=
    case $t in "") echo "> 30 s" ;; *) echo "$t" | awk '{ printf "%.1f", $1 * 1000 }' ;; esac
}

echo "## pool-health against idle clients, the end-to-end check, the bounded status read"
echo
echo "The first health check (curl, fresh connection) while K idle connections are"
echo "open to pool-health \`-t 10000\` (each may stay 10 s), and the same request to"
echo "the demo app beside it. Before issue 24 pool-health took one connection at a"
echo "time: K idle ones delayed a check by K x 10 s. Target: under 100 ms."
echo
echo "| idle connections | pool-health check (ms) | demo app GET /release (ms) |"
echo "|---|---|---|"
for k in 0 8 1000; do
    health -t 10000 "$tmp/status"
    crowd "$hport" "$k"
    h=$(timed_get "http://127.0.0.1:$hport/")
    stop_pid "$crowd_pid"; crowd_pid=
    crowd "$port" "$k"
    a=$(timed_get "http://127.0.0.1:$port/release")
    stop_pid "$crowd_pid"; crowd_pid=
    echo "| $k | $h | $a |"
done
echo
echo "One check, hyperfine over curl (fresh connection each): pool-health alone, with"
echo "\`-c\` (one more request through the site's socket), and that request alone."
echo
health "$tmp/status"
plain=$hport
plain_pid=$health_pid
health_pid=
health -c "http://127.0.0.1:$port/release" "$tmp/status"
hyperfine -N --warmup 20 --min-runs 300 --export-markdown "$tmp/c.md" \
    -n "pool-health" "curl -s -o /dev/null http://127.0.0.1:$plain/" \
    -n "pool-health -c URL" "curl -s -o /dev/null http://127.0.0.1:$hport/" \
    -n "GET URL alone (the demo app)" "curl -s -o /dev/null http://127.0.0.1:$port/release" >/dev/null 2>&1
cat "$tmp/c.md"
stop_pid "$plain_pid"
echo
echo "\`poolctl status\` (the status file read non-blocking, a regular file only, at"
echo "most 1 MiB; the pid checked in /proc) beside \`cat\` of the same file:"
echo
hyperfine -N --warmup 20 --min-runs 300 -i --export-markdown "$tmp/s.md" \
    -n "poolctl status" "$BIN/poolctl status $tmp/status" \
    -n "cat (peer)" "cat $tmp/status" >/dev/null 2>&1
cat "$tmp/s.md"
stop_all
