"""fleet-sampler: when does each host of a fleet switch release, seen from outside?
Bench 70 (scripts/bench.d/70-fleet.sh) runs it beside the fleet's deploys.

  python3 fleet-sampler.py sample OUT HOST:PORT:STATUS...
  python3 fleet-sampler.py brackets OUT

`sample` (until TERM): one process for every host, asking GET /release on fresh
connections without waiting for an answer before asking again: every 20 ms,
and every DENSE ms (environment FLEET_SAMPLER_DENSE, default 2) from 30 ms
before a commit's instant (the host's status file says `phase=committing` and
`commit_at=`) until the host answers a release it had not answered before:
fine where the switch is, cheap elsewhere. Each answer is a line in OUT:
"HOST SENT ANSWERED RELEASE" (wall clock, ms): SENT, taken right before the
connect; ANSWERED, the kernel's receive time of the answer's first bytes
(SO_TIMESTAMPNS: on loopback, when the host wrote it), not when this process
got round to reading it. A request sent within DENSE mode whose answer came
more than 50 ms later, or never (closed, or unanswered after 5 s), is a line
"HOST SENT" in OUT.stalls: a connection an old worker accepted as it was
parked waits, frozen, until the confirm; the sampler does not wait for it
(its next request goes out on time).

`brackets`: from OUT, for each host and each release it answered after its
first, "HOST LO HI RELEASE": LO, the latest SENT of an answer from an earlier
release; HI, the earliest ANSWERED of this release. An answer from the old
release means its connection was accepted by an old worker, after SENT; an
answer from the new one, that the new generation had accepted it, before
ANSWERED: the host's switch lies between LO and HI (the sampler's resolution
for that host and deploy is HI - LO).
"""
import errno
import os
import selectors
import signal
import socket
import struct
import sys
import time

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
REQUEST = b"GET /release HTTP/1.0\r\nHost: sampler\r\nConnection: close\r\n\r\n"


def sample(out_path, specs):
    dense_every = float(os.environ.get("FLEET_SAMPLER_DENSE", "2")) / 1000
    out = open(out_path, "a", buffering=1)
    stalls = open(out_path + ".stalls", "a", buffering=1)
    hosts = []
    for spec in specs:
        name, port, status = spec.split(":", 2)
        hosts.append({"name": name, "port": int(port), "status": status, "at": None,
                      "seen": set(), "due": 0.0, "looked": 0.0, "done": None})
    sel = selectors.DefaultSelector()
    pending = {}  # fd -> [sock, host, sent, dense, data, answered]

    def instant(h, again=False):
        try:
            with open(h["status"]) as f:
                kv = dict(l.split("=", 1) for l in f.read().splitlines() if "=" in l)
            if kv.get("phase") == "committing" and kv.get("commit_at"):
                at = float(kv["commit_at"])
                # not again for an instant this host was already seen switching at
                return None if at == h["done"] and not again else at
        except (OSError, ValueError):
            pass
        return None

    def finish(fd, answered_ok):
        s, h, sent, dense, data, answered = pending.pop(fd)
        sel.unregister(s)
        s.close()
        if answered_ok and data:
            head, _, body = bytes(data).partition(b"\r\n\r\n")
            got = body.decode(errors="replace").strip()
            if got:
                out.write("%s %.3f %.3f %s\n" % (h["name"], sent * 1000, answered * 1000, got))
                if got not in h["seen"]:
                    if h["seen"]:
                        # switched: back to the sparse pace, not dense again
                        # for this instant (read now if it was not yet)
                        h["done"] = h["at"] if h["at"] is not None else instant(h, True)
                        h["at"] = None
                    h["seen"].add(got)
        if dense and (not answered_ok or not data or answered - sent > 0.05):
            stalls.write("%s %.3f\n" % (h["name"], sent * 1000))

    def ask(h, dense):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setblocking(False)
        sent = time.time()
        e = s.connect_ex(("127.0.0.1", h["port"]))
        if e not in (0, errno.EINPROGRESS):
            s.close()
            if dense:
                stalls.write("%s %.3f\n" % (h["name"], sent * 1000))
            return
        pending[s.fileno()] = [s, h, sent, dense, bytearray(), None]
        sel.register(s, selectors.EVENT_WRITE)

    def readable(fd):
        p = pending[fd]
        s = p[0]
        try:
            data, anc, _, _ = s.recvmsg(65536, socket.CMSG_SPACE(16))
        except BlockingIOError:
            return
        except OSError:
            finish(fd, False)
            return
        if not data:
            finish(fd, True)
            return
        if p[5] is None:
            p[5] = time.time()
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(raw) >= 16:
                    sec, nsec = struct.unpack("qq", raw[:16])
                    p[5] = sec + nsec / 1e9
        p[4] += data

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        now = time.time()
        for h in hosts:
            if h["at"] is None and now - h["looked"] >= 0.02:
                h["looked"] = now
                h["at"] = instant(h)
            dense = h["at"] is not None and now >= h["at"] - 0.03
            if now >= h["due"]:
                ask(h, dense)
                h["due"] = now + (dense_every if dense else 0.02)
        for fd in [fd for fd, p in pending.items() if now - p[2] > 5]:
            finish(fd, False)
        wake = min(h["due"] for h in hosts) - time.time()
        for key, ev in sel.select(timeout=max(wake, 0)):
            fd = key.fd
            if fd not in pending:
                continue
            if ev & selectors.EVENT_WRITE and not pending[fd][4] and pending[fd][5] is None:
                s = pending[fd][0]
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    finish(fd, False)
                    continue
                try:
                    s.send(REQUEST)
                except OSError:
                    finish(fd, False)
                    continue
                sel.modify(s, selectors.EVENT_READ)
            elif ev & selectors.EVENT_READ:
                readable(fd)


def brackets(out_path):
    answers = {}
    for line in open(out_path):
        w = line.split()
        if len(w) == 4:
            answers.setdefault(w[0], []).append((float(w[1]), float(w[2]), w[3]))
    for host, rows in answers.items():
        # releases in the order this host first answered them
        order = []
        for _, answered, rel in sorted(rows, key=lambda r: r[1]):
            if rel not in order:
                order.append(rel)
        for k in range(1, len(order)):
            older = set(order[:k])
            lo = max((s for s, _, r in rows if r in older), default=None)
            hi = min(a for _, a, r in rows if r == order[k])
            if lo is not None:
                print("%s %.1f %.1f %s" % (host, lo, hi, order[k]))


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "sample":
        sample(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) == 3 and sys.argv[1] == "brackets":
        brackets(sys.argv[2])
    else:
        sys.exit("usage: fleet-sampler.py sample OUT HOST:PORT:STATUS... | brackets OUT")
