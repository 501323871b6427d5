//! One client: a thread that sends GET requests one after another (on one
//! keep-alive connection while the server allows, or a fresh connection per
//! request), checks every response and counts it.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags};
use nix::sys::socket::{
    getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage,
};

use crate::stats::{Bin, Outcome, Stats, BIN};

/// The longest one read or poll(2) waits before looking at the clock and the stop flag.
const SLICE: Duration = Duration::from_millis(20);
/// How long a request in flight may still take once the run is stopped.
const GRACE: Duration = Duration::from_millis(80);
/// The caps (past any of them a response is `too large`): the head (the read
/// buffer's size) and its header lines, one chunk-size line, the trailers,
/// and the body (read through, never kept).
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
pub const MAX_CHUNK_LINE: usize = 4096;
pub const MAX_TRAILERS: usize = 64 * 1024;
pub const MAX_BODY: u64 = 64 * 1024 * 1024;
/// The longest release name the content scan waits for.
const MAX_RELEASE: usize = 256;

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
    /// The run's timeline in 100 ms bins, kept only for --svg.
    pub bins: Option<Mutex<Vec<Bin>>>,
    /// Whether the requests finishing now are in the marked part (each
    /// SIGUSR1 flips it; unmarked until the first).
    pub marked: AtomicBool,
    /// The SIGUSR1s so far (written by the main thread).
    pub usr1: Mutex<Usr1>,
}

/// The SIGUSR1s of a run: how many came, and when (since the start) the
/// first [`Usr1::KEPT`] did: a flood of them keeps the results bounded.
#[derive(Clone, Default)]
pub struct Usr1 {
    pub count: u64,
    pub at: Vec<Duration>,
}

impl Usr1 {
    pub const KEPT: usize = 1000;

    /// One more USR1 at `at`; whether the requests finishing from now on
    /// are in a marked part (after an odd number of them).
    pub fn add(&mut self, at: Duration) -> bool {
        self.count += 1;
        if self.at.len() < Self::KEPT {
            self.at.push(at);
        }
        self.count % 2 == 1
    }
}

/// The releases tracked by name, by order of first appearance: a server
/// that names a new release in every response (20,000 of them) must not grow
/// the run without bound. Responses of any later release are counted as
/// `untracked`, and drawn in one column of their own (index `MAX_RELEASES`).
pub const MAX_RELEASES: usize = 64;

impl Shared {
    /// The order of first appearance of `release` across the run (registers
    /// it if new); None past [`MAX_RELEASES`].
    fn release_index(&self, release: &[u8]) -> Option<usize> {
        let mut v = match self.releases.lock() {
            Ok(v) => v,
            Err(p) => p.into_inner(),
        };
        if let Some(i) = v.iter().position(|(r, _)| r == release) {
            return Some(i);
        }
        if v.len() >= MAX_RELEASES {
            return None;
        }
        v.push((release.to_vec(), self.start.elapsed()));
        Some(v.len() - 1)
    }

    /// Add a client's bin `i` to the run's timeline.
    fn add_bin(&self, i: usize, bin: &Bin) {
        let Some(bins) = &self.bins else { return };
        let mut v = match bins.lock() {
            Ok(v) => v,
            Err(p) => p.into_inner(),
        };
        if v.len() <= i {
            v.resize(i + 1, Bin::default());
        }
        v[i].merge(bin);
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
    /// The read buffer: a response's head must fit in it.
    buf: Vec<u8>,
    grace_end: Option<Instant>,
    code_release: Option<Vec<u8>>,
    content_release: Option<Vec<u8>>,
    known: HashMap<Vec<u8>, usize>,
    newest_seen: Option<usize>,
    stats: Stats,
    /// The bin being filled (its index and counts), for --svg.
    bin: Option<(usize, Bin)>,
}

pub fn run(target: &Target, shared: &Shared, live: &Live) -> Stats {
    let mut c = Client {
        target,
        shared,
        conn: None,
        buf: vec![0; MAX_HEAD],
        grace_end: None,
        code_release: None,
        content_release: None,
        known: HashMap::new(),
        newest_seen: None,
        stats: Stats::new(),
        bin: None,
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
    if let Some((i, bin)) = c.bin.take() {
        shared.add_bin(i, &bin);
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
        let mut retried = false;
        let mut r = self.attempt(deadline);
        if let Attempt::Failed {
            outcome: Outcome::Reset | Outcome::Eof,
            any_byte: false,
        } = r
        {
            if reused {
                self.stats.retried += 1;
                retried = true;
                self.conn = None;
                r = self.attempt(deadline);
            }
        }
        let done = Instant::now();
        let at = done.duration_since(self.shared.start);
        let marked = self.shared.marked.load(Ordering::Relaxed);
        match r {
            Attempt::Abandoned => return false,
            Attempt::Failed { outcome, .. } => {
                self.conn = None;
                self.stats.count(outcome, at, done - t0, false, marked);
                if let Some(bin) = self.bin_at(at) {
                    bin.count(outcome, done - t0, false, retried);
                }
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
                self.stats.count(outcome, at, done - t0, true, marked);
                if let Some(bin) = self.bin_at(at) {
                    bin.count(outcome, done - t0, true, retried);
                }
                self.check_releases();
            }
        }
        true
    }

    /// The bin of a request that finished `at` since the start (the one before
    /// is handed to the run's timeline); None without --svg.
    fn bin_at(&mut self, at: Duration) -> Option<&mut Bin> {
        self.shared.bins.as_ref()?;
        let i = (at.as_millis() / BIN.as_millis()) as usize;
        match self.bin.take() {
            Some((j, bin)) if j != i => self.shared.add_bin(j, &bin),
            Some(b) => self.bin = Some(b),
            None => {}
        }
        let (_, bin) = self.bin.get_or_insert_with(|| (i, Bin::default()));
        Some(bin)
    }

    /// Mixed (code and content name different releases), versions, flapping;
    /// the bin of the request's end has them too.
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
        let mixed = matches!((code, content), (Some(a), Some(b)) if a != b);
        self.stats.mixed += u64::from(mixed);
        let Some(release) = code.or(content) else {
            return;
        };
        let index = match self.known.get(release) {
            Some(&i) => Some(i),
            None => {
                let i = self.shared.release_index(release);
                if let Some(i) = i {
                    self.known.insert(release.to_vec(), i);
                }
                i
            }
        };
        let Some(index) = index else {
            // past the tracked releases: counted, drawn as one, no order known
            self.stats.untracked += 1;
            if let Some((_, bin)) = self.bin.as_mut() {
                bin.mixed += u64::from(mixed);
                bin.release(MAX_RELEASES);
            }
            return;
        };
        *self.stats.releases.entry(release.to_vec()).or_insert(0) += 1;
        let flapped = match self.newest_seen {
            Some(newest) if index < newest => true,
            Some(newest) if index == newest => false,
            _ => {
                self.newest_seen = Some(index);
                false
            }
        };
        self.stats.flapping += u64::from(flapped);
        if let Some((_, bin)) = self.bin.as_mut() {
            bin.mixed += u64::from(mixed);
            bin.flapping += u64::from(flapped);
            bin.release(index);
        }
    }

    fn attempt(&mut self, deadline: Instant) -> Attempt {
        self.code_release = None;
        self.content_release = None;
        if self.conn.is_none() {
            let clock = Clock {
                deadline,
                stop: &self.shared.stop,
                grace_end: &mut self.grace_end,
            };
            match connect(&self.target.addr, clock) {
                Ok(s) => {
                    self.stats.connects += 1;
                    let _ = s.set_nodelay(true);
                    let _ = s.set_write_timeout(Some(self.target.timeout));
                    self.conn = Some(s);
                }
                Err(End::Failed(outcome)) => return failed(outcome, false),
                Err(End::Abandoned) => return Attempt::Abandoned,
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return failed(Outcome::Error, false);
        };
        if let Err(e) = conn.write_all(&self.target.request) {
            return failed(classify(&e), false);
        }
        let mut wire = Wire {
            conn,
            buf: &mut self.buf,
            start: 0,
            end: 0,
            seen: false,
            clock: Clock {
                deadline,
                stop: &self.shared.stop,
                grace_end: &mut self.grace_end,
            },
        };
        let mut scan = ReleaseScan::default();
        match response(&mut wire, &mut scan, self.target.keepalive) {
            Ok((status, reusable, code_release)) => {
                self.code_release = code_release;
                self.content_release = scan.release();
                Attempt::Answered { status, reusable }
            }
            Err(End::Failed(outcome)) => failed(outcome, wire.seen),
            Err(End::Abandoned) => Attempt::Abandoned,
        }
    }
}

/// Why reading a response ended early.
enum End {
    Failed(Outcome),
    /// The run was stopped and the grace time passed.
    Abandoned,
}

/// One response, read whole and checked as it streams by (only the window the
/// release scan needs is kept): (status, whether the connection may be reused,
/// X-Release).
fn response(
    w: &mut Wire,
    scan: &mut ReleaseScan,
    keepalive: bool,
) -> Result<(u16, bool, Option<Vec<u8>>), End> {
    // The head: at most MAX_HEAD bytes (the buffer's size), MAX_HEADERS lines.
    let (status, framing, keep, code_release) = loop {
        if w.end > w.start {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(w.data()) {
                Ok(httparse::Status::Complete(n)) => {
                    let (framing, keep, code_release) = read_headers(&resp);
                    let status = resp.code.unwrap_or(0);
                    w.consume(n);
                    break (status, framing, keep, code_release);
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => return Err(End::Failed(Outcome::TooLarge)),
                Err(_) => return Err(End::Failed(Outcome::Error)),
            }
        }
        w.more()?;
    };
    let bodyless = (100..200).contains(&status) || status == 204 || status == 304;
    let mut reusable = keep && keepalive;
    match framing {
        _ if bodyless => {}
        Framing::Length(n) => {
            if n > MAX_BODY {
                return Err(End::Failed(Outcome::TooLarge));
            }
            w.pass(n, scan)?;
        }
        Framing::Chunked => chunked(w, scan)?,
        Framing::UntilClose => {
            reusable = false;
            let mut total = 0u64;
            loop {
                total += w.pass_available(scan);
                if total > MAX_BODY {
                    return Err(End::Failed(Outcome::TooLarge));
                }
                match w.more() {
                    Ok(()) => {}
                    Err(End::Failed(Outcome::Eof)) => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    // Bytes beyond the response on a keep-alive connection: not reusable.
    reusable &= w.end == w.start;
    Ok((status, reusable, code_release))
}

/// A chunked body: size lines of at most MAX_CHUNK_LINE bytes, at most
/// MAX_BODY bytes of data in all, trailers of at most MAX_TRAILERS bytes.
fn chunked(w: &mut Wire, scan: &mut ReleaseScan) -> Result<(), End> {
    let too_large = || End::Failed(Outcome::TooLarge);
    let mut total = 0u64;
    loop {
        let size = loop {
            match httparse::parse_chunk_size(w.data()) {
                Ok(httparse::Status::Complete((used, size))) => {
                    w.consume(used);
                    break size;
                }
                Ok(httparse::Status::Partial) if w.end - w.start >= MAX_CHUNK_LINE => {
                    return Err(too_large())
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(End::Failed(Outcome::Error)),
            }
            w.more()?;
        };
        if size == 0 {
            break;
        }
        total = total.saturating_add(size);
        if total > MAX_BODY {
            return Err(too_large());
        }
        w.pass(size, scan)?;
        while w.end - w.start < 2 {
            w.more()?;
        }
        if !w.data().starts_with(b"\r\n") {
            return Err(End::Failed(Outcome::Error));
        }
        w.consume(2);
    }
    // Trailer lines (read and dropped), then the empty line.
    let mut trailers = 0;
    loop {
        match w.data().windows(2).position(|p| p == b"\r\n") {
            Some(0) => {
                w.consume(2);
                return Ok(());
            }
            Some(i) => {
                w.consume(i + 2);
                trailers += i + 2;
                if trailers > MAX_TRAILERS {
                    return Err(too_large());
                }
            }
            None if trailers + (w.end - w.start) > MAX_TRAILERS => return Err(too_large()),
            None => w.more()?,
        }
    }
}

/// A response being read: the connection, the read buffer (its bytes
/// `start..end` not consumed yet), the request's deadline and the stop flag.
struct Wire<'a> {
    conn: &'a mut TcpStream,
    buf: &'a mut [u8],
    start: usize,
    end: usize,
    /// Some byte of the response has come.
    seen: bool,
    clock: Clock<'a>,
}

/// What ends a wait: the request's deadline, and the run's stop (after GRACE).
struct Clock<'a> {
    deadline: Instant,
    stop: &'a AtomicBool,
    /// When a stopped run drops this client's request (set at the first wait
    /// after the stop).
    grace_end: &'a mut Option<Instant>,
}

impl Clock<'_> {
    /// How long a wait may last now: until the deadline (past it, a
    /// `timeout`), or the grace time after a stop (past it, abandoned).
    fn left(&mut self) -> Result<Duration, End> {
        let now = Instant::now();
        let mut until = self.deadline;
        if self.stop.load(Ordering::Relaxed) {
            let grace_end = *self.grace_end.get_or_insert(now + GRACE);
            if now >= grace_end {
                return Err(End::Abandoned);
            }
            until = until.min(grace_end);
        }
        if now >= self.deadline {
            return Err(End::Failed(Outcome::Timeout));
        }
        Ok(until.saturating_duration_since(now))
    }

    /// Wait until `fd` is ready for `events`, as long as `left` allows, poll(2)
    /// never waiting longer than SLICE.
    fn wait(&mut self, fd: BorrowedFd, events: PollFlags) -> Result<(), End> {
        loop {
            let wait = self.left()?.min(SLICE);
            let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX).max(1);
            let mut fds = [PollFd::new(fd, events)];
            match poll(&mut fds, ms) {
                Ok(0) | Err(Errno::EINTR) => {}
                Ok(_) => return Ok(()),
                Err(e) => return Err(End::Failed(classify_errno(e))),
            }
        }
    }
}

/// A connection to `addr`, connected without blocking so that the clock is
/// looked at while the kernel waits (a full backlog drops SYNs for seconds).
fn connect(addr: &SocketAddr, mut clock: Clock) -> Result<TcpStream, End> {
    let fail = |e: Errno| End::Failed(classify_errno(e));
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket(family, SockType::Stream, flags, None).map_err(fail)?;
    match nix::sys::socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(*addr)) {
        Ok(()) => {}
        Err(Errno::EINPROGRESS | Errno::EINTR) => {
            clock.wait(fd.as_fd(), PollFlags::POLLOUT)?;
            match getsockopt(&fd, sockopt::SocketError).map_err(fail)? {
                0 => {}
                e => return Err(fail(Errno::from_raw(e))),
            }
        }
        Err(e) => return Err(fail(e)),
    }
    let stream = TcpStream::from(fd);
    stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(SLICE)))
        .map_err(|e| End::Failed(classify(&e)))?;
    Ok(stream)
}

impl Wire<'_> {
    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Pass `n` body bytes through the release scan, reading as needed.
    fn pass(&mut self, mut n: u64, scan: &mut ReleaseScan) -> Result<(), End> {
        loop {
            let take = (self.end - self.start).min(usize::try_from(n).unwrap_or(usize::MAX));
            scan.feed(&self.buf[self.start..self.start + take]);
            self.start += take;
            n -= take as u64;
            if n == 0 {
                return Ok(());
            }
            self.more()?;
        }
    }

    /// Pass every byte in the buffer through the release scan; how many.
    fn pass_available(&mut self, scan: &mut ReleaseScan) -> u64 {
        let n = self.end - self.start;
        scan.feed(self.data());
        self.start = self.end;
        n as u64
    }

    /// Read more, as long as the clock allows (see Clock::left): the deadline
    /// and the stop flag are looked at before every read, and no read blocks
    /// longer than SLICE (SO_RCVTIMEO). A buffer full of one unparsed item
    /// (head, chunk line) is `too large`.
    fn more(&mut self) -> Result<(), End> {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
        if self.end == self.buf.len() {
            return Err(End::Failed(Outcome::TooLarge));
        }
        loop {
            // one syscall per read: a blocking read that SO_RCVTIMEO ends
            // after SLICE, the clock looked at before each
            self.clock.left()?;
            match self.conn.read(&mut self.buf[self.end..]) {
                Ok(0) => return Err(End::Failed(Outcome::Eof)),
                Ok(n) => {
                    self.end += n;
                    self.seen = true;
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::WouldBlock | ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(End::Failed(classify(&e))),
            }
        }
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
    Length(u64),
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

/// The content's release, found as the body streams by: the value of the first
/// `data-release="..."` (or `'...'`). Only the bytes from a possible start of
/// that text on are kept between pieces; once decided, nothing is.
#[derive(Default)]
struct ReleaseScan {
    window: Vec<u8>,
    decided: bool,
    release: Option<Vec<u8>>,
}

/// What a piece of body says about the content's release.
#[derive(Debug, PartialEq)]
enum Scan<'a> {
    Found(&'a [u8]),
    /// A quoted value that does not close within MAX_RELEASE bytes: none.
    Unclosed,
    /// It may start at this offset: wait for more.
    Pending(usize),
    NotHere,
}

const KEY: &[u8] = b"data-release=";

fn scan(body: &[u8]) -> Scan<'_> {
    let mut from = 0;
    while let Some(i) = body[from..].iter().position(|&b| b == b'd') {
        let at = from + i;
        let rest = &body[at..];
        let n = rest.len().min(KEY.len());
        if rest[..n] == KEY[..n] {
            let Some(&quote) = rest.get(KEY.len()) else {
                return Scan::Pending(at);
            };
            if quote == b'"' || quote == b'\'' {
                let value = &rest[KEY.len() + 1..];
                return match value.iter().position(|&b| b == quote) {
                    Some(end) => Scan::Found(&value[..end]),
                    None if value.len() > MAX_RELEASE => Scan::Unclosed,
                    None => Scan::Pending(at),
                };
            }
        }
        from = at + 1;
    }
    Scan::NotHere
}

impl ReleaseScan {
    fn feed(&mut self, piece: &[u8]) {
        if self.decided || piece.is_empty() {
            return;
        }
        self.window.extend_from_slice(piece);
        match scan(&self.window) {
            Scan::Found(r) => {
                self.release = Some(r.to_vec());
                self.decided = true;
                self.window = Vec::new();
            }
            Scan::Unclosed => {
                self.decided = true;
                self.window = Vec::new();
            }
            Scan::Pending(at) => {
                self.window.drain(..at);
            }
            Scan::NotHere => self.window.clear(),
        }
    }

    /// The release, at the end of the body.
    fn release(self) -> Option<Vec<u8>> {
        self.release
    }
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.raw_os_error() {
        Some(n) => classify_errno(Errno::from_raw(n)),
        None if e.kind() == ErrorKind::TimedOut || e.kind() == ErrorKind::WouldBlock => {
            Outcome::Timeout
        }
        None => Outcome::Error,
    }
}

fn classify_errno(e: Errno) -> Outcome {
    match e {
        Errno::ECONNREFUSED => Outcome::Refused,
        Errno::ECONNRESET | Errno::EPIPE | Errno::ECONNABORTED => Outcome::Reset,
        Errno::ETIMEDOUT | Errno::EAGAIN => Outcome::Timeout,
        _ => Outcome::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The release scan fed `body` in pieces of `step` bytes.
    fn release_in(body: &[u8], step: usize) -> Option<Vec<u8>> {
        let mut s = ReleaseScan::default();
        for piece in body.chunks(step) {
            s.feed(piece);
            assert!(s.window.len() <= KEY.len() + 2 + MAX_RELEASE + step);
        }
        s.release()
    }

    #[test]
    fn finds_content_release_however_the_body_is_cut() {
        let cases: [(&[u8], Option<&[u8]>); 6] = [
            (b"<body data-release=\"r42\">", Some(b"r42")),
            (b"<div data-x data-release='a b'>", Some(b"a b")),
            (b"no release here, data-release", None),
            (
                b"dd data-release=x data-release=\"r2\" data-release=\"r3\"",
                Some(b"r2"),
            ),
            (b"data-release=\"never closed", None),
            (b"ddddddddddddddddddddddddddddddddddddddd", None),
        ];
        for (body, want) in cases {
            for step in 1..=body.len() {
                assert_eq!(release_in(body, step).as_deref(), want, "{step}");
            }
        }
        let mut long = b"data-release=\"".to_vec();
        long.extend_from_slice(&[b'x'; 100_000]);
        assert_eq!(release_in(&long, 7), None);
        assert_eq!(scan(b"xx data-rel"), Scan::Pending(3));
        assert_eq!(scan(b"xx data-rex"), Scan::NotHere);
    }
}
