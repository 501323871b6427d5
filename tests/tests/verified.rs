//! forkpool --confirm-timeout, the verified switch (issue 26), run as an
//! operator would, with test-worker as the program and poolctl as the
//! controller: at the switch the old generation is parked (stopped, warm)
//! and the new one released at once; `revert` brings the very same old
//! workers back under load with nothing failed and no process started;
//! `confirm` retires them; no confirm in time (a controller killed with -9)
//! reverts by itself and says so; HUP and prepare are refused meanwhile;
//! TERM leaves nothing; a USR2 hands the pending switch over; a parked
//! worker that died is refilled at a revert; a two-phase commit is verified
//! too; `-m cutover` with timed readiness warns at start.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::*;
use nix::sys::signal::Signal;

mod common;
use common::proc_state;

const LONG: Duration = Duration::from_secs(30);
const N: usize = 3;

/// `forkpool -m cutover -C control --confirm-timeout MS` over test-worker
/// (`--notify-fd 3`, every start logged), 3 workers, on a fresh socket.
struct Pool {
    p: Proc,
    port: u16,
    dir: TempDir,
}

impl Pool {
    fn start(tag: &str, confirm_ms: &str, extra: &[&str]) -> Pool {
        Pool::start_in(cmd("forkpool"), tag, confirm_ms, extra)
    }

    /// As start, forkpool run by `c` (forkpool itself, or a wrapper that
    /// execs it with the arguments that follow).
    fn start_in(mut c: Command, tag: &str, confirm_ms: &str, extra: &[&str]) -> Pool {
        let dir = TempDir::new(tag);
        let (sock, port) = listener();
        c.args([
            "-v", "-S", "status", "-C", "control", "-m", "cutover", "-d", "3",
        ]);
        c.args(["-n", "3", "-t", "20000", "-k", "5000"]);
        c.args(["--confirm-timeout", confirm_ms]).args(extra);
        c.arg(bin("test-worker"))
            .args(["--notify-fd", "3", "--start-log"])
            .arg(dir.join("starts"));
        c.stdin(sock)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log")).expect("log"))
            .current_dir(dir.path());
        let pool = Pool {
            p: Proc::spawn(c),
            port,
            dir,
        };
        pool.wait_serving(1);
        pool
    }

    fn st(&self) -> PathBuf {
        self.dir.join("status")
    }

    fn status(&self) -> PoolStatus {
        PoolStatus::read(&self.st())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    fn starts(&self) -> usize {
        let s = std::fs::read_to_string(self.dir.join("starts")).unwrap_or_default();
        s.lines().count()
    }

    /// Generation `g` serves, every worker of it ready and nothing else alive.
    fn wait_serving(&self, g: u64) {
        let ok = wait_until(LONG, || {
            let s = self.status();
            s.num("serving_generation") == g
                && s.gen_pids(g, "ready").len() == N
                && s.workers.len() == N
        });
        assert!(
            ok,
            "generation {g} never served alone: {:?}\n{}",
            self.status().kv,
            self.log()
        );
    }

    /// `poolctl ARGS STATUSFILE`: (code, stdout, stderr).
    fn poolctl(&self, args: &[&str]) -> (i32, String, String) {
        let mut c = cmd("poolctl");
        c.args(args).arg(self.st());
        run(c, Duration::from_secs(60))
    }

    /// A reload (poolctl reload: ok once generation 2 serves), then the switch
    /// is pending with the old workers parked; their pids.
    fn switch(&self) -> Vec<i32> {
        let old = self.status().gen_pids(1, "ready");
        assert_eq!(old.len(), N);
        let (code, out, err) = self.poolctl(&["reload", "-t", "30"]);
        assert_eq!(code, 0, "reload: {out}{err}\n{}", self.log());
        let s = self.status();
        assert_eq!(s.get("verify"), "pending", "{:?}", s.kv);
        assert_eq!(s.num("verify_generation"), 2);
        assert_eq!(s.num("parked_generation"), 1);
        assert_eq!(s.num("parked"), N as u64);
        assert_eq!(s.num("held"), 0);
        assert_eq!(s.num("serving_generation"), 2);
        assert_eq!(s.gen_pids(1, "parked"), old, "{:?}", s.workers);
        assert_eq!(s.gen_pids(2, "ready").len(), N, "{:?}", s.workers);
        let deadline: f64 = s.get("verify_deadline").parse().expect("verify_deadline");
        assert!(deadline > 1.7e9, "{deadline}");
        // Stopped, warm: alive, state T.
        assert!(
            wait_until(LONG, || old.iter().all(|&p| proc_state(p) == 'T')),
            "parked workers not stopped: {:?}",
            old.iter().map(|&p| proc_state(p)).collect::<Vec<_>>()
        );
        old
    }

    /// The generation that answers a connection now.
    fn answer_gen(&self) -> String {
        ask(self.port)
            .map(|l| worker_field(&l, "gen"))
            .unwrap_or_default()
    }
}

fn gone(pid: i32) -> bool {
    matches!(proc_state(pid), '?' | 'Z')
}

#[test]
fn revert_under_load_brings_back_the_same_old_workers_with_nothing_failed_and_nothing_started() {
    let pool = Pool::start("verified-revert", "60000", &[]);
    let mut hammer = Hammer::start(pool.port, 8);
    let old = pool.switch();
    assert_eq!(pool.answer_gen(), "2");
    let started = pool.starts();
    assert_eq!(started, 2 * N);

    let t = std::time::Instant::now();
    let (code, out, err) = pool.poolctl(&["revert", "-t", "30"]);
    eprintln!(
        "poolctl revert answered in {:?} (not asserted)",
        t.elapsed()
    );
    assert_eq!(code, 0, "revert: {out}{err}\n{}", pool.log());
    assert!(
        out.contains(
            "poolctl: revert ok: generation 1 serving again, 3 of 3 ready; generation 2 retired"
        ),
        "{out}"
    );
    let s = pool.status();
    assert_eq!(s.get("verify"), "reverted");
    assert_eq!(s.get("reason"), "revert requested");
    assert_eq!(s.get("command"), "1 revert accepted");
    assert_eq!(s.get("parked_generation"), "");
    assert_eq!(
        s.gen_pids(1, "ready"),
        old,
        "the same workers: {:?}",
        s.workers
    );
    assert_eq!(pool.answer_gen(), "1");
    pool.wait_serving(1);
    let (answered, failed) = hammer.stop();
    eprintln!("revert under 8 clients: {answered} answered, {failed} failed");
    assert!(answered > 50, "{answered}");
    assert_eq!(failed, 0);
    assert_eq!(pool.starts(), started, "no process started by the revert");
    assert!(old.iter().all(|&p| proc_state(p) != 'T'));
    // Nothing pending any more: a second revert is refused, with the reason.
    let (code, _, err) = pool.poolctl(&["revert", "-t", "10"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("revert failed: revert refused: no generation awaits confirm or revert (verify=reverted)"), "{err}");
}

#[test]
fn confirm_retires_the_parked_generation() {
    let pool = Pool::start("verified-confirm", "60000", &[]);
    let old = pool.switch();
    let (code, out, err) = pool.poolctl(&["confirm", "-t", "30"]);
    assert_eq!(code, 0, "confirm: {out}{err}\n{}", pool.log());
    assert!(
        out.contains("poolctl: confirm ok: generation 2 confirmed"),
        "{out}"
    );
    assert!(
        wait_until(LONG, || old.iter().all(|&p| gone(p))),
        "the parked workers did not exit: {}",
        pool.log()
    );
    pool.wait_serving(2);
    let s = pool.status();
    assert_eq!((s.get("verify"), s.get("parked")), ("confirmed", "0"));
    assert_eq!(pool.answer_gen(), "2");
    let (code, _, err) = pool.poolctl(&["confirm", "-t", "10"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("confirm refused"), "{err}");
}

#[test]
fn no_confirm_in_time_after_the_controller_is_killed_reverts_and_says_why() {
    let pool = Pool::start("verified-timeout", "1500", &[]);
    let old = pool.status().gen_pids(1, "ready");
    // A controller that switches, then dies (-9) before it confirms.
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "'{}' reload -t 30 '{}' && exec sleep 600",
            bin("poolctl").display(),
            pool.st().display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut controller = Proc::spawn(c);
    assert!(
        wait_until(LONG, || pool.status().get("verify") == "pending"),
        "never pending: {}",
        pool.log()
    );
    controller.signal(Signal::SIGKILL);
    controller.wait_timeout(LONG).expect("the controller dies");
    assert!(
        wait_until(LONG, || pool.status().get("verify") == "reverted"),
        "no revert at the deadline: {:?}\n{}",
        pool.status().kv,
        pool.log()
    );
    let s = pool.status();
    assert_eq!(
        s.get("reason"),
        "generation 2 not confirmed within 1.50s: reverted"
    );
    assert_eq!(s.num("serving_generation"), 1);
    assert_eq!(s.gen_pids(1, "ready"), old);
    pool.wait_serving(1);
    assert_eq!(pool.starts(), 2 * N);
    assert!(
        pool.log().contains("not confirmed within 1.50s: reverted"),
        "{}",
        pool.log()
    );
}

#[test]
fn a_hup_or_a_prepare_while_pending_is_refused() {
    let pool = Pool::start("verified-hup", "60000", &[]);
    let old = pool.switch();
    let (code, _, err) = pool.poolctl(&["reload", "-t", "30"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("HUP refused: generation 2 awaits confirm or revert"),
        "{err}"
    );
    let (code, _, err) = pool.poolctl(&["prepare", "-t", "30"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("prepare refused: generation 2 awaits confirm or revert"),
        "{err}"
    );
    let s = pool.status();
    assert_eq!(s.get("verify"), "pending");
    assert_eq!(s.gen_pids(1, "parked"), old);
    assert_eq!(pool.starts(), 2 * N, "nothing started for them");
    let (code, out, err) = pool.poolctl(&["revert", "-t", "30"]);
    assert_eq!(code, 0, "{out}{err}");
    pool.wait_serving(1);
}

#[test]
fn term_while_pending_leaves_nothing() {
    let mut pool = Pool::start("verified-term", "60000", &[]);
    let old = pool.switch();
    let all: Vec<i32> = pool.status().workers.iter().map(|w| w.2).collect();
    assert_eq!(all.len(), 2 * N);
    assert!(old.iter().all(|p| all.contains(p)));
    pool.p.signal(Signal::SIGTERM);
    let st = pool
        .p
        .wait_timeout(LONG)
        .expect("forkpool exits after TERM");
    assert_eq!(st.code(), Some(0), "{}", pool.log());
    assert!(
        wait_until(LONG, || all.iter().all(|&p| gone(p))),
        "workers left: {:?}",
        all.iter().filter(|&&p| !gone(p)).collect::<Vec<_>>()
    );
}

#[test]
fn a_parked_worker_that_died_is_refilled_in_the_old_generation_at_the_revert() {
    let pool = Pool::start("verified-died", "60000", &[]);
    let old = pool.switch();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old[1]), Signal::SIGKILL).expect("kill");
    assert!(
        wait_until(LONG, || pool.status().num("parked") == (N - 1) as u64),
        "{:?}",
        pool.status().kv
    );
    assert_eq!(pool.starts(), 2 * N, "not refilled while pending");
    let (code, out, err) = pool.poolctl(&["revert", "-t", "30"]);
    assert_eq!(code, 0, "revert: {out}{err}\n{}", pool.log());
    pool.wait_serving(1);
    let now = pool.status().gen_pids(1, "ready");
    assert_eq!(
        pool.starts(),
        2 * N + 1,
        "one worker of generation 1 started"
    );
    assert!(
        now.contains(&old[0]) && now.contains(&old[2]) && !now.contains(&old[1]),
        "{now:?} {old:?}"
    );
}

#[test]
fn a_usr2_while_pending_hands_the_parked_generation_over() {
    let pool = Pool::start("verified-usr2", "60000", &[]);
    let old = pool.switch();
    let deadline = pool.status().get("verify_deadline").to_string();
    pool.p.signal(Signal::SIGUSR2);
    assert!(
        wait_until(LONG, || pool.status().num("upgrades") == 1
            && pool.status().get("upgrade") == "ok"),
        "no upgrade: {:?}\n{}",
        pool.status().kv,
        pool.log()
    );
    let s = pool.status();
    assert_eq!(s.get("verify"), "pending", "{:?}", s.kv);
    assert_eq!(s.gen_pids(1, "parked"), old);
    let (a, b): (f64, f64) = (
        deadline.parse().expect("deadline"),
        s.get("verify_deadline").parse().expect("deadline after"),
    );
    assert!((a - b).abs() < 0.05, "{a} {b}");
    let (code, out, err) = pool.poolctl(&["revert", "-t", "30"]);
    assert_eq!(code, 0, "revert after USR2: {out}{err}\n{}", pool.log());
    assert_eq!(pool.status().gen_pids(1, "ready"), old);
    assert_eq!(pool.starts(), 2 * N);
}

#[test]
fn a_two_phase_commit_with_a_confirm_timeout_is_verified_too() {
    let pool = Pool::start("verified-commit", "60000", &[]);
    let old = pool.status().gen_pids(1, "ready");
    let (code, out, err) = pool.poolctl(&["prepare", "-t", "30"]);
    assert_eq!(code, 0, "prepare: {out}{err}");
    let (code, out, err) = pool.poolctl(&["commit", "-t", "30"]);
    assert_eq!(code, 0, "commit: {out}{err}\n{}", pool.log());
    assert!(out.contains("; generation 1 parked until"), "{out}");
    let s = pool.status();
    assert_eq!((s.get("phase"), s.get("verify")), ("committed", "pending"));
    assert_eq!(s.gen_pids(1, "parked"), old);
    let (code, out, err) = pool.poolctl(&["revert", "-t", "30"]);
    assert_eq!(code, 0, "revert: {out}{err}");
    pool.wait_serving(1);
    assert_eq!(pool.status().gen_pids(1, "ready"), old);
    assert_eq!(pool.status().get("command"), "3 revert accepted");
}

#[test]
fn the_options_are_checked_and_timed_readiness_under_cutover_warns() {
    for bad in [
        &["-m", "cutover", "--confirm-timeout", "1000"][..],
        &["-C", "c", "--confirm-timeout", "1000"],
        &["-m", "cutover", "-C", "c", "--confirm-timeout", "0"],
    ] {
        let dir = TempDir::new("verified-usage");
        let mut c = cmd("forkpool");
        c.args(bad).arg(bin("test-worker")).current_dir(dir.path());
        let (code, _, err) = run(c, LONG);
        assert_eq!(code, 100, "{bad:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    let warning = "-m cutover with timed readiness";
    let cases = [
        (&["-a", "200"][..], true),
        (&[][..], true),
        (&["-d", "3", "-a", "200"][..], true),
        (&["-d", "3"][..], false),
    ];
    for (ready, warns) in cases {
        let dir = TempDir::new("verified-warn");
        let (sock, _) = listener();
        let mut c = cmd("forkpool");
        c.args(["-n", "1", "-m", "cutover", "-S", "status"])
            .args(ready)
            .arg(bin("test-worker"));
        if ready.contains(&"-d") {
            c.args(["--notify-fd", "3"]);
        }
        c.stdin(sock)
            .stderr(std::fs::File::create(dir.join("log")).expect("log"))
            .current_dir(dir.path());
        let mut p = Proc::spawn(c);
        let log = || std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        let serving = || PoolStatus::read(&dir.join("status")).num("serving_generation") == 1;
        assert!(wait_until(LONG, serving), "{ready:?}: {}", log());
        if warns {
            assert!(
                wait_until(LONG, || log().contains(warning)),
                "{ready:?}: {}",
                log()
            );
            assert!(
                log().contains("use -d or --notify and the hold descriptor"),
                "{}",
                log()
            );
        }
        p.signal(Signal::SIGTERM);
        let st = p.wait_timeout(LONG).expect("forkpool exits");
        assert_eq!(st.code(), Some(0), "{ready:?} runs on: {}", log());
        assert_eq!(log().contains(warning), warns, "{ready:?}: {}", log());
    }
}

#[test]
fn kill_9_of_forkpool_while_pending_leaves_no_parked_worker_stopped() {
    let mut pool = Pool::start("verified-kill9", "60000", &[]);
    let old = pool.switch();
    let all: Vec<i32> = pool.status().workers.iter().map(|w| w.2).collect();
    pool.p.signal(Signal::SIGKILL);
    pool.p.wait_timeout(LONG).expect("forkpool dies");
    // The guard sends SIGCONT: the parked workers get their stop signal too.
    assert!(
        wait_until(LONG, || all.iter().all(|&p| gone(p))),
        "left: {:?} (parked were {old:?})",
        all.iter()
            .filter(|&&p| !gone(p))
            .map(|&p| (p, proc_state(p)))
            .collect::<Vec<_>>()
    );
}

/// One worker with a helper: a pre-fork server's worker, a child in the
/// worker's group that accepts on the socket too (test-worker --helper; it
/// takes a stop signal only between connections, exactly). The first line
/// of each generation's options is read from `conf` at its start.
fn helper_pool(tag: &str) -> (Proc, u16, TempDir) {
    let dir = TempDir::new(tag);
    std::fs::write(dir.join("conf"), "--helper").expect("conf");
    let (sock, port) = listener();
    let mut c = cmd("forkpool");
    c.args([
        "-v", "-S", "status", "-C", "control", "-m", "cutover", "-d", "3",
    ]);
    c.args(["-n", "1", "-t", "20000", "-k", "5000"]);
    c.args(["--confirm-timeout", "60000"]);
    c.arg(bin("test-worker"))
        .args(["--notify-fd", "3", "--conf", "conf", "--start-log"])
        .arg(dir.join("starts"));
    c.stdin(sock)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("log")).expect("log"))
        .current_dir(dir.path());
    let p = Proc::spawn(c);
    let st = dir.join("status");
    assert!(
        wait_until(LONG, || {
            let s = PoolStatus::read(&st);
            s.num("serving_generation") == 1 && s.gen_pids(1, "ready").len() == 1
        }),
        "generation 1 never served"
    );
    (p, port, dir)
}

/// The helpers of generation `g` (their pids, from the start log).
fn helpers(dir: &TempDir, g: u64) -> Vec<i32> {
    std::fs::read_to_string(dir.join("starts"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[3] == "helper" && f[1] == g.to_string())
                .then(|| f[0].parse().ok())
                .flatten()
        })
        .collect()
}

/// Retiring a stopped group (a confirm's parked generation, a revert's new
/// one) sends the stop signal to every process of the group before the CONT,
/// not to the worker alone: a helper (a pre-fork server's worker) wakes with
/// it pending and never accepts again. Here the new generation's worker holds
/// a connection (`--serve-until go`) and a second one waits in the backlog at
/// the confirm: the new generation answers it once `go` exists. Before, the
/// CONT woke the parked worker's helper with no signal of its own (its master
/// would have relayed one later): it took that connection and answered with
/// generation 1, after generation 2 had answered (the cutover's promise
/// broken; unicorn under the verified switch: 10 to 14 such answers in 3
/// confirms, tests/tests/deploy_servers.rs).
#[test]
fn a_confirm_stops_the_parked_helpers_before_they_wake() {
    let (_p, port, dir) = helper_pool("verified-helper-confirm");
    assert!(
        wait_until(LONG, || helpers(&dir, 1).len() == 1),
        "no helper"
    );
    let go = dir.join("go");
    let accepts = dir.join("accepts");
    std::fs::write(
        dir.join("conf"),
        format!(
            "--serve-until {} --accept-log {}",
            go.display(),
            accepts.display()
        ),
    )
    .expect("conf");
    let mut c = cmd("poolctl");
    c.args(["reload", "-t", "30"]).arg(dir.join("status"));
    let (code, out, err) = run(c, Duration::from_secs(60));
    assert_eq!(code, 0, "reload: {out}{err}");
    // generation 2 holds a connection; a second one waits in the backlog
    let first = std::thread::spawn(move || ask(port));
    assert!(
        wait_until(LONG, || std::fs::read_to_string(&accepts)
            .is_ok_and(|s| s.lines().count() == 1)),
        "generation 2 never accepted"
    );
    let mut second = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let mut c = cmd("poolctl");
    c.args(["confirm", "-t", "30"]).arg(dir.join("status"));
    let (code, out, err) = run(c, Duration::from_secs(60));
    assert_eq!(code, 0, "confirm: {out}{err}");
    let old = helpers(&dir, 1);
    assert!(
        wait_until(LONG, || old.iter().all(|&p| gone(p))
            && PoolStatus::read(&dir.join("status")).workers.len() == 1),
        "generation 1 lingers"
    );
    std::fs::write(&go, "").expect("go");
    let first = first.join().expect("first");
    assert_eq!(
        worker_field(first.as_deref().unwrap_or(""), "gen"),
        "2",
        "{first:?}"
    );
    use std::io::Read;
    second
        .set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut answer = String::new();
    let _ = second.read_to_string(&mut answer);
    assert_eq!(
        worker_field(&answer, "gen"),
        "2",
        "the waiting connection: {answer:?} (generation 1's helper took it after the confirm)"
    );
}

/// The demo app (r1, 2 workers, long stop and read timeouts) under
/// forkpool -C --confirm-timeout 60000; a kept connection of an r1 worker
/// with a second request begun on it; then r2 deployed by a HUP and
/// released while that request is still unfinished (the switch did not
/// wait for it). The site, generation 1's pids, the connection.
fn demo_app_switched_with_a_request_in_hand(
    tag: &str,
) -> (common::Site, Vec<i32>, std::net::TcpStream) {
    use common::{make_release, Mode, Site};
    use std::io::Write;
    let dir = TempDir::new(tag);
    for r in ["r1", "r2"] {
        make_release(dir.path(), r, "--stop-timeout 20000 --read-timeout 30000");
    }
    let site = Site::start_with(
        dir,
        Mode::Forkpool,
        None,
        &["-v", "-C", "control", "--confirm-timeout", "60000"],
    );
    let old = PoolStatus::read(&site.status).gen_pids(1, "ready");
    assert_eq!(old.len(), 2);
    let mut conn = connect(site.port);
    conn.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\n\r\n")
        .expect("send");
    let r = read_response(&mut conn).expect("first answer");
    assert_eq!(r.body().trim(), "r1");
    conn.write_all(b"GET /release HTTP/1.1\r\n").expect("send");
    switch_current(site.dir.path(), "r2", LONG);
    site.chain.signal(Signal::SIGHUP);
    let released = wait_until(LONG, || {
        let s = PoolStatus::read(&site.status);
        s.get("verify") == "pending" && s.num("serving_generation") == 2 && s.num("held") == 0
    });
    assert!(released, "not released: {}", site.log());
    (site, old, conn)
}

/// The demo app takes part in the park (TSTP): at the switch it stops
/// accepting and says `stopping`, so the new generation is released
/// without waiting for the request it has in hand; it finishes that request
/// from its own release (before, the park stopped it with the request in
/// hand, frozen until the confirm or revert), says `parked`, and only then
/// is it stopped (state T), warm; a revert brings the same processes back.
#[test]
fn the_demo_app_parks_itself_a_request_in_hand_is_answered_not_frozen() {
    use std::io::Write;
    let (site, old, mut conn) = demo_app_switched_with_a_request_in_hand("verified-app-park");
    conn.write_all(b"Host: t\r\n\r\n").expect("send the rest");
    let r = read_response(&mut conn);
    let r = r.unwrap_or_else(|| panic!("the request in hand was not answered\n{}", site.log()));
    assert_eq!((r.status, r.body().trim()), (200, "r1"), "{}", r.head);
    // Nothing in hand any more: it said `parked` and forkpool stopped it.
    assert!(
        wait_until(LONG, || old.iter().all(|&p| proc_state(p) == 'T')),
        "not stopped after `parked`: {:?}\n{}",
        old.iter().map(|&p| proc_state(p)).collect::<Vec<_>>(),
        site.log()
    );
    let log = site.log();
    assert!(!log.contains("not stopped within"), "{log}");
    assert_eq!(site.answer().as_deref(), Some("r2"));
    // A revert: the same two processes serve r1 again.
    let mut c = cmd("poolctl");
    c.args(["revert", "-t", "30"]).arg(&site.status);
    let (code, out, err) = run(c, LONG);
    assert_eq!(code, 0, "{out}{err}\n{}", site.log());
    assert!(wait_until(LONG, || site.answer().as_deref() == Some("r1")));
    let s = PoolStatus::read(&site.status);
    assert_eq!(s.gen_pids(1, "ready"), old, "{:?}", s.workers);
    assert!(old.iter().all(|&p| proc_state(p) != 'T'));
}

/// A forkpool started with TSTP ignored (a parent's `trap '' TSTP`, which
/// exec keeps): its workers get TSTP's default action back, so the park
/// stops them at once. Before, they inherited the ignore, the park's TSTP
/// did nothing, and every verified switch waited for the 1 s bound and its
/// STOP (the warning `not stopped within 1.00s of TSTP`).
#[test]
fn workers_of_a_forkpool_started_with_tstp_ignored_are_parked_at_once() {
    let mut c = Command::new("sh");
    c.args(["-c", "trap '' TSTP; exec \"$@\"", "sh"])
        .arg(bin("forkpool"));
    let pool = Pool::start_in(c, "verified-tstp-ignored", "60000", &[]);
    pool.switch();
    let log = pool.log();
    assert!(!log.contains("not stopped within"), "{log}");
    assert!(
        log.contains("every parked worker stopped accepting"),
        "{log}"
    );
}

/// kill -9 of forkpool while the demo app is parked, one worker still
/// finishing a request (it said `stopping`, not yet `parked`: running), the
/// other parked and stopped: that request is answered, and every worker of
/// both generations ends (the parent-death stop signal, the guard's CONT),
/// none is left stopped or waiting for a CONT that never comes.
#[test]
fn kill_9_of_forkpool_while_the_demo_app_parks_leaves_no_worker() {
    use std::io::Write;
    let (mut site, old, mut conn) = demo_app_switched_with_a_request_in_hand("verified-app-kill9");
    // One old worker holds the begun request (running), the other is parked
    // and stopped.
    assert!(
        wait_until(LONG, || old
            .iter()
            .filter(|&&p| proc_state(p) == 'T')
            .count()
            == 1),
        "{:?}\n{}",
        old.iter().map(|&p| proc_state(p)).collect::<Vec<_>>(),
        site.log()
    );
    let all: Vec<i32> = PoolStatus::read(&site.status)
        .workers
        .iter()
        .map(|w| w.2)
        .collect();
    assert_eq!(all.len(), 4);
    site.chain.signal(Signal::SIGKILL);
    site.chain.wait_timeout(LONG).expect("forkpool dies");
    // The request in hand is still answered, by its own release.
    conn.write_all(b"Host: t\r\n\r\n").expect("send the rest");
    let r = read_response(&mut conn).expect("the request in hand answered");
    assert_eq!((r.status, r.body().trim()), (200, "r1"));
    assert!(
        wait_until(LONG, || all
            .iter()
            .all(|&p| matches!(proc_state(p), '?' | 'Z'))),
        "left: {:?}",
        all.iter()
            .map(|&p| (p, proc_state(p)))
            .filter(|&(_, s)| !matches!(s, '?' | 'Z'))
            .collect::<Vec<_>>()
    );
}
