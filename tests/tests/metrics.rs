//! What a production team watches (issue 29), run as a user would:
//! pool-health's `GET /metrics` scraped after each step of the demo (demo/serve,
//! demo/deploy: a deploy, a broken one, demo/upgrade: an upgrade and a refused
//! one), every scrape accepted by Prometheus's own `promtool check metrics` and
//! its values moving as they should; a real Prometheus server scraping it;
//! deploy-release's deploy log (JSON lines a real JSON parser reads, marks in
//! uptime-probe's picture, a planted symlink refused, rotation); `pool-health
//! -o` read by a real node_exporter's textfile collector, never following a
//! planted symlink; recycles and the two-phase phases in the figures.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::*;
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(60);

/// `GET path` on a fresh connection: (status, head, body).
fn get(port: u16, path: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(LONG)).expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("response");
    let (head, body) = out.split_once("\r\n\r\n").expect("a head");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
    (
        status.expect("a status"),
        head.to_string(),
        body.to_string(),
    )
}

/// Scrape /metrics: a 200 in the text format, which promtool accepts with
/// no complaint (exit 0, nothing said).
fn scrape(port: u16, dir: &Path) -> Metrics {
    let (status, head, body) = get(port, "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8"),
        "{head}"
    );
    promtool_accepts(&body, dir);
    Metrics(body)
}

fn promtool_accepts(text: &str, dir: &Path) {
    let file = dir.join("scrape.prom");
    std::fs::write(&file, text).expect("write scrape");
    let mut c = Command::new("sh");
    c.args(["-c", "exec promtool check metrics < \"$1\"", "sh"])
        .arg(&file);
    let (code, out, err) = run(c, LONG);
    assert_eq!(
        (code, out.trim(), err.trim()),
        (0, "", ""),
        "promtool refuses:\n{text}"
    );
}

/// One exposition, read back by series.
struct Metrics(String);

impl Metrics {
    /// The value of the series written exactly `series` (`name{a="b"}`).
    fn get(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|l| {
            let (s, v) = l.rsplit_once(' ')?;
            (s == series).then(|| v.parse().ok())?
        })
    }

    fn num(&self, series: &str) -> f64 {
        self.get(series)
            .unwrap_or_else(|| panic!("no {series} in\n{}", self.0))
    }

    /// The labels of the one sample of `name` (e.g. an _info metric).
    fn labels(&self, name: &str) -> String {
        let prefix = format!("{name}{{");
        let l = self
            .0
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no {name} in\n{}", self.0));
        l[prefix.len()..l.rfind('}').expect("}")].to_string()
    }

    /// The reload counters, the serving generation, the upgrade counters.
    fn figures(&self) -> [f64; 5] {
        [
            self.num("forkpool_reloads_total{result=\"ok\"}"),
            self.num("forkpool_reloads_total{result=\"failed\"}"),
            self.num("forkpool_serving_generation"),
            self.num("forkpool_upgrades_total{result=\"ok\"}"),
            self.num("forkpool_upgrades_total{result=\"failed\"}"),
        ]
    }
}

/// The demo site: demo/serve from a copy of the tools (so that demo/upgrade
/// can put another build in place), its state directory.
struct Demo {
    _serve: Proc,
    bindir: PathBuf,
    state: PathBuf,
    t: TempDir,
}

impl Demo {
    fn start(tag: &str) -> Demo {
        let t = TempDir::new(tag);
        let bindir = demo_tools(t.path());
        let state = t.join("state");
        let mut serve = Command::new(repo().join("demo/serve"));
        Demo::env(&mut serve, &bindir, &state);
        serve
            .env("PORT", "0")
            .env("WORKERS", "2")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(t.join("serve.err")).expect("log"));
        let demo = Demo {
            _serve: Proc::spawn(serve),
            bindir,
            state,
            t,
        };
        let status = demo.state.join("status");
        assert!(
            wait_until(LONG, || {
                let s = PoolStatus::read(&status);
                s.num("ready") == 2 && s.num("serving_generation") == 1
            }),
            "the demo never served: {}",
            std::fs::read_to_string(demo.t.join("serve.err")).unwrap_or_default()
        );
        demo
    }

    fn env(c: &mut Command, bindir: &Path, state: &Path) {
        c.env("BIN", bindir)
            .env("STATE", state)
            .env_remove("DEADLINE")
            .env_remove("KEEP")
            .env_remove("SERVE_MODE")
            .env_remove("RELOAD_MODE")
            .env_remove("CONTROL");
    }

    /// demo/SCRIPT ARGS: (exit code, stderr).
    fn script(&self, script: &str, args: &[&str]) -> (i32, String) {
        let mut c = Command::new(repo().join("demo").join(script));
        c.args(args);
        Demo::env(&mut c, &self.bindir, &self.state);
        let (code, _, err) = run(c, Duration::from_secs(120));
        (code, err)
    }

    fn status(&self) -> PoolStatus {
        PoolStatus::read(&self.state.join("status"))
    }

    fn port(&self) -> u16 {
        std::fs::read_to_string(self.state.join("port"))
            .expect("port")
            .trim()
            .parse()
            .expect("port number")
    }
}

/// Wait until no retired worker is left and every worker is ready.
fn settled(d: &Demo) {
    assert!(
        wait_until(LONG, || {
            let s = d.status();
            s.get("reload") != "running" && s.workers.len() == 2 && s.pids("ready").len() == 2
        }),
        "never settled: {:?}",
        d.status()
    );
}

#[test]
fn metrics_move_through_deploys_a_broken_one_and_upgrades() {
    if !require_peer("promtool") {
        return;
    }
    let d = Demo::start("metrics-demo");
    let dir = d.t.path();
    let status = d.state.join("status");
    let (_health, port) = start_health(dir, &[status.as_os_str()]);
    let deploys_log = d.state.join("deploys.jsonl");
    let picture = d.t.join("probe.svg");
    let probe = Probe::spawn(
        d.port(),
        &[
            "-c",
            "2",
            "-q",
            "--svg",
            picture.to_str().expect("path"),
            "--marks",
            deploys_log.to_str().expect("path"),
        ],
        true,
        d.t.join("probe.err"),
        LONG,
    );

    // Serving generation 1 from the first release; nothing reloaded yet.
    let m0 = scrape(port, dir);
    assert_eq!(m0.num("forkpool_up"), 1.0);
    assert_eq!(m0.num("pool_health_up"), 1.0);
    assert_eq!(m0.num("forkpool_workers{state=\"ready\"}"), 2.0);
    assert_eq!(m0.num("forkpool_workers_desired"), 2.0);
    assert_eq!(m0.figures(), [0.0, 0.0, 1.0, 0.0, 0.0]);
    let first = d.status().get("release").to_string();
    assert_eq!(
        m0.labels("forkpool_serving_info"),
        format!("generation=\"1\",release=\"{first}\"")
    );
    assert!(m0.get("forkpool_last_reload_duration_seconds").is_none());
    assert_eq!(m0.num("forkpool_reload_state{state=\"none\"}"), 1.0);
    let start = m0.num("forkpool_start_time_seconds");
    let uptime0 = m0.num("forkpool_uptime_seconds");

    // A deploy: one reload more, ok; a new generation and release serve.
    let (code, err) = d.script("deploy", &[]);
    assert_eq!(code, 0, "{err}");
    settled(&d);
    let m1 = scrape(port, dir);
    assert_eq!(m1.figures(), [1.0, 0.0, 2.0, 0.0, 0.0]);
    let second = d.status().get("release").to_string();
    assert_ne!(second, first);
    assert_eq!(
        m1.labels("forkpool_serving_info"),
        format!("generation=\"2\",release=\"{second}\"")
    );
    let last = m1.num("forkpool_last_reload_duration_seconds");
    assert!(last > 0.0, "{last}");
    assert_eq!(m1.num("forkpool_reload_duration_seconds_count"), 1.0);
    assert_eq!(
        m1.num("forkpool_reload_duration_seconds_bucket{le=\"+Inf\"}"),
        1.0
    );
    assert!((m1.num("forkpool_reload_duration_seconds_sum") - last).abs() < 1e-5);
    assert_eq!(m1.num("forkpool_reload_state{state=\"ok\"}"), 1.0);

    // A broken deploy: its reload failed, the rollback's reload is ok, the
    // second release serves again (generation 3 failed, 4 serves).
    let (code, err) = d.script("deploy", &["--broken"]);
    assert_eq!(code, 1, "{err}");
    settled(&d);
    let m2 = scrape(port, dir);
    assert_eq!(m2.figures(), [2.0, 1.0, 4.0, 0.0, 0.0]);
    assert_eq!(m2.num("forkpool_generation"), 4.0);
    assert_eq!(
        m2.labels("forkpool_serving_info"),
        format!("generation=\"4\",release=\"{second}\"")
    );
    assert_eq!(m2.num("forkpool_reload_duration_seconds_count"), 2.0);

    // An in-place upgrade: same process (start), a new build id, the
    // counters kept across it.
    let (_, b) = two_builds(d.t.path(), "forkpool");
    install(&b, &d.bindir.join("forkpool"));
    let version0 = m2.labels("forkpool_info");
    let (code, err) = d.script("upgrade", &[]);
    assert_eq!(code, 0, "{err}");
    let m3 = scrape(port, dir);
    assert_eq!(m3.figures(), [2.0, 1.0, 4.0, 1.0, 0.0]);
    assert_ne!(m3.labels("forkpool_info"), version0);
    assert!(
        m3.labels("forkpool_info")
            .contains(&format!("version=\"{}\"", d.status().get("version"))),
        "{}",
        m3.0
    );
    assert_eq!(m3.num("forkpool_start_time_seconds"), start);
    assert!(m3.num("forkpool_uptime_seconds") > uptime0);
    assert_eq!(m3.num("forkpool_upgrade_state{state=\"ok\"}"), 1.0);

    // A refused upgrade: counted as failed, the build before runs on.
    script(
        &d.t.join("exits1"),
        "#!/bin/sh\necho 'broken build' >&2\nexit 1\n",
    );
    install(&d.t.join("exits1"), &d.bindir.join("forkpool"));
    let (code, err) = d.script("upgrade", &[]);
    assert_eq!(code, 1, "{err}");
    let m4 = scrape(port, dir);
    assert_eq!(m4.figures(), [2.0, 1.0, 4.0, 1.0, 1.0]);
    assert_eq!(m4.num("forkpool_upgrade_state{state=\"failed\"}"), 1.0);
    assert_eq!(m4.num("pool_health_up"), 1.0);

    // The deploy log: one line per deploy, JSON a real parser reads.
    let text = std::fs::read_to_string(&deploys_log).expect("deploys.jsonl");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    let mut c = Command::new("python3");
    c.args([
        "-c",
        "import json,sys\nfor l in open(sys.argv[1]):\n d = json.loads(l)\n print(d['kind'], d['verdict'], d['exit'], d['before'], d['after'], ' '.join('%s:%s' % (s['step'], s['ok']) for s in d['steps']), repr(d['reason'])[:40])",
    ])
    .arg(&deploys_log);
    let (code, out, err) = run(c, LONG);
    assert_eq!(code, 0, "python3 cannot read it: {err}\n{text}");
    let rel = |p: &str| format!("releases/{}", p.rsplit('/').next().unwrap_or(p));
    let read: Vec<&str> = out.lines().collect();
    assert_eq!(
        read[0],
        format!(
            "deploy ok 0 {} {} lock:True prepare:True switch:True reload:True check:True history:True ''",
            rel(&first),
            rel(&second)
        ),
        "{text}"
    );
    assert!(
        read[1].starts_with(&format!(
            "deploy rolled-back 1 {} {} lock:True prepare:True switch:True reload:False rollback-switch:True rollback-reload:True rollback-check:True 'deploy of releases/",
            rel(&second),
            rel(&second)
        )),
        "{}\n{text}",
        read[1]
    );

    // uptime-probe --marks draws a labelled mark for each deploy.
    let (_, json) = probe.stop();
    let svg = std::fs::read_to_string(&picture).expect("the picture");
    let id = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    assert!(
        svg.contains(&format!(">deploy {}: ok<", id(&second))),
        "{json}"
    );
    assert!(svg.contains(": rolled-back<"), "{json}");
}

/// A free port for a program that wants a fixed address (node_exporter's
/// --web.listen-address): bound on port 0 and let go just before.
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A program that wants a fixed listening address (node_exporter's and
/// Prometheus's --web.listen-address): `make(port)` on a free port, tried
/// again on another if it was taken meanwhile; its stderr into `log`.
fn on_free_port(log: &Path, make: impl Fn(u16) -> Command) -> (Proc, u16) {
    for _ in 0..5 {
        let port = free_port();
        let mut c = make(port);
        c.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"));
        let mut p = Proc::spawn(c);
        let up = wait_until(LONG, || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
                || p.wait_timeout(Duration::ZERO).is_some()
        });
        if up && p.wait_timeout(Duration::ZERO).is_none() {
            return (p, port);
        }
    }
    panic!(
        "never listened: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn the_textfile_is_read_by_node_exporter_and_never_follows_a_planted_symlink() {
    if !require_peer("promtool") || !require_peer("prometheus-node-exporter") {
        return;
    }
    let site = common::Site::start("metrics-textfile", common::Mode::Forkpool);
    let dir = site.dir.path();
    let textdir = site.dir.join("textfile");
    std::fs::create_dir(&textdir).expect("mkdir");
    let prom = textdir.join("forkpool.prom");
    // a symlink planted where the file goes: replaced, never followed
    let victim = site.dir.join("victim");
    std::fs::write(&victim, "precious\n").expect("victim");
    std::os::unix::fs::symlink(&victim, &prom).expect("plant");
    let write = || {
        let mut c = cmd("pool-health");
        c.arg("-o").arg(&prom).arg(&site.status);
        run(c, LONG)
    };
    let (code, out, err) = write();
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious\n"
    );
    assert!(std::fs::symlink_metadata(&prom).expect("prom").is_file());
    let names: Vec<_> = std::fs::read_dir(&textdir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("forkpool.prom")]);
    promtool_accepts(&std::fs::read_to_string(&prom).expect("prom"), dir);

    // node_exporter with the textfile collector alone, on a free port
    let (_exporter, port) = on_free_port(&site.dir.join("exporter.err"), |port| {
        let mut c = Command::new("prometheus-node-exporter");
        c.arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(["--collector.disable-defaults", "--collector.textfile"])
            .arg(format!(
                "--collector.textfile.directory={}",
                textdir.display()
            ));
        c
    });
    let scraped = |want: &str| {
        let mut body = String::new();
        let ok = wait_until(LONG, || {
            body = get(port, "/metrics").2;
            body.lines().any(|l| l == want)
        });
        assert!(ok, "node_exporter never showed {want:?}:\n{body}");
        body
    };
    let body = scraped("forkpool_workers{state=\"ready\"} 2");
    for want in [
        "forkpool_up 1",
        "pool_health_up 1",
        "forkpool_reloads_total{result=\"ok\"} 0",
        "node_textfile_scrape_error 0",
    ] {
        assert!(body.lines().any(|l| l == want), "no {want:?}:\n{body}");
    }
    // a reload, the file written again: node_exporter shows the new figures
    site.chain.signal(Signal::SIGHUP);
    assert!(wait_until(LONG, || {
        let s = PoolStatus::read(&site.status);
        s.get("reload") == "ok" && s.num("serving_generation") == 2
    }));
    assert_eq!(write().0, 0);
    let body = scraped("forkpool_reloads_total{result=\"ok\"} 1");
    assert!(
        body.lines().any(|l| l == "forkpool_serving_generation 2"),
        "{body}"
    );

    // no pool: the file says so (forkpool_up 0), exit 0; no directory: 111
    let gone = site.dir.join("no-such-status");
    let mut c = cmd("pool-health");
    c.arg("-o").arg(&prom).arg(&gone);
    assert_eq!(run(c, LONG).0, 0);
    let text = std::fs::read_to_string(&prom).expect("prom");
    assert!(text.lines().any(|l| l == "forkpool_up 0"), "{text}");
    assert!(!text.contains("forkpool_workers"), "{text}");
    let mut c = cmd("pool-health");
    c.arg("-o")
        .arg(site.dir.join("no/such/dir.prom"))
        .arg(&site.status);
    let (code, _, err) = run(c, LONG);
    assert_eq!(code, 111, "{err}");
    assert!(
        err.starts_with("pool-health: fatal: unable to write ")
            && err.contains("No such file or directory"),
        "{err}"
    );
}

#[test]
fn recycles_and_the_two_phase_phases_in_the_metrics() {
    if !require_peer("promtool") {
        return;
    }
    let t = TempDir::new("metrics-phases");
    common::make_release(t.path(), "r1", "");
    common::make_release(t.path(), "r2", "");
    std::os::unix::fs::symlink("releases/r1", t.join("current")).expect("current");
    let status = t.join("status");
    let fifo = t.join("control"); // forkpool makes it
    let mut c = cmd("tcplisten");
    c.args(["127.0.0.1", "0"])
        .arg(bin("forkpool"))
        .args(["-n", "2", "-m", "cutover", "-d", "3", "-t", "20000"])
        .args(["-k", "10000", "-p", "current", "-S"])
        .arg(&status)
        .arg("-C")
        .arg(&fifo)
        .arg("./run")
        .current_dir(t.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(t.join("pool.err")).expect("log"));
    let _pool = Proc::spawn(c);
    assert!(wait_until(LONG, || PoolStatus::read(&status)
        .num("serving_generation")
        == 1));
    let (_health, port) = start_health(t.path(), &[status.as_os_str()]);
    let m = scrape(port, t.path());
    assert_eq!(m.num("forkpool_two_phase_state{phase=\"none\"}"), 1.0);
    assert_eq!(m.num("forkpool_two_phase_generation"), 0.0);

    let poolctl = |word: &str| {
        let mut c = cmd("poolctl");
        c.args([word, "-t", "30"]).arg(&status);
        run(c, LONG)
    };
    let mut c = cmd("atomic-symlink");
    c.arg("releases/r2").arg(t.join("current"));
    assert_eq!(run(c, LONG).0, 0);
    let (code, out, err) = poolctl("prepare");
    assert_eq!(code, 0, "{out}{err}");
    let m = scrape(port, t.path());
    assert_eq!(m.num("forkpool_two_phase_state{phase=\"prepared\"}"), 1.0);
    assert_eq!(m.num("forkpool_two_phase_state{phase=\"none\"}"), 0.0);
    assert_eq!(m.num("forkpool_two_phase_generation"), 2.0);
    assert_eq!(m.num("forkpool_workers{state=\"held\"}"), 2.0);
    assert_eq!(m.num("forkpool_workers{state=\"ready\"}"), 2.0);
    assert_eq!(m.num("forkpool_serving_generation"), 1.0);
    assert_eq!(m.num("pool_health_up"), 1.0, "a held generation is healthy");
    let (code, out, err) = poolctl("commit");
    assert_eq!(code, 0, "{out}{err}");
    let m = scrape(port, t.path());
    assert_eq!(m.num("forkpool_two_phase_state{phase=\"committed\"}"), 1.0);
    assert_eq!(m.num("forkpool_serving_generation"), 2.0);
    assert!(m.num("forkpool_two_phase_released_timestamp_seconds") > 1e9);
    assert!(
        m.labels("forkpool_serving_info").ends_with("releases/r2\""),
        "{}",
        m.0
    );
    // a commit is no reload (no HUP): the reload counters did not move
    assert_eq!(m.num("forkpool_reloads_total{result=\"ok\"}"), 0.0);

    // recycles by reason: a pool whose workers live one second at most
    let t2 = TempDir::new("metrics-recycles");
    let status2 = t2.join("status");
    let mut c = cmd("tcplisten");
    c.args(["127.0.0.1", "0"])
        .arg(bin("forkpool"))
        .args(["-n", "1", "-d", "3", "--max-age", "1", "-S"])
        .arg(&status2)
        .arg(bin("test-worker"))
        .args(["--notify-fd", "3"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(t2.join("pool.err")).expect("log"));
    let _pool2 = Proc::spawn(c);
    let (_health2, port2) = start_health(t2.path(), &[status2.as_os_str()]);
    let mut m = scrape(port2, t2.path());
    assert!(
        wait_until(LONG, || {
            m = scrape(port2, t2.path());
            m.get("forkpool_recycles_total{reason=\"age\"}")
                .is_some_and(|n| n >= 2.0)
        }),
        "no recycles: {}",
        m.0
    );
    for other in ["memory", "asked", "watchdog"] {
        assert_eq!(
            m.num(&format!("forkpool_recycles_total{{reason=\"{other}\"}}")),
            0.0
        );
    }
}

#[test]
fn the_deploy_log_refuses_a_planted_symlink_rotates_and_logs_a_deploy_without_a_chain() {
    let site = common::Site::start("metrics-deploylog", common::Mode::Forkpool);
    let log = site.dir.join("deploys.jsonl");
    site.release("r2", "");
    // a symlink planted at deploys.jsonl: refused (a warning), the deploy's
    // verdict unchanged, the victim untouched
    let victim = site.dir.join("victim");
    std::fs::write(&victim, "precious\n").expect("victim");
    std::os::unix::fs::symlink(&victim, &log).expect("plant");
    let r2 = site.dir.join("releases/r2");
    let (code, err) = site.deploy(&[r2.to_str().expect("path")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains(&format!(
            "deploy-release: warning: unable to append to {}: ",
            log.display()
        )),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious\n"
    );
    std::fs::remove_file(&log).expect("rm link");

    // a log of 1 MiB: rotated to deploys.jsonl.1, the new line in a new file
    let filler = "{\"filler\":true}\n".repeat((1 << 20) / 16 + 1);
    std::fs::write(&log, &filler).expect("filler");
    site.wait_settled();
    let (code, err) = site.deploy(&["-r"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(site.dir.join("deploys.jsonl.1")).expect("rotated"),
        filler
    );
    let text = std::fs::read_to_string(&log).expect("deploys.jsonl");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.starts_with("{\"start\":")
            && text.contains(
                "\"kind\":\"rollback\",\"before\":\"releases/r2\",\"target\":\"releases/r1\",\"target_id\":\"r1\",\"after\":\"releases/r1\",\"link\":\"releases/r1\",\"verdict\":\"ok\",\"exit\":0,"
            ),
        "{text}"
    );

    // no chain runs (exit 3): a line too, with what was not known as null
    let gone = site.dir.join("no-status");
    let mut c = cmd("deploy-release");
    c.arg(&r2).arg(&site.link).arg(&gone);
    let (code, _, err) = run(c, LONG);
    assert_eq!(code, 3, "{err}");
    let text = std::fs::read_to_string(&log).expect("deploys.jsonl");
    let last = text.lines().last().expect("a line");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        last.contains("\"before\":null,\"target\":null,\"target_id\":null,\"after\":null,\"link\":\"releases/r1\",\"verdict\":\"not-running\",\"exit\":3,")
            && last.contains("\"reason\":\"no chain runs: unable to read status file"),
        "{last}"
    );
}

/// A real Prometheus server scrapes pool-health's /metrics (HTTP, its
/// parser, its storage): `up` is 1 and the pool's figures come back from
/// its query API, a reload's too.
#[test]
fn a_real_prometheus_scrapes_pool_health() {
    if !require_peer("prometheus") {
        return;
    }
    let site = common::Site::start("metrics-prometheus", common::Mode::Forkpool);
    let (_health, hp) = start_health(site.dir.path(), &[site.status.as_os_str()]);
    let config = site.dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pool\n    static_configs:\n      - targets: ['127.0.0.1:{hp}']\n"
        ),
    )
    .expect("config");
    let data = site.dir.join("tsdb");
    let (_prometheus, port) = on_free_port(&site.dir.join("prometheus.err"), |port| {
        let mut c = Command::new("prometheus");
        c.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        c
    });
    // the newest sample of QUERY, as Prometheus's API answers it
    let query = |q: &str| {
        let q: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        get(port, &format!("/api/v1/query?query={q}")).2
    };
    let shows = |q: &str, value: &str| {
        let mut last = String::new();
        let ok = wait_until(LONG, || {
            last = query(q);
            last.contains("\"status\":\"success\"") && last.contains(&format!(",\"{value}\"]"))
        });
        assert!(
            ok,
            "Prometheus never answered {value} for {q}: {last}\n{}",
            std::fs::read_to_string(site.dir.join("prometheus.err")).unwrap_or_default()
        );
    };
    shows("up{job=\"pool\"}", "1");
    shows("forkpool_workers{state=\"ready\"}", "2");
    shows("forkpool_reloads_total{result=\"ok\"}", "0");
    site.chain.signal(Signal::SIGHUP);
    shows("forkpool_reloads_total{result=\"ok\"}", "1");
    shows("forkpool_serving_generation", "2");
    shows("forkpool_reload_duration_seconds_count", "1");
}
