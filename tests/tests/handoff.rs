//! forkpool --handoff (issue 30), with the real binaries: tcplisten + forkpool
//! -m cutover --handoff + the demo app. Under 16 keep-alive clients, 20
//! deploys close no connection (the clients made 16 connections in all) and cost
//! nothing: 0 failed, mixed, flapping, retried; the same run with an app that
//! does not take part (FORKPOOL_HANDOFF_FD removed) still deploys, its
//! connections closed as without the option; a connection handed over in the
//! middle of a pipeline is answered in order, each request once, the one in
//! hand by the old release and the rest by the new; a kept connection is
//! still handed over after an in-place upgrade (USR2) of forkpool; with the
//! verified switch (--confirm-timeout), the parked generation hands its kept
//! connections to the new one at the park (TSTP: the app stops accepting,
//! finishes what it holds, hands over, says `parked`), and a revert hands
//! them all back, none closed. With -m rolling --handoff the clients keep
//! their connections over deploys too. With a descriptor limit below the
//! clients (64, soft or soft and hard, for 60 of them) none is lost either:
//! forkpool raises its own, its workers keep theirs, and it takes in only
//! what it has room for.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use integration_tests::*;
use nix::sys::signal::Signal;

mod common;
use common::make_release;

const LONG: Duration = Duration::from_secs(45);

fn switch(site: &Path, id: &str) {
    switch_current(site, id, LONG);
}

/// tcplisten + forkpool -m MODE --handoff (cutover unless said), 4 workers
/// of `current`, each `wrap` (words before the release's `./run`: `env -u
/// ...` for an app that does not take part).
struct Site {
    p: Proc,
    port: u16,
    st: PathBuf,
    dir: PathBuf,
}

impl Site {
    fn start(dir: &Path, wrap: &[&str]) -> Site {
        Site::start_with(dir, "cutover", wrap, &[])
    }

    /// As start, in reload mode `mode`, with more forkpool options (`extra`).
    fn start_with(dir: &Path, mode: &str, wrap: &[&str], extra: &[&str]) -> Site {
        Site::start_under(dir, mode, wrap, extra, &[])
    }

    /// As start_with, the whole chain run by `pre` (words before tcplisten:
    /// `prlimit --nofile=...`).
    fn start_under(dir: &Path, mode: &str, wrap: &[&str], extra: &[&str], pre: &[&str]) -> Site {
        let st = dir.join("status");
        let mut c = match pre.split_first() {
            Some((prog, args)) => {
                let mut c = std::process::Command::new(prog);
                c.args(args).arg(bin("tcplisten"));
                c
            }
            None => cmd("tcplisten"),
        };
        c.args(["-1", "127.0.0.1", "0"]).arg(bin("forkpool"));
        c.args(["-v", "-S"]).arg(&st).args(extra);
        c.args([
            "-n",
            "4",
            "-m",
            mode,
            "--handoff",
            "-d",
            "3",
            "-k",
            "5000",
            "-p",
        ]);
        c.arg(dir.join("current")).args(wrap).arg("./run");
        c.current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("log")).expect("log"))
            .stdin(Stdio::null());
        let mut p = Proc::spawn(c);
        let (line, _) = read_line_timeout(p.stdout(), LONG).expect("tcplisten prints the port");
        let port = line.trim().parse().expect("port");
        let s = Site {
            p,
            port,
            st,
            dir: dir.to_path_buf(),
        };
        s.serving(1);
        s
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Wait until generation `g` serves, its reload over.
    fn serving(&self, g: u64) {
        let ok = wait_until(LONG, || {
            let s = PoolStatus::read(&self.st);
            s.num("serving_generation") == g
                && s.get("reload") != "running"
                && s.gen_pids(g, "ready").len() == 4
        });
        assert!(ok, "generation {g} never served\n{}", self.log());
    }

    /// Switch `current` to `id`, HUP, wait until generation `g` serves.
    fn deploy(&self, id: &str, g: u64) {
        switch(&self.dir, id);
        self.p.signal(Signal::SIGHUP);
        self.serving(g);
    }
}

/// `deploys` deploys in reload mode `mode` under 16 keep-alive clients: the
/// probe's JSON.
fn deploys_under_probe(tag: &str, mode: &str, wrap: &[&str], deploys: u64) -> (String, String) {
    let dir = TempDir::new(tag);
    let d = dir.path();
    for g in 1..=deploys + 1 {
        make_release(d, &format!("r{g}"), "");
    }
    switch(d, "r1");
    let site = Site::start_with(d, mode, wrap, &[]);
    let probe = Probe::spawn(
        site.port,
        &["-c", "16", "--json", "-t", "30000"],
        true,
        d.join("probe.err"),
        LONG,
    );
    probe.wait_seen("r1");
    for g in 2..=deploys + 1 {
        let id = format!("r{g}");
        site.deploy(&id, g);
        probe.wait_seen(&id);
    }
    let (_, json) = probe.stop();
    eprintln!("{tag}: {json}");
    assert!(
        json_count(&json, "requests") > 500,
        "the clients ran: {json}"
    );
    assert_eq!(json_count(&json, "failed"), 0, "{json}\n{}", site.log());
    assert_eq!(json_count(&json, "mixed"), 0, "{json}");
    assert_eq!(json_count(&json, "flapping"), 0, "{json}");
    (json, site.log())
}

/// Issue 30's flake (5 retried, 21 connects): under load (a CPU hog, load
/// 10 to 30) it failed 5 runs in 15, 4 connections lost a time. A new worker
/// released and passed its share of connections, then told to stop (the next
/// deploy) before it had read them (off the CPU; or still in its hold wait),
/// exited with them on its end, which closed them. The app now sends back
/// what waits on its end when it stops: 0 in 35 runs under a load of 14 to 21.
#[test]
fn deploys_hand_every_kept_connection_over_nothing_retried() {
    // The test: 16 keep-alive clients, 20 deploys.
    let (json, log) = deploys_under_probe("handoff", "cutover", &[], 20);
    assert_eq!(json_count(&json, "retried"), 0, "{json}\n{log}");
    // The 16 clients' first connections served every request of 20 deploys.
    assert_eq!(json_count(&json, "connects"), 16, "{json}\n{log}");
}

/// Rolling (`-m rolling --handoff`): each old worker hands its kept
/// connections over as it retires, one at a time, to the new generation's
/// ready workers; the clients keep their connections as in a cutover, and
/// none sees the old release after the new (a connection, once moved, is
/// served by the new generation only; no client connects again).
#[test]
fn a_rolling_deploy_hands_every_kept_connection_over_too() {
    let (json, log) = deploys_under_probe("handoff-rolling", "rolling", &[], 5);
    assert_eq!(json_count(&json, "retried"), 0, "{json}\n{log}");
    assert_eq!(json_count(&json, "connects"), 16, "{json}\n{log}");
    assert!(log.contains("handed "), "{log}");
}

#[test]
fn an_app_that_does_not_take_part_deploys_as_without_the_option() {
    let (json, _) = deploys_under_probe(
        "handoff-no",
        "cutover",
        &["env", "-u", "FORKPOOL_HANDOFF_FD"],
        5,
    );
    // Its kept connections are closed at each stop, as without --handoff.
    assert!(json_count(&json, "connects") > 16, "{json}");
}

/// A deploy under 60 keep-alive clients, the chain run with descriptor
/// limit `nofile` (prlimit's `soft:hard`): the probe's JSON, the log, the
/// site (still running).
fn deploy_under_limit(tag: &str, nofile: &str) -> (String, String, Site, TempDir) {
    let dir = TempDir::new(tag);
    let d = dir.path();
    make_release(d, "r1", "");
    make_release(d, "r2", "");
    switch(d, "r1");
    let arg = format!("--nofile={nofile}");
    let site = Site::start_under(d, "cutover", &[], &[], &["prlimit", &arg]);
    let probe = Probe::spawn(
        site.port,
        &["-c", "60", "--json", "-t", "30000"],
        true,
        d.join("probe.err"),
        LONG,
    );
    probe.wait_seen("r1");
    // Every client connected before the deploy: all 60 are handed over.
    let all = wait_until(LONG, || served_connections(site.port) >= 60);
    assert!(all, "{} connections", served_connections(site.port));
    site.deploy("r2", 2);
    probe.wait_seen("r2");
    let (_, json) = probe.stop();
    eprintln!("{tag}: {json}");
    assert_eq!(json_count(&json, "mixed"), 0, "{json}");
    let log = site.log();
    (json, log, site, dir)
}

/// Established connections the server side holds on `port` (/proc/net/tcp).
fn served_connections(port: u16) -> usize {
    let local = format!(":{port:04X} ");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && format!("{} ", f[1]).ends_with(&local) && f[3] == "01"
        })
        .count()
}

/// A process's "Max open files" (soft, hard) from /proc/PID/limits.
fn nofile_of(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("Max open files");
    let mut w = line["Max open files".len()..].split_whitespace();
    (w.next().unwrap().to_string(), w.next().unwrap().to_string())
}

/// At a cutover every kept connection of the pool passes through forkpool
/// at once: with a soft limit below the clients (here 64 for 60 clients,
/// forkpool's own 25 or so descriptors beside them) the kernel closed those
/// it had no descriptor for, without a word: requests retried, and failed
/// (reset) where the client's next request had come. forkpool --handoff
/// now raises its soft limit to the hard one; its workers keep the one
/// they were given.
#[test]
fn the_hand_over_is_not_bound_by_a_low_soft_descriptor_limit() {
    let (json, log, site, _dir) = deploy_under_limit("handoff-nofile", "64:");
    every_one_of_60_handed_over(&json, &log);
    let (soft, hard) = nofile_of(site.p.pid().as_raw());
    assert_eq!(soft, hard, "forkpool's limit is raised");
    for pid in PoolStatus::read(&site.st).gen_pids(2, "ready") {
        assert_eq!(
            nofile_of(pid).0,
            "64",
            "worker {pid} keeps the limit it was given"
        );
    }
    // An in-place upgrade: the next image is given 64 too, raises it again,
    // and its workers get 64.
    site.p.signal(Signal::SIGUSR2);
    let upgraded = wait_until(LONG, || {
        let st = PoolStatus::read(&site.st);
        st.get("upgrade") == "ok" && st.num("upgrades") == 1
    });
    assert!(upgraded, "no upgrade\n{}", site.log());
    make_release(&site.dir, "r3", "");
    site.deploy("r3", 3);
    assert_eq!(nofile_of(site.p.pid().as_raw()), (hard.clone(), hard));
    for pid in PoolStatus::read(&site.st).gen_pids(3, "ready") {
        assert_eq!(nofile_of(pid).0, "64", "worker {pid} after the upgrade");
    }
}

/// With the hard limit as low (nothing to raise), forkpool takes in only
/// what it has descriptors for and leaves the rest on the workers' ends
/// until what it holds has gone on: none is lost. (Taking in all of them,
/// it lost 17 to 40 a deploy here, each closed by the kernel: a retry, or
/// a reset where the client's next request had come.)
#[test]
fn with_a_low_hard_limit_forkpool_takes_in_what_it_has_room_for_and_loses_none() {
    let (json, log, _site, _dir) = deploy_under_limit("handoff-nofile-hard", "64:64");
    every_one_of_60_handed_over(&json, &log);
}

/// The 60 clients of `deploy_under_limit` kept their connections: none
/// failed, none retried, none closed for want of a descriptor.
fn every_one_of_60_handed_over(json: &str, log: &str) {
    assert_eq!(json_count(json, "failed"), 0, "{json}\n{log}");
    assert_eq!(json_count(json, "retried"), 0, "{json}\n{log}");
    assert_eq!(json_count(json, "connects"), 60, "{json}\n{log}");
    assert!(!log.contains("no descriptor left"), "{log}");
}

/// One GET request for `path`.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

/// Releases r1 and r2, the site on r1, and a connection r1 answered once.
fn kept_connection(tag: &str) -> (TempDir, Site, std::net::TcpStream) {
    let dir = TempDir::new(tag);
    let d = dir.path();
    // The test keeps the connection idle while it upgrades or deploys: longer
    // than the app's 5 s idle timeout on a busy machine (seen: closed idle
    // after 5.9 s under a load of 34, no hand-over at fault).
    make_release(d, "r1", "--idle-timeout 60000");
    make_release(d, "r2", "--idle-timeout 60000");
    switch(d, "r1");
    let site = Site::start(d, &[]);
    let mut s = connect(site.port);
    s.write_all(get("/release").as_bytes()).expect("send");
    let r = read_response(&mut s).expect("a response");
    assert_eq!(r.header("x-release").as_deref(), Some("r1"));
    (dir, site, s)
}

#[test]
fn a_connection_handed_over_mid_pipeline_is_answered_in_order_old_then_new() {
    let (dir, site, mut s) = kept_connection("handoff-pipe");
    let d = dir.path();
    // A request in hand when the old worker is told to stop: its head not
    // whole yet.
    let whole = get("/release?n=1");
    let (head, rest) = whole.split_at(whole.len() - 2);
    s.write_all(head.as_bytes()).expect("send");
    switch(d, "r2");
    site.p.signal(Signal::SIGHUP);
    site.serving(2);
    // Its end and three more, at once: the old worker reads only its own.
    let mut pipeline = rest.to_string();
    for n in 2..=4 {
        pipeline.push_str(&get(&format!("/release?n={n}")));
    }
    s.write_all(pipeline.as_bytes()).expect("send");
    let mut got = Vec::new();
    for _ in 1..=4 {
        let r = read_response(&mut s)
            .unwrap_or_else(|| panic!("answered so far: {got:?}\n{}", site.log()));
        assert_eq!(r.status, 200, "{}", r.head);
        got.push(r.header("x-release").unwrap_or_default());
    }
    assert_eq!(got, ["r1", "r2", "r2", "r2"], "{}", site.log());
    // Still open, served by the new release.
    s.write_all(get("/release").as_bytes()).expect("send");
    let r = read_response(&mut s).expect("the connection is kept");
    assert_eq!(r.header("x-release").as_deref(), Some("r2"));
    assert!(
        site.log().contains("handed 1 connections to generation 2"),
        "{}",
        site.log()
    );
}

#[test]
fn the_hand_over_works_on_after_an_in_place_upgrade() {
    let (_dir, site, mut s) = kept_connection("handoff-usr2");
    // USR2: the next image gets the workers' hand-over ends in the state.
    site.p.signal(Signal::SIGUSR2);
    let upgraded = wait_until(LONG, || {
        let st = PoolStatus::read(&site.st);
        st.get("upgrade") == "ok" && st.num("upgrades") == 1
    });
    assert!(upgraded, "no upgrade\n{}", site.log());
    site.deploy("r2", 2);
    s.write_all(get("/release").as_bytes()).expect("send");
    let r = read_response(&mut s)
        .unwrap_or_else(|| panic!("the kept connection was closed\n{}", site.log()));
    assert_eq!(r.header("x-release").as_deref(), Some("r2"));
}

/// What a client saw: each answer (arrival, release, status).
type Answers = Vec<(Instant, String, u16)>;

/// One keep-alive client of the test's own (beside the probe): GET / one
/// after another on one connection, a fresh one only when it is closed;
/// each answer's release, status and arrival time; its connects.
struct Client {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(Answers, usize)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn spawn(port: u16) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((Vec::new(), 0)));
        let (st, se) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut conn: Option<std::net::TcpStream> = None;
            while !st.load(Ordering::Relaxed) {
                let s = conn.get_or_insert_with(|| {
                    se.lock().unwrap().1 += 1;
                    connect(port)
                });
                let r = s
                    .write_all(get("/").as_bytes())
                    .ok()
                    .and_then(|()| read_response(s));
                match r {
                    Some(r) => {
                        let id = r.header("x-release").unwrap_or_default();
                        se.lock().unwrap().0.push((Instant::now(), id, r.status));
                    }
                    None => conn = None,
                }
            }
        });
        Client {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Whether it got an answer of `release` after `since`.
    fn answered(&self, release: &str, since: Instant) -> bool {
        let seen = self.seen.lock().unwrap();
        seen.0.iter().any(|(t, id, _)| *t > since && id == release)
    }

    /// Stop it: (answers, connects).
    fn stop(mut self) -> (Answers, usize) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("client thread");
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// The verified switch with --handoff: tcplisten + forkpool -m cutover
/// --handoff -C control --confirm-timeout 20000, r1 serving under the probe's
/// 16 keep-alive clients, r2 (`r2_flags`) deployed by a HUP: pending, r1's
/// workers parked, their 16 connections handed to r2 at the park. 4 clients
/// of the test's own connect during the window (the new generation takes
/// them) and get r2's answer. Then `verdict` (poolctl confirm or revert). Returns the probe's
/// JSON, the 4 clients' answers and connects, the instant the verdict was
/// given, the log.
fn verified_deploy(
    tag: &str,
    r2_flags: &str,
    verdict: &str,
    after: &str,
    handed: (u64, u64),
) -> (String, Vec<(Answers, usize)>, Instant, String) {
    let dir = TempDir::new(tag);
    let d = dir.path();
    make_release(d, "r1", "");
    make_release(d, "r2", r2_flags);
    switch(d, "r1");
    let control = d.join("control");
    let control = control.to_str().expect("path");
    let site = Site::start_with(
        d,
        "cutover",
        &[],
        &["-C", control, "--confirm-timeout", "20000"],
    );
    let probe = Probe::spawn(
        site.port,
        &["-c", "16", "--json", "-t", "30000"],
        true,
        d.join("probe.err"),
        LONG,
    );
    probe.wait_seen("r1");
    switch(d, "r2");
    site.p.signal(Signal::SIGHUP);
    let pending = wait_until(LONG, || {
        let s = PoolStatus::read(&site.st);
        s.get("verify") == "pending" && s.num("serving_generation") == 2
    });
    assert!(pending, "no pending switch\n{}", site.log());
    let t_switch = Instant::now();
    let clients: Vec<Client> = (0..4).map(|_| Client::spawn(site.port)).collect();
    let took = wait_until(LONG, || clients.iter().all(|c| c.answered("r2", t_switch)));
    assert!(
        took,
        "the new generation answered no new client\n{}",
        site.log()
    );
    let t_verdict = Instant::now();
    let mut c = cmd("poolctl");
    c.args([verdict, "-t", "30"]).arg(&site.st);
    let (code, out, err) = run(c, LONG);
    assert_eq!(code, 0, "{verdict}: {out}{err}\n{}", site.log());
    // Every client of the test answered by `after` once more, on whatever
    // connection it has; the probe's clients too.
    let on = wait_until(LONG, || {
        clients.iter().all(|c| c.answered(after, t_verdict))
    });
    assert!(on, "a client hangs after {verdict}\n{}", site.log());
    probe.wait_seen(after);
    // forkpool handed `handed.1` connections to generation `handed.0` (the
    // parked ones' at the park, all of them back at a revert).
    let (g, count) = handed;
    let all = wait_until(LONG, || handed_to(&site.log(), g) >= count);
    assert!(all, "not {count} handed to {g}\n{}", site.log());
    let seen: Vec<_> = clients.into_iter().map(Client::stop).collect();
    let (_, json) = probe.stop();
    eprintln!("{tag}: {json}");
    (json, seen, t_verdict, site.log())
}

#[test]
fn a_revert_hands_the_new_generations_connections_back_and_the_parked_ones_serve_on() {
    // r2 answers 500 to everything: a release that fails verification.
    let (json, seen, t_revert, log) =
        verified_deploy("handoff-revert", "--fail-requests", "revert", "r1", (1, 20));
    // The probe's 16 clients, handed to r2 at the park, got its 500s in the
    // window, like every new client, and are answered by r1 again on the
    // same connections after the revert: the only failures are r2's
    // answers, nothing retried, 16 connections in all.
    assert_eq!(
        json_count(&json, "failed"),
        common::responses_of(&json, "r2"),
        "{json}\n{log}"
    );
    assert_eq!(json_count(&json, "retried"), 0, "{json}\n{log}");
    assert_eq!(json_count(&json, "connects"), 16, "{json}\n{log}");
    assert_eq!(json_count(&json, "mixed"), 0, "{json}");
    for (answers, connects) in &seen {
        // The connection r2 took went back to r1: the same one.
        assert_eq!(*connects, 1, "{answers:?}\n{log}");
        // After r1 answered it again, never r2 (nor a failure) again: the
        // 500s are all before, in the window.
        let back = answers
            .iter()
            .position(|(t, id, _)| *t > t_revert && id == "r1")
            .expect("answered by r1 after the revert");
        let after: Vec<_> = answers[back..]
            .iter()
            .filter(|(_, id, status)| id != "r1" || *status != 200)
            .collect();
        assert!(after.is_empty(), "{after:?}\n{log}");
        assert!(answers[..back]
            .iter()
            .any(|(_, id, st)| id == "r2" && *st == 500));
    }
    // The probe's 16 went to r2 at the park; those and the 4 the new
    // generation took came back to the old one.
    assert_eq!(handed_to(&log, 2), 16, "{log}");
    assert_eq!(handed_to(&log, 1), 20, "{log}");
}

#[test]
fn a_confirm_hands_the_parked_generations_connections_to_the_new_one() {
    let (json, seen, t_confirm, log) =
        verified_deploy("handoff-confirm", "", "confirm", "r2", (2, 16));
    // The 16 connections of the parked workers were handed to r2 at the
    // park: the same connections served by r2 now, none closed.
    assert_eq!(json_count(&json, "failed"), 0, "{json}\n{log}");
    assert_eq!(json_count(&json, "retried"), 0, "{json}\n{log}");
    assert_eq!(json_count(&json, "connects"), 16, "{json}\n{log}");
    assert_eq!(json_count(&json, "flapping"), 0, "{json}");
    for (answers, connects) in &seen {
        assert_eq!(*connects, 1, "{answers:?}\n{log}");
        assert!(
            answers.iter().all(|(_, id, st)| id == "r2" && *st == 200),
            "{answers:?}"
        );
        assert!(answers.iter().any(|(t, _, _)| *t > t_confirm));
    }
    assert_eq!(handed_to(&log, 2), 16, "{log}");
}

/// The connections forkpool's log says it handed to generation `g`.
fn handed_to(log: &str, g: u64) -> u64 {
    let tail = format!(" connections to generation {g}");
    log.lines()
        .filter_map(|l| {
            l.split_once("handed ")?
                .1
                .strip_suffix(&tail)?
                .parse::<u64>()
                .ok()
        })
        .sum()
}
