# Shared by the deploy benchmarks in scripts/bench.d (sourced): time, process
# control and uptime-probe's --json, written once.

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# stop_pid PID: TERM, then wait (it is our child); nothing when PID is empty.
stop_pid() {
    [ -n "$1" ] || return 0
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# wait_release PORT ID: until GET /release answers ID (30 s); 1 if it does not.
wait_release() {
    end=$(($(now_ms) + 30000))
    while [ "$(curl -s --max-time 2 "http://127.0.0.1:$1/release" 2>/dev/null || true)" != "$2" ]; do
        [ "$(now_ms)" -lt "$end" ] || return 1
        sleep 0.01
    done
}

# json KEY FILE: the first value of KEY in the probe's JSON (the top-level keys
# come before the nested objects that repeat some names).
json() { grep -o "\"$1\":[0-9.]*" "$2" | head -n 1 | cut -d: -f2; }

# p99_ratio STEADY DURING: p99 during the deploys over p99 steady, e.g. 1.3x.
p99_ratio() {
    awk -v a="$(json p99 "$2")" -v b="$(json p99 "$1")" 'BEGIN { if (b > 0) printf "%.1fx", a / b; else print "-" }'
}

# part PART KEY FILE: KEY of the probe's latency outside or inside its marked
# parts (PART: unmarked or marked; each SIGUSR1 starts or ends one), e.g.
# part marked p99 f.json.
part() {
    sed -n "s/.*\"parts\":{.*\"$1\":{\([^}]*\)}.*/\1/p" "$3" | grep -o "\"$2\":[0-9.]*" | cut -d: -f2
}

# part_ratio FILE: p99 inside the probe's marked parts over p99 outside them, e.g. 1.1x.
part_ratio() {
    awk -v a="$(part marked p99 "$1")" -v b="$(part unmarked p99 "$1")" 'BEGIN { if (b > 0) printf "%.1fx", a / b; else print "-" }'
}

# failed_why FILE: the outcomes that make up the probe's failed count, e.g.
# "refused 12, reset 3"; empty when nothing failed.
failed_why() {
    why=
    for o in refused reset timeout too_large eof bad_status error; do
        v=$(json $o "$1")
        [ "${v:-0}" = 0 ] || why="$why${why:+, }$o $v"
    done
    echo "$why"
}

# picture NAME [MARKS]: the probe's options to draw its run (issue 20) into
# $BENCH_OUT/NAME.svg (default $top/bench-out, $top the repository), with the
# labelled marks of the file MARKS when given. Use unquoted: $(picture NAME).
picture() {
    BENCH_OUT=${BENCH_OUT:-$top/bench-out}
    mkdir -p "$BENCH_OUT"
    echo "--svg $BENCH_OUT/$1.svg${2:+ --marks $2}"
}

# mark FILE LABEL: one `unix-time label` line for the picture's marks.
mark() { echo "$(date +%s.%N) $2" >>"$1"; }
