//! forkpool -C (prepare, commit, abort), driven by poolctl as a fleet deploy
//! drives each host: the demo app behind tcplisten, uptime-probe hammering.
//! A prepare holds the new generation while the old one answers; only a
//! commit switches (0 failed, 0 mixed, 0 flapping), now or at a wall-clock
//! instant (the error measured); abort and the prepare deadline leave the old
//! generation serving and no new worker alive; a commit without a prepare and
//! a broken release get a definite no with a reason; a HUP during a prepare is
//! refused; the FIFO is never a planted file.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use integration_tests::*;
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(45);

/// releases/ID as demo/lib.sh builds one; `broken`: its app exits 1 at start.
fn build_release(site: &Path, id: &str, broken: bool) {
    let d = site.join("releases").join(id);
    std::fs::create_dir_all(d.join("htdocs")).expect("mkdir");
    std::fs::create_dir_all(d.join("bin")).expect("mkdir");
    std::fs::write(d.join("RELEASE"), format!("{id}\n")).expect("RELEASE");
    std::fs::write(
        d.join("htdocs/index.html"),
        format!("<!doctype html>\n<html><body data-release=\"{id}\"><h1>Release {id}</h1></body></html>\n"),
    )
    .expect("index.html");
    let fail = if broken { " --fail-start" } else { "" };
    let script = format!(
        "#!/bin/sh\nexec '{}'{fail} --slow-start $(( ${{FORKPOOL_WORKER:-0}} * 30 )) --root . --ready-fd 3 \"$@\"\n",
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

/// The release that answers `GET /release` (its X-Release header).
fn release_of(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    s.write_all(b"GET /release HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines()
        .find_map(|l| l.strip_prefix("X-Release: "))
        .map(|r| r.trim().to_string())
}

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// tcplisten + forkpool -m cutover -C over the demo app, releases r1, r2
/// (`broken2`: r2 fails at start), `current` on r1.
struct Site {
    dir: TempDir,
    _p: Proc,
    port: u16,
}

impl Site {
    fn start(tag: &str, broken2: bool, extra: &[&str]) -> Site {
        let dir = TempDir::new(tag);
        let site = dir.path();
        build_release(site, "r1", false);
        build_release(site, "r2", broken2);
        switch(site, "r1");
        let mut c = cmd("tcplisten");
        c.args(["-1", "127.0.0.1", "0"]).arg(bin("forkpool"));
        c.args([
            "-v", "-S", "status", "-C", "control", "-n", "4", "-m", "cutover",
        ]);
        c.args(["-d", "3", "-t", "30000", "-k", "5000", "-p"]);
        c.arg(site.join("current")).args(extra).arg("./bin/app");
        c.current_dir(site)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(site.join("log")).expect("log"))
            .stdin(Stdio::null());
        let mut p = Proc::spawn(c);
        let (line, _) = read_line_timeout(p.stdout(), LONG).expect("tcplisten prints the port");
        let port = line.trim().parse().expect("port");
        let s = Site { dir, _p: p, port };
        let ok = wait_until(LONG, || {
            let st = s.status();
            st.num("serving_generation") == 1 && st.gen_pids(1, "ready").len() == 4
        });
        assert!(ok, "generation 1 never served: {}", s.log());
        s
    }

    fn st_path(&self) -> PathBuf {
        self.dir.join("status")
    }

    fn status(&self) -> PoolStatus {
        PoolStatus::read(&self.st_path())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// `poolctl ARGS... STATUSFILE`: (code, stdout, stderr).
    fn poolctl(&self, args: &[&str]) -> (i32, String, String) {
        let mut c = cmd("poolctl");
        c.args(args).arg(self.st_path());
        run(c, Duration::from_secs(90))
    }

    fn prepare(&self) -> (i32, String, String) {
        switch(self.dir.path(), "r2");
        self.poolctl(&["prepare", "-t", "60"])
    }
}

/// uptime-probe with 16 clients until INT; the releases it saw first, in order.
struct Probe {
    p: Proc,
    seen: mpsc::Receiver<String>,
}

impl Probe {
    fn start(port: u16) -> Probe {
        let mut c = cmd("uptime-probe");
        c.args(["-c", "16", "--json", "-t", "30000"])
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

    /// Whatever else it reported seeing so far.
    fn more_seen(&self, all: &mut Vec<String>) {
        while let Ok(r) = self.seen.try_recv() {
            all.push(r);
        }
    }

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

#[test]
fn prepare_holds_the_new_generation_while_the_old_serves_then_commit_switches_cleanly() {
    let s = Site::start("control-commit", false, &[]);
    let probe = Probe::start(s.port);
    let mut seen = Vec::new();
    probe.wait_seen("r1", &mut seen);

    let (code, out, err) = s.prepare();
    assert_eq!(code, 0, "prepare: {out}{err}\n{}", s.log());
    assert!(
        out.contains("poolctl: prepare ok: generation 2 ready and held"),
        "{out}"
    );
    let st = s.status();
    assert_eq!(st.get("phase"), "prepared", "{:?}", st.kv);
    assert_eq!(st.num("phase_generation"), 2);
    assert_eq!(st.num("serving_generation"), 1);
    assert_eq!(st.num("held"), 4);
    assert_eq!(st.gen_pids(2, "held").len(), 4, "{:?}", st.workers);
    assert_eq!(st.gen_pids(1, "ready").len(), 4, "{:?}", st.workers);
    assert!(st.get("control").ends_with("control"), "{:?}", st.kv);
    // Held: nothing switches on its own; the old release answers throughout.
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert_eq!(release_of(s.port).as_deref(), Some("r1"));
        let st = s.status();
        assert_eq!(st.get("phase"), "prepared");
        assert_eq!(st.num("serving_generation"), 1);
    }
    probe.more_seen(&mut seen);
    assert_eq!(seen, vec!["r1"], "only the old release was seen while held");

    let (code, out, err) = s.poolctl(&["commit", "-t", "60"]);
    assert_eq!(code, 0, "commit: {out}{err}\n{}", s.log());
    assert!(
        out.contains("poolctl: commit ok: generation 2 serving, 4 of 4 ready"),
        "{out}"
    );
    let st = s.status();
    assert_eq!(st.get("phase"), "committed");
    assert_eq!(st.num("serving_generation"), 2);
    assert_eq!(st.gen_pids(2, "ready").len(), 4, "{:?}", st.workers);
    assert_eq!(st.get("command"), "2 commit accepted");
    assert_eq!(release_of(s.port).as_deref(), Some("r2"));
    probe.wait_seen("r2", &mut seen);
    let json = probe.finish();
    eprintln!("prepare+commit under 16 clients: {json}");
    assert!(json_number(&json, "requests") > 100.0, "{json}");
    assert_eq!(json_number(&json, "failed"), 0.0, "{json}");
    assert_eq!(json_number(&json, "mixed"), 0.0, "{json}");
    assert_eq!(json_number(&json, "flapping"), 0.0, "{json}");
}

#[test]
fn abort_leaves_the_old_generation_serving_and_no_new_worker_alive_and_hup_is_refused_meanwhile() {
    let s = Site::start("control-abort", false, &[]);
    let probe = Probe::start(s.port);
    let (code, out, err) = s.prepare();
    assert_eq!(code, 0, "prepare: {out}{err}\n{}", s.log());
    let held = s.status().gen_pids(2, "held");
    assert_eq!(held.len(), 4);

    // A HUP while prepared: refused as a failed reload (generation grows,
    // so a waiting deploy has its answer); the prepare goes on.
    let (code, _, err) = s.poolctl(&["reload", "-t", "30"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("HUP refused"), "{err}");
    let st = s.status();
    assert_eq!(st.get("phase"), "prepared", "{:?}", st.kv);
    assert_eq!(st.gen_pids(2, "held"), held);
    assert_eq!(release_of(s.port).as_deref(), Some("r1"));

    let (code, out, err) = s.poolctl(&["abort", "-t", "60"]);
    assert_eq!(code, 0, "abort: {out}{err}\n{}", s.log());
    assert!(out.contains("poolctl: abort ok"), "{out}");
    for pid in &held {
        assert!(!alive(*pid), "held worker {pid} still alive");
    }
    let st = s.status();
    assert_eq!(st.get("phase"), "aborted");
    assert!(st.get("reason").contains("aborted"), "{:?}", st.kv);
    assert_eq!(st.num("serving_generation"), 1);
    assert_eq!(st.gen_pids(1, "ready").len(), 4);
    assert_eq!(st.workers.len(), 4, "{:?}", st.workers);
    assert_eq!(release_of(s.port).as_deref(), Some("r1"));
    // Only commit releases a prepared generation: none is left to commit.
    let (code, _, err) = s.poolctl(&["commit"]);
    assert_eq!(code, 1, "{err}");
    let json = probe.finish();
    assert_eq!(json_number(&json, "failed"), 0.0, "{json}");
    assert_eq!(json_number(&json, "mixed"), 0.0, "{json}");
    assert_eq!(
        json.matches("{\"id\":").count(),
        1,
        "only r1 answered: {json}"
    );
}

#[test]
fn a_prepare_neither_committed_nor_aborted_aborts_at_its_deadline() {
    let s = Site::start("control-expire", false, &["--prepare-timeout", "3000"]);
    let (code, out, err) = s.prepare();
    assert_eq!(code, 0, "prepare: {out}{err}\n{}", s.log());
    let held = s.status().gen_pids(2, "held");
    let ok = wait_until(LONG, || {
        let st = s.status();
        st.get("phase") == "aborted" && st.workers.len() == 4
    });
    let st = s.status();
    assert!(
        ok,
        "never aborted: {:?} {:?}\n{}",
        st.kv,
        st.workers,
        s.log()
    );
    assert!(st.get("reason").contains("expired"), "{:?}", st.kv);
    assert_eq!(st.gen_pids(1, "ready").len(), 4);
    assert!(held.iter().all(|p| !alive(*p)), "held workers gone");
    assert_eq!(release_of(s.port).as_deref(), Some("r1"));
    let (code, _, err) = s.poolctl(&["commit"]);
    assert_eq!(code, 1, "a commit after the deadline is refused: {err}");
}

#[test]
fn commit_at_an_instant_switches_at_that_instant_not_before() {
    let s = Site::start("control-at", false, &[]);
    let (code, out, err) = s.prepare();
    assert_eq!(code, 0, "prepare: {out}{err}\n{}", s.log());
    // A client asking all the time: when did r2 first answer, on the wall clock?
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, port) = (stop.clone(), s.port);
        std::thread::spawn(move || {
            let mut last_old = 0.0f64;
            while !stop.load(Ordering::Relaxed) {
                let sent = wall();
                match release_of(port).as_deref() {
                    Some("r2") => return (last_old, Some(sent)),
                    Some(_) => last_old = wall(),
                    None => {}
                }
            }
            (last_old, None)
        })
    };
    let at = ((wall() + 2.0) * 1000.0).round() / 1000.0;
    let at_text = format!("{at:.3}");
    let (code, out, err) = s.poolctl(&["commit", "--at", &at_text, "-t", "60"]);
    let done = wall();
    stop.store(true, Ordering::Relaxed);
    assert_eq!(code, 0, "commit: {out}{err}\n{}", s.log());
    let (last_old, first_new) = watcher.join().expect("watcher");
    let st = s.status();
    let released: f64 = st.get("released_at").parse().expect("released_at");
    let asked: f64 = st.get("commit_at").parse().expect("commit_at");
    assert!((asked - at).abs() < 1e-6, "{:?}", st.kv);
    assert!(
        released >= at,
        "released at {released} before the instant {at}"
    );
    assert!(done >= at, "poolctl returned before the instant");
    // its answer says how early the commit came: at most the 2 s it was given
    let early = came(&out, "early").unwrap_or_else(|| panic!("no `came N ms early` in {out}"));
    assert!(early <= 2001, "{out}");
    let first_new = first_new.expect("the watcher saw r2");
    assert!(
        first_new >= at - 0.001,
        "r2 answered a request sent at {first_new}, before {at}"
    );
    eprintln!(
        "commit at {at_text}: released {:+.1} ms after the instant; last r1 answer {:+.1} ms, first r2 request sent {:+.1} ms",
        (released - at) * 1000.0,
        (last_old - at) * 1000.0,
        (first_new - at) * 1000.0
    );
}

/// N from poolctl commit's `; came N ms WORD)` (WORD: early or late).
fn came(out: &str, word: &str) -> Option<u64> {
    let rest = out.split("; came ").nth(1)?;
    let (n, tail) = rest.split_once(" ms ")?;
    tail.starts_with(&format!("{word})")).then_some(())?;
    n.parse().ok()
}

#[test]
fn a_commit_whose_instant_is_past_switches_at_once_and_poolctl_says_how_late() {
    let s = Site::start("control-late", false, &[]);
    let (code, out, err) = s.prepare();
    assert_eq!(code, 0, "prepare: {out}{err}\n{}", s.log());
    // The controller's margin was too short: the instant passed half a second ago.
    let at = format!("{:.3}", wall() - 0.5);
    let (code, out, err) = s.poolctl(&["commit", "--at", &at, "-t", "60"]);
    assert_eq!(
        code,
        0,
        "a late commit still commits: {out}{err}\n{}",
        s.log()
    );
    let late = came(&out, "late").unwrap_or_else(|| panic!("no `came N ms late` in {out}"));
    assert!(late >= 500, "{out}");
    assert!(
        out.contains(&format!("(commit at {at}")),
        "the instant as asked: {out}"
    );
    assert!(
        s.log()
            .contains("ms past when the commit came: switching now"),
        "forkpool warns too: {}",
        s.log()
    );
    assert_eq!(release_of(s.port).as_deref(), Some("r2"));
    eprintln!("{}", out.trim());
}

#[test]
fn commit_without_a_prepare_is_refused_with_a_reason() {
    let s = Site::start("control-refused", false, &[]);
    let (code, out, err) = s.poolctl(&["commit", "-t", "30"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("poolctl: commit failed: commit refused: nothing is prepared"),
        "{err}"
    );
    let st = s.status();
    assert_eq!(st.get("phase"), "none");
    assert_eq!(st.get("command"), "1 commit refused");
    assert!(
        st.get("reason").contains("nothing is prepared"),
        "{:?}",
        st.kv
    );
    assert_eq!(st.num("generation"), 1);
    assert_eq!(st.workers.len(), 4);
    // and a line that is no command: refused, counted, nothing else
    std::fs::OpenOptions::new()
        .write(true)
        .open(s.dir.join("control"))
        .and_then(|mut f| f.write_all(b"reload now\n"))
        .expect("write to the FIFO");
    let ok = wait_until(LONG, || s.status().get("command") == "2 ? refused");
    assert!(ok, "{:?}", s.status().kv);
    assert!(s.status().get("reason").contains("unknown control command"));
}

#[test]
fn a_broken_release_fails_the_prepare_and_the_old_generation_serves_on() {
    let s = Site::start("control-broken", true, &[]);
    let probe = Probe::start(s.port);
    let (code, out, err) = s.prepare();
    assert_eq!(code, 1, "prepare of a broken release: {out}{err}");
    assert!(
        err.contains("poolctl: prepare failed: generation 2 failed"),
        "{err}"
    );
    assert!(err.contains("exited 1"), "{err}");
    let ok = wait_until(LONG, || s.status().workers.len() == 4);
    let st = s.status();
    assert!(ok, "{:?}", st.workers);
    assert_eq!(st.get("phase"), "failed");
    assert_eq!(st.num("serving_generation"), 1);
    assert_eq!(st.gen_pids(1, "ready").len(), 4);
    let (code, _, err) = s.poolctl(&["commit"]);
    assert_eq!(code, 1, "{err}");
    let (code, out, err) = s.poolctl(&["abort"]);
    assert_eq!(
        code, 0,
        "abort after a failed prepare: nothing to do: {out}{err}"
    );
    let json = probe.finish();
    assert_eq!(json_number(&json, "failed"), 0.0, "{json}");
    assert_eq!(
        json.matches("{\"id\":").count(),
        1,
        "only r1 answered: {json}"
    );
}

#[test]
fn the_control_fifo_is_never_a_planted_file_and_needs_cutover() {
    let dir = TempDir::new("control-plant");
    let file = dir.join("control");
    std::fs::write(&file, "precious\n").expect("file");
    let (stdin, _port) = listener();
    let mut c = cmd("forkpool");
    c.args(["-m", "cutover", "-C"])
        .arg(&file)
        .args(["sleep", "100"]);
    c.stdin(stdin);
    let (code, _, err) = run(c, LONG);
    assert_eq!(code, 111, "{err}");
    assert!(
        err.contains("forkpool: fatal: unable to open control FIFO") && err.contains("not a FIFO"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious\n");
    let link = dir.join("link");
    std::os::unix::fs::symlink(dir.join("elsewhere"), &link).expect("symlink");
    let mut c = cmd("forkpool");
    c.args(["-m", "cutover", "-C"])
        .arg(&link)
        .args(["sleep", "100"]);
    let (code, _, err) = run(c, LONG);
    assert_eq!(code, 111, "{err}");
    assert!(err.contains("symbolic link"), "{err}");
    assert!(
        !dir.join("elsewhere").exists(),
        "nothing made through the link"
    );
    let mut c = cmd("forkpool");
    c.args(["-C", "ctl", "sleep", "100"]);
    let (code, _, err) = run(c, LONG);
    assert_eq!(code, 100, "{err}");
    assert!(err.contains("-C needs -m cutover"), "{err}");
    let mut c = cmd("poolctl");
    c.args(["prepare", "--at", "1", "x"]);
    assert_eq!(run(c, LONG).0, 100);
}

/// USR2 (in-place upgrade) during an open prepare waits until the prepare ends
/// (here: its commit), then upgrades; the next image opens the FIFO again, so
/// a prepare and an abort work after the upgrade (found at merge: the new image
/// would have lost the open prepare's gate and switched on its own).
#[test]
fn an_upgrade_during_a_prepare_waits_for_the_commit_and_the_fifo_works_after() {
    let s = Site::start("control-upgrade", false, &[]);
    let (code, _, err) = s.prepare();
    assert_eq!(code, 0, "prepare: {err}\n{}", s.log());
    let pid: i32 = s.status().get("pid").parse().expect("pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGUSR2).expect("USR2");
    assert!(
        wait_until(LONG, || s.status().get("upgrade") == "running"),
        "{}",
        s.log()
    );
    // waiting: still prepared, the old release answers, nothing switched
    std::thread::sleep(Duration::from_millis(300));
    let st = s.status();
    assert_eq!(
        (
            st.get("phase"),
            st.get("upgrades"),
            st.num("serving_generation")
        ),
        ("prepared", "0", 1),
        "{}",
        s.log()
    );
    assert_eq!(release_of(s.port).as_deref(), Some("r1"));
    let (code, _, err) = s.poolctl(&["commit", "-t", "60"]);
    assert_eq!(code, 0, "commit: {err}\n{}", s.log());
    assert!(
        wait_until(LONG, || {
            let st = s.status();
            st.get("upgrade") == "ok" && st.get("upgrades") == "1"
        }),
        "the upgrade after the commit: {}",
        s.log()
    );
    assert_eq!(release_of(s.port).as_deref(), Some("r2"));
    // the new image reads the FIFO: a prepare (back to r1) and an abort
    switch(s.dir.path(), "r1");
    let (code, _, err) = s.poolctl(&["prepare", "-t", "60"]);
    assert_eq!(code, 0, "prepare after the upgrade: {err}\n{}", s.log());
    let (code, _, err) = s.poolctl(&["abort", "-t", "60"]);
    assert_eq!(code, 0, "abort after the upgrade: {err}\n{}", s.log());
    assert_eq!(release_of(s.port).as_deref(), Some("r2"));
    assert_eq!(s.status().get("phase"), "aborted");
}
