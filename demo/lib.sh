# Shared by demo/serve and demo/deploy (sourced; $top is the repository).
# Our own umask, whatever the caller's: group and others never get write
# permission on what we make (the state directory, releases, bin/app, logs,
# serve.pid, port, history); a stricter umask the caller set is kept.
umask "$(printf '%03o' $(( $(umask) | 022 )))"
STATE=${STATE:-$top/demo/state}
BIN=${BIN:-$top/target/release}
me=demo/$(basename "$0")
# the clock of the whole command: kept across the re-exec under the lock
t0=${DEMO_T0:-$(date +%s%N 2>/dev/null || echo 0)}
unset DEMO_T0

# A line with the time since the script started: `demo/deploy: [0.412s] switched current`,
# on stderr and, once the state directory exists, in $STATE/logs/serve.log or deploy.log.
say() {
    # one date(1) for both the elapsed time and the log's timestamp
    set -- "$(date '+%s%N %Y-%m-%d %H:%M:%S' 2>/dev/null || echo 0)" "$*"
    ms=$(( (${1%% *} - t0) / 1000000 ))
    line=$(printf '%s: [%d.%03ds] %s' "$me" $((ms / 1000)) $((ms % 1000)) "$2")
    printf '%s\n' "$line" >&2
    if [ -d "$STATE/logs" ]; then
        printf '%s %s\n' "${1#* }" "$line" >>"$STATE/logs/${me#demo/}.log" 2>/dev/null || :
    fi
}

die() {
    code=$1
    shift
    echo "$me: fatal: $*" >&2
    if [ -d "$STATE/logs" ]; then
        printf '%s %s: fatal: %s\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$me" "$*" >>"$STATE/logs/${me#demo/}.log" 2>/dev/null || :
    fi
    exit "$code"
}

# The state directory as an absolute path without symlinks: it is compared with
# the working directories of running workers and with the chain's environment,
# so `STATE=x` and `STATE=./x` must name the same thing.
canonical_state() {
    STATE=$(cd -P "$STATE" && pwd) || die 111 "unable to enter the state directory $STATE"
}

# ensure_built [always]: the tools must be in $BIN. With the default BIN
# (target/release) they are built when one is missing, or always with `always`
# (cargo does nothing when they are fresh); a BIN given by the caller is only checked.
ensure_built() {
    missing=""
    for b in tcplisten forkpool loop-forever setlock atomic-symlink deploy-release poolctl app; do
        [ -x "$BIN/$b" ] || missing="$missing $b"
    done
    if [ "$BIN" = "$top/target/release" ] && { [ -n "$missing" ] || [ "${1:-}" = always ]; }; then
        if command -v cargo >/dev/null 2>&1; then
            say "building the tools (cargo build --release)"
            (cd "$top" && cargo build --release --workspace --quiet) || die 111 "unable to build the tools (cargo build --release)"
            return
        fi
        [ -z "$missing" ] && return
        die 111 "cargo is not installed and$missing is missing in $BIN"
    fi
    [ -z "$missing" ] || die 111 "missing in $BIN:$missing (cargo build --workspace?)"
}

# A fresh release id that sorts after every earlier one: the clock read once
# (its seconds and their fraction read apart made an id at a second's end sort
# before the one made just before it), the nanoseconds cut to microseconds (a
# date(1) without %N leaves its letter, and the pid tells ids apart).
new_release_id() {
    now=$(date +%Y%m%d-%H%M%S-%N)
    case $now in
    *-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]) now=${now%???} ;;
    esac
    echo "r$now-$$"
}

# build_release ID [KIND]: lays out $STATE/releases/ID (code, static files, the id),
# built under a temporary name and renamed into place, so a release directory is
# never seen half-built. KIND: good (default), broken (the app fails at start),
# slow (the app takes 2 s to become ready), failing (it starts, then answers 500
# to every request).
build_release() {
    id=$1
    kind=${2:-good}
    case $kind in
        good) flags="" ;;
        broken) flags="--fail-start" ;;
        slow) flags="--slow-start 2000" ;;
        failing) flags="--fail-requests" ;;
        *) die 100 "unknown release kind $kind" ;;
    esac
    d="$STATE/releases/$id"
    tmp="$STATE/releases/.building.$id"
    rm -rf "$tmp"
    mkdir -p "$tmp/bin" "$tmp/htdocs" || die 111 "unable to create $tmp"
    cp "$BIN/app" "$tmp/bin/app.real" || die 111 "unable to copy $BIN/app into $tmp"
    # bin/app is the release's code: the binary and the flags it runs with. It
    # runs at every worker start, and what it costs is CPU taken from serving at
    # each deploy (bench 45): without flags a symlink to the binary (one exec),
    # with flags a script that finds its directory by parameter expansion, not
    # by dirname(1) (a fork+exec more).
    if [ -z "$flags" ]; then
        ln -s app.real "$tmp/bin/app" || die 111 "unable to create $tmp/bin/app"
    else
        printf '#!/bin/sh\ncase $0 in */*) d=${0%%/*} ;; *) d=. ;; esac\nexec "$d/app.real" %s "$@"\n' "$flags" >"$tmp/bin/app"
        chmod +x "$tmp/bin/app"
    fi
    echo "$id" >"$tmp/RELEASE"
    cat >"$tmp/htdocs/index.html" <<HTML
<!doctype html>
<html><head><title>demo release $id</title></head>
<body data-release="$id">
<h1>Release $id</h1>
<p>Served by one worker of one release; the X-Release header names the code's release,
this page names the content's. They always agree.</p>
</body></html>
HTML
    mv "$tmp" "$d" || die 111 "unable to move $tmp to $d"
}
