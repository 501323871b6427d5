//! The second attack round (issue 24) against what lies outside forkpool's own
//! code: deploy-release's check against a dribbling server (5), pool-health
//! under idle connections (6) and against a pool that cannot serve (7), the
//! deploy lock's mode and owner (8), the demo scripts' umask (9), newlines in
//! release names (10), status files that are FIFOs or huge (11), uptime-probe
//! against hostile release names (13), hostile text in messages (14). Each test
//! reproduces the attack first; each failed before its fix.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use integration_tests::*;

/// `tcplisten -1 127.0.0.1 0 pool-health ARGS`, and the port it printed.
fn start_health(dir: &Path, args: &[&std::ffi::OsStr]) -> (Proc, u16) {
    behind_tcplisten("pool-health", args, &dir.join("health.err"))
}

/// One check on a fresh connection, read for at most `wait`: (status, body);
/// None when no whole answer came in that time.
fn health_within(port: u16, wait: Duration) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(wait)).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n")
        .ok()?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(st.success());
}

fn poolctl(args: &[&str], status: &Path) -> (i32, String, String) {
    let mut c = cmd("poolctl");
    c.args(args).arg(status);
    run(c, Duration::from_secs(30))
}

// ------------------------------------------------ 11: FIFO and huge status files

/// A FIFO at the status path: poolctl, deploy-release and pool-health answer at
/// once (the FIFO is opened O_NONBLOCK and refused), they never wait for a
/// writer; a 1 GiB file is refused by its size, never read whole.
#[test]
fn status_readers_refuse_a_fifo_and_a_huge_file() {
    let dir = TempDir::new("h2-fifo");
    let fifo = dir.join("status");
    mkfifo(&fifo);
    let (code, out, err) = poolctl(&["status"], &fifo);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("not a regular file (a FIFO)"), "{err}");

    make_release(dir.path(), "r1", "");
    make_release(dir.path(), "r2", "");
    std::os::unix::fs::symlink("releases/r1", dir.join("current")).expect("current");
    let mut c = cmd("deploy-release");
    c.args(["-t", "5"])
        .arg(dir.join("releases/r2"))
        .arg(dir.join("current"))
        .arg(&fifo);
    let (code, _, err) = run(c, Duration::from_secs(30));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("not a regular file (a FIFO)"), "{err}");

    let (_h, port) = start_health(dir.path(), &[fifo.as_os_str()]);
    for _ in 0..2 {
        let (code, body) =
            health_within(port, Duration::from_secs(20)).expect("pool-health answers");
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("not a regular file (a FIFO)"), "{body}");
    }

    // 1 GiB (sparse): refused by its size
    let huge = dir.join("huge");
    std::fs::File::create(&huge)
        .and_then(|f| f.set_len(1 << 30))
        .expect("huge");
    let (code, _, err) = poolctl(&["status"], &huge);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("too large (1073741824 bytes"), "{err}");
    drop(_h);
    let (_h, port) = start_health(dir.path(), &[huge.as_os_str()]);
    let (code, body) = health_within(port, Duration::from_secs(20)).expect("answers");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("too large"), "{body}");
}

// ------------------------------------------------ 8: deploy.lock's mode and owner

/// deploy-release LINK's-dir/deploy.lock: created 0600 (under umask 000 too),
/// an old 0644 one made 0600, one another user owns refused (exit 111,
/// nothing changed, no chain asked).
#[test]
fn the_deploy_lock_is_0600_and_refused_when_another_user_owns_it() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = TempDir::new("h2-lock");
    make_release(dir.path(), "r1", "");
    make_release(dir.path(), "r2", "");
    std::os::unix::fs::symlink("releases/r1", dir.join("current")).expect("current");
    let lock = dir.join("deploy.lock");
    let deploy = || {
        // umask 000: the mode is the tool's own, not the caller's umask's
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("umask 000; exec \"$@\"")
            .arg("sh")
            .arg(bin("deploy-release"))
            .args(["-t", "5"])
            .arg(dir.join("releases/r2"))
            .arg(dir.join("current"))
            .arg(dir.join("status"));
        run(c, Duration::from_secs(30))
    };
    let mode = |p: &Path| std::fs::metadata(p).expect("lock").mode() & 0o7777;
    // no chain runs (exit 3): the lock was taken first, and made 0600
    let (code, _, err) = deploy();
    assert_eq!(code, 3, "{err}");
    assert_eq!(mode(&lock), 0o600, "{err}");
    // a lock left 0644 by an older deploy-release: made 0600
    std::fs::set_permissions(&lock, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (code, _, err) = deploy();
    assert_eq!(code, 3, "{err}");
    assert_eq!(mode(&lock), 0o600, "{err}");
    // owned by another user (the tests run as root: chown to nobody)
    if nix::unistd::geteuid().is_root() {
        std::os::unix::fs::chown(&lock, Some(65534), Some(65534)).expect("chown");
        let (code, _, err) = deploy();
        assert_eq!(code, 111, "{err}");
        assert!(err.contains("owned by uid 65534"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(std::fs::metadata(&lock).expect("lock").uid(), 65534);
        assert!(!dir.join("deploy.running").exists());
    } else {
        eprintln!("not root: the foreign owner case is not tried");
    }
}

// ------------------------------------------------ 9: the demo scripts' umask

/// Every file and directory under `dir` (symlinks not followed) that group or
/// others can write: (path, mode).
fn writable_by_others(dir: &Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.file_type().is_symlink() {
                continue;
            }
            if m.mode() & 0o022 != 0 {
                out.push((e.path().display().to_string(), m.mode() & 0o7777));
            }
            if m.is_dir() {
                todo.push(e.path());
            }
        }
    }
    out
}

/// demo/serve and demo/deploy started under `umask 000`: nothing they make (the
/// state directory, releases/, a release's bin/app, logs, serve.pid, port,
/// history) is writable by group or others: the scripts set umask 022.
#[test]
fn the_demo_scripts_set_their_own_umask() {
    let dir = TempDir::new("h2-umask");
    let state = dir.join("state");
    let script = |name: &str, args: &[&str]| {
        let mut c = Command::new("sh");
        c.arg("-c")
            .arg("umask 000; exec \"$@\"")
            .arg("sh")
            .arg(repo().join("demo").join(name))
            .args(args)
            .env("BIN", bin_dir())
            .env("STATE", &state)
            .env("PORT", "0")
            .env("WORKERS", "2")
            .env_remove("SERVE_MODE")
            .env_remove("RELOAD_MODE")
            .env_remove("KEEP")
            .env_remove("DEADLINE")
            .stdin(Stdio::null());
        c
    };
    let mut serve = script("serve", &[]);
    serve
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("serve.err")).expect("log"));
    let _serve = Proc::spawn(serve);
    let log = || std::fs::read_to_string(dir.join("serve.err")).unwrap_or_default();
    assert!(
        wait_until(LONG, || std::fs::read_to_string(state.join("port"))
            .map(|p| p.trim().parse::<u16>().is_ok())
            .unwrap_or(false)
            && std::fs::read_to_string(state.join("status"))
                .map(|s| s.contains("state=running\n") && !s.contains("serving_generation=0\n"))
                .unwrap_or(false)),
        "demo/serve did not come up: {}",
        log()
    );
    let (code, _, err) = run(script("deploy", &[]), Duration::from_secs(120));
    assert_eq!(code, 0, "{err}");
    let bad = writable_by_others(&state);
    assert!(
        bad.is_empty(),
        "writable by others under umask 000: {bad:?}"
    );
    // the state directory itself
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&state).expect("state").mode() & 0o7777;
    assert_eq!(m & 0o022, 0, "state is {m:o}");
}

// ------------------------------------------------ 10, 14: hostile text

/// `tcplisten -1 127.0.0.1 0 SUPERVISOR...` in `dir` (forkpool: a copy at
/// dir/forkpool, one worker, -p current; loop-forever: cd -P current), the
/// status file dir/status; waits until it serves.
fn chain_in(dir: &Path, forkpool: bool) -> (Proc, u16) {
    let mut c = cmd("tcplisten");
    c.args(["-1", "127.0.0.1", "0"]);
    if forkpool {
        let exe = dir.join("forkpool");
        std::fs::copy(bin("forkpool"), &exe).expect("copy forkpool");
        c.arg(&exe)
            .args(["-n", "1", "-d", "3", "-t", "20000", "-p", "current", "-S"])
            .arg(dir.join("status"))
            .arg("./run");
    } else {
        c.arg(bin("loop-forever"))
            .args(["-d", "3", "-S"])
            .arg(dir.join("status"))
            .args(["sh", "-c", "cd -P current && exec ./run"]);
    }
    c.current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("chain.log")).expect("log"));
    let mut p = Proc::spawn(c);
    let (line, _) = read_line_timeout(p.stdout(), LONG).expect("tcplisten prints the port");
    let port = line.trim().parse().expect("port");
    let st = dir.join("status");
    assert!(
        wait_until(LONG, || {
            let s = PoolStatus::read(&st);
            s.num("serving_generation") > 0 && s.workers.iter().any(|w| w.3 == "ready")
        }),
        "the chain never served: {}",
        std::fs::read_to_string(dir.join("chain.log")).unwrap_or_default()
    );
    (p, port)
}

/// Control characters in `s` other than the newline.
fn controls(s: &str) -> Vec<char> {
    s.chars().filter(|c| c.is_control() && *c != '\n').collect()
}

/// A release directory named `r1\nready=9` pinned by forkpool (release=) or
/// run by loop-forever (its cwd is release=): the status file gets no
/// `ready=9` line, poolctl says 1 of 1 and shows the name quoted; and
/// deploy-release refuses to deploy such a name (its history is one name a
/// line), nothing changed.
#[test]
fn a_release_named_with_a_newline_injects_no_key() {
    for forkpool in [true, false] {
        let dir = TempDir::new("h2-newline");
        let name = "r1\nready=9";
        make_release(dir.path(), name, "");
        std::os::unix::fs::symlink(format!("releases/{name}"), dir.join("current"))
            .expect("current");
        let (_chain, _) = chain_in(dir.path(), forkpool);
        let status = dir.join("status");
        let text = std::fs::read_to_string(&status).expect("status");
        assert!(
            !text.lines().any(|l| l == "ready=9"),
            "forkpool={forkpool}: injected: {text}"
        );
        assert!(text.contains("r1\\nready=9\n"), "{text}");
        let (code, out, err) = poolctl(&["status"], &status);
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("1 of 1 ready"), "forkpool={forkpool}: {out}");
        assert!(out.contains("r1\\nready=9"), "{out}");

        // deploy-release: refused (exit 100), current unchanged
        let evil = make_release(dir.path(), "r2\nr9", "");
        let mut c = cmd("deploy-release");
        c.args(["-t", "10"])
            .arg(&evil)
            .arg(dir.join("current"))
            .arg(&status);
        let (code, _, err) = run(c, Duration::from_secs(60));
        assert_eq!(code, 100, "{err}");
        assert!(err.contains("control character"), "{err}");
        assert!(err.contains("r2\\nr9"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        let cur = std::fs::read_link(dir.join("current")).expect("current");
        assert_eq!(cur.to_string_lossy(), format!("releases/{name}"));
    }
}

/// A server on 127.0.0.1:0 that runs `answer` on every connection (each in a
/// thread of its own) once it has read the request head; its port. The
/// threads end with the test process.
fn hostile_server(answer: fn(TcpStream)) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                if read_request_head(&mut s).is_some() {
                    answer(s);
                }
            });
        }
    });
    port
}

/// Every line of `text` is short and holds no control character.
fn assert_tame(what: &str, text: &str) {
    let bad = controls(text);
    assert!(bad.is_empty(), "{what}: control characters {bad:?}");
    let long = text.lines().map(str::len).max().unwrap_or(0);
    assert!(long <= 4100, "{what}: a line of {long} bytes");
}

/// An upgrade whose check writes ANSI escapes, a bell, a CR and 60 KB on its
/// first stderr line: reason=, poolctl's answer and forkpool's own warning
/// hold the text quoted and cut; deploy-release against a server whose body
/// is a 1 MiB line with escapes prints short, quoted lines.
#[test]
fn hostile_text_is_quoted_and_cut_in_every_message_and_key() {
    let dir = TempDir::new("h2-text");
    make_release(dir.path(), "r1", "");
    std::os::unix::fs::symlink("releases/r1", dir.join("current")).expect("current");
    let (_chain, _) = chain_in(dir.path(), true);
    let status = dir.join("status");
    // the "new build": a check that says something hostile and fails
    let evil = dir.join("forkpool.new");
    std::fs::write(
        &evil,
        "#!/bin/sh\nprintf '\\033[31mred\\007\\rX%60000s\\n' tail >&2\nexit 1\n",
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::rename(&evil, dir.join("forkpool")).expect("install");
    let (code, out, err) = poolctl(&["upgrade", "-t", "30"], &status);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("\\x1b[31mred\\x07\\rX"), "{err}");
    assert_tame("poolctl upgrade", &format!("{out}{err}"));
    let st = PoolStatus::read(&status);
    assert_eq!(st.get("upgrade"), "failed");
    let reason = st.get("reason");
    assert!(reason.contains("\\x1b[31mred"), "{reason}");
    assert!(reason.len() < 1200, "reason= is {} bytes", reason.len());
    assert_tame(
        "the status file",
        &std::fs::read_to_string(&status).expect("st"),
    );
    let (_, out, err) = poolctl(&["status"], &status);
    assert_tame("poolctl status", &format!("{out}{err}"));
    let log = std::fs::read_to_string(dir.join("chain.log")).unwrap_or_default();
    assert!(log.contains("upgrade refused"), "{log}");
    assert_tame("forkpool's stderr", &log);

    // deploy-release checking a server whose body is hostile
    let port = hostile_server(|mut s| {
        let mut body = b"\x1b]0;pwned\x07\x1b[2J".to_vec();
        body.extend(std::iter::repeat_n(b'A', 1 << 20));
        body.push(b'\n');
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body);
    });
    make_release(dir.path(), "r2", "");
    let mut c = cmd("deploy-release");
    c.args(["-t", "5", "-c", &format!("http://127.0.0.1:{port}/release")])
        .arg(dir.join("releases/r2"))
        .arg(dir.join("current"))
        .arg(&status);
    let (code, _, err) = run(c, Duration::from_secs(120));
    assert_eq!(code, 2, "{}", &err[..err.len().min(3000)]);
    assert!(
        err.contains("\\x1b]0;pwned\\x07"),
        "{}",
        &err[..err.len().min(3000)]
    );
    assert_tame("deploy-release", &err);
}

// ------------------------------------------------ 5: a check against a dribbling server

/// While false, the dribbling server sends its head and then a byte a second;
/// once true, it answers `r1` at once (the rollback's check then verifies).
static DRIBBLE_HONEST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn dribble(mut s: TcpStream) {
    use std::sync::atomic::Ordering;
    if DRIBBLE_HONEST.load(Ordering::SeqCst) {
        let _ =
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nr1\n");
        return;
    }
    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        .is_err()
    {
        return;
    }
    for _ in 0..600 {
        std::thread::sleep(Duration::from_secs(1));
        if s.write_all(b"r").is_err() {
            return;
        }
    }
}

/// `deploy-release -t 5 -c URL` where URL sends its head and then a byte a
/// second: the whole check ends by -t (and the rollback's by its own -t),
/// not after the body; and an INT during such a check acts at once: the
/// rollback starts, it does not wait for the body.
#[test]
fn a_check_against_a_dribbling_server_is_bounded_and_interruptible() {
    use std::sync::atomic::Ordering;
    let port = hostile_server(dribble);
    let url = format!("http://127.0.0.1:{port}/release");
    let site = Site::start("h2-dribble", Mode::Forkpool);
    site.wait_settled();
    site.release("r2", "");
    let mut c = cmd("deploy-release");
    c.args(["-t", "5", "-c", &url])
        .arg(site.dir.join("releases/r2"))
        .arg(&site.link)
        .arg(&site.status);
    // -t 5 for the deploy, 5 more for the rollback: a bound far from both
    // (before the fix it was still running after 45 s)
    let (code, _, err) = run(c, Duration::from_secs(40));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("GET {url} answered nothing")),
        "{err}"
    );

    // INT during a dribbling check: the rollback starts at once
    site.wait_settled();
    let log = site.dir.join("deploy.err");
    let mut c = cmd("deploy-release");
    c.args(["-t", "120", "-c", &url])
        .arg(site.dir.join("releases/r2"))
        .arg(&site.link)
        .arg(&site.status)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"));
    let mut d = Proc::spawn(c);
    let said = |what: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains(what)
    };
    assert!(
        wait_until(LONG, || said(" serving: ")),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // the check's first try is in its dribble now
    std::thread::sleep(Duration::from_millis(300));
    DRIBBLE_HONEST.store(true, Ordering::SeqCst);
    d.signal(nix::sys::signal::Signal::SIGINT);
    // a bound far below -t 120 and the 100000 s body
    let st = d.wait_timeout(Duration::from_secs(30));
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(st.and_then(|s| s.code()), Some(1), "{text}");
    assert!(text.contains("not verified: interrupted by INT"), "{text}");
    assert!(text.contains("rolled back: releases/r1 serves"), "{text}");
}

// ------------------------------------------------ 13: uptime-probe and hostile release names

/// A keep-alive server naming a new release in every response (counted across
/// connections), the first two with U+FFFE and U+FFFF in them.
fn release_per_response_server() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                while read_request_head(&mut s).is_some() {
                    // 2 ms a response: the run spreads over some 100 bins
                    std::thread::sleep(Duration::from_millis(2));
                    let rel = match N.fetch_add(1, Ordering::SeqCst) {
                        0 => "bad\u{fffe}one".to_string(),
                        1 => "bad\u{ffff}two".to_string(),
                        n => format!("r{n}"),
                    };
                    let body = format!("<body data-release=\"{rel}\">x</body>");
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\nX-Release: {rel}\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// 20,000 responses, each naming a new release, two of them with U+FFFE and
/// U+FFFF: the SVG is well-formed XML and small, the run's peak RSS stays
/// under the page's 50 MB, and the releases past the tracked ones are counted.
#[test]
fn uptime_probe_bounds_the_releases_it_tracks_and_keeps_the_svg_well_formed() {
    let dir = TempDir::new("h2-probe");
    let port = release_per_response_server();
    let svg = dir.join("run.svg");
    let mut c = Command::new("/usr/bin/time");
    c.args(["-f", "peak_rss_kib %M"])
        .arg(bin("uptime-probe"))
        .args(["--json", "-q", "-c", "4", "-n", "20000", "--svg"])
        .arg(&svg)
        .arg(format!("http://127.0.0.1:{port}/"));
    let (code, json, err) = run(c, Duration::from_secs(120));
    assert_eq!(code, 0, "{json}{err}");
    assert_eq!(json_count(&json, "requests"), 20_000, "{json}");
    let rss: u64 = err
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS: {err}"));
    let size = std::fs::metadata(&svg).expect("svg").len();
    eprintln!("peak RSS {rss} KiB, SVG {size} bytes");
    let mut c = Command::new("python3");
    c.arg("-c")
        .arg("import sys, xml.etree.ElementTree as E; E.parse(sys.argv[1]); print('ok')")
        .arg(&svg);
    let (code, out, err) = run(c, Duration::from_secs(60));
    assert_eq!((code, out.trim()), (0, "ok"), "not well-formed XML: {err}");
    assert!(rss < 50_000, "peak RSS {rss} KiB");
    assert!(size < 1_000_000, "the SVG is {size} bytes");
    assert_eq!(json_count(&json, "untracked"), 20_000 - 64, "{json}");
}

// ------------------------------------------------ 6, 7: pool-health

/// tcplisten + forkpool -n 2 (test-worker, ready through fd 3) in `dir`,
/// the status file `status`; waits until both workers are ready.
fn test_pool(dir: &Path, status: &Path) -> Proc {
    let mut c = cmd("tcplisten");
    c.args(["127.0.0.1", "0"])
        .arg(bin("forkpool"))
        .args(["-n", "2", "-d", "3", "-t", "60000", "-S"])
        .arg(status)
        .arg(bin("test-worker"))
        .args(["--notify-fd", "3"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("pool.err")).expect("log"));
    let pool = Proc::spawn(c);
    assert!(
        wait_until(LONG, || {
            let s = PoolStatus::read(status);
            s.num("serving_generation") > 0 && s.pids("ready").len() == 2
        }),
        "the pool never served: {:?}",
        PoolStatus::read(status)
    );
    pool
}

/// As many descriptors as the hard limit allows (1,000 sockets and more).
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
}

/// 1,000 connections that say nothing and 20 that dribble half a head, each
/// allowed -t 10000 ms: every real check is still answered at once (before,
/// each waited behind the idle ones, -t apiece).
#[test]
fn pool_health_answers_every_check_with_1000_idle_connections_open() {
    raise_nofile();
    let dir = TempDir::new("h2-idle");
    let status = dir.join("status");
    let _pool = test_pool(dir.path(), &status);
    let (_h, port) = start_health(
        dir.path(),
        &["-t".as_ref(), "10000".as_ref(), status.as_os_str()],
    );
    assert_eq!(
        health_within(port, Duration::from_secs(20)).map(|a| a.0),
        Some(200)
    );
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut idle = Vec::new();
    for _ in 0..1000 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            idle.push(s);
        }
    }
    assert!(idle.len() >= 990, "only {} connected", idle.len());
    for s in idle.iter_mut().take(20) {
        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHo");
    }
    // a bound far below one idle connection's -t (10 s)
    for n in 0..10 {
        let answer = health_within(port, Duration::from_secs(5));
        assert_eq!(
            answer.as_ref().map(|a| a.0),
            Some(200),
            "check {n} behind 1000 idle connections: {answer:?}"
        );
    }
    drop(idle);
}

/// pool-health checks the pid as poolctl does and the workers the file names:
/// pid 1, a live process that is not forkpool, every worker stopped, forkpool
/// stopped with its workers killed: down (before: 200 up for each).
#[test]
fn pool_health_is_down_while_nothing_can_serve() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = TempDir::new("h2-nothing");
    let fake = dir.join("fake");
    let (_h, port) = start_health(dir.path(), &[fake.as_os_str()]);
    let check = || health_within(port, Duration::from_secs(20)).expect("pool-health answers");
    let body = "state=running\ngeneration=1\nserving_generation=1\nworkers=1\nready=1\n";
    // pid 1
    std::fs::write(&fake, format!("pid=1\n{body}")).expect("fake");
    let (code, why) = check();
    assert_eq!(code, 503, "pid 1: {why}");
    // a live process that is not forkpool
    let mut sleep = Command::new("sleep");
    sleep.arg("600");
    let sleep = Proc::spawn(sleep);
    std::fs::write(
        &fake,
        format!(
            "pid={}\n{body}worker=0 1 {} ready\n",
            sleep.pid(),
            sleep.pid()
        ),
    )
    .expect("fake");
    let (code, why) = check();
    assert_eq!(code, 503, "a sleep: {why}");
    assert!(
        why.contains("is sleep, not forkpool or loop-forever"),
        "{why}"
    );
    drop(_h);

    // a real pool
    let status = dir.join("status");
    let pool = test_pool(dir.path(), &status);
    let (_h, port) = start_health(dir.path(), &[status.as_os_str()]);
    let check = || health_within(port, Duration::from_secs(20)).expect("pool-health answers");
    assert_eq!(check().0, 200);
    // every worker stopped: down; continued: up
    let workers = PoolStatus::read(&status).pids("ready");
    for &w in &workers {
        kill(Pid::from_raw(w), Signal::SIGSTOP).expect("stop");
    }
    assert!(
        wait_until(LONG, || common::proc_state(workers[0]) == 'T'),
        "not stopped"
    );
    let (code, why) = check();
    assert_eq!(code, 503, "every worker stopped: {why}");
    assert!(why.contains("is stopped"), "{why}");
    for &w in &workers {
        kill(Pid::from_raw(w), Signal::SIGCONT).expect("cont");
    }
    assert!(wait_until(LONG, || check().0 == 200), "{:?}", check());
    // forkpool stopped, its workers killed: down; continued: it replaces them
    pool.signal(Signal::SIGSTOP);
    assert!(wait_until(LONG, || common::proc_state(pool.pid().as_raw()) == 'T'));
    for &w in &workers {
        kill(Pid::from_raw(w), Signal::SIGKILL).expect("kill");
    }
    let (code, why) = check();
    assert_eq!(code, 503, "forkpool stopped: {why}");
    assert!(why.contains("is stopped"), "{why}");
    pool.signal(Signal::SIGCONT);
    assert!(wait_until(LONG, || check().0 == 200), "{:?}", check());
}

/// The status file on a full filesystem: forkpool cannot write it, a worker
/// killed is replaced but the file still names it: down, and the reason says
/// the file has not changed (before: 200 up, the file looked whole).
#[test]
fn pool_health_notices_a_status_file_its_pool_no_longer_writes() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let dir = TempDir::new("h2-stale");
    let sdir = dir.join("st");
    if !common::mount_tmpfs(&sdir, "100k") {
        return;
    }
    let _m = common::Mount(sdir.clone());
    let status = sdir.join("status");
    let _pool = test_pool(dir.path(), &status);
    let (_h, port) = start_health(dir.path(), &[status.as_os_str()]);
    let check = || health_within(port, Duration::from_secs(20)).expect("pool-health answers");
    assert_eq!(check().0, 200);
    common::fill(&sdir);
    let victim = PoolStatus::read(&status).pids("ready")[0];
    kill(Pid::from_raw(victim), Signal::SIGKILL).expect("kill");
    assert!(
        wait_until(LONG, || check().1.contains("has not changed for")),
        "{:?}",
        check()
    );
    let (code, why) = check();
    assert_eq!(code, 503, "{why}");
    assert!(
        why.contains(&format!("worker pid {victim} is gone")),
        "{why}"
    );
    std::fs::remove_file(sdir.join("filler")).expect("rm");
}

/// -c URL: one request through the site's own socket with every check: up
/// while the demo site answers; down, within -t, when the URL does not answer.
#[test]
fn pool_health_checks_the_site_end_to_end_where_asked() {
    let site = Site::start("h2-e2e", Mode::Forkpool);
    site.wait_settled();
    let url = site.check_url();
    let (h, port) = start_health(
        site.dir.path(),
        &["-c".as_ref(), url.as_ref(), site.status.as_os_str()],
    );
    let (code, why) = health_within(port, Duration::from_secs(20)).expect("answers");
    assert_eq!(code, 200, "{why}");
    assert!(why.contains(&format!("{url} answers 200")), "{why}");
    drop(h);
    // a socket that accepts (the backlog) and never answers
    let mute = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mute_url = format!(
        "http://127.0.0.1:{}/release",
        mute.local_addr().expect("addr").port()
    );
    let (_h, port) = start_health(
        site.dir.path(),
        &[
            "-t".as_ref(),
            "500".as_ref(),
            "-c".as_ref(),
            mute_url.as_ref(),
            site.status.as_os_str(),
        ],
    );
    let (code, why) = health_within(port, Duration::from_secs(20)).expect("answers");
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("does not answer within 500 ms"), "{why}");
}
