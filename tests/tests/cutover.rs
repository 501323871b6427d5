//! forkpool -m cutover, run as a user's shell would: 20 cutovers of the demo app
//! behind tcplisten with 16 clients hammering (uptime-probe): nothing failed,
//! nothing mixed, no client ever saw an older release after a newer one; the same
//! run in rolling mode does flap (so the run can tell); the SIGSTOP hold of a
//! worker that ignores the hold descriptor (window measured, nothing failed); a
//! busy old worker delays the switch and connections wait for it; a HUP during
//! the switch; a broken new generation is discarded and the old one never stops.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use integration_tests::*;
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(45);

/// A process's state letter from /proc (R, S, T for stopped, ...).
fn proc_state(pid: i32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
        .unwrap_or('?')
}

/// A connection that an old worker has accepted and is serving (slowly); its
/// answer and when it came, from the thread's join.
fn request_in_hand(port: u16, accepts: &Path) -> std::thread::JoinHandle<(Option<u64>, Instant)> {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok();
        let _ = tx.send(());
        let mut out = String::new();
        if let Some(s) = s.as_mut() {
            let _ = s.set_read_timeout(Some(LONG));
            let _ = s.read_to_string(&mut out);
        }
        let g = out
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("gen="))
            .and_then(|g| g.parse().ok());
        (g, Instant::now())
    });
    rx.recv_timeout(LONG).expect("connected");
    let accepted = wait_until(LONG, || {
        std::fs::read_to_string(accepts).is_ok_and(|t| !t.is_empty())
    });
    assert!(accepted, "the connection was never accepted");
    h
}

/// tcplisten + forkpool with the status file in `dir`; the port tcplisten printed.
struct Chain {
    p: Proc,
    port: u16,
    st: PathBuf,
}

impl Chain {
    fn start(dir: &Path, forkpool_opts: &[&str], prog: &[&std::ffi::OsStr]) -> Chain {
        let st = dir.join("status");
        let mut c = cmd("tcplisten");
        c.args(["-1", "127.0.0.1", "0"]).arg(bin("forkpool"));
        c.args(["-v", "-S"]).arg(&st).args(forkpool_opts).args(prog);
        c.current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("log")).expect("log"))
            .stdin(Stdio::null());
        let mut p = Proc::spawn(c);
        let (line, _) = read_line_timeout(p.stdout(), LONG).expect("tcplisten prints the port");
        let port = line.trim().parse().expect("port");
        Chain { p, port, st }
    }

    fn status(&self) -> PoolStatus {
        PoolStatus::read(&self.st)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.st.with_file_name("log")).unwrap_or_default()
    }

    /// Wait until generation `g` serves (reload over, every worker of it ready).
    fn serving(&self, g: u64) -> PoolStatus {
        let ok = wait_until(LONG, || {
            let s = self.status();
            s.num("serving_generation") == g
                && s.get("reload") != "running"
                && s.gen_pids(g, "ready").len() == 4
                && s.workers.len() == 4
        });
        assert!(
            ok,
            "generation {g} never served: {:?}\n{}",
            self.status(),
            self.log()
        );
        self.status()
    }
}

// ------------------------------------------------------------ the demo app

/// releases/ID laid out as demo/lib.sh's build_release does: RELEASE, htdocs
/// with data-release, and bin/app, the release's code. Worker k becomes ready
/// k*30 ms after the others (a real app's start is uneven), which makes the
/// rolling overlap last long enough to be seen.
fn build_release(site: &Path, id: &str) {
    let d = site.join("releases").join(id);
    std::fs::create_dir_all(d.join("htdocs")).expect("mkdir");
    std::fs::create_dir_all(d.join("bin")).expect("mkdir");
    std::fs::write(d.join("RELEASE"), format!("{id}\n")).expect("RELEASE");
    std::fs::write(
        d.join("htdocs/index.html"),
        format!("<!doctype html>\n<html><body data-release=\"{id}\"><h1>Release {id}</h1></body></html>\n"),
    )
    .expect("index.html");
    let script = format!(
        "#!/bin/sh\nexec '{}' --slow-start $(( ${{FORKPOOL_WORKER:-0}} * 30 )) --root . --ready-fd 3 \"$@\"\n",
        bin("app").display()
    );
    let app = d.join("bin/app");
    std::fs::write(&app, script).expect("bin/app");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&app, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn switch(site: &Path, id: &str) {
    switch_current(site, id, LONG);
}

/// uptime-probe with 16 clients until INT; the releases it reports first
/// seeing arrive on the channel.
struct Probe {
    p: Proc,
    seen: mpsc::Receiver<String>,
}

impl Probe {
    fn start(port: u16, extra: &[&str]) -> Probe {
        let mut c = cmd("uptime-probe");
        c.args(["-c", "16", "--json", "-t", "30000"])
            .args(extra)
            .arg(format!("http://127.0.0.1:{port}/"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut p = Proc::spawn(c);
        let err = p.child.stderr.take().expect("stderr");
        let (tx, seen) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("uptime-probe: info: release ") {
                    if let Some((id, _)) = rest.split_once(" first seen") {
                        let _ = tx.send(id.to_string());
                    }
                }
            }
        });
        Probe { p, seen }
    }

    /// Wait until the probe has seen release `id` (and note the others it saw).
    fn wait_seen(&self, id: &str, all: &mut Vec<String>) {
        let end = Instant::now() + LONG;
        while !all.iter().any(|r| r == id) {
            let left = end.saturating_duration_since(Instant::now());
            match self.seen.recv_timeout(left) {
                Ok(r) => all.push(r),
                Err(_) => panic!("the probe never saw release {id} (saw {all:?})"),
            }
        }
    }

    /// INT, and the JSON it prints.
    fn finish(mut self) -> String {
        self.p.signal(Signal::SIGINT);
        let out = self.p.child.stdout.take().expect("stdout");
        let json = read_all_timeout(out, LONG).unwrap_or_default();
        self.p
            .wait_timeout(LONG)
            .expect("the probe exits after INT");
        json
    }
}

/// 20 deploys of the demo app (build, switch `current`, HUP, wait until the new
/// generation serves and the probe has seen it) under 16 hammering clients.
/// The probe's JSON.
fn twenty_deploys(mode: &str, probe_args: &[&str]) -> String {
    let dir = TempDir::new(&format!("cutover-{mode}"));
    let site = dir.path();
    for g in 1..=21 {
        build_release(site, &format!("r{g:02}"));
    }
    switch(site, "r01");
    let current = site.join("current");
    let chain = Chain::start(
        site,
        &[
            "-n", "4", "-m", mode, "-d", "3", "-t", "30000", "-k", "5000", "-p",
        ],
        &[current.as_os_str(), "./bin/app".as_ref()],
    );
    chain.serving(1);
    let probe = Probe::start(chain.port, probe_args);
    let mut seen = Vec::new();
    probe.wait_seen("r01", &mut seen);
    let t0 = Instant::now();
    for g in 2..=21u64 {
        let id = format!("r{g:02}");
        switch(site, &id);
        chain.p.signal(Signal::SIGHUP);
        let s = chain.serving(g);
        assert_eq!(s.get("reload"), "ok", "{s:?}");
        probe.wait_seen(&id, &mut seen);
    }
    let took = t0.elapsed();
    let json = probe.finish();
    assert_eq!(seen.len(), 21, "every release was seen: {seen:?}");
    eprintln!(
        "{mode}: 20 deploys in {:.1}s: requests {}, failed {}, retried {}, mixed {}, flapping {}, p50 {} ms, p99 {} ms, max {} ms",
        took.as_secs_f64(),
        json_number(&json, "requests"),
        json_number(&json, "failed"),
        json_number(&json, "retried"),
        json_number(&json, "mixed"),
        json_number(&json, "flapping"),
        json_number(&json, "p50"),
        json_number(&json, "p99"),
        json_number(&json, "max"),
    );
    assert!(
        json_number(&json, "requests") > 1000.0,
        "the clients ran: {json}"
    );
    assert_eq!(json_number(&json, "failed"), 0.0, "{mode}: {json}");
    assert_eq!(json_number(&json, "mixed"), 0.0, "{mode}: {json}");
    json
}

#[test]
fn cutover_20_deploys_under_16_clients_nothing_failed_mixed_or_flapping() {
    let json = twenty_deploys("cutover", &[]);
    assert_eq!(json_number(&json, "flapping"), 0.0, "cutover: {json}");
}

#[test]
fn rolling_the_same_way_does_flap_so_the_test_can_tell() {
    // A new connection per request: a kept-alive connection stays on its worker
    // (the app serves many at once), so only fresh connections land on old and
    // new workers alike, as rolling allows.
    let json = twenty_deploys("rolling", &["--no-keepalive"]);
    assert!(
        json_number(&json, "flapping") > 0.0,
        "rolling showed no flapping: {json}"
    );
}

// ------------------------------------------------------------ test-worker

/// test-worker's generation (`gen=G` in its answer), or None on any failure.
fn ask_gen(port: u16) -> Option<u64> {
    worker_field(&ask(port)?, "gen").parse().ok()
}

/// forkpool -n 4 -m cutover --notification-fd 3 over test-worker, with
/// options read from `dir/conf` at each worker's start.
fn worker_chain(dir: &TempDir, opts: &[&str], worker: &[&str]) -> Chain {
    let conf = dir.join("conf");
    let mut fp = vec!["-n", "4", "-m", "cutover", "-d", "3"];
    fp.extend_from_slice(opts);
    let tw = bin("test-worker");
    let mut prog: Vec<&std::ffi::OsStr> =
        vec![tw.as_os_str(), "--notify-fd".as_ref(), "3".as_ref()];
    prog.extend(worker.iter().map(std::ffi::OsStr::new));
    prog.extend(["--conf".as_ref(), conf.as_os_str()]);
    Chain::start(dir.path(), &fp, &prog)
}

#[test]
fn sigstop_holds_a_worker_that_ignores_the_hold_descriptor_20_cutovers_nothing_failed() {
    let dir = TempDir::new("cutover-stop");
    let chain = worker_chain(&dir, &["-k", "5000"], &["--ignore-hold"]);
    chain.serving(1);
    let port = chain.port;
    let done = Arc::new(AtomicBool::new(false));
    let (ok, failed, flapped, fell) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (done, ok, failed, flapped, fell) = (
                done.clone(),
                ok.clone(),
                failed.clone(),
                flapped.clone(),
                fell.clone(),
            );
            std::thread::spawn(move || {
                let (mut newest, mut last) = (0, 0);
                while !done.load(Ordering::Relaxed) {
                    match ask_gen(port) {
                        Some(g) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            if g < newest {
                                flapped.fetch_add(1, Ordering::Relaxed);
                            }
                            if g < last {
                                fell.fetch_add(1, Ordering::Relaxed);
                            }
                            newest = newest.max(g);
                            last = g;
                        }
                        None => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for g in 2..=21 {
        chain.p.signal(Signal::SIGHUP);
        chain.serving(g);
    }
    done.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.join();
    }
    let (ok, failed, flapped, fell) = (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        flapped.load(Ordering::Relaxed),
        fell.load(Ordering::Relaxed),
    );
    eprintln!(
        "SIGSTOP hold, 20 cutovers, 16 clients: {ok} answered, {failed} failed; flapping (the window): {flapped} answers older than one seen before, {fell} falls back"
    );
    assert!(ok > 500, "the clients ran: {ok}");
    assert_eq!(failed, 0, "{ok} answered, {failed} failed");
    // Every new worker was held with STOP and released with CONT.
    let log = chain.log();
    assert_eq!(log.matches("held (sent STOP)").count(), 80, "{log}");
    assert_eq!(log.matches("released 4 workers").count(), 20, "{log}");
}

#[test]
fn the_sigstop_window_is_measured_and_every_new_worker_is_stopped_before_it_accepts() {
    let dir = TempDir::new("cutover-window");
    let chain = worker_chain(&dir, &["-k", "5000"], &["--ignore-hold"]);
    chain.serving(1);
    let log = dir.join("windows");
    std::fs::write(dir.join("conf"), format!("--window-log {}", log.display())).expect("conf");
    for g in 2..=6 {
        chain.p.signal(Signal::SIGHUP);
        chain.serving(g);
    }
    // Each writes its line once released (after the status says generation g serves).
    let lines = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(LONG, || lines().lines().count() >= 20);
    let text = lines();
    let mut ns: Vec<u64> = text
        .lines()
        .map(|l| {
            let v = l.split_whitespace().nth(2).unwrap_or("none");
            v.parse()
                .unwrap_or_else(|_| panic!("a new worker was never stopped and continued: {text}"))
        })
        .collect();
    assert_eq!(ns.len(), 20, "one window per new worker: {text}");
    ns.sort_unstable();
    eprintln!(
        "SIGSTOP window (readiness message to STOP), 20 workers: min {:.1} us, median {:.1} us, max {:.1} us",
        ns[0] as f64 / 1e3,
        ns[10] as f64 / 1e3,
        ns[19] as f64 / 1e3
    );
}

#[test]
fn a_busy_old_worker_delays_the_switch_and_connections_wait_for_the_new_generation() {
    let dir = TempDir::new("cutover-busy");
    // Generation 1 answers a connection only once the file `go` exists: the
    // request stays in hand until the test says. (It took 1.5 s before, and
    // failed under load: a generation 2 not yet held after 1.5 s found the
    // old worker idle, so the switch was over before the test looked.)
    let accepts = dir.join("accepts");
    let go = dir.join("go");
    let conf = format!(
        "--serve-until {} --accept-log {}",
        go.display(),
        accepts.display()
    );
    std::fs::write(dir.join("conf"), conf).expect("conf");
    let chain = worker_chain(&dir, &["-k", "10000"], &[]);
    let s1 = chain.serving(1);
    let old: Vec<i32> = s1.gen_pids(1, "ready");
    std::fs::remove_file(dir.join("conf")).expect("rm conf");
    let port = chain.port;
    // X is in the hands of an old worker when the cutover starts.
    let x = request_in_hand(port, &accepts);
    chain.p.signal(Signal::SIGHUP);
    // Generation 2 whole, held and stopped; the old one draining.
    let ok = wait_until(LONG, || chain.status().num("held") == 4);
    let s = chain.status();
    assert!(ok, "generation 2 never held: {s:?}\n{}", chain.log());
    for pid in s.gen_pids(2, "held") {
        let stopped = wait_until(LONG, || proc_state(pid) == 'T');
        assert!(stopped, "held worker {pid} is stopped: {}", proc_state(pid));
    }
    assert_eq!(s.num("serving_generation"), 1, "{s:?}");
    assert_eq!(s.get("reload"), "running", "{s:?}");
    // Y arrives during the switch: it waits in the backlog, then gets the new code.
    let t = Instant::now();
    let mut ys = connect(port);
    ys.set_read_timeout(Some(LONG)).expect("timeout");
    let y = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = ys.read_to_string(&mut out);
        let a = worker_field(&out, "gen").parse::<u64>().ok();
        (a, t.elapsed(), Instant::now())
    });
    // Y is in the backlog: the old worker may finish X now.
    std::fs::write(&go, "").expect("go");
    let (xa, _) = x.join().expect("x");
    let (ya, waited, _) = y.join().expect("y");
    assert_eq!(
        xa,
        Some(1),
        "the request in hand is finished by the old worker"
    );
    assert_eq!(
        ya,
        Some(2),
        "the waiting connection is served by the new generation\n{}",
        chain.log()
    );
    // The release came after the busy worker's exit: the order of forkpool's
    // own lines (-v), not of two threads' clocks (a starved thread reads late).
    let busy = std::fs::read_to_string(&accepts).expect("accepts");
    let busy = busy.split_whitespace().nth(1).expect("the busy pid");
    let exited = format!("(pid {busy}, generation 1) exited");
    assert!(
        wait_until(LONG, || chain.log().contains("released")),
        "{}",
        chain.log()
    );
    let log = chain.log();
    let (e, r) = (log.find(&exited), log.find("released"));
    assert!(
        e.is_some() && e < r,
        "the new generation was released only after the old one was done\n{log}"
    );
    for pid in old {
        assert!(!alive(pid), "old worker {pid} is gone");
    }
    let s = chain.serving(2);
    assert_eq!(s.num("held"), 0, "{s:?}");
    eprintln!(
        "a connection that arrived during the switch waited {waited:?} (the old worker's drain)"
    );
}

#[test]
fn a_hup_during_the_switch_goes_on_to_the_newest_generation() {
    let dir = TempDir::new("cutover-hup");
    let accepts = dir.join("accepts");
    // X in hand until `go` exists (as in the test above: not a time)
    let go = dir.join("go");
    let conf = format!(
        "--serve-until {} --accept-log {}",
        go.display(),
        accepts.display()
    );
    std::fs::write(dir.join("conf"), conf).expect("conf");
    let chain = worker_chain(&dir, &["-k", "10000"], &[]);
    chain.serving(1);
    std::fs::remove_file(dir.join("conf")).expect("rm conf");
    let port = chain.port;
    let x = request_in_hand(port, &accepts);
    chain.p.signal(Signal::SIGHUP);
    let held = wait_until(LONG, || chain.status().num("held") == 4);
    assert!(held, "{:?}\n{}", chain.status(), chain.log());
    chain.p.signal(Signal::SIGHUP);
    let y = std::thread::spawn(move || ask_gen(port));
    std::fs::write(&go, "").expect("go");
    let s = chain.serving(3);
    assert_eq!(s.get("reload"), "ok", "{s:?}");
    assert_eq!(x.join().expect("x").0, Some(1));
    let ya = y.join().expect("y");
    assert!(
        matches!(ya, Some(2) | Some(3)),
        "y: {ya:?}\n{}",
        chain.log()
    );
    assert_eq!(ask_gen(port), Some(3));
}

#[test]
fn a_broken_new_generation_is_discarded_and_the_old_one_never_stops() {
    let dir = TempDir::new("cutover-broken");
    let chain = worker_chain(&dir, &["-k", "5000", "-t", "2000"], &[]);
    let s1 = chain.serving(1);
    let old: Vec<i32> = s1.gen_pids(1, "ready");
    for (conf, why) in [
        ("--exit 1", "exited 1"),
        ("--never-ready", "not ready after"),
    ] {
        std::fs::write(dir.join("conf"), conf).expect("conf");
        let g = chain.status().num("generation") + 1;
        chain.p.signal(Signal::SIGHUP);
        let ok = wait_until(LONG, || {
            let s = chain.status();
            s.num("generation") == g && s.get("reload") == "failed" && s.workers.len() == 4
        });
        let s = chain.status();
        assert!(ok, "{conf}: {s:?}\n{}", chain.log());
        assert!(s.get("reason").contains(why), "{s:?}");
        assert_eq!(
            s.gen_pids(1, "ready"),
            old,
            "the old generation never stopped"
        );
        assert_eq!(s.num("serving_generation"), 1);
        assert_eq!(ask_gen(chain.port), Some(1));
    }
}
