#!/bin/sh
# atomic-symlink: wall time per switch beside `ln -sfn` and `mv -T`, how often a racing
# reader finds the link missing under each way of switching, binary size and peak RSS.
# Run by scripts/bench ($BIN set).
set -eu
BIN=${BIN:-target/release}
SWAPS=${SWAPS:-2000}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
mkdir -p releases/a releases/b
echo a >releases/a/index.html
echo b >releases/b/index.html
ln -s releases/a current

echo "## atomic-symlink"
echo
echo "Wall time of one switch of \`current\`, hyperfine, no shell. GNU \`ln -sfn\` ($(ln --version | head -n 1 | sed 's/.* //'))"
echo "itself makes a temporary and renames it (POSIX ln, busybox and BSD ln unlink first);"
echo "the portable atomic idiom is \`ln -sfn releases/a .tmp && mv -T .tmp current\`. Ours"
echo "also fsyncs the directory, which neither does: \`sync .\` is that step alone, for"
echo "a durable \`ln -sfn\`. Target: within 1.5x of the C tools."
timing() { # directory
    ( cd "$1"
    mkdir -p releases/a releases/b
    ln -sfn releases/a current
    echo
    echo "In a directory on $(stat -f -c %T .):"
    echo
    hyperfine -N --warmup 50 --min-runs 500 --prepare "ln -sfn releases/a .tmp" \
        --export-markdown t.md --export-json t.json \
        -n "atomic-symlink releases/a current" "$BIN/atomic-symlink releases/a current" \
        -n "ln -sfn releases/a current" "ln -sfn releases/a current" \
        -n "mv -T .tmp current" "mv -T .tmp current" \
        -n "sync ." "sync ." >/dev/null 2>&1
    cat t.md
    python3 - t.json <<'PY'
import json, sys
ours, ln, mv, sync = (x["mean"] * 1000 for x in json.load(open(sys.argv[1]))["results"])
print()
print(f"atomic-symlink {ours:.2f} ms = {ours / ln:.2f}x `ln -sfn`, {ours / (ln + mv):.2f}x `ln -sfn` + `mv -T`, "
      f"{ours / (ln + sync):.2f}x `ln -sfn` + `sync .` (all three atomic here; only ours and the last durable).")
PY
    )
}
timing "$tmp"
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    shm=$(mktemp -d /dev/shm/bench-asl.XXXXXX)
    timing "$shm"
    rm -rf "$shm"
fi
echo

# The racing reader: readlink(current) and stat(current/index.html) in a tight loop
# until told to stop; prints how many checks it made and how many found ENOENT.
cat >reader.py <<'PY'
import errno, os, sys
link, ready, stop = sys.argv[1:4]
page = os.path.join(link, "index.html")
checks = missing = 0
open(ready, "w").close()
while not os.path.exists(stop):
    for _ in range(500):
        checks += 1
        try:
            os.readlink(link)
            os.stat(page)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
            missing += 1
print(checks, missing)
PY

race() { # name, then a shell function that switches current to $1
    rm -f ready stop
    python3 reader.py current ready stop >reader.out &
    reader=$!
    i=0
    while [ ! -e ready ] && [ $i -lt 1000 ]; do i=$((i + 1)); sleep 0.01; done
    i=0
    while [ $i -lt "$SWAPS" ]; do
        if [ $((i % 2)) = 0 ]; then "$2" releases/b; else "$2" releases/a; fi
        i=$((i + 1))
    done
    touch stop
    wait "$reader"
    read -r checks missing <reader.out
    echo "| $1 | $SWAPS | $checks | $missing |"
}
with_rm_ln() { rm -f current && ln -s "$1" current; }
with_unlink_symlink() { perl -e 'unlink $ARGV[1]; symlink $ARGV[0], $ARGV[1] or die "$!\n"' "$1" current; }
with_ln() { ln -sfn "$1" current; }
with_ln_mv() { ln -sfn "$1" .tmp && mv -T .tmp current; }
with_ours() { "$BIN/atomic-symlink" "$1" current; }

echo "A reader racing readlink(2)+stat(2) on \`current\` while $SWAPS switches run:"
echo
echo "| switched with | switches | reader checks | checks that found \`current\` missing |"
echo "|:---|---:|---:|---:|"
race "\`rm -f current && ln -s\` (two programs)" with_rm_ln
command -v perl >/dev/null &&
    race "unlink(2)+symlink(2) in one process (POSIX \`ln -sf\`, busybox; via perl)" with_unlink_symlink
race "\`ln -sfn\` (GNU)" with_ln
race "\`ln -sfn\` + \`mv -T\`" with_ln_mv
race "atomic-symlink" with_ours
echo

size() { wc -c <"$1" | tr -d ' '; }
rss() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -n 1; }
ln -sfn releases/a .tmp
echo "| binary | size (bytes, stripped) | peak RSS of one switch (KiB) |"
echo "|:---|---:|---:|"
echo "| atomic-symlink | $(size "$BIN/atomic-symlink") | $(rss "$BIN/atomic-symlink" releases/b current) |"
echo "| ln (coreutils) | $(size "$(command -v ln)") | $(rss ln -sfn releases/a current) |"
echo "| mv (coreutils) | $(size "$(command -v mv)") | $(rss mv -T .tmp current) |"
