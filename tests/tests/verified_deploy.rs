//! The verified switch, deploy-release's half (issue 26): the check ends at
//! the first definite answer (`-c` more than once, `--verify-window`,
//! `--good`), and the verdict line says how long the new release served.
//! With forkpool's `--confirm-timeout` the old generation is parked at the
//! switch and deploy-release confirms or reverts it; without one, the cold
//! rollback stays.

mod common;

use std::time::Duration;

use common::*;
use integration_tests::*;

fn s(p: &std::path::Path) -> &str {
    p.to_str().expect("utf-8")
}

/// A release that starts but answers 500 to everything: not verified at its
/// first answer (not at the deadline, -t 30), the verdict line says so and how
/// long it served; with nothing parked the old release is started again (cold).
fn a_500_release_cold(mode: Mode) {
    let site = Site::start(&format!("vd-500-{mode:?}"), mode);
    let dir = site.release("r2", "--fail-requests");
    let (code, err) = site.deploy(&[s(&dir)]);
    assert_eq!(code, 1, "{err}\n{}", site.log());
    let want = format!(
        "not verified: GET {} answered 500; served ",
        site.check_url()
    );
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("ms; rolling back to releases/r1"), "{err}");
    assert!(err.contains("rolled back: releases/r1 serves"), "{err}");
    assert_eq!(site.current(), "r1");
    assert_eq!(site.answer().as_deref(), Some("r1"));
    let history = std::fs::read_to_string(site.dir.join("history")).unwrap_or_default();
    assert!(!history.contains("r2"), "{history}");
}

#[test]
fn a_500_release_is_not_verified_at_its_first_answer_forkpool() {
    a_500_release_cold(Mode::Forkpool);
}

#[test]
fn a_500_release_is_not_verified_at_its_first_answer_loop() {
    a_500_release_cold(Mode::Loop);
}

/// `-c` more than once: every URL must pass in each round.
#[test]
fn every_check_must_pass() {
    let site = Site::start("vd-checks", Mode::Forkpool);
    let page = format!("http://127.0.0.1:{}/", site.port);
    let r2 = site.release("r2", "");
    let (code, err) = site.deploy(&["-c", &page, "--good", "5", s(&r2)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "{} and {page} answer r2 (5 good rounds in a row",
            site.check_url()
        )),
        "{err}"
    );
    // a page only r2 has: r3 answers 404 there, not verified whatever
    // /release says; r2 passes both checks again (the rollback's)
    std::fs::write(site.dir.join("releases/r2/htdocs/only-r2.html"), "r2\n").expect("page");
    let missing = format!("http://127.0.0.1:{}/only-r2.html", site.port);
    let r3 = site.release("r3", "");
    let (code, err) = site.deploy(&["-c", &missing, s(&r3)]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("not verified: GET {missing} answered 404")),
        "{err}"
    );
    assert_eq!(site.current(), "r2");
    assert_eq!(site.answer().as_deref(), Some("r2"));
}

/// A check that gets no answer at all, nothing parked: waited out until the
/// deadline (-t 3 here), then not verified; the rollback's check (the same
/// URLs) gets nothing either: exit 2.
#[test]
fn silence_without_a_parked_generation_is_waited_out() {
    let site = Site::start("vd-silent", Mode::Forkpool);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let nobody = format!("http://127.0.0.1:{closed}/release");
    let r2 = site.release("r2", "");
    let (code, err) = site.deploy(&["-t", "3", "-c", &nobody, s(&r2)]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no good round before the deadline (-t)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("GET {nobody} answered nothing")),
        "{err}"
    );
    assert!(
        err.contains("the rollback to releases/r1 did not verify"),
        "{err}"
    );
    assert_eq!(site.current(), "r1");
}

/// Usage errors: exit 100, nothing done.
#[test]
fn usage() {
    for args in [
        &["-w", "0", "a", "b", "c"][..],
        &["--verify-window", "x", "a", "b", "c"],
        &["-g", "0", "a", "b", "c"],
        &["--good", "1001", "a", "b", "c"],
    ] {
        let mut c = cmd("deploy-release");
        c.args(args);
        let (code, _, err) = run(c, Duration::from_secs(30));
        assert_eq!(code, 100, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}
