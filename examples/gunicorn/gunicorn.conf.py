# gunicorn.conf.py: part of each release (gunicorn reads ./gunicorn.conf.py from
# its working directory, the release forkpool pinned).
#
# Readiness: forkpool --notify gives the gunicorn master NOTIFY_SOCKET. The
# master would say READY=1 as soon as it booted, before its worker exists; so
# the socket is taken away from the master here and the worker itself says
# READY=1, right before its first accept (forkpool counts a datagram from a
# descendant of the process it started).
#
# The hold (forkpool -m cutover): forkpool stops the process it started (the
# master) and hands it FORKPOOL_HOLD_FD; the worker, a child of the master, would
# accept meanwhile, so it waits on that descriptor until forkpool releases the
# generation (a byte, or end of file) once the old generation is gone.
import os
import socket

NOTIFY = os.environ.pop('NOTIFY_SOCKET', None)


def post_worker_init(worker):
    guard_accept_after_park(worker)
    if NOTIFY:
        addr = '\0' + NOTIFY[1:] if NOTIFY.startswith('@') else NOTIFY
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b'READY=1', addr)
    fd = os.environ.get('FORKPOOL_HOLD_FD')
    if fd:
        try:
            os.read(int(fd), 1)
        except OSError:
            pass


# WORKAROUND (issue 26, the verified switch, forkpool --confirm-timeout): a
# parked generation is stopped (SIGSTOP of the master's process group). At a
# confirm forkpool sends the stop signal to the master and SIGCONT to the
# group: the worker wakes at once, while the master's TERM reaches it only
# through the master, so it could still accept a connection or two and answer
# with the old release after clients saw the new one. So a worker that was
# continued looks at forkpool's status file (SITE/status, as ./run lays it
# out) before its next accept, until its master is neither `parked` nor
# `held` (a release continues the group too): `stopping` (confirmed) means
# accept nothing more; anything else (`ready`: reverted or released) serve.
# Without SITE (or a status file) nothing changes.
import errno
import signal
import time

STATUS = os.path.join(os.environ['SITE'], 'status') if os.environ.get('SITE') else None


def _master_state(master):
    try:
        with open(STATUS) as f:
            for line in f:
                if line.startswith('worker='):
                    fields = line.split()
                    if len(fields) >= 4 and fields[2] == str(master):
                        return fields[3]
    except OSError:
        return None
    return 'gone'


def guard_accept_after_park(worker):
    if not STATUS:
        return
    continued = []
    signal.signal(signal.SIGCONT, lambda *_: continued.append(1))
    accept = worker.accept

    def guarded_accept(listener):
        if continued:
            del continued[:]
            end = time.monotonic() + 5
            state = _master_state(worker.ppid)
            while state in ('parked', 'held') and time.monotonic() < end:
                time.sleep(0.005)
                state = _master_state(worker.ppid)
            if state == 'stopping':
                worker.alive = False
                raise BlockingIOError(errno.EAGAIN, 'retired while parked')
        return accept(listener)

    worker.accept = guarded_accept
