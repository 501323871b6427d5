//! One plain HTTP/1.1 GET with `Connection: close`, bounded as a whole and
//! interruptible: deploy-release's `--check URL` (which release answers there:
//! the `X-Release` header, or else the body, one line as the demo app's
//! `/release` answers) and pool-health's `--check URL` (does the site answer).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// A URL this client can ask: `http://HOST[:PORT][/PATH]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Url {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl Url {
    pub fn parse(s: &str) -> Option<Url> {
        let rest = s.strip_prefix("http://")?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h.to_string(), p.parse().ok().filter(|&p| p > 0)?)
            }
            _ => (hostport.to_string(), 80),
        };
        if host.is_empty() || path.contains(char::is_whitespace) {
            return None;
        }
        Some(Url {
            host,
            port,
            path: path.to_string(),
        })
    }
}

impl std::fmt::Display for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "http://{}:{}{}", self.host, self.port, self.path)
    }
}

/// What the URL answered: the HTTP status and the release it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub release: String,
}

/// The most of an answer read: the head and the start of the body (a release
/// id is one line); a longer answer is judged by what came.
const MAX_ANSWER: usize = 64 * 1024;

/// How often a try looks at `stop` while it waits on the network.
const SLICE: Duration = Duration::from_millis(100);

/// Ask once; None when no whole HTTP answer came before `until` (the head
/// and the body to its Content-Length or the server's close; 64 KiB at
/// most), or `stop()` said stop (it is asked at least every 100 ms). The
/// whole try, connect, request and answer, ends by `until`, however the
/// server sends: a byte a second never resets a deadline.
pub fn ask(url: &Url, until: Instant, stop: &mut dyn FnMut() -> bool) -> Option<Answer> {
    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    let addr = (host, url.port).to_socket_addrs().ok()?.next()?;
    let mut s = connect(addr, until, stop)?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: deploy-release\r\n\r\n",
        url.path, url.host
    );
    let mut sent = 0;
    while sent < req.len() {
        wait(&s, PollFlags::POLLOUT, until, stop)?;
        match s.write(&req.as_bytes()[sent..]) {
            Ok(n) => sent += n,
            Err(e) if retry(&e) => {}
            Err(_) => return None,
        }
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < MAX_ANSWER && !whole(&buf) {
        wait(&s, PollFlags::POLLIN, until, stop)?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n.min(MAX_ANSWER - buf.len())]),
            Err(e) if retry(&e) => {}
            Err(_) => break,
        }
    }
    parse_answer(&String::from_utf8_lossy(&buf))
}

fn retry(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

/// A head and as much body as its Content-Length says (without one: until
/// the server closes, `Connection: close`).
fn whole(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(at)) = resp.parse(buf) else {
        return false;
    };
    let len = resp.headers.iter().find_map(|h| {
        h.name
            .eq_ignore_ascii_case("content-length")
            .then(|| {
                std::str::from_utf8(h.value)
                    .ok()?
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .flatten()
    });
    len.is_some_and(|n| buf.len() - at >= n)
}

/// A non-blocking connect, waited for in slices.
fn connect(addr: SocketAddr, until: Instant, stop: &mut dyn FnMut() -> bool) -> Option<TcpStream> {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket::socket(family, SockType::Stream, flags, None).ok()?;
    let to = SockaddrStorage::from(addr);
    match crate::retry_eintr(|| socket::connect(fd.as_raw_fd(), &to)) {
        Ok(()) | Err(Errno::EINPROGRESS) => {}
        Err(_) => return None,
    }
    let s = TcpStream::from(fd);
    wait(&s, PollFlags::POLLOUT, until, stop)?;
    match socket::getsockopt(&s, sockopt::SocketError) {
        Ok(0) => Some(s),
        _ => None,
    }
}

/// Wait until `s` is ready for `what`, in slices of 100 ms, asking `stop`
/// between them; None at `until` or when told to stop.
fn wait(
    s: &TcpStream,
    what: PollFlags,
    until: Instant,
    stop: &mut dyn FnMut() -> bool,
) -> Option<()> {
    loop {
        if stop() {
            return None;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let ms = left.min(SLICE).as_millis().max(1) as u16;
        let mut fds = [PollFd::new(s.as_fd(), what)];
        match crate::retry_eintr(|| poll(&mut fds, PollTimeout::from(ms))) {
            Ok(n) if n > 0 => return Some(()),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
}

/// The status and the release of a whole response.
pub fn parse_answer(text: &str) -> Option<Answer> {
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let header = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("x-release")
            .then(|| v.trim().to_string())
    });
    let release = header.unwrap_or_else(|| body.trim().to_string());
    Some(Answer { status, release })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:8080/release").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("127.0.0.1", 8080, "/release")
        );
        let u = Url::parse("http://example.org").unwrap();
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        assert!(Url::parse("https://x/").is_none());
        assert!(Url::parse("http://:80/").is_none());
        assert!(Url::parse("http://x:0/").is_none());
        assert!(Url::parse("http://x:junk/").is_none());
    }

    #[test]
    fn answers() {
        let a = parse_answer("HTTP/1.1 200 OK\r\nX-Release: r2\r\n\r\nr1\n").unwrap();
        assert_eq!(
            a,
            Answer {
                status: 200,
                release: "r2".into()
            }
        );
        let a = parse_answer("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nr1\n").unwrap();
        assert_eq!(a.release, "r1");
        assert!(parse_answer("garbage").is_none());
    }
}
