//! demo/app: the release it serves, HTTP/1.1 as a client sees it, path
//! traversal, timeouts, graceful stops, readiness and the hold descriptor.
//! The listening socket is made here and handed to the app as its stdin.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use integration_tests::{cmd, connect, read_head, read_response, run, Proc, Resp, TempDir};
use nix::sys::signal::Signal;

/// A release directory: RELEASE, htdocs/index.html naming the release, a text
/// file, a subdirectory, and a symlink pointing out of htdocs.
fn release(dir: &Path, id: &str) {
    std::fs::create_dir_all(dir.join("htdocs/sub")).unwrap();
    std::fs::write(dir.join("RELEASE"), format!("{id}\n")).unwrap();
    std::fs::write(
        dir.join("htdocs/index.html"),
        format!("<!doctype html><body data-release=\"{id}\">release {id}</body>\n"),
    )
    .unwrap();
    std::fs::write(dir.join("htdocs/hello.txt"), "hello\n").unwrap();
    std::fs::write(dir.join("htdocs/sub/index.html"), "sub\n").unwrap();
    std::fs::write(dir.join("secret"), "SECRET\n").unwrap();
    std::os::unix::fs::symlink(dir.join("secret"), dir.join("htdocs/out")).unwrap();
    std::os::unix::fs::symlink("hello.txt", dir.join("htdocs/in")).unwrap();
}

struct App {
    p: Proc,
    port: u16,
    /// The test's own handle on the listening socket (to see what the app left queued).
    listener: TcpListener,
}

fn listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// Start the app on a fresh listening socket; it writes its readiness newline on stdout.
fn start_with(root: &Path, args: &[&str], setup: impl FnOnce(&mut Command)) -> App {
    let (l, port) = listener();
    let keep = l.try_clone().unwrap();
    let mut c = cmd("app");
    c.arg("--root")
        .arg(root)
        .args(["--ready-fd", "1"])
        .args(args);
    c.stdin(Stdio::from(OwnedFd::from(l)))
        .stdout(Stdio::piped());
    setup(&mut c);
    let mut p = Proc::spawn(c);
    let out = p.stdout();
    assert!(
        ready(out, Duration::from_secs(10)),
        "the app did not become ready"
    );
    App {
        p,
        port,
        listener: keep,
    }
}

fn start(root: &Path, args: &[&str]) -> App {
    start_with(root, args, |_| {})
}

/// Whether the first byte on `r` is the readiness newline, within `timeout`.
fn ready(mut r: impl Read + Send + 'static, timeout: Duration) -> bool {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = tx.send(
            r.read(&mut b)
                .map(|n| n == 1 && b[0] == b'\n')
                .unwrap_or(false),
        );
    });
    rx.recv_timeout(timeout).unwrap_or(false)
}

fn get(port: u16, path: &str) -> Resp {
    let mut s = connect(port);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_response(&mut s).expect("a response")
}

/// Send raw bytes on a fresh connection; the response, if any.
fn raw(port: u16, req: &[u8]) -> Option<Resp> {
    let mut s = connect(port);
    let _ = s.write_all(req);
    read_response(&mut s)
}

/// Whether the peer closed: EOF (or reset) within the socket's read timeout.
fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(s.read(&mut b), Ok(0))
        || matches!(s.read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

#[test]
fn serves_its_release_code_and_content() {
    let t = TempDir::new("app-serve");
    release(&t.join("r1"), "r1");
    let app = start(&t.join("r1"), &[]);

    let r = get(app.port, "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-release").as_deref(), Some("r1"));
    assert!(r.body().contains("data-release=\"r1\""), "{}", r.body());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
    assert!(r.header("date").is_some());

    let r = get(app.port, "/release");
    assert_eq!((r.status, r.body().as_str()), (200, "r1\n"));
    assert_eq!(r.header("x-release").as_deref(), Some("r1"));

    let r = get(app.port, "/hello.txt?x=1");
    assert_eq!((r.status, r.body().as_str()), (200, "hello\n"));
    let r = get(app.port, "/sub/");
    assert_eq!((r.status, r.body().as_str()), (200, "sub\n"));
    let r = get(app.port, "/in");
    assert_eq!(
        (r.status, r.body().as_str()),
        (200, "hello\n"),
        "a symlink inside htdocs is served"
    );

    let r = get(app.port, "/nothing-here");
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("x-release").as_deref(),
        Some("r1"),
        "errors carry X-Release too"
    );

    // HEAD: the headers of GET, no body.
    let mut s = connect(app.port);
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\nGET /release HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let h = read_head(&mut s).unwrap();
    assert_eq!(h.status, 200);
    // The next bytes on the connection are the second response, not a body.
    let next = read_response(&mut s).unwrap();
    assert_eq!(next.body(), "r1\n");
    drop(s);
    let full = get(app.port, "/");
    assert_eq!(h.header("content-length"), full.header("content-length"));
}

#[test]
fn the_release_is_pinned_at_start() {
    let t = TempDir::new("app-pinned");
    release(&t.join("releases/r1"), "r1");
    release(&t.join("releases/r2"), "r2");
    std::os::unix::fs::symlink("releases/r1", t.join("current")).unwrap();
    let app = start(&t.join("current"), &[]);
    assert_eq!(get(app.port, "/release").body(), "r1\n");

    // Switch `current` (rename over it, as atomic-symlink does): the running app
    // still serves r1, code and content, from the directory it resolved at start.
    std::os::unix::fs::symlink("releases/r2", t.join("current.new")).unwrap();
    std::fs::rename(t.join("current.new"), t.join("current")).unwrap();
    let r = get(app.port, "/");
    assert_eq!(r.header("x-release").as_deref(), Some("r1"));
    assert!(r.body().contains("data-release=\"r1\""));
    assert_eq!(get(app.port, "/release").body(), "r1\n");

    // and its working directory is the resolved release (what a deploy's prune looks at)
    let cwd = std::fs::read_link(format!("/proc/{}/cwd", app.p.pid())).unwrap();
    assert_eq!(cwd, std::fs::canonicalize(t.join("releases/r1")).unwrap());
}

#[test]
fn no_path_escapes_htdocs() {
    let t = TempDir::new("app-traversal");
    release(&t.join("r1"), "r1");
    let app = start(&t.join("r1"), &[]);
    for path in [
        "/../secret",
        "/%2e%2e/secret",
        "/%2E%2E/secret",
        "/..%2fsecret",
        "/%2e%2e%2fsecret",
        "/sub/../../secret",
        "/sub/%2e%2e/%2e%2e/secret",
        "/out",
        "//etc/passwd",
        "/%00",
        "/%zz",
        "secret",
    ] {
        let r = raw(
            app.port,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        )
        .expect("a response");
        assert!(matches!(r.status, 400 | 404), "{path}: {}", r.status);
        assert!(!r.body().contains("SECRET"), "{path} escaped htdocs");
    }
    // ...and the worker keeps serving.
    assert_eq!(get(app.port, "/release").body(), "r1\n");
}

#[test]
fn files_reached_with_and_without_symlinks_are_served_alike() {
    // A path without symlinks is opened beneath htdocs in one call, any other
    // is resolved to its canonical path: both answer the same, and neither
    // waits on a FIFO (opened for reading, it would block until a writer came).
    let t = TempDir::new("app-paths");
    let r1 = t.join("r1");
    release(&r1, "r1");
    std::fs::create_dir_all(r1.join("htdocs/empty")).unwrap();
    std::os::unix::fs::symlink("sub", r1.join("htdocs/alias")).unwrap();
    std::os::unix::fs::symlink("..", r1.join("htdocs/up")).unwrap();
    std::os::unix::fs::symlink(r1.join("htdocs/hello.txt"), r1.join("htdocs/abs")).unwrap();
    nix::unistd::mkfifo(
        &r1.join("htdocs/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    // A writer waits in open(2) until a reader opens the FIFO: serving must
    // not be that reader (before, a request let it through).
    let mut w = Command::new("sh");
    w.arg("-c")
        .arg(format!("echo x > {}", r1.join("htdocs/fifo").display()));
    let mut writer = Proc::spawn(w);
    let app = start(&r1, &[]);
    for (path, status, body, ctype) in [
        ("/hello.txt", 200, "hello\n", "text/plain; charset=utf-8"),
        ("/in", 200, "hello\n", "text/plain; charset=utf-8"),
        ("/abs", 200, "hello\n", "text/plain; charset=utf-8"),
        ("/sub/", 200, "sub\n", "text/html; charset=utf-8"),
        ("/sub/index.html", 200, "sub\n", "text/html; charset=utf-8"),
        ("/alias/", 200, "sub\n", "text/html; charset=utf-8"),
        (
            "/alias/index.html",
            200,
            "sub\n",
            "text/html; charset=utf-8",
        ),
        ("/empty/", 404, "", ""),
        ("/up/secret", 404, "", ""),
        ("/fifo", 404, "", ""),
    ] {
        let r = get(app.port, path);
        assert_eq!(r.status, status, "{path}");
        if status == 200 {
            assert_eq!(r.body(), body, "{path}");
            assert_eq!(r.header("content-type").as_deref(), Some(ctype), "{path}");
        } else {
            assert!(!r.body().contains("SECRET"), "{path} escaped htdocs");
        }
    }
    assert_eq!(get(app.port, "/release").body(), "r1\n");
    assert!(
        writer.wait_timeout(Duration::from_millis(500)).is_none(),
        "GET /fifo opened the FIFO: its writer got through"
    );
}

#[test]
fn malformed_and_refused_requests_get_their_status() {
    let t = TempDir::new("app-malformed");
    release(&t.join("r1"), "r1");
    let app = start(&t.join("r1"), &[]);
    let status = |req: &[u8]| raw(app.port, req).map(|r| r.status);

    assert_eq!(status(b"BLAH\r\n\r\n"), Some(400));
    assert_eq!(status(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"), Some(400));
    assert_eq!(
        status(b"GET / HTTP/1.1\r\n\r\n"),
        Some(400),
        "HTTP/1.1 without Host"
    );
    assert_eq!(
        status(b"GET / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        Some(400)
    );
    let r = raw(
        app.port,
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
    )
    .unwrap();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD"));
    assert_eq!(
        status(b"DELETE /release HTTP/1.1\r\nHost: t\r\n\r\n"),
        Some(405)
    );
    let long = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(5000));
    assert_eq!(status(long.as_bytes()), Some(414));
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(20_000)
    );
    assert_eq!(status(huge.as_bytes()), Some(431));
    let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
    assert_eq!(
        status(format!("GET / HTTP/1.1\r\nHost: t\r\n{many}\r\n").as_bytes()),
        Some(431)
    );
    // A GET with a body: the body is read and dropped, the connection stays usable.
    let mut s = connect(app.port);
    s.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhelloGET /release HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).unwrap().body(), "r1\n");
    assert_eq!(read_response(&mut s).unwrap().body(), "r1\n");
    drop(s);
    assert_eq!(
        get(app.port, "/release").status,
        200,
        "the worker still serves"
    );
}

#[test]
fn keep_alive_as_http_says() {
    let t = TempDir::new("app-keepalive");
    release(&t.join("r1"), "r1");
    let app = start(&t.join("r1"), &[]);

    // HTTP/1.1: kept alive by default, closed on Connection: close.
    let mut s = connect(app.port);
    for _ in 0..3 {
        s.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s).unwrap();
        assert_eq!((r.status, r.header("connection")), (200, None));
    }
    s.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut s)
            .unwrap()
            .header("connection")
            .as_deref(),
        Some("close")
    );
    assert!(closed(&mut s));

    // HTTP/1.0: closed unless the client asks for keep-alive.
    let mut s = connect(app.port);
    s.write_all(b"GET /release HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(
        read_response(&mut s)
            .unwrap()
            .header("connection")
            .as_deref(),
        Some("close")
    );
    assert!(closed(&mut s));
    let mut s = connect(app.port);
    for _ in 0..2 {
        s.write_all(b"GET /release HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s).unwrap();
        assert_eq!(r.header("connection").as_deref(), Some("keep-alive"));
    }
}

#[test]
fn keepalive_connections_are_served_side_by_side() {
    let t = TempDir::new("app-side-by-side");
    release(&t.join("r1"), "r1");
    let app = start(
        &t.join("r1"),
        &["--read-timeout", "60000", "--idle-timeout", "60000"],
    );
    let mut a = connect(app.port);
    let mut b = connect(app.port);
    // One process holds A and B open at once: each is answered in turn, and
    // neither is closed to make room for the other.
    for _ in 0..3 {
        for s in [&mut a, &mut b] {
            s.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let r = read_response(s).expect("answered while the other is open");
            assert_eq!((r.body().as_str(), r.header("connection")), ("r1\n", None));
        }
    }
}

#[test]
fn a_silent_client_cannot_hold_the_worker() {
    let t = TempDir::new("app-silent");
    release(&t.join("r1"), "r1");
    let app = start(&t.join("r1"), &["--read-timeout", "300"]);
    let mut silent = connect(app.port);
    let mut partial = connect(app.port);
    partial.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
    // Served beside them, at once.
    let r = get(app.port, "/release");
    assert_eq!(r.body(), "r1\n");
    assert!(closed(&mut silent), "the silent connection was closed");
    let r = read_response(&mut partial).expect("408 for a request that never ends");
    assert_eq!(r.status, 408);
}

/// Half a request is in hand (sent on a kept connection) when HUP comes; the
/// rest follows. `one_wake_up`: the app is stopped meanwhile (as on a loaded
/// machine), so that the HUP and the first bytes reach it in one wake-up:
/// the bytes in the kernel's buffer are a request in hand, not an idle
/// connection to close (it was closed unanswered once the app took its stop
/// signal first).
fn hup_with_half_a_request_in_hand(name: &str, one_wake_up: bool) {
    let t = TempDir::new(name);
    release(&t.join("r1"), "r1");
    let mut app = start(&t.join("r1"), &["--read-timeout", "60000"]);
    let mut s = connect(app.port);
    s.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut s).unwrap().status, 200);
    if one_wake_up {
        app.p.signal(Signal::SIGSTOP);
    }
    s.write_all(b"GET /release HTTP/1.1\r\n").unwrap();
    app.p.signal(Signal::SIGHUP);
    if one_wake_up {
        app.p.signal(Signal::SIGCONT);
    }
    s.write_all(b"Host: t\r\n\r\n").unwrap();
    let r = read_response(&mut s).expect("the request in hand is answered");
    assert_eq!(
        (r.status, r.header("connection").as_deref()),
        (200, Some("close"))
    );
    if !one_wake_up {
        assert!(closed(&mut s));
    }
    let st = app
        .p
        .wait_timeout(Duration::from_secs(5))
        .expect("the app exits after the request in hand");
    assert_eq!(st.code(), Some(0));
}

#[test]
fn hup_arriving_with_the_first_bytes_of_a_request_finishes_it() {
    hup_with_half_a_request_in_hand("app-hup-bytes", true);
}

#[test]
fn hup_finishes_the_request_in_hand_then_exits() {
    hup_with_half_a_request_in_hand("app-hup", false);
}

#[test]
fn hup_and_term_close_idle_keepalive_connections_promptly() {
    for sig in [Signal::SIGHUP, Signal::SIGTERM] {
        let t = TempDir::new("app-idle");
        release(&t.join("r1"), "r1");
        let mut app = start(&t.join("r1"), &["--read-timeout", "60000"]);
        let mut s = connect(app.port);
        s.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(&mut s).unwrap().status, 200);
        app.p.signal(sig);
        // Well before the 60 s read timeout.
        let st = app
            .p
            .wait_timeout(Duration::from_secs(5))
            .expect("exits with an idle connection open");
        assert_eq!(st.code(), Some(0), "{sig:?}");
        assert!(closed(&mut s));
    }
}

#[test]
fn a_stopped_app_never_accepts_again() {
    for sig in [Signal::SIGHUP, Signal::SIGTERM] {
        let t = TempDir::new("app-stop");
        release(&t.join("r1"), "r1");
        let mut app = start(&t.join("r1"), &[]);
        assert_eq!(get(app.port, "/release").status, 200);
        app.p.signal(sig);
        let st = app
            .p
            .wait_timeout(Duration::from_secs(5))
            .expect("exits from accept");
        assert_eq!(st.code(), Some(0));
        // A connection made now waits in the backlog for the next worker, untouched.
        let _c = connect(app.port);
        app.listener.set_nonblocking(false).unwrap();
        assert!(app.listener.accept().is_ok());
    }
    // QUIT: at once, even in the middle of a connection.
    let t = TempDir::new("app-quit");
    release(&t.join("r1"), "r1");
    let mut app = start(&t.join("r1"), &["--read-timeout", "60000"]);
    let _s = connect(app.port);
    app.p.signal(Signal::SIGQUIT);
    let st = app
        .p
        .wait_timeout(Duration::from_secs(5))
        .expect("QUIT: exits at once");
    assert_eq!(
        st.code(),
        Some(0),
        "QUIT is handled (exit 0), not the default core dump"
    );
}

#[test]
fn a_nonblocking_listener_is_served_too() {
    let t = TempDir::new("app-nonblock");
    release(&t.join("r1"), "r1");
    let (l, port) = listener();
    l.set_nonblocking(true).unwrap(); // what gunicorn or uvicorn do to a shared socket
    let mut c = cmd("app");
    c.arg("--root").arg(t.join("r1")).args(["--ready-fd", "1"]);
    c.stdin(Stdio::from(OwnedFd::from(l)))
        .stdout(Stdio::piped());
    let mut p = Proc::spawn(c);
    assert!(ready(p.stdout(), Duration::from_secs(10)));
    for _ in 0..20 {
        assert_eq!(get(port, "/release").body(), "r1\n");
    }
    p.signal(Signal::SIGTERM);
    assert_eq!(
        p.wait_timeout(Duration::from_secs(5))
            .and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn readiness_slow_start_and_failing_start() {
    let t = TempDir::new("app-start");
    release(&t.join("r1"), "r1");

    let t0 = Instant::now();
    let app = start(&t.join("r1"), &["--slow-start", "400"]);
    assert!(
        t0.elapsed() >= Duration::from_millis(400),
        "ready before the slow start ended"
    );
    assert_eq!(get(app.port, "/release").status, 200);

    let mut c = cmd("app");
    c.arg("--root").arg(t.join("r1")).arg("--fail-start");
    let (code, _, err) = run(c, Duration::from_secs(10));
    assert_eq!(code, 1);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("app: fatal: "), "{err}");

    // Start failures, each one line and a documented code.
    let (l, _) = listener();
    let mut c = cmd("app");
    c.arg("--root").arg(t.join("missing"));
    c.stdin(Stdio::from(OwnedFd::from(l)));
    let (code, _, err) = run_with_stdin(c);
    assert_eq!(code, 111, "{err}");
    assert!(err.starts_with("app: fatal: unable to resolve"), "{err}");
    let mut c = cmd("app");
    c.arg("--root").arg(t.join("r1"));
    let (code, _, err) = run(c, Duration::from_secs(10)); // stdin is /dev/null
    assert_eq!(code, 100, "{err}");
    assert!(err.contains("unable to accept on descriptor 0"), "{err}");
    let mut c = cmd("app");
    c.args(["--read-timeout", "0"]);
    assert_eq!(run(c, Duration::from_secs(10)).0, 100);
    let mut c = cmd("app");
    c.args(["--ready-fd", "x"]);
    assert_eq!(run(c, Duration::from_secs(10)).0, 100);
}

/// `run` with the command's own stdin (run() sets /dev/null).
fn run_with_stdin(mut c: Command) -> (i32, String, String) {
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut p = Proc::spawn(c);
    let err = p.child.stderr.take().unwrap();
    let st = p.wait_timeout(Duration::from_secs(10)).expect("exits");
    let e = integration_tests::read_all_timeout(err, Duration::from_secs(5)).unwrap_or_default();
    (st.code().unwrap_or(-1), String::new(), e)
}

#[test]
fn notify_socket_gets_ready_path_and_abstract() {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let t = TempDir::new("app-notify");
    release(&t.join("r1"), "r1");
    let path = t.join("notify");
    let abstract_name = format!(
        "itest-app-notify-{}-{}",
        std::process::id(),
        t.path().display()
    );
    let by_path = UnixDatagram::bind(&path).unwrap();
    let by_name =
        UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap())
            .unwrap();
    for (sock, value) in [
        (&by_path, path.display().to_string()),
        (&by_name, format!("@{abstract_name}")),
    ] {
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let app = start_with(&t.join("r1"), &[], |c| {
            c.env("NOTIFY_SOCKET", &value);
        });
        let mut b = [0u8; 64];
        let n = sock.recv(&mut b).expect("READY=1 datagram");
        assert_eq!(&b[..n], b"READY=1");
        assert_eq!(get(app.port, "/release").status, 200);
    }
}

/// Start the app held by a pipe on its fd 3 (FORKPOOL_HOLD_FD=3); the write end.
fn start_held(root: &Path) -> (App, OwnedFd) {
    start_held_with(root, |_| {})
}

fn start_held_with(root: &Path, setup: impl FnOnce(&mut Command)) -> (App, OwnedFd) {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let rfd = r.as_raw_fd();
    let app = start_with(root, &[], move |c| {
        setup(c);
        c.env("FORKPOOL_HOLD_FD", "3");
        // SAFETY: the closure runs in the child between fork and exec and calls only
        // fcntl(2) and dup2(2), which are async-signal-safe; it allocates nothing.
        unsafe {
            c.pre_exec(move || {
                // dup2 onto itself would keep close-on-exec: clear it then.
                let r = if rfd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(rfd, 3)
                };
                if r == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    drop(r);
    (app, w)
}

#[test]
fn held_app_is_ready_but_accepts_only_when_let_go() {
    let t = TempDir::new("app-hold");
    release(&t.join("r1"), "r1");
    for by_eof in [false, true] {
        let (app, w) = start_held(&t.join("r1"));
        // Ready (start_held saw the newline), yet no connection is accepted.
        let mut s = connect(app.port);
        s.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 1];
        assert!(s.read(&mut b).is_err(), "answered while held");
        if by_eof {
            drop(w);
        } else {
            nix::unistd::write(&w, b"x").unwrap();
        }
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = read_response(&mut s).expect("answered once let go");
        assert_eq!(r.body(), "r1\n");
    }
}

/// The value of `key` in /proc/PID/sched (policy, prio, se.slice).
fn sched_field(pid: i32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/sched")).ok()?;
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// sched_setattr(2) of this thread: policy, nice, slice (0: the default).
fn set_sched(policy: u32, nice: i32, slice: u64) -> std::io::Result<()> {
    /// struct sched_attr, its first published size (48 bytes).
    #[repr(C)]
    struct Attr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    let a = Attr {
        size: std::mem::size_of::<Attr>() as u32,
        policy,
        flags: 0,
        nice,
        priority: 0,
        runtime: slice,
        deadline: 0,
        period: 0,
    };
    // SAFETY: `a` is a whole struct sched_attr whose size field says its
    // size; the kernel only reads it. A raw system call: async-signal-safe,
    // allocates nothing.
    if unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &a as *const Attr, 0) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

// A held worker asks the kernel for its shortest scheduler slice (0.1 ms), so
// that at its release it runs before the threads that asked for longer ones,
// and puts the slice it had back 20 ms after the release, its policy and nice
// value kept throughout; with no request coming, the loop wakes for it.
#[test]
fn a_held_app_asks_for_a_short_slice_until_20ms_after_its_release() {
    let me = std::process::id() as i32;
    let Some(default) = sched_field(me, "se.slice") else {
        eprintln!("skipped: no se.slice in /proc/PID/sched (no EEVDF slices, or no sched debug)");
        return;
    };
    let t = TempDir::new("app-slice");
    release(&t.join("r1"), "r1");
    // (policy, nice, slice) given to the app; policy, prio, slice before.
    let cases = [
        (None, (0, 120, default)),
        (Some((3, 3, 5_000_000)), (3, 123, 5_000_000)),
    ];
    for (given, (policy, prio, before)) in cases {
        let (app, w) = start_held_with(&t.join("r1"), move |c| {
            if let Some((p, n, s)) = given {
                // SAFETY: set_sched is one system call; nothing else runs.
                unsafe { c.pre_exec(move || set_sched(p, n, s)) };
            }
        });
        let pid = app.p.pid().as_raw();
        let field = |k: &str| sched_field(pid, k);
        assert!(
            integration_tests::wait_until(Duration::from_secs(5), || field("se.slice")
                == Some(100_000)),
            "held, slice {:?}",
            field("se.slice")
        );
        assert_eq!((field("policy"), field("prio")), (Some(policy), Some(prio)));
        let released = Instant::now();
        nix::unistd::write(&w, b"x").unwrap();
        assert!(
            integration_tests::wait_until(Duration::from_secs(5), || field("se.slice")
                == Some(before)),
            "released, slice {:?}",
            field("se.slice")
        );
        assert!(released.elapsed() >= Duration::from_millis(20));
        assert_eq!((field("policy"), field("prio")), (Some(policy), Some(prio)));
        assert_eq!(get(app.port, "/release").body(), "r1\n");
    }
}

#[test]
fn held_app_told_to_stop_exits_without_accepting() {
    let t = TempDir::new("app-hold-stop");
    release(&t.join("r1"), "r1");
    let (mut app, _w) = start_held(&t.join("r1"));
    let mut queued = connect(app.port);
    queued
        .write_all(b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    app.p.signal(Signal::SIGHUP);
    let st = app
        .p
        .wait_timeout(Duration::from_secs(5))
        .expect("exits while held");
    assert_eq!(st.code(), Some(0));
    // The connection is still in the backlog: the app never accepted it.
    app.listener.set_nonblocking(true).unwrap();
    let (mut c, _) = app
        .listener
        .accept()
        .expect("the queued connection is still queued");
    let mut b = [0u8; 16];
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(c.read(&mut b).unwrap(), 16, "and its request unread");
}

#[test]
fn listen_and_workers_for_benchmarks() {
    let t = TempDir::new("app-listen");
    release(&t.join("r1"), "r1");
    let mut c = cmd("app");
    c.arg("--root")
        .arg(t.join("r1"))
        .args(["--listen", "127.0.0.1:0", "--workers", "3"]);
    c.stdout(Stdio::piped());
    let mut p = Proc::spawn(c);
    let (line, _r) = integration_tests::read_line_timeout(p.stdout(), Duration::from_secs(10))
        .expect("the port");
    let port: u16 = line.parse().expect("a port number");
    // Three workers: three keep-alive connections are held at the same time
    // (one at a time, each answered before the next connects: nobody waits, no close).
    let mut conns = Vec::new();
    for round in 0..2 {
        for i in 0..3 {
            if round == 0 {
                conns.push(connect(port));
            }
            let s = &mut conns[i];
            s.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            let r = read_response(s).unwrap();
            assert_eq!((r.body().as_str(), r.header("connection")), ("r1\n", None));
        }
    }
    drop(conns);
    p.signal(Signal::SIGTERM);
    assert_eq!(
        p.wait_timeout(Duration::from_secs(5))
            .and_then(|s| s.code()),
        Some(0)
    );
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "every worker is gone"
    );
}

/// Each line the app writes on `r`, as it comes.
fn lines_of(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    use std::io::BufRead;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(r).lines() {
            let Ok(l) = l else { return };
            if tx.send(l).is_err() {
                return;
            }
        }
    });
    rx
}

/// TSTP, forkpool's park: the app stops accepting and says `stopping`,
/// closes its idle connection, says `parked` once nothing is in hand and
/// waits, running (the kernel did not stop it); a connection made meanwhile
/// waits in the backlog; CONT and it accepts again and answers it; parked
/// again, its stop signal ends it with exit 0.
#[test]
fn tstp_parks_the_app_cont_brings_it_back_and_a_stop_ends_it() {
    let t = TempDir::new("app-park");
    release(&t.join("r1"), "r1");
    let (l, port) = listener();
    let mut c = cmd("app");
    c.arg("--root")
        .arg(t.join("r1"))
        .args(["--ready-fd", "1", "--read-timeout", "60000"]);
    c.stdin(Stdio::from(OwnedFd::from(l)))
        .stdout(Stdio::piped());
    let mut p = Proc::spawn(c);
    let said = lines_of(p.stdout());
    let next = || {
        said.recv_timeout(Duration::from_secs(10))
            .unwrap_or_default()
    };
    assert_eq!(next(), "", "the readiness newline");
    let mut idle = connect(port);
    idle.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut idle).unwrap().status, 200);
    p.signal(Signal::SIGTSTP);
    assert_eq!(next(), "stopping");
    assert_eq!(next(), "parked");
    assert!(closed(&mut idle), "the idle connection stays open");
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.pid())).unwrap();
    let state = stat.rsplit_once(") ").unwrap().1.chars().next();
    assert!(
        matches!(state, Some('S' | 'R')),
        "stopped by the kernel: {stat}"
    );
    let mut waiting = connect(port);
    waiting
        .write_all(b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // Nothing accepted while parked (the read times out, not answered).
    waiting
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    let e = waiting.read(&mut b).expect_err("answered while parked");
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{e}"
    );
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    p.signal(Signal::SIGCONT);
    let r = read_response(&mut waiting).expect("answered after CONT");
    assert_eq!((r.status, r.body().trim()), (200, "r1"));
    p.signal(Signal::SIGTSTP);
    assert_eq!(next(), "stopping");
    assert_eq!(next(), "parked");
    p.signal(Signal::SIGTERM);
    let st = p
        .wait_timeout(Duration::from_secs(5))
        .expect("exits when told to stop while parked");
    assert_eq!(st.code(), Some(0));
}
