#!/bin/sh
# setlock: wall time per invocation (`setlock f true`) beside daemontools' setlock and
# util-linux flock(1), the binary size, and peak RSS. Run by scripts/bench ($BIN set).
set -eu
BIN=${BIN:-target/release}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
lock=$tmp/lock
true_=$(command -v true)

echo "## setlock"
echo
echo "Wall time of one uncontended \`setlock f true\` (open, lock, exec \`$true_\`),"
echo "hyperfine, no shell, 100 warm-up runs. Target: within 1.5x of the C tools."
echo
hyperfine -N --warmup 100 --min-runs 1000 \
    --export-markdown "$tmp/t.md" \
    -n "setlock (ours)" "$BIN/setlock $lock $true_" \
    -n "setlock (daemontools)" "/usr/bin/setlock $lock $true_" \
    -n "flock (util-linux)" "flock $lock $true_" >/dev/null 2>&1
cat "$tmp/t.md"
echo
echo "Same, \`-n\` on a lock another process holds (fails at once, nothing is executed):"
echo
"$BIN/setlock" "$lock" sleep 600 &
holder=$!
# wait (bounded) until the holder has the lock
i=0
while "$BIN/setlock" -n "$lock" true 2>/dev/null; do
    i=$((i + 1)); [ $i -lt 500 ] || break; sleep 0.01
done
hyperfine -N --warmup 100 --min-runs 1000 -i \
    --export-markdown "$tmp/n.md" \
    -n "setlock -n (ours)" "$BIN/setlock -n $lock $true_" \
    -n "setlock -n (daemontools)" "/usr/bin/setlock -n $lock $true_" \
    -n "flock -n (util-linux)" "flock -n $lock $true_" >/dev/null 2>&1
kill "$holder" 2>/dev/null || true
wait "$holder" 2>/dev/null || true
cat "$tmp/n.md"
echo
size() { wc -c <"$1" | tr -d ' '; }
rss() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -n 1; }
echo "| binary | size (bytes, stripped) | peak RSS of \`X f true\` (KiB) |"
echo "|:---|---:|---:|"
echo "| setlock (ours) | $(size "$BIN/setlock") | $(rss "$BIN/setlock" "$lock" "$true_") |"
echo "| setlock (daemontools) | $(size /usr/bin/setlock) | $(rss /usr/bin/setlock "$lock" "$true_") |"
echo "| flock (util-linux) | $(size "$(command -v flock)") | $(rss flock "$lock" "$true_") |"
echo
echo "Peak RSS is the process's maximum over its life, across the exec into \`true\`."
echo "Ours carries Rust's std inside it (lto, panic=abort, stripped); all three link"
echo "glibc dynamically, which the size column does not count."
