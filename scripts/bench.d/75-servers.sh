#!/bin/sh
# The seeds' own servers (issue 27): unicorn, puma and Node, each behind the
# chain (its examples/<server>/run: tcplisten + forkpool -m cutover, deployed
# with deploy-release) beside its own zero-downtime reload, in one run, with
# the same client and load:
#  - unicorn: USR2 with the seed's before_fork `.oldbin` QUIT recipe (4 workers,
#    preload_app, working_directory = current);
#  - puma: phased restart (USR1; cluster of 4, no preload, directory = current);
#  - Node: pm2 reload in cluster mode (-i 4), pm2 from npm into a scratch
#    directory under /tmp (PM2_BENCH_DIR), never committed; its rows are left
#    out when npm cannot install it. node-pm2ready: the same with pm2's
#    graceful start and stop recipe (--wait-ready: the app sends 'ready' once
#    it listens; SIGINT, pm2's stop signal, as the app's graceful TERM;
#    --kill-timeout 30000).
# uptime-probe at $CONCURRENCY clients, keep-alive on and off: $DURATION s
# steady, then $DEPLOYS deploys $GAP s apart. A deploy is done when the new
# release answers and the old processes are gone (unicorn: the old master;
# puma: every worker of the new phase booted; pm2: `pm2 reload` returned).
# One that is not done in $DEPLOY_TIMEOUT s counts as failed.
#
# Run by scripts/bench ($BIN = target/release). Environment: DEPLOYS (10),
# CONCURRENCY (16), DURATION (5 s), GAP (1 s), WORKERS (4), DEPLOY_TIMEOUT (40 s),
# SERVERS (any of unicorn-chain unicorn-usr2 puma-chain puma-phased node-chain
# node-pm2 node-pm2ready, and unicorn-verified puma-verified node-verified: the chain with its
# verified switch, each deploy confirmed; default: all but the -verified ones;
# empty: none), BAD (the second table's: unicorn-verified
# unicorn-usr2 puma-verified puma-phased node-verified node-pm2; default all;
# empty: none),
# HOLD (5 s: how long the 500 release is left before a good deploy),
# BENCH_QUICK=1 (2 deploys, 4 clients, 2 s).
#
# The second table: a release that boots and answers 500 to everything,
# behind the chain with the verified switch (the run script's default;
# deploy-release reverts it at its first answer) beside each native reload
# (no check: it serves until the next deploy, $HOLD s later), keep-alive off.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
BIN=${BIN:-$top/target/release}
if [ "${BENCH_QUICK:-0}" = 1 ]; then
    DEPLOYS=${DEPLOYS:-2} CONCURRENCY=${CONCURRENCY:-4} DURATION=${DURATION:-2}
else
    DEPLOYS=${DEPLOYS:-10} CONCURRENCY=${CONCURRENCY:-16} DURATION=${DURATION:-5}
fi
GAP=${GAP:-1}
HOLD=${HOLD:-5}
WORKERS=${WORKERS:-4}
DEPLOY_TIMEOUT=${DEPLOY_TIMEOUT:-40}
PM2_BENCH_DIR=${PM2_BENCH_DIR:-/tmp/pm2-bench}
C=$CONCURRENCY

# shellcheck source=../bench-lib.sh
. "$top/scripts/bench-lib.sh"

tmp=$(mktemp -d)
srv_pid= probe_pid=
cleanup() {
    stop_pid "$probe_pid"
    stop_native
    stop_pid "$srv_pid"
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir "$tmp/bin"
for b in tcplisten forkpool deploy-release atomic-symlink uptime-probe; do
    cp "$BIN/$b" "$tmp/bin/$b" || { echo "75-servers: fatal: $BIN/$b is missing (cargo build --release)" >&2; exit 111; }
done
BIN=$tmp/bin
PATH="$BIN:$PATH"

die() { echo "75-servers: fatal: $*" >&2; exit 111; }

# wait_file FILE: until FILE is not empty (30 s).
wait_file() {
    i=0
    while [ ! -s "$1" ]; do
        i=$((i + 1))
        [ $i -lt 3000 ] || die "$1 did not appear: $(tail -n 3 "$st/log" 2>/dev/null)"
        sleep 0.01
    done
}

# new_release: the next release of the example $ex in $st ($rel, $gen).
new_release() {
    gen=$((gen + 1))
    rel=r$gen
    mkdir -p "$st/releases/$rel"
    for f in $files; do cp "$top/examples/$ex/$f" "$st/releases/$rel/"; done
    echo "$rel" >"$st/releases/$rel/RELEASE"
}

# ------------------------------------------------------------ the servers
# start KIND: the server, serving r1; sets $port.
start() {
    st=$tmp/$1
    # a kind run in both tables starts afresh (its port, releases, current)
    rm -rf "$st"
    mkdir -p "$st"
    gen=0
    case $1 in
    unicorn-*) ex=unicorn files="config.ru unicorn.conf.rb" ;;
    puma-*) ex=puma files="config.ru puma.rb" ;;
    node-*) ex=node files="app.js" ;;
    esac
    new_release
    ln -s "releases/$rel" "$st/current"
    case $1 in
    *-chain | *-verified)
        # -chain: the plain cutover; -verified: the run script's verified switch
        case $1 in *-chain) confirm=off ;; *) confirm=${CONFIRM_TIMEOUT:-10000} ;; esac
        CONFIRM_TIMEOUT=$confirm SITE=$st PORT=0 WORKERS=$WORKERS BIN=$BIN "$top/examples/$ex/run" </dev/null >"$st/log" 2>&1 &
        srv_pid=$!
        wait_file "$st/port"
        port=$(cat "$st/port")
        ;;
    unicorn-usr2)
        cat >"$st/usr2.conf.rb" <<EOF
worker_processes $WORKERS
preload_app true
timeout 30
working_directory "$st/current"
pid "$st/unicorn.pid"
# the seed's recipe: the new master's first fork QUITs the old master
before_fork do |server, worker|
  old_pid = "#{server.config[:pid]}.oldbin"
  if old_pid != server.pid && File.exist?(old_pid)
    begin
      Process.kill(:QUIT, File.read(old_pid).to_i)
    rescue Errno::ENOENT, Errno::ESRCH
    end
  end
end
EOF
        (cd "$st/current" && UNICORN_FD=0 exec tcplisten -1 127.0.0.1 0 \
            unicorn -E production -c "$st/usr2.conf.rb" config.ru) </dev/null >"$st/out" 2>"$st/log" &
        srv_pid=$!
        wait_file "$st/out"
        port=$(head -n 1 "$st/out")
        ;;
    puma-phased)
        cat >"$st/phased.rb" <<EOF
environment 'production'
workers $WORKERS
threads 1, 5
directory "$st/current"
bind "tcp://127.0.0.1:#{ENV['TCPLOCALPORT']}"
EOF
        # the port on the first line of out, then puma's log
        (cd "$st/current" && exec tcplisten -s -1 127.0.0.1 0 puma -C "$st/phased.rb" config.ru) \
            </dev/null >"$st/out" 2>"$st/log" &
        srv_pid=$!
        wait_file "$st/out"
        port=$(head -n 1 "$st/out")
        ;;
    node-pm2 | node-pm2ready)
        export PM2_HOME="$st/pm2home"
        if [ "$1" = node-pm2 ]; then
            (cd "$st" && PORT=0 "$pm2" start "$st/current/app.js" --cwd "$st/current" -i "$WORKERS" --name bench) >"$st/log" 2>&1 ||
                die "pm2 start: $(tail -n 3 "$st/log")"
        else
            # pm2's graceful start and stop recipe around the example's app:
            # 'ready' to pm2 once the server listens (--wait-ready), and pm2's
            # stop signal (SIGINT) handled as the app's graceful TERM
            # (--kill-timeout: how long pm2 lets it finish)
            cat >"$st/ready.js" <<'EOF'
const http = require('http');
const listen = http.Server.prototype.listen;
http.Server.prototype.listen = function (...args) {
  this.once('listening', () => { if (process.send) process.send('ready'); });
  return listen.apply(this, args);
};
process.on('SIGINT', () => process.emit('SIGTERM'));
require(process.env.APP);
EOF
            (cd "$st" && PORT=0 APP="$st/current/app.js" "$pm2" start "$st/ready.js" --cwd "$st/current" -i "$WORKERS" --name bench \
                --wait-ready --listen-timeout 10000 --kill-timeout 30000) >"$st/log" 2>&1 ||
                die "pm2 start: $(tail -n 3 "$st/log")"
        fi
        i=0 port=
        while [ -z "$port" ]; do
            i=$((i + 1))
            [ $i -lt 3000 ] || die "pm2's app does not listen: $(tail -n 3 "$st/log")"
            sleep 0.01
            port=$(ss -ltnpH 2>/dev/null | grep "pid=$(cat "$PM2_HOME/pm2.pid" 2>/dev/null)," | sed -n 's/.*127\.0\.0\.1:\([0-9]*\) .*/\1/p' | head -n 1)
        done
        ;;
    esac
    wait_release "$port" r1 || die "$1 does not answer r1: $(tail -n 5 "$st/log")"
}

stop_native() {
    if [ -n "${st:-}" ] && [ -s "$st/unicorn.pid" ]; then
        kill -QUIT "$(cat "$st/unicorn.pid")" 2>/dev/null || true
        rm -f "$st/unicorn.pid"
    fi
    if [ -n "${PM2_HOME:-}" ] && [ -n "${pm2:-}" ]; then
        "$pm2" kill >/dev/null 2>&1 || true
        unset PM2_HOME
    fi
}

# until_done SECONDS CMD...: run CMD every 20 ms until it succeeds; 1 after SECONDS.
until_done() {
    end=$(($(now_ms) + $1 * 1000))
    shift
    until "$@"; do
        [ "$(now_ms)" -lt "$end" ] || return 1
        sleep 0.02
    done
}
gone() { ! kill -0 "$1" 2>/dev/null; }
phase_booted() { [ "$(cat "$st/out" "$st/log" | grep -c "booted in .*phase: $1\$")" -ge "$WORKERS" ]; }

# deploy KIND: one deploy of a new release; its exit status.
deploy() {
    new_release
    mark "$st/marks" "$rel"
    case $1 in
    *-chain | *-verified)
        deploy-release -t "$DEPLOY_TIMEOUT" -c "http://127.0.0.1:$port/release" \
            "$st/releases/$rel" "$st/current" "$st/status" >/dev/null 2>>"$st/deploys.log"
        ;;
    unicorn-usr2)
        old=$(cat "$st/unicorn.pid")
        atomic-symlink "releases/$rel" "$st/current"
        kill -USR2 "$old"
        until_done "$DEPLOY_TIMEOUT" gone "$old" && wait_release "$port" "$rel"
        ;;
    puma-phased)
        atomic-symlink "releases/$rel" "$st/current"
        kill -USR1 "$srv_pid"
        until_done "$DEPLOY_TIMEOUT" phase_booted $((gen - 1)) && wait_release "$port" "$rel"
        ;;
    node-pm2 | node-pm2ready)
        atomic-symlink "releases/$rel" "$st/current"
        timeout "$DEPLOY_TIMEOUT" "$pm2" reload bench >/dev/null 2>&1 && wait_release "$port" "$rel"
        ;;
    esac
}

# scenario KIND LABEL KA: steady, then the deploys under the probe; one row.
scenario() {
    if [ "$3" = off ]; then ka=--no-keepalive; else ka=; fi
    url=http://127.0.0.1:$port/
    uptime-probe --json -q -c "$C" -t 30000 -d "$DURATION" $ka "$url" >"$tmp/steady.json" 2>>"$tmp/probe.err" || true
    # shellcheck disable=SC2046
    uptime-probe --json -q -c "$C" -t 30000 $ka $(picture "servers-$1-keepalive-$3" "$st/marks") "$url" >"$tmp/during.json" 2>>"$tmp/probe.err" &
    probe_pid=$!
    sleep 0.5
    n=0 bad=0 busy=0
    while [ $n -lt "$DEPLOYS" ]; do
        t=$(now_ms)
        deploy "$1" || bad=$((bad + 1))
        busy=$((busy + $(now_ms) - t))
        n=$((n + 1))
        sleep "$GAP"
    done
    stop_pid "$probe_pid"
    probe_pid=
    s=$tmp/steady.json d=$tmp/during.json
    failed=$(json failed "$d")
    if [ "${failed:-0}" != 0 ]; then
        failed="$failed ($(failed_why "$d"))"
    fi
    per=$(awk -v t=$busy -v n=$n 'BEGIN { printf "%.2f", t / n / 1000 }')
    printf '| %s | %s | %s | %s s | %s | %s | %s | %s | %s | %s ms | %s ms | %s ms |\n' \
        "$2" "$3" "$((n - bad))/$n" "$per" "$(json requests "$d")" "$failed" "$(json retried "$d")" \
        "$(json mixed "$d")" "$(json flapping "$d")" "$(json p99 "$s")" "$(json p99 "$d")" "$(json max "$d")"
}

# deploy_bad KIND: a release with BROKEN (it boots, then answers 500 to
# everything), deployed as KIND deploys; the chain's deploy-release exits 1
# (reverted), the native reloads are done when their own condition holds.
deploy_bad() {
    new_release
    : >"$st/releases/$rel/BROKEN"
    bad=$rel verdict=0
    mark "$st/marks" "$rel (500)"
    case $1 in
    *-verified)
        deploy-release -t "$DEPLOY_TIMEOUT" -c "http://127.0.0.1:$port/release" \
            "$st/releases/$rel" "$st/current" "$st/status" >/dev/null 2>"$st/bad.log" || verdict=$?
        ;;
    unicorn-usr2)
        old=$(cat "$st/unicorn.pid")
        atomic-symlink "releases/$rel" "$st/current"
        kill -USR2 "$old"
        until_done "$DEPLOY_TIMEOUT" gone "$old" || verdict=$?
        ;;
    puma-phased)
        atomic-symlink "releases/$rel" "$st/current"
        kill -USR1 "$srv_pid"
        until_done "$DEPLOY_TIMEOUT" phase_booted $((gen - 1)) || verdict=$?
        ;;
    node-pm2 | node-pm2ready)
        atomic-symlink "releases/$rel" "$st/current"
        timeout "$DEPLOY_TIMEOUT" "$pm2" reload bench >/dev/null 2>&1 || verdict=$?
        ;;
    esac
}

# bad_scenario KIND LABEL: under the probe (no keep-alive), the 500 release,
# then $HOLD s later (someone noticed) a good release; one row: the failed
# requests, the 500 release's answers and for how long it answered.
bad_scenario() {
    url=http://127.0.0.1:$port/
    # shellcheck disable=SC2046
    uptime-probe --json -q -c "$C" -t 30000 --no-keepalive $(picture "servers-$1-500" "$st/marks") "$url" >"$tmp/bad.json" 2>>"$tmp/probe.err" &
    probe_pid=$!
    sleep 0.5
    t=$(now_ms)
    deploy_bad "$1"
    took=$(($(now_ms) - t))
    sleep "$HOLD"
    deploy "$1" || true
    stop_pid "$probe_pid"
    probe_pid=
    d=$tmp/bad.json
    n500=$(grep -o "{\"id\":\"$bad\",\"responses\":[0-9]*" "$d" | sed 's/.*://')
    first=$(grep -o "{\"id\":\"$bad\",\"responses\":[0-9]*,\"first_seen_s\":[0-9.]*" "$d" | sed 's/.*://')
    case $1 in
    *-verified) how="exit $verdict: $(sed -n 's/.*not verified: \(.*\); served \([0-9]* ms\).*/served \2 (\1)/p' "$st/bad.log" | sed 's|http://127.0.0.1:[0-9]*||' | head -n 1)" ;;
    *) how="done (exit $verdict), served until the next deploy ($HOLD s later)" ;;
    esac
    failed=$(json failed "$d")
    if [ "${failed:-0}" != 0 ]; then
        failed="$failed ($(failed_why "$d"))"
    fi
    printf '| %s | %s | %.2f s | %s | %s | %s | %s |\n' \
        "$2" "$how" "$(awk -v t="$took" 'BEGIN { print t / 1000 }')" "$(json requests "$d")" "$failed" \
        "${n500:-0}${first:+ (first at $first s)}" "$(json mixed "$d")"
}

# pm2, from npm into a scratch directory (not part of the repository). Every
# pm2 command, `--version` included, starts pm2's daemon in PM2_HOME when none
# runs there: so pm2 runs only with PM2_HOME in $tmp, and `pm2 kill` ends it.
pm2=
if command -v npm >/dev/null 2>&1; then
    if [ ! -x "$PM2_BENCH_DIR/node_modules/.bin/pm2" ]; then
        npm install --no-audit --no-fund --prefix "$PM2_BENCH_DIR" pm2 >/dev/null 2>&1 || true
    fi
    [ ! -x "$PM2_BENCH_DIR/node_modules/.bin/pm2" ] || pm2=$PM2_BENCH_DIR/node_modules/.bin/pm2
fi

kinds="unicorn-chain unicorn-usr2 puma-chain puma-phased node-chain"
[ -z "$pm2" ] || kinds="$kinds node-pm2 node-pm2ready"
kinds=${SERVERS-$kinds}

echo "## The seeds' servers: behind the chain and their own reloads"
echo
echo "uptime-probe, $C clients, keep-alive on and off, against each server with $WORKERS"
echo "processes: *steady* $DURATION s without deploys, then $DEPLOYS deploys $GAP s apart while the probe"
echo "runs (the counts are from that run). *chain*: examples/<server>/run (tcplisten +"
echo "forkpool -m cutover, one server process per slot) and deploy-release -c; unicorn USR2:"
echo "the seed's before_fork \`.oldbin\` QUIT recipe (4 workers, preload_app); puma: phased"
echo "restart (USR1, cluster of 4); pm2: \`pm2 reload\` in cluster mode (-i 4). s/deploy: from"
echo "the deploy's start until the new release answers and the old processes are gone;"
echo "a deploy not done in $DEPLOY_TIMEOUT s failed. retried: failed before any byte on a reused"
echo "keep-alive connection, then served on a fresh one. flapping: a client saw an older"
echo "release after a newer one. One run; $(nproc) cores shared by servers, probe and deploys"
echo "(and, in this run, by other people's builds and tests: load $(cut -d' ' -f1 /proc/loadavg) at the start)."
echo "$(unicorn -v 2>&1 | head -n 1), puma $(puma --version 2>&1 | sed -n 's/.*version \([0-9.]*\).*/\1/p'), node $(node --version)${pm2:+, pm2 $(sed -n 's/^ *"version": "\(.*\)",/\1/p' "$PM2_BENCH_DIR/node_modules/pm2/package.json" | head -n 1)}."
[ -n "$pm2" ] || echo "pm2 could not be installed from npm: its rows are left out."
echo
echo "| server | keep-alive | deploys ok | s/deploy | requests | failed | retried | mixed | flapping | p99 steady | p99 deploys | max |"
echo "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"
for k in $kinds; do
    case $k in
    unicorn-chain) label="unicorn, chain" ;;
    unicorn-verified) label="unicorn, chain + verified switch" ;;
    unicorn-usr2) label="unicorn, USR2 + QUIT" ;;
    puma-chain) label="puma, chain" ;;
    puma-verified) label="puma, chain + verified switch" ;;
    puma-phased) label="puma, phased restart" ;;
    node-chain) label="node, chain" ;;
    node-verified) label="node, chain + verified switch" ;;
    node-pm2) label="node, pm2 reload" ;;
    node-pm2ready) label="node, pm2 reload + wait-ready" ;;
    esac
    start "$k"
    for kav in on off; do
        scenario "$k" "$label" "$kav"
    done
    stop_native
    stop_pid "$srv_pid"
    srv_pid=
done
echo

bads="unicorn-verified unicorn-usr2 puma-verified puma-phased node-verified"
[ -z "$pm2" ] || bads="$bads node-pm2"
bads=${BAD-$bads}
echo "## A release that answers 500: the verified switch beside the native reloads"
echo
echo "uptime-probe, $C clients, no keep-alive: a release that boots and answers 500 to"
echo "everything is deployed; $HOLD s later, a good one. *verified*: examples/<server>/run"
echo "with its verified switch (forkpool --confirm-timeout): deploy-release sees the 500 and"
echo "reverts to the parked generation (exit 1, the verdict's served time). The native"
echo "reloads have no check: the 500 release serves until the next deploy. s: the bad"
echo "deploy's own time. One run, as above."
echo
echo "| server | the 500 release | s | requests | failed | its answers | mixed |"
echo "|---|---|---:|---:|---|---|---:|"
for k in $bads; do
    case $k in
    unicorn-verified) label="unicorn, chain + verified switch" ;;
    unicorn-usr2) label="unicorn, USR2 + QUIT" ;;
    puma-verified) label="puma, chain + verified switch" ;;
    puma-phased) label="puma, phased restart" ;;
    node-verified) label="node, chain + verified switch" ;;
    node-pm2) label="node, pm2 reload" ;;
    esac
    start "$k"
    bad_scenario "$k" "$label"
    stop_native
    stop_pid "$srv_pid"
    srv_pid=
done
echo
