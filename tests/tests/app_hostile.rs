//! demo/app against hostile clients (issue 16): idle, dribbling and slow-reading
//! clients through the chain (tcplisten + forkpool + app) do not delay a normal
//! request; whole-request deadlines (request, send, idle); the connection cap;
//! strict Content-Length; `Connection: close` under wrk; a cutover with idle and
//! slow clients attached; the lifecycle lines and datagrams for a supervisor.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::*;
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(60);

/// A release: RELEASE, htdocs/index.html naming it, a 4 MB and a 16 MB file.
fn release(dir: &Path, id: &str) {
    std::fs::create_dir_all(dir.join("htdocs")).unwrap();
    std::fs::write(dir.join("RELEASE"), format!("{id}\n")).unwrap();
    std::fs::write(
        dir.join("htdocs/index.html"),
        format!("<!doctype html><body data-release=\"{id}\">release {id}</body>\n"),
    )
    .unwrap();
    std::fs::write(dir.join("htdocs/big.bin"), vec![b'x'; 4 << 20]).unwrap();
    // Larger than what the kernel buffers for one connection (tcp_wmem's 4 MB).
    std::fs::write(dir.join("htdocs/huge.bin"), vec![b'x'; 16 << 20]).unwrap();
}

/// Let this test process hold a few thousand sockets.
fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let want = 4096.min(hard);
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).unwrap();
    }
}

/// A command run with `ulimit -n 4096` (the soft limit) by sh.
fn with_ulimit(prog: &Path) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("ulimit -n 4096 2>/dev/null || ulimit -n $(ulimit -Hn); exec \"$@\"")
        .arg("sh")
        .arg(prog);
    c
}

/// A normal request on a fresh connection: its status and how long it took.
fn timed_get(port: u16, path: &str) -> (Option<u16>, Duration) {
    let t0 = Instant::now();
    let mut s = connect(port);
    s.set_read_timeout(Some(LONG)).unwrap();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    (read_response(&mut s).map(|r| r.status), t0.elapsed())
}

/// Whether the peer ended the connection (EOF or reset) within the read timeout.
fn ended(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 4096];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// tcplisten + forkpool -n `n` + app (ready by -d 3), with `ulimit -n 4096`.
struct Chain {
    _p: Proc,
    port: u16,
}

fn chain(root: &Path, n: &str, app_args: &[&str]) -> Chain {
    let mut c = with_ulimit(&bin("tcplisten"));
    c.args(["-1", "127.0.0.1", "0"])
        .arg(bin("forkpool"))
        .args(["-n", n, "-d", "3"])
        .arg(bin("app"))
        .arg("--root")
        .arg(root)
        .args(["--ready-fd", "3"])
        .args(app_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut p = Proc::spawn(c);
    let (line, _) = read_line_timeout(p.stdout(), LONG).expect("tcplisten prints the port");
    let port = line.parse().expect("a port");
    assert!(
        wait_until(LONG, || timed_get(port, "/release").0 == Some(200)),
        "the chain never answered"
    );
    Chain { _p: p, port }
}

/// K hostile connections of one kind, held until dropped.
struct Crowd {
    conns: Vec<TcpStream>,
    done: Arc<AtomicBool>,
    dribbler: Option<std::thread::JoinHandle<Vec<TcpStream>>>,
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Connected, never sends a byte.
    Idle,
    /// Sends a request one byte every 200 ms.
    Dribble,
    /// Asks for a 4 MB file and never reads.
    SlowReader,
}

impl Crowd {
    fn attach(port: u16, kind: Kind, k: usize) -> Crowd {
        let mut conns = Vec::with_capacity(k);
        for _ in 0..k {
            let s = socket_with_small_receive_buffer(port);
            if let Kind::SlowReader = kind {
                (&s).write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
                    .unwrap();
            }
            conns.push(s);
        }
        let done = Arc::new(AtomicBool::new(false));
        let mut crowd = Crowd {
            conns: Vec::new(),
            done: done.clone(),
            dribbler: None,
        };
        if let Kind::Dribble = kind {
            crowd.dribbler = Some(std::thread::spawn(move || {
                let req = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ";
                let mut i = 0;
                while !done.load(Ordering::Relaxed) {
                    for s in &conns {
                        let _ = (&*s).write(&req[i % req.len()..][..1]);
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                conns
            }));
        } else {
            crowd.conns = conns;
        }
        crowd
    }
}

impl Drop for Crowd {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(h) = self.dribbler.take() {
            let _ = h.join();
        }
    }
}

/// A connection whose receive buffer is small, so a response waits in the server.
fn socket_with_small_receive_buffer(port: u16) -> TcpStream {
    use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
    let fd = socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    socket::setsockopt(&fd, sockopt::RcvBuf, &4096).unwrap();
    let addr = SockaddrIn::new(127, 0, 0, 1, port);
    socket::connect(fd.as_raw_fd(), &addr).unwrap();
    TcpStream::from(fd)
}

#[test]
fn idle_dribbling_and_slow_clients_do_not_delay_a_normal_request() {
    raise_open_files();
    let t = TempDir::new("app-hostile-crowd");
    release(&t.join("r1"), "r1");
    let chain = chain(&t.join("r1"), "2", &[]);
    for (kind, k) in [
        (Kind::Idle, 64),
        (Kind::Idle, 1000),
        (Kind::Dribble, 64),
        (Kind::Dribble, 1000),
        (Kind::SlowReader, 64),
        (Kind::SlowReader, 1000),
    ] {
        let crowd = Crowd::attach(chain.port, kind, k);
        // Let the workers take the crowd's connections first.
        std::thread::sleep(Duration::from_millis(300));
        let (status, took) = timed_get(chain.port, "/");
        eprintln!(
            "{k} {kind:?} clients attached: a normal request took {:.1} ms",
            took.as_secs_f64() * 1e3
        );
        assert_eq!(status, Some(200), "{k} {kind:?}");
        // The figure goes to bench 55 (milliseconds); this bound only tells
        // a stall (tens of seconds before: each idle client held a worker for
        // the read timeout) from a machine shared with other runs (2.1 s seen).
        assert!(
            took < Duration::from_secs(5),
            "{k} {kind:?}: a normal request took {took:?}"
        );
        drop(crowd);
    }
}

/// The app alone on a listening socket of the test's, ready on stdout.
fn start(
    root: &Path,
    args: &[&str],
    setup: impl FnOnce(&mut Command),
) -> (Proc, u16, std::process::ChildStdout) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut c = cmd("app");
    c.arg("--root")
        .arg(root)
        .args(["--ready-fd", "1"])
        .args(args)
        .stdin(Stdio::from(OwnedFd::from(l)))
        .stdout(Stdio::piped());
    setup(&mut c);
    let mut p = Proc::spawn(c);
    let mut out = p.stdout();
    let mut b = [0u8; 1];
    assert!(
        matches!(out.read(&mut b), Ok(1) if b[0] == b'\n'),
        "not ready"
    );
    (p, port, out)
}

#[test]
fn a_slow_reader_is_cut_at_the_send_deadline() {
    let t = TempDir::new("app-slow-reader");
    release(&t.join("r1"), "r1");
    let (_p, port, _out) = start(&t.join("r1"), &["--send-timeout", "1000"], |_| {});
    let mut s = socket_with_small_receive_buffer(port);
    s.write_all(b"GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // Read 100 bytes every 50 ms: every write of the app makes some progress.
    let t0 = Instant::now();
    let mut got = 0usize;
    let mut b = [0u8; 100];
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let cut = loop {
        match s.read(&mut b) {
            Ok(0) | Err(_) => break true,
            Ok(n) => got += n,
        }
        if t0.elapsed() > LONG {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "slow reader: cut after {:.1} s, having read {got} bytes",
        t0.elapsed().as_secs_f64()
    );
    assert!(cut, "the slow reader held the connection for {LONG:?}");
    assert!(
        got < 16 << 20,
        "the whole response was read: not slow enough"
    );
}

#[test]
fn the_request_and_idle_deadlines_hold_and_a_dribbler_gets_408() {
    let t = TempDir::new("app-deadlines");
    release(&t.join("r1"), "r1");
    let (_p, port, _out) = start(
        &t.join("r1"),
        &["--read-timeout", "1000", "--idle-timeout", "300"],
        |_| {},
    );
    // A dribbler that never stops: 408 at the request deadline, not per byte.
    let mut d = connect(port);
    let done = Arc::new(AtomicBool::new(false));
    let dribble = {
        let (mut d, done) = (d.try_clone().unwrap(), done.clone());
        std::thread::spawn(move || {
            let _ = d.write_all(b"GET / HTTP/1.1\r\n");
            while !done.load(Ordering::Relaxed) {
                if d.write_all(b"X").is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let t0 = Instant::now();
    let r = read_response(&mut d).expect("408");
    done.store(true, Ordering::Relaxed);
    let _ = dribble.join();
    eprintln!(
        "dribbler answered 408 after {:.2} s (deadline 1 s)",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(
        (r.status, r.header("connection").as_deref()),
        (408, Some("close"))
    );
    // A kept connection idle past --idle-timeout is closed.
    let mut k = connect(port);
    k.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut k).unwrap().status, 200);
    assert!(ended(&mut k), "the idle keep-alive connection was closed");
    // A fresh connection that never speaks is closed at the request deadline.
    let mut silent = connect(port);
    assert!(ended(&mut silent), "the silent connection was closed");
}

#[test]
fn past_the_connection_cap_connections_wait_in_the_backlog() {
    let t = TempDir::new("app-cap");
    release(&t.join("r1"), "r1");
    let (_p, port, _out) = start(
        &t.join("r1"),
        &["--max-connections", "2", "--read-timeout", "60000"],
        |_| {},
    );
    let a = connect(port);
    let b = connect(port);
    // Both taken (the app serves them): a request on each is answered.
    for s in [&a, &b] {
        let mut s = s.try_clone().unwrap();
        s.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s).unwrap().status, 200);
    }
    let mut c = connect(port);
    c.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        c.read(&mut byte).is_err(),
        "a third connection was served past a cap of 2"
    );
    drop(a);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    assert!(
        String::from_utf8_lossy(&rest).contains("r1"),
        "served once a place was free: {rest:?}"
    );
}

#[test]
fn content_length_is_digits_only() {
    let t = TempDir::new("app-content-length");
    release(&t.join("r1"), "r1");
    let (_p, port, _out) = start(&t.join("r1"), &[], |_| {});
    for value in ["+5", "-1", "5 5", "0x5", "99999999999999999999999"] {
        let mut s = connect(port);
        // The next pipelined request must not be served out of a misread body.
        write!(
            s,
            "GET /release HTTP/1.1\r\nHost: t\r\nContent-Length: {value}\r\n\r\nhelloGET /release HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        .unwrap();
        let r = read_response(&mut s).expect("a response");
        assert_eq!(
            (r.status, r.header("connection").as_deref()),
            (400, Some("close")),
            "Content-Length: {value}"
        );
        assert!(
            read_response(&mut s).is_none(),
            "{value}: a second response"
        );
    }
    // Whitespace around the value is not part of it (RFC 9110 5.5): 5.
    let mut s = connect(port);
    s.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\nContent-Length:   5  \r\n\r\nhelloGET /release HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    assert_eq!(read_response(&mut s).unwrap().status, 200);
}

#[test]
fn wrk_under_keepalive_sees_no_socket_errors() {
    if !require_peer("wrk") {
        return;
    }
    raise_open_files();
    let t = TempDir::new("app-wrk");
    release(&t.join("r1"), "r1");
    let chain = chain(&t.join("r1"), "2", &[]);
    let mut c = Command::new("wrk");
    c.args(["-t", "2", "-c", "64", "-d", "3s"])
        .arg(format!("http://127.0.0.1:{}/", chain.port));
    let (code, out, err) = run(c, LONG);
    assert_eq!(code, 0, "{out}{err}");
    eprintln!("{out}");
    let requests: u64 = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(requests > 100, "wrk ran: {out}");
    // connect, read and write errors are the server's doing (a connection closed
    // under the client); a timeout (wrk's 2 s) is only a slow answer on a busy machine.
    let errors: Vec<u64> = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Socket errors:"))
        .map(|l| {
            l.split(',')
                .filter(|kv| !kv.contains("timeout"))
                .filter_map(|kv| kv.split_whitespace().last()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(errors.iter().all(|&n| n == 0), "socket errors: {out}");
    assert!(!out.contains("Non-2xx"), "{out}");
}

/// The lines (without their newline) that come on `out` until it ends or `until`.
fn lines_until(out: std::process::ChildStdout, until: Duration) -> Vec<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let end = Instant::now() + until;
    let mut lines = Vec::new();
    while let Ok(l) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        lines.push(l);
    }
    lines
}

fn ask(port: u16) {
    assert_eq!(timed_get(port, "/release").0, Some(200));
}

#[test]
fn the_readiness_pipe_gets_watchdog_recycle_and_stopping_lines() {
    let t = TempDir::new("app-lifecycle-pipe");
    release(&t.join("r1"), "r1");
    let (mut p, port, out) = start(&t.join("r1"), &["--retire-after", "2"], |c| {
        c.env("WATCHDOG_USEC", "200000").env_remove("WATCHDOG_PID");
    });
    for _ in 0..3 {
        ask(port);
    }
    // Pings every 100 ms meanwhile; then the stop.
    std::thread::sleep(Duration::from_millis(600));
    p.signal(Signal::SIGTERM);
    let lines = lines_until(out, LONG);
    assert_eq!(p.wait_timeout(LONG).and_then(|s| s.code()), Some(0));
    let count = |w: &str| lines.iter().filter(|l| *l == w).count();
    assert_eq!(count("recycle"), 1, "{lines:?}");
    assert_eq!(count("stopping"), 1, "{lines:?}");
    assert!(count("") >= 2, "watchdog pings: {lines:?}");
    // after `stopping` only watchdog pings (a draining worker is alive and
    // may still ping: under load one came after it)
    let after = lines.iter().skip_while(|l| *l != "stopping").skip(1);
    assert!(after.clone().all(|l| l.is_empty()), "{lines:?}");
    assert_eq!(
        lines.len(),
        count("recycle") + count("stopping") + count("")
    );

    // WATCHDOG_PID naming another process: no pings; no --retire-after: no recycle.
    let (mut p, port, out) = start(&t.join("r1"), &[], |c| {
        c.env("WATCHDOG_USEC", "100000").env("WATCHDOG_PID", "1");
    });
    ask(port);
    std::thread::sleep(Duration::from_millis(500));
    p.signal(Signal::SIGHUP);
    let lines = lines_until(out, LONG);
    assert_eq!(p.wait_timeout(LONG).and_then(|s| s.code()), Some(0));
    assert_eq!(lines, vec!["stopping".to_string()]);
}

/// A client that never pauses: requests pipelined faster than the app
/// answers them (as a client on the same CPU is, woken by each response),
/// from one thread, its responses read by another, until told, the
/// connection ends, or 20 s (then the writer says it gave up).
struct Flood {
    conn: TcpStream,
    done: Arc<AtomicBool>,
    writer: std::thread::JoinHandle<bool>,
    drainer: std::thread::JoinHandle<()>,
}

impl Flood {
    fn start(port: u16) -> Flood {
        let conn = connect(port);
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let done = done.clone();
            let mut s = conn.try_clone().unwrap();
            std::thread::spawn(move || {
                let chunk = b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n".repeat(2000);
                let end = Instant::now() + Duration::from_secs(20);
                while !done.load(Ordering::Relaxed) {
                    if Instant::now() > end {
                        return true;
                    }
                    if s.write_all(&chunk).is_err() {
                        break;
                    }
                }
                false
            })
        };
        let answered = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let drainer = {
            let answered = answered.clone();
            let mut reader = conn.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut b = vec![0u8; 64 * 1024];
                while let Ok(n @ 1..) = reader.read(&mut b) {
                    answered.fetch_add(n as u64, Ordering::Relaxed);
                }
            })
        };
        assert!(
            wait_until(LONG, || answered.load(Ordering::Relaxed) > 100_000),
            "the app never answered the pipelined requests"
        );
        Flood {
            conn,
            done,
            writer,
            drainer,
        }
    }

    /// Stop it: whether the writer gave up (20 s of requests, never cut).
    fn end(self) -> bool {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.conn.shutdown(std::net::Shutdown::Both);
        let gave_up = self.writer.join().unwrap();
        self.drainer.join().unwrap();
        gave_up
    }
}

/// Issue 30: the app answered a client that never pauses one request after
/// another without a look at its signals: the stop (and its `stopping`, which
/// a cutover's switch waits for) came only when the client paused: 5-16 ms in
/// bench 45, here never while it goes on.
#[test]
fn a_client_that_never_pauses_does_not_hold_up_the_stop() {
    let t = TempDir::new("app-flood-stop");
    release(&t.join("r1"), "r1");
    let (p, port, out) = start(&t.join("r1"), &[], |_| {});
    let flood = Flood::start(port);
    p.signal(Signal::SIGTERM);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let end = Instant::now() + LONG;
    let mut said = false;
    while let Ok(l) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        if l == "stopping" {
            said = true;
            break;
        }
    }
    let gave_up = flood.end();
    assert!(said, "no `stopping` after TERM");
    assert!(
        !gave_up,
        "`stopping` came only when the client paused (20 s of requests)"
    );
}

/// Issue 30: nor does it hold up the worker's other connections: in bench
/// 45 they waited 10-30 ms (steady p99 11.8 ms at a median of 0.08 ms), the
/// requests handed over at a cutover among them; here forever.
#[test]
fn a_client_that_never_pauses_does_not_hold_up_the_other_connections() {
    let t = TempDir::new("app-flood-fair");
    release(&t.join("r1"), "r1");
    let (_p, port, _out) = start(&t.join("r1"), &[], |_| {});
    // The other client, connected first (its connection is watched), asks
    // once the flood runs.
    let mut other = connect(port);
    other.set_read_timeout(Some(LONG)).unwrap();
    let flood = Flood::start(port);
    write!(other, "GET /release HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let answered = read_response(&mut other).map(|r| r.status);
    let gave_up = flood.end();
    assert_eq!(answered, Some(200));
    assert!(
        !gave_up,
        "the other client was answered only when the flood paused (20 s of requests)"
    );
}

#[test]
fn notify_socket_gets_ready_watchdog_recycle_and_stopping_datagrams() {
    use std::os::unix::net::UnixDatagram;
    let t = TempDir::new("app-lifecycle-notify");
    release(&t.join("r1"), "r1");
    let path = t.join("notify");
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(LONG)).unwrap();
    let (mut p, port, _out) = start(&t.join("r1"), &["--retire-after", "1"], |c| {
        c.env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "200000")
            .env_remove("WATCHDOG_PID");
    });
    let recv = || {
        let mut b = [0u8; 64];
        let n = sock.recv(&mut b).expect("a datagram");
        String::from_utf8_lossy(&b[..n]).into_owned()
    };
    assert_eq!(recv(), "READY=1");
    assert_eq!(recv(), "WATCHDOG=1");
    ask(port);
    ask(port);
    p.signal(Signal::SIGTERM);
    let mut got = Vec::new();
    while got.last().map(String::as_str) != Some("STOPPING=1") {
        got.push(recv());
    }
    assert_eq!(p.wait_timeout(LONG).and_then(|s| s.code()), Some(0));
    assert_eq!(
        got.iter().filter(|d| *d == "RECYCLE=1").count(),
        1,
        "{got:?}"
    );
    assert!(
        got.iter()
            .all(|d| ["WATCHDOG=1", "RECYCLE=1", "STOPPING=1"].contains(&d.as_str())),
        "{got:?}"
    );
}

#[test]
fn a_stop_finishes_a_slow_response_within_the_stop_timeout_and_closes_idle_ones() {
    let t = TempDir::new("app-stop-slow");
    release(&t.join("r1"), "r1");
    let (mut p, port, _out) = start(
        &t.join("r1"),
        &["--send-timeout", "60000", "--stop-timeout", "1000"],
        |_| {},
    );
    let mut slow = socket_with_small_receive_buffer(port);
    slow.write_all(b"GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut idle = connect(port);
    idle.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle).unwrap().status, 200);
    let t0 = Instant::now();
    p.signal(Signal::SIGTERM);
    assert!(
        ended(&mut idle),
        "the idle keep-alive connection was closed"
    );
    let st = p.wait_timeout(LONG).expect("exits");
    eprintln!(
        "TERM with a slow reader attached: exit after {:.2} s (stop timeout 1 s, send timeout 60 s)",
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(st.code(), Some(0));
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

/// releases/ID as demo/lib.sh builds it, with bin/app running the app (ready on
/// fd 3) with a long request deadline: a silent client may hold a request open
/// for 30 s, so only the stop rule can make a cutover prompt.
fn build_release(site: &Path, id: &str) {
    let d = site.join("releases").join(id);
    release(&d, id);
    std::fs::create_dir_all(d.join("bin")).unwrap();
    let script = format!(
        "#!/bin/sh\nexec '{}' --root . --ready-fd 3 --read-timeout 30000 --send-timeout 30000\n",
        bin("app").display()
    );
    std::fs::write(d.join("bin/app"), script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("bin/app"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_cutover_with_idle_dribbling_and_slow_clients_attached_switches_promptly_nothing_failed() {
    raise_open_files();
    let dir = TempDir::new("app-hostile-cutover");
    let site = dir.path();
    for g in 1..=5 {
        build_release(site, &format!("r{g}"));
    }
    let switch = |id: &str| {
        let mut c = cmd("atomic-symlink");
        c.arg(format!("releases/{id}")).arg(site.join("current"));
        assert_eq!(run(c, LONG).0, 0);
    };
    switch("r1");
    let st = site.join("status");
    let mut c = with_ulimit(&bin("tcplisten"));
    c.args(["-1", "127.0.0.1", "0"])
        .arg(bin("forkpool"))
        .args([
            "-n", "4", "-m", "cutover", "-d", "3", "-t", "30000", "-k", "30000", "-S",
        ])
        .arg(&st)
        .arg("-p")
        .arg(site.join("current"))
        .arg("./bin/app")
        .current_dir(site)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut p = Proc::spawn(c);
    let (line, _) = read_line_timeout(p.stdout(), LONG).expect("the port");
    let port: u16 = line.parse().expect("a port");
    let serving = |g: u64| {
        wait_until(LONG, || {
            let s = PoolStatus::read(&st);
            s.num("serving_generation") == g
                && s.get("reload") != "running"
                && s.gen_pids(g, "ready").len() == 4
        })
    };
    assert!(serving(1), "generation 1 never served");
    let mut probe = cmd("uptime-probe");
    probe
        .args(["-c", "8", "--json", "-t", "30000"])
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut probe = Proc::spawn(probe);
    let mut switches = Vec::new();
    for g in 2..=5u64 {
        // Attached to the old generation: idle, dribbling and slow clients.
        let _idle = Crowd::attach(port, Kind::Idle, 16);
        let _dribble = Crowd::attach(port, Kind::Dribble, 16);
        let _slow = Crowd::attach(port, Kind::SlowReader, 4);
        std::thread::sleep(Duration::from_millis(300));
        switch(&format!("r{g}"));
        let t0 = Instant::now();
        p.signal(Signal::SIGHUP);
        assert!(serving(g), "generation {g} never served");
        switches.push(t0.elapsed());
    }
    probe.signal(Signal::SIGINT);
    let out = probe.child.stdout.take().unwrap();
    let json = read_all_timeout(out, LONG).unwrap_or_default();
    let _ = probe.wait_timeout(LONG);
    eprintln!(
        "cutovers with 16 idle, 16 dribbling and 4 slow-reading clients attached: {:?}; probe: requests {}, failed {}, retried {}, mixed {}",
        switches.iter().map(|d| format!("{:.2} s", d.as_secs_f64())).collect::<Vec<_>>(),
        json_number(&json, "requests"),
        json_number(&json, "failed"),
        json_number(&json, "retried"),
        json_number(&json, "mixed"),
    );
    assert!(json_number(&json, "requests") > 100.0, "{json}");
    assert_eq!(json_number(&json, "failed"), 0.0, "{json}");
    assert_eq!(json_number(&json, "mixed"), 0.0, "{json}");
    for d in &switches {
        // The app's stop timeout is 1 s; the clients' deadlines are 30 s.
        assert!(*d < Duration::from_secs(15), "a switch took {d:?}");
    }
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn large_files_are_streamed_whole_and_slow_readers_of_them_cost_little_memory() {
    let t = TempDir::new("app-stream");
    release(&t.join("r1"), "r1");
    let (p, port, _out) = start(&t.join("r1"), &[], |_| {});
    // Whole and right: 16 MB, then a HEAD with the same length and no body.
    let mut s = connect(port);
    s.write_all(
        b"GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\nHEAD /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let r = read_response(&mut s).expect("the file");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 16 << 20);
    assert!(r.body.iter().all(|&b| b == b'x'));
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1);
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.contains("Content-Length: 16777216"), "{head}");
    // 64 slow readers of the 16 MB file: a few pieces each in memory, not the file.
    let crowd: Vec<TcpStream> = (0..64)
        .map(|_| {
            let s = socket_with_small_receive_buffer(port);
            (&s).write_all(b"GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(timed_get(port, "/release").0, Some(200));
    let rss = rss_kib(p.pid().as_raw());
    eprintln!("64 slow readers of a 16 MB file: the app's resident memory {rss} KiB");
    assert!(rss > 0 && rss < 64 * 1024, "{rss} KiB");
    drop(crowd);
}

#[test]
fn the_last_response_of_a_connection_says_connection_close() {
    let t = TempDir::new("app-last-response");
    release(&t.join("r1"), "r1");
    let (_p, port, _out) = start(&t.join("r1"), &[], |_| {});
    // The client has finished sending: its answer is the connection's last.
    let mut s = connect(port);
    s.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let r = read_response(&mut s).expect("answered");
    assert_eq!(
        (r.status, r.header("connection").as_deref()),
        (200, Some("close"))
    );
    assert!(ended(&mut s));
    // A 404 keeps the connection; a refused request ends it, and says so.
    let mut s = connect(port);
    s.write_all(b"GET /nothing HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!((r.status, r.header("connection")), (404, None));
    s.write_all(b"POST / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = read_response(&mut s).unwrap();
    assert_eq!(
        (r.status, r.header("connection").as_deref()),
        (405, Some("close"))
    );
    assert!(ended(&mut s));
}
