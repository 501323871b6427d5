//! poolctl against real chains (the demo app behind tcplisten, under forkpool
//! -m cutover and under loop-forever -S): status, a reload to a good generation,
//! to a broken one (exit 1 and the reason), a stale pid, a foreign pid (exit 3,
//! not signalled); and loop-forever's status file itself.

mod common;

use std::time::Duration;

use common::*;
use integration_tests::*;
use nix::sys::signal::Signal;

fn poolctl(args: &[&str], status: &std::path::Path) -> (i32, String, String) {
    let mut c = cmd("poolctl");
    c.args(args).arg(status);
    run(c, Duration::from_secs(120))
}

/// Point `current` at `id` (rename, as deploys do).
fn switch(site: &Site, id: &str) {
    let tmp = site.dir.join("current.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("releases/{id}"), &tmp).expect("symlink");
    std::fs::rename(&tmp, &site.link).expect("rename");
}

fn reload_good_and_broken(mode: Mode) {
    let site = Site::start(&format!("poolctl-{mode:?}"), mode);
    let workers = if mode == Mode::Forkpool { 2 } else { 1 };

    let (code, out, err) = poolctl(&["status"], &site.status);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{workers} of {workers} ready")),
        "{out}"
    );
    assert!(out.contains("releases/r1"), "{out}");

    // a good generation: exit 0 once it serves
    site.release("r2", "");
    switch(&site, "r2");
    let (code, out, err) = poolctl(&["reload", "-t", "30"], &site.status);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("reload ok: generation 2 serving"), "{out}");
    assert_eq!(site.answer().as_deref(), Some("r2"));

    // a broken one: exit 1 and the reason, on one line
    site.release("r3", "--fail-start");
    switch(&site, "r3");
    let (code, out, err) = poolctl(&["reload"], &site.status);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("reload failed: reload to generation 3 failed"),
        "{err}"
    );
    assert!(err.contains("before it was ready"), "{err}");
    if mode == Mode::Forkpool {
        // the old generation never stopped serving
        assert_eq!(site.answer().as_deref(), Some("r2"));
        let (code, out, _) = poolctl(&["status"], &site.status);
        assert_eq!(code, 0, "whole and serving r2: {out}");
        assert!(out.contains("last reload: failed"), "{out}");
    }
    // back to r2: it serves again
    switch(&site, "r2");
    let (code, out, err) = poolctl(&["reload"], &site.status);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(site.answer().as_deref(), Some("r2"));
}

#[test]
fn forkpool_reload_good_and_broken() {
    reload_good_and_broken(Mode::Forkpool);
}

#[test]
fn loop_forever_reload_good_and_broken() {
    reload_good_and_broken(Mode::Loop);
}

/// A stale pid, a foreign pid, a chain that writes another file, no file:
/// exit 3, and nothing is signalled.
#[test]
fn stale_and_foreign_pids_are_never_signalled() {
    let site = Site::start("poolctl-foreign", Mode::Forkpool);
    let real = std::fs::read_to_string(&site.status).expect("status");
    let gen_before = PoolStatus::read(&site.status).num("generation");
    let mut gone = std::process::Command::new("true").spawn().expect("true");
    let gone_pid = gone.id();
    gone.wait().expect("wait");
    let mut c = std::process::Command::new("sleep");
    c.arg("1000");
    let sleeper = Proc::spawn(c);
    let planted = |pid: &str| -> String {
        real.lines()
            .map(|l| match l.starts_with("pid=") {
                true => format!("pid={pid}\n"),
                false => format!("{l}\n"),
            })
            .collect()
    };
    let other = site.dir.join("other-status");
    for (pid, says) in [
        (gone_pid.to_string(), "is not running"),
        (
            sleeper.child.id().to_string(),
            "is sleep, not forkpool or loop-forever",
        ),
        ("x".to_string(), "no valid pid"),
    ] {
        std::fs::write(&other, planted(&pid)).expect("write");
        for sub in ["reload", "status", "upgrade"] {
            let (code, out, err) = poolctl(&[sub], &other);
            assert_eq!(code, 3, "{sub} {says}: {out}{err}");
            assert!(err.contains(says), "{sub}: {err}");
        }
    }
    // the real chain's pid, but in a file it does not write
    std::fs::write(&other, planted(&site.chain.child.id().to_string())).expect("write");
    let (code, _, err) = poolctl(&["reload"], &other);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("does not write"), "{err}");
    let (code, _, err) = poolctl(&["reload"], &site.dir.join("nothing"));
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("unable to read status file"), "{err}");
    // nothing was signalled: the sleeper sleeps, the chain never reloaded
    assert!(alive(sleeper.child.id() as i32));
    assert_eq!(proc_state(sleeper.child.id() as i32), 'S');
    assert_eq!(PoolStatus::read(&site.status).num("generation"), gen_before);
    // usage
    for args in [&["nothing"][..], &["reload", "-t", "0"], &["bogus"]] {
        let (code, _, err) = poolctl(args, &site.status);
        assert_eq!(code, 100, "{args:?}: {err}");
    }
}

/// loop-forever -S: forkpool's keys where they apply, a HUP is a new
/// generation, TERM ends in state=stopped; a planted symlink at the old
/// temporary names is never followed.
#[test]
fn loop_forever_status_file() {
    let site = Site::start("loop-status", Mode::Loop);
    let lf = site.chain.child.id() as i32;
    let st = PoolStatus::read(&site.status);
    assert_eq!(st.num("pid"), lf as u64);
    for (k, v) in [
        ("state", "running"),
        ("generation", "1"),
        ("serving_generation", "1"),
        ("workers", "1"),
        ("ready", "1"),
        ("reload", "none"),
        ("mode", "loop"),
    ] {
        assert_eq!(st.get(k), v, "{k}: {:?}", st.kv);
    }
    let r1 = std::fs::canonicalize(site.dir.join("releases/r1")).expect("r1");
    assert_eq!(st.get("release"), r1.display().to_string());
    assert_eq!(st.workers.len(), 1);
    let (slot, gen, child, state) = st.workers[0].clone();
    assert_eq!((slot, gen, state.as_str()), (0, 1, "ready"));

    // planted symlinks where older writers put their temporaries
    let victim = site.dir.join("victim");
    std::fs::write(&victim, "precious\n").expect("victim");
    for name in [format!("status.tmp.{lf}"), format!(".status.tmp.{lf}")] {
        std::os::unix::fs::symlink(&victim, site.dir.join(name)).expect("plant");
    }
    site.chain.signal(Signal::SIGHUP);
    assert!(
        wait_until(LONG, || {
            let st = PoolStatus::read(&site.status);
            st.get("generation") == "2"
                && st.get("serving_generation") == "2"
                && st.get("reload") == "ok"
                && st.get("ready") == "1"
        }),
        "{}",
        std::fs::read_to_string(&site.status).unwrap_or_default()
    );
    let st = PoolStatus::read(&site.status);
    assert_ne!(st.workers[0].2, child, "a new child after HUP");
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious\n"
    );

    let mut chain = site.chain;
    chain.signal(Signal::SIGTERM);
    let code = chain.wait_timeout(LONG).expect("loop-forever exits");
    assert_eq!(code.code(), Some(0));
    let st = PoolStatus::read(&site.status);
    assert_eq!(st.get("state"), "stopped");
    assert!(st.workers.is_empty(), "{:?}", st.workers);
}
