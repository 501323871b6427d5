//! Helpers for the integration tests: find the built binaries, start processes
//! that are killed (by pid, with their process group) when the test ends, pass or
//! fail, wait on conditions with a deadline, and make private temporary directories.
//!
//! The binaries are built before the tests run (`cargo build --workspace`, see
//! README.md); a test binary finds them next to its own `deps/` directory, or in
//! `$TOOLS_BIN_DIR` when that is set.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// The path of a workspace binary, e.g. `bin("setlock")`.
pub fn bin(name: &str) -> PathBuf {
    let dir = match std::env::var_os("TOOLS_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().expect("current_exe");
            // target/<profile>/deps/<test> -> target/<profile>
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_path_buf()
        }
    };
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is not built: run `cargo build --workspace` before `cargo test` (see README.md)",
        p.display()
    );
    p
}

/// A `Command` for a workspace binary.
pub fn cmd(name: &str) -> Command {
    Command::new(bin(name))
}

/// Whether a program is on PATH (for tests against peers such as daemontools).
pub fn have(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

/// A peer the test suite needs: the test setup (scripts/test) installs it, so a
/// missing one is a failure, not a skip — unless `ALLOW_MISSING_PEERS=1`.
pub fn require_peer(prog: &str) -> bool {
    if have(prog) {
        return true;
    }
    if std::env::var_os("ALLOW_MISSING_PEERS").is_some() {
        eprintln!("skipping: {prog} is not installed");
        return false;
    }
    panic!("{prog} is not installed: run scripts/test (it installs the peers) or set ALLOW_MISSING_PEERS=1");
}

/// A process started by a test, in a process group of its own. When the guard
/// is dropped (test passed or panicked) the whole group gets SIGKILL and the
/// process is reaped.
pub struct Proc {
    pub child: Child,
    reaped: bool,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        Proc {
            child,
            reaped: false,
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn signal(&self, sig: Signal) {
        let _ = kill(self.pid(), sig);
    }

    pub fn stdout(&mut self) -> ChildStdout {
        self.child.stdout.take().expect("stdout was not piped")
    }

    /// Wait for the process to exit, at most `timeout`; its status if it did.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        // Short processes are the common case: poll often at first, then back off.
        let mut pause = Duration::from_micros(50);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.reaped = true;
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.pid();
        let _ = killpg(pid, Signal::SIGKILL);
        if !self.reaped {
            let _ = kill(pid, Signal::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Poll `cond` every few milliseconds until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(100);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(5));
    }
}

/// Read one line from a child's stdout, giving up after `timeout`.
pub fn read_line_timeout(
    out: ChildStdout,
    timeout: Duration,
) -> Option<(String, BufReader<ChildStdout>)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut line = String::new();
        let res = r.read_line(&mut line).map(|_| line);
        let _ = tx.send((res, r));
    });
    match rx.recv_timeout(timeout) {
        Ok((Ok(line), r)) => Some((line.trim_end().to_string(), r)),
        _ => None,
    }
}

/// Read everything from `r` until EOF, giving up after `timeout`.
pub fn read_all_timeout(mut r: impl Read + Send + 'static, timeout: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    rx.recv_timeout(timeout).ok()
}

/// A private temporary directory, removed when dropped.
pub struct TempDir(PathBuf);

/// Where test directories go: `$TMPDIR` when set, else /dev/shm when it is a
/// directory (tmpfs), else the system's temporary directory. Not a disk: on
/// ext4 the rename that replaces a status file waits for the writeback of the
/// file it replaces (auto_da_alloc started it at the previous rename), and
/// with the disk busy (other builds) forkpool's main loop stood in rename(2)
/// for over 15 s, in state D: reloads, readiness and signals all waited
/// (behind_tcplisten_20_* and others failed so under load; issue 25).
fn temp_base() -> PathBuf {
    if std::env::var_os("TMPDIR").is_some() {
        return std::env::temp_dir();
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        return shm.to_path_buf();
    }
    std::env::temp_dir()
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let p = temp_base().join(format!(
            "itest-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run a command to completion with piped output, at most `timeout`
/// (killed by pid if it takes longer): (exit code or -signal, stdout, stderr).
/// `atomic-symlink releases/ID SITE/current`: the deploy's switch, which
/// must succeed within `timeout`.
pub fn switch_current(site: &Path, id: &str, timeout: Duration) {
    let mut c = cmd("atomic-symlink");
    c.arg(format!("releases/{id}")).arg(site.join("current"));
    let (code, _, err) = run(c, timeout);
    assert_eq!(code, 0, "atomic-symlink: {err}");
}

pub fn run(mut cmd: Command, timeout: Duration) -> (i32, String, String) {
    use std::os::unix::process::ExitStatusExt;
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let what = format!("{cmd:?}");
    let mut p = Proc::spawn(cmd);
    let out = p.child.stdout.take().expect("stdout");
    let err = p.child.stderr.take().expect("stderr");
    let (to, te) = (mpsc::channel(), mpsc::channel());
    spawn_reader(out, to.0);
    spawn_reader(err, te.0);
    let st = p
        .wait_timeout(timeout)
        .unwrap_or_else(|| panic!("{what} did not finish in {timeout:?}"));
    let code = st.code().unwrap_or_else(|| -st.signal().unwrap_or(0));
    let o =
        to.1.recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
    let e =
        te.1.recv_timeout(Duration::from_secs(5))
            .unwrap_or_default();
    (code, o, e)
}

fn spawn_reader(mut r: impl Read + Send + 'static, tx: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = r.read_to_string(&mut s);
        let _ = tx.send(s);
    });
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .map(|r| !r.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// The repository (scripts, demo/, examples/ live there).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository")
        .to_path_buf()
}

/// The directory of the built tools (BIN for the shell scripts).
pub fn bin_dir() -> PathBuf {
    bin("forkpool").parent().expect("bin dir").to_path_buf()
}

/// Whether descriptor `fd` becomes readable within `timeout` (looked at
/// every 50 ms).
pub fn wait_readable(fd: std::os::fd::RawFd, timeout: Duration) -> bool {
    wait_until(timeout, || {
        let mut p = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: `p` is one valid pollfd and the count passed is 1.
        unsafe { libc::poll(p.as_mut_ptr(), 1, 50) > 0 }
    })
}

/// A listening socket on a free port of 127.0.0.1, to be a child's stdin (fd 0).
pub fn listener() -> (Stdio, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    (Stdio::from(std::os::fd::OwnedFd::from(l)), port)
}

/// `tcplisten -1 127.0.0.1 0 PROG ARGS` (stderr to `log`), and the port it
/// printed (within 60 s).
pub fn behind_tcplisten(prog: &str, args: &[&std::ffi::OsStr], log: &Path) -> (Proc, u16) {
    let mut c = cmd("tcplisten");
    c.args(["-1", "127.0.0.1", "0"])
        .arg(bin(prog))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("log"));
    let mut p = Proc::spawn(c);
    let (line, _) =
        read_line_timeout(p.stdout(), Duration::from_secs(60)).expect("tcplisten prints the port");
    (p, line.trim().parse().expect("port"))
}

/// Read one request head (up to the blank line) from a client, a byte at a
/// time (nothing of a next request is taken); None if the connection ends first.
pub fn read_request_head(s: &mut impl Read) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    Some(head)
}

/// A connection to 127.0.0.1:`port`, reads timing out after 10 s.
pub fn connect(port: u16) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// One HTTP response as read by [`read_response`] or [`read_head`].
pub struct Resp {
    pub status: u16,
    /// The status line and the headers.
    pub head: String,
    pub body: Vec<u8>,
}

impl Resp {
    /// The value of header `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    pub fn body(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Read one response (head, and the body by Content-Length); None if the
/// connection ends first.
pub fn read_response(s: &mut std::net::TcpStream) -> Option<Resp> {
    let mut r = read_head(s)?;
    let len: usize = r
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    r.body = vec![0; len];
    s.read_exact(&mut r.body).ok()?;
    Some(r)
}

/// Read one response's head only (the body left unread); None if the
/// connection ends first.
pub fn read_head(s: &mut std::net::TcpStream) -> Option<Resp> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => buf.push(b[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Resp {
        status,
        head,
        body: Vec::new(),
    })
}

/// uptime-probe against http://127.0.0.1:`port`/ until stopped (`args` before
/// the URL, `--no-keepalive` unless `keepalive`); its stderr goes to `err` so a
/// test can wait until it has seen a release. `long`: how long to wait for
/// that, and for its end.
pub struct Probe {
    p: Proc,
    err: PathBuf,
    long: Duration,
}

impl Probe {
    pub fn spawn(port: u16, args: &[&str], keepalive: bool, err: PathBuf, long: Duration) -> Probe {
        let mut c = cmd("uptime-probe");
        c.args(args);
        if !keepalive {
            c.arg("--no-keepalive");
        }
        c.arg(format!("http://127.0.0.1:{port}/"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err).expect("probe log"));
        Probe {
            p: Proc::spawn(c),
            err,
            long,
        }
    }

    /// Wait until the probe has had a response from `release`.
    pub fn wait_seen(&self, release: &str) {
        let line = format!("release {release} first seen");
        assert!(
            wait_until(self.long, || std::fs::read_to_string(&self.err)
                .map(|s| s.contains(&line))
                .unwrap_or(false)),
            "the probe never saw {release}: {}",
            std::fs::read_to_string(&self.err).unwrap_or_default()
        );
    }

    /// Stop it with INT: (exit code, the JSON line).
    pub fn stop(mut self) -> (i32, String) {
        let out = self.p.stdout();
        self.p.signal(Signal::SIGINT);
        let json = read_all_timeout(out, self.long).expect("the probe's results");
        let st = self
            .p
            .wait_timeout(self.long)
            .expect("the probe exits after INT");
        (st.code().unwrap_or(-1), json)
    }
}

/// Connect to test-worker and read its one-line answer; None on any failure.
pub fn ask(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    (!out.is_empty()).then(|| out.trim_end().to_string())
}

/// The value of `key=` in a test-worker answer (`pid=P gen=G ...`).
pub fn worker_field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
        .unwrap_or_default()
}

/// A number of uptime-probe's --json output: the first occurrence of the key
/// (the top-level counts come before the nested objects).
pub fn json_number(json: &str, key: &str) -> f64 {
    let k = format!("\"{key}\":");
    let at = json
        .find(&k)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + k.len();
    json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{key} in {json}"))
}

/// A count of uptime-probe's --json output.
pub fn json_count(json: &str, key: &str) -> u64 {
    json_number(json, key) as u64
}

/// forkpool's status file (-S): its key=value lines, and its worker lines
/// (slot, generation, pid, state).
#[derive(Debug, Default)]
pub struct PoolStatus {
    pub kv: std::collections::HashMap<String, String>,
    pub workers: Vec<(usize, u64, i32, String)>,
}

impl PoolStatus {
    /// Read the file; a missing or half-written one reads as empty.
    pub fn read(path: &Path) -> PoolStatus {
        let mut st = PoolStatus::default();
        for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            if k == "worker" {
                let f: Vec<&str> = v.split_whitespace().collect();
                if f.len() >= 4 {
                    st.workers.push((
                        f[0].parse().unwrap_or(0),
                        f[1].parse().unwrap_or(0),
                        f[2].parse().unwrap_or(0),
                        f[3].to_string(),
                    ));
                }
            } else {
                st.kv.insert(k.to_string(), v.to_string());
            }
        }
        st
    }

    pub fn get(&self, k: &str) -> &str {
        self.kv.get(k).map(String::as_str).unwrap_or("")
    }

    pub fn num(&self, k: &str) -> u64 {
        self.get(k).parse().unwrap_or(0)
    }

    /// The pids of the workers in `state` (starting, ready, held, stopping).
    pub fn pids(&self, state: &str) -> Vec<i32> {
        self.workers
            .iter()
            .filter(|w| w.3 == state)
            .map(|w| w.2)
            .collect()
    }

    /// The pids of generation `gen`'s workers in `state`.
    pub fn gen_pids(&self, gen: u64, state: &str) -> Vec<i32> {
        self.workers
            .iter()
            .filter(|w| w.1 == gen && w.3 == state)
            .map(|w| w.2)
            .collect()
    }
}

/// `clients` threads asking test-worker on `port` (see [`ask`]) again and again
/// until stopped, counting the answers and the failures.
pub struct Hammer {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    counts: std::sync::Arc<[std::sync::atomic::AtomicUsize; 2]>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Hammer {
    pub fn start(port: u16, clients: usize) -> Hammer {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let counts = std::sync::Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let threads = (0..clients)
            .map(|_| {
                let (done, counts) = (done.clone(), counts.clone());
                std::thread::spawn(move || {
                    while !done.load(Ordering::Relaxed) {
                        let i = if ask(port).is_some() { 0 } else { 1 };
                        counts[i].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Hammer {
            done,
            counts,
            threads,
        }
    }

    /// The answers so far.
    pub fn answered(&self) -> usize {
        self.counts[0].load(Ordering::Relaxed)
    }

    /// Stop the clients and wait for them: (answered, failed).
    pub fn stop(&mut self) -> (usize, usize) {
        self.done.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        (
            self.counts[0].load(Ordering::Relaxed),
            self.counts[1].load(Ordering::Relaxed),
        )
    }
}

impl Drop for Hammer {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

// ------------------------------------------------------------ builds and pool-health

/// Put `from` at `to` as an install does: a copy beside it, then rename.
pub fn install(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).expect("copy build");
    std::fs::rename(&tmp, to).expect("rename build");
}

/// Build A (the tool as built) and build B (the same with bytes appended:
/// a different file, a different build id) in `dir`.
pub fn two_builds(dir: &Path, tool: &str) -> (PathBuf, PathBuf) {
    let a = dir.join(format!("{tool}.build-a"));
    let b = dir.join(format!("{tool}.build-b"));
    std::fs::copy(bin(tool), &a).expect("copy");
    let mut bytes = std::fs::read(bin(tool)).expect("read");
    bytes.extend_from_slice(b"\0upgrade-test build B\0");
    std::fs::write(&b, bytes).expect("write B");
    chmod_755(&b);
    (a, b)
}

/// `dir/bin`: a copy of the tools the demo's scripts run (BIN for them), so
/// that a test can put another build in place.
pub fn demo_tools(dir: &Path) -> PathBuf {
    let bindir = dir.join("bin");
    std::fs::create_dir(&bindir).expect("bin");
    for tool in [
        "tcplisten",
        "forkpool",
        "loop-forever",
        "setlock",
        "atomic-symlink",
        "deploy-release",
        "poolctl",
        "app",
    ] {
        std::fs::copy(bin(tool), bindir.join(tool)).expect("copy tool");
    }
    bindir
}

/// An executable file at `path` (a script, a fake build) holding `text`.
pub fn script(path: &Path, text: &str) {
    std::fs::write(path, text).expect("script");
    chmod_755(path);
}

fn chmod_755(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// `tcplisten -1 127.0.0.1 0 pool-health ARGS`, and the port it printed.
pub fn start_health(dir: &Path, args: &[&std::ffi::OsStr]) -> (Proc, u16) {
    behind_tcplisten("pool-health", args, &dir.join("health.err"))
}

/// forkpool's children that are not workers (the guard): pids from
/// /proc/PID/task/PID/children, the workers those of the status file `st`.
pub fn non_worker_children(pid: i32, st: &Path) -> Vec<i32> {
    let workers: Vec<i32> = PoolStatus::read(st).workers.iter().map(|w| w.2).collect();
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .filter(|c| !workers.contains(c))
        .collect()
}
