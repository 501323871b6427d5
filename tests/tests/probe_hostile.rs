//! uptime-probe keeps its word against hostile servers (issue 16 item 5): a server
//! here sends endless headers, endless 1-byte chunks, an endless chunk extension,
//! endless trailers, a dribble, a 10^15 Content-Length, or nothing at all. Each
//! probe run ends within `-d` + `-t` (plus a generous margin for a loaded machine),
//! its peak RSS (VmHWM) stays under 50 MB, and every request is
//! counted as failed with a clear outcome (`timeout` or `too large`).
//!
//! The probe runs under `ulimit -v` (4 GB) so that a broken probe cannot eat the
//! machine: it dies instead, and the test says so.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::{bin, json_count};

/// What a hostile server sends after it read the request head.
#[derive(Clone, Copy, Debug)]
enum Hostile {
    /// A status line, then header lines forever.
    EndlessHeaders,
    /// A chunked head, then `1\r\nx\r\n` forever.
    EndlessChunks,
    /// A chunked head, then a chunk-size line whose extension never ends.
    EndlessChunkExtension,
    /// A chunked head, the last chunk, then trailer lines forever.
    EndlessTrailers,
    /// A response that never ends, one byte every 5 ms.
    Dribble,
    /// `Content-Length: 1000000000000000`, then body bytes as fast as they go.
    HugeLength,
    /// Reads the request and says nothing, ever.
    Silence,
}

/// A server on 127.0.0.1:0 that treats every connection the same hostile way,
/// until it is dropped (or the client goes away).
struct Server {
    port: u16,
    done: Arc<AtomicBool>,
    /// Connections accepted.
    conns: Arc<AtomicUsize>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        // wake the acceptor so that it sees `done`
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn server(kind: Hostile) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let done = Arc::new(AtomicBool::new(false));
    let conns = Arc::new(AtomicUsize::new(0));
    let (d, n) = (done.clone(), conns.clone());
    std::thread::spawn(move || {
        for s in l.incoming() {
            if d.load(Ordering::SeqCst) {
                return;
            }
            let Ok(s) = s else { continue };
            n.fetch_add(1, Ordering::SeqCst);
            let d = d.clone();
            std::thread::spawn(move || serve(s, kind, &d));
        }
    });
    Server { port, done, conns }
}

fn serve(mut s: TcpStream, kind: Hostile, done: &AtomicBool) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.set_nodelay(true); // a dribble arrives byte by byte
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
    let chunked = "HTTP/1.1 200 OK\r\nX-Release: r1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let (first, repeat): (String, Vec<u8>) = match kind {
        Hostile::EndlessHeaders => (
            "HTTP/1.1 200 OK\r\n".into(),
            b"X-Pad: aaaaaaaaaaaaaaaa\r\n".repeat(200),
        ),
        Hostile::EndlessChunks => (chunked.into(), b"1\r\nx\r\n".repeat(1000)),
        Hostile::EndlessChunkExtension => (format!("{chunked}1;ext="), vec![b'a'; 4096]),
        Hostile::EndlessTrailers => (format!("{chunked}0\r\n"), b"X-Trailer: t\r\n".repeat(300)),
        Hostile::Dribble => (String::new(), Vec::new()),
        Hostile::HugeLength => (
            "HTTP/1.1 200 OK\r\nContent-Length: 1000000000000000\r\n\r\n".into(),
            vec![b'x'; 64 * 1024],
        ),
        Hostile::Silence => (String::new(), Vec::new()),
    };
    if s.write_all(first.as_bytes()).is_err() {
        return;
    }
    let dribble = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n";
    let mut i = 0usize;
    while !done.load(Ordering::SeqCst) {
        let sent = match kind {
            Hostile::Silence => {
                std::thread::sleep(Duration::from_millis(20));
                Ok(())
            }
            Hostile::Dribble => {
                std::thread::sleep(Duration::from_millis(5));
                let byte = dribble.get(i).copied().unwrap_or(b'x');
                i += 1;
                s.write_all(&[byte])
            }
            _ => s.write_all(&repeat),
        };
        if sent.is_err() {
            return;
        }
    }
}

/// One finished probe run: how long it took, its peak RSS, its exit code, its JSON.
struct Ran {
    took: Duration,
    max_rss_kb: u64,
    code: i32,
    json: String,
}

/// The peak RSS (VmHWM, kB) of a live process; None once it has exited.
/// (Not wait4's ru_maxrss: Linux carries that across execve, so it would count
/// the test process that spawned the probe.)
fn vm_hwm_kb(pid: libc::pid_t) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Run the probe (`--json -q ARGS URL`) under `ulimit -v`, its peak RSS read
/// from /proc until it exits (every few ms: the peak only grows); killed (and
/// the test failed) if it runs past `limit`.
fn probe(args: &[&str], port: u16, limit: Duration) -> Ran {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("ulimit -v 4000000 && exec \"$@\"")
        .arg("sh")
        .arg(bin("uptime-probe"))
        .args(["--json", "-q"])
        .args(args)
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let start = Instant::now();
    let mut p = integration_tests::Proc::spawn(c);
    let pid = p.pid().as_raw();
    let mut out = p.stdout();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let mut max_rss_kb = 0;
    let status = loop {
        if let Some(kb) = vm_hwm_kb(pid) {
            max_rss_kb = max_rss_kb.max(kb);
        }
        if let Some(st) = p.wait_timeout(Duration::from_millis(2)) {
            break st;
        }
        assert!(
            start.elapsed() < limit,
            "the probe ({args:?}) still ran after {limit:?}: killed (peak RSS {max_rss_kb} kB)"
        );
    };
    let took = start.elapsed();
    let json = reader.join().unwrap_or_default();
    let code = status.code().unwrap_or(-1);
    Ran {
        took,
        max_rss_kb,
        code,
        json,
    }
}

/// `-c 2 -d 2 -t 1000` against the server: ends within -d + -t + 10 s of margin,
/// stays under 50 MB, every request failed as one of `outcomes`; the JSON back.
fn bounded(kind: Hostile, outcomes: &[&str]) -> String {
    let srv = server(kind);
    let r = probe(
        &["-c", "2", "-d", "2", "-t", "1000"],
        srv.port,
        Duration::from_secs(60),
    );
    eprintln!(
        "{kind:?}: {:.2} s, max RSS {} kB, exit {}: {}",
        r.took.as_secs_f64(),
        r.max_rss_kb,
        r.code,
        r.json.trim_end()
    );
    assert_eq!(
        r.code, 1,
        "{kind:?}: every request failed, so exit 1: {}",
        r.json
    );
    assert!(
        r.took < Duration::from_secs(2 + 1 + 10),
        "{kind:?}: took {:?}",
        r.took
    );
    assert!(
        r.max_rss_kb < 50 * 1024,
        "{kind:?}: peak RSS {} kB",
        r.max_rss_kb
    );
    let requests = json_count(&r.json, "requests");
    assert!(requests >= 1, "{kind:?}: {}", r.json);
    assert_eq!(json_count(&r.json, "ok"), 0, "{}", r.json);
    assert_eq!(json_count(&r.json, "failed"), requests, "{}", r.json);
    let named: u64 = outcomes.iter().map(|o| json_count(&r.json, o)).sum();
    assert_eq!(named, requests, "{kind:?}: all of {outcomes:?}: {}", r.json);
    r.json
}

#[test]
fn endless_headers_are_too_large() {
    bounded(Hostile::EndlessHeaders, &["too_large"]);
}

#[test]
fn endless_one_byte_chunks_are_bounded() {
    // 1-byte chunks as fast as loopback goes: the body cap or the deadline, whichever first.
    bounded(Hostile::EndlessChunks, &["too_large", "timeout"]);
}

#[test]
fn an_endless_chunk_extension_is_too_large() {
    bounded(Hostile::EndlessChunkExtension, &["too_large"]);
}

#[test]
fn endless_trailers_are_too_large() {
    bounded(Hostile::EndlessTrailers, &["too_large"]);
}

#[test]
fn a_dribble_is_a_timeout_of_the_whole_response() {
    bounded(Hostile::Dribble, &["timeout"]);
}

#[test]
fn a_10_to_the_15_content_length_is_too_large() {
    bounded(Hostile::HugeLength, &["too_large"]);
}

#[test]
fn silence_is_a_timeout() {
    bounded(Hostile::Silence, &["timeout"]);
}

#[test]
fn duration_ends_the_run_while_a_dribbling_response_is_in_flight() {
    // -t is a minute, -d one second: the run must end at -d, long before -t.
    let srv = server(Hostile::Dribble);
    let r = probe(
        &["-c", "2", "-d", "1", "-t", "60000"],
        srv.port,
        Duration::from_secs(50),
    );
    eprintln!(
        "-d 1 -t 60000 against a dribble: {:.2} s",
        r.took.as_secs_f64()
    );
    assert!(r.took < Duration::from_secs(1 + 20), "took {:?}", r.took);
    // The request in flight at the end is dropped, not counted: nothing finished.
    assert_eq!(json_count(&r.json, "requests"), 0, "{}", r.json);
    assert_eq!(
        r.code, 1,
        "a run where nothing finished does not pass: {}",
        r.json
    );
}

#[test]
fn int_ends_the_run_while_a_dribbling_response_is_in_flight() {
    for (sig, name) in [(libc::SIGINT, "INT"), (libc::SIGTERM, "TERM")] {
        let srv = server(Hostile::Dribble);
        let mut c = Command::new(bin("uptime-probe"));
        c.args(["--json", "-q", "-c", "2", "-t", "60000"])
            .arg(format!("http://127.0.0.1:{}/", srv.port))
            .stdout(Stdio::piped());
        let mut p = integration_tests::Proc::spawn(c);
        // both clients are connected and reading the dribble
        assert!(integration_tests::wait_until(
            Duration::from_secs(20),
            || { srv.conns.load(Ordering::SeqCst) >= 2 }
        ));
        let t0 = Instant::now();
        p.signal(nix::sys::signal::Signal::try_from(sig).unwrap());
        let st = p
            .wait_timeout(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{name} did not end the run in 20 s (-t is 60 s)"));
        eprintln!(
            "{name} against a dribble: ended {:.3} s after the signal",
            t0.elapsed().as_secs_f64()
        );
        assert_eq!(st.code(), Some(1), "nothing finished: exit 1");
    }
}

#[test]
fn duration_and_int_end_the_run_while_a_connect_hangs() {
    // A listener with backlog 0 that never accepts: once its queue is full
    // (filled here), the kernel drops the probe's SYNs and connect(2) hangs.
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, SockaddrIn,
    };
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrIn::new(127, 0, 0, 1, 0),
    )
    .unwrap();
    listen(&fd, Backlog::new(0).unwrap()).unwrap();
    let l = TcpListener::from(fd);
    let port = l.local_addr().unwrap().port();
    let mut fillers = Vec::new();
    let filled = integration_tests::wait_until(Duration::from_secs(10), || {
        // connect until one would block: the queue is full
        let s = socket(
            AddressFamily::Inet,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK,
            None,
        )
        .unwrap();
        let r = nix::sys::socket::connect(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            &SockaddrIn::new(127, 0, 0, 1, port),
        );
        fillers.push(s);
        r.is_err() && {
            // a pending connect is not in the queue yet: give it time to be dropped
            std::thread::sleep(Duration::from_millis(50));
            true
        }
    });
    assert!(filled);
    let r = probe(
        &["-c", "2", "-d", "1", "-t", "60000"],
        port,
        Duration::from_secs(50),
    );
    eprintln!(
        "-d 1 -t 60000 against a full backlog: {:.2} s",
        r.took.as_secs_f64()
    );
    assert!(r.took < Duration::from_secs(1 + 20), "took {:?}", r.took);
    assert_eq!(json_count(&r.json, "requests"), 0, "{}", r.json);

    let mut c = Command::new(bin("uptime-probe"));
    c.args(["--json", "-q", "-c", "2", "-t", "60000"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdout(Stdio::piped());
    let mut p = integration_tests::Proc::spawn(c);
    // the clients are started and waiting in connect (a thread each)
    assert!(integration_tests::wait_until(
        Duration::from_secs(20),
        || { std::fs::read_dir(format!("/proc/{}/task", p.pid())).map_or(0, |d| d.count()) >= 3 }
    ));
    let out = p.stdout();
    let t0 = Instant::now();
    p.signal(nix::sys::signal::Signal::SIGINT);
    let st = p
        .wait_timeout(Duration::from_secs(20))
        .expect("INT ends the run in 20 s (-t is 60 s)");
    eprintln!(
        "INT against a full backlog: ended {:.3} s after the signal",
        t0.elapsed().as_secs_f64()
    );
    let json = integration_tests::read_all_timeout(out, Duration::from_secs(5)).unwrap();
    assert_eq!(st.code(), Some(1), "{json}");
    assert_eq!(json_count(&json, "requests"), 0, "{json}");
    drop(l);
}
