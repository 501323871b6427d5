//! One connection: read one request head within the deadline, answer it, close.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Largest request head read; a longer one gets 431.
const MAX_HEAD: usize = 8192;

/// What the request asked, as far as the answer cares.
enum Request {
    /// A whole head: HEAD (no body in the answer) or any other method; the
    /// path without its query.
    Head { head_only: bool, path: String },
    /// Not HTTP, or too long: answered with this status.
    Bad(u16),
    /// Closed, an error, or the deadline passed before a whole head.
    Gone,
}

/// An answer: the status, the Content-Type, the body.
pub type Answer = (u16, &'static str, String);

pub const PLAIN: &str = "text/plain; charset=utf-8";

/// Serve one accepted connection: `answer` gives, for the request's path, the
/// status, the type and the body, asked only once a whole request head is in.
pub fn serve(conn: OwnedFd, timeout: Duration, answer: impl FnOnce(&str) -> Answer) {
    // A reply is tiny (it fits any socket buffer), but a client that never
    // reads must not hold the check longer than the deadline either.
    let _ = nix::sys::socket::setsockopt(
        &conn,
        nix::sys::socket::sockopt::SendTimeout,
        &nix::sys::time::TimeVal::new(timeout.as_secs() as _, timeout.subsec_micros() as _),
    );
    let mut conn = File::from(conn);
    let ((status, kind, body), head_only) = match read_request(&mut conn, timeout) {
        Request::Head { head_only, path } => (answer(&path), head_only),
        Request::Bad(status) => {
            let body = format!("{}\n", status_text(status).to_lowercase());
            ((status, PLAIN, body), false)
        }
        Request::Gone => return,
    };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {kind}\r\n\
         Content-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        status_text(status),
        body.len()
    );
    if !head_only {
        out.push_str(&body);
    }
    // The client may be gone already (EPIPE, ECONNRESET): nothing to do then.
    let _ = conn.write_all(out.as_bytes());
    if !matches!(status, 200 | 503) {
        // A refused request may have left bytes unread; closing on them would
        // send a reset that can destroy the answer in flight. Say we are done
        // writing, and read what comes for a moment (100 ms at most).
        let _ = nix::sys::socket::shutdown(conn.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        let end = Instant::now() + Duration::from_millis(100);
        let mut sink = [0u8; 2048];
        while readable(&conn, end.saturating_duration_since(Instant::now()))
            && matches!(conn.read(&mut sink), Ok(n) if n > 0)
            && Instant::now() < end
        {}
    }
}

/// Read until a whole request head is in, at most `timeout` from now.
fn read_request(conn: &mut File, timeout: Duration) -> Request {
    let end = Instant::now() + timeout;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let path = req.path.unwrap_or("/");
                return Request::Head {
                    head_only: req.method == Some("HEAD"),
                    path: path.split('?').next().unwrap_or(path).to_string(),
                };
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Request::Bad(431),
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => return Request::Bad(431),
            Err(_) => return Request::Bad(400),
        }
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || !readable(conn, left) {
            return Request::Gone;
        }
        match conn.read(&mut chunk) {
            Ok(0) => return Request::Gone,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Request::Gone,
        }
    }
}

/// Whether `conn` has something to read (or is closed) within `left`.
fn readable(conn: &File, left: Duration) -> bool {
    let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
    let mut fds = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    match unixtool::retry_eintr(|| poll(&mut fds, timeout)) {
        Ok(n) => n > 0,
        Err(_) => false,
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    }
}
