#!/bin/sh
# pool-health's metrics: the time of one scrape of GET /metrics beside
# node_exporter serving the same figures from `pool-health -o`'s file (its textfile
# collector alone, and with its default collectors), the time of one `pool-health -o`,
# and the size of each exposition. Run by scripts/bench ($BIN set).
set -eu
BIN=${BIN:-target/release}
tmp=$(mktemp -d)
pids=""
# each started by setsid (a group of its own): the group goes; forkpool ends its workers
cleanup() { for p in $pids; do kill -KILL "-$p" 2>/dev/null || :; done; rm -rf "$tmp"; }
trap cleanup EXIT
cd "$tmp"
mkdir -p r1 textfile
printf '#!/bin/sh\nexec sleep 100000\n' >r1/run
chmod +x r1/run
ln -s r1 current
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# wait_port PORT: until something listens there (10 s at most)
wait_port() { python3 - "$1" <<'PY'
import socket, sys, time
end = time.time() + 10
while time.time() < end:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close(); sys.exit(0)
    except OSError:
        time.sleep(0.02)
sys.exit(1)
PY
}
setsid "$BIN/tcplisten" 127.0.0.1 0 "$BIN/forkpool" -n 4 -a 100 -p current -S status ./run </dev/null >/dev/null 2>&1 &
pids="$pids $!"
i=0
until grep -q '^ready=4$' status 2>/dev/null; do i=$((i + 1)); [ $i -lt 500 ] || { echo "forkpool never ready" >&2; exit 1; }; sleep 0.02; done
hp=$(free_port)
setsid "$BIN/tcplisten" 127.0.0.1 "$hp" "$BIN/pool-health" status </dev/null >/dev/null 2>&1 &
pids="$pids $!"
"$BIN/pool-health" -o textfile/forkpool.prom status
np=$(free_port)
setsid prometheus-node-exporter --web.listen-address=127.0.0.1:$np --collector.disable-defaults \
    --collector.textfile --collector.textfile.directory="$tmp/textfile" </dev/null >/dev/null 2>&1 &
pids="$pids $!"
dp=$(free_port)
setsid prometheus-node-exporter --web.listen-address=127.0.0.1:$dp \
    --collector.textfile.directory="$tmp/textfile" </dev/null >/dev/null 2>&1 &
pids="$pids $!"
wait_port "$hp" && wait_port "$np" && wait_port "$dp"

echo "## pool-health /metrics"
echo
echo "One scrape of the pool's figures (4 workers), hyperfine, \`curl -s\` each time (so curl's"
echo "own start is in every row): pool-health's \`GET /metrics\` (reads the status file and"
echo "/proc afresh) beside node_exporter $(prometheus-node-exporter --version 2>&1 | head -n 1 | sed 's/.*version \([^ ]*\).*/\1/')"
echo "serving the file \`pool-health -o\` wrote (textfile collector alone, then with its"
echo "default collectors, as it runs on a host), and one \`pool-health -o\` (a process: exec,"
echo "read, write a temporary, rename)."
echo
hyperfine -N --warmup 20 --min-runs 300 --export-markdown t.md \
    -n "pool-health GET /metrics" "curl -s -o /dev/null http://127.0.0.1:$hp/metrics" \
    -n "node_exporter, textfile collector" "curl -s -o /dev/null http://127.0.0.1:$np/metrics" \
    -n "node_exporter, default collectors" "curl -s -o /dev/null http://127.0.0.1:$dp/metrics" \
    -n "pool-health -o FILE" "$BIN/pool-health -o $tmp/textfile/forkpool.prom $tmp/status" >/dev/null 2>&1
cat t.md
echo
ours=$(curl -s http://127.0.0.1:$hp/metrics | wc -c)
text=$(curl -s http://127.0.0.1:$np/metrics | wc -c)
full=$(curl -s http://127.0.0.1:$dp/metrics | wc -c)
series=$(curl -s http://127.0.0.1:$hp/metrics | grep -vc '^#')
echo "| exposition | bytes |"
echo "|---|---:|"
echo "| pool-health /metrics ($series series) | $ours |"
echo "| node_exporter, textfile collector (ours plus its own) | $text |"
echo "| node_exporter, default collectors | $full |"
