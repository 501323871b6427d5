//! HTTP/1.1 on one connection: GET and HEAD of static files under htdocs, and
//! `/release`; keep-alive; every response carries `X-Release`.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::Site;

/// The most input a connection may have buffered: a whole head and a whole body.
pub const MAX_REQUEST: usize = MAX_HEAD + MAX_BODY;
/// The longest request head (request line and headers) read: 431 or 414 beyond.
pub const MAX_HEAD: usize = 16 * 1024;
/// The longest request target: 414 beyond.
const MAX_URI: usize = 4096;
/// The largest request body a GET or HEAD may carry (it is read and dropped).
const MAX_BODY: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;

struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// A file too large to hold in memory for the whole send: sent from the
    /// open file as the client takes it (`body` is then empty).
    file: Option<FileBody>,
    allow: bool,
    close: bool,
}

impl Response {
    fn error(status: u16) -> Response {
        let body = format!("{} {}\n", status, reason(status)).into_bytes();
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
            file: None,
            allow: false,
            close: false,
        }
    }

    fn len(&self) -> u64 {
        self.file
            .as_ref()
            .map_or(self.body.len() as u64, |f| f.left)
    }
}

/// The part of a response still in a file: the open file and how many bytes of it
/// are still to be sent.
pub struct FileBody {
    pub file: std::fs::File,
    pub left: u64,
}

/// Files up to this size are read whole per request; larger ones are streamed.
const IN_MEMORY: u64 = 64 * 1024;

/// What to do with the bytes a connection has sent so far.
pub enum Next {
    /// No whole request yet: read more.
    Wait,
    /// Send `out`; drop `consumed` bytes of input; close after it if `close`.
    Answer {
        out: Vec<u8>,
        file: Option<FileBody>,
        consumed: usize,
        close: bool,
    },
}

/// The next request in `buf` and its response. `must_close`: this response will
/// be the connection's last (the app is stopping, or the client has finished
/// sending), so it says `Connection: close`.
pub fn next(site: &Site, buf: &[u8], must_close: bool) -> Next {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= MAX_HEAD {
                let line_done = buf.contains(&b'\n');
                return refuse(site, buf, if line_done { 431 } else { 414 });
            }
            // A request line longer than MAX_URI is refused before it ends.
            if !buf.contains(&b'\n') && buf.len() > MAX_URI + 64 {
                return refuse(site, buf, 414);
            }
            return Next::Wait;
        }
        Err(httparse::Error::TooManyHeaders) => return refuse(site, buf, 431),
        Err(_) => return refuse(site, buf, 400),
    };
    if req.path.map_or(0, str::len) > MAX_URI {
        return refuse(site, buf, 414);
    }
    if head_len > MAX_HEAD {
        return refuse(site, buf, 431);
    }
    // Wait for a body the request announces (a GET may carry one), unless it is
    // refused anyway (too large, or a bad Content-Length: answer() says which).
    let announced = announced_length(&req);
    if announced <= MAX_BODY && buf.len() < head_len + announced {
        return Next::Wait;
    }
    let minor = req.version.unwrap_or(1);
    let head_only = req.method == Some("HEAD");
    let log = site
        .verbose
        .then(|| format!("{} {}", req.method.unwrap_or(""), req.path.unwrap_or("")));
    let (mut resp, keep_alive, body_len) = answer(site, &req);
    resp.close = resp.close || must_close || !keep_alive;
    let out = render(site, &resp, head_only, minor, log.as_deref());
    let file = if head_only { None } else { resp.file };
    let consumed = if resp.close {
        buf.len()
    } else {
        head_len + body_len
    };
    Next::Answer {
        out,
        file,
        consumed,
        close: resp.close,
    }
}

/// The length of the first request in `buf` (head and announced body) once it
/// is whole; None while it is not, or when it will be refused anyway (every
/// byte is read then: the connection ends with the refusal). A stopping app
/// that hands its connections over reads no further than this.
pub fn first_request_len(buf: &[u8]) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = req.parse(buf) else {
        return None;
    };
    let announced = announced_length(&req);
    (announced <= MAX_BODY && buf.len() >= head_len + announced).then_some(head_len + announced)
}

/// An error response that ends the connection (the rest of the input is dropped).
fn refuse(site: &Site, buf: &[u8], status: u16) -> Next {
    Next::Answer {
        out: error_response(site, status),
        file: None,
        consumed: buf.len(),
        close: true,
    }
}

/// The bytes of an error response that closes the connection (also 408, sent
/// when a request did not arrive whole within its deadline).
pub fn error_response(site: &Site, status: u16) -> Vec<u8> {
    let mut r = Response::error(status);
    r.close = true;
    render(site, &r, false, 1, Some("-"))
}

/// The body a request announces (the largest valid Content-Length; 0 without).
fn announced_length(req: &httparse::Request) -> usize {
    req.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
        .filter_map(|h| content_length(h.value))
        .max()
        .unwrap_or(0)
}

/// A Content-Length value: digits only (RFC 9110 8.6), no sign, no inner space,
/// no overflow. httparse has already dropped the whitespace around the value.
fn content_length(v: &[u8]) -> Option<usize> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0usize, |n, &d| {
        n.checked_mul(10)?.checked_add(usize::from(d - b'0'))
    })
}

/// The response to one parsed request, whether the client wants keep-alive,
/// and the length of the request body to skip.
fn answer(site: &Site, req: &httparse::Request) -> (Response, bool, usize) {
    let minor = req.version.unwrap_or(1);
    let mut conn_close = false;
    let mut conn_keep = false;
    let mut host = false;
    let mut length: Option<usize> = None;
    let mut bad = false;
    let mut chunked = false;
    for h in req.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            for tok in String::from_utf8_lossy(h.value).split(',') {
                let tok = tok.trim();
                conn_close |= tok.eq_ignore_ascii_case("close");
                conn_keep |= tok.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("host") {
            bad |= host; // two Host headers
            host = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            match content_length(h.value) {
                Some(n) if length.is_none() || length == Some(n) => length = Some(n),
                _ => bad = true,
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    let keep_alive = if minor == 0 {
        conn_keep && !conn_close
    } else {
        !conn_close
    };
    let body_len = length.unwrap_or(0);
    let reject = |status: u16| {
        let mut r = Response::error(status);
        r.close = true;
        (r, keep_alive, 0)
    };
    // A body we will not read to its end (chunked) ends the connection after the answer.
    if bad || chunked || (minor == 1 && !host) {
        return reject(400);
    }
    let method = req.method.unwrap_or("");
    if method != "GET" && method != "HEAD" {
        let mut r = Response::error(405);
        r.allow = true;
        r.close = true;
        return (r, keep_alive, 0);
    }
    if body_len > MAX_BODY {
        return reject(413);
    }
    let resp = match resolve(req.path.unwrap_or("")) {
        _ if site.fail_requests => Response::error(500),
        Err(status) => Response::error(status),
        Ok(Target::Release) => Response {
            status: 200,
            content_type: "text/plain; charset=utf-8",
            body: format!("{}\n", site.release).into_bytes(),
            file: None,
            allow: false,
            close: false,
        },
        Ok(Target::File(rel)) => serve_file(site, rel),
    };
    (resp, keep_alive, body_len)
}

enum Target {
    Release,
    /// A path relative to htdocs, normalized, no `..` left.
    File(PathBuf),
}

/// The request target to what it names. `..` may not climb above htdocs (400),
/// in any spelling: the target is percent-decoded first, then split on `/`.
fn resolve(target: &str) -> Result<Target, u16> {
    let mut t = target;
    if let Some(i) = t.find(['?', '#']) {
        t = &t[..i];
    }
    // absolute-form: http://host/path
    let lower = t.get(..8).unwrap_or(t).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let after = &t[t.find("//").map_or(0, |i| i + 2)..];
        t = after.find('/').map_or("/", |i| &after[i..]);
    }
    if !t.starts_with('/') {
        return Err(400);
    }
    let decoded = percent_decode(t.as_bytes()).ok_or(400u16)?;
    if decoded.contains(&0) {
        return Err(400);
    }
    let mut segs: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                if segs.pop().is_none() {
                    return Err(400);
                }
            }
            s => segs.push(s),
        }
    }
    if segs.len() == 1 && segs[0] == b"release" {
        return Ok(Target::Release);
    }
    let mut rel = PathBuf::new();
    for s in segs {
        use std::os::unix::ffi::OsStrExt;
        rel.push(std::ffi::OsStr::from_bytes(s));
    }
    Ok(Target::File(rel))
}

fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            let hi = hex(*s.get(i + 1)?)?;
            let lo = hex(*s.get(i + 2)?)?;
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A file under htdocs, read now. Its canonical path must stay under the
/// canonical htdocs: a symlink pointing out is not followed out.
fn serve_file(site: &Site, rel: PathBuf) -> Response {
    if let Some(r) = serve_plain_file(site, &rel) {
        return r;
    }
    let mut path = site.htdocs.join(&rel);
    let mut canon = match std::fs::canonicalize(&path) {
        Ok(c) => c,
        Err(e) => return Response::error(io_status(&e)),
    };
    if !canon.starts_with(&site.htdocs) {
        return Response::error(404);
    }
    if canon.is_dir() {
        path = canon.join("index.html");
        canon = match std::fs::canonicalize(&path) {
            Ok(c) => c,
            Err(e) => return Response::error(io_status(&e)),
        };
        if !canon.starts_with(&site.htdocs) {
            return Response::error(404);
        }
    }
    if !canon.is_file() {
        return Response::error(404);
    }
    let opened = std::fs::File::open(&canon).and_then(|f| Ok((f.metadata()?.len(), f)));
    opened
        .and_then(|(len, file)| file_response(file, len, &canon))
        .unwrap_or_else(|e| Response::error(io_status(&e)))
}

/// A 200 of `file` (`len` bytes; its type by `path`): read now, or sent
/// from the file when larger than IN_MEMORY.
fn file_response(mut file: std::fs::File, len: u64, path: &Path) -> std::io::Result<Response> {
    let mut r = Response::error(200);
    r.content_type = content_type(path);
    r.body.clear();
    if len > IN_MEMORY {
        r.file = Some(FileBody { file, left: len });
    } else {
        std::io::Read::read_to_end(&mut file, &mut r.body)?;
    }
    Ok(r)
}

/// The short way to a file: named beneath htdocs with no symlink on the way
/// (sys::open_beneath), so its canonical path is htdocs/rel by construction; a
/// directory's index.html the same way. Only a regular file is then opened for
/// reading (the same walk again, and the same inode, or the long way): a FIFO
/// or a device planted in htdocs is never opened. None when this way cannot
/// tell (a symlink, an error, not a regular file): the canonical way then
/// answers, as before. A request cost the app 36 us of CPU, a fifth of it and
/// more realpath(3)'s walk (a readlink(2) a component, twice for a directory).
fn serve_plain_file(site: &Site, rel: &Path) -> Option<Response> {
    use crate::sys::{open_beneath, Beneath};
    use std::os::fd::{AsFd, AsRawFd};
    let stat = |fd: &std::os::fd::OwnedFd| nix::sys::stat::fstat(fd.as_raw_fd()).ok();
    let is = |st: &libc::stat, kind| st.st_mode & libc::S_IFMT == kind;
    let dir = site.htdocs_dir.as_ref()?;
    let mut served = rel.to_path_buf();
    let name = |p: &Path| {
        let b = p.as_os_str().as_encoded_bytes();
        std::ffi::CString::new(if b.is_empty() { &b"."[..] } else { b }).ok()
    };
    let named = open_beneath(dir.as_fd(), &name(&served)?, Beneath::Path).ok()?;
    let mut st = stat(&named)?;
    if is(&st, libc::S_IFDIR) {
        served.push("index.html");
        st = stat(&open_beneath(named.as_fd(), c"index.html", Beneath::Path).ok()?)?;
    }
    if !is(&st, libc::S_IFREG) {
        return None;
    }
    let fd = open_beneath(dir.as_fd(), &name(&served)?, Beneath::Read).ok()?;
    let now = stat(&fd)?;
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino) || !is(&now, libc::S_IFREG) {
        return None;
    }
    file_response(std::fs::File::from(fd), now.st_size as u64, &served).ok()
}

fn io_status(e: &std::io::Error) -> u16 {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => 403,
        _ => 404,
    }
}

fn content_type(p: &std::path::Path) -> &'static str {
    match p
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        Some("css") => "text/css",
        Some("js") => "text/javascript",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("ico") => "image/x-icon",
        _ => "application/octet-stream",
    }
}

/// The bytes of a response: head, and the body unless `head_only` (what is left
/// in `r.file` is the rest of the body).
fn render(site: &Site, r: &Response, head_only: bool, minor: u8, log: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + r.body.len());
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nDate: {}\r\nServer: app\r\nX-Release: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        r.status,
        reason(r.status),
        http_date(SystemTime::now()),
        site.release,
        r.content_type,
        r.len()
    );
    if r.allow {
        out.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    if r.close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(&r.body);
    }
    if let (true, Some(what)) = (site.verbose, log) {
        crate::TOOL.info(format_args!(
            "{} {} {}{}",
            what,
            r.status,
            r.len(),
            if r.close { " close" } else { "" }
        ));
    }
    out
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        431 => "Request Header Fields Too Large",
        _ => "Error",
    }
}

/// RFC 9110 IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil_from_days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {} {:02}:{:02}:{:02} GMT",
        WD[days.rem_euclid(7) as usize],
        d,
        MON[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(content_length(b"5"), Some(5));
        assert_eq!(content_length(b"0005"), Some(5));
        for bad in [&b"+5"[..], b"-1", b"5 5", b" 5", b"", b"0x5", b"5,5"] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(content_length(b"99999999999999999999999"), None);
    }

    #[test]
    fn date() {
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(http_date(t), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn traversal() {
        assert!(matches!(resolve("/../etc/passwd"), Err(400)));
        assert!(matches!(resolve("/%2e%2e/etc/passwd"), Err(400)));
        assert!(matches!(resolve("/a%2f..%2f..%2fetc"), Err(400)));
        assert!(matches!(resolve("/%zz"), Err(400)));
        assert!(matches!(resolve("/release?x=1"), Ok(Target::Release)));
        assert!(
            matches!(resolve("/a/../index.html"), Ok(Target::File(p)) if p == std::path::Path::new("index.html"))
        );
    }
}
