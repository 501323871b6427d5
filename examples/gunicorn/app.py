# app.py: one release of a Flask app, as gunicorn serves it (`app:app`).
#
# The release is the working directory (forkpool -p pins `current` and starts
# each worker there): RELEASE names it, read once at import, and every answer
# says it (X-Release, and the page's data-release).
from flask import Flask, Response

RELEASE = open('RELEASE').read().strip()
PAGE = ('<!doctype html><html><head><title>release %s</title></head>'
        '<body data-release="%s"><h1>Release %s</h1></body></html>\n') % (RELEASE, RELEASE, RELEASE)

app = Flask(__name__)


@app.route('/release')
def release():
    # the deploy's check (deploy-release -c URL)
    return Response(RELEASE + '\n', mimetype='text/plain', headers={'X-Release': RELEASE})


@app.route('/', defaults={'path': ''})
@app.route('/<path:path>')
def page(path):
    return Response(PAGE, mimetype='text/html', headers={'X-Release': RELEASE})
