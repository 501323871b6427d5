//! forkpool in a hostile world (issue 17): what forkpool starts, it ends.
//! Workers that fork helpers, kill -9 of forkpool, an orphaned process group
//! while workers are held, job-control signals to the chain's group, a worker
//! that exits 0 at once, descriptor and process limits, planted symlinks.
//!
//! Each test reproduces its bug on the binaries of bbd80f3 (run them with
//! TOOLS_BIN_DIR=that tree's target/debug); the figures are in the commits.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{
    alive, ask, bin, cmd, listener, non_worker_children, read_line_timeout, require_peer,
    wait_until, worker_field, PoolStatus, Proc, TempDir,
};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// Generous: two cores shared by several test runs.
const T: Duration = Duration::from_secs(30);

/// A process the test did not start itself (forkpool behind a shell that
/// exits): KILLed, with its group, when the test ends.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

fn status(p: &Path) -> PoolStatus {
    PoolStatus::read(p)
}

/// Wait until the status file says `key=value`.
fn wait_status(p: &Path, key: &str, value: &str, err: &Path) {
    let ok = wait_until(T, || status(p).get(key) == value);
    assert!(
        ok,
        "{key} never became {value}: {:?}\n{}",
        status(p),
        std::fs::read_to_string(err).unwrap_or_default()
    );
}

/// forkpool on a fresh listening socket, stderr to `dir/err`.
fn forkpool(dir: &TempDir, args: &[&str]) -> (Proc, u16) {
    let (sock, port) = listener();
    let mut c = cmd("forkpool");
    c.args(args)
        .stdin(sock)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("err")).unwrap());
    (Proc::spawn(c), port)
}

/// The pids of the helpers of generation `gen` in a --start-log.
fn helpers(log: &Path, gen: &str) -> Vec<i32> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[3] == "helper" && f[1] == gen).then(|| f[0].parse().ok())?
        })
        .collect()
}

fn tw() -> String {
    bin("test-worker").display().to_string()
}

/// forkpool of `n` test workers, each with a helper (`opts` after `-n`;
/// status in `dir/status`, starts logged to `dir/starts`), once generation 1
/// serves: the pool, its port, the status and start-log paths.
fn helper_pool(dir: &TempDir, n: &str, opts: &[&str]) -> (Proc, u16, PathBuf, PathBuf) {
    let st = dir.join("status");
    let log = dir.join("starts");
    let mut args = vec!["-n", n];
    args.extend_from_slice(opts);
    let tw = tw();
    args.extend_from_slice(&[
        "-d",
        "3",
        "-S",
        st.to_str().unwrap(),
        &tw,
        "--notify-fd",
        "3",
        "--helper",
        "--start-log",
        log.to_str().unwrap(),
    ]);
    let (p, port) = forkpool(dir, &args);
    wait_status(&st, "serving_generation", "1", &dir.join("err"));
    (p, port, st, log)
}

#[test]
fn a_workers_helper_ends_with_it_over_a_cutover_reload() {
    let dir = TempDir::new("hostile-helper");
    let (p, port, st, log) = helper_pool(&dir, "2", &["-m", "cutover"]);
    assert!(
        wait_until(T, || helpers(&log, "1").len() == 2),
        "no helpers"
    );
    let old = helpers(&log, "1");
    p.signal(Signal::SIGHUP);
    wait_status(&st, "serving_generation", "2", &dir.join("err"));
    assert_eq!(status(&st).get("reload"), "ok");
    // once the reload is ok, nothing of generation 1 answers
    let mut gens = Vec::new();
    for _ in 0..60 {
        let a = ask(port).expect("an answer");
        gens.push(worker_field(&a, "gen"));
    }
    let old_answers = gens.iter().filter(|g| *g == "1").count();
    eprintln!("answers from generation 1 after reload=ok: {old_answers} of 60");
    assert_eq!(old_answers, 0, "{gens:?}");
    for h in old {
        // (KILLed when its worker was reaped: gone at once, or about to be)
        assert!(
            wait_until(T, || !alive(h)),
            "helper {h} of generation 1 is still alive"
        );
    }
}

#[test]
fn kill_9_of_forkpool_leaves_no_helper_and_frees_the_port() {
    let dir = TempDir::new("hostile-kill9");
    let (mut p, port, _, log) = helper_pool(&dir, "3", &[]);
    assert!(
        wait_until(T, || helpers(&log, "1").len() == 3),
        "no helpers"
    );
    let helpers = helpers(&log, "1");
    assert!(ask(port).is_some());
    let t0 = Instant::now();
    p.signal(Signal::SIGKILL);
    let _ = p.wait_timeout(T);
    let bind_again = || {
        let mut c = cmd("tcplisten");
        c.args(["127.0.0.1", &port.to_string(), "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c.status().map(|s| s.success()).unwrap_or(false)
    };
    let ok = wait_until(Duration::from_secs(10), bind_again);
    let took = t0.elapsed();
    eprintln!("tcplisten could bind the port again after {took:?}: {ok}");
    let left: Vec<i32> = helpers.iter().copied().filter(|&h| alive(h)).collect();
    // whatever was left is not the test's to keep
    for &h in &left {
        let _ = kill(Pid::from_raw(h), Signal::SIGKILL);
    }
    assert!(ok, "the port is still held after kill -9 of forkpool");
    assert!(left.is_empty(), "helpers left: {left:?}");
}

/// `bash -c 'set -m; forkpool ... &'`: forkpool leads its own process group
/// (job control) and the shell, its parent, waits for the file `go` and
/// exits: the group is orphaned. (`disown`: else bash itself sends TERM and
/// CONT to a stopped job when it exits.) Returns the shell and forkpool's pid.
fn behind_a_job_shell(dir: &TempDir, args: &[&str]) -> (Proc, KillOnDrop, u16) {
    let (sock, port) = listener();
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(
            "set -m; exec 3<&0; \"$@\" <&3 3<&- & echo $!; disown; \
             while [ ! -e go ]; do sleep 0.02; done; exit 0",
        )
        .arg("job")
        .arg(bin("forkpool"))
        .args(args)
        .current_dir(dir.path())
        .stdin(sock)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("err")).unwrap());
    let mut sh = Proc::spawn(c);
    let (line, _) = read_line_timeout(sh.stdout(), T).expect("forkpool's pid");
    let pid: i32 = line.parse().expect("a pid");
    (sh, KillOnDrop(pid), port)
}

#[test]
fn an_orphaned_process_group_neither_reloads_nor_stops_held_workers() {
    let dir = TempDir::new("hostile-orphan");
    let st = dir.join("status");
    let conf = dir.join("conf");
    // generation 1 ignores TERM: the cutover stays held (-k 60 s) while it serves
    std::fs::write(&conf, "--ignore-term").unwrap();
    let (mut sh, fp, port) = behind_a_job_shell(
        &dir,
        &[
            "-n",
            "2",
            "-m",
            "cutover",
            "-d",
            "3",
            "-k",
            "60000",
            "-S",
            "status",
            &tw(),
            "--notify-fd",
            "3",
            "--conf",
            conf.to_str().unwrap(),
        ],
    );
    wait_status(&st, "serving_generation", "1", &dir.join("err"));
    std::fs::remove_file(&conf).unwrap();
    kill(Pid::from_raw(fp.0), Signal::SIGHUP).unwrap();
    wait_status(&st, "held", "2", &dir.join("err"));
    let before = status(&st);
    for pid in before.gen_pids(2, "held") {
        assert!(
            wait_until(T, || stopped(pid)),
            "held worker {pid} not stopped"
        );
    }
    let old = before.gen_pids(1, "stopping");
    assert_eq!(old.len(), 2, "{before:?}");
    // the shell exits: forkpool's group is orphaned
    std::fs::write(dir.join("go"), "").unwrap();
    assert!(sh.wait_timeout(T).is_some(), "the shell did not exit");
    // clients are served by generation 1 meanwhile, none fails
    let mut failed = 0;
    for _ in 0..20 {
        match ask(port) {
            Some(a) => assert_eq!(worker_field(&a, "gen"), "1", "{a}"),
            None => failed += 1,
        }
    }
    let changed = wait_until(Duration::from_secs(3), || {
        let s = status(&st);
        s.get("generation") != "2" || s.num("held") != 2
    });
    let after = status(&st);
    let err = std::fs::read_to_string(dir.join("err")).unwrap_or_default();
    eprintln!(
        "after the orphaning: generation={} held={} failed={failed}",
        after.get("generation"),
        after.get("held")
    );
    assert!(!changed, "the orphaning changed the pool: {after:?}\n{err}");
    assert_eq!(failed, 0, "{err}");
    for pid in old {
        assert!(alive(pid), "old worker {pid} is gone\n{err}");
    }
}

/// What the orphan test above rests on: a test-worker that ignores TERM
/// survives one whatever it is doing. It failed by chance under load (issue
/// 25): generation 1 got its TERM a few milliseconds after its readiness
/// message, before its first wait; TERM was blocked there, and the kernel
/// keeps a blocked signal pending even when its action is to ignore it; the
/// wait that followed found the hold descriptor at end of file with TERM
/// pending and took that for a stop (exit 0). Here the TERM comes while the
/// worker serves a connection and another one is queued: the same path.
#[test]
fn a_test_worker_ignoring_term_survives_one_that_comes_while_it_is_busy() {
    let dir = TempDir::new("hostile-ignore-term");
    let log = dir.join("accepts");
    let (sock, port) = listener();
    let mut c = cmd("test-worker");
    c.args(["--ignore-term", "--serve-delay", "1000", "--accept-log"])
        .arg(&log)
        .stdin(sock)
        .stdout(Stdio::null());
    let p = Proc::spawn(c);
    let mut first = integration_tests::connect(port);
    assert!(
        wait_until(T, || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.contains("accept"))),
        "the first connection was never accepted"
    );
    // queued in the backlog while the worker serves the first one
    let mut second = integration_tests::connect(port);
    p.signal(Signal::SIGTERM);
    let mut a = String::new();
    first.read_to_string(&mut a).unwrap();
    assert!(a.starts_with("pid="), "first answer: {a:?}");
    let mut b = String::new();
    let _ = second.read_to_string(&mut b);
    assert!(
        b.starts_with("pid="),
        "the worker took the ignored TERM for a stop: second answer {b:?}"
    );
}

/// Whether a process is stopped (state T).
fn stopped(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('T')
        })
        .unwrap_or(false)
}

#[test]
fn a_hup_from_the_kernel_is_not_a_reload() {
    // forkpool itself stopped when its group is orphaned: the kernel sends it
    // SIGHUP (si_code SI_KERNEL) and SIGCONT
    let dir = TempDir::new("hostile-kernel-hup");
    let st = dir.join("status");
    let (mut sh, fp, port) = behind_a_job_shell(
        &dir,
        &[
            "-n",
            "1",
            "-d",
            "3",
            "-S",
            "status",
            &tw(),
            "--notify-fd",
            "3",
        ],
    );
    wait_status(&st, "serving_generation", "1", &dir.join("err"));
    kill(Pid::from_raw(fp.0), Signal::SIGSTOP).unwrap();
    assert!(wait_until(T, || stopped(fp.0)), "forkpool did not stop");
    std::fs::write(dir.join("go"), "").unwrap();
    assert!(sh.wait_timeout(T).is_some(), "the shell did not exit");
    let err = || std::fs::read_to_string(dir.join("err")).unwrap_or_default();
    // the warning says it was seen (and that forkpool runs again)
    assert!(
        wait_until(T, || err().contains("ignored a SIGHUP sent by the kernel")),
        "{}",
        err()
    );
    assert_eq!(status(&st).get("generation"), "1", "{}", err());
    assert_eq!(worker_field(&ask(port).expect("an answer"), "gen"), "1");
    // a kill -HUP still is a reload
    kill(Pid::from_raw(fp.0), Signal::SIGHUP).unwrap();
    wait_status(&st, "serving_generation", "2", &dir.join("err"));
}

#[test]
fn job_control_signals_to_the_chains_group_do_not_reach_the_workers() {
    // a terminal's HUP and INT go to the foreground group: forkpool's. The
    // workers (here ignoring TERM, the stop signal) must hear of them only
    // as forkpool's reload and stop.
    let dir = TempDir::new("hostile-tty");
    let st = dir.join("status");
    let conf = dir.join("conf");
    std::fs::write(&conf, "--ignore-term").unwrap();
    let (p, _port) = forkpool(
        &dir,
        &[
            "-n",
            "2",
            "-m",
            "cutover",
            "-d",
            "3",
            "-k",
            "60000",
            "-S",
            st.to_str().unwrap(),
            &tw(),
            "--notify-fd",
            "3",
            "--conf",
            conf.to_str().unwrap(),
        ],
    );
    let err = || std::fs::read_to_string(dir.join("err")).unwrap_or_default();
    wait_status(&st, "serving_generation", "1", &dir.join("err"));
    let gen1 = status(&st).gen_pids(1, "ready");
    std::fs::remove_file(&conf).unwrap();
    killpg(p.pid(), Signal::SIGHUP).unwrap();
    let whole = wait_until(T, || {
        let s = status(&st);
        s.gen_pids(2, "held").len() + s.gen_pids(2, "ready").len() == 2
    });
    assert!(whole, "{:?}\n{}", status(&st), err());
    for &pid in &gen1 {
        assert!(
            alive(pid),
            "worker {pid} took the group's HUP as a stop\n{}",
            err()
        );
    }
    let gen2 = status(&st).gen_pids(2, "held");
    killpg(p.pid(), Signal::SIGINT).unwrap();
    wait_status(&st, "state", "stopping", &dir.join("err"));
    // generation 1 ignores TERM (forkpool's stop signal) and lives on until -k
    for &pid in &gen1 {
        assert!(
            alive(pid),
            "worker {pid} took the group's INT as a stop\n{}",
            err()
        );
    }
    // generation 2 (held, cooperating) took forkpool's TERM and is gone
    for &pid in &gen2 {
        assert!(
            wait_until(T, || !alive(pid)),
            "held worker {pid} never ended"
        );
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = s.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields 14 and 15 of the line; `rest` starts at field 3
    f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0)
}

#[test]
fn a_worker_that_exits_0_at_once_is_restarted_once_a_second_with_a_warning() {
    let dir = TempDir::new("hostile-exit0");
    let (p, _port) = forkpool(
        &dir,
        &["-n", "4", "-d", "3", "sh", "-c", "echo >&3; exit 0"],
    );
    let err = || std::fs::read_to_string(dir.join("err")).unwrap_or_default();
    let pid = p.pid().as_raw();
    let warnings = || {
        err()
            .lines()
            .filter(|l| l.contains("exited 0") && l.contains("counted as a crash"))
            .count()
    };
    // the measurement window: forkpool's CPU over three seconds of wall
    // clock at least, and until the four warnings came (on a busy machine
    // three seconds were not always enough for them: the count is a
    // condition, not a number of events in a time)
    let (c0, t0) = (cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_secs(3));
    wait_until(Duration::from_secs(30), || warnings() >= 4);
    let (c1, wall) = (cpu_ticks(pid), t0.elapsed());
    // SAFETY: sysconf(3) with a valid name reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let share = (c1 - c0) as f64 / hz / wall.as_secs_f64();
    eprintln!(
        "forkpool's CPU with 4 workers exiting 0 at once: {:.1}% of a core",
        share * 100.0
    );
    let warnings = warnings();
    eprintln!("warnings: {warnings}");
    assert!(
        share < 0.10,
        "forkpool used {:.1}% of a core",
        share * 100.0
    );
    assert!(warnings >= 4, "{}", err());
}

#[test]
fn running_out_of_descriptors_fails_the_reload_with_the_reason() {
    let dir = TempDir::new("hostile-emfile");
    let st = dir.join("status");
    let (sock, _port) = listener();
    let mut c = Command::new("sh");
    c.arg("-c")
        // enough for generation 1 (a ready worker keeps its readiness pipe
        // open in forkpool, for its messages), not for generation 2 beside it
        .arg("ulimit -n 24 && exec \"$@\"")
        .arg("limited")
        .arg(bin("forkpool"))
        .args(["-n", "8", "-m", "cutover", "-d", "3", "-S"])
        .arg(&st)
        .args([tw().as_str(), "--notify-fd", "3"])
        .stdin(sock)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("err")).unwrap());
    let p = Proc::spawn(c);
    wait_status(&st, "serving_generation", "1", &dir.join("err"));
    p.signal(Signal::SIGHUP);
    wait_status(&st, "reload", "failed", &dir.join("err"));
    let s = status(&st);
    eprintln!("reason={}", s.get("reason"));
    assert!(s.get("reason").contains("Too many open files"), "{s:?}");
    // generation 1 serves on, whole; generation 2's workers go
    assert!(
        wait_until(T, || {
            let s = status(&st);
            s.num("ready") == 8 && s.workers.iter().all(|w| w.1 == 1)
        }),
        "{:?}",
        status(&st)
    );
}

/// How many processes run as `uid` (RLIMIT_NPROC counts them all).
fn processes_of(uid: u32) -> usize {
    let Ok(d) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let uid = uid.to_string();
    d.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("status"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid))
        })
        .count()
}

/// A user id of no account and no process, of this test run's own (from
/// its pid): a second suite on the machine runs its own pool under another.
fn a_uid_of_our_own() -> u32 {
    let base = 40_000 + std::process::id() % 20_000;
    (base..base + 1000)
        .find(|&u| processes_of(u) == 0)
        .unwrap_or(base)
}

#[test]
fn a_fork_that_fails_fails_the_reload_with_the_reason() {
    // RLIMIT_NPROC binds only a user without CAP_SYS_RESOURCE: run the
    // chain as nobody
    // (A user of its own, not nobody: a second suite's pool ran as nobody
    // too, and a limit counted from nobody's processes at the start let the
    // reload through when that pool ended meanwhile: reload=ok after 30 s.)
    let uid = a_uid_of_our_own().to_string();
    let ids = [
        "--reuid",
        uid.as_str(),
        "--regid",
        uid.as_str(),
        "--clear-groups",
    ];
    let as_nobody = nix::unistd::getuid().is_root()
        && Command::new("setpriv")
            .args(ids)
            .arg("true")
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
        && Command::new("setpriv")
            .args(ids)
            .arg(bin("forkpool"))
            .arg("-V")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if !as_nobody {
        eprintln!("skipping: needs root, setpriv and binaries any user can run");
        return;
    }
    let dir = TempDir::new("hostile-nproc");
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let st = dir.join("status");
    let (sock, _port) = listener();
    // The pool: forkpool, its guard, 3 workers (the user has no other
    // process); the new generation's forks fail (EAGAIN).
    let limit = processes_of(uid.parse().expect("uid")) + 5;
    let mut c = Command::new("setpriv");
    c.args(ids)
        .args(["bash", "-c"])
        .arg(format!("ulimit -u {limit} && exec \"$@\""))
        .arg("limited")
        .arg(bin("forkpool"))
        .args(["-n", "3", "-d", "3", "-S"])
        .arg(&st)
        .args([tw().as_str(), "--notify-fd", "3"])
        .stdin(sock)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("err")).unwrap());
    let p = Proc::spawn(c);
    wait_status(&st, "serving_generation", "1", &dir.join("err"));
    p.signal(Signal::SIGHUP);
    wait_status(&st, "reload", "failed", &dir.join("err"));
    let s = status(&st);
    eprintln!("reason={}", s.get("reason"));
    // EAGAIN, as the C library words it
    let r = s.get("reason");
    assert!(r.contains("unable to start worker"), "{s:?}");
    assert!(
        r.contains("Try again") || r.contains("Resource temporarily unavailable"),
        "{s:?}"
    );
}

#[test]
fn planted_symlinks_at_the_status_temporary_are_never_followed() {
    // The old writer created `path.tmp.PID` with a plain create (following
    // a symlink planted there, truncating its target). Plant that name and
    // the other guessable ones, for forkpool's pid, before it writes. (The
    // fix, unixtool::statusfile::replace, came before this test: see the
    // commit that added this comment for why it fails on the old writer.)
    let dir = TempDir::new("hostile-planted");
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let (sock, _port) = listener();
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("while [ ! -e go ]; do sleep 0.02; done; exec \"$@\"")
        .arg("wait")
        .arg(bin("forkpool"))
        .args(["-n", "1", "-d", "3", "-S", "status"])
        .args([tw().as_str(), "--notify-fd", "3"])
        .current_dir(dir.path())
        .stdin(sock)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("err")).unwrap());
    let p = Proc::spawn(c);
    let pid = p.pid().as_raw();
    for n in [pid, pid + 1, pid - 1] {
        for name in [
            format!("status.tmp.{n}"),
            format!(".status.tmp.{n}"),
            format!("status.{n}.tmp"),
        ] {
            std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
        }
    }
    for name in ["status.tmp", ".status.tmp", "status.new", "status~"] {
        std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
    }
    std::fs::write(dir.join("go"), "").unwrap();
    let st = dir.join("status");
    wait_status(&st, "serving_generation", "1", &dir.join("err"));
    p.signal(Signal::SIGHUP);
    wait_status(&st, "serving_generation", "2", &dir.join("err"));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    let meta = std::fs::symlink_metadata(&st).unwrap();
    assert!(meta.file_type().is_file(), "{meta:?}");
    assert_eq!(status(&st).num("pid"), pid as u64);
}

/// An HTTP GET of `/` answered by the gunicorn app: the body (a generation).
fn get(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
}

/// The app answers with its generation; each worker says READY=1 (forkpool
/// --notify) and nothing reads the hold descriptor: only the stop of the
/// whole group holds it.
const GEN_APP: &str = r#"
import os
GEN = os.environ.get('FORKPOOL_GENERATION', '-')
def app(environ, start_response):
    body = GEN.encode()
    start_response('200 OK', [('Content-Length', str(len(body)))])
    return [body]
"#;

const GEN_CONF: &str = r#"
import os, socket, time
NOTIFY = os.environ.pop('NOTIFY_SOCKET', None)
def post_worker_init(worker):
    # slot 1 comes up only when the test says (it writes go-GENERATION once
    # it has asked its questions; it was a fixed 3 s): slot 0's server
    # waits, held, for its generation to be whole
    if os.environ.get('FORKPOOL_WORKER') == '1':
        go = 'go-' + os.environ.get('FORKPOOL_GENERATION', '-')
        end = time.time() + 60
        while not os.path.exists(go) and time.time() < end:
            time.sleep(0.01)
    if NOTIFY:
        addr = '\0' + NOTIFY[1:] if NOTIFY.startswith('@') else NOTIFY
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b'READY=1', addr)
    # forkpool's SIGSTOP comes meanwhile (no accept between READY=1 and it)
    time.sleep(0.3)
"#;

#[test]
fn a_prefork_server_is_held_and_stopped_as_one() {
    if !require_peer("gunicorn") {
        return;
    }
    let dir = TempDir::new("hostile-gunicorn");
    std::fs::write(dir.join("genapp.py"), GEN_APP).unwrap();
    std::fs::write(dir.join("gunicorn.conf.py"), GEN_CONF).unwrap();
    std::fs::write(dir.join("go-1"), "").unwrap();
    let st = dir.join("status");
    let (sock, port) = listener();
    let mut c = cmd("forkpool");
    c.args([
        "-n", "2", "-m", "cutover", "--notify", "-t", "30000", "-k", "30000", "-S",
    ])
    .arg(&st)
    .args([
        "gunicorn",
        "--no-control-socket",
        "--preload",
        "--workers",
        "2",
        "--bind",
        "fd://0",
        "genapp:app",
    ])
    .current_dir(dir.path())
    .env_remove("GUNICORN_CMD_ARGS")
    .stdin(sock)
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(dir.join("err")).unwrap());
    let p = Proc::spawn(c);
    let err = || std::fs::read_to_string(dir.join("err")).unwrap_or_default();
    wait_status(&st, "serving_generation", "1", &dir.join("err"));
    // clients: each remembers the newest generation it saw
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || {
                let (mut newest, mut answers, mut flapping, mut failed) = (0u64, 0, 0, 0);
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    match get(port).and_then(|g| g.parse::<u64>().ok()) {
                        Some(g) => {
                            answers += 1;
                            if g < newest {
                                flapping += 1;
                            }
                            newest = newest.max(g);
                        }
                        None => failed += 1,
                    }
                }
                (answers, flapping, failed)
            })
        })
        .collect();
    let mut early = Vec::new();
    for g in 2..=4u64 {
        p.signal(Signal::SIGHUP);
        // slot 0's server is held (slot 1 waits for go-G): it must not answer
        let held = wait_until(Duration::from_secs(60), || {
            status(&st).gen_pids(g, "held").len() == 1
        });
        assert!(held, "reload {g}: {:?}\n{}", status(&st), err());
        for _ in 0..10 {
            early.push(get(port).unwrap_or_default());
        }
        let s = status(&st);
        assert!(
            s.num("serving_generation") < g,
            "the hold window closed too soon: {s:?}"
        );
        std::fs::write(dir.join(format!("go-{g}")), "").unwrap();
        let ok = wait_until(Duration::from_secs(60), || {
            let s = status(&st);
            s.num("serving_generation") == g && s.get("reload") == "ok"
        });
        assert!(ok, "reload {g}: {:?}\n{}", status(&st), err());
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut answers, mut flapping, mut failed) = (0, 0, 0);
    for c in clients {
        let (a, f, x) = c.join().unwrap();
        answers += a;
        flapping += f;
        failed += x;
    }
    // the answers while held: 10 per reload, each from the generation before
    let premature = early
        .iter()
        .enumerate()
        .filter(|(i, a)| a.parse::<usize>().ok() != Some(i / 10 + 1))
        .count();
    eprintln!("gunicorn -w 2 under forkpool -n 2 -m cutover, 3 reloads: {answers} answers, {flapping} flapping, {failed} failed; while held: {premature} of {} answers from the held generation", early.len());
    assert_eq!(premature, 0, "the held generation answered: {early:?}");
    assert!(answers > 0);
    assert_eq!(failed, 0, "{}", err());
    assert_eq!(flapping, 0, "{}", err());
}

/// An in-place upgrade (USR2) hands the guard over: one guard across any
/// number of upgrades and reloads (found: each image forked a guard of its
/// own at its first worker, and the old one never learnt that groups ended),
/// and kill -9 after the upgrades still ends every helper.
#[test]
fn upgrades_keep_one_guard_and_kill_9_still_ends_every_helper() {
    let dir = TempDir::new("hostile-upgrade-guard");
    let (mut p, port, st, log) = helper_pool(&dir, "2", &[]);
    let err = dir.join("err");
    let guards = non_worker_children(p.pid().as_raw(), &st);
    assert_eq!(guards.len(), 1, "one guard at start: {guards:?}");
    for (i, gen) in [(1u64, "2"), (2, "3"), (3, "4")] {
        p.signal(Signal::SIGUSR2);
        let ok = wait_until(T, || {
            let s = status(&st);
            s.num("upgrades") == i && s.get("upgrade") == "ok"
        });
        assert!(ok, "upgrade {i}: {:?}", status(&st));
        // new workers after the upgrade: the new image must not fork a guard
        p.signal(Signal::SIGHUP);
        wait_status(&st, "serving_generation", gen, &err);
    }
    assert!(
        wait_until(T, || non_worker_children(p.pid().as_raw(), &st) == guards),
        "the same one guard after 3 upgrades: {:?} (was {guards:?})",
        non_worker_children(p.pid().as_raw(), &st)
    );
    assert!(wait_until(T, || helpers(&log, "4").len() == 2));
    let helpers = helpers(&log, "4");
    assert!(ask(port).is_some());
    p.signal(Signal::SIGKILL);
    let _ = p.wait_timeout(T);
    let gone = wait_until(T, || helpers.iter().all(|&h| !alive(h)));
    for &h in &helpers {
        let _ = kill(Pid::from_raw(h), Signal::SIGKILL);
    }
    assert!(gone, "helpers left after kill -9 following upgrades");
}
