# Shared by demo/serve and demo/deploy (sourced; $top is the repository).
STATE=${STATE:-$top/demo/state}
BIN=${BIN:-$top/target/release}
me=demo/$(basename "$0")
t0=$(date +%s%N 2>/dev/null || echo 0)

# A line with the time since the script started: `demo/deploy: [0.412s] switched current`.
say() {
    now=$(date +%s%N 2>/dev/null || echo 0)
    ms=$(( (now - t0) / 1000000 ))
    printf '%s: [%d.%03ds] %s\n' "$me" $((ms / 1000)) $((ms % 1000)) "$*" >&2
}

die() {
    code=$1
    shift
    echo "$me: fatal: $*" >&2
    exit "$code"
}

ensure_built() {
    for b in tcplisten forkpool loop-forever setlock atomic-symlink app; do
        if [ ! -x "$BIN/$b" ]; then
            [ "$BIN" = "$top/target/release" ] || die 111 "$BIN/$b is missing"
            say "building the tools (cargo build --release)"
            (cd "$top" && cargo build --release --workspace --quiet) || die 111 "unable to build the tools"
            return
        fi
    done
}

# A fresh release id that sorts after every earlier one.
new_release_id() {
    echo "r$(date +%Y%m%d-%H%M%S)-$(date +%N | cut -c1-6)-$$"
}

# build_release ID [KIND]: lays out $STATE/releases/ID (code, static files, the id),
# built under a temporary name and renamed into place, so a release directory is
# never seen half-built. KIND: good (default), broken (the app fails at start),
# slow (the app takes 2 s to become ready).
build_release() {
    id=$1
    kind=${2:-good}
    d="$STATE/releases/$id"
    tmp="$STATE/releases/.building.$id"
    rm -rf "$tmp"
    mkdir -p "$tmp/bin" "$tmp/htdocs"
    cp "$BIN/app" "$tmp/bin/app.real"
    case $kind in
        good) flags="" ;;
        broken) flags="--fail-start" ;;
        slow) flags="--slow-start 2000" ;;
        *) die 100 "unknown release kind $kind" ;;
    esac
    # bin/app is the release's code: the binary and the flags it runs with.
    printf '#!/bin/sh\nexec "$(dirname "$0")/app.real" %s "$@"\n' "$flags" >"$tmp/bin/app"
    chmod +x "$tmp/bin/app"
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
    mv "$tmp" "$d"
}
