#!/bin/sh
# uptime-probe beside wrk: requests/s against the same demo app in the same run
# (the probe checks every response: status, X-Release against the body's
# data-release; wrk checks nothing), keep-alive on and off; and the demo app's own
# throughput (self-bound, `app --listen --workers N`) with 1 and 4 workers.
# Run by scripts/bench ($BIN set). BENCH_SECS: seconds per measurement (default 5).
set -eu
BIN=${BIN:-target/release}
SECS=${BENCH_SECS:-5}
C=4
tmp=$(mktemp -d)
app_pid=
stop_app() {
    if [ -n "$app_pid" ]; then
        kill -TERM "$app_pid" 2>/dev/null || true
        wait "$app_pid" 2>/dev/null || true
        app_pid=
    fi
}
trap 'stop_app; rm -rf "$tmp"' EXIT

mkdir -p "$tmp/rel/htdocs"
echo r1 >"$tmp/rel/RELEASE"
cat >"$tmp/rel/htdocs/index.html" <<'HTML'
<!doctype html>
<html><head><title>demo release r1</title></head>
<body data-release="r1">
<h1>Release r1</h1>
<p>Served by one worker of one release; the X-Release header names the code's release,
this page names the content's. They always agree.</p>
</body></html>
HTML

# start_app WORKERS: the app on a port of its own; sets $port and $app_pid.
start_app() {
    : >"$tmp/port"
    "$BIN/app" --root "$tmp/rel" --listen 127.0.0.1:0 --workers "$1" >"$tmp/port" 2>"$tmp/app.err" &
    app_pid=$!
    i=0
    while [ ! -s "$tmp/port" ]; do
        i=$((i + 1))
        [ $i -lt 500 ] || { echo "app did not start: $(cat "$tmp/app.err")" >&2; exit 1; }
        sleep 0.01
    done
    port=$(head -n 1 "$tmp/port")
}

# wrk_run CONNS [close]: "req/s requests errors"
wrk_run() {
    t=2
    [ "$1" -ge 2 ] || t=1
    if [ "${2:-}" = close ]; then
        wrk -t "$t" -c "$1" -d "${SECS}s" -H 'Connection: close' "http://127.0.0.1:$port/" >"$tmp/wrk.out" 2>&1
    else
        wrk -t "$t" -c "$1" -d "${SECS}s" "http://127.0.0.1:$port/" >"$tmp/wrk.out" 2>&1
    fi
    rps=$(sed -n 's/^Requests\/sec: *//p' "$tmp/wrk.out")
    n=$(sed -n 's/^ *\([0-9]*\) requests in.*/\1/p' "$tmp/wrk.out")
    sock=$(sed -n 's/.*Socket errors: connect \([0-9]*\), read \([0-9]*\), write \([0-9]*\), timeout \([0-9]*\).*/\1 \2 \3 \4/p' "$tmp/wrk.out" |
        awk '{ print $1 + $2 + $3 + $4 }')
    non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: *//p' "$tmp/wrk.out")
    echo "${rps:-0} ${n:-0} $(( ${sock:-0} + ${non2xx:-0} ))"
}

# probe_run CONNS [close]: "req/s requests failed mixed p99_ms"
probe_run() {
    if [ "${2:-}" = close ]; then ka=--no-keepalive; else ka=; fi
    "$BIN/uptime-probe" --json -q -c "$1" -d "$SECS" $ka "http://127.0.0.1:$port/" >"$tmp/probe.json" || true
    j=$(cat "$tmp/probe.json")
    # the first occurrence of a key (nested objects repeat some names)
    get() { echo "$j" | grep -o "\"$1\":[0-9.]*" | head -n 1 | cut -d: -f2; }
    echo "$(get requests_per_s) $(get requests) $(get failed) $(get mixed) $(get p99)"
}

echo "## uptime-probe"
echo
echo "Requests/s of uptime-probe and of wrk ($(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)) against the same demo app"
echo "(\`app --listen --workers $C\`, one connection per worker), $C connections, ${SECS} s each, one after"
echo "the other in this run. The probe reads every response whole and checks its status and"
echo "its two releases; wrk counts bytes. Target: the probe reaches at least half of wrk."
echo
echo "| keep-alive | load generator | requests | requests/s | failed | mixed | probe / wrk |"
echo "|---|---|---:|---:|---:|---:|---:|"
start_app "$C"
for mode in keepalive close; do
    if [ $mode = close ]; then m=off; else m=on; fi
    set -- $(wrk_run "$C" $mode)
    w_rps=$1
    echo "| $m | wrk | $2 | $(printf '%.0f' "$1") | $3 (errors) | not checked | |"
    set -- $(probe_run "$C" $mode)
    ratio=$(awk -v p="$1" -v w="$w_rps" 'BEGIN { if (w > 0) printf "%.0f%%", 100 * p / w; else print "-" }')
    echo "| $m | uptime-probe | $2 | $(printf '%.0f' "$1") | $3 | $4 | $ratio |"
done
stop_app

echo
echo "### The demo app's throughput"
echo
echo "The app binding its own socket (\`app --listen 127.0.0.1:0 --workers N\`), static"
echo "index.html ($(wc -c <"$tmp/rel/htdocs/index.html") bytes), wrk with N connections, ${SECS} s, $(nproc) cores"
echo "shared by the app and wrk. Each worker is one process serving one connection at a time."
echo
echo "| workers | keep-alive | requests/s (wrk) | errors | p99 (uptime-probe, same load) |"
echo "|---:|---|---:|---:|---:|"
for w in 1 4; do
    start_app "$w"
    for mode in keepalive close; do
        if [ $mode = close ]; then m=off; else m=on; fi
        set -- $(wrk_run "$w" $mode)
        line="| $w | $m | $(printf '%.0f' "$1") | $3 |"
        set -- $(probe_run "$w" $mode)
        echo "$line $5 ms |"
    done
    stop_app
done
echo
