//! The fleet, run as a user would: pool-health behind tcplisten in front of a
//! real forkpool; examples/fleet/up (N demo/serve hosts, pool-health beside each,
//! HAProxy in front), uptime-probe through HAProxy during rolling fleet deploys
//! (examples/fleet/deploy --rolling), and a host drained by its drain file and
//! through HAProxy's runtime API (examples/fleet/drain); two-phase deploys
//! (forkpool -C, poolctl prepare/commit/abort): 2 of them flap far less than 2
//! rolling ones on the same fleet (the long form is scripts/bench.d/70-fleet.sh),
//! a release broken on one host or a host unreachable at prepare switches no host.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::*;
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(60);

// ------------------------------------------------------------ pool-health

/// One HTTP request on a fresh connection: (status, body); None if no answer.
fn http(port: u16, req: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(LONG)).ok()?;
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let (head, body) = out.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

fn health(port: u16) -> (u16, String) {
    http(port, "GET /health HTTP/1.1\r\nHost: t\r\n\r\n").expect("pool-health answers")
}

#[test]
fn pool_health_answers_what_forkpool_and_the_drain_file_say() {
    let dir = TempDir::new("fleet-health");
    let status = dir.join("status");
    let conf = dir.join("conf");
    // a pool whose workers never become ready: no generation serves
    std::fs::write(&conf, "--never-ready").expect("conf");
    let mut c = cmd("tcplisten");
    c.args(["127.0.0.1", "0"])
        .arg(bin("forkpool"))
        .args(["-n", "2", "-d", "3", "-t", "60000", "-S"])
        .arg(&status)
        .arg(bin("test-worker"))
        .args(["--notify-fd", "3", "--conf"])
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("pool.err")).expect("log"));
    let pool = Proc::spawn(c);
    let drain = dir.join("drain");
    let (_h, port) = start_health(
        dir.path(),
        &["-D".as_ref(), drain.as_os_str(), status.as_os_str()],
    );

    assert!(wait_until(LONG, || PoolStatus::read(&status).workers.len() == 2));
    let (code, body) = health(port);
    assert_eq!(code, 503, "{body}");
    assert_eq!(body, "down: no generation serves yet\n");

    // ready workers (a HUP brings a generation that starts): 200
    std::fs::remove_file(&conf).expect("rm conf");
    pool.signal(Signal::SIGHUP);
    assert!(
        wait_until(LONG, || health(port).0 == 200),
        "never up: {:?} {:?}",
        health(port),
        PoolStatus::read(&status)
    );
    let (_, body) = health(port);
    assert!(
        body.starts_with("up: generation 2 serving, 2 of 2 workers ready"),
        "{body}"
    );

    // drained: 503 with the file named, whatever the pool; back when removed
    std::fs::write(&drain, "").expect("drain");
    assert_eq!(
        health(port),
        (503, format!("down: drained: {} exists\n", drain.display()))
    );
    std::fs::remove_file(&drain).expect("undrain");
    assert_eq!(health(port).0, 200);

    // HEAD: the status and the length, no body; not HTTP: 400
    let (code, body) = http(port, "HEAD / HTTP/1.0\r\n\r\n").expect("HEAD");
    assert_eq!((code, body.as_str()), (200, ""));
    let (code, _) = http(port, "\x01\x02 nonsense\r\n\r\n").expect("junk");
    assert_eq!(code, 400);

    // the pool killed with KILL: the status file still says running, its pid is gone
    pool.signal(Signal::SIGKILL);
    let pid = PoolStatus::read(&status).num("pid") as i32;
    assert!(wait_until(LONG, || !alive(pid)));
    let (code, body) = health(port);
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains(&format!("pid {pid} is not running")),
        "{body}"
    );
    // no status file at all
    std::fs::remove_file(&status).expect("rm status");
    let (code, body) = health(port);
    assert_eq!(code, 503);
    assert!(body.contains("No such file or directory"), "{body}");
}

#[test]
fn pool_health_any_request_a_silent_client_a_long_head_and_term() {
    let dir = TempDir::new("fleet-health-silent");
    let status = dir.join("status");
    std::fs::write(
        &status,
        format!(
            "pid={}\nstate=running\nserving_generation=1\nworkers=1\nready=1\n",
            std::process::id()
        ),
    )
    .expect("status");
    let (mut h, port) = start_health(
        dir.path(),
        &["-t".as_ref(), "300".as_ref(), status.as_os_str()],
    );
    // a client that connects and says nothing is closed without an answer
    let mut silent = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    silent.set_read_timeout(Some(LONG)).expect("timeout");
    let mut buf = Vec::new();
    let _ = silent.read_to_end(&mut buf);
    assert!(buf.is_empty(), "{:?}", String::from_utf8_lossy(&buf));
    // and the next one is answered (down: the pid it names is this test,
    // not forkpool; hostile2.rs has the up case against a real pool)
    let answer = health(port);
    assert_eq!(answer.0, 503);
    assert!(
        answer.1.contains("not forkpool or loop-forever"),
        "{answer:?}"
    );
    // any method, any path: the same answer; a head over 8 KiB: 431
    let (code, body) = http(port, "POST /x?y HTTP/1.1\r\nHost: t\r\n\r\n").expect("POST");
    assert_eq!((code, body), answer);
    let long = format!("GET / HTTP/1.1\r\nX-Long: {}\r\n", "a".repeat(9000));
    let (code, _) = http(port, &long).expect("431");
    assert_eq!(code, 431);
    // TERM ends it at once (it holds no state)
    h.signal(Signal::SIGTERM);
    let st = h.wait_timeout(LONG).expect("pool-health exits on TERM");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(Signal::SIGTERM as i32), "{st:?}");
}

#[test]
fn pool_health_refuses_a_bad_command_line() {
    let dir = TempDir::new("fleet-health-usage");
    for args in [
        &[][..],
        &["a", "b"][..],
        &["-t", "0", "s"][..],
        &["-x", "s"][..],
    ] {
        let mut c = cmd("pool-health");
        c.args(args);
        let (code, _, err) = run(c, LONG);
        assert_eq!(code, 100, "{args:?}: {err}");
        assert!(err.starts_with("pool-health: usage: "), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // descriptor 0 is not a listening socket: one line, exit 100
    let mut c = cmd("pool-health");
    c.arg(dir.join("status"));
    let (code, _, err) = run(c, LONG);
    assert_eq!(code, 100, "{err}");
    assert!(
        err.starts_with("pool-health: fatal: unable to accept on descriptor 0: "),
        "{err}"
    );
    assert!(!err.contains("os error"), "{err}");
}

// ------------------------------------------------------------ the fleet

/// What the fleet needs beside our tools (scripts/test-deps installs them).
fn fleet_peers() -> bool {
    require_peer("haproxy") && require_peer("socat") && require_peer("ansible-playbook")
}

/// A fleet started by examples/fleet/up in a TempDir; `down` at drop (and
/// KILL to whatever it left, by the pid files).
struct Fleet {
    dir: TempDir,
    port: u16,
    hosts: Vec<String>,
}

impl Fleet {
    fn up(tag: &str, n: usize) -> Fleet {
        let dir = TempDir::new(tag);
        let mut fleet = Fleet {
            dir,
            port: 0,
            hosts: (1..=n).map(|i| format!("host{i}")).collect(),
        };
        let (code, out, err) = run(fleet.script("up", &[&n.to_string()]), LONG);
        assert_eq!(code, 0, "up: {out}{err}");
        let url = out.lines().last().unwrap_or_default();
        fleet.port = url
            .strip_prefix("http://127.0.0.1:")
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("up's last line is not the URL: {out}"));
        fleet
    }

    fn fleet_dir(&self) -> PathBuf {
        self.dir.join("fleet")
    }

    fn script(&self, name: &str, args: &[&str]) -> Command {
        let mut c = Command::new(repo().join("examples/fleet").join(name));
        c.args(args)
            .env("FLEET_DIR", self.fleet_dir())
            .env("BIN", bin_dir())
            .env("FLEET_WORKERS", "2")
            .env_remove("FLEET_PORT")
            .env_remove("FLEET_INTER")
            .env_remove("COMMIT_MARGIN");
        c
    }

    /// examples/fleet/deploy ARGS: (exit code, the table on stdout, stderr).
    fn deploy(&self, args: &[&str]) -> (i32, String, String) {
        let t = Instant::now();
        let r = run(self.script("deploy", args), Duration::from_secs(300));
        eprintln!(
            "deploy {args:?}: exit {} in {:.1}s",
            r.0,
            t.elapsed().as_secs_f64()
        );
        r
    }

    fn state(&self, host: &str) -> PathBuf {
        self.fleet_dir().join(host)
    }

    /// The release `current` names on `host`.
    fn current(&self, host: &str) -> String {
        let l = std::fs::read_link(self.state(host).join("current")).expect("current");
        l.file_name().expect("name").to_string_lossy().into_owned()
    }

    /// The release `host` answers at /release.
    fn answers(&self, host: &str) -> String {
        let port: u16 = std::fs::read_to_string(self.state(host).join("port"))
            .expect("port")
            .trim()
            .parse()
            .expect("port");
        let (code, body) = http(
            port,
            "GET /release HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .expect("the host answers");
        assert_eq!(code, 200, "{host}: {body}");
        body.trim().to_string()
    }

    /// One command to HAProxy's runtime API.
    fn haproxy(&self, command: &str) -> String {
        let mut s = UnixStream::connect(self.fleet_dir().join("haproxy.sock")).expect("api");
        s.set_read_timeout(Some(LONG)).expect("timeout");
        s.write_all(format!("{command}\n").as_bytes())
            .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// HAProxy's view of `host`: its status (UP, DOWN, DRAIN...) and the
    /// requests it has sent it in all (`show stat` fields 18 and 8).
    fn server(&self, host: &str) -> (String, u64) {
        let stat = self.haproxy("show stat");
        let line = stat
            .lines()
            .find(|l| l.starts_with(&format!("be,{host},")))
            .unwrap_or_else(|| panic!("no {host} in {stat}"));
        let f: Vec<&str> = line.split(',').collect();
        (f[17].to_string(), f[7].parse().unwrap_or(0))
    }

    /// The rows of a deploy's table: (host, before, after, state); the commit
    /// column (in-time, late:Nms, or -) is [`Fleet::commit_column`]'s.
    fn table(out: &str) -> Vec<(String, String, String, String)> {
        Fleet::rows(out)
            .into_iter()
            .map(|f| (f[0].clone(), f[1].clone(), f[2].clone(), f[3].clone()))
            .collect()
    }

    /// Each row's commit column: (host, in-time | late:Nms | -).
    fn commit_column(out: &str) -> Vec<(String, String)> {
        Fleet::rows(out)
            .into_iter()
            .map(|f| (f[0].clone(), f[4].clone()))
            .collect()
    }

    fn rows(out: &str) -> Vec<Vec<String>> {
        out.lines()
            .filter(|l| l.starts_with("host") && !l.starts_with("host "))
            .map(|l| {
                let f: Vec<String> = l.split_whitespace().map(String::from).collect();
                assert_eq!(f.len(), 5, "{l}");
                f
            })
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = run(self.script("down", &[]), LONG);
        let mut pidfiles = vec![self.fleet_dir().join("haproxy.pid")];
        for h in &self.hosts {
            pidfiles.push(self.state(h).join("health.pid"));
            pidfiles.push(self.state(h).join("serve.pid"));
        }
        for f in pidfiles {
            if let Some(pid) = std::fs::read_to_string(&f)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

/// uptime-probe through HAProxy until stopped; stderr to a file.
struct Probe {
    p: Proc,
}

impl Probe {
    fn start(fleet: &Fleet, keepalive: bool) -> Probe {
        let err = fleet.dir.join(format!("probe-{keepalive}.err"));
        let mut c = cmd("uptime-probe");
        c.args(["--json", "-c", "1", "-t", "30000"]);
        if !keepalive {
            c.arg("--no-keepalive");
        }
        c.arg(format!("http://127.0.0.1:{}/", fleet.port))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).expect("probe log"));
        let probe = Probe { p: Proc::spawn(c) };
        assert!(
            wait_until(LONG, || std::fs::read_to_string(&err)
                .is_ok_and(|s| s.contains("first seen"))),
            "the probe got no answer through HAProxy"
        );
        probe
    }

    /// INT, and the JSON it prints.
    fn stop(mut self) -> (i32, String) {
        let out = self.p.stdout();
        self.p.signal(Signal::SIGINT);
        let json = read_all_timeout(out, LONG).expect("the probe's results");
        let st = self
            .p
            .wait_timeout(LONG)
            .expect("the probe exits after INT");
        (st.code().unwrap_or(-1), json)
    }
}

/// up: every host on one release id, answering through HAProxy in turn
/// (X-Served-By); a second up on the same FLEET_DIR is refused (111) and
/// changes nothing; down stops every process up started (HAProxy, each
/// pool-health, each chain and its workers) and is quiet when run again.
#[test]
fn up_serves_one_release_refuses_a_second_fleet_and_down_stops_everything() {
    if !fleet_peers() {
        return;
    }
    let fleet = Fleet::up("fleet-updown", 2);
    let first = fleet.current("host1");
    assert_eq!(fleet.current("host2"), first);
    let mut served = std::collections::HashSet::new();
    for _ in 0..6 {
        let mut s = TcpStream::connect(("127.0.0.1", fleet.port)).expect("connect");
        s.set_read_timeout(Some(LONG)).expect("timeout");
        s.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(out.ends_with(&format!("\r\n\r\n{first}\n")), "{out}");
        let by = out
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("x-served-by").then(|| v.trim())
            })
            .unwrap_or_else(|| panic!("no X-Served-By: {out}"));
        served.insert(by.to_string());
    }
    assert_eq!(served.len(), 2, "round robin over both hosts: {served:?}");

    let pids = |f: &Fleet| -> Vec<i32> {
        let mut files = vec![f.fleet_dir().join("haproxy.pid")];
        for h in &f.hosts {
            files.push(f.state(h).join("health.pid"));
            files.push(f.state(h).join("serve.pid"));
        }
        let mut v: Vec<i32> = files
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
            .collect();
        for h in &f.hosts {
            v.extend(PoolStatus::read(&f.state(h).join("status")).pids("ready"));
        }
        v
    };
    let running = pids(&fleet);
    assert_eq!(running.len(), 1 + 2 * 2 + 2 * 2, "{running:?}");
    assert!(running.iter().all(|&p| alive(p)), "{running:?}");

    let (code, out, err) = run(fleet.script("up", &["2"]), LONG);
    assert_eq!(code, 111, "{out}{err}");
    assert!(err.contains("already runs"), "{err}");
    assert!(
        running.iter().all(|&p| alive(p)),
        "the first fleet serves on"
    );

    let (code, out, err) = run(fleet.script("down", &[]), LONG);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        wait_until(LONG, || running.iter().all(|&p| !alive(p))),
        "left running: {:?}",
        running.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
    );
    let (code, out, err) = run(fleet.script("down", &[]), LONG);
    assert_eq!(code, 0, "down again: {out}{err}");
}

/// Nothing failed, nothing mixed, requests were made; the flapping printed.
fn assert_clean(code: i32, json: &str, what: &str) -> u64 {
    let flapping = json_count(json, "flapping");
    eprintln!(
        "{what}: requests {}, failed {}, retried {}, mixed {}, fleet flapping {flapping}",
        json_count(json, "requests"),
        json_count(json, "failed"),
        json_count(json, "retried"),
        json_count(json, "mixed"),
    );
    assert!(json_count(json, "requests") > 0, "{what}: {json}");
    assert_eq!(json_count(json, "failed"), 0, "{what}: {json}");
    assert_eq!(json_count(json, "mixed"), 0, "{what}: {json}");
    assert_eq!(code, 0, "{what}: {json}");
    flapping
}

/// A host drained by its drain file alone: pool-health answers 503, HAProxy
/// marks it down after its failed checks (interval 200 ms, fall 2; the time is
/// printed) and sends it nothing more; put back, it serves again. Then the same
/// through the playbook (HAProxy's runtime API and the drain file). Nothing fails.
#[test]
fn a_drained_host_gets_nothing_more_and_nothing_fails() {
    if !fleet_peers() {
        return;
    }
    let fleet = Fleet::up("fleet-drain", 3);
    let probe = Probe::start(&fleet, true);
    // every host gets requests
    for h in &fleet.hosts {
        let n0 = fleet.server(h).1;
        assert!(
            wait_until(LONG, || fleet.server(h).1 > n0),
            "{h} gets no requests"
        );
    }

    // the drain file alone
    let drain = fleet.state("host2").join("drain");
    let t0 = Instant::now();
    std::fs::write(&drain, "").expect("drain");
    assert!(
        wait_until(LONG, || fleet.server("host2").0 == "DOWN"),
        "HAProxy never marked host2 down: {:?}",
        fleet.server("host2")
    );
    eprintln!(
        "drain file: HAProxy marked host2 down after {:.0} ms (checks every 200 ms, fall 2)",
        t0.elapsed().as_secs_f64() * 1000.0
    );
    let sent = fleet.server("host2").1;
    // the others go on serving (a few hundred requests later), host2 gets none
    let n1 = fleet.server("host1").1;
    assert!(wait_until(LONG, || fleet.server("host1").1 > n1 + 200));
    assert_eq!(fleet.server("host2").1, sent, "host2 still got requests");
    std::fs::remove_file(&drain).expect("undrain");
    assert!(
        wait_until(LONG, || fleet.server("host2").0 == "UP"),
        "host2 never came back: {:?}",
        fleet.server("host2")
    );
    assert!(wait_until(LONG, || fleet.server("host2").1 > sent));

    // through the playbook: runtime API + drain file, and back
    let (code, out, err) = run(fleet.script("drain", &["host3"]), LONG);
    assert_eq!(code, 0, "{out}{err}");
    assert!(fleet.state("host3").join("drain").exists());
    let (state, sent) = fleet.server("host3");
    assert!(["DRAIN", "DOWN"].contains(&state.as_str()), "{state}");
    let n1 = fleet.server("host1").1;
    assert!(wait_until(LONG, || fleet.server("host1").1 > n1 + 200));
    assert_eq!(fleet.server("host3").1, sent, "host3 still got requests");
    let (code, out, err) = run(fleet.script("drain", &["--undo", "host3"]), LONG);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(fleet.server("host3").0, "UP");
    assert!(!fleet.state("host3").join("drain").exists());
    assert!(wait_until(LONG, || fleet.server("host3").1 > sent));

    let (code, json) = probe.stop();
    assert_clean(code, &json, "drain and undrain");
}

// ------------------------------------------------------------ two-phase

/// Rolling and two-phase fleet deploys of 3 hosts through HAProxy, on one
/// fleet, two probes each (keep-alive and a connection per request): each
/// deploy exits 0 with every host deployed (rolling) or committed (two-phase),
/// nothing failed, nothing mixed; the two-phase fleet flapping (printed) far
/// below the rolling one's. The short form (2 + 2 deploys): it fails when the
/// two-phase commit does not switch the hosts at one instant (its flapping is
/// then a rolling deploy's) and when a deploy fails or mixes a request
/// through HAProxy. The long form (5 deploys, 3 and 10 hosts, the commit
/// skew) is scripts/bench.d/70-fleet.sh.
#[test]
fn two_phase_fleet_deploys_flap_far_less_than_rolling_and_nothing_fails() {
    if !fleet_peers() {
        return;
    }
    let fleet = Fleet::up("fleet-2p", 3);
    let mut flapping = Vec::new();
    for rolling in [true, false] {
        let probes = [Probe::start(&fleet, true), Probe::start(&fleet, false)];
        for i in 0..2 {
            let args: &[&str] = if rolling { &["--rolling"] } else { &[] };
            let (code, out, err) = fleet.deploy(args);
            assert_eq!(code, 0, "deploy {i}: {out}\n{err}");
            let rows = Fleet::table(&out);
            assert_eq!(rows.len(), 3, "{out}");
            if !rolling {
                // how the commit came against its instant (auto margin): printed
                eprintln!("commit column: {:?}", Fleet::commit_column(&out));
            }
            for (host, before, after, state) in rows {
                let want = if rolling { "deployed" } else { "committed" };
                assert_eq!(state, want, "{out}");
                assert_ne!(after, before, "{out}");
                assert_eq!(fleet.answers(&host), after, "{out}");
                assert_eq!(fleet.current(&host), after, "{out}");
            }
        }
        let mut f = 0;
        for (probe, keepalive) in probes.into_iter().zip([true, false]) {
            let (code, json) = probe.stop();
            let what = format!(
                "2 {} deploys, 3 hosts, keep-alive {keepalive}",
                if rolling { "rolling" } else { "two-phase" }
            );
            f += assert_clean(code, &json, &what);
        }
        flapping.push(f);
    }
    eprintln!(
        "fleet flapping: rolling {}, two-phase {}",
        flapping[0], flapping[1]
    );
    assert!(
        flapping[0] > 0,
        "the rolling deploys flapped: the run can tell"
    );
    assert!(
        flapping[1] * 10 <= flapping[0],
        "two-phase flapping {} is not far below rolling's {}",
        flapping[1],
        flapping[0]
    );
}

/// The release is broken on host2: the prepare fails there, every host aborts,
/// no host switched, each serves (and `current` names) its recorded release,
/// nothing failed; the deploy exits 1.
#[test]
fn a_release_broken_on_one_host_switches_no_host() {
    if !fleet_peers() {
        return;
    }
    let fleet = Fleet::up("fleet-2p-broken", 3);
    let before: Vec<String> = fleet.hosts.iter().map(|h| fleet.current(h)).collect();
    let probe = Probe::start(&fleet, true);
    let (code, out, err) = fleet.deploy(&["--broken", "host2"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("no host switched"), "{out}");
    let rows = Fleet::table(&out);
    assert_eq!(rows.len(), 3, "{out}");
    for ((host, b, after, state), recorded) in rows.into_iter().zip(&before) {
        assert_eq!(&b, recorded, "{out}");
        assert_eq!(&after, recorded, "{out}");
        let want = if host == "host2" {
            "aborted:prepare-failed"
        } else {
            "aborted"
        };
        assert_eq!(state, want, "{out}");
        assert_eq!(&fleet.current(&host), recorded);
        assert_eq!(&fleet.answers(&host), recorded);
        let st = PoolStatus::read(&fleet.state(&host).join("status"));
        assert!(
            ["aborted", "failed"].contains(&st.get("phase")),
            "{host}: {:?}",
            st.kv
        );
        assert_eq!(st.pids("held").len(), 0, "{host}: {:?}", st.workers);
    }
    let (code, json) = probe.stop();
    assert_clean(code, &json, "broken on host2");
    assert_eq!(
        json.matches("{\"id\":").count(),
        1,
        "only the recorded release answered: {json}"
    );
}

/// host3 cannot be reached for the prepare: every host aborts (host3's own
/// prepare never ran), no host switched, the deploy exits 1.
#[test]
fn a_host_unreachable_at_prepare_aborts_everywhere() {
    if !fleet_peers() {
        return;
    }
    let fleet = Fleet::up("fleet-2p-unreachable", 3);
    let before: Vec<String> = fleet.hosts.iter().map(|h| fleet.current(h)).collect();
    let probe = Probe::start(&fleet, true);
    let (code, out, err) = fleet.deploy(&["--unreachable", "host3"]);
    assert_eq!(code, 1, "{out}\n{err}");
    for ((host, _, after, state), recorded) in Fleet::table(&out).into_iter().zip(&before) {
        let want = if host == "host3" {
            "aborted:unreachable"
        } else {
            "aborted"
        };
        assert_eq!(state, want, "{out}");
        assert_eq!(&after, recorded, "{out}");
        assert_eq!(&fleet.answers(&host), recorded);
        let st = PoolStatus::read(&fleet.state(&host).join("status"));
        if host != "host3" {
            assert_eq!(st.get("phase"), "aborted", "{host}: {:?}", st.kv);
        }
        assert_eq!(st.pids("held").len(), 0, "{host}: {:?}", st.workers);
    }
    let (code, json) = probe.stop();
    assert_clean(code, &json, "host3 unreachable at prepare");
}

/// The commit margin forced too short (COMMIT_MARGIN=0: the instant is the
/// decision itself, so every commit reaches its host after it): each host of 5
/// says so: its row of the table reads `late:Nms` (N > 0), its forkpool's log
/// says the instant was past, the steps line counts 5 late hosts; and the
/// deploy still switches all or nothing: every host committed, answering the
/// new release, exit 0, nothing failed or mixed through HAProxy.
#[test]
fn a_commit_margin_too_short_shows_each_late_host_and_still_switches_all() {
    if !fleet_peers() {
        return;
    }
    let fleet = Fleet::up("fleet-2p-late", 5);
    let probe = Probe::start(&fleet, true);
    let mut c = fleet.script("deploy", &[]);
    c.env("COMMIT_MARGIN", "0");
    let (code, out, err) = run(c, Duration::from_secs(300));
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("all 5 hosts switched"), "{out}");
    let rows = Fleet::table(&out);
    assert_eq!(rows.len(), 5, "{out}");
    let new = &rows[0].2;
    for (host, before, after, state) in &rows {
        assert_eq!(state, "committed", "{out}");
        assert_ne!(after, before, "{out}");
        assert_eq!(after, new, "one release everywhere: {out}");
        assert_eq!(&fleet.answers(host), new, "{out}");
    }
    for (host, commit) in Fleet::commit_column(&out) {
        let ms: u64 = commit
            .strip_prefix("late:")
            .and_then(|m| m.strip_suffix("ms"))
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("{host} is not shown late: {out}"));
        assert!(ms > 0, "{out}");
        // and forkpool on that host, in its own words (its log)
        let log = std::fs::read_to_string(fleet.state(&host).join("logs/serve.out")).expect("log");
        assert!(
            log.contains("ms past when the commit came: switching now"),
            "{host}'s forkpool did not say the commit was late: {log}"
        );
    }
    assert!(err.contains("late hosts 5 of 5"), "{err}");
    let (code, json) = probe.stop();
    assert_clean(code, &json, "commit margin 0, 5 hosts");
}

/// The verified switch across the fleet (issue 26): the release starts but
/// answers 500 on host2. Every host prepares and commits (the old generations
/// parked, examples/fleet/up's FLEET_CONFIRM_TIMEOUT), host2 fails its check
/// after the commit, so every host reverts: 0 hosts left on the new release,
/// each answering (and `current` naming) its recorded release with the very
/// same workers; the only failed requests are host2's 500s; exit 1.
#[test]
fn a_release_failing_its_check_on_one_host_reverts_every_host() {
    if !fleet_peers() {
        return;
    }
    let fleet = Fleet::up("fleet-2p-failing", 3);
    let before: Vec<String> = fleet.hosts.iter().map(|h| fleet.current(h)).collect();
    let pids: Vec<Vec<i32>> = fleet
        .hosts
        .iter()
        .map(|h| PoolStatus::read(&fleet.state(h).join("status")).pids("ready"))
        .collect();
    let probe = Probe::start(&fleet, true);
    let (code, out, err) = fleet.deploy(&["--failing", "host2"]);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("no host switched"), "{out}");
    let rows = Fleet::table(&out);
    assert_eq!(rows.len(), 3, "{out}");
    for (((host, b, after, state), recorded), old) in rows.into_iter().zip(&before).zip(&pids) {
        assert_eq!(&b, recorded, "{out}");
        assert_eq!(&after, recorded, "{out}");
        let want = if host == "host2" {
            "reverted:not-verified"
        } else {
            "reverted"
        };
        assert_eq!(state, want, "{out}");
        assert_eq!(&fleet.current(&host), recorded);
        assert_eq!(&fleet.answers(&host), recorded);
        let st = PoolStatus::read(&fleet.state(&host).join("status"));
        assert_eq!(st.get("verify"), "reverted", "{host}: {:?}", st.kv);
        let mut now = st.gen_pids(st.num("serving_generation"), "ready");
        now.sort();
        let mut old = old.clone();
        old.sort();
        assert_eq!(now, old, "{host}: the same workers serve again");
    }
    let (_, json) = probe.stop();
    eprintln!("failing on host2: {json}");
    assert_eq!(
        json_count(&json, "failed"),
        json_count(&json, "bad_status"),
        "only host2's 500s: {json}"
    );
    assert_eq!(json_count(&json, "mixed"), 0, "{json}");
}
