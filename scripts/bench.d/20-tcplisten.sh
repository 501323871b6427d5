#!/bin/sh
# tcplisten beside ucspi-tcp's tcpserver and s6's socket binders (when installed),
# in one run: time to bind+listen+exec, time until the port is known to a script
# (-1), binary size, peak RSS, and the memory left resident while prog serves.
# Run by scripts/bench ($BIN = target/release).
set -eu
BIN=${BIN:-target/release}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
true_=$(command -v true)
have() { command -v "$1" >/dev/null 2>&1; }

echo "## tcplisten"
echo
echo "Wall time of one \`X 127.0.0.1 0 $true_\` (socket, bind a free port, listen, exec"
echo "\`true\`), hyperfine, no shell, 50 warm-up runs."
echo
set -- -n "tcplisten (ours)" "$BIN/tcplisten 127.0.0.1 0 $true_"
if have s6-tcpserver-socketbinder; then
    set -- "$@" -n "s6-tcpserver-socketbinder" "s6-tcpserver-socketbinder 127.0.0.1 0 $true_"
fi
hyperfine -N --warmup 50 --min-runs 500 --export-markdown "$tmp/t.md" "$@" >/dev/null 2>&1
cat "$tmp/t.md"
have s6-tcpserver-socketbinder || echo "(s6-tcpserver-socketbinder, from s6-networking, is not installed here.)"
echo

echo "Unix-domain socket, \`X $tmp/s.sock $true_\`: on a fresh path (removed before each run),"
echo "and on the stale socket file the previous run left (tcplisten reclaims it after a"
echo "connect probe finds nobody listening; s6-ipcserver-socketbinder removes any file there)."
echo
# (one --prepare per command, in order: hyperfine pairs them by position)
set -- -n "tcplisten, fresh path" --prepare "rm -f $tmp/s.sock" "$BIN/tcplisten $tmp/s.sock $true_" \
    -n "tcplisten, stale path" --prepare "true" "$BIN/tcplisten $tmp/s.sock $true_"
if have s6-ipcserver-socketbinder; then
    set -- "$@" -n "s6-ipcserver-socketbinder, fresh path" --prepare "rm -f $tmp/s6.sock" \
        "s6-ipcserver-socketbinder $tmp/s6.sock $true_" \
        -n "s6-ipcserver-socketbinder, stale path" --prepare "true" "s6-ipcserver-socketbinder $tmp/s6.sock $true_"
fi
hyperfine -N --warmup 50 --min-runs 500 --export-markdown "$tmp/u.md" "$@" >/dev/null 2>&1
cat "$tmp/u.md"
echo

# Time until a script knows the port: start X -1 ... with its stdout on a fifo,
# read the port, stop it. The same sh harness for both, so its cost is in both rows.
cat >"$tmp/ready.sh" <<'EOF'
#!/bin/sh
f=$(mktemp -u)
mkfifo "$f"
"$@" >"$f" &
pid=$!
read -r port <"$f"
kill "$pid"
wait "$pid" 2>/dev/null || true
rm -f "$f"
EOF
chmod +x "$tmp/ready.sh"
echo "Time until a script has read the bound port (\`X -1 127.0.0.1 0 ...\` on a fifo,"
echo "read one line, kill), through the same small sh harness for both:"
echo
hyperfine --warmup 20 --min-runs 200 --export-markdown "$tmp/r.md" \
    -n "tcplisten -1 (ours)" "$tmp/ready.sh $BIN/tcplisten -1 127.0.0.1 0 sleep 60" \
    -n "tcpserver -1 (ucspi-tcp)" "$tmp/ready.sh tcpserver -1 127.0.0.1 0 $true_" >/dev/null 2>&1
cat "$tmp/r.md"
echo

size() { wc -c <"$1" | tr -d ' '; }
rss() { /usr/bin/time -f %M "$@" 2>&1 >/dev/null | tail -n 1; }
# VmRSS (KiB) of tcpserver while it listens: it stays resident for as long as it serves.
tcpserver_rss() {
    mkfifo "$tmp/p"
    tcpserver -1 127.0.0.1 0 "$true_" >"$tmp/p" &
    pid=$!
    read -r _ <"$tmp/p"
    awk '/^VmRSS/ {print $2}' "/proc/$pid/status"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -f "$tmp/p"
}
echo "| binary | size (bytes, stripped) | peak RSS of \`X 127.0.0.1 0 true\` (KiB) | resident while prog serves (KiB) |"
echo "|:---|---:|---:|---:|"
echo "| tcplisten (ours) | $(size "$BIN/tcplisten") | $(rss "$BIN/tcplisten" 127.0.0.1 0 "$true_") | 0 (it exec'd) |"
if have s6-tcpserver-socketbinder; then
    b=$(command -v s6-tcpserver-socketbinder)
    echo "| s6-tcpserver-socketbinder | $(size "$b") | $(rss "$b" 127.0.0.1 0 "$true_") | 0 (it exec'd) |"
fi
if have s6-ipcserver-socketbinder; then
    b=$(command -v s6-ipcserver-socketbinder)
    rm -f "$tmp/r.sock"
    echo "| s6-ipcserver-socketbinder (Unix only) | $(size "$b") | $(rss "$b" "$tmp/r.sock" "$true_") | 0 (it exec'd) |"
fi
b=$(command -v tcpserver)
echo "| tcpserver (ucspi-tcp) | $(size "$b") | - (never exits) | $(tcpserver_rss) |"
echo
echo "tcpserver accepts and forks per connection, so it stays resident; tcplisten and the s6"
echo "binders only hand the socket down. Peak RSS is over the process's life, across the exec"
echo "into \`true\`. Ours links Rust's std statically (lto, panic=abort, stripped) and libc dynamically;"
echo "the C tools link libc (s6 also skalibs) dynamically; the size column counts neither."
