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
#
# The verified switch (forkpool --confirm-timeout): a parked generation is
# stopped as a group; at a confirm (or a revert, for the new one) forkpool
# sends the stop signal (TERM) to every process of the group, the worker too,
# before the CONT, so the worker wakes with its TERM pending and stops
# accepting at once (nothing needed here).
import os
import socket

NOTIFY = os.environ.pop('NOTIFY_SOCKET', None)


def post_worker_init(worker):
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
