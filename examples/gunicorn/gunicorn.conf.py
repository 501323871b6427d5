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
# The verified switch (forkpool --confirm-timeout): the old generation is
# parked with TSTP; at a confirm forkpool sends the stop signal (TERM) to every
# process of the group, the worker too, before the CONT. The master stops on
# TSTP's default action. The worker parks itself (park_safely below): TSTP's
# default action would stop it anywhere, also between its loop's look at
# `alive` and accept(2), and continued with TERM pending it took one more
# connection before its TERM handler ran: an answer of the old release after
# the new one (1 flapping in a CI run of tests/tests/verified_deploy.rs'
# gunicorn recipe, and again in 1 of 6 clean-clone suite runs here).
import errno
import os
import signal
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
    park_safely(worker)


def park_safely(worker):
    """TSTP (forkpool's park): the worker stops itself where Python runs its
    handlers, between two steps of its loop. Continued by a confirm (TERM
    first, then CONT), the pending TERM handler has run (alive is False)
    before the handler returns: the worker's own descriptors of the
    listening sockets are then replaced by a socket that listens on nothing,
    so whatever step of the loop it goes back to, it accepts nothing more
    (accept fails, taken as 'nothing waiting') and leaves the loop. A revert
    (CONT alone) changes nothing: it accepts on."""
    nothing = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    accept = worker.accept

    def accept_while_alive(listener):
        if worker.alive:
            try:
                return accept(listener)
            except OSError as e:
                if worker.alive or e.errno not in (errno.EINVAL, errno.ENOTSOCK):
                    raise
        raise BlockingIOError(errno.EAGAIN, 'stopping: accepts no more')

    def handlers_now():
        # Calling a Python function runs the handlers of the signals that
        # came meanwhile (the TERM of a confirm).
        pass

    def on_park(sig, frame):
        os.kill(os.getpid(), signal.SIGSTOP)
        handlers_now()
        if not worker.alive:
            for s in worker.sockets:
                os.dup2(nothing.fileno(), s.fileno())

    worker.accept = accept_while_alive
    signal.signal(signal.SIGTSTP, on_park)
