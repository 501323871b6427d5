//! uptime-probe counts right: small servers here refuse, reset, stall, close,
//! answer 500, mix and alternate releases on purpose, and every count comes out
//! exact, with the exit status following.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use integration_tests::{cmd, json_count, json_number, run, wait_until, Proc, TempDir};
use nix::sys::signal::Signal;

/// What a test server's connection handler gets: the stream, the connection's
/// number (from 0), and the server's shared counters.
#[derive(Default)]
struct Counters {
    /// Responses written.
    served: AtomicU64,
    /// Connections accepted.
    conns: AtomicU64,
    /// Requests read that said `Connection: close`.
    close_requests: AtomicU64,
    /// Streams a handler keeps open (stalling servers).
    held: Mutex<Vec<TcpStream>>,
}

type Handler = fn(TcpStream, u64, &Counters);

struct Server {
    port: u16,
    c: Arc<Counters>,
}

fn server(handler: Handler) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let c = Arc::new(Counters::default());
    let c2 = c.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let n = c2.conns.fetch_add(1, Ordering::SeqCst);
            let c3 = c2.clone();
            std::thread::spawn(move || handler(s, n, &c3));
        }
    });
    Server { port, c }
}

/// Read one request head; false on EOF or error.
fn read_request(s: &mut TcpStream, c: &Counters) -> bool {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => buf.push(b[0]),
            _ => return false,
        }
    }
    if String::from_utf8_lossy(&buf)
        .to_ascii_lowercase()
        .contains("\r\nconnection: close\r\n")
    {
        c.close_requests.fetch_add(1, Ordering::SeqCst);
    }
    true
}

/// A response: status, X-Release (if any), a body naming `content` (if any).
fn respond(
    s: &mut TcpStream,
    c: &Counters,
    status: u16,
    code: Option<&str>,
    content: Option<&str>,
    close: bool,
) -> bool {
    let body = match content {
        Some(r) => format!("<body data-release=\"{r}\">hello</body>\n"),
        None => "hello\n".to_string(),
    };
    let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
    if let Some(r) = code {
        head.push_str(&format!("X-Release: {r}\r\n"));
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    let ok = s.write_all(format!("{head}\r\n{body}").as_bytes()).is_ok();
    if ok {
        c.served.fetch_add(1, Ordering::SeqCst);
    }
    ok
}

/// A well-behaved keep-alive server of release r1.
fn good(mut s: TcpStream, _: u64, c: &Counters) {
    while read_request(&mut s, c) {
        if !respond(&mut s, c, 200, Some("r1"), Some("r1"), false) {
            return;
        }
    }
}

/// Run the probe with --json; (exit code, the JSON line, stderr).
fn probe(args: &[&str], port: u16) -> (i32, String, String) {
    let mut c = cmd("uptime-probe");
    c.args(["--json", "-q"])
        .args(args)
        .arg(format!("http://127.0.0.1:{port}/"));
    run(c, Duration::from_secs(60))
}

/// The counts that must be zero unless a test says otherwise.
fn assert_counts(json: &str, expect: &[(&str, u64)]) {
    for key in [
        "requests",
        "ok",
        "failed",
        "refused",
        "reset",
        "timeout",
        "eof",
        "bad_status",
        "error",
        "retried",
        "mixed",
        "flapping",
    ] {
        let want = expect
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, v)| *v);
        assert_eq!(json_count(json, key), want, "{key} in {json}");
    }
}

#[test]
fn all_ok_exits_0() {
    let srv = server(good);
    let (code, out, err) = probe(&["-c", "3", "-n", "300"], srv.port);
    assert_eq!(code, 0, "{out}{err}");
    assert_counts(&out, &[("requests", 300), ("ok", 300)]);
    assert_eq!(
        srv.c.served.load(Ordering::SeqCst),
        300,
        "exactly -n requests were sent"
    );
    assert!(
        out.contains("\"releases\":[{\"id\":\"r1\",\"responses\":300,"),
        "{out}"
    );
    assert!(
        srv.c.conns.load(Ordering::SeqCst) <= 3,
        "keep-alive connections are reused"
    );
}

#[test]
fn counts_refused() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }; // closed again: nothing listens there now
    let (code, out, _) = probe(&["-c", "2", "-n", "7"], port);
    assert_eq!(code, 1);
    assert_counts(&out, &[("requests", 7), ("failed", 7), ("refused", 7)]);
}

#[test]
fn counts_resets() {
    let srv = server(|mut s, _, c| {
        if read_request(&mut s, c) {
            // SO_LINGER 0: close sends RST.
            let lg = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let _ = nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &lg);
        }
    });
    let (code, out, _) = probe(&["-c", "2", "-n", "6"], srv.port);
    assert_eq!(code, 1);
    // Fresh connections each time (none got a response), so nothing is retried.
    assert_counts(&out, &[("requests", 6), ("failed", 6), ("reset", 6)]);
}

#[test]
fn counts_stalls_as_timeouts() {
    let srv = server(|mut s, _, c| {
        if read_request(&mut s, c) {
            c.held.lock().unwrap().push(s); // never answered, never closed
        }
    });
    let (code, out, _) = probe(&["-c", "2", "-n", "4", "-t", "300"], srv.port);
    assert_eq!(code, 1);
    assert_counts(&out, &[("requests", 4), ("failed", 4), ("timeout", 4)]);
}

#[test]
fn counts_eof_before_the_response() {
    let srv = server(|mut s, _, c| {
        read_request(&mut s, c);
    });
    let (code, out, _) = probe(&["-c", "2", "-n", "5"], srv.port);
    assert_eq!(code, 1);
    assert_counts(&out, &[("requests", 5), ("failed", 5), ("eof", 5)]);
}

#[test]
fn counts_bad_status() {
    let srv = server(|mut s, _, c| {
        while read_request(&mut s, c) {
            let status = if c.served.load(Ordering::SeqCst) % 4 == 0 {
                500
            } else {
                200
            };
            respond(&mut s, c, status, Some("r1"), Some("r1"), false);
        }
    });
    let (code, out, _) = probe(&["-c", "1", "-n", "20"], srv.port);
    assert_eq!(code, 1);
    assert_counts(
        &out,
        &[
            ("requests", 20),
            ("ok", 15),
            ("failed", 5),
            ("bad_status", 5),
        ],
    );
}

#[test]
fn counts_mixed_releases() {
    // Every third response: code r1, content r2.
    let srv = server(|mut s, _, c| {
        while read_request(&mut s, c) {
            let content = if c.served.load(Ordering::SeqCst) % 3 == 0 {
                "r2"
            } else {
                "r1"
            };
            respond(&mut s, c, 200, Some("r1"), Some(content), false);
        }
    });
    let (code, out, _) = probe(&["-c", "1", "-n", "30"], srv.port);
    assert_eq!(code, 1, "mixed responses fail the run");
    assert_counts(&out, &[("requests", 30), ("ok", 30), ("mixed", 10)]);
    // A response without one of the two is not mixed, only unversioned.
    let srv = server(|mut s, _, c| {
        while read_request(&mut s, c) {
            let (code, content) = if c.served.load(Ordering::SeqCst) % 2 == 0 {
                (None, Some("r1"))
            } else {
                (Some("r1"), None)
            };
            respond(&mut s, c, 200, code, content, false);
        }
    });
    let (code, out, _) = probe(&["-c", "1", "-n", "10"], srv.port);
    assert_eq!(code, 0, "{out}");
    assert_counts(&out, &[("requests", 10), ("ok", 10)]);
    assert_eq!(
        (
            json_count(&out, "no_x_release"),
            json_count(&out, "no_data_release")
        ),
        (5, 5)
    );
}

#[test]
fn chunked_and_close_delimited_bodies_are_checked() {
    // Connections alternate: chunked (the release split across two chunks), then
    // a body that ends with the connection; one response per connection.
    let srv = server(|mut s, n, c| {
        if read_request(&mut s, c) {
            let body = "<body data-release=\"r2\">x</body>";
            let resp = if n % 2 == 0 {
                format!(
                    "HTTP/1.1 200 OK\r\nX-Release: r1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
                    20,
                    &body[..20],
                    body.len() - 20,
                    &body[20..]
                )
            } else {
                format!("HTTP/1.0 200 OK\r\nX-Release: r1\r\n\r\n{body}")
            };
            let _ = s.write_all(resp.as_bytes());
            c.served.fetch_add(1, Ordering::SeqCst);
        }
    });
    let (code, out, _) = probe(&["-c", "1", "-n", "6"], srv.port);
    assert_eq!(code, 1);
    assert_counts(&out, &[("requests", 6), ("ok", 6), ("mixed", 6)]);
    assert_eq!(srv.c.conns.load(Ordering::SeqCst), 6);
}

#[test]
fn a_failure_on_a_reused_connection_is_retried_once() {
    // One response per connection, kept alive by the headers, then the server
    // reads the next request and closes without answering.
    let srv = server(|mut s, _, c| {
        if read_request(&mut s, c) && respond(&mut s, c, 200, Some("r1"), Some("r1"), false) {
            read_request(&mut s, c);
        }
    });
    let (code, out, _) = probe(&["-c", "1", "-n", "10"], srv.port);
    assert_eq!(
        code, 0,
        "retried requests that then succeed are not failures: {out}"
    );
    assert_counts(&out, &[("requests", 10), ("ok", 10), ("retried", 9)]);
    assert_eq!(srv.c.conns.load(Ordering::SeqCst), 10);
}

#[test]
fn a_retry_that_fails_is_one_failure() {
    // Connection 0 answers once, then closes on the next request; every later
    // connection closes without answering.
    let srv = server(|mut s, n, c| {
        if read_request(&mut s, c)
            && n == 0
            && respond(&mut s, c, 200, Some("r1"), Some("r1"), false)
        {
            read_request(&mut s, c);
        }
    });
    let (code, out, _) = probe(&["-c", "1", "-n", "3"], srv.port);
    assert_eq!(code, 1);
    // 1 ok; 2: reused -> eof -> retried -> eof; 3: fresh -> eof (not retried).
    assert_counts(
        &out,
        &[
            ("requests", 3),
            ("ok", 1),
            ("failed", 2),
            ("eof", 2),
            ("retried", 1),
        ],
    );
}

#[test]
fn no_keepalive_opens_a_connection_per_request() {
    let srv = server(|mut s, _, c| {
        if read_request(&mut s, c) {
            respond(&mut s, c, 200, Some("r1"), Some("r1"), true);
        }
    });
    let (code, out, _) = probe(&["-c", "2", "-n", "10", "--no-keepalive"], srv.port);
    assert_eq!(code, 0, "{out}");
    assert_counts(&out, &[("requests", 10), ("ok", 10)]);
    assert_eq!(srv.c.conns.load(Ordering::SeqCst), 10);
    assert_eq!(srv.c.close_requests.load(Ordering::SeqCst), 10);
    assert!(out.contains("\"keepalive\":false"));
}

#[test]
fn counts_flapping_and_fails_on_it_when_asked() {
    // r1, r2, r1, r2, ...: after r2, each r1 is a flap.
    let srv = server(|mut s, _, c| {
        while read_request(&mut s, c) {
            let r = if c.served.load(Ordering::SeqCst) % 2 == 0 {
                "r1"
            } else {
                "r2"
            };
            respond(&mut s, c, 200, Some(r), Some(r), false);
        }
    });
    let (code, out, _) = probe(&["-c", "1", "-n", "6"], srv.port);
    assert_eq!(code, 0, "flapping alone is not a failure: {out}");
    assert_counts(&out, &[("requests", 6), ("ok", 6), ("flapping", 2)]);
    assert!(out.contains("{\"id\":\"r1\",\"responses\":3,"), "{out}");
    assert!(out.contains("{\"id\":\"r2\",\"responses\":3,"), "{out}");
    let (code, out, _) = probe(&["-c", "1", "-n", "6", "--flapping-fails"], srv.port);
    assert_eq!(code, 1, "{out}");
    assert_eq!(json_count(&out, "flapping"), 2);
}

#[test]
fn int_or_term_ends_the_run_and_prints_the_results() {
    for (sig, json) in [(Signal::SIGTERM, true), (Signal::SIGINT, false)] {
        let srv = server(good);
        let mut c = cmd("uptime-probe");
        if json {
            c.arg("--json");
        }
        c.args(["-q", "-c", "2"])
            .arg(format!("http://127.0.0.1:{}/", srv.port))
            .stdout(Stdio::piped());
        let mut p = Proc::spawn(c);
        let out = p.stdout();
        assert!(wait_until(Duration::from_secs(20), || srv
            .c
            .served
            .load(Ordering::SeqCst)
            >= 200));
        p.signal(sig);
        let st = p
            .wait_timeout(Duration::from_secs(10))
            .expect("the probe stops on the signal");
        assert_eq!(st.code(), Some(0));
        let text = integration_tests::read_all_timeout(out, Duration::from_secs(5)).unwrap();
        if json {
            // Every response the server wrote was read and counted, and nothing else.
            let n = json_count(&text, "requests");
            assert!(
                wait_until(Duration::from_secs(5), || srv
                    .c
                    .served
                    .load(Ordering::SeqCst)
                    == n),
                "{text}"
            );
            assert_counts(&text, &[("requests", n), ("ok", n)]);
        } else {
            assert!(
                text.contains("\nverdict      OK: nothing failed, nothing mixed\n"),
                "{text}"
            );
            assert!(text.contains("\nlatency      p50 "), "{text}");
        }
    }
}

#[test]
fn the_demo_app_passes() {
    let t = TempDir::new("probe-app");
    std::fs::create_dir_all(t.join("htdocs")).unwrap();
    std::fs::write(t.join("RELEASE"), "r7\n").unwrap();
    std::fs::write(
        t.join("htdocs/index.html"),
        "<body data-release=\"r7\">seven</body>\n",
    )
    .unwrap();
    let mut c = cmd("app");
    c.arg("--root")
        .arg(t.path())
        .args(["--listen", "127.0.0.1:0", "--workers", "4"])
        .stdout(Stdio::piped());
    let mut app = Proc::spawn(c);
    let (line, _r) =
        integration_tests::read_line_timeout(app.stdout(), Duration::from_secs(10)).expect("port");
    let port: u16 = line.parse().unwrap();
    for extra in [&[][..], &["--no-keepalive"][..]] {
        let mut args = vec!["-c", "4", "-n", "2000"];
        args.extend_from_slice(extra);
        let (code, out, err) = probe(&args, port);
        assert_eq!(code, 0, "{out}{err}");
        assert_counts(&out, &[("requests", 2000), ("ok", 2000)]);
        assert!(
            out.contains("\"releases\":[{\"id\":\"r7\",\"responses\":2000,"),
            "{out}"
        );
    }
}

#[test]
fn usage_errors_exit_100() {
    for args in [
        &[][..],
        &["ftp://x/"],
        &["https://127.0.0.1/"],
        &["http://127.0.0.1:99999/"],
        &["-c", "0", "http://127.0.0.1/"],
        &["-n", "x", "http://127.0.0.1/"],
        &["-d", "0", "http://127.0.0.1/"],
        &["--bogus", "http://127.0.0.1/"],
        &["http://127.0.0.1/", "extra"],
    ] {
        let mut c = cmd("uptime-probe");
        c.args(args);
        let (code, out, err) = run(c, Duration::from_secs(10));
        assert_eq!(code, 100, "{args:?}: {out}{err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("uptime-probe: usage: "), "{err}");
    }
}

/// Set by the test: `slow_while_marked` answers 20 ms late while it is.
static SLOW: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A keep-alive server of release r1 that is slow while SLOW is set.
fn slow_while_marked(mut s: TcpStream, _: u64, c: &Counters) {
    while read_request(&mut s, c) {
        if SLOW.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !respond(&mut s, c, 200, Some("r1"), Some("r1"), false) {
            return;
        }
    }
}

#[test]
fn each_usr1_starts_or_ends_a_marked_part_and_each_part_has_its_latency() {
    // Fast, then 20 ms a request while marked, fast again, marked again:
    // the whole run's latency mixes the two; each part's is its own, the
    // second marked part with the first, the fast stretch between them
    // with the unmarked (it is the longest: a marked part that went on to
    // the end of the run would have a fast median).
    let srv = server(slow_while_marked);
    let t = TempDir::new("probe-marks");
    let err = t.join("err");
    let mut c = cmd("uptime-probe");
    c.args(["--json", "-c", "2"])
        .arg(format!("http://127.0.0.1:{}/", srv.port))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err).unwrap());
    let mut p = Proc::spawn(c);
    let out = p.stdout();
    let served = || srv.c.served.load(Ordering::SeqCst);
    let said = |what: &str| {
        std::fs::read_to_string(&err)
            .unwrap_or_default()
            .matches(what)
            .count()
    };
    let serve = |more: u64| {
        let n = served();
        assert!(wait_until(Duration::from_secs(20), || served() >= n + more));
    };
    serve(1000);
    for round in 1..=2 {
        p.signal(Signal::SIGUSR1);
        assert!(
            wait_until(Duration::from_secs(20), || said(
                "start of a marked part at "
            ) == round),
            "the probe says when a marked part starts"
        );
        SLOW.store(true, Ordering::SeqCst);
        serve(100);
        p.signal(Signal::SIGUSR1);
        assert!(
            wait_until(Duration::from_secs(20), || said("end of a marked part at ")
                == round),
            "and when it ends"
        );
        SLOW.store(false, Ordering::SeqCst);
        serve(if round == 1 { 3000 } else { 100 });
    }
    p.signal(Signal::SIGTERM);
    let st = p
        .wait_timeout(Duration::from_secs(10))
        .expect("stops on TERM");
    assert_eq!(st.code(), Some(0));
    let text = integration_tests::read_all_timeout(out, Duration::from_secs(5)).unwrap();
    let parts = &text[text.find("\"parts\":{").expect("parts")..];
    let unmarked = &parts[parts.find("\"unmarked\":").unwrap()..parts.find("\"marked\":").unwrap()];
    let marked = &parts[parts.find("\"marked\":").unwrap()..];
    assert!(
        json_number(unmarked, "p99") < 20.0,
        "nothing unmarked was slow: {text}"
    );
    assert!(
        json_number(marked, "p50") >= 20.0,
        "about all marked was: {text}"
    );
    assert!(json_number(marked, "max") >= 20.0, "{text}");
    let answered = json_count(unmarked, "answered") + json_count(marked, "answered");
    assert_eq!(answered, json_count(&text, "requests"), "{text}");
    // The four USR1s, in order.
    let at = &parts[parts.find("\"usr1_at_s\":[").unwrap() + 13..];
    let at: Vec<f64> = at[..at.find(']').unwrap()]
        .split(',')
        .map(|t| t.parse().unwrap())
        .collect();
    assert_eq!(at.len(), 4, "{text}");
    assert!(parts.starts_with("\"parts\":{\"usr1\":4,"), "{text}");
    assert!(at.windows(2).all(|w| w[0] <= w[1]), "{text}");
    // Without a USR1 there are no parts.
    let (code, json, _) = probe(&["-n", "50"], srv.port);
    assert_eq!(code, 0);
    assert!(json.contains("\"parts\":null,"), "{json}");
}
