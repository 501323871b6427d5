//! The connections: many at once, one thread, poll(2). Each must send a whole
//! request head within the deadline of its accept, then gets its answer and is
//! closed; an idle or dribbling client holds its own connection and nothing
//! else, so every other check is answered at once (issue 24).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{accept4, SockFlag};

use crate::TOOL;

/// Largest request head read; a longer one gets 431.
const MAX_HEAD: usize = 8192;
/// How long a refused request's connection drains what the client still sends.
const LINGER: Duration = Duration::from_millis(100);
/// The most connections held at once, whatever the descriptor limit allows.
const MAX_CONNECTIONS: usize = 10_000;

/// An answer: the status, the Content-Type, the body.
pub type Answer = (u16, &'static str, String);

pub const PLAIN: &str = "text/plain; charset=utf-8";

/// What the request asked, as far as the answer cares.
enum Request {
    /// A whole head: HEAD (no body in the answer) or any other method; the
    /// path without its query.
    Head { head_only: bool, path: String },
    /// Not HTTP, or too long: answered with this status.
    Bad(u16),
    /// Not whole yet.
    Partial,
}

#[derive(PartialEq)]
enum Phase {
    /// Reading the request head, until the accept's deadline.
    Request,
    /// Writing the answer (`out[written..]`), until the deadline.
    Answer,
    /// Our side shut after a refused request: reading what the client still
    /// sends, so that the close does not reset the answer in flight.
    Linger,
}

struct Conn {
    fd: OwnedFd,
    phase: Phase,
    deadline: Instant,
    input: Vec<u8>,
    out: Vec<u8>,
    written: usize,
    /// Linger after the answer (a 400 or 431), else close.
    linger: bool,
}

/// Accept on descriptor 0 and answer every request, forever: `answer` gives,
/// for the request's path, the status, the type and the body,
/// the status and the one-line reason, asked once a whole head is in.
pub fn serve_forever(timeout: Duration, mut answer: impl FnMut(&str) -> Answer) -> ! {
    let max = connection_limit();
    let mut conns: Vec<Conn> = Vec::new();
    loop {
        let now = Instant::now();
        let next = conns.iter().map(|c| c.deadline).min();
        let wait = next.map(|d| d.saturating_duration_since(now));
        // SAFETY: descriptor 0 is the listening socket, open for the life of
        // the process (checked at start); it is only borrowed for the poll.
        let listener = unsafe { BorrowedFd::borrow_raw(0) };
        let (listen_ready, ready) = wait_events(listener, &conns, wait);
        if listen_ready {
            if conns.len() >= max {
                evict_oldest(&mut conns);
            }
            if let Some(fd) = accept_one(&mut conns) {
                conns.push(Conn {
                    fd,
                    phase: Phase::Request,
                    deadline: Instant::now() + timeout,
                    input: Vec::new(),
                    out: Vec::new(),
                    written: 0,
                    linger: false,
                });
            }
        }
        let now = Instant::now();
        let mut keep = Vec::with_capacity(conns.len());
        for (i, mut c) in conns.drain(..).enumerate() {
            // a connection accepted just now has no event yet
            let live = if ready.get(i).copied().unwrap_or(false) {
                step(&mut c, timeout, &mut answer)
            } else {
                true
            };
            if live && now < c.deadline {
                keep.push(c);
            }
        }
        conns = keep;
    }
}

/// Poll the listener and every connection (what each waits for), at most
/// `wait`: (the listener is readable, which connections have an event).
fn wait_events(listener: BorrowedFd, conns: &[Conn], wait: Option<Duration>) -> (bool, Vec<bool>) {
    let mut fds = Vec::with_capacity(conns.len() + 1);
    fds.push(PollFd::new(listener, PollFlags::POLLIN));
    for c in conns {
        let what = match c.phase {
            Phase::Answer => PollFlags::POLLOUT,
            Phase::Request | Phase::Linger => PollFlags::POLLIN,
        };
        fds.push(PollFd::new(c.fd.as_fd(), what));
    }
    let timeout = match wait {
        None => PollTimeout::NONE,
        Some(d) => {
            let ms = i32::try_from(d.as_millis()).unwrap_or(i32::MAX).max(1);
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    };
    match unixtool::retry_eintr(|| poll(&mut fds, timeout)) {
        Ok(_) => {}
        Err(e) => TOOL.fatal_errno(unixtool::EXIT_TEMPORARY, "poll", e),
    }
    let seen = |f: &PollFd| f.revents().is_some_and(|r| !r.is_empty());
    let listen = seen(&fds[0]);
    (listen, fds[1..].iter().map(seen).collect())
}

/// Take one connection (non-blocking, close-on-exec). Transient failures (a
/// client gone before accept) are skipped; descriptors or memory short: the
/// oldest connection still reading its request is closed to make room.
fn accept_one(conns: &mut Vec<Conn>) -> Option<OwnedFd> {
    match accept4(0, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK) {
        // SAFETY: accept4 returned a new descriptor that nothing else owns.
        Ok(fd) => Some(unsafe { OwnedFd::from_raw_fd(fd) }),
        Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNABORTED | Errno::EPROTO | Errno::EPERM) => {
            None
        }
        Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
            if !evict_oldest(conns) {
                TOOL.warn(format_args!(
                    "unable to accept a connection: {}; trying again in 100 ms",
                    unixtool::strerror(e)
                ));
                std::thread::sleep(Duration::from_millis(100));
            }
            None
        }
        Err(e) => TOOL.fatal_errno(unixtool::EXIT_TEMPORARY, "accept on descriptor 0", e),
    }
}

/// Close the connection that has waited longest for its request head (an
/// idle or dribbling client); false when there is none.
fn evict_oldest(conns: &mut Vec<Conn>) -> bool {
    let oldest = conns
        .iter()
        .enumerate()
        .filter(|(_, c)| c.phase == Phase::Request)
        .min_by_key(|(_, c)| c.deadline)
        .map(|(i, _)| i);
    match oldest {
        Some(i) => {
            conns.swap_remove(i);
            true
        }
        None => false,
    }
}

/// The connections this process can hold: its descriptor limit raised to the
/// hard limit (1,000 idle clients must not exhaust a soft limit of 1,024),
/// less a few for itself, at most [`MAX_CONNECTIONS`].
fn connection_limit() -> usize {
    let Some(have) = unixtool::raise_nofile(MAX_CONNECTIONS as u64 + 64) else {
        return 256;
    };
    (have.saturating_sub(32) as usize).clamp(16, MAX_CONNECTIONS)
}

/// Do what the connection is ready for; false when it is done (close it).
fn step(c: &mut Conn, timeout: Duration, answer: &mut impl FnMut(&str) -> Answer) -> bool {
    match c.phase {
        Phase::Request => {
            let mut chunk = [0u8; 2048];
            match read(&c.fd, &mut chunk) {
                Ok(0) => return false,
                Ok(n) => c.input.extend_from_slice(&chunk[..n]),
                Err(Errno::EAGAIN) => return true,
                Err(_) => return false,
            }
            let ((status, kind, body), head_only) = match parse(&c.input) {
                Request::Partial => return true,
                Request::Head { head_only, path } => (answer(&path), head_only),
                Request::Bad(status) => {
                    let body = format!("{}\n", status_text(status).to_lowercase());
                    ((status, PLAIN, body), false)
                }
            };
            c.out = response(status, kind, &body, head_only);
            c.linger = !matches!(status, 200 | 503);
            c.phase = Phase::Answer;
            // The client may be gone or never read: the answer's own deadline.
            c.deadline = Instant::now() + timeout;
            write_some(c)
        }
        Phase::Answer => write_some(c),
        Phase::Linger => {
            let mut sink = [0u8; 2048];
            matches!(read(&c.fd, &mut sink), Ok(1..) | Err(Errno::EAGAIN))
        }
    }
}

/// Write what is left of the answer; when all is out, close or linger.
fn write_some(c: &mut Conn) -> bool {
    while c.written < c.out.len() {
        // SAFETY: writes from a live buffer of the given length to a
        // descriptor this connection owns.
        let n = unsafe {
            libc::write(
                c.fd.as_raw_fd(),
                c.out[c.written..].as_ptr().cast(),
                c.out.len() - c.written,
            )
        };
        match Errno::result(n) {
            Ok(n) => c.written += n as usize,
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => return true,
            // gone (EPIPE, ECONNRESET): nothing to do
            Err(_) => return false,
        }
    }
    if !c.linger {
        return false;
    }
    // A refused request may have left bytes unread; closing on them would
    // send a reset that can destroy the answer. Say we are done writing and
    // read what comes for a moment.
    let _ = nix::sys::socket::shutdown(c.fd.as_raw_fd(), nix::sys::socket::Shutdown::Write);
    c.phase = Phase::Linger;
    c.deadline = c.deadline.min(Instant::now() + LINGER);
    true
}

/// read(2) once, EINTR retried: Ok(0) at the end; Err(EAGAIN) when nothing
/// is there after all (read again at the next event).
fn read(fd: &OwnedFd, buf: &mut [u8]) -> Result<usize, Errno> {
    unixtool::retry_eintr(|| {
        // SAFETY: reads into a live buffer of the given length from a
        // descriptor the caller owns.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        Errno::result(n).map(|n| n as usize)
    })
}

fn parse(buf: &[u8]) -> Request {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {
            let path = req.path.unwrap_or("/");
            Request::Head {
                head_only: req.method == Some("HEAD"),
                path: path.split('?').next().unwrap_or(path).to_string(),
            }
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Request::Bad(431),
        Ok(httparse::Status::Partial) => Request::Partial,
        Err(httparse::Error::TooManyHeaders) => Request::Bad(431),
        Err(_) => Request::Bad(400),
    }
}

fn response(status: u16, kind: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {kind}\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        status_text(status),
        body.len()
    );
    if !head_only {
        out.push_str(body);
    }
    out.into_bytes()
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    }
}
