//! forkpool, run as a user's shell would, with test-worker as the program:
//! the pool, reloads that never drop below N ready workers, broken generations
//! that leave the old one serving, the drain deadline, TTIN/TTOU, stops,
//! the orphan guard, the back-off, pinning, and clients hammering through reloads.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::*;
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(30);

/// A running pool on a fresh socket, with its status file and stderr.
struct Pool {
    p: Proc,
    port: u16,
    st: PathBuf,
    _dir: TempDir,
}

impl Pool {
    /// `forkpool -S st OPTS test-worker WORKER_ARGS`, socket made here.
    fn start(opts: &[&str], worker: &[&str]) -> Pool {
        Self::start_in(TempDir::new("fp"), opts, worker, |_| {})
    }

    fn start_in(
        dir: TempDir,
        opts: &[&str],
        worker: &[&str],
        extra: impl FnOnce(&mut Command),
    ) -> Pool {
        let st = dir.join("status");
        let (sock, port) = listener();
        let mut c = cmd("forkpool");
        c.arg("-S")
            .arg(&st)
            .args(opts)
            .arg(bin("test-worker"))
            .args(worker);
        c.stdin(sock).stderr(Stdio::piped()).current_dir(dir.path());
        extra(&mut c);
        let p = Proc::spawn(c);
        Pool {
            p,
            port,
            st,
            _dir: dir,
        }
    }

    fn status(&self) -> PoolStatus {
        PoolStatus::read(&self.st)
    }

    /// Wait until generation `g` serves with `n` ready workers; the status then.
    fn serving(&self, g: u64, n: usize) -> PoolStatus {
        let ok = wait_until(LONG, || {
            let s = self.status();
            s.num("serving_generation") == g && s.pids("ready").len() == n && s.workers.len() == n
        });
        let s = self.status();
        assert!(ok, "generation {g} never served with {n} workers: {s:?}");
        s
    }

    fn signal(&self, sig: Signal) {
        self.p.signal(sig);
    }

    fn stderr(&mut self) -> String {
        let err = self.p.child.stderr.take().expect("stderr piped");
        read_all_timeout(err, LONG).unwrap_or_default()
    }

    /// TERM, wait for exit 0, and the log.
    fn stop(&mut self) -> String {
        self.signal(Signal::SIGTERM);
        let st = self
            .p
            .wait_timeout(LONG)
            .expect("forkpool exits after TERM");
        assert_eq!(st.code(), Some(0));
        self.stderr()
    }
}

fn ppid(pid: i32) -> i32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, r)| r.split_whitespace().nth(1).and_then(|s| s.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn n_workers_run_and_a_killed_worker_is_replaced() {
    let mut pool = Pool::start(&["-n", "3", "-d", "5"], &["--notify-fd", "5"]);
    let s = pool.serving(1, 3);
    let pids = s.pids("ready");
    let me = pool.p.pid().as_raw();
    for &p in &pids {
        assert!(
            alive(p) && ppid(p) == me,
            "worker {p} is a child of forkpool"
        );
    }
    let slots: Vec<usize> = s.workers.iter().map(|w| w.0).collect();
    assert_eq!(slots, vec![0, 1, 2]);
    assert!(ask(pool.port).is_some());
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pids[1]), Signal::SIGKILL).expect("kill");
    let ok = wait_until(LONG, || {
        let s = pool.status();
        s.pids("ready").len() == 3 && !s.workers.iter().any(|w| w.2 == pids[1])
    });
    assert!(ok, "not replaced: {:?}", pool.status());
    let s = pool.status();
    let new = s.workers.iter().find(|w| w.0 == 1).expect("slot 1");
    assert_eq!(new.1, 1, "a replacement stays in its generation");
    assert!(!pids.contains(&new.2));
    let err = pool.stop();
    assert!(
        err.contains("worker 1 (pid") && err.contains("was killed by SIGKILL"),
        "{err}"
    );
}

/// HUP replaces every pid; ready workers, sampled all along, never below N;
/// a client hammering sees no failure. The new generation becomes ready only
/// once the sampler took 50 samples of the reload running (test-worker
/// --ready-when): a condition, where "more than 50 samples" over the reload's
/// natural length failed under load (24).
fn reload_keeps_n_ready(mode: &str) {
    let n = 4;
    let dir = TempDir::new("fp");
    let gate = dir.join("gate");
    let conf = dir.join("conf");
    let pool = Pool::start_in(
        dir,
        &["-n", "4", "-m", mode, "--notify", "-k", "3000"],
        &[
            "--notify",
            "--ready-delay",
            "150",
            "--serve-delay",
            "5",
            "--conf",
            conf.to_str().expect("path"),
        ],
        |_| {},
    );
    let before = pool.serving(1, n).pids("ready");
    std::fs::write(&conf, format!("--ready-when {}", gate.display())).expect("conf");
    let stop = Arc::new(AtomicBool::new(false));
    let in_reload = Arc::new(AtomicUsize::new(0));
    let st = pool.st.clone();
    let (stop2, in_reload2) = (stop.clone(), in_reload.clone());
    let sampler = std::thread::spawn(move || {
        let (mut min, mut samples) = (usize::MAX, 0);
        while !stop2.load(Ordering::Relaxed) {
            let s = PoolStatus::read(&st);
            if !s.kv.is_empty() {
                min = min.min(s.num("ready") as usize);
                samples += 1;
                if s.get("generation") == "2" && s.get("reload") == "running" {
                    in_reload2.fetch_add(1, Ordering::Relaxed);
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        (min, samples)
    });
    let failed = Arc::new(AtomicUsize::new(0));
    let port = pool.port;
    let (stop3, failed2) = (stop.clone(), failed.clone());
    let hammer = std::thread::spawn(move || {
        while !stop3.load(Ordering::Relaxed) {
            if ask(port).is_none() {
                failed2.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    pool.signal(Signal::SIGHUP);
    assert!(
        wait_until(LONG, || in_reload.load(Ordering::Relaxed) >= 50),
        "the sampler never saw the reload running"
    );
    std::fs::write(&gate, "").expect("gate");
    let s = pool.serving(2, n);
    // Let the old workers finish their drain, still sampling.
    assert!(
        wait_until(LONG, || before.iter().all(|&p| !alive(p))),
        "old workers are gone"
    );
    stop.store(true, Ordering::Relaxed);
    let (min, samples) = sampler.join().expect("sampler");
    let _ = hammer.join();
    assert!(samples >= 50, "sampled {samples} times");
    assert!(
        min >= n,
        "{mode}: ready workers dropped to {min} during the reload"
    );
    let after = s.pids("ready");
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "every pid replaced: {before:?} -> {after:?}"
    );
    assert_eq!(s.get("reload"), "ok");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "failed connections");
}

#[test]
fn rolling_reload_replaces_every_pid_never_below_n_ready() {
    reload_keeps_n_ready("rolling");
}

#[test]
fn all_at_once_reload_replaces_every_pid_never_below_n_ready() {
    reload_keeps_n_ready("all-at-once");
}

/// A new generation that fails (per `conf`) leaves every old worker in place,
/// says why, and is not retried.
fn broken_generation(conf: &str, want_reason: &str) {
    let dir = TempDir::new("fp-broken");
    let conf_path = dir.join("conf");
    let log = dir.join("starts");
    let worker = [
        "--notify-fd",
        "5",
        "--conf",
        "conf",
        "--start-log",
        "starts",
    ];
    let mut pool = Pool::start_in(dir, &["-n", "4", "-d", "5", "-t", "500"], &worker, |_| {});
    let before = pool.serving(1, 4).pids("ready");
    std::fs::write(&conf_path, conf).expect("conf");
    pool.signal(Signal::SIGHUP);
    assert!(
        wait_until(LONG, || pool.status().get("reload") == "failed"),
        "{:?}",
        pool.status()
    );
    let s = pool.status();
    assert_eq!(s.get("generation"), "2");
    assert_eq!(s.get("serving_generation"), "1");
    assert!(
        s.get("reason").contains(want_reason),
        "reason: {:?}",
        s.get("reason")
    );
    // The broken workers are stopped; the old ones never were.
    assert!(
        wait_until(LONG, || pool.status().workers.len() == 4),
        "{:?}",
        pool.status()
    );
    std::thread::sleep(Duration::from_millis(1500));
    let s = pool.status();
    assert_eq!(
        s.pids("ready"),
        before,
        "the old generation keeps serving, untouched"
    );
    assert!(before.iter().all(|&p| alive(p)));
    let gen2 = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" 2 "))
        .count();
    assert!(
        gen2 <= 4,
        "the broken generation was retried: {gen2} starts"
    );
    assert!(ask(pool.port).is_some_and(|l| worker_field(&l, "gen") == "1"));
    let err = pool.stop();
    assert_eq!(
        err.matches("reload to generation 2 failed").count(),
        1,
        "{err}"
    );
}

#[test]
fn a_generation_that_never_becomes_ready_leaves_the_old_one_serving() {
    broken_generation("--never-ready", "not ready after");
}

#[test]
fn a_generation_that_exits_1_at_start_leaves_the_old_one_serving() {
    broken_generation("--exit 1", "exited 1");
}

#[test]
fn hup_during_a_reload_starts_over_with_the_newest_code() {
    let dir = TempDir::new("fp-rehup");
    let conf_path = dir.join("conf");
    let mut pool = Pool::start_in(
        dir,
        &["-n", "2", "-d", "5"],
        &["--notify-fd", "5", "--conf", "conf"],
        |_| {},
    );
    pool.serving(1, 2);
    std::fs::write(&conf_path, "--ready-delay 5000").expect("conf");
    pool.signal(Signal::SIGHUP);
    assert!(wait_until(LONG, || pool
        .status()
        .workers
        .iter()
        .any(|w| w.1 == 2)));
    std::fs::write(&conf_path, "").expect("conf");
    pool.signal(Signal::SIGHUP);
    let s = pool.serving(3, 2);
    assert_eq!(s.get("reload"), "ok");
    assert!(s.workers.iter().all(|w| w.1 == 3), "{s:?}");
    pool.stop();
}

#[test]
fn a_worker_that_ignores_term_is_killed_at_the_drain_deadline() {
    let mut pool = Pool::start(
        &["-n", "2", "-d", "5", "-k", "300"],
        &["--notify-fd", "5", "--ignore-term"],
    );
    let before = pool.serving(1, 2).pids("ready");
    pool.signal(Signal::SIGHUP);
    pool.serving(2, 2);
    assert!(
        wait_until(LONG, || before.iter().all(|&p| !alive(p))),
        "old workers killed"
    );
    pool.signal(Signal::SIGINT); // INT: the same graceful stop, KILL after -k again
    assert_eq!(pool.p.wait_timeout(LONG).and_then(|s| s.code()), Some(0));
    let err = pool.stderr();
    assert!(err.contains("did not stop in 0.30s: sent KILL"), "{err}");
}

#[test]
fn ttin_and_ttou_change_the_number_of_workers() {
    let mut pool = Pool::start(&["-n", "2", "-d", "5"], &["--notify-fd", "5"]);
    pool.serving(1, 2);
    pool.signal(Signal::SIGTTIN);
    let s = pool.serving(1, 3);
    assert_eq!(s.get("workers"), "3");
    // One at a time: the kernel merges two TTOUs still pending at once.
    pool.signal(Signal::SIGTTOU);
    pool.serving(1, 2);
    pool.signal(Signal::SIGTTOU);
    let s = pool.serving(1, 1);
    assert_eq!(s.get("workers"), "1");
    assert_eq!(s.workers[0].0, 0, "slot 0 stays");
    pool.stop();
}

#[test]
fn term_stops_everything_and_leaves_no_process() {
    let mut pool = Pool::start(&["-n", "3", "-d", "5"], &["--notify-fd", "5"]);
    let pids = pool.serving(1, 3).pids("ready");
    pool.stop();
    assert!(pids.iter().all(|&p| !alive(p)), "workers left: {pids:?}");
    let s = pool.status();
    assert_eq!(s.get("state"), "stopped");
    assert!(s.workers.is_empty());
}

#[test]
fn quit_is_a_fast_stop() {
    let mut pool = Pool::start(&["-n", "2", "-d", "5"], &["--notify-fd", "5"]);
    let pids = pool.serving(1, 2).pids("ready");
    pool.signal(Signal::SIGQUIT);
    assert_eq!(pool.p.wait_timeout(LONG).and_then(|s| s.code()), Some(0));
    assert!(pids.iter().all(|&p| !alive(p)));
}

#[test]
fn kill_on_forkpool_leaves_no_worker_alive() {
    // The workers ignore the TERM their parent's death sends them: the guard
    // KILLs them once -k has passed (1 s here; 10 s by default, which this
    // test waited out before: the same proof).
    let pool = Pool::start(
        &["-n", "3", "-d", "5", "-k", "1000"],
        &["--notify-fd", "5", "--ignore-term"],
    );
    let pids = pool.serving(1, 3).pids("ready");
    nix::sys::signal::kill(pool.p.pid(), Signal::SIGKILL).expect("kill");
    assert!(
        wait_until(LONG, || pids.iter().all(|&p| !alive(p))),
        "orphans: {pids:?}"
    );
}

#[test]
fn a_crash_looping_worker_restarts_at_a_bounded_rate() {
    let dir = TempDir::new("fp-crash");
    let log = dir.join("starts");
    let mut pool = Pool::start_in(
        dir,
        &["-n", "2", "-d", "5"],
        &["--start-log", "starts", "--exit", "1"],
        |_| {},
    );
    let t0 = Instant::now();
    let count = || {
        std::fs::read_to_string(&log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    assert!(wait_until(LONG, || count() >= 4), "restarted");
    std::thread::sleep(Duration::from_millis(1500));
    let (n, secs) = (count(), t0.elapsed().as_secs_f64());
    assert!(
        n as f64 <= 2.0 * (secs + 2.0),
        "{n} starts of 2 workers in {secs:.1}s"
    );
    assert!(
        pool.p.child.try_wait().ok().flatten().is_none(),
        "the pool stays up"
    );
    let err = pool.stop();
    assert!(
        err.contains("exited 1 after") && err.contains("before it was ready; restarting in"),
        "{err}"
    );
}

#[test]
fn pinning_keeps_a_generation_in_one_release() {
    let dir = TempDir::new("fp-pin");
    for r in ["r1", "r2"] {
        std::fs::create_dir(dir.join(r)).expect("mkdir");
    }
    std::os::unix::fs::symlink("r1", dir.join("current")).expect("symlink");
    let (r1, r2) = (
        std::fs::canonicalize(dir.join("r1")).expect("r1"),
        std::fs::canonicalize(dir.join("r2")).expect("r2"),
    );
    let root = dir.path().to_path_buf();
    let mut pool = Pool::start_in(
        dir,
        &["-n", "2", "-d", "5", "-p", "current"],
        &["--notify-fd", "5"],
        |_| {},
    );
    let s = pool.serving(1, 2);
    assert_eq!(s.get("release"), r1.to_string_lossy());
    let line = ask(pool.port).expect("answer");
    assert_eq!(worker_field(&line, "cwd"), r1.to_string_lossy());
    assert_eq!(worker_field(&line, "release"), r1.to_string_lossy());
    // The deploy switches the symlink; a crash before the HUP stays on r1.
    std::os::unix::fs::symlink("r2", root.join("current.new")).expect("symlink");
    std::fs::rename(root.join("current.new"), root.join("current")).expect("rename");
    let victim = s.pids("ready")[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim), Signal::SIGKILL).expect("kill");
    assert!(wait_until(LONG, || {
        let s = pool.status();
        s.pids("ready").len() == 2 && !s.pids("ready").contains(&victim)
    }));
    for _ in 0..10 {
        let l = ask(pool.port).expect("answer");
        assert_eq!(
            worker_field(&l, "cwd"),
            r1.to_string_lossy(),
            "generation 1 mixed releases: {l}"
        );
    }
    pool.signal(Signal::SIGHUP);
    let s = pool.serving(2, 2);
    assert_eq!(s.get("release"), r2.to_string_lossy());
    for _ in 0..10 {
        let l = ask(pool.port).expect("answer");
        assert_eq!(worker_field(&l, "cwd"), r2.to_string_lossy(), "{l}");
        assert_eq!(worker_field(&l, "gen"), "2");
    }
    pool.stop();
}

#[test]
fn a_pin_that_cannot_be_resolved_fails_the_reload_not_the_pool() {
    let dir = TempDir::new("fp-pin-bad");
    std::fs::create_dir(dir.join("r1")).expect("mkdir");
    std::os::unix::fs::symlink("r1", dir.join("current")).expect("symlink");
    let root = dir.path().to_path_buf();
    let mut pool = Pool::start_in(
        dir,
        &["-n", "1", "-d", "5", "-p", "current"],
        &["--notify-fd", "5"],
        |_| {},
    );
    pool.serving(1, 1);
    std::fs::remove_file(root.join("current")).expect("rm");
    pool.signal(Signal::SIGHUP);
    assert!(wait_until(LONG, || pool.status().get("reload") == "failed"));
    let s = pool.status();
    assert_eq!(
        (s.get("generation"), s.get("serving_generation")),
        ("2", "1")
    );
    assert!(
        s.get("reason").contains("unable to resolve current"),
        "{s:?}"
    );
    pool.stop();
}

#[test]
fn each_worker_gets_its_environment() {
    let pool = Pool::start_in(
        TempDir::new("fp-env"),
        &["-n", "2", "-d", "5"],
        &["--notify-fd", "5"],
        |c| {
            c.env("LISTEN_FDS", "1").env("LISTEN_PID", "1");
        },
    );
    pool.serving(1, 2);
    let mut seen = std::collections::HashSet::new();
    assert!(wait_until(LONG, || {
        let l = ask(pool.port).unwrap_or_default();
        assert_eq!(
            worker_field(&l, "listen_pid"),
            worker_field(&l, "pid"),
            "{l}"
        );
        assert_eq!(worker_field(&l, "gen"), "1");
        seen.insert(worker_field(&l, "worker"));
        seen.len() == 2
    }));
    assert!(seen.contains("0") && seen.contains("1"), "{seen:?}");
}

#[test]
fn bad_usage_exits_100() {
    for args in [
        vec!["-n", "0", "true"],
        vec!["-n", "x", "true"],
        vec!["-s", "NOPE", "true"],
        vec!["-m", "sideways", "true"],
        vec!["-a", "5000", "-t", "1000", "true"],
        vec!["-d", "5", "--notify", "true"],
        vec!["--check-timeout", "99", "true"],
        vec!["--check-timeout", "x", "true"],
        vec![],
    ] {
        let mut c = cmd("forkpool");
        c.args(&args);
        let (code, _, err) = run(c, LONG);
        assert_eq!(code, 100, "{args:?}: {err}");
        assert!(
            err.starts_with("forkpool: usage: ") && err.lines().count() == 1,
            "{err}"
        );
    }
    let mut c = cmd("forkpool");
    c.args(["-p", "/nonexistent/current", "true"]);
    let (code, _, err) = run(c, LONG);
    assert_eq!(code, 111, "{err}");
    assert!(
        err.starts_with("forkpool: fatal: unable to resolve /nonexistent/current: "),
        "{err}"
    );
}

/// The listening socket by tcplisten (built beside forkpool).
fn behind_tcplisten(mode: &str) {
    let dir = TempDir::new("fp-tcpl");
    let st = dir.join("status");
    let mut c = cmd("tcplisten");
    c.args(["-1", "127.0.0.1", "0"]).arg(bin("forkpool"));
    c.args(["-n", "4", "-m", mode, "--notify", "-k", "3000", "-S"])
        .arg(&st);
    c.arg(bin("test-worker"))
        .args(["--notify", "--ready-delay", "30"]);
    c.stdout(Stdio::piped())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let mut p = Proc::spawn(c);
    let (line, _) = read_line_timeout(p.stdout(), LONG).expect("tcplisten prints the port");
    let port: u16 = line.trim().parse().expect("port");
    let mut hammer = Hammer::start(port, 4);
    let mut seen = 0;
    for g in 1..=21u64 {
        let ok = wait_until(LONG, || {
            let s = PoolStatus::read(&st);
            s.num("serving_generation") == g && s.get("reload") != "running"
        });
        assert!(
            ok,
            "generation {g} never served: {:?}",
            PoolStatus::read(&st)
        );
        // Clients answered in every generation before the next HUP: a
        // condition, not a time (`ok > 100` over the run's length depends
        // on how fast 20 reloads go).
        assert!(
            wait_until(LONG, || hammer.answered() >= seen + 5),
            "no answers in generation {g}"
        );
        seen = hammer.answered();
        if g < 21 {
            p.signal(Signal::SIGHUP);
        }
    }
    let (ok, failed) = hammer.stop();
    assert_eq!(
        failed, 0,
        "{mode}: {failed} failed connections, {ok} served, over 20 reloads"
    );
    assert!(ok > 100, "the hammer ran: {ok}");
    assert_eq!(PoolStatus::read(&st).get("reload"), "ok");
}

#[test]
fn behind_tcplisten_20_rolling_reloads_fail_no_connection() {
    behind_tcplisten("rolling");
}

#[test]
fn behind_tcplisten_20_all_at_once_reloads_fail_no_connection() {
    behind_tcplisten("all-at-once");
}
