//! The listening socket held outside the chain (issue 28): tcplisten -F takes
//! an inherited socket and refuses one that is not a listening stream socket;
//! a dead forkpool's workers finish what they hold (bounded by -k); and the
//! whole chain killed with -9 again and again under 8 clients refuses nobody,
//! with the socket held by s6-fdholder-daemon under a restart loop like
//! runsv's, under real s6 (examples/held-socket/up), and by the fd store of a
//! systemd stand-in (examples/systemd/demo-fdstore.service).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const T: Duration = Duration::from_secs(30);
/// How many times each test kills forkpool with -9.
const KILLS: usize = 4;
/// Clients of the probe: at most this many requests are in hand at a kill.
const CLIENTS: usize = 8;

fn s(p: &Path) -> String {
    p.display().to_string()
}

// ------------------------------------------------------- tcplisten -F checks

/// `tcplisten -F 0 127.0.0.1 0 sh -c 'touch ran'` with `stdin` as descriptor 0.
fn take(dir: &TempDir, stdin: Stdio, args: &[&str]) -> (i32, String) {
    let ran = dir.join("ran");
    let _ = std::fs::remove_file(&ran);
    let mut c = cmd("tcplisten");
    c.args(args).args(["sh", "-c", "touch ran"]);
    let (code, _, err) = run_with(c, dir, stdin);
    if code != 0 {
        assert!(!ran.exists(), "prog ran after a refusal: {err}");
    }
    (code, err)
}

/// `c` run to its end in `dir` with `stdin` as descriptor 0 (run() gives
/// /dev/null): (exit code, stdout, stderr).
fn run_with(mut c: Command, dir: &TempDir, stdin: Stdio) -> (i32, String, String) {
    let (out, err) = (dir.join("stdout"), dir.join("stderr"));
    c.current_dir(dir.path())
        .stdin(stdin)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    let mut p = Proc::spawn(c);
    let st = p.wait_timeout(T).expect("tcplisten ends");
    let read = |f: &Path| std::fs::read_to_string(f).unwrap_or_default();
    (st.code().unwrap_or(-1), read(&out), read(&err))
}

#[test]
fn an_inherited_descriptor_that_is_not_a_listening_stream_socket_is_refused() {
    let dir = TempDir::new("held-refuse");
    let file = std::fs::File::open("/etc/passwd").unwrap();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let connected = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let cases: Vec<(Stdio, &[&str], &str)> = vec![
        (
            file.into(),
            &["-F", "0", "127.0.0.1", "0"],
            "it is a regular file",
        ),
        (
            OwnedFd::from(connected).into(),
            &["-F", "0", "127.0.0.1", "0"],
            "it is not listening",
        ),
        (
            OwnedFd::from(udp).into(),
            &["-F", "0", "127.0.0.1", "0"],
            "it is a datagram (UDP) socket",
        ),
        (
            OwnedFd::from(l.try_clone().unwrap()).into(),
            &["-F", "0", "::1", "0"],
            "it is an IPv4 socket",
        ),
        (
            OwnedFd::from(l.try_clone().unwrap()).into(),
            &["-F", "0", "127.0.0.1", "1"],
            "it is bound to 127.0.0.1:",
        ),
        (
            Stdio::null(),
            &["-F", "7", "127.0.0.1", "0"],
            "it is not open",
        ),
    ];
    for (stdin, args, why) in cases {
        let (code, err) = take(&dir, stdin, args);
        assert_eq!(code, 100, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one line: {err:?}");
        assert!(
            err.starts_with("tcplisten: fatal: descriptor ") && err.contains(why),
            "{args:?}: {err:?}"
        );
    }
    // a listening socket of the right family and port is taken: prog runs
    // with it on fd 0 and the ucspi variables
    let mut c = cmd("tcplisten");
    c.args(["-F", "0", "127.0.0.1", &port, "sh", "-c"])
        .arg("echo $PROTO $TCPLOCALIP $TCPLOCALPORT; readlink /proc/self/fd/0");
    let (code, out, err) = run_with(c, &dir, OwnedFd::from(l.try_clone().unwrap()).into());
    assert_eq!(code, 0, "{err}");
    let link = std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
    assert_eq!(
        out,
        format!("TCP 127.0.0.1 {port}\n{}\n", s(&link)),
        "{err}"
    );
}

#[test]
fn listen_fds_takes_systemds_socket_only_when_it_is_ours_and_fdstore_wants_notify_socket() {
    let dir = TempDir::new("held-listenfds");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let sh = |script: &str| {
        let mut c = Command::new("sh");
        c.args(["-c", script, "sh"])
            .arg(bin("tcplisten"))
            .env_remove("NOTIFY_SOCKET");
        c
    };
    // LISTEN_PID ours, one socket on fd 3: taken (no bind), on fd 0, variables gone
    let mut c = sh(
        r#"exec 3<&0; LISTEN_PID=$$ LISTEN_FDS=1 exec "$1" --listen-fds 127.0.0.1 0 sh -c 'echo $TCPLOCALPORT ${LISTEN_FDS:-unset}; readlink /proc/self/fd/0; [ ! -e /proc/self/fd/3 ]'"#,
    );
    c.arg("x");
    let (code, out, err) = run_with(c, &dir, OwnedFd::from(l.try_clone().unwrap()).into());
    let link = std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, format!("{port} unset\n{}\n", s(&link)));
    // LISTEN_PID another process's: tcplisten binds a socket of its own
    let mut c = sh(
        r#"exec 3<&0; LISTEN_PID=1 LISTEN_FDS=1 exec "$1" --listen-fds 127.0.0.1 0 sh -c 'readlink /proc/self/fd/0'"#,
    );
    c.arg("x");
    let (code, out, err) = run_with(c, &dir, OwnedFd::from(l.try_clone().unwrap()).into());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("socket:") && out.trim() != s(&link),
        "{out}"
    );
    // two sockets: one line, 100
    let mut c =
        sh(r#"exec 3<&0; LISTEN_PID=$$ LISTEN_FDS=2 exec "$1" --listen-fds 127.0.0.1 0 true"#);
    c.arg("x");
    let (code, _, err) = run_with(c, &dir, OwnedFd::from(l.try_clone().unwrap()).into());
    assert_eq!((code, err.lines().count()), (100, 1), "{err}");
    assert!(
        err.contains("LISTEN_FDS=\"2\": tcplisten takes one socket"),
        "{err}"
    );
    // --fdstore without NOTIFY_SOCKET: usage, before any bind
    let mut c = sh(r#"exec "$1" --fdstore 127.0.0.1 0 true"#);
    c.arg("x");
    let (code, _, err) = run_with(c, &dir, Stdio::null());
    assert_eq!(code, 100, "{err}");
    assert!(err.contains("--fdstore wants $NOTIFY_SOCKET"), "{err}");
}

// --------------------------------------------- a dead forkpool's workers

/// `tcplisten 127.0.0.1 0 forkpool -k K ...` on a site; its port.
fn chain(dir: &TempDir, state: &Path, pool: &[&str], prog: &[&str]) -> (Proc, u16) {
    let mut c = cmd("tcplisten");
    c.args(["-1", "127.0.0.1", "0"])
        .arg(bin("forkpool"))
        .args(pool)
        .arg("-S")
        .arg(state.join("status"))
        .args(prog)
        .current_dir(state)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("err")).unwrap());
    let mut p = Proc::spawn(c);
    let (line, _) = read_line_timeout(p.stdout(), T).expect("the port");
    (p, line.parse().expect("a port"))
}

/// A site with one release `R1` (demo/lib.sh's build_release) under `dir/state`.
fn site(dir: &TempDir) -> PathBuf {
    let state = dir.join("state");
    std::fs::create_dir_all(state.join("releases")).unwrap();
    let mut c = Command::new("sh");
    c.args(["-c", r#". "$top/demo/lib.sh"; build_release R1 good"#])
        .env("top", repo())
        .env("STATE", &state)
        .env("BIN", bin_dir());
    let (code, _, err) = run(c, T);
    assert_eq!(code, 0, "build_release: {err}");
    let mut c = cmd("atomic-symlink");
    c.arg("releases/R1").arg(state.join("current"));
    assert_eq!(run(c, T).0, 0);
    state
}

fn serving(st: &Path) -> PoolStatus {
    assert!(
        wait_until(T, || PoolStatus::read(st).get("serving_generation") == "1"),
        "never served: {:?}",
        PoolStatus::read(st)
    );
    PoolStatus::read(st)
}

#[test]
fn kill_9_of_forkpool_lets_its_workers_finish_the_requests_they_hold() {
    let dir = TempDir::new("held-drain");
    let state = site(&dir);
    let (p, port) = chain(
        &dir,
        &state,
        &["-n", "1", "-k", "20000", "-d", "3", "-p", "current"],
        &["./bin/app", "--root", ".", "--ready-fd", "3"],
    );
    let st = serving(&state.join("status"));
    let worker = st.pids("ready")[0];
    // a request begun on a connection the worker has accepted (it answered
    // the first one on it), its body still to come
    let mut c = connect(port);
    c.write_all(b"GET /release HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut c).expect("first answer").status, 200);
    c.write_all(b"GET /release HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\nabc")
        .unwrap();
    p.signal(Signal::SIGKILL);
    assert!(wait_until(T, || !alive(p.pid().as_raw())), "forkpool lives");
    assert!(alive(worker), "the worker died with forkpool");
    c.write_all(b"def").unwrap();
    let r = read_response(&mut c).expect("the request in hand is answered");
    assert_eq!(r.status, 200);
    assert_eq!(r.body().trim(), "R1");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    // then it has stopped (its stop signal came with forkpool's death)
    assert!(wait_until(T, || !alive(worker)), "the worker never ended");
}

#[test]
fn a_worker_of_a_dead_forkpool_that_ignores_its_stop_signal_is_killed_after_k() {
    let dir = TempDir::new("held-drain-k");
    let state = site(&dir);
    // the worker ignores TERM and holds a helper in its group
    let script = "trap '' TERM; sleep 1000 & echo >&3; wait";
    let (p, _) = chain(
        &dir,
        &state,
        &["-n", "1", "-k", "1000", "-d", "3"],
        &["sh", "-c", script],
    );
    let st = serving(&state.join("status"));
    let worker = st.pids("ready")[0];
    p.signal(Signal::SIGKILL);
    assert!(wait_until(T, || !alive(p.pid().as_raw())), "forkpool lives");
    // nothing but the guard's KILL after -k ends it
    assert!(
        wait_until(T, || !alive(worker)),
        "a worker ignoring TERM outlived its dead forkpool by {T:?}"
    );
}

// ------------------------------------------------- the chain killed, again

/// `kill -9` of forkpool `KILLS` times under `CLIENTS` keep-alive clients;
/// right after each kill, 4 more clients connect and send a request while no
/// chain runs: each must be answered by the restarted chain. `rel`: the
/// site's release. `pid` reads the
/// current forkpool's pid once it serves (None while none serves). Returns
/// the probe's JSON.
fn kill_loop(port: u16, err: PathBuf, rel: &str, mut pid: impl FnMut() -> Option<i32>) -> String {
    let probe = Probe::spawn(port, &["-c", &CLIENTS.to_string(), "--json"], true, err, T);
    probe.wait_seen(rel);
    let mut last = None;
    for k in 0..KILLS {
        let mut cur = None;
        assert!(
            wait_until(T, || {
                cur = pid().filter(|p| Some(*p) != last);
                cur.is_some()
            }),
            "kill {k}: no new forkpool serves"
        );
        let victim = cur.unwrap();
        kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
        assert!(wait_until(T, || !alive(victim)), "forkpool {victim} lives");
        let waiting: Vec<TcpStream> = (0..4)
            .map(|_| {
                let mut c = TcpStream::connect(("127.0.0.1", port)).expect("not refused");
                c.write_all(b"GET /release HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .unwrap();
                c
            })
            .collect();
        for mut c in waiting {
            c.set_read_timeout(Some(T)).unwrap();
            let mut out = String::new();
            c.read_to_string(&mut out)
                .unwrap_or_else(|e| panic!("kill {k}: a waiting client: {e}"));
            assert!(out.starts_with("HTTP/1.1 200"), "kill {k}: {out:?}");
        }
        last = Some(victim);
    }
    assert!(
        wait_until(T, || pid().is_some_and(|p| Some(p) != last)),
        "no forkpool serves after the last kill"
    );
    let (_, json) = probe.stop();
    eprintln!("{KILLS} kills of forkpool with -9, {CLIENTS} clients: {json}");
    let failed = json_count(&json, "failed");
    assert_eq!(json_count(&json, "refused"), 0, "{json}");
    assert_eq!(json_count(&json, "timeout"), 0, "{json}");
    // at most the requests the killed workers held (here they finish them)
    assert!(failed <= (KILLS * CLIENTS) as u64, "{json}");
    json
}

/// forkpool's pid from the status file once generation 1 serves with
/// `workers` ready and that pid lives.
fn serving_pid(st: &Path, workers: usize) -> Option<i32> {
    let s = PoolStatus::read(st);
    let pid: i32 = s.get("pid").parse().ok()?;
    (s.get("serving_generation") == "1" && s.gen_pids(1, "ready").len() == workers && alive(pid))
        .then_some(pid)
}

/// The site's service directory: examples/held-socket/run and its conf.
fn site_service(dir: &TempDir, state: &Path, holder: &Path) -> PathBuf {
    let sv = dir.join("site");
    std::fs::create_dir_all(&sv).unwrap();
    std::fs::copy(repo().join("examples/held-socket/run"), sv.join("run")).unwrap();
    std::fs::write(
        sv.join("conf"),
        format!(
            "STATE={}\nPORT=0\nWORKERS=2\nBIN={}\nHOLDER={}\nID=tcp:127.0.0.1:site\n",
            s(state),
            s(&bin_dir()),
            s(holder)
        ),
    )
    .unwrap();
    sv
}

/// The port the site wrote once it listens.
fn site_port(state: &Path) -> u16 {
    let f = state.join("port");
    let mut port = 0;
    assert!(
        wait_until(T, || {
            port = std::fs::read_to_string(&f)
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0);
            port != 0
        }),
        "no port in {f:?}"
    );
    port
}

#[test]
fn the_chain_killed_under_a_restart_loop_refuses_nobody_with_the_socket_held() {
    if !require_peer("s6-fdholder-daemon") {
        return;
    }
    let dir = TempDir::new("held-loop");
    let state = site(&dir);
    // the holder, as its own service would run it (examples/held-socket/holder-run)
    let h = dir.join("holder");
    let uid = nix::unistd::getuid().to_string();
    std::fs::create_dir_all(h.join(format!("rules/uid/{uid}/env"))).unwrap();
    std::fs::write(h.join(format!("rules/uid/{uid}/allow")), "").unwrap();
    for k in ["STORE", "RETRIEVE"] {
        std::fs::write(
            h.join(format!("rules/uid/{uid}/env/S6_FDHOLDER_{k}_REGEX")),
            "^tcp:\n",
        )
        .unwrap();
    }
    let mut c = Command::new(repo().join("examples/held-socket/holder-run"));
    c.current_dir(&h).stdout(Stdio::piped());
    let mut holder = Proc::spawn(c);
    read_line_timeout(holder.stdout(), T).expect("the holder listens");
    // the site under a restart loop like runsv's: ./run again, a second later
    let sv = site_service(&dir, &state, &h.join("s"));
    let mut c = Command::new("sh");
    c.args(["-c", "while :; do ./run; sleep 1; done"])
        .current_dir(&sv)
        .stdout(std::fs::File::create(dir.join("log")).unwrap())
        .stderr(Stdio::null());
    let _sup = Proc::spawn(c);
    let port = site_port(&state);
    let st = state.join("status");
    kill_loop(port, dir.join("probe.err"), "R1", || serving_pid(&st, 2));
    drop(holder);
}

/// examples/held-socket/down DIR when dropped.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let mut c = Command::new(repo().join("examples/held-socket/down"));
        c.arg(&self.0);
        let _ = run(c, T);
    }
}

#[test]
fn under_s6_with_s6_fdholder_daemon_the_chain_killed_refuses_nobody_and_down_ends_all() {
    if !require_peer("s6-svscan") || !require_peer("s6-fdholder-daemon") {
        return;
    }
    let dir = TempDir::new("held-s6");
    let d = dir.join("up");
    let _down = Down(d.clone());
    let mut c = Command::new(repo().join("examples/held-socket/up"));
    c.arg(&d).env("BIN", bin_dir()).env_remove("PORT");
    let (code, out, err) = run(c, Duration::from_secs(60));
    assert_eq!(code, 0, "{out}{err}");
    let url = out.lines().last().unwrap_or_default().to_string();
    let port: u16 = url
        .strip_prefix("http://127.0.0.1:")
        .and_then(|r| r.strip_suffix('/'))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the last line is not the URL: {out:?}"));
    let state = d.join("state");
    assert_eq!(site_port(&state), port);
    let svscan: i32 = std::fs::read_to_string(d.join("svscan.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // the release the up script built is the probe's first
    let rel = std::fs::read_link(state.join("current")).unwrap();
    let rel = rel.file_name().unwrap().to_string_lossy().into_owned();
    let st = state.join("status");
    let holder = svstat_pid(&d.join("service/holder"));
    let json = kill_loop(port, dir.join("probe.err"), &rel, || serving_pid(&st, 2));
    assert_eq!(json_count(&json, "refused"), 0, "{json}");
    // the socket was never the chain's to lose: the same holder throughout
    assert_eq!(svstat_pid(&d.join("service/holder")), holder);
    let workers = PoolStatus::read(&st).pids("ready");
    let pool: i32 = PoolStatus::read(&st).get("pid").parse().unwrap();
    let mut c = Command::new(repo().join("examples/held-socket/down"));
    c.arg(&d);
    let (code, _, err) = run(c, Duration::from_secs(60));
    assert_eq!(code, 0, "{err}");
    for p in [svscan, holder, pool].into_iter().chain(workers) {
        assert!(wait_until(T, || !alive(p)), "{p} outlived down");
    }
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the port still listens after down"
    );
}

/// `s6-svstat -p`: the pid of the service in `sv`, once it is up.
fn svstat_pid(sv: &Path) -> i32 {
    let mut pid = 0;
    let ok = wait_until(T, || {
        let out = Command::new("s6-svstat").arg("-p").arg(sv).output();
        pid = out
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(0);
        pid > 0
    });
    assert!(ok, "{sv:?} never up");
    pid
}

// ------------------------------------------------ systemd's fd store

/// A stand-in for systemd keeping an fd store: NOTIFY_SOCKET (SO_PASSCRED,
/// so each message comes with its sender's pid); `FDSTORE=1` from the main
/// pid with a descriptor (SCM_RIGHTS) and `FDNAME=` is kept; each start
/// passes what is kept on fd 3 with LISTEN_FDS=1, LISTEN_PID and
/// LISTEN_FDNAMES, as systemd does for a service with FileDescriptorStoreMax=.
struct FdStore {
    notify: UnixDatagram,
    path: PathBuf,
    stored: Option<(String, OwnedFd)>,
    /// FDSTORE=1 messages received.
    stores: usize,
}

impl FdStore {
    fn new(dir: &TempDir) -> FdStore {
        let path = dir.join("notify");
        let notify = UnixDatagram::bind(&path).unwrap();
        nix::sys::socket::setsockopt(&notify, nix::sys::socket::sockopt::PassCred, &true).unwrap();
        FdStore {
            notify,
            path,
            stored: None,
            stores: 0,
        }
    }

    fn start(&self, argv: &[String], log: &Path) -> Proc {
        let mut c = Command::new("sh");
        c.args([
            "-c",
            r#"[ -n "$LISTEN_FDS" ] && { LISTEN_PID=$$; export LISTEN_PID; }; exec "$@""#,
            "systemd",
        ]);
        c.args(argv);
        c.env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env("NOTIFY_SOCKET", &self.path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap());
        if let Some((name, fd)) = &self.stored {
            c.env("LISTEN_FDS", "1").env("LISTEN_FDNAMES", name);
            let fd = fd.as_raw_fd();
            // SAFETY: the closure runs in the forked child before exec and calls
            // only dup2(2), which is async-signal-safe; `fd` is a plain integer
            // copied into it, and the stored descriptor outlives the spawn.
            unsafe {
                c.pre_exec(move || {
                    if libc::dup2(fd, 3) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        Proc::spawn(c)
    }

    /// Read datagrams until `pid` says READY=1; keep what FDSTORE=1 brings.
    fn until_ready(&mut self, pid: i32) {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixCredentials};
        loop {
            let fd = self.notify.as_raw_fd();
            let ok = wait_readable(fd, T);
            assert!(ok, "no READY=1 from {pid} within {T:?}");
            let mut buf = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!(UnixCredentials, [RawFd; 4]);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty()).unwrap();
            let mut from = 0;
            let mut fds = Vec::new();
            for c in msg.cmsgs().unwrap() {
                match c {
                    ControlMessageOwned::ScmCredentials(cr) => from = cr.pid(),
                    ControlMessageOwned::ScmRights(r) => fds.extend(r),
                    _ => {}
                }
            }
            let n = msg.bytes;
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let fds: Vec<OwnedFd> = fds
                .into_iter()
                // SAFETY: SCM_RIGHTS just gave us these descriptors; nobody else owns them.
                .map(|f| unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(f) })
                .collect();
            assert_eq!(from, pid, "sender of {text:?} (NotifyAccess=main)");
            let lines: Vec<&str> = text.lines().collect();
            if lines.contains(&"FDSTORE=1") {
                self.stores += 1;
                let name = lines
                    .iter()
                    .find_map(|l| l.strip_prefix("FDNAME="))
                    .unwrap_or("stored")
                    .to_string();
                let mut fds = fds.into_iter();
                let fd = fds.next().expect("FDSTORE=1 with a descriptor");
                assert!(fds.next().is_none(), "one descriptor: {text:?}");
                self.stored = Some((name, fd));
            }
            if lines.contains(&"READY=1") {
                return;
            }
        }
    }

    /// The port of the socket in the store.
    fn port(&self) -> u16 {
        let (_, fd) = self.stored.as_ref().expect("a socket in the store");
        let a: nix::sys::socket::SockaddrIn =
            nix::sys::socket::getsockname(fd.as_raw_fd()).unwrap();
        a.port()
    }
}

/// The [Service] ExecStart= of examples/systemd/`unit`, made the test's:
/// /usr/local/bin -> the built tools, /srv/demo -> the site, /run/demo -> a
/// run directory, port 8080 -> 0. (No quotes in this unit's line.)
fn exec_start(unit: &str, state: &Path, run_dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(repo().join("examples/systemd").join(unit)).unwrap();
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart=");
    assert!(!line.contains(['\'', '"', '\\']), "{line}");
    line.split_whitespace()
        .map(|a| {
            if a == "8080" {
                return "0".to_string();
            }
            a.replace("/usr/local/bin/", &format!("{}/", s(&bin_dir())))
                .replace("/srv/demo", &s(state))
                .replace("/run/demo", &s(run_dir))
        })
        .collect()
}

#[test]
fn systemd_fd_store_keeps_the_socket_across_kill_9_of_the_service() {
    let dir = TempDir::new("held-fdstore");
    let state = site(&dir);
    let run_dir = dir.join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    let argv = exec_start("demo-fdstore.service", &state, &run_dir);
    assert!(argv[0].ends_with("/tcplisten"), "{argv:?}");
    let st = run_dir.join("status");
    let mut sd = FdStore::new(&dir);
    // The service, restarted whenever its main process dies (Restart=always).
    let mut p = sd.start(&argv, &dir.join("out0"));
    sd.until_ready(p.pid().as_raw());
    assert_eq!(sd.stores, 1, "the first start stores its socket");
    assert_eq!(sd.stored.as_ref().unwrap().0, "web");
    let port = sd.port();
    let err = dir.join("probe.err");
    let probe = Probe::spawn(port, &["-c", &CLIENTS.to_string(), "--json"], true, err, T);
    probe.wait_seen("R1");
    for k in 0..KILLS {
        let victim = p.pid().as_raw();
        assert!(
            wait_until(T, || serving_pid(&st, 4) == Some(victim)),
            "kill {k}: forkpool {victim} does not serve"
        );
        p.signal(Signal::SIGKILL);
        assert!(p.wait_timeout(T).is_some(), "forkpool {victim} lives");
        let mut waiting = TcpStream::connect(("127.0.0.1", port)).expect("not refused");
        waiting
            .write_all(b"GET /release HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        p = sd.start(&argv, &dir.join(format!("out{}", k + 1)));
        sd.until_ready(p.pid().as_raw());
        waiting.set_read_timeout(Some(T)).unwrap();
        let mut out = String::new();
        waiting.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200"), "kill {k}: {out:?}");
        assert_eq!(sd.port(), port);
    }
    let (_, json) = probe.stop();
    eprintln!("{KILLS} kills of the fd-store service with -9, {CLIENTS} clients: {json}");
    // restarts took the socket from the store: none stored another
    assert_eq!(sd.stores, 1, "a restart bound a socket of its own");
    assert_eq!(json_count(&json, "refused"), 0, "{json}");
    assert_eq!(json_count(&json, "timeout"), 0, "{json}");
    assert!(
        json_count(&json, "failed") <= (KILLS * CLIENTS) as u64,
        "{json}"
    );
    p.signal(Signal::SIGTERM);
    assert_eq!(p.wait_timeout(T).and_then(|s| s.code()), Some(0));
}
