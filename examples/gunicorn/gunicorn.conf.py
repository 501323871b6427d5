# gunicorn.conf.py: part of each release (gunicorn reads ./gunicorn.conf.py from
# its working directory, the release forkpool pinned).
#
# forkpool -m cutover holds a new generation until the old one is gone: it
# stops the process it started (the gunicorn master) and hands it a hold
# descriptor, FORKPOOL_HOLD_FD. gunicorn's workers are the master's children and
# would accept while it is stopped, so each worker waits here, before its first
# accept, until forkpool releases the generation (a byte, or end of file).
import os


def post_worker_init(worker):
    fd = os.environ.get('FORKPOOL_HOLD_FD')
    if fd:
        try:
            os.read(int(fd), 1)
        except OSError:
            pass
