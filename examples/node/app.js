// app.js: one release of a plain Node `http` server (no framework).
//
// The release is the working directory (forkpool -p pins `current` and starts
// each server there): RELEASE names it, read once at start, and every answer
// says it (X-Release, and the page's data-release). A release with a file
// BROKEN answers 500 to everything (still saying its id): the release that
// boots and serves, but serves errors, for the deploy's check to catch.
//
// Behind tcplisten + forkpool (./run):
// - the socket: listen({fd: 0}), the listening socket tcplisten put there;
// - readiness: a newline on descriptor READY_FD (forkpool -d 3), once the
//   server listens; Node cannot send to a Unix datagram socket, so not
//   NOTIFY_SOCKET;
// - the hold (forkpool -m cutover): then a blocking read of FORKPOOL_HOLD_FD
//   (a byte, or end of file) before Node's event loop runs and accepts: the
//   'listening' event comes on the next tick, before the loop polls the socket;
// - TERM: stop accepting, close idle keep-alive connections, answer what is in
//   hand with Connection: close, exit once every connection is closed (Node's
//   default for TERM is to die at once, dropping requests).
// Without READY_FD it listens on PORT (default 8000) itself.
'use strict';
const fs = require('fs');
const http = require('http');

const release = fs.readFileSync('RELEASE', 'utf8').trim();
const broken = fs.existsSync('BROKEN');
const page = `<!doctype html><html><head><title>release ${release}</title></head>` +
  `<body data-release="${release}"><h1>Release ${release}</h1></body></html>\n`;
let stopping = false;

function answer(res, status, type, body) {
  const headers = { 'X-Release': release, 'Content-Type': type, 'Content-Length': Buffer.byteLength(body) };
  if (stopping) headers.Connection = 'close';
  res.writeHead(status, headers);
  res.end(body);
}

const server = http.createServer((req, res) => {
  if (broken) answer(res, 500, 'text/plain', `release ${release} is broken\n`);
  // the deploy's check (deploy-release -c URL)
  else if (req.url === '/release') answer(res, 200, 'text/plain', `${release}\n`);
  else answer(res, 200, 'text/html', page);
});

function readyAndHold() {
  if (process.env.READY_FD) fs.writeSync(Number(process.env.READY_FD), '\n');
  const hold = process.env.FORKPOOL_HOLD_FD;
  if (hold) {
    try {
      fs.readSync(Number(hold), Buffer.alloc(1), 0, 1, null);
    } catch (e) {
      // a closed or odd descriptor: nothing to wait for
    }
  }
}

process.on('SIGTERM', () => {
  stopping = true;
  server.close(() => process.exit(0));
  server.closeIdleConnections();
});

server.on('listening', readyAndHold);
if (process.env.READY_FD) server.listen({ fd: 0 });
else server.listen(Number(process.env.PORT || 8000), '127.0.0.1');
