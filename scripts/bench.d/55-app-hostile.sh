#!/bin/sh
# The demo app against hostile clients, through the chain (tcplisten + forkpool
# -n 2): the time of one normal request (curl, a fresh connection) while K idle,
# K dribbling (one byte every 500 ms) or K slow-reading clients are attached; and
# wrk's socket errors under keep-alive load. Run by scripts/bench ($BIN set).
# APP: the app binary to measure (default $BIN/app): point it at an older build
# to compare. HOSTILE_K: the numbers of hostile clients (default "64 1000").
set -eu
BIN=${BIN:-target/release}
APP=${APP:-$BIN/app}
KS=${HOSTILE_K:-64 1000}
tmp=$(mktemp -d)
chain_pid=
crowd_pid=
stop_all() {
    [ -z "$crowd_pid" ] || { kill "$crowd_pid" 2>/dev/null || true; wait "$crowd_pid" 2>/dev/null || true; }
    crowd_pid=
    [ -z "$chain_pid" ] || { kill -TERM "$chain_pid" 2>/dev/null || true; wait "$chain_pid" 2>/dev/null || true; }
    chain_pid=
}
trap 'stop_all; rm -rf "$tmp"' EXIT

mkdir -p "$tmp/rel/htdocs"
echo r1 >"$tmp/rel/RELEASE"
echo '<!doctype html><body data-release="r1">r1</body>' >"$tmp/rel/htdocs/index.html"
head -c 10000000 /dev/zero >"$tmp/rel/htdocs/big.bin"

start_chain() {
    : >"$tmp/port"
    (ulimit -n 4096; exec "$BIN/tcplisten" -1 127.0.0.1 0 "$BIN/forkpool" -n 2 -d 3 \
        "$APP" --root "$tmp/rel" --ready-fd 3) >"$tmp/port" 2>"$tmp/chain.err" &
    chain_pid=$!
    i=0
    while [ ! -s "$tmp/port" ]; do
        i=$((i + 1))
        [ $i -lt 500 ] || { echo "the chain did not start: $(cat "$tmp/chain.err")" >&2; exit 1; }
        sleep 0.01
    done
    port=$(head -n 1 "$tmp/port")
    sleep 0.5 # the workers' readiness
}

# crowd KIND K: K hostile clients in one python process, held until killed;
# waits until all are connected.
crowd() {
    : >"$tmp/crowd.ok"
    python3 - "$port" "$1" "$2" "$tmp/crowd.ok" <<'PY' &
import resource, socket, sys, time
port, kind, k, ok = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
socks = []
for i in range(k):
    s = socket.socket()
    if kind == "slow":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    if kind == "slow":
        s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
    socks.append(s)
open(ok, "w").write("ok\n")
req = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
i = 0
while True:
    time.sleep(0.5)
    if kind == "dribble":
        for s in socks:
            try:
                s.send(req[i % len(req):i % len(req) + 1])
            except OSError:
                pass
        i += 1
PY
    crowd_pid=$!
    i=0
    while [ ! -s "$tmp/crowd.ok" ]; do
        i=$((i + 1))
        [ $i -lt 3000 ] || { echo "the crowd did not connect" >&2; exit 1; }
        sleep 0.01
    done
    sleep 0.3
}

# the time of one request; over CAP seconds (curl gives up) prints ">CAP s"
CAP=${HOSTILE_CAP:-60}
timed_get() {
    t=$(curl -s -o /dev/null -m "$CAP" -w '%{time_total}' "http://127.0.0.1:$port/") || t=
    case $t in "") echo "> ${CAP} s" ;; *) echo "$t" | awk '{ printf "%.1f", $1 * 1000 }' ;; esac
}

echo "## the demo app against hostile clients"
echo
echo "The first normal request (curl, fresh connection) while K hostile clients"
echo "are attached to tcplisten + forkpool -n 2 + app; $(nproc) cores. Target: under 100 ms."
echo
echo "| clients attached | K | normal request (ms) |"
echo "|---|---|---|"
for kind in idle dribble slow; do
    for k in $KS; do
        start_chain
        crowd "$kind" "$k"
        echo "| $kind | $k | $(timed_get) |"
        stop_all
    done
done
echo
echo "wrk (keep-alive, 2 threads, 64 connections, 5 s) against the chain: socket errors"
echo "(read/write errors are connections the server closed under the client)."
echo
echo "| requests | connect | read | write | timeout |"
echo "|---|---|---|---|---|"
start_chain
wrk -t 2 -c 64 -d 5s "http://127.0.0.1:$port/" >"$tmp/wrk.out" 2>&1 || true
n=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$tmp/wrk.out")
set -- $(sed -n 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1 \2 \3 \4/p' "$tmp/wrk.out") 0 0 0 0
echo "| ${n:-0} | $1 | $2 | $3 | $4 |"
stop_all
