//! forkpool's worker lifecycle (issue 14), run as a user's shell would, with
//! test-worker as the program and clients hammering: recycling by age under
//! `--surge 1` (never below N ready, never above N+1 alive, every worker
//! really replaced), the watchdog (a silent worker gets ABRT, KILL after -k,
//! and a replacement at once; pinging ones are never touched; under -d and
//! under --notify), `--max-rss` (a leak is recycled, a spike is not), the
//! worker's own word, a rolling reload under `--surge 1`, and a cutover that
//! no longer waits for a long request.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use integration_tests::*;
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(30);

/// A running pool on a fresh socket, its status file and its log (-v).
struct Pool {
    p: Proc,
    port: u16,
    st: PathBuf,
    dir: TempDir,
}

impl Pool {
    /// `forkpool -v -S st OPTS PROG...` in a fresh directory.
    fn start(opts: &[&str], prog: &[&std::ffi::OsStr]) -> Pool {
        let dir = TempDir::new("life");
        let st = dir.join("status");
        let (sock, port) = listener();
        let mut c = cmd("forkpool");
        c.arg("-v").arg("-S").arg(&st).args(opts).args(prog);
        c.stdin(sock)
            .stderr(std::fs::File::create(dir.join("log")).expect("log"))
            .current_dir(dir.path());
        let p = Proc::spawn(c);
        Pool { p, port, st, dir }
    }

    /// test-worker WORKER_ARGS as the program.
    fn worker(opts: &[&str], worker: &[&str]) -> Pool {
        let tw = bin("test-worker");
        let mut prog: Vec<&std::ffi::OsStr> = vec![tw.as_os_str()];
        prog.extend(worker.iter().map(std::ffi::OsStr::new));
        Pool::start(opts, &prog)
    }

    /// A shell script as the program (run in the pool's directory); `$TW`
    /// names test-worker.
    fn script(opts: &[&str], script: &str) -> Pool {
        let text = format!("TW='{}'\n{script}", bin("test-worker").display());
        Pool::start(opts, &["sh".as_ref(), "-c".as_ref(), text.as_ref()])
    }

    fn status(&self) -> PoolStatus {
        PoolStatus::read(&self.st)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Wait until generation `g` serves with `n` ready workers.
    fn serving(&self, g: u64, n: usize) -> PoolStatus {
        let ok = wait_until(LONG, || {
            let s = self.status();
            s.num("serving_generation") == g && s.gen_pids(g, "ready").len() == n
        });
        assert!(
            ok,
            "generation {g} never served: {:?}\n{}",
            self.status(),
            self.log()
        );
        self.status()
    }

    /// forkpool's children, from /proc (whatever the status file says).
    fn children(&self) -> usize {
        children_of(self.p.pid().as_raw())
    }
}

/// How many processes have `pid` as their parent, forkpool's guard (a fork
/// of forkpool itself, the same program: what-forkpool-starts-it-ends) aside.
fn children_of(pid: i32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().nth(1).map(str::to_string))
                .is_some_and(|pp| pp == pid.to_string())
                && !stat.contains("(forkpool)")
        })
        .count()
}

/// The extra fields of a worker line (`age=`, `recycles=`, `why=`), by pid.
fn worker_line(st: &Path, pid: i32) -> String {
    std::fs::read_to_string(st)
        .unwrap_or_default()
        .lines()
        .find(|l| {
            l.strip_prefix("worker=")
                .and_then(|v| v.split_whitespace().nth(2))
                .is_some_and(|p| p == pid.to_string())
        })
        .unwrap_or_default()
        .to_string()
}

#[test]
fn max_age_2_surge_1_recycles_every_worker_never_below_4_ready_never_above_5() {
    let pool = Pool::worker(
        &[
            "-n",
            "4",
            "-d",
            "3",
            "--max-age",
            "2",
            "--surge",
            "1",
            "-k",
            "5000",
        ],
        &["--notify-fd", "3"],
    );
    let first = pool.serving(1, 4);
    let first_pids = first.pids("ready");
    let mut hammer = Hammer::start(pool.port, 4);
    // Until every first worker and 8 more were replaced (three rounds of
    // recycling), sampling all along: a condition. The short form of what
    // took 15 s at least before; it fails on a recycle that lets ready
    // workers fall below 4 or more than 5 live at once. The long form (p99
    // over a longer run beside gunicorn) is scripts/bench.d/47-lifecycle.sh.
    let give_up = Instant::now() + LONG;
    let (mut samples, mut min_ready, mut max_lines, mut max_children) = (0, usize::MAX, 0, 0);
    let mut seen = std::collections::HashSet::new();
    let replaced = |seen: &std::collections::HashSet<i32>| {
        seen.len() >= 12 && first_pids.iter().all(|p| !alive(*p))
    };
    while Instant::now() < give_up && !replaced(&seen) {
        let s = pool.status();
        if !s.workers.is_empty() {
            samples += 1;
            min_ready = min_ready.min(s.num("ready") as usize);
            max_lines = max_lines.max(s.workers.len());
            seen.extend(s.workers.iter().map(|w| w.2));
        }
        max_children = max_children.max(pool.children());
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, failed) = hammer.stop();
    let s = pool.status();
    let log = pool.log();
    assert_eq!(failed, 0, "{ok} answered, {failed} failed\n{log}");
    assert!(ok > 0);
    // (12 pids seen, at most 5 a sample: 3 samples at least, by the loop's end)
    assert!(samples >= 3, "only {samples} samples");
    assert!(min_ready >= 4, "ready fell to {min_ready}\n{log}");
    assert!(
        max_lines <= 5,
        "{max_lines} workers in the status file\n{log}"
    );
    assert!(max_children <= 5, "{max_children} children alive\n{log}");
    // Really replaced: none of the first four is left, many came after them.
    for pid in &first_pids {
        assert!(!alive(*pid), "worker {pid} was never recycled\n{log}");
    }
    assert!(seen.len() >= 12, "only {} workers\n{log}", seen.len());
    assert!(s.num("recycled_age") >= 8, "{:?}", s.kv);
    assert_eq!(s.num("recycles"), s.num("recycled_age"));
    // Per worker: age, and how often and why its slot was recycled.
    let line = worker_line(&pool.st, s.pids("ready")[0]);
    assert!(
        line.contains(" age=") && line.contains(" why=age:"),
        "{line}"
    );
}

/// Slot 1's first worker stops pinging after a second and hangs (it takes
/// ABRT, logs it and hangs on, so the KILL after -k is needed); the others ping.
fn watchdog(readiness: &[&str], say: &str) {
    let script = format!(
        "if [ \"$FORKPOOL_WORKER\" = 1 ] && mkdir hang.once 2>/dev/null; then
             exec \"$TW\" {say} --ping --hang-after 1000 --abrt-log abrt.log
         fi
         exec \"$TW\" {say} --ping"
    );
    let mut opts = vec!["-n", "3", "--watchdog", "1000", "-k", "3000"];
    opts.extend(readiness);
    let pool = Pool::script(&opts, &script);
    let first = pool.serving(1, 3);
    let slot = |s: &PoolStatus, n: usize| -> Vec<i32> {
        s.workers.iter().filter(|w| w.0 == n).map(|w| w.2).collect()
    };
    let hung = slot(&first, 1)[0];
    let others: Vec<i32> = [0, 2].iter().map(|&n| slot(&first, n)[0]).collect();
    let mut hammer = Hammer::start(pool.port, 3);
    // ABRT came; the replacement is ready while the hung one still lives.
    let abrt = pool.dir.join("abrt.log");
    let got = wait_until(LONG, || {
        std::fs::read_to_string(&abrt).is_ok_and(|t| t.contains(&format!("abrt {hung}")))
    });
    assert!(got, "no ABRT for {hung}\n{}", pool.log());
    let replaced_first = wait_until(LONG, || {
        let s = pool.status();
        slot(&s, 1)
            .iter()
            .any(|&p| p != hung && s.pids("ready").contains(&p))
    });
    assert!(replaced_first, "no replacement\n{}", pool.log());
    // Then KILL after -k: forkpool's line (written just after the KILL is
    // sent: the test waits for it, not for the process's end alone).
    let kill_line = format!("pid {hung}, generation 1) did not stop in");
    assert!(
        wait_until(LONG, || pool.log().contains(&kill_line) && !alive(hung)),
        "{hung} never killed\n{}",
        pool.log()
    );
    // The replacement was started at once, before the KILL, in forkpool's
    // own order of events (its log). Whether it was also ready within the
    // 3 s of -k is the machine's speed, not forkpool's: not asserted (that
    // check failed under two suites' load).
    let log = pool.log();
    let at = |what: &str| log.find(what);
    let missed = at(&format!(
        "pid {hung}, generation 1) missed its watchdog ping"
    ));
    let started = missed.and_then(|m| {
        log[m..]
            .find("worker 1 (generation 1) started as pid ")
            .map(|i| m + i)
    });
    let killed = at(&kill_line);
    assert!(
        missed.is_some() && started.is_some() && killed.is_some() && started < killed,
        "the replacement came only after the KILL\n{log}"
    );
    // Pinging workers go on untouched for a while.
    std::thread::sleep(Duration::from_secs(2));
    let (ok, failed) = hammer.stop();
    let log = pool.log();
    assert_eq!(failed, 0, "{ok} answered, {failed} failed\n{log}");
    let s = pool.status();
    for pid in &others {
        assert!(s.pids("ready").contains(pid), "{pid} was touched\n{log}");
    }
    assert_eq!(log.matches("missed its watchdog ping").count(), 1, "{log}");
    assert_eq!(s.num("recycled_watchdog"), 1, "{log}");
}

#[test]
fn watchdog_on_the_pipe_replaces_a_silent_worker_and_never_touches_pinging_ones() {
    watchdog(&["-d", "3"], "--notify-fd 3");
}

#[test]
fn watchdog_by_datagrams_replaces_a_silent_worker_and_never_touches_pinging_ones() {
    watchdog(&["--notify"], "--notify");
}

/// A process's Pss in KiB, as forkpool reads it (/proc/PID/smaps_rollup).
fn pss_kib(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

#[test]
fn max_rss_recycles_a_leak_and_not_a_spike() {
    // The spike lasts until the test says (test-worker --spike-until): it
    // was a fixed 1.5 s that, on a busy machine, went by before forkpool
    // sampled it (touching 64 MiB alone took 1.5 s).
    let script = "case $FORKPOOL_WORKER in
         0) mkdir leak.once 2>/dev/null && exec \"$TW\" --notify-fd 3 --leak 64 ;;
         1) mkdir spike.once 2>/dev/null &&
            exec \"$TW\" --notify-fd 3 --spike 64 --spike-until spike.end ;;
         esac
         exec \"$TW\" --notify-fd 3";
    let pool = Pool::script(
        &[
            "-n",
            "2",
            "-d",
            "3",
            "--max-rss",
            "24",
            // 8, not 4: the test stops forkpool after the spike's first
            // sample over the limit, and a sample comes every second; with 4
            // a stall of 3 s between the two (this machine has stalled a
            // fork for 6 s) let the spike be recycled (failed once, a clean
            // clone's suite).
            "--rss-samples",
            "8",
        ],
        script,
    );
    let first = pool.serving(1, 2);
    let by_slot = |n: usize| first.workers.iter().find(|w| w.0 == n).map(|w| w.2);
    let (leak, spike) = (by_slot(0).expect("slot 0"), by_slot(1).expect("slot 1"));
    // The spike is seen over the limit once; then forkpool is stopped while
    // the spike ends, so that the next sample is under the limit whatever
    // the load (under 8 in a row: forgiven).
    let spike_over = format!("pid {spike}, generation 1) Pss ");
    let seen = wait_until(LONG, || {
        pool.log()
            .lines()
            .any(|l| l.contains(&spike_over) && l.contains("over the limit"))
    });
    assert!(seen, "the spike was never sampled\n{}", pool.log());
    pool.p.signal(Signal::SIGSTOP);
    std::fs::write(pool.dir.join("spike.end"), "").expect("spike.end");
    let ended = wait_until(LONG, || pss_kib(spike).is_some_and(|k| k < 24 * 1024));
    pool.p.signal(Signal::SIGCONT);
    assert!(ended, "the spike never ended: Pss {:?} KiB", pss_kib(spike));
    let forgiven = wait_until(LONG, || {
        pool.log()
            .lines()
            .any(|l| l.contains(&spike_over) && l.contains("under the limit again"))
    });
    assert!(forgiven, "{}", pool.log());
    let gone = wait_until(LONG, || !alive(leak));
    let log = pool.log();
    assert!(gone, "the leaking worker {leak} is still there\n{log}");
    let s = pool.serving(1, 2);
    assert_eq!(s.num("recycled_memory"), 1, "{:?}\n{log}", s.kv);
    assert!(alive(spike) && s.pids("ready").contains(&spike), "{log}");
    assert!(!log.contains(&format!("pid {spike}, generation 1) to be recycled")));
    let line = worker_line(
        &pool.st,
        s.workers.iter().find(|w| w.0 == 0).map_or(0, |w| w.2),
    );
    assert!(line.contains("why=memory:1"), "{line}");
}

#[test]
fn a_worker_that_asks_is_recycled_replacement_first() {
    let pool = Pool::worker(
        &["-n", "2", "-d", "3"],
        &["--notify-fd", "3", "--recycle-after", "20"],
    );
    let first = pool.serving(1, 2).pids("ready");
    let mut hammer = Hammer::start(pool.port, 2);
    let replaced = wait_until(LONG, || first.iter().all(|p| !alive(*p)));
    let (ok, failed) = hammer.stop();
    let log = pool.log();
    assert!(replaced, "{log}");
    assert_eq!(failed, 0, "{ok} answered\n{log}");
    assert!(pool.status().num("recycled_asked") >= 2);
    assert!(
        log.contains("(it asked): its replacement starts first"),
        "{log}"
    );
}

#[test]
fn a_rolling_reload_under_surge_1_never_has_more_than_n_plus_1() {
    let pool = Pool::worker(
        &["-n", "4", "-d", "3", "--surge", "1"],
        &["--notify-fd", "3", "--ready-delay", "300"],
    );
    pool.serving(1, 4);
    let mut hammer = Hammer::start(pool.port, 4);
    pool.p.signal(Signal::SIGHUP);
    let (mut max_lines, mut max_children, mut min_ready) = (0, 0, usize::MAX);
    let done = wait_until(LONG, || {
        let s = pool.status();
        if !s.workers.is_empty() {
            max_lines = max_lines.max(s.workers.len());
            min_ready = min_ready.min(s.num("ready") as usize);
        }
        max_children = max_children.max(pool.children());
        s.num("serving_generation") == 2 && s.get("reload") == "ok" && s.workers.len() == 4
    });
    let (ok, failed) = hammer.stop();
    let log = pool.log();
    assert!(done, "{:?}\n{log}", pool.status());
    assert_eq!(failed, 0, "{ok} answered\n{log}");
    assert!(
        max_lines <= 5 && max_children <= 5,
        "{max_lines} {max_children}\n{log}"
    );
    assert!(min_ready >= 4, "{min_ready}\n{log}");
}

/// A connection an old worker accepted and serves for 3 s: the thread ends
/// when its answer came.
fn long_request(port: u16, accepts: &Path) -> std::thread::JoinHandle<String> {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok();
        let _ = tx.send(());
        let mut out = String::new();
        if let Some(s) = s.as_mut() {
            let _ = s.set_read_timeout(Some(LONG));
            let _ = s.read_to_string(&mut out);
        }
        out
    });
    rx.recv_timeout(LONG).expect("connected");
    let accepted = wait_until(LONG, || {
        std::fs::read_to_string(accepts).is_ok_and(|t| !t.is_empty())
    });
    assert!(accepted, "the connection was never accepted");
    h
}

/// Cutover with one long request in hand: whether the switch (the new
/// generation released) came before the end of the worker that answered it.
/// Told by the order of forkpool's own log lines, not by when the test's
/// reader got the answer: a reader stalled past the switch made the switch
/// look early once (a clean clone's suite, the case without the word).
fn cutover_with_a_long_request(say_stopping: bool) -> bool {
    let mut worker = vec![
        "--notify-fd",
        "3",
        "--serve-delay",
        "3000",
        "--accept-log",
        "accepts",
    ];
    if say_stopping {
        worker.push("--say-stopping");
    }
    let pool = Pool::worker(&["-n", "2", "-d", "3", "-m", "cutover"], &worker);
    pool.serving(1, 2);
    let req = long_request(pool.port, &pool.dir.join("accepts"));
    pool.p.signal(Signal::SIGHUP);
    let answer = req.join().expect("thread");
    assert_eq!(
        worker_field(&answer, "gen"),
        "1",
        "the request in hand: {answer:?}"
    );
    let pid = worker_field(&answer, "pid");
    let s = pool.serving(2, 2);
    assert_eq!(s.get("reload"), "ok");
    let exit = format!("(pid {pid}, generation 1) exited");
    assert!(
        wait_until(LONG, || pool.log().contains(&exit)),
        "{}",
        pool.log()
    );
    let log = pool.log();
    let released = log
        .find("reload to generation 2 done")
        .unwrap_or_else(|| panic!("no release line\n{log}"));
    released < log.find(&exit).unwrap_or(0)
}

#[test]
fn a_long_request_does_not_delay_a_cutover_when_the_worker_says_stopping() {
    assert!(
        cutover_with_a_long_request(true),
        "the switch waited for the long request"
    );
    // Without the word, the switch waits for the request (so the test can fail).
    assert!(!cutover_with_a_long_request(false));
}

#[test]
fn bad_lifecycle_options_are_usage_errors() {
    for opts in [
        &["--surge", "0"][..],
        &["--max-age", "x"],
        &["--jitter", "91"],
        &["--max-rss", "0"],
        &["--watchdog", "5"],
        &["--rss-samples", "0"],
    ] {
        let mut c: Command = cmd("forkpool");
        c.args(opts).arg("true").stdin(Stdio::null());
        let (code, _, err) = run(c, LONG);
        assert_eq!(code, 100, "{opts:?}: {err}");
        assert!(err.starts_with("forkpool: "), "{err}");
    }
}

// ------------------------------------------------------------ the demo app

/// `site/releases/ID` for the demo app: RELEASE and htdocs/index.html.
fn demo_release(site: &Path, id: &str) {
    let d = site.join("releases").join(id);
    std::fs::create_dir_all(d.join("htdocs")).expect("mkdir");
    std::fs::write(d.join("RELEASE"), format!("{id}\n")).expect("RELEASE");
    std::fs::write(
        d.join("htdocs/index.html"),
        format!("<!doctype html>\n<html><body data-release=\"{id}\">{id}</body></html>\n"),
    )
    .expect("index.html");
}

fn point_current(site: &Path, id: &str) {
    let mut c = cmd("atomic-symlink");
    c.arg(format!("releases/{id}")).arg(site.join("current"));
    let (code, _, err) = run(c, LONG);
    assert_eq!(code, 0, "atomic-symlink: {err}");
}

/// forkpool OPTS -p current app --root . --ready-fd 3 APP_OPTS (slot 0: and
/// APP_OPTS0), through `sh -c '... exec app'`, in a site
/// with release r1 current (r2 built too).
fn demo_pool(opts: &[&str], app: &[&str], app0: &[&str]) -> Pool {
    let pool_dir = TempDir::new("life-demo");
    let site = pool_dir.path().to_path_buf();
    demo_release(&site, "r1");
    demo_release(&site, "r2");
    point_current(&site, "r1");
    let st = site.join("status");
    let (sock, port) = listener();
    let mut c = cmd("forkpool");
    c.arg("-v")
        .arg("-S")
        .arg(&st)
        .args(opts)
        .arg("-p")
        .arg(site.join("current"));
    // Slot 0 gets APP_OPTS0 (after APP_OPTS) too.
    let script = format!(
        "o=; [ \"$FORKPOOL_WORKER\" = 0 ] && o='{}'; exec '{}' --root . --ready-fd 3 {} $o",
        app0.join(" "),
        bin("app").display(),
        app.join(" ")
    );
    c.args(["sh", "-c", &script]);
    c.stdin(sock)
        .stderr(std::fs::File::create(site.join("log")).expect("log"))
        .current_dir(&site);
    let p = Proc::spawn(c);
    Pool {
        p,
        port,
        st,
        dir: pool_dir,
    }
}

/// uptime-probe on the pool until INT: its JSON.
struct Probe(Proc);

impl Probe {
    fn start(port: u16, extra: &[&str]) -> Probe {
        let mut c = cmd("uptime-probe");
        c.args(["-c", "8", "--json", "-q", "-t", "30000"])
            .args(extra)
            .arg(format!("http://127.0.0.1:{port}/"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        Probe(Proc::spawn(c))
    }

    fn finish(mut self) -> String {
        self.0.signal(Signal::SIGINT);
        let out = self.0.stdout();
        let json = read_all_timeout(out, LONG).unwrap_or_default();
        self.0
            .wait_timeout(LONG)
            .expect("the probe exits after INT");
        json
    }
}

#[test]
fn the_demo_app_recycled_by_age_and_at_its_word_under_the_probe_fails_nothing() {
    let pool = demo_pool(
        &[
            "-n",
            "4",
            "-d",
            "3",
            "--surge",
            "1",
            "--max-age",
            "2",
            "--watchdog",
            "2000",
        ],
        &[],
        &["--retire-after", "300"],
    );
    pool.serving(1, 4);
    let probe = Probe::start(pool.port, &[]);
    let recycled = wait_until(LONG, || {
        let s = pool.status();
        s.num("recycled_asked") >= 3 && s.num("recycled_age") >= 3
    });
    std::thread::sleep(Duration::from_secs(1));
    let json = probe.finish();
    let s = pool.status();
    let log = pool.log();
    assert!(recycled, "{:?}\n{log}", s.kv);
    assert_eq!(json_count(&json, "failed"), 0, "{json}\n{log}");
    assert_eq!(json_count(&json, "mixed"), 0, "{json}");
    assert!(json_count(&json, "requests") > 1000, "{json}");
    // The app pings its watchdog: never touched.
    assert_eq!(s.num("recycled_watchdog"), 0, "{log}");
    assert!(!log.contains("missed its watchdog ping"), "{log}");
}

#[test]
fn a_long_request_does_not_delay_the_demo_apps_cutover_and_nothing_flaps() {
    let pool = demo_pool(
        &["-n", "2", "-d", "3", "-m", "cutover", "-k", "20000"],
        &["--stop-timeout", "20000", "--read-timeout", "30000"],
        &[],
    );
    pool.serving(1, 2);
    let probe = Probe::start(pool.port, &["--flapping-fails"]);
    // Half a request, on an old worker; the rest only when told.
    let mut conn = TcpStream::connect(("127.0.0.1", pool.port)).expect("connect");
    use std::io::Write;
    conn.write_all(b"GET / HTTP/1.1\r\n").expect("send");
    std::thread::sleep(Duration::from_millis(300));
    let site = pool.dir.path().to_path_buf();
    point_current(&site, "r2");
    pool.p.signal(Signal::SIGHUP);
    let t0 = Instant::now();
    let s = pool.serving(2, 2);
    let switch = t0.elapsed();
    assert_eq!(s.get("reload"), "ok");
    // The request in hand was still open all along: now it completes, from r1.
    conn.write_all(b"Host: x\r\nConnection: close\r\n\r\n")
        .expect("send the rest");
    conn.set_read_timeout(Some(LONG)).expect("timeout");
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{answer:?}\n{}",
        pool.log()
    );
    assert!(answer.contains("data-release=\"r1\""), "{answer:?}");
    let json = probe.finish();
    let log = pool.log();
    assert_eq!(json_count(&json, "failed"), 0, "{json}\n{log}");
    assert_eq!(json_count(&json, "flapping"), 0, "{json}");
    assert_eq!(json_count(&json, "mixed"), 0, "{json}");
    assert!(log.contains("stopped accepting"), "{log}");
    eprintln!("cutover with a request in hand: reload done {switch:?} after the HUP");
}

#[test]
fn forkpool_pings_its_own_supervisors_watchdog_and_keeps_the_variables_from_workers() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("life-wd");
    let path = dir.join("notify");
    let sock = UnixDatagram::bind(&path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let env_file = dir.join("env");
    let (stdin, _port) = listener();
    let mut c = cmd("forkpool");
    c.args(["-n", "1", "-d", "3", "sh", "-c"])
        .arg(format!(
            "env > '{}'; echo >&3; exec sleep 600",
            env_file.display()
        ))
        .env("NOTIFY_SOCKET", &path)
        .env("WATCHDOG_USEC", "400000")
        .stdin(stdin)
        .stderr(Stdio::null());
    let p = Proc::spawn(c);
    // WATCHDOG_PID names another process: not ours, no pings.
    let mut c2 = cmd("forkpool");
    let path2 = dir.join("notify2");
    let sock2 = UnixDatagram::bind(&path2).expect("bind");
    sock2
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let (stdin2, _) = listener();
    c2.args(["-n", "1", "-d", "3", "sh", "-c", "echo >&3; exec sleep 600"])
        .env("NOTIFY_SOCKET", &path2)
        .env("WATCHDOG_USEC", "400000")
        .env("WATCHDOG_PID", "1")
        .stdin(stdin2)
        .stderr(Stdio::null());
    let _p2 = Proc::spawn(c2);
    let mut pings = 0;
    let end = Instant::now() + LONG;
    let mut buf = [0u8; 4096];
    while pings < 5 && Instant::now() < end {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]);
            if msg.lines().any(|l| l == "WATCHDOG=1") {
                pings += 1;
            }
        }
    }
    assert_eq!(pings, 5, "forkpool did not ping its watchdog");
    assert!(alive(p.pid().as_raw()));
    let env = std::fs::read_to_string(&env_file).unwrap_or_default();
    assert!(env.contains("FORKPOOL_WORKER="), "{env}");
    assert!(
        !env.contains("WATCHDOG_"),
        "a worker got forkpool's watchdog: {env}"
    );
    assert!(!env.contains("NOTIFY_SOCKET"), "{env}");
    // The other one said READY=1 (so it talks) but never WATCHDOG=1.
    let mut other = String::new();
    let end = Instant::now() + Duration::from_secs(3);
    while Instant::now() < end {
        if let Ok(n) = sock2.recv(&mut buf) {
            other.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(other.contains("READY=1"), "{other}");
    assert!(!other.contains("WATCHDOG=1"), "{other}");
}
