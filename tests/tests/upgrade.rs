//! USR2: forkpool and loop-forever upgrade themselves in place, run as a
//! user's shell would. Each chain runs a copy of the tool at a path of its
//! own (dir/forkpool); "two builds" are that binary and the same binary with
//! bytes appended (a different file: a different build id, `version=`), put
//! at the path by rename, as an install would. Proven here: 20 upgrades
//! alternating the two builds under 16 clients (keep-alive on and off):
//! nothing failed, mixed or flapping, the pid and the worker pids unchanged,
//! the version alternating; refused binaries (not executable, exits 1, a state
//! of another version) leave the old image serving; an upgrade asked during a
//! reload waits for its end; a HUP and a TERM sent while the signals are
//! blocked for the exec are handled by the new image; a worker killed during
//! an upgrade is reaped and replaced after it; loop-forever under load; what
//! the chain inherited (setlock's lock, NOTIFY_SOCKET, LISTEN_*) survives.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::{assert_clean, make_release, Chain, LONG};
use integration_tests::*;
use nix::sys::signal::Signal;

fn worker_pids(s: &PoolStatus) -> Vec<(usize, i32)> {
    let mut v: Vec<(usize, i32)> = s.workers.iter().map(|w| (w.0, w.2)).collect();
    v.sort();
    v
}

/// A worker: ready on fd 3 after `delay` seconds (the file, default 0),
/// then it sleeps until told to stop.
const SLEEPER: &str =
    "#!/bin/sh\nd=$(cat delay 2>/dev/null || echo 0)\nsleep \"$d\"\necho >&3\nexec sleep 1000\n";

// ------------------------------------------------- 20 upgrades under load

/// uptime-probe with `clients`, keep-alive or not, until stopped.
fn probe(port: u16, dir: &Path, clients: usize, keepalive: bool) -> (Proc, PathBuf) {
    let err = dir.join(format!("probe-{keepalive}.err"));
    let mut c = cmd("uptime-probe");
    c.args(["--json", "-c", &clients.to_string(), "-t", "30000"]);
    if !keepalive {
        c.arg("--no-keepalive");
    }
    c.arg(format!("http://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err).expect("probe log"));
    let p = Proc::spawn(c);
    assert!(
        wait_until(LONG, || std::fs::read_to_string(&err)
            .is_ok_and(|s| s.contains("release r1 first seen"))),
        "the probe never saw r1"
    );
    (p, err)
}

fn stop_probe(mut p: Proc) -> (i32, String) {
    let out = p.stdout();
    p.signal(Signal::SIGINT);
    let json = read_all_timeout(out, LONG).expect("the probe's results");
    let st = p.wait_timeout(LONG).expect("the probe exits after INT");
    (st.code().unwrap_or(-1), json)
}

#[test]
fn twenty_upgrades_alternating_two_builds_under_16_clients() {
    let t = TempDir::new("upgrade-20");
    let (a, b) = two_builds(t.path(), "forkpool");
    make_release(t.path(), "r1", "");
    std::os::unix::fs::symlink("releases/r1", t.join("current")).expect("current");
    let chain = Chain::start(
        t.path(),
        "forkpool",
        &[
            "-n", "4", "-m", "cutover", "-d", "3", "-t", "20000", "-p", "current",
        ],
        &["./run"],
        &[],
    );
    let before = chain.settled(4);
    let pid = before.get("pid").to_string();
    let workers = worker_pids(&before);
    let (ka, _) = probe(chain.port, t.path(), 8, true);
    let (nka, _) = probe(chain.port, t.path(), 8, false);
    let mut versions = vec![before.get("version").to_string()];
    for i in 0..20 {
        install(if i % 2 == 0 { &b } else { &a }, &chain.exe);
        let (code, out) = chain.poolctl_upgrade();
        assert_eq!(code, 0, "upgrade {i}: {out}\n{}", chain.log());
        let s = chain.status();
        assert_eq!(s.get("upgrade"), "ok");
        assert_eq!(s.num("upgrades"), i + 1);
        assert_eq!(s.get("pid"), pid, "upgrade {i}: the pid changed");
        assert_eq!(worker_pids(&s), workers, "upgrade {i}: the workers changed");
        versions.push(s.get("version").to_string());
    }
    for (i, w) in versions.windows(2).enumerate() {
        assert_ne!(
            w[0], w[1],
            "upgrade {i}: the version did not change: {versions:?}"
        );
    }
    for (i, w) in versions.windows(3).enumerate() {
        assert_eq!(w[0], w[2], "upgrade {i}: not alternating: {versions:?}");
    }
    for (p, what) in [(ka, "keep-alive"), (nka, "no keep-alive")] {
        let (code, json) = stop_probe(p);
        assert_clean(code, &json, what);
        assert_eq!(json_number(&json, "flapping"), 0.0, "{what}: {json}");
    }
    assert!(alive(pid.parse().expect("pid")));
}

// ------------------------------------------------------ refused binaries

#[test]
fn refused_binaries_leave_the_old_image_serving() {
    let t = TempDir::new("upgrade-refused");
    let (_, b) = two_builds(t.path(), "forkpool");
    make_release(t.path(), "r1", "");
    std::os::unix::fs::symlink("releases/r1", t.join("current")).expect("current");
    let chain = Chain::start(
        t.path(),
        "forkpool",
        &["-n", "2", "-d", "3", "-p", "current"],
        &["./run"],
        &[],
    );
    let before = chain.settled(2);
    let version = before.get("version").to_string();
    // Not executable.
    let noexec = t.join("noexec");
    std::fs::copy(&b, &noexec).expect("copy");
    std::fs::set_permissions(&noexec, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    // Exits 1 whatever it is asked.
    let exits1 = t.join("exits1");
    script(&exits1, "#!/bin/sh\necho 'broken build' >&2\nexit 1\n");
    // A build that reads another state version: the real forkpool handed the
    // state with its version line rewritten (as a build of another format sees it).
    let other = t.join("other-version");
    script(
        &other,
        &format!(
            "#!/bin/sh\nsed '1s/^forkpool-state .*/forkpool-state 999/' /proc/self/fd/$FORKPOOL_STATE_FD > \"$0.state\"\nexec 9< \"$0.state\"\nFORKPOOL_STATE_FD=9 exec '{}' \"$@\"\n",
            b.display()
        ),
    );
    let cases = [
        (&noexec, "Permission denied"),
        (&exits1, "broken build"),
        (&other, "state version 999"),
    ];
    for (n, (bad, why)) in cases.into_iter().enumerate() {
        install(bad, &chain.exe);
        if bad == &noexec {
            std::fs::set_permissions(&chain.exe, std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        let (code, out) = chain.poolctl_upgrade();
        assert_eq!(code, 1, "{why}: poolctl said: {out}\n{}", chain.log());
        assert!(out.contains(why), "{why}: poolctl said: {out}");
        let s = chain.status();
        assert_eq!(s.get("upgrade"), "failed");
        assert!(
            s.get("reason").contains(why),
            "{why}: {:?}",
            s.get("reason")
        );
        assert_eq!(s.num("upgrade_failures"), n as u64 + 1);
        assert_eq!(s.get("version"), version, "{why}: another image runs");
        assert_eq!(s.get("pid"), before.get("pid"));
        assert_eq!(worker_pids(&s), worker_pids(&before));
        assert_eq!(common::http_release(chain.port).as_deref(), Some("r1"));
        let warned = chain
            .log()
            .lines()
            .filter(|l| l.starts_with("forkpool: warning: upgrade refused:") && l.contains(why))
            .count();
        assert_eq!(warned, 1, "{why}: one warning line:\n{}", chain.log());
    }
    // And a good build after all that.
    install(&b, &chain.exe);
    let (code, out) = chain.poolctl_upgrade();
    assert_eq!(code, 0, "{out}\n{}", chain.log());
    let s = chain.status();
    assert_eq!((s.get("upgrade"), s.get("reason")), ("ok", ""));
    assert_ne!(s.get("version"), version);
    assert_eq!(worker_pids(&s), worker_pids(&before));
}

// ------------------------------------------------- during a reload, signals

#[test]
fn an_upgrade_asked_during_a_reload_waits_for_its_end() {
    let t = TempDir::new("upgrade-reload");
    let (_, b) = two_builds(t.path(), "forkpool");
    script(&t.join("w"), SLEEPER);
    let chain = Chain::start(t.path(), "forkpool", &["-n", "2", "-d", "3"], &["./w"], &[]);
    let before = chain.settled(2);
    std::fs::write(t.join("delay"), "3").expect("delay");
    chain.p.signal(Signal::SIGHUP);
    assert!(wait_until(LONG, || chain.status().get("reload") == "running"));
    install(&b, &chain.exe);
    chain.p.signal(Signal::SIGUSR2);
    assert!(
        wait_until(LONG, || chain.status().get("upgrade") == "running"),
        "{:?}",
        chain.status()
    );
    assert_eq!(
        chain.status().get("reload"),
        "running",
        "the reload went on"
    );
    assert!(wait_until(LONG, || chain.status().get("upgrade") == "ok"));
    let s = chain.settled(2);
    assert_eq!(s.get("reload"), "ok");
    assert_eq!(s.num("serving_generation"), 2);
    assert_ne!(s.get("version"), before.get("version"));
    let log = chain.log();
    let done = log
        .find("reload to generation 2 done")
        .expect("reload done");
    let upgraded = log.find("upgraded in place").expect("upgraded");
    assert!(done < upgraded, "the upgrade did not wait:\n{log}");
}

#[test]
fn hup_and_term_sent_while_the_signals_are_blocked_are_handled_after_the_exec() {
    let t = TempDir::new("upgrade-signals");
    let (a, b) = two_builds(t.path(), "forkpool");
    script(&t.join("w"), SLEEPER);
    let hook = [("FORKPOOL_UPGRADE_PAUSE_MS", "1500")];
    let mut chain = Chain::start(
        t.path(),
        "forkpool",
        &["-n", "2", "-d", "3"],
        &["./w"],
        &hook,
    );
    let before = chain.settled(2);
    // HUP during the upgrade: the new image reloads.
    install(&b, &chain.exe);
    chain.p.signal(Signal::SIGUSR2);
    chain.wait_log("signals blocked, pausing");
    chain.p.signal(Signal::SIGHUP);
    assert!(
        wait_until(LONG, || {
            let s = chain.status();
            s.get("upgrade") == "ok" && s.num("serving_generation") == 2
        }),
        "{:?}\n{}",
        chain.status(),
        chain.log()
    );
    let s = chain.settled(2);
    assert_ne!(s.get("version"), before.get("version"));
    assert_eq!(s.get("pid"), before.get("pid"));
    let gen2 = s.pids("ready");
    // TERM during the next upgrade: the new image stops the pool, exits 0.
    install(&a, &chain.exe);
    let log_len = chain.log().len();
    chain.p.signal(Signal::SIGUSR2);
    assert!(wait_until(LONG, || chain.log()[log_len..]
        .contains("signals blocked, pausing")));
    chain.p.signal(Signal::SIGTERM);
    let st = chain
        .p
        .wait_timeout(LONG)
        .expect("the pool exits after TERM");
    assert_eq!(st.code(), Some(0), "{}", chain.log());
    assert_eq!(
        chain.log().matches("upgraded in place").count(),
        2,
        "{}",
        chain.log()
    );
    for pid in gen2 {
        assert!(!alive(pid), "worker {pid} outlived the pool");
    }
}

#[test]
fn a_worker_killed_during_an_upgrade_is_reaped_and_replaced_after_it() {
    let t = TempDir::new("upgrade-kill");
    let (_, b) = two_builds(t.path(), "forkpool");
    script(&t.join("w"), SLEEPER);
    let hook = [("FORKPOOL_UPGRADE_PAUSE_MS", "1000")];
    let chain = Chain::start(
        t.path(),
        "forkpool",
        &["-n", "3", "-d", "3"],
        &["./w"],
        &hook,
    );
    let before = chain.settled(3);
    let victim = before.workers[1].clone();
    let victim_pid = victim.2;
    install(&b, &chain.exe);
    chain.p.signal(Signal::SIGUSR2);
    chain.wait_log("signals blocked, pausing");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim_pid), Signal::SIGKILL).expect("kill");
    assert!(wait_until(LONG, || chain.status().get("upgrade") == "ok"));
    let replaced = wait_until(LONG, || {
        let s = chain.status();
        s.pids("ready").len() == 3 && !s.pids("ready").contains(&victim_pid)
    });
    assert!(replaced, "{:?}\n{}", chain.status(), chain.log());
    // Reaped: not even a zombie left with its pid.
    assert!(
        !Path::new(&format!("/proc/{victim_pid}")).exists(),
        "worker {victim_pid} was not reaped"
    );
    let after = chain.status();
    for w in &before.workers {
        if w.2 != victim.2 {
            assert!(
                after.workers.contains(w),
                "{w:?} changed: {:?}",
                after.workers
            );
        }
    }
    assert!(
        chain.log().contains("was killed by SIGKILL"),
        "{}",
        chain.log()
    );
}

// ------------------------------------------------- what the chain inherited

#[test]
fn the_lock_the_notify_socket_and_listen_variables_survive() {
    let t = TempDir::new("upgrade-inherited");
    let (_, b) = two_builds(t.path(), "forkpool");
    // A worker that writes what it got, then is ready.
    script(
        &t.join("w"),
        "#!/bin/sh\necho \"$$ LISTEN_FDS=$LISTEN_FDS LISTEN_PID=$LISTEN_PID\" >> env.log\necho >&3\nexec sleep 1000\n",
    );
    let sock_path = t.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind");
    sock.set_read_timeout(Some(LONG)).expect("timeout");
    let lock = t.join("lock");
    let setlock = bin("setlock");
    let wrap = [
        setlock.as_os_str(),
        std::ffi::OsStr::new("-n"),
        lock.as_os_str(),
    ];
    let notify = sock_path.to_string_lossy().into_owned();
    let chain = Chain::start_wrapped(
        t.path(),
        &wrap,
        "forkpool",
        &["-n", "2", "-d", "3"],
        &["./w"],
        &[
            ("NOTIFY_SOCKET", &notify),
            ("LISTEN_FDS", "1"),
            ("LISTEN_FDNAMES", "http"),
        ],
    );
    let before = chain.settled(2);
    let mut buf = [0u8; 4096];
    let first = sock
        .recv(&mut buf)
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    assert!(
        first.as_deref().is_ok_and(|m| m.contains("READY=1")),
        "{first:?}"
    );
    install(&b, &chain.exe);
    let (code, out) = chain.poolctl_upgrade();
    assert_eq!(code, 0, "{out}\n{}", chain.log());
    let pid = before.get("pid");
    let mut said = Vec::new();
    while !said.iter().any(|m: &String| m.contains("READY=1")) {
        let n = sock
            .recv(&mut buf)
            .expect("a notification after the upgrade");
        said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(said[0].contains("RELOADING=1"), "{said:?}");
    let ready = said.last().expect("READY=1");
    assert!(ready.contains(&format!("MAINPID={pid}")), "{said:?}");
    // The lock is still held (by the same process, through the upgrade).
    assert!(!common::lock_is_free(&lock), "the lock was lost");
    // A worker started by the new image gets LISTEN_* with its own pid.
    let victim = before.workers[0].2;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), Signal::SIGTERM).expect("kill");
    assert!(wait_until(LONG, || {
        let s = chain.status();
        s.pids("ready").len() == 2 && !s.pids("ready").contains(&victim)
    }));
    let s = chain.status();
    let newest = s.pids("ready").into_iter().max().expect("a worker");
    let env = std::fs::read_to_string(t.join("env.log")).expect("env.log");
    let line = format!("{newest} LISTEN_FDS=1 LISTEN_PID={newest}");
    assert!(env.contains(&line), "{line:?} not in:\n{env}");
    assert_eq!(s.get("pid"), pid);
}

// ------------------------------------------------------------ loop-forever

#[test]
fn loop_forever_upgraded_under_load_keeps_its_child() {
    let t = TempDir::new("upgrade-loop");
    let (a, b) = two_builds(t.path(), "loop-forever");
    make_release(t.path(), "r1", "");
    std::os::unix::fs::symlink("releases/r1", t.join("current")).expect("current");
    let chain = Chain::start(
        t.path(),
        "loop-forever",
        &["-d", "3"],
        &["sh", "-c", "cd -P current && exec ./run"],
        &[],
    );
    let before = chain.settled(1);
    let (ka, _) = probe(chain.port, t.path(), 8, true);
    let (nka, _) = probe(chain.port, t.path(), 8, false);
    let mut versions = vec![before.get("version").to_string()];
    for i in 0..10 {
        install(if i % 2 == 0 { &b } else { &a }, &chain.exe);
        let (code, out) = chain.poolctl_upgrade();
        assert_eq!(code, 0, "upgrade {i}: {out}\n{}", chain.log());
        let s = chain.status();
        assert_eq!(s.num("upgrades"), i + 1);
        assert_eq!(
            s.get("pid"),
            before.get("pid"),
            "upgrade {i}: the pid changed"
        );
        assert_eq!(s.workers, before.workers, "upgrade {i}: the child changed");
        versions.push(s.get("version").to_string());
    }
    for (i, w) in versions.windows(3).enumerate() {
        assert!(w[0] != w[1] && w[0] == w[2], "upgrade {i}: {versions:?}");
    }
    // Refused: the old image serves on; then HUP still restarts the child.
    let exits1 = t.join("exits1");
    script(&exits1, "#!/bin/sh\necho 'broken build' >&2\nexit 1\n");
    install(&exits1, &chain.exe);
    let (code, out) = chain.poolctl_upgrade();
    assert_eq!(code, 1, "{out}");
    let s = chain.status();
    assert_eq!(s.get("upgrade"), "failed");
    assert!(
        s.get("reason").contains("broken build"),
        "{:?}",
        s.get("reason")
    );
    assert_eq!(s.get("version"), versions[10]);
    for (p, what) in [(ka, "keep-alive"), (nka, "no keep-alive")] {
        let (code, json) = stop_probe(p);
        assert_clean(code, &json, what);
    }
    chain.p.signal(Signal::SIGHUP);
    assert!(wait_until(LONG, || {
        let s = chain.status();
        s.num("serving_generation") == 2 && s.get("reload") == "ok"
    }));
    assert_ne!(chain.status().workers, before.workers);
}

// ------------------------------------------------------------ demo/upgrade

#[test]
fn demo_upgrade_builds_upgrades_and_reports_a_refusal() {
    let t = TempDir::new("upgrade-demo");
    let bindir = demo_tools(t.path());
    let (_, b) = two_builds(t.path(), "forkpool");
    let state = t.join("state");
    let env = |c: &mut std::process::Command| {
        c.env("BIN", &bindir)
            .env("STATE", &state)
            .env_remove("DEADLINE")
            .env_remove("SERVE_MODE")
            .env_remove("RELOAD_MODE");
    };
    let mut serve = std::process::Command::new(repo().join("demo/serve"));
    env(&mut serve);
    serve
        .env("PORT", "0")
        .env("WORKERS", "2")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(t.join("serve.err")).expect("log"));
    let _serve = Proc::spawn(serve);
    let status = state.join("status");
    assert!(
        wait_until(LONG, || {
            let s = PoolStatus::read(&status);
            s.num("ready") == 2 && !s.get("version").is_empty()
        }),
        "the demo never served: {}",
        std::fs::read_to_string(t.join("serve.err")).unwrap_or_default()
    );
    let before = PoolStatus::read(&status);
    let upgrade = || {
        let mut c = std::process::Command::new(repo().join("demo/upgrade"));
        env(&mut c);
        run(c, Duration::from_secs(120))
    };
    // The build already runs: nothing to do.
    let (code, _, err) = upgrade();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing to upgrade"), "{err}");
    // A new build: upgraded, same pids.
    install(&b, &bindir.join("forkpool"));
    let (code, _, err) = upgrade();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("upgraded: forkpool build"), "{err}");
    let s = PoolStatus::read(&status);
    assert_ne!(s.get("version"), before.get("version"));
    assert_eq!(s.get("pid"), before.get("pid"));
    assert_eq!(worker_pids(&s), worker_pids(&before));
    // What forkpool -V says of a file is what the status file says once it runs.
    let (_, v, _) = run(
        cmd_at(&bindir.join("forkpool"), "-V"),
        Duration::from_secs(30),
    );
    assert!(
        v.trim().ends_with(&format!("build {}", s.get("version"))),
        "{v}"
    );
    // A refused build: exit 1 with the reason, the old one serves on.
    script(
        &t.join("exits1"),
        "#!/bin/sh\necho 'broken build' >&2\nexit 1\n",
    );
    install(&t.join("exits1"), &bindir.join("forkpool"));
    let (code, _, err) = upgrade();
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("refused") && err.contains("broken build"),
        "{err}"
    );
    let after = PoolStatus::read(&status);
    assert_eq!(after.get("version"), s.get("version"));
    assert_eq!(worker_pids(&after), worker_pids(&before));
    let port: u16 = std::fs::read_to_string(state.join("port"))
        .expect("port")
        .trim()
        .parse()
        .expect("port number");
    assert!(
        common::http_release(port).is_some(),
        "the site stopped answering"
    );
}

fn cmd_at(path: &Path, arg: &str) -> std::process::Command {
    let mut c = std::process::Command::new(path);
    c.arg(arg);
    c
}

#[test]
fn a_worker_still_starting_is_told_ready_through_its_adopted_pipe() {
    let t = TempDir::new("upgrade-starting");
    let (_, b) = two_builds(t.path(), "forkpool");
    script(&t.join("w"), SLEEPER);
    let chain = Chain::start(
        t.path(),
        "forkpool",
        &["-n", "2", "-d", "3", "-t", "20000"],
        &["./w"],
        &[],
    );
    chain.settled(2);
    std::fs::write(t.join("delay"), "3").expect("delay");
    chain.p.signal(Signal::SIGTTIN);
    assert!(wait_until(LONG, || chain.status().pids("starting").len() == 1));
    let starting = chain.status().pids("starting")[0];
    install(&b, &chain.exe);
    chain.p.signal(Signal::SIGUSR2);
    assert!(wait_until(LONG, || chain.status().get("upgrade") == "ok"));
    assert_eq!(
        chain.status().pids("starting"),
        vec![starting],
        "the upgrade outlasted the start: {:?}",
        chain.status()
    );
    let s = chain.settled(3);
    assert!(
        s.pids("ready").contains(&starting),
        "{s:?}\n{}",
        chain.log()
    );
    assert!(chain
        .log()
        .contains(&format!("(pid {starting}, generation 1) ready after")));
}
