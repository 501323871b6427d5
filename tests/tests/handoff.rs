//! forkpool --handoff (issue 30), with the real binaries: tcplisten + forkpool
//! -m cutover --handoff + the demo app. Under 16 keep-alive clients, deploys
//! close no connection (the clients made 16 connections in all) and cost
//! nothing: 0 failed, mixed, flapping, retried; the same run with an app that
//! does not take part (FORKPOOL_HANDOFF_FD removed) still deploys, its
//! connections closed as without the option; a connection handed over in the
//! middle of a pipeline is answered in order, each request once, the one in
//! hand by the old release and the rest by the new; a kept connection is
//! still handed over after an in-place upgrade (USR2) of forkpool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use integration_tests::*;
use nix::sys::signal::Signal;

mod common;
use common::make_release;

const LONG: Duration = Duration::from_secs(45);

fn switch(site: &Path, id: &str) {
    switch_current(site, id, LONG);
}

/// tcplisten + forkpool -m cutover --handoff, 4 workers of `current`, each
/// `wrap` (words before the release's `./run`: `env -u ...` for an app that
/// does not take part).
struct Site {
    p: Proc,
    port: u16,
    st: PathBuf,
    dir: PathBuf,
}

impl Site {
    fn start(dir: &Path, wrap: &[&str]) -> Site {
        let st = dir.join("status");
        let mut c = cmd("tcplisten");
        c.args(["-1", "127.0.0.1", "0"]).arg(bin("forkpool"));
        c.args(["-v", "-S"]).arg(&st);
        c.args([
            "-n",
            "4",
            "-m",
            "cutover",
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

/// 5 deploys under 16 keep-alive clients: the probe's JSON.
fn deploys_under_probe(tag: &str, wrap: &[&str]) -> (String, String) {
    let dir = TempDir::new(tag);
    let d = dir.path();
    for g in 1..=6 {
        make_release(d, &format!("r{g}"), "");
    }
    switch(d, "r1");
    let site = Site::start(d, wrap);
    let probe = Probe::spawn(
        site.port,
        &["-c", "16", "--json", "-t", "30000"],
        true,
        d.join("probe.err"),
        LONG,
    );
    probe.wait_seen("r1");
    for g in 2..=6u64 {
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
    let (json, log) = deploys_under_probe("handoff", &[]);
    assert_eq!(json_count(&json, "retried"), 0, "{json}\n{log}");
    // The 16 clients' first connections served every request of 5 deploys.
    assert_eq!(json_count(&json, "connects"), 16, "{json}\n{log}");
}

#[test]
fn an_app_that_does_not_take_part_deploys_as_without_the_option() {
    let (json, _) = deploys_under_probe("handoff-no", &["env", "-u", "FORKPOOL_HANDOFF_FD"]);
    // Its kept connections are closed at each stop, as without --handoff.
    assert!(json_count(&json, "connects") > 16, "{json}");
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
