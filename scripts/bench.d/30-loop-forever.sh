#!/bin/sh
# loop-forever beside daemontools supervise, runit runsv and s6-supervise, in one
# run: the supervisor's RSS while its child runs, and the restart latency (time
# from the child's last act before exit 0 to the next child's first act after
# exec). Every supervisor runs the same ./run script, a child that lives 1.1 s
# (so the one-second rule of the peers does not apply) then exits 0.
# Needs $BIN (target/release, with loop-forever and test-worker).
set -eu
cycles=${LF_BENCH_CYCLES:-6}
W="$BIN/test-worker"
tmp=$(mktemp -d)
sup=
cleanup() {
    [ -n "$sup" ] && kill -9 "$sup" 2>/dev/null || true
    for f in "$tmp"/*/stamps; do
        [ -f "$f" ] || continue
        for p in $(awk '{print $2}' "$f" | sort -u); do kill -9 "$p" 2>/dev/null || true; done
    done
    rm -rf "$tmp"
}
trap cleanup EXIT

# measure NAME prog...: run "prog... DIR" or "prog... ./run" until $cycles restarts.
measure() {
    name=$1
    shift
    d=$tmp/$name
    mkdir -p "$d"
    printf '#!/bin/sh\nexec %s --stamp %s --exit-after 1100\n' "$W" "$d/stamps" >"$d/run"
    chmod +x "$d/run"
    case $name in
    loop-forever) (cd "$d" && exec "$@" ./run) </dev/null >/dev/null 2>&1 & ;;
    *) "$@" "$d" </dev/null >/dev/null 2>&1 & ;;
    esac
    sup=$!
    # RSS while the first child runs.
    i=0
    while [ "$(grep -c '^start' "$d/stamps" 2>/dev/null || echo 0)" -lt 1 ] && [ $i -lt 500 ]; do
        sleep 0.01
        i=$((i + 1))
    done
    rss=$(awk '/^Rss:/ {print $2}' "/proc/$sup/smaps_rollup" 2>/dev/null || echo "?")
    priv=$(awk '/^Private_(Clean|Dirty):/ {s += $2} END {print s}' "/proc/$sup/smaps_rollup" 2>/dev/null || echo "?")
    i=0
    while [ "$(grep -c '^start' "$d/stamps" 2>/dev/null || echo 0)" -le "$cycles" ] && [ $i -lt 3000 ]; do
        sleep 0.01
        i=$((i + 1))
    done
    kill -9 "$sup" 2>/dev/null || true
    wait "$sup" 2>/dev/null || true
    sup=
    for p in $(awk '{print $2}' "$d/stamps" | sort -u); do kill -9 "$p" 2>/dev/null || true; done
    # Latency: each "exit" stamp to the next "start" stamp, in ms.
    lat=$(awk '$1 == "exit" { e = $3 } $1 == "start" && e { printf "%.3f\n", ($3 - e) / 1e6; e = 0 }' "$d/stamps" | sort -n)
    n=$(printf '%s\n' "$lat" | grep -c . || true)
    med=$(printf '%s\n' "$lat" | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print "?" }')
    max=$(printf '%s\n' "$lat" | tail -n 1)
    echo "| $name | ${rss} KiB | ${priv} KiB | $med | ${max:-?} | $n |"
}

echo "## loop-forever: supervisor RSS and restart latency"
echo
echo "RSS counts the shared pages of libc and ld.so each process maps; private is what the process alone costs (smaps_rollup Private_Clean + Private_Dirty)."
echo
echo "Child: \`run\` script exec'ing a program that lives 1.1 s then exits 0; latency = last stamp before exit to first stamp after the next exec."
echo
echo "| supervisor | RSS | private (not shared) | restart latency median (ms) | max (ms) | restarts |"
echo "|---|---|---|---|---|---|"
measure loop-forever "$BIN/loop-forever"
command -v supervise >/dev/null && measure supervise supervise
command -v runsv >/dev/null && measure runsv runsv
command -v s6-supervise >/dev/null && measure s6-supervise s6-supervise
exit 0
