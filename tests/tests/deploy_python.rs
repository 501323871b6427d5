//! examples/gunicorn and examples/uvicorn, run as given (their `run` script),
//! deployed (3 times each) with deploy-release --check under uptime-probe: every deploy
//! verified, a release that fails at import rolled back with the old one
//! serving, and nothing failed, mixed or flapping.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{assert_clean, http_release, lock_is_free, LONG};
use integration_tests::*;
use nix::sys::signal::Signal;

fn path_env() -> std::ffi::OsString {
    let mut paths = vec![repo().join(".venv/bin")];
    paths.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(paths).expect("PATH")
}

/// releases/ID of the example: its files and RELEASE; `broken`: fails at import.
fn release(site: &Path, example: &str, id: &str, broken: bool) -> PathBuf {
    let r = site.join("releases").join(id);
    std::fs::create_dir_all(&r).expect("mkdir");
    for f in ["app.py", "gunicorn.conf.py"] {
        let src = repo().join("examples").join(example).join(f);
        if src.exists() {
            let mut text = std::fs::read_to_string(&src).expect("read");
            if broken && f == "app.py" {
                text = format!("raise RuntimeError('release {id} is broken at import')\n{text}");
            }
            std::fs::write(r.join(f), text).expect("write");
        }
    }
    std::fs::write(r.join("RELEASE"), format!("{id}\n")).expect("RELEASE");
    r
}

fn deploy(site: &Path, port: u16, dir: &Path) -> (i32, String) {
    let mut c = cmd("deploy-release");
    c.args([
        "-t",
        "60",
        "-c",
        &format!("http://127.0.0.1:{port}/release"),
    ])
    .arg(dir)
    .arg(site.join("current"))
    .arg(site.join("status"));
    let (code, _, err) = run(c, Duration::from_secs(180));
    (code, err)
}

/// `resets`: how many connections the retiring server may close unanswered
/// (uvicorn's shutdown closes those it accepted but had not read; gunicorn: none).
fn deploys_under_the_probe(example: &str, peer: &str, n: usize, keepalive: bool, resets: u64) {
    if !require_peer(peer) {
        return;
    }
    let tmp = TempDir::new(&format!("dr-{example}"));
    let site = tmp.path().to_path_buf();
    release(&site, example, "r1", false);
    std::os::unix::fs::symlink("releases/r1", site.join("current")).expect("current");
    let mut c = Command::new(repo().join("examples").join(example).join("run"));
    c.env("SITE", &site)
        .env("PORT", "0")
        .env("WORKERS", "2")
        .env("BIN", bin_dir())
        .env("PATH", path_env())
        .env_remove("GUNICORN_CMD_ARGS")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(site.join("log")).expect("log"));
    let chain = Proc::spawn(c);
    let log = || std::fs::read_to_string(site.join("log")).unwrap_or_default();
    let mut port = 0;
    assert!(
        wait_until(LONG, || std::fs::read_to_string(site.join("port"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .map(|p| port = p)
            .is_some()),
        "no port: {}",
        log()
    );
    assert!(
        wait_until(LONG, || http_release(port).as_deref() == Some("r1")),
        "r1 never served: {}",
        log()
    );
    let mut probe_cmd = cmd("uptime-probe");
    probe_cmd
        .args(["--json", "-c", "4", "-t", "30000"])
        .args(if keepalive {
            &[][..]
        } else {
            &["--no-keepalive"][..]
        })
        .arg(format!("http://127.0.0.1:{port}/"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut probe = Proc::spawn(probe_cmd);

    let mut times = Vec::new();
    for i in 2..=n + 1 {
        let id = format!("r{i}");
        let dir = release(&site, example, &id, false);
        let t = std::time::Instant::now();
        let (code, err) = deploy(&site, port, &dir);
        times.push(t.elapsed().as_secs_f64());
        assert_eq!(code, 0, "{example} deploy {id}: {err}\n{}", log());
        assert_eq!(http_release(port).as_deref(), Some(id.as_str()));
    }
    let last = format!("r{}", n + 1);
    let bad = release(&site, example, "broken", true);
    let (code, err) = deploy(&site, port, &bad);
    assert_eq!(code, 1, "{example}: {err}\n{}", log());
    assert!(err.contains("rolled back"), "{err}");
    assert_eq!(http_release(port), Some(last.clone()));
    assert_eq!(
        std::fs::read_link(site.join("current")).expect("current"),
        Path::new("releases").join(&last)
    );

    let out = probe.stdout();
    probe.signal(Signal::SIGINT);
    let json = read_all_timeout(out, LONG).expect("the probe's results");
    let st = probe.wait_timeout(LONG).expect("the probe exits");
    times.sort_by(f64::total_cmp);
    eprintln!(
        "{example}: {n} deploys: median {:.3}s max {:.3}s",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    let code = st.code().unwrap_or(-1);
    if resets == 0 {
        assert_clean(code, &json, example);
    } else {
        eprintln!("{example}: {json}");
        // The close of a connection accepted but not read is a reset when the
        // request had come, an end of file when it had not yet (the probe
        // writes it after the handshake): which one, the machine's load says.
        let closed = json_count(&json, "reset") + json_count(&json, "eof");
        assert!(closed <= resets, "{example}: {json}");
        assert_eq!(
            json_count(&json, "failed"),
            closed,
            "{example}: only resets and ends of file: {json}"
        );
        for k in ["mixed", "no_x_release", "no_data_release"] {
            assert_eq!(json_count(&json, k), 0, "{example}: {k}: {json}");
        }
    }
    assert_eq!(json_count(&json, "flapping"), 0, "{example}: {json}");
    assert!(lock_is_free(&site.join("deploy.lock")));
    drop(chain);
}

/// The short form, 3 deploys (each imports Flask in every new worker: over
/// 200 s for 10 on the loaded 2 cores): it fails on a deploy that fails or
/// mixes a request and on a broken import not rolled back. The long form
/// (10 deploys of each example) is scripts/bench.d/65-python-deploys.sh.
#[test]
fn gunicorn_deploys_and_a_broken_import() {
    deploys_under_the_probe("gunicorn", "gunicorn", 3, true, 0);
}

#[test]
fn uvicorn_deploys_and_a_broken_import() {
    // A retiring uvicorn resets the few connections it accepted but had not
    // read, and can leave a request sent on a keep-alive connection unanswered
    // (its shutdown): uvicorn's behaviour, not the deploy's, as in
    // tests/tests/ecosystem.rs. So: a new connection per request, and at most
    // a few resets; nothing refused, nothing timed out, nothing mixed. The
    // ceiling is the mechanism's, not a count seen: a retiring uvicorn closes
    // its listener first, so it resets at most the one connection each probe
    // client (4) has open, and each of the 2 workers of a retiring generation
    // may do so; 3 deploys and the rollback retire a generation each (the
    // broken one never accepted). A count seen (a flat 6, then 4 x 5) failed
    // by chance under load, where a client reset by one worker reconnects to
    // the other before that one closed its listener.
    deploys_under_the_probe("uvicorn", "uvicorn", 3, false, 4 * 2 * (3 + 1));
}
