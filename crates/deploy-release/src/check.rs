//! `--check URL`: which release answers there. A plain HTTP/1.1 GET with
//! `Connection: close`; the release is the `X-Release` header, or else the body
//! (one line, as the demo app's `/release` answers).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

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

/// What the URL answered: the HTTP status and the release it names.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub release: String,
}

/// Ask once; None when nothing (or no HTTP) answered within `timeout`.
pub fn ask(url: &Url, timeout: Duration) -> Option<Answer> {
    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    let addr = (host, url.port).to_socket_addrs().ok()?.next()?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: deploy-release\r\n\r\n",
        url.path, url.host
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut buf = Vec::new();
    let _ = s.take(1 << 20).read_to_end(&mut buf);
    parse_answer(&String::from_utf8_lossy(&buf))
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
