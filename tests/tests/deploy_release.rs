//! deploy-release against the demo app behind tcplisten + forkpool -m cutover
//! -p current -S status (and loop-forever -S): ten deploys under uptime-probe,
//! a release that fails at start, --rollback through the history, the lock
//! (75, a stale holder), a chain that dies during the deploy (3), a full
//! filesystem (111, nothing switched) and a status file the chain cannot write.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use integration_tests::*;
use nix::sys::signal::Signal;

/// Ten deploys while a probe hammers the site: each exits 0, nothing failed,
/// nothing mixed, nothing flapped; the history lists every verified release.
#[test]
fn ten_deploys_under_the_probe() {
    let site = Site::start("dr-ten", Mode::Forkpool);
    let probe = Probe::start(&site, true);
    let mut ids = vec!["r1".to_string()];
    for i in 2..=11 {
        let id = format!("r{i}");
        let dir = site.release(&id, "");
        let (code, err) = site.deploy(&[dir.to_str().expect("utf-8")]);
        assert_eq!(code, 0, "deploy {id}: {err}\n{}", site.log());
        assert!(err.contains(&format!("answers {id}")), "{err}");
        assert_eq!(site.current(), id);
        assert_eq!(site.answer().as_deref(), Some(id.as_str()));
        ids.push(id);
    }
    probe.wait_seen("r11");
    let (code, json) = probe.stop();
    assert_clean(code, &json, "ten deploys");
    assert_eq!(json_count(&json, "flapping"), 0, "{json}");
    let history = std::fs::read_to_string(site.dir.join("history")).expect("history");
    let want: Vec<String> = ids.iter().map(|i| format!("releases/{i}")).collect();
    assert_eq!(history.lines().collect::<Vec<_>>(), want, "{history}");
    assert!(!site.dir.join("deploy.running").exists());
    assert!(lock_is_free(&site.dir.join("deploy.lock")));
}

/// A release whose app fails at start: exit 1, `current` back on the old
/// release, which answered throughout; not in the history.
fn broken(mode: Mode) {
    let site = Site::start(&format!("dr-broken-{mode:?}"), mode);
    let probe = Probe::start(&site, true);
    let dir = site.release("r2", "--fail-start");
    let (code, err) = site.deploy(&[dir.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("reload to generation 2 failed"), "{err}");
    assert!(err.contains("rolled back: releases/r1 serves"), "{err}");
    assert_eq!(site.current(), "r1");
    assert_eq!(site.answer().as_deref(), Some("r1"));
    let (code, json) = probe.stop();
    assert_clean(code, &json, &format!("broken release, {mode:?}"));
    let history = std::fs::read_to_string(site.dir.join("history")).unwrap_or_default();
    assert!(!history.contains("r2"), "{history}");
}

#[test]
fn a_broken_release_rolls_back_forkpool() {
    broken(Mode::Forkpool);
}

#[test]
fn a_broken_release_rolls_back_loop() {
    broken(Mode::Loop);
}

/// --rollback walks back through the history, verified; with nothing earlier
/// it changes nothing (exit 1).
#[test]
fn rollback_through_the_history() {
    let site = Site::start("dr-rollback", Mode::Forkpool);
    for id in ["r2", "r3"] {
        let dir = site.release(id, "");
        let (code, err) = site.deploy(&[dir.to_str().expect("utf-8")]);
        assert_eq!(code, 0, "{err}");
    }
    for want in ["r2", "r1"] {
        let (code, err) = site.deploy(&["--rollback"]);
        assert_eq!(code, 0, "{err}");
        assert!(
            err.contains(&format!("rolled back to releases/{want}")),
            "{err}"
        );
        assert_eq!(site.current(), want);
        assert_eq!(site.answer().as_deref(), Some(want));
    }
    let (code, err) = site.deploy(&["--rollback"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no earlier release"), "{err}");
    assert_eq!(site.current(), "r1");
    let history = std::fs::read_to_string(site.dir.join("history")).expect("history");
    assert_eq!(history, "releases/r1\n");
}

/// A second deploy while one runs: 75 and the pid; a lock held by something
/// else while deploy.running names a dead pid: 75, said to be stale; after a
/// killed deploy the next one reports the stale deploy.running and works.
#[test]
fn the_lock() {
    let site = Site::start("dr-lock", Mode::Forkpool);
    let r2 = site.release("r2", "");
    let mut c = site.deploy_cmd(&[r2.to_str().expect("utf-8")]);
    c.env("DEPLOY_RELEASE_PAUSE", "locked")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let first = Proc::spawn(c);
    let pid = first.child.id() as i32;
    assert!(wait_until(LONG, || proc_state(pid) == 'T'), "never paused");
    let r3 = site.release("r3", "");
    let (code, err) = site.deploy(&[r3.to_str().expect("utf-8")]);
    assert_eq!(code, 75, "{err}");
    assert!(
        err.contains(&format!("another deploy is running (pid {pid})")),
        "{err}"
    );
    assert!(err.contains("nothing was changed"), "{err}");
    // kill -9: the lock goes with it (never inherited); deploy.running stays
    first.signal(Signal::SIGKILL);
    drop(first);
    let (code, err) = site.deploy(&[r3.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("a stale"), "{err}");
    assert!(err.contains(&format!("names pid {pid}")), "{err}");

    // something else holds deploy.lock, deploy.running names a dead pid
    let mut c = cmd("setlock");
    c.arg(site.dir.join("deploy.lock")).args(["sleep", "1000"]);
    let holder = Proc::spawn(c);
    std::fs::write(site.dir.join("deploy.running"), format!("{pid}\n")).expect("write");
    assert!(wait_until(LONG, || !lock_is_free(
        &site.dir.join("deploy.lock")
    )));
    let (code, err) = site.deploy(&[r2.to_str().expect("utf-8")]);
    assert_eq!(code, 75, "{err}");
    assert!(err.contains("which is not running (stale)"), "{err}");
    drop(holder);
    assert_eq!(site.current(), "r3");
}

/// kill -9 of the chain while a deploy waits: exit 3, noticed at once (the
/// deploy's own deadline is 30 s), `current` back on the last verified release.
#[test]
fn a_chain_that_dies_during_the_deploy() {
    let site = Site::start("dr-dies", Mode::Forkpool);
    let slow = site.release("r2", "--slow-start 60000");
    let mut c = site.deploy_cmd(&[slow.to_str().expect("utf-8")]);
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(site.dir.join("d.err")).expect("err"));
    let mut d = Proc::spawn(c);
    assert!(
        wait_until(LONG, || site.current() == "r2"),
        "never switched"
    );
    assert!(wait_until(LONG, || PoolStatus::read(&site.status)
        .get("reload")
        == "running"));
    let _ = nix::sys::signal::killpg(site.chain.pid(), Signal::SIGKILL);
    let st = d
        .wait_timeout(Duration::from_secs(20))
        .expect("the deploy ends well before its deadline");
    let err = std::fs::read_to_string(site.dir.join("d.err")).unwrap_or_default();
    assert_eq!(st.code(), Some(3), "{err}");
    assert!(err.contains("the chain is gone"), "{err}");
    assert!(err.contains("names releases/r1 again"), "{err}");
    assert_eq!(site.current(), "r1");
    assert!(lock_is_free(&site.dir.join("deploy.lock")));
    assert!(!site.dir.join("deploy.running").exists());
}

/// Usage errors: exit 100, nothing done.
#[test]
fn usage() {
    for args in [
        &["x"][..],
        &["-c", "ftp://x/", "a", "b", "c"],
        &["-t", "0", "a", "b", "c"],
        &["-r", "-i", "x", "a", "b"],
        &["-r", "a", "b", "c"],
    ] {
        let mut c = cmd("deploy-release");
        c.args(args);
        let (code, _, err) = run(c, Duration::from_secs(30));
        assert_eq!(code, 100, "{args:?}: {err}");
    }
}

/// The state directory (LINK, lock, history) on a full filesystem: exit 111
/// naming the file, nothing switched, the old release serves; once there is
/// room again the deploy works.
#[test]
fn a_full_filesystem() {
    let dir = TempDir::new("dr-full");
    let state = dir.join("state");
    if !mount_tmpfs(&state, "300k") {
        return;
    }
    let _m = Mount(state.clone());
    // the site lives in the tmpfs except its releases and the status file
    let site = Site::start("dr-full-site", Mode::Forkpool);
    let link = state.join("current");
    let r1 = std::fs::canonicalize(site.dir.join("releases/r1")).expect("r1");
    std::os::unix::fs::symlink(&r1, &link).expect("link");
    let r2 = site.release("r2", "");
    fill(&state);
    let mut c = cmd("deploy-release");
    c.args(["-t", "30", "-c", &site.check_url()])
        .arg(&r2)
        .arg(&link)
        .arg(&site.status);
    let (code, _, err) = run(c, Duration::from_secs(60));
    assert_eq!(code, 111, "{err}");
    assert!(err.contains("deploy.running"), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("nothing was switched"), "{err}");
    assert_eq!(std::fs::read_link(&link).expect("link"), r1);
    assert_eq!(site.answer().as_deref(), Some("r1"));
    assert!(lock_is_free(&state.join("deploy.lock")));
    std::fs::remove_file(state.join("filler")).expect("rm");
}

/// A status file the chain cannot write (its filesystem is full): the deploy
/// says so and exits 111 after switching back, not 2 ("the rollback failed").
#[test]
fn a_status_file_the_chain_cannot_write() {
    let dir = TempDir::new("dr-nostatus");
    let sdir = dir.join("st");
    if !mount_tmpfs(&sdir, "100k") {
        return;
    }
    let _m = Mount(sdir.clone());
    let site = Site::start_in(
        TempDir::new("dr-nostatus-site"),
        Mode::Forkpool,
        Some(sdir.join("status")),
    );
    fill(&sdir);
    let r2 = site.release("r2", "");
    let mut c2 = cmd("deploy-release");
    c2.args(["-t", "3", "-c", &site.check_url()])
        .arg(&r2)
        .arg(&site.link)
        .arg(&site.status);
    let (code, _, err) = run(c2, Duration::from_secs(60));
    assert_eq!(code, 111, "{err}");
    assert!(err.contains("did not change"), "{err}");
    assert!(!err.contains("rollback"), "{err}");
    assert_eq!(site.current(), "r1");
    std::fs::remove_file(sdir.join("filler")).expect("rm");
}

/// The history cannot be written after a verified deploy: exit 111 naming it,
/// and the switch undone (the old release serves again, verified).
#[test]
fn a_history_that_cannot_be_written_undoes_the_switch() {
    let site = Site::start("dr-history", Mode::Forkpool);
    std::fs::create_dir(site.dir.join("history")).expect("a directory in the way");
    let r2 = site.release("r2", "");
    let (code, err) = site.deploy(&[r2.to_str().expect("utf-8")]);
    assert_eq!(code, 111, "{err}");
    assert!(err.contains("unable to write"), "{err}");
    assert!(err.contains("history"), "{err}");
    assert!(
        err.contains("back to releases/r1, which serves again"),
        "{err}"
    );
    assert_eq!(site.current(), "r1");
    assert_eq!(site.answer().as_deref(), Some("r1"));
    assert!(!site.dir.join("deploy.running").exists());
}
