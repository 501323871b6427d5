//! One client: a thread that sends GET requests one after another (on one
//! keep-alive connection while the server allows, or a fresh connection per
//! request), checks every response and counts it.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::stats::{Outcome, Stats};

/// How long one blocking read waits before looking at the clock and the stop flag.
const SLICE: Duration = Duration::from_millis(100);
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 64 * 1024 * 1024;

pub struct Target {
    pub addr: SocketAddr,
    /// The request, ready to write (with `Connection: close` when not keeping alive).
    pub request: Vec<u8>,
    pub keepalive: bool,
    pub timeout: Duration,
}

/// What the clients share: the stop flag, the request tickets, the releases in
/// order of first appearance.
pub struct Shared {
    pub stop: AtomicBool,
    pub issued: AtomicU64,
    pub limit: Option<u64>,
    pub start: Instant,
    pub releases: Mutex<Vec<(Vec<u8>, Duration)>>,
}

impl Shared {
    /// The order of first appearance of `release` across the run (registers it if new).
    fn release_index(&self, release: &[u8]) -> usize {
        let mut v = match self.releases.lock() {
            Ok(v) => v,
            Err(p) => p.into_inner(),
        };
        if let Some(i) = v.iter().position(|(r, _)| r == release) {
            return i;
        }
        v.push((release.to_vec(), self.start.elapsed()));
        v.len() - 1
    }
}

/// A client's running totals, read by the progress line (padded: one cache line each).
#[repr(align(128))]
#[derive(Default)]
pub struct Live {
    pub requests: AtomicU64,
    pub failed: AtomicU64,
    pub mixed: AtomicU64,
}

enum Attempt {
    /// A whole response came: its status and whether the connection may be reused.
    Answered { status: u16, reusable: bool },
    /// It failed; `any_byte`: some of the response had come.
    Failed { outcome: Outcome, any_byte: bool },
    /// The run was stopped while this request waited: not counted.
    Abandoned,
}

struct Client<'a> {
    target: &'a Target,
    shared: &'a Shared,
    conn: Option<TcpStream>,
    buf: Vec<u8>,
    body: Vec<u8>,
    code_release: Option<Vec<u8>>,
    content_release: Option<Vec<u8>>,
    known: HashMap<Vec<u8>, usize>,
    newest_seen: Option<usize>,
    stats: Stats,
}

pub fn run(target: &Target, shared: &Shared, live: &Live) -> Stats {
    let mut c = Client {
        target,
        shared,
        conn: None,
        buf: Vec::with_capacity(16 * 1024),
        body: Vec::new(),
        code_release: None,
        content_release: None,
        known: HashMap::new(),
        newest_seen: None,
        stats: Stats::new(),
    };
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(limit) = shared.limit {
            if shared.issued.fetch_add(1, Ordering::Relaxed) >= limit {
                break;
            }
        }
        if !c.request() {
            break;
        }
        live.requests.store(c.stats.requests(), Ordering::Relaxed);
        live.failed.store(c.stats.failed(), Ordering::Relaxed);
        live.mixed.store(c.stats.mixed, Ordering::Relaxed);
    }
    c.stats
}

impl Client<'_> {
    /// One request, retried once on a fresh connection when a reused one failed
    /// before any byte of the response; false if abandoned at stop.
    fn request(&mut self) -> bool {
        let t0 = Instant::now();
        let deadline = t0 + self.target.timeout;
        let reused = self.conn.is_some();
        let mut r = self.attempt(deadline);
        if let Attempt::Failed {
            outcome: Outcome::Reset | Outcome::Eof,
            any_byte: false,
        } = r
        {
            if reused {
                self.stats.retried += 1;
                self.conn = None;
                r = self.attempt(deadline);
            }
        }
        let done = Instant::now();
        let at = done.duration_since(self.shared.start);
        match r {
            Attempt::Abandoned => return false,
            Attempt::Failed { outcome, .. } => {
                self.conn = None;
                self.stats.count(outcome, at, done - t0, false);
            }
            Attempt::Answered { status, reusable } => {
                if !reusable {
                    self.conn = None;
                }
                let outcome = if (200..300).contains(&status) {
                    Outcome::Ok
                } else {
                    Outcome::BadStatus
                };
                self.stats.count(outcome, at, done - t0, true);
                self.check_releases();
            }
        }
        true
    }

    /// Mixed (code and content name different releases), versions, flapping.
    fn check_releases(&mut self) {
        let (code, content) = (
            self.code_release.as_deref(),
            self.content_release.as_deref(),
        );
        if code.is_none() {
            self.stats.no_code_release += 1;
        }
        if content.is_none() {
            self.stats.no_content_release += 1;
        }
        if let (Some(a), Some(b)) = (code, content) {
            if a != b {
                self.stats.mixed += 1;
            }
        }
        let Some(release) = code.or(content) else {
            return;
        };
        match self.stats.releases.get_mut(release) {
            Some(n) => *n += 1,
            None => {
                self.stats.releases.insert(release.to_vec(), 1);
            }
        }
        let index = match self.known.get(release) {
            Some(&i) => i,
            None => {
                let i = self.shared.release_index(release);
                self.known.insert(release.to_vec(), i);
                i
            }
        };
        match self.newest_seen {
            Some(newest) if index < newest => self.stats.flapping += 1,
            Some(newest) if index == newest => {}
            _ => self.newest_seen = Some(index),
        }
    }

    fn attempt(&mut self, deadline: Instant) -> Attempt {
        self.code_release = None;
        self.content_release = None;
        if self.conn.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return failed(Outcome::Timeout, false);
            }
            match TcpStream::connect_timeout(&self.target.addr, left) {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let _ = s.set_read_timeout(Some(SLICE));
                    let _ = s.set_write_timeout(Some(self.target.timeout));
                    self.conn = Some(s);
                }
                Err(e) => return failed(classify(&e), false),
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return failed(Outcome::Error, false);
        };
        if let Err(e) = conn.write_all(&self.target.request) {
            return failed(classify(&e), false);
        }
        self.buf.clear();
        // The head.
        let (status, head_len, framing, keep) = loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let (framing, keep, code_release) = read_headers(&resp);
                        self.code_release = code_release;
                        break (resp.code.unwrap_or(0), n, framing, keep);
                    }
                    Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD => {}
                    _ => return failed(Outcome::Error, true),
                }
            }
            match fill(conn, &mut self.buf, deadline, &self.shared.stop) {
                Fill::Data => {}
                Fill::Fail(outcome) => return failed(outcome, !self.buf.is_empty()),
                Fill::Abandon => return Attempt::Abandoned,
            }
        };
        // The body.
        let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
        let mut reusable = keep && self.target.keepalive;
        let body: &[u8] = match framing {
            _ if bodyless => &[],
            Framing::Length(n) => {
                if n > MAX_BODY {
                    return failed(Outcome::Error, true);
                }
                while self.buf.len() < head_len + n {
                    match fill(conn, &mut self.buf, deadline, &self.shared.stop) {
                        Fill::Data => {}
                        Fill::Fail(outcome) => return failed(outcome, true),
                        Fill::Abandon => return Attempt::Abandoned,
                    }
                }
                reusable &= self.buf.len() == head_len + n;
                &self.buf[head_len..head_len + n]
            }
            Framing::Chunked => {
                self.body.clear();
                let mut pos = head_len;
                loop {
                    match httparse::parse_chunk_size(&self.buf[pos..]) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            let size = size as usize;
                            let need = pos + used + size + 2;
                            if size > MAX_BODY || self.body.len() + size > MAX_BODY {
                                return failed(Outcome::Error, true);
                            }
                            if size == 0 {
                                // the last chunk; trailers (if any) end with an empty line
                                let rest = &self.buf[pos + used..];
                                if rest.starts_with(b"\r\n")
                                    || rest.windows(4).any(|w| w == b"\r\n\r\n")
                                {
                                    break;
                                }
                            } else if self.buf.len() >= need {
                                self.body
                                    .extend_from_slice(&self.buf[pos + used..pos + used + size]);
                                pos = need;
                                continue;
                            }
                        }
                        Ok(httparse::Status::Partial) => {}
                        Err(_) => return failed(Outcome::Error, true),
                    }
                    match fill(conn, &mut self.buf, deadline, &self.shared.stop) {
                        Fill::Data => {}
                        Fill::Fail(outcome) => return failed(outcome, true),
                        Fill::Abandon => return Attempt::Abandoned,
                    }
                }
                &self.body
            }
            Framing::UntilClose => {
                reusable = false;
                loop {
                    match fill(conn, &mut self.buf, deadline, &self.shared.stop) {
                        Fill::Data if self.buf.len() <= head_len + MAX_BODY => {}
                        Fill::Data => return failed(Outcome::Error, true),
                        Fill::Fail(Outcome::Eof) => break,
                        Fill::Fail(outcome) => return failed(outcome, true),
                        Fill::Abandon => return Attempt::Abandoned,
                    }
                }
                &self.buf[head_len..]
            }
        };
        self.content_release = content_release(body).map(<[u8]>::to_vec);
        Attempt::Answered { status, reusable }
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !first.is_ascii_whitespace() {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !last.is_ascii_whitespace() {
            break;
        }
        s = rest;
    }
    s
}

fn failed(outcome: Outcome, any_byte: bool) -> Attempt {
    Attempt::Failed { outcome, any_byte }
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// The body's framing, whether the server keeps the connection open, X-Release.
fn read_headers(resp: &httparse::Response) -> (Framing, bool, Option<Vec<u8>>) {
    let mut framing = Framing::UntilClose;
    let mut keep = resp.version == Some(1);
    let mut release = None;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            if let Some(n) = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
            {
                if !matches!(framing, Framing::Chunked) {
                    framing = Framing::Length(n);
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if h.value
                .to_ascii_lowercase()
                .windows(7)
                .any(|w| w == b"chunked")
            {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            for tok in h.value.split(|&b| b == b',') {
                let tok = trim(tok);
                if tok.eq_ignore_ascii_case(b"close") {
                    keep = false;
                } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                    keep = true;
                }
            }
        } else if h.name.eq_ignore_ascii_case("x-release") {
            release = Some(trim(h.value).to_vec());
        }
    }
    (framing, keep, release)
}

/// The content's release: the value of the first `data-release="..."` in the body.
pub fn content_release(body: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"data-release=";
    let mut from = 0;
    while let Some(i) = body[from..].iter().position(|&b| b == b'd') {
        let at = from + i;
        if body[at..].starts_with(KEY) {
            let rest = &body[at + KEY.len()..];
            let quote = *rest.first()?;
            if quote == b'"' || quote == b'\'' {
                let end = rest[1..].iter().position(|&b| b == quote)?;
                return Some(&rest[1..1 + end]);
            }
        }
        from = at + 1;
    }
    None
}

enum Fill {
    Data,
    Fail(Outcome),
    Abandon,
}

/// Read more into `buf`, waiting at most until `deadline`.
fn fill(conn: &mut TcpStream, buf: &mut Vec<u8>, deadline: Instant, stop: &AtomicBool) -> Fill {
    loop {
        let start = buf.len();
        if buf.capacity() - start < 4096 {
            buf.reserve(16 * 1024);
        }
        buf.resize(buf.capacity(), 0);
        let r = conn.read(&mut buf[start..]);
        buf.truncate(start + *r.as_ref().unwrap_or(&0));
        match r {
            Ok(0) => return Fill::Fail(Outcome::Eof),
            Ok(_) => return Fill::Data,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if Instant::now() >= deadline {
                    return Fill::Fail(Outcome::Timeout);
                }
                if stop.load(Ordering::Relaxed) {
                    return Fill::Abandon;
                }
            }
            Err(e) => return Fill::Fail(classify(&e)),
        }
    }
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => Outcome::Refused,
        Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED) => Outcome::Reset,
        Some(libc::ETIMEDOUT | libc::EAGAIN) => Outcome::Timeout,
        _ if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
            Outcome::Timeout
        }
        _ => Outcome::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_content_release() {
        assert_eq!(
            content_release(b"<body data-release=\"r42\">"),
            Some(&b"r42"[..])
        );
        assert_eq!(
            content_release(b"<div data-x data-release='a b'>"),
            Some(&b"a b"[..])
        );
        assert_eq!(content_release(b"no release here, data-release"), None);
    }
}
