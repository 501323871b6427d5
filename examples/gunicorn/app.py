# app.py: one release of a WSGI app, as gunicorn serves it (`app:app`).
# A Flask app is the same to everything here: `app = Flask(__name__)` is a WSGI
# callable, served with the same gunicorn line; only the routes differ.
#
# The release is the working directory (forkpool -p pins `current` and starts
# each worker there): RELEASE names it, read once at import.
RELEASE = open('RELEASE').read().strip()
PAGE = ('<!doctype html><html><head><title>release %s</title></head>'
        '<body data-release="%s"><h1>Release %s</h1></body></html>\n') % (RELEASE, RELEASE, RELEASE)


def app(environ, start_response):
    # /release: the deploy's check (deploy-release -c URL); anything else: the page
    if environ.get('PATH_INFO') == '/release':
        body, ctype = (RELEASE + '\n').encode(), 'text/plain'
    else:
        body, ctype = PAGE.encode(), 'text/html; charset=utf-8'
    start_response('200 OK', [('Content-Type', ctype), ('X-Release', RELEASE),
                              ('Content-Length', str(len(body)))])
    return [body]
