# Shared by examples/fleet/up, down, deploy and stage (sourced; $top is the
# repository). Builds on demo/lib.sh (say, die, ensure_built, build_release).
FLEET_DIR=${FLEET_DIR:-$top/examples/fleet/state}
. "$top/demo/lib.sh"
me=fleet/$(basename "$0")
# demo/lib.sh logs to $STATE/logs; the fleet's own lines go to $FLEET_DIR/logs
STATE=$FLEET_DIR

# The fleet directory as an absolute path (it goes into the inventory and the
# HAProxy configuration, read from other working directories).
canonical_fleet() {
    FLEET_DIR=$(cd -P "$FLEET_DIR" && pwd) || die 111 "unable to enter the fleet directory $FLEET_DIR"
    STATE=$FLEET_DIR
}

# The hosts of a fleet that `up` started, one directory name a line (host1 ...).
fleet_hosts() {
    [ -f "$FLEET_DIR/hosts" ] || die 3 "no fleet in $FLEET_DIR (no $FLEET_DIR/hosts): run examples/fleet/up first"
    cat "$FLEET_DIR/hosts"
}

# pid_of FILE NAME...: the pid in FILE if that process runs one of the programs
# NAME (by /proc/PID/exe), else nothing: a stale pid file or a reused pid is
# never signalled.
pid_of() {
    f=$1
    shift
    p=$(cat "$f" 2>/dev/null) || return 0
    case $p in '' | *[!0-9]*) return 0 ;; esac
    exe=$(readlink "/proc/$p/exe" 2>/dev/null) || return 0
    exe=${exe% (deleted)}
    for n in "$@"; do
        [ "${exe##*/}" = "$n" ] && { echo "$p"; return 0; }
    done
}

# haproxy_cmd COMMAND: one command to HAProxy's runtime API, its answer on stdout.
haproxy_cmd() {
    printf '%s\n' "$1" | socat -t 5 stdio "unix-connect:$FLEET_DIR/haproxy.sock"
}

# server_status HOST: HAProxy's view of the host (UP, DOWN, DRAIN, MAINT, ...),
# from `show stat` (the CSV's 18th field is status).
server_status() {
    haproxy_cmd "show stat" | awk -F, -v h="$1" '$1 == "be" && $2 == h { print $18 }'
}

# wait_for SECONDS WHAT COMMAND...: run COMMAND until it succeeds, or die.
wait_for() {
    secs=$1
    what=$2
    shift 2
    end=$(($(date +%s) + secs))
    until "$@"; do
        [ "$(date +%s)" -lt "$end" ] || die 111 "$what did not happen within ${secs}s"
        sleep 0.05
    done
}
