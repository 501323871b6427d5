#!/bin/sh
# forkpool beside gunicorn's master, in one run: the time from HUP to the new
# generation fully serving (every new worker ready), and the master's memory.
# Same worker start time on both sides: forkpool runs test-worker, ready
# (newline on fd 5) after $D ms; gunicorn runs a WSGI hello app whose module
# sleeps $D ms at import (sync workers, no --preload, so each new worker
# imports it), ready when its post_worker_init hook runs.
# Needs $BIN (target/release, with forkpool and test-worker) and gunicorn.
set -eu
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
GUNICORN=${GUNICORN:-.venv/bin/gunicorn}
[ -x "$GUNICORN" ] || GUNICORN=$(command -v gunicorn || echo "")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cat >"$tmp/driver.py" <<'EOF'
import os, signal, socket, statistics, subprocess, sys, time

BIN, GUNICORN, TMP = sys.argv[1], sys.argv[2], sys.argv[3]
N, D, RELOADS = 4, int(os.environ.get("FP_BENCH_DELAY_MS", "100")), int(os.environ.get("FP_BENCH_RELOADS", "8"))
TIMEOUT = 30

def mem(pid):
    rss = priv = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            k, *v = line.split()
            if k == "Rss:": rss = int(v[0])
            if k in ("Private_Clean:", "Private_Dirty:"): priv += int(v[0])
    return rss, priv

def wait(cond, what):
    end = time.monotonic() + TIMEOUT
    while time.monotonic() < end:
        r = cond()
        if r: return r
        time.sleep(0.0005)
    sys.exit(f"bench: timed out waiting for {what}")

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False

def forkpool(mode):
    st = os.path.join(TMP, f"status-{mode}")
    sock = socket.socket(); sock.bind(("127.0.0.1", 0)); sock.listen(1024)
    p = subprocess.Popen([f"{BIN}/forkpool", "-n", str(N), "-m", mode, "-d", "5", "-S", st,
                          f"{BIN}/test-worker", "--notify-fd", "5", "--ready-delay", str(D)],
                         stdin=sock.fileno(), stderr=subprocess.DEVNULL)
    sock.close()
    def status():
        try:
            with open(st) as f:
                return dict(l.split("=", 1) for l in f.read().splitlines() if "=" in l and not l.startswith("worker="))
        except OSError:
            return {}
    def serving(g):
        s = status()
        return s.get("serving_generation") == str(g) and s.get("reload") in ("ok", "none")
    wait(lambda: serving(1), "forkpool generation 1")
    times, gone, low = [], [], [N]
    def sample(cond):
        def f():
            s = status()
            if s.get("ready"): low[0] = min(low[0], int(s["ready"]))
            return cond()
        return f
    for g in range(2, RELOADS + 2):
        with open(st) as f:
            old = [int(l.split()[2]) for l in f if l.startswith("worker=")]
        t0 = time.monotonic()
        p.send_signal(signal.SIGHUP)
        wait(sample(lambda: serving(g)), f"forkpool generation {g}")
        times.append(time.monotonic() - t0)
        wait(sample(lambda: not any(alive(x) for x in old)), "old workers to go")
        gone.append(time.monotonic() - t0)
    rss, priv = mem(p.pid)
    p.send_signal(signal.SIGTERM); p.wait(TIMEOUT)
    return times, gone, low[0], rss, priv

def gunicorn():
    app = os.path.join(TMP, "app")
    os.makedirs(os.path.join(app, "ready"), exist_ok=True)
    with open(os.path.join(app, "hello.py"), "w") as f:
        f.write(f"import time\ntime.sleep({D / 1000})\n"
                "def app(environ, start_response):\n"
                "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
                "    return [b'hello\\n']\n")
    with open(os.path.join(app, "conf.py"), "w") as f:
        f.write("import os\n"
                "def post_worker_init(worker):\n"
                f"    open(os.path.join({os.path.join(app, 'ready')!r}, str(os.getpid())), 'w').close()\n")
    ready = os.path.join(app, "ready")
    p = subprocess.Popen([GUNICORN, "-w", str(N), "-k", "sync", "-c", os.path.join(app, "conf.py"),
                          "-b", "unix:" + os.path.join(app, "sock"), "--chdir", app, "hello:app"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def ready_pids():
        return {int(x) for x in os.listdir(ready)}
    wait(lambda: len(ready_pids()) >= N, "gunicorn workers")
    times, gone, low = [], [], [N]
    def sample(old, cond):
        # Generous to gunicorn: an old worker counts as serving until it is gone.
        def f():
            low[0] = min(low[0], sum(alive(x) for x in old) + len({x for x in ready_pids() if alive(x)} - old))
            return cond()
        return f
    for _ in range(RELOADS):
        old = ready_pids()
        for x in old: os.unlink(os.path.join(ready, str(x)))
        t0 = time.monotonic()
        p.send_signal(signal.SIGHUP)
        wait(sample(old, lambda: len({x for x in ready_pids() if alive(x)} - old) >= N), "gunicorn new workers")
        times.append(time.monotonic() - t0)
        wait(sample(old, lambda: not any(alive(x) for x in old)), "gunicorn old workers to go")
        gone.append(time.monotonic() - t0)
    rss, priv = mem(p.pid)
    p.send_signal(signal.SIGTERM); p.wait(TIMEOUT)
    return times, gone, low[0], rss, priv

def row(name, r):
    times, gone, low, rss, priv = r
    ms = lambda xs: f"{statistics.median(xs) * 1000:.1f} / {max(xs) * 1000:.1f}"
    print(f"| {name} | {ms(times)} | {ms(gone)} | {low} of {N} | {rss} KiB | {priv} KiB |")

print(f"## forkpool: HUP reload beside gunicorn\n")
print(f"{N} workers, each ready {D} ms after its start; {RELOADS} reloads each; times from HUP, median / max in ms.")
print("forkpool: new generation fully serving = status file `serving_generation` is the new one;")
print("gunicorn: every new worker has run post_worker_init. Memory: the master process only")
print("(private = smaps_rollup Private_Clean + Private_Dirty; RSS includes shared libc/ld.so pages).\n")
print("Fewest serving: sampled during every reload; forkpool: `ready=` of the status file; gunicorn: new workers")
print("past post_worker_init plus old workers not yet exited (generous: a stopping worker no longer accepts).\n")
print("| pool | HUP to new generation fully serving (ms) | HUP to old workers all gone (ms) | fewest serving | master RSS | master private |")
print("|---|---|---|---|---|---|")
row("forkpool -m rolling", forkpool("rolling"))
row("forkpool -m all-at-once", forkpool("all-at-once"))
if GUNICORN:
    row("gunicorn (sync, HUP)", gunicorn())
print()
print("gunicorn signals its old workers to stop as soon as it has forked the new ones, before they are ready;")
print("forkpool retires an old worker only when N ready workers remain without it.")
EOF

"$PY" "$tmp/driver.py" "$BIN" "$GUNICORN" "$tmp"
