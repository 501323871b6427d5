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
    let err = deploy_500(&site, "r2");
    assert!(
        err.contains("ms so far; rolling back to releases/r1"),
        "{err}"
    );
    assert!(
        err.contains("rolled back: releases/r1 serves; releases/r2 served "),
        "{err}"
    );
    assert_eq!(site.current(), "r1");
    assert_eq!(site.answer().as_deref(), Some("r1"));
    let history = std::fs::read_to_string(site.dir.join("history")).unwrap_or_default();
    assert!(!history.contains("r2"), "{history}");
}

/// Deploy release `id` answering 500 to everything: exit 1, not verified at
/// its first answer, the line says so; stderr.
fn deploy_500(site: &Site, id: &str) -> String {
    let dir = site.release(id, "--fail-requests");
    let (code, err) = site.deploy(&[s(&dir)]);
    assert_eq!(code, 1, "{err}\n{}", site.log());
    let want = format!(
        "not verified: GET {} answered 500; served ",
        site.check_url()
    );
    assert!(err.contains(&want), "{err}");
    err
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

// ---- with a parked generation: forkpool --confirm-timeout -C ----

/// The demo site with the verified switch (`--confirm-timeout MS -C control`).
fn verified_site(tag: &str, confirm_ms: &str) -> Site {
    let dir = TempDir::new(tag);
    let extra = ["--confirm-timeout", confirm_ms, "-C", "control"];
    Site::start_with(dir, Mode::Forkpool, None, &extra)
}

/// A good release confirmed: the parked generation retires; a 500 release
/// reverted: the parked workers (the same pids) serve again, LINK back.
#[test]
fn confirm_a_good_release_and_revert_a_500_one_demo() {
    let site = verified_site("vd-demo", "30000");
    let r2 = site.release("r2", "");
    let (code, err) = site.deploy(&[s(&r2)]);
    assert_eq!(code, 0, "{err}\n{}", site.log());
    assert!(err.contains("generation 1 parked until"), "{err}");
    assert!(err.contains("confirmed generation 2"), "{err}");
    let st = PoolStatus::read(&site.status);
    assert_eq!(st.get("verify"), "confirmed", "{:?}", st.kv);
    let old = st.gen_pids(2, "ready");
    assert_eq!(old.len(), 2, "{:?}", st.workers);
    assert!(wait_until(LONG, || PoolStatus::read(&site.status)
        .workers
        .iter()
        .all(|w| w.1 == 2)));

    let err = deploy_500(&site, "r3");
    assert!(
        err.contains("ms; reverted to releases/r2 (warm generation 2)"),
        "{err}"
    );
    assert!(err.contains("no new process started"), "{err}");
    let st = PoolStatus::read(&site.status);
    assert_eq!(st.get("verify"), "reverted", "{:?}", st.kv);
    assert_eq!(st.num("serving_generation"), 2);
    assert_eq!(st.gen_pids(2, "ready"), old, "the same workers serve again");
    assert_eq!(site.current(), "r2");
    assert_eq!(site.answer().as_deref(), Some("r2"));
    let history = std::fs::read_to_string(site.dir.join("history")).expect("history");
    assert_eq!(history, "releases/r1\nreleases/r2\n");
}

/// TERM between the check and the confirm: reverted (warm), exit 1.
#[test]
fn an_interrupt_before_the_confirm_reverts() {
    let site = verified_site("vd-term", "30000");
    let r2 = site.release("r2", "");
    let errfile = site.dir.join("d.err");
    let mut c = site.deploy_cmd(&[s(&r2)]);
    c.env("DEPLOY_RELEASE_PAUSE", "checked")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&errfile).expect("err"));
    let mut d = Proc::spawn(c);
    let pid = d.child.id() as i32;
    assert!(wait_until(LONG, || proc_state(pid) == 'T'), "never paused");
    d.signal(nix::sys::signal::Signal::SIGTERM);
    d.signal(nix::sys::signal::Signal::SIGCONT);
    let st = d.wait_timeout(LONG).expect("the deploy ends");
    let err = std::fs::read_to_string(&errfile).unwrap_or_default();
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("not verified: interrupted by TERM"), "{err}");
    assert!(
        err.contains("reverted to releases/r1 (warm generation 1)"),
        "{err}"
    );
    assert_eq!(site.current(), "r1");
    assert_eq!(site.answer().as_deref(), Some("r1"));
}

/// kill -9 of deploy-release between the switch and its confirm: forkpool
/// reverts at its deadline and says so; the next deploy repairs `current`.
/// Killed again, and the next deploy comes before the deadline: it reverts
/// the generation nobody will confirm first, and says so.
#[test]
fn a_deploy_killed_before_its_confirm() {
    let site = verified_site("vd-kill", "3000");
    kill_at_checked(&site, &site.release("r2", ""));
    assert_eq!(site.current(), "r2");
    assert!(
        wait_until(LONG, || PoolStatus::read(&site.status).get("verify")
            == "reverted"),
        "never reverted: {}",
        std::fs::read_to_string(&site.status).unwrap_or_default()
    );
    let st = PoolStatus::read(&site.status);
    assert!(
        st.get("reason")
            .contains("generation 2 not confirmed within 3.00s: reverted"),
        "{:?}",
        st.kv
    );
    site.wait_settled();
    assert_eq!(site.answer().as_deref(), Some("r1"));
    let r3 = site.release("r3", "");
    let (code, err) = site.deploy(&[s(&r3)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("it named releases/r2, but releases/r1 serves"),
        "{err}"
    );
    assert!(err.contains("a stale"), "{err}");
    assert_eq!(site.answer().as_deref(), Some("r3"));

    // killed again; the next deploy comes before the deadline
    let site = verified_site("vd-kill2", "60000");
    kill_at_checked(&site, &site.release("r2", ""));
    assert_eq!(PoolStatus::read(&site.status).get("verify"), "pending");
    let r3 = site.release("r3", "");
    let (code, err) = site.deploy(&[s(&r3)]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("generation 2 awaited confirm or revert (its deploy was interrupted): reverted to the parked generation 1"),
        "{err}"
    );
    assert!(
        err.contains("it named releases/r2, but releases/r1 serves"),
        "{err}"
    );
    assert_eq!(site.answer().as_deref(), Some("r3"));
    let history = std::fs::read_to_string(site.dir.join("history")).expect("history");
    assert_eq!(history, "releases/r1\nreleases/r3\n");
}

/// Start a deploy of `dir`, kill it with -9 between its check and its confirm.
fn kill_at_checked(site: &Site, dir: &std::path::Path) {
    let mut c = site.deploy_cmd(&[s(dir)]);
    c.env("DEPLOY_RELEASE_PAUSE", "checked")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut d = Proc::spawn(c);
    let pid = d.child.id() as i32;
    assert!(wait_until(LONG, || proc_state(pid) == 'T'), "never paused");
    d.signal(nix::sys::signal::Signal::SIGKILL);
    assert!(d.wait_timeout(LONG).is_some());
}

// ---- examples/gunicorn ----

fn path_env() -> std::ffi::OsString {
    let mut paths = vec![repo().join(".venv/bin")];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).expect("PATH")
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Good,
    /// imports fine, answers 500 to every request
    Fails500,
    /// raises at import
    BrokenImport,
}

/// releases/ID of examples/gunicorn (`recipe`: with its gunicorn.conf.py).
fn gunicorn_release(
    site: &std::path::Path,
    id: &str,
    kind: Kind,
    recipe: bool,
) -> std::path::PathBuf {
    let r = site.join("releases").join(id);
    std::fs::create_dir_all(&r).expect("mkdir");
    let ex = repo().join("examples/gunicorn");
    let mut app = std::fs::read_to_string(ex.join("app.py")).expect("app.py");
    match kind {
        Kind::Good => {}
        Kind::Fails500 => app.push_str(
            "\n\n@app.before_request\ndef fails():\n    return Response('release %s fails\\n' % RELEASE, status=500, headers={'X-Release': RELEASE})\n",
        ),
        Kind::BrokenImport => app = format!("raise RuntimeError('release {id} is broken at import')\n{app}"),
    }
    std::fs::write(r.join("app.py"), app).expect("app.py");
    if recipe {
        std::fs::copy(ex.join("gunicorn.conf.py"), r.join("gunicorn.conf.py")).expect("conf");
    }
    std::fs::write(r.join("RELEASE"), format!("{id}\n")).expect("RELEASE");
    r
}

struct Gunicorn {
    _chain: Proc,
    site: std::path::PathBuf,
    port: u16,
    _tmp: TempDir,
}

impl Gunicorn {
    /// examples/gunicorn/run as given (`recipe`), or plain gunicorn under
    /// forkpool -m cutover with timed readiness (-a, neither -d nor --notify).
    fn start(tag: &str, recipe: bool) -> Gunicorn {
        let tmp = TempDir::new(tag);
        let site = tmp.path().to_path_buf();
        gunicorn_release(&site, "r1", Kind::Good, recipe);
        std::os::unix::fs::symlink("releases/r1", site.join("current")).expect("current");
        let log = std::fs::File::create(site.join("log")).expect("log");
        let c = if recipe {
            let mut c = std::process::Command::new(repo().join("examples/gunicorn/run"));
            c.env("SITE", &site)
                .env("PORT", "0")
                .env("WORKERS", "2")
                .env("BIN", bin_dir())
                .stdout(log);
            c
        } else {
            let mut c = cmd("tcplisten");
            c.args(["127.0.0.1", "0", "sh", "-c"])
                .arg("echo \"$TCPLOCALPORT\" >port.tmp && mv port.tmp port && exec \"$@\"")
                .arg("run")
                .arg(bin("forkpool"))
                // timed readiness, shorter than the default 1000 ms: a master
                // whose worker fails at import lived 0.66 s in one run, and the
                // case is the one where it outlives -a
                .args([
                    "-n", "2", "-m", "cutover", "-a", "200", "-t", "30000", "-k", "30000",
                ])
                .args(["--confirm-timeout", "10000", "-C", "control"])
                .args(["-p", "current", "-S", "status", "gunicorn"])
                .args([
                    "--no-control-socket",
                    "--workers",
                    "1",
                    "--bind",
                    "fd://0",
                    "app:app",
                ])
                .current_dir(&site)
                .stdout(log.try_clone().expect("log"))
                .stderr(log);
            c
        };
        let mut c = c;
        c.env("PATH", path_env())
            .env_remove("GUNICORN_CMD_ARGS")
            .stdin(std::process::Stdio::null());
        let chain = Proc::spawn(c);
        let mut port = 0;
        let g = |port: &mut u16| {
            std::fs::read_to_string(site.join("port"))
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .map(|p| *port = p)
                .is_some()
        };
        let log = || std::fs::read_to_string(site.join("log")).unwrap_or_default();
        assert!(wait_until(LONG, || g(&mut port)), "no port: {}", log());
        assert!(
            wait_until(LONG, || http_release(port).as_deref() == Some("r1")
                && PoolStatus::read(&site.join("status")).num("ready") == 2),
            "r1 never served: {}",
            log()
        );
        Gunicorn {
            _chain: chain,
            site,
            port,
            _tmp: tmp,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.site.join("log")).unwrap_or_default()
    }

    fn status(&self) -> PoolStatus {
        PoolStatus::read(&self.site.join("status"))
    }

    fn deploy(&self, dir: &std::path::Path) -> (i32, String) {
        let mut c = cmd("deploy-release");
        c.args([
            "-t",
            "60",
            "-c",
            &format!("http://127.0.0.1:{}/release", self.port),
        ])
        .arg(dir)
        .arg(self.site.join("current"))
        .arg(self.site.join("status"));
        let (code, _, err) = run(c, Duration::from_secs(180));
        (code, err)
    }

    fn probe(&self, tag: &str) -> Probe {
        let err = self.site.join(format!("probe-{tag}.err"));
        let probe = Probe::spawn(
            self.port,
            &["--json", "-c", "8", "-t", "30000"],
            true,
            err,
            LONG,
        );
        let current = std::fs::read_link(self.site.join("current")).expect("current");
        probe.wait_seen(&current.file_name().expect("name").to_string_lossy());
        probe
    }
}

/// examples/gunicorn's recipe: good releases confirmed under 8 clients (0
/// failed, 0 mixed, 0 flapping); then a release answering 500 to everything:
/// exit 1, the very same old workers serve again, and the only failed
/// requests are the 500s the new release answered before the revert.
#[test]
fn gunicorn_recipe_confirms_good_releases_and_reverts_a_500_one_warm() {
    if !require_peer("gunicorn") {
        return;
    }
    let g = Gunicorn::start("vd-gunicorn", true);
    let probe = g.probe("good");
    for id in ["r2", "r3", "r4"] {
        let dir = gunicorn_release(&g.site, id, Kind::Good, true);
        let (code, err) = g.deploy(&dir);
        assert_eq!(code, 0, "{id}: {err}\n{}", g.log());
        assert!(err.contains("confirmed generation"), "{err}");
        assert_eq!(http_release(g.port).as_deref(), Some(id));
    }
    let (code, json) = probe.stop();
    assert_clean(code, &json, "gunicorn recipe, good deploys");
    assert_eq!(json_count(&json, "flapping"), 0, "{json}");

    assert!(
        wait_until(LONG, || g.status().workers.len() == 2),
        "old generations linger"
    );
    let st = g.status();
    let gen = st.num("serving_generation");
    let old = st.gen_pids(gen, "ready");
    assert_eq!(old.len(), 2, "{:?}", st.workers);
    let probe = g.probe("bad");
    let bad = gunicorn_release(&g.site, "r5", Kind::Fails500, true);
    let (code, err) = g.deploy(&bad);
    assert_eq!(code, 1, "{err}\n{}", g.log());
    assert!(err.contains("answered 500; served "), "{err}");
    assert!(
        err.contains(&format!("reverted to releases/r4 (warm generation {gen})")),
        "{err}"
    );
    let st = g.status();
    assert_eq!(st.num("serving_generation"), gen);
    assert_eq!(
        st.gen_pids(gen, "ready"),
        old,
        "the same workers serve again"
    );
    assert_eq!(http_release(g.port).as_deref(), Some("r4"));
    let (_, json) = probe.stop();
    eprintln!("gunicorn recipe, a 500 release: {json}");
    let failed = json_count(&json, "failed");
    assert_eq!(failed, json_count(&json, "bad_status"), "only 500s: {json}");
    assert_eq!(
        failed,
        responses_of(&json, "r5"),
        "the 500s are r5's: {json}"
    );
    assert_eq!(json_count(&json, "mixed"), 0, "{json}");
}

/// Plain gunicorn under -m cutover with timed readiness (forkpool warns at
/// start) and a release that fails at import: its master lives long enough to
/// count as ready, so the switch happens and nothing answers; the check hears
/// nothing within the window and reverts: every request waited in the
/// backlog and the old generation served it: 0 failed, exit 1.
#[test]
fn plain_gunicorn_with_timed_readiness_and_a_broken_import_loses_nothing() {
    if !require_peer("gunicorn") {
        return;
    }
    let g = Gunicorn::start("vd-plain", false);
    assert!(
        g.log()
            .contains("forkpool: warning: -m cutover with timed readiness"),
        "{}",
        g.log()
    );
    let probe = g.probe("plain");
    let bad = gunicorn_release(&g.site, "r2", Kind::BrokenImport, false);
    let (code, err) = g.deploy(&bad);
    assert_eq!(code, 1, "{err}\n{}", g.log());
    assert!(err.contains("reverted to releases/r1"), "{err}");
    assert_eq!(http_release(g.port).as_deref(), Some("r1"));
    let (code, json) = probe.stop();
    assert_clean(code, &json, "plain gunicorn, broken import");
}
