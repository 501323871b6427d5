#!/bin/sh
# Fleet deploys (issue 15): examples/fleet/up with 3 and 10 hosts (demo/serve,
# 2 workers each, pool-health, HAProxy in front), then $DEPLOYS fleet deploys
# rolling (examples/fleet/deploy --rolling: host by host) and two-phase (prepare
# everywhere, commit at one agreed instant), uptime-probe through HAProxy the
# whole time ($CONCURRENCY clients, keep-alive). Per row: the deploy's wall time
# (ansible-playbook included; median), the commit skew (for each deploy, the
# time from the first host answering its new release to the last one doing
# so, seen by a sampler asking every host's /release on fresh connections,
# scripts/fleet-sampler.py; median and max), beside it the sampler's
# resolution (per host and deploy, the bracket in which the switch was seen:
# from the last old answer's request to the first new answer; median and
# max), the fleet flapping (responses older than one
# the same client had seen), failed and mixed. Then where each two-phase
# deploy's time went, per step (examples/fleet/steps: ansible-playbook's
# start, the prepare, the decision, the wait for the instant, the skew of
# the hosts' releases by their forkpools' clocks, what follows the commit),
# medians over the deploys, the margin and the prepare's spread (reach) it was
# derived from, and the hosts whose commit came late; and per host, the last
# deploy at the largest fleet. The sampler is checked against the hosts' own
# clocks: how many forkpools' release instants (status key released_at) lay
# inside its brackets, and how long after them the first new answer came.
# The machine's load average is printed (other work on it stretches every
# step).
#
# Run by scripts/bench ($BIN = target/release; .venv/bin on PATH).
# Environment: DEPLOYS (default 5), CONCURRENCY (8), HOSTS (default "3 10"),
# BENCH_QUICK=1 (1 deploy, 3 hosts), BENCH70_KEEP=DIR (keep the sampler's
# answers and the hosts' release instants there, a directory a row).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$top/target/release}
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    DEPLOYS=${DEPLOYS:-1} HOSTS=${HOSTS:-3}
else
    DEPLOYS=${DEPLOYS:-5} HOSTS=${HOSTS:-"3 10"}
fi
CONCURRENCY=${CONCURRENCY:-8}

# shellcheck source=../bench-lib.sh
. "$top/scripts/bench-lib.sh"

tmp=$(mktemp -d)
probe_pid= sampler_pid=
export FLEET_DIR="$tmp/fleet"
cleanup() {
    stop_pid "$probe_pid"
    stop_pid "$sampler_pid"
    "$top/examples/fleet/down" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A copy of the binaries measured (nobody's rebuild changes them halfway).
mkdir "$tmp/bin"
for b in tcplisten forkpool loop-forever setlock atomic-symlink app uptime-probe pool-health poolctl deploy-release; do
    [ -x "$BIN/$b" ] && cp "$BIN/$b" "$tmp/bin/$b"
done
for b in tcplisten forkpool setlock atomic-symlink app uptime-probe pool-health; do
    [ -x "$tmp/bin/$b" ] || { echo "70-fleet: fatal: $BIN/$b is missing (cargo build --release)" >&2; exit 111; }
done
BIN=$tmp/bin
export BIN FLEET_WORKERS=2

# The sampler (scripts/fleet-sampler.py, its comment says how): one process
# for every host, asking GET /release on fresh connections every 20 ms, and
# every 2 ms from 30 ms before a commit's instant (the host's status file says
# `phase=committing` and `commit_at=`) until the host answers its new release,
# without waiting for an answer before the next request: a connection an old
# worker accepted as it was parked waits, frozen, until the confirm (a line in
# FILE.stalls), and the sampler asks again meanwhile. Each answer is timed by
# the kernel's receive time (not when the sampler got to read it). Per host and
# deploy, "HOST LO HI RELEASE" (ms): LO, the last request answered by the old
# release was sent; HI, the first answer of the new one came: the host's
# switch lies between the two, HI - LO is the sampler's resolution there.

# skew FILE N: for each deploy k (1..N), the spread of the hosts' k-th new
# release, each host taken when its first new answer came (HI: the kernel's
# receive time, i.e. when the host wrote it); then the brackets (the
# sampler's resolution): "skew-median skew-max bracket-median bracket-max"
# in ms. Not the middle of each bracket: at a two-phase commit every host's
# old workers park at the instant, so the last old answers (LO) line up, and
# a host whose park took longer releases later: the middles would show half
# its delay (they did: 8/16 ms where the first new answers spread 17/31 ms).
skew() {
    awk -v n="$2" '
        { c[$1]++; k = c[$1]; t = $3; b[++nb] = $3 - $2
          if (!(k in lo) || t < lo[k]) lo[k] = t
          if (!(k in hi) || t > hi[k]) hi[k] = t }
        function sort(a, m,   i, j, x) { for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { x = a[i]; a[i] = a[j]; a[j] = x } }
        END { m = 0; for (k = 1; k <= n; k++) if (k in lo) { s[++m] = hi[k] - lo[k] }
              if (m == 0) { print "- - - -"; exit }
              sort(s, m); sort(b, nb)
              printf "%.0f %.0f %.0f %.0f\n", s[int((m + 1) / 2)], s[m], b[int((nb + 1) / 2)], b[nb] }' "$1"
}

# agree SAMPLES RELEASED: the sampler's brackets against the hosts' own
# clocks (RELEASED: "HOST DEPLOY RELEASED_AT" a line, forkpool's status key
# released_at, deploys from 0): how many host-deploys have their forkpool's
# release instant inside the bracket, and how long after it the first new
# answer came (median / max): "IN OF AFTER-MEDIAN AFTER-MAX".
agree() {
    awk 'NR == FNR { k = c[$1]++; lo[$1, k] = $2; hi[$1, k] = $3; next }
        (($1, $2) in lo) { r = $3 * 1000; m++; if (r >= lo[$1, $2] && r <= hi[$1, $2]) in_++; a[m] = hi[$1, $2] - r }
        function sort(x, n,   i, j, t) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (x[j] < x[i]) { t = x[i]; x[i] = x[j]; x[j] = t } }
        END { if (!m) { print "0 0 - -"; exit } sort(a, m); printf "%d %d %.0f %.0f\n", in_, m, a[int((m + 1) / 2)], a[m] }' "$1" "$2"
}

# median of numbers, one a line
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }'; }

echo "## Fleet deploys: rolling against two-phase, behind HAProxy"
echo
echo "$DEPLOYS fleet deploys per row, uptime-probe through HAProxy at $CONCURRENCY clients (keep-alive)"
echo "the whole time; hosts are demo/serve chains with 2 workers on one machine ($(nproc) cores),"
echo "HAProxy checking each host's pool-health every 200 ms. Deploy time includes ansible-playbook."
echo "Commit skew: first to last host answering the new release, per deploy, by a sampler asking"
echo "each host's /release (scripts/fleet-sampler.py: one process, fresh connections, every 20 ms and every"
echo "2 ms from 30 ms before a commit's instant until the new release answers, not waiting for an answer"
echo "before asking again; answers timed by the kernel's receive time); a host is taken at its first new"
echo "answer. Its switch lies between the send of its last request the old release answered and that"
echo "answer: the bracket (median / max beside the skew; rolling has no instant: 20 ms and more). Sampler"
echo "stalls: its requests near an instant answered after more than 50 ms or never (an old worker took"
echo "the connection as it was parked: it waits, frozen, until the confirm; the sampler goes on meanwhile)."
echo
echo "Load average (1 min) at the start: $(cut -d' ' -f1 /proc/loadavg)."
echo
echo "| hosts | deploy | time per deploy (median) | commit skew median / max | sampler resolution median / max | sampler stalls | fleet flapping | failed | mixed | requests |"
echo "|---|---|---|---|---|---|---|---|---|---|"
skipped=""
for n in $HOSTS; do
    rm -rf "$FLEET_DIR"
    : >"$tmp/released.$n"
    url=$("$top/examples/fleet/up" "$n" 2>"$tmp/up.err" | tail -n 1) || { cat "$tmp/up.err" >&2; exit 111; }
    two_phase=false
    if [ -x "$BIN/poolctl" ] && grep -q '^control=' "$FLEET_DIR/host1/status"; then two_phase=true; fi
    for kind in rolling two-phase; do
        if [ "$kind" = two-phase ] && ! $two_phase; then
            skipped="two-phase skipped: forkpool -C (prepare/commit/abort), poolctl and demo/serve passing -C are not there yet"
            continue
        fi
        : >"$tmp/answers"
        : >"$tmp/answers.stalls"
        set --
        for h in $(cat "$FLEET_DIR/hosts"); do
            set -- "$@" "$h:$(cat "$FLEET_DIR/$h/port"):$FLEET_DIR/$h/status"
        done
        python3 "$top/scripts/fleet-sampler.py" sample "$tmp/answers" "$@" &
        sampler_pid=$!
        uptime-probe --json -q -c "$CONCURRENCY" -t 30000 "$url" >"$tmp/probe.json" &
        probe_pid=$!
        sleep 1
        : >"$tmp/times"
        : >"$tmp/steps.$n"
        args=""
        [ "$kind" = rolling ] && args=--rolling
        i=0
        while [ "$i" -lt "$DEPLOYS" ]; do
            t=$(now_ms)
            "$top/examples/fleet/deploy" $args >"$tmp/deploy.out" 2>"$tmp/deploy.err" ||
                { echo "70-fleet: deploy ($kind, $n hosts) failed:" >&2; cat "$tmp/deploy.out" >&2; }
            echo $(($(now_ms) - t)) >>"$tmp/times"
            if [ "$kind" = two-phase ]; then
                "$top/examples/fleet/steps" --summary >>"$tmp/steps.$n" 2>/dev/null || :
                "$top/examples/fleet/steps" >"$tmp/steps-last" 2>/dev/null || :
                for h in $(cat "$FLEET_DIR/hosts"); do
                    echo "$h $i $(tr ' ' '\n' <"$FLEET_DIR/$h/fleet-deploy.times" | sed -n 's/^released_at=//p')"
                done >>"$tmp/released.$n"
            fi
            i=$((i + 1))
        done
        sleep 1
        kill -INT "$probe_pid" 2>/dev/null || true
        wait "$probe_pid" 2>/dev/null || true
        probe_pid=
        stop_pid "$sampler_pid"
        sampler_pid=
        python3 "$top/scripts/fleet-sampler.py" brackets "$tmp/answers" >"$tmp/samples"
        if [ -n "${BENCH70_KEEP:-}" ]; then
            mkdir -p "$BENCH70_KEEP/$n-$kind"
            cp "$tmp"/samples "$tmp"/answers* "$tmp"/released.* "$BENCH70_KEEP/$n-$kind/" 2>/dev/null || :
        fi
        set -- $(skew "$tmp/samples" "$DEPLOYS")
        printf '| %s | %s | %.1f s | %s / %s ms | %s / %s ms | %s | %s | %s | %s | %s |\n' "$n" "$kind" \
            "$(median <"$tmp/times" | awk '{ print $1 / 1000 }')" "$1" "$2" "$3" "$4" "$(wc -l <"$tmp/answers.stalls")" \
            "$(json flapping "$tmp/probe.json")" "$(json failed "$tmp/probe.json")" \
            "$(json mixed "$tmp/probe.json")" "$(json requests "$tmp/probe.json")"
        if [ "$kind" = two-phase ]; then
            agree "$tmp/samples" "$tmp/released.$n" >"$tmp/agree.$n"
        fi
    done
    "$top/examples/fleet/down" >/dev/null 2>&1
done
[ -z "$skipped" ] || { echo; echo "$skipped."; }
for n in $HOSTS; do
    [ -s "$tmp/agree.$n" ] || continue
    set -- $(cat "$tmp/agree.$n")
    echo
    echo "Two-phase at $n hosts, the sampler against the hosts' own clocks: each forkpool's release"
    echo "instant (its status file's released_at) lay inside the sampler's bracket for $1 of $2 host-deploys;"
    echo "the first new answer came $3 ms (median) and $4 ms (max) after it."
done
echo
echo "Load average (1 min) at the end: $(cut -d' ' -f1 /proc/loadavg)."

# medians of each step over the deploys of one fleet size (steps' summary lines)
steps_row() {
    awk -v n="$1" '
        { for (i = 1; i <= NF; i++) { w = $i; gsub(/[,;)]/, "", w)
            if (w ~ /^[0-9-]+$/ && (i + 0) > 1) { k = $(i - 1); gsub(/[(),;:]/, "", k); if (k == "of") continue; a[k, ++c[k]] = w } } }
        function med(k,   m, i, j, x) { m = c[k]; if (!m) return "-"
            for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[k, j] + 0 < a[k, i] + 0) { x = a[k, i]; a[k, i] = a[k, j]; a[k, j] = x }
            return a[k, int((m + 1) / 2)] }
        END { if (!NR) exit
            printf "| %s | %s | %s | %s | %s | %s (reach %s) | %s | %s (check %s, verdict %s, finish %s, exit %s) | %s of %s |\n", n, med("total"), med("start"),
                med("prepare"), med("decision"), med("wait"), med("reach"), med("skew"), med("after"),
                med("check"), med("verdict"), med("finish"), med("exit"), med("hosts"), n }' "$2"
}
if ls "$tmp"/steps.* >/dev/null 2>&1; then
    echo
    echo "### Where a two-phase deploy's time goes (examples/fleet/steps; ms, medians over the deploys)"
    echo
    echo "start: ansible-playbook's start until the first host got the prepare; prepare: until the last"
    echo "host prepared (one command a host: record, stage, point current, poolctl prepare); decision:"
    echo "the instant chosen; wait: the margin, twice the prepare's reach (how long that task took"
    echo "to reach every host) plus the lag (Ansible's step from one task to the next); skew: first to last host released, by the forkpools' clocks; after:"
    echo "the last release until ansible-playbook exited: check, until the last host's check after its commit was done;"
    echo "verdict, until the first host began its confirm (Ansible's step: the fleet's decision and the next task);"
    echo "finish, until the last host finished (confirm, the history, the answer, the result: one command a host);"
    echo "exit, until ansible-playbook exited."
    echo
    echo "| hosts | total | start | prepare | decision | wait | release skew | after | late hosts |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for n in $HOSTS; do
        [ -s "$tmp/steps.$n" ] && steps_row "$n" "$tmp/steps.$n"
    done
    if [ -s "$tmp/steps-last" ]; then
        echo
        echo "Per host, the last deploy at $n hosts (ms; reach: handed the prepare until it began;"
        echo "dispatch: the decision until the commit reached the host; early: before the instant):"
        echo
        echo '```'
        cat "$tmp/steps-last"
        echo '```'
    fi
fi
