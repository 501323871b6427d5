# app.py: one release of an ASGI app, as uvicorn serves it (`app:app`).
# The release is the working directory (forkpool -p); RELEASE names it.
#
# uvicorn says nothing when it is ready: the app's lifespan startup sends
# READY=1 to forkpool's --notify socket, then (forkpool -m cutover) waits on
# FORKPOOL_HOLD_FD until forkpool releases the generation, so no new worker
# accepts before the old generation is gone.
import os
import socket

RELEASE = open('RELEASE').read().strip()
PAGE = ('<!doctype html><html><head><title>release %s</title></head>'
        '<body data-release="%s"><h1>Release %s</h1></body></html>\n') % (RELEASE, RELEASE, RELEASE)


def sd_notify(msg):
    addr = os.environ.get('NOTIFY_SOCKET')
    if not addr:
        return
    if addr[0] == '@':
        addr = '\0' + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(msg.encode(), addr)


def hold():
    fd = os.environ.get('FORKPOOL_HOLD_FD')
    if fd:
        try:
            os.read(int(fd), 1)
        except OSError:
            pass


async def app(scope, receive, send):
    if scope['type'] == 'lifespan':
        while True:
            m = await receive()
            if m['type'] == 'lifespan.startup':
                sd_notify('READY=1')
                hold()
                await send({'type': 'lifespan.startup.complete'})
            elif m['type'] == 'lifespan.shutdown':
                await send({'type': 'lifespan.shutdown.complete'})
                return
    if scope['type'] != 'http':
        return
    if scope['path'] == '/release':
        body, ctype = (RELEASE + '\n').encode(), b'text/plain'
    else:
        body, ctype = PAGE.encode(), b'text/html; charset=utf-8'
    await send({'type': 'http.response.start', 'status': 200,
                'headers': [(b'content-type', ctype), (b'x-release', RELEASE.encode()),
                            (b'content-length', str(len(body)).encode())]})
    await send({'type': 'http.response.body', 'body': body})
