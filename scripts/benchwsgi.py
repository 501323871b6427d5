"""benchwsgi: the WSGI app gunicorn runs in the benchmarks (scripts/bench.d/45-cutover.sh,
60-deploys.sh): the demo app's shape. Each worker resolves $BENCH_CURRENT once when it
starts (module import after fork; the pid check covers --preload) and serves that
release: X-Release from RELEASE, the body from htdocs/index.html (data-release),
/release for the deploy's check."""
import os

CURRENT = os.environ["BENCH_CURRENT"]


def _load():
    d = os.path.realpath(CURRENT)
    with open(os.path.join(d, "RELEASE")) as f:
        release = f.read().strip()
    with open(os.path.join(d, "htdocs", "index.html"), "rb") as f:
        body = f.read()
    return os.getpid(), release, body


_pinned = _load()


def app(environ, start_response):
    global _pinned
    if _pinned[0] != os.getpid():
        _pinned = _load()
    _, release, body = _pinned
    if environ.get("PATH_INFO") == "/release":
        body, ctype = (release + "\n").encode(), "text/plain"
    else:
        ctype = "text/html; charset=utf-8"
    start_response("200 OK", [("Content-Type", ctype), ("Content-Length", str(len(body))), ("X-Release", release)])
    return [body]
