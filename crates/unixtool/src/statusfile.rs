//! The status file of a supervisor (forkpool `-S`, loop-forever `-S`) and what
//! its readers (poolctl, deploy-release) do with it, once:
//!
//! - [`replace`]: write it so that a reader always sees one whole file, through
//!   a temporary with an unpredictable name that is never a planted symlink;
//! - [`read`]: its `key=value` lines (`worker=` lines kept in order), read
//!   through [`read_small`]: never blocks, only a regular file, bounded;
//! - [`chain`]: the pid it names, checked: alive, forkpool or loop-forever, and
//!   writing this very file (a stale or foreign pid is never signalled);
//! - [`reload`] / [`upgrade`]: signal that chain and wait for a definite answer;
//! - [`control`]: a line to forkpool's control FIFO (`-C`, `control=`), and a
//!   wait for the answer (`command=` counts the lines it read and says whether
//!   the last was accepted); [`confirm`] / [`revert`] the verified switch
//!   (`--confirm-timeout`, `verify=`) with it.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The supervisors that write status files.
pub const SUPERVISORS: [&str; 2] = ["forkpool", "loop-forever"];

/// Replace `path` with `text`: a new file beside it
/// (`.NAME.tmp.PID.RANDOM`, O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0644), written
/// whole, then renamed over `path`. Nothing is followed or overwritten but
/// `path` itself; on failure the temporary is removed and `path` is unchanged.
pub fn replace(path: &Path, text: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?
        .to_string_lossy();
    let mut attempt = 0;
    let (tmp, mut file) = loop {
        let tmp = dir.join(format!(
            ".{name}.tmp.{}.{:016x}",
            std::process::id(),
            crate::symlink::random64()
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 10 => attempt += 1,
            Err(e) => return Err(e),
        }
    };
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Outside text (a path, a reason) as a status file's value holds it: on one
/// line, control bytes quoted ([`crate::quote::line`]: a release directory
/// named `r1\nready=9` cannot add a key), at most 4096 bytes.
pub fn value(text: &str) -> String {
    crate::quote::line(text, 4096)
}

/// A status file as read: its lines in order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Status {
    /// `key=value` lines but `worker=`, in file order.
    pub fields: Vec<(String, String)>,
    /// The `worker=` lines' values, in file order.
    pub workers: Vec<String>,
    /// The whole text (to see whether the file changed at all).
    pub text: String,
}

impl Status {
    pub fn parse(text: &str) -> Status {
        let mut st = Status {
            text: text.to_string(),
            ..Status::default()
        };
        for line in text.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            if k == "worker" {
                st.workers.push(v.to_string());
            } else {
                st.fields.push((k.to_string(), v.to_string()));
            }
        }
        st
    }

    /// The value of `key` ("" when absent).
    pub fn get(&self, key: &str) -> &str {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// The value of `key` as a number (0 when absent or not one).
    pub fn num(&self, key: &str) -> u64 {
        self.get(key).parse().unwrap_or(0)
    }

    /// Whole and serving: running, a serving generation, every worker ready.
    pub fn serving(&self) -> bool {
        self.get("state") == "running"
            && self.num("serving_generation") > 0
            && self.num("workers") > 0
            && self.num("ready") >= self.num("workers")
    }
}

/// The most a status file (or another small file the tools read beside it:
/// a history, deploy.running) may hold: far more than a pool of thousands of
/// workers writes; a bigger one is refused, never read whole.
pub const MAX_READ: u64 = 1 << 20;

/// Read a small text file without ever blocking or reading without bound:
/// opened O_NONBLOCK (a FIFO planted there opens at once instead of waiting
/// for a writer), refused unless it is a regular file, refused when bigger
/// than `max` bytes; invalid UTF-8 is replaced, not an error.
pub fn read_small(path: &Path, max: u64) -> io::Result<String> {
    use std::io::Read;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", kind_of(&meta.file_type())),
        ));
    }
    if meta.len() > max {
        return Err(too_big(meta.len(), max));
    }
    let mut buf = Vec::new();
    // One byte more than allowed: a file that grew since the fstat is seen.
    file.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(too_big(buf.len() as u64, max));
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn too_big(len: u64, max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("too large ({len} bytes; at most {max} are read)"),
    )
}

/// What kind of file it is, for a message.
fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a file"
    }
}

/// Read and parse the status file ([`read_small`], at most [`MAX_READ`]).
pub fn read(path: &Path) -> io::Result<Status> {
    read_small(path, MAX_READ).map(|t| Status::parse(&t))
}

/// The supervisor that writes a status file, checked.
#[derive(Debug, Clone)]
pub struct Chain {
    pub pid: i32,
    /// forkpool or loop-forever.
    pub program: String,
}

/// Why no chain runs there (exit 3 of poolctl and deploy-release).
#[derive(Debug, Clone, PartialEq)]
pub struct NotRunning(pub String);

impl std::fmt::Display for NotRunning {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Read `path` and check the pid it names: alive, forkpool or loop-forever by
/// /proc/PID/comm or exe, and its command line names this status file (-S).
pub fn chain(path: &Path) -> Result<(Chain, Status), NotRunning> {
    let status = match read(path) {
        Ok(s) => s,
        Err(e) => {
            return Err(NotRunning(format!(
                "unable to read status file {}: {} (is the chain running?)",
                path.display(),
                crate::io_reason(&e)
            )))
        }
    };
    check_chain(path, &status).map(|chain| (chain, status))
}

/// The checks of [`chain`] on a status file already read from `path`.
pub fn check_chain(path: &Path, status: &Status) -> Result<Chain, NotRunning> {
    let shown = path.display();
    let pid: i32 = match status.get("pid").parse() {
        Ok(p) if p > 1 => p,
        _ => return Err(NotRunning(format!("no valid pid= in {shown}"))),
    };
    if !alive(pid) {
        return Err(NotRunning(format!(
            "pid {pid} named by {shown} is not running (stale status file)"
        )));
    }
    let program = program_of(pid).unwrap_or_default();
    if !SUPERVISORS.contains(&program.as_str()) {
        let what = if program.is_empty() {
            "unknown"
        } else {
            &program
        };
        return Err(NotRunning(format!(
            "pid {pid} named by {shown} is {what}, not forkpool or loop-forever (stale status file, pid reused); not signalled"
        )));
    }
    if !writes_status(pid, path) {
        return Err(NotRunning(format!(
            "pid {pid} ({program}) does not write {shown} (its -S names another file); not signalled"
        )));
    }
    if status.get("state") == "stopping" || status.get("state") == "stopped" {
        return Err(NotRunning(format!(
            "pid {pid} ({program}) is {}",
            status.get("state")
        )));
    }
    Ok(Chain { pid, program })
}

/// What /proc/PID/stat says of a process: its state letter and its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcState {
    /// R, S, D, T (stopped), t (traced), Z, X ...
    pub state: char,
    pub ppid: i32,
}

impl ProcState {
    /// Stopped by a signal (SIGSTOP, SIGTSTP) or by a tracer: it runs nothing.
    pub fn stopped(&self) -> bool {
        matches!(self.state, 'T' | 't')
    }

    pub fn dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// /proc/PID/stat of `pid`; None when there is no such process.
pub fn proc_state(pid: i32) -> Option<ProcState> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (comm) S PPID ...": comm may hold spaces and parentheses
    let mut rest = s.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(ProcState { state, ppid })
}

/// A process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .map(|r| {
                let r = r.trim_start();
                !r.starts_with('Z') && !r.starts_with('X')
            })
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// forkpool or loop-forever by the executable's name, else /proc/PID/comm.
fn program_of(pid: i32) -> Option<String> {
    if let Ok(exe) = std::fs::read_link(format!("/proc/{pid}/exe")) {
        let name = exe.file_name()?.to_string_lossy().into_owned();
        // the binary was rebuilt or removed since the chain started
        let name = name.trim_end_matches(" (deleted)").to_string();
        if SUPERVISORS.contains(&name.as_str()) {
            return Some(name);
        }
    }
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_string())
}

/// Whether the command line of `pid` has `-S FILE` (or -SFILE, --status FILE,
/// --status=FILE) naming `path`, a relative FILE taken from the process's cwd.
fn writes_status(pid: i32, path: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
    let want = canonical_name(path);
    let mut named = Vec::new();
    for (i, a) in args.iter().enumerate().skip(1) {
        let next = args.get(i + 1).cloned().unwrap_or_default();
        if a == "-S" || a == "--status" {
            named.push(next);
        } else if let Some(v) = a.strip_prefix("--status=") {
            named.push(v.to_string());
        } else if let Some(v) = a.strip_prefix("-S") {
            if !a.starts_with("--") {
                named.push(v.to_string());
            }
        }
    }
    named
        .iter()
        .filter(|n| !n.is_empty())
        .any(|n| want.is_some() && canonical_name(&cwd.join(n)) == want)
}

/// The canonical directory of `p` joined with its file name (the file itself
/// is renamed over all the time, so its directory is what is resolved).
fn canonical_name(p: &Path) -> Option<PathBuf> {
    let dir = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(p.file_name()?))
}

/// How a wait for the chain's answer ended other than well.
#[derive(Debug, Clone, PartialEq)]
pub enum WaitError {
    /// The chain said no, and why (`reload=failed`, `reason=`).
    Failed(String),
    /// No answer before the deadline; `unchanged`: the status file never
    /// changed after the signal (the chain cannot write it, or never got it).
    TimedOut { reason: String, unchanged: bool },
    /// The chain is not running, or died while we waited.
    NotRunning(String),
    /// `interrupted` said stop (a signal to the waiting tool).
    Interrupted,
}

impl std::fmt::Display for WaitError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            WaitError::Failed(r) | WaitError::NotRunning(r) => f.write_str(r),
            WaitError::TimedOut { reason, .. } => f.write_str(reason),
            WaitError::Interrupted => f.write_str("interrupted"),
        }
    }
}

/// What a chain answered: the status when it said yes.
pub type Answer = Result<Status, WaitError>;

/// HUP the chain that writes `path`, then wait until a generation newer than
/// the one before is fully serving (`reload=ok`, `serving_generation` = it,
/// `ready` = `workers`), or failed (`reload=failed`: the reason), or the
/// deadline passes, or the chain dies (noticed within a second), or
/// `interrupted()` returns true.
pub fn reload(path: &Path, timeout: Duration, interrupted: &mut dyn FnMut() -> bool) -> Answer {
    signal_and_wait(
        path,
        Signal::SIGHUP,
        timeout,
        &|before, now| {
            let gen = now.num("generation");
            if gen <= before.num("generation") {
                return None;
            }
            match now.get("reload") {
                "failed" => Some(Err(format!(
                    "reload to generation {gen} failed: {}",
                    now.get("reason")
                ))),
                "ok" if now.num("serving_generation") == gen
                    && now.num("ready") >= now.num("workers") =>
                {
                    Some(Ok(()))
                }
                _ => None,
            }
        },
        interrupted,
    )
}

/// USR2 (the in-place upgrade of the supervisor itself), then wait until the
/// file says `upgrade=ok` with a `version=` other than before, or
/// `upgrade=failed` (the reason in `reason=`).
pub fn upgrade(path: &Path, timeout: Duration, interrupted: &mut dyn FnMut() -> bool) -> Answer {
    signal_and_wait(
        path,
        Signal::SIGUSR2,
        timeout,
        &|before, now| match now.get("upgrade") {
            "failed" if now.text != before.text => {
                Some(Err(format!("upgrade failed: {}", now.get("reason"))))
            }
            "ok" if now.get("version") != before.get("version") => Some(Ok(())),
            _ => None,
        },
        interrupted,
    )
}

/// The chain died while we waited: why, for the waiting tool.
fn died(chain: &Chain) -> Option<WaitError> {
    (!alive(chain.pid)).then(|| {
        WaitError::NotRunning(format!(
            "pid {} ({}) died while we waited",
            chain.pid, chain.program
        ))
    })
}

type Verdict<'a> = &'a dyn Fn(&Status, &Status) -> Option<Result<(), String>>;

fn signal_and_wait(
    path: &Path,
    sig: Signal,
    timeout: Duration,
    verdict: Verdict,
    interrupted: &mut dyn FnMut() -> bool,
) -> Answer {
    let (chain, before) = chain(path).map_err(|e| WaitError::NotRunning(e.0))?;
    let pid = chain.pid;
    if let Err(e) = kill(Pid::from_raw(pid), sig) {
        return Err(WaitError::NotRunning(format!(
            "unable to signal pid {pid} ({}): {}",
            chain.program,
            crate::strerror(e)
        )));
    }
    let start = Instant::now();
    let mut changed = false;
    loop {
        if interrupted() {
            return Err(WaitError::Interrupted);
        }
        if let Ok(now) = read(path) {
            changed |= now.text != before.text;
            match verdict(&before, &now) {
                Some(Ok(())) => return Ok(now),
                Some(Err(reason)) => return Err(WaitError::Failed(reason)),
                None => {}
            }
        }
        if let Some(e) = died(&chain) {
            return Err(e);
        }
        if start.elapsed() >= timeout {
            let secs = timeout.as_secs();
            let reason = if changed {
                let now = read(path).unwrap_or_default();
                format!(
                    "timed out after {secs}s: generation {} reload={} serving_generation={} ready={} of {}",
                    now.num("generation"),
                    now.get("reload"),
                    now.num("serving_generation"),
                    now.num("ready"),
                    now.num("workers")
                )
            } else {
                format!(
                    "timed out after {secs}s: the status file {} did not change after the {} (can pid {pid} write it?)",
                    path.display(),
                    crate::signals::signal_name(sig)
                )
            };
            return Err(WaitError::TimedOut {
                reason,
                unchanged: !changed,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What forkpool said to the last control line: how many it read, and
/// whether the last was accepted (`command=N WORD accepted|refused`).
pub fn command_of(st: &Status) -> (u64, bool) {
    let v = st.get("command");
    let n = v
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (n, v.ends_with(" accepted"))
}

/// The FIFO the pool reads (`control=`; a relative name is the pool's cwd's).
fn fifo_of(pid: i32, st: &Status) -> Option<PathBuf> {
    let c = st.get("control");
    if c.is_empty() {
        return None;
    }
    let p = Path::new(c);
    if p.is_absolute() {
        return Some(p.to_path_buf());
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    Some(cwd.join(p))
}

/// Write `line` to the FIFO: never blocks, never follows a symlink, never
/// writes to anything but a FIFO.
fn send(fifo: &Path, line: &str) -> Result<(), String> {
    let mut f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(fifo)
        .map_err(|e| crate::io_reason(&e))?;
    let is_fifo = f.metadata().map(|m| m.file_type().is_fifo());
    if !is_fifo.unwrap_or(false) {
        return Err("not a FIFO".to_string());
    }
    f.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| crate::io_reason(&e))
}

/// How a control command's wait ends once forkpool accepted it, given the
/// status before the line and now: `Some(Ok(()))` done, `Some(Err(why))`
/// failed, `None` not yet.
pub type Done<'a> = &'a dyn Fn(&Status, &Status) -> Option<Result<(), String>>;

/// Write `line` to the control FIFO of the checked forkpool that writes
/// `path`, then wait until it read it: refused (`WaitError::Failed`, with
/// `reason=`), or accepted and `done` says how it ended; or the deadline
/// passes, the pool dies or stops, or `interrupted()` returns true. A pool
/// without `-C` is `Failed`; a FIFO that cannot be written, `NotRunning`.
pub fn control(
    path: &Path,
    line: &str,
    timeout: Duration,
    interrupted: &mut dyn FnMut() -> bool,
    done: Done,
) -> Answer {
    let (chain, before) = chain(path).map_err(|e| WaitError::NotRunning(e.0))?;
    let pid = chain.pid;
    let Some(fifo) = fifo_of(pid, &before) else {
        return Err(WaitError::Failed(format!(
            "pid {pid} ({}) has no control FIFO (forkpool -C)",
            chain.program
        )));
    };
    if let Err(why) = send(&fifo, line) {
        return Err(WaitError::NotRunning(format!(
            "unable to write to control FIFO {}: {why}",
            fifo.display()
        )));
    }
    let (n0, _) = command_of(&before);
    let start = Instant::now();
    loop {
        if interrupted() {
            return Err(WaitError::Interrupted);
        }
        if let Ok(now) = read(path) {
            let (n, accepted) = command_of(&now);
            if n > n0 && !accepted {
                return Err(WaitError::Failed(now.get("reason").to_string()));
            }
            if n > n0 {
                match done(&before, &now) {
                    Some(Ok(())) => return Ok(now),
                    Some(Err(why)) => return Err(WaitError::Failed(why)),
                    None if now.get("state") != "running" => {
                        return Err(WaitError::Failed(format!(
                            "pid {pid} ({}) is {} (reason={})",
                            chain.program,
                            now.get("state"),
                            now.get("reason")
                        )))
                    }
                    None => {}
                }
            }
        }
        if let Some(e) = died(&chain) {
            return Err(e);
        }
        if start.elapsed() >= timeout {
            let st = read(path).unwrap_or_default();
            let (n, _) = command_of(&st);
            let mut reason = format!(
                "timed out after {}s: command={} phase={} phase_generation={}",
                timeout.as_secs(),
                st.get("command"),
                st.get("phase"),
                st.get("phase_generation")
            );
            if !st.get("verify").is_empty() {
                reason += &format!(
                    " verify={} verify_generation={}",
                    st.get("verify"),
                    st.get("verify_generation")
                );
            }
            return Err(WaitError::TimedOut {
                reason,
                unchanged: n <= n0,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `confirm` (forkpool `--confirm-timeout`): the parked generation is
/// retired; done at `verify=confirmed`.
pub fn confirm(path: &Path, timeout: Duration, interrupted: &mut dyn FnMut() -> bool) -> Answer {
    control(path, "confirm", timeout, interrupted, &|_, now| {
        (now.get("verify") == "confirmed").then_some(Ok(()))
    })
}

/// `revert` (forkpool `--confirm-timeout`): the parked generation serves
/// again; done at `verify=reverted` with `serving_generation` the one parked
/// before and every worker ready.
pub fn revert(path: &Path, timeout: Duration, interrupted: &mut dyn FnMut() -> bool) -> Answer {
    control(path, "revert", timeout, interrupted, &|before, now| {
        let parked = before.num("parked_generation");
        (now.get("verify") == "reverted"
            && now.num("serving_generation") == parked
            && now.num("ready") >= now.num("workers"))
        .then_some(Ok(()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "statusfile-{tag}-{}-{:x}",
            std::process::id(),
            crate::symlink::random64()
        ));
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn replace_never_follows_a_planted_symlink() {
        let d = tempdir("plant");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious\n").expect("victim");
        let path = d.join("status");
        // the names the old writers used: path.tmp.PID, and a dot variant
        for name in [
            format!("status.tmp.{}", std::process::id()),
            format!(".status.tmp.{}", std::process::id()),
        ] {
            std::os::unix::fs::symlink(&victim, d.join(name)).expect("plant");
        }
        replace(&path, "pid=1\n").expect("replace");
        replace(&path, "pid=2\n").expect("replace again");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "pid=2\n");
        // no temporary left behind: the victim, the file, the two planted links
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 4);
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn replace_into_a_missing_directory_fails_and_leaves_nothing() {
        let d = tempdir("missing");
        let r = replace(&d.join("nope/status"), "x\n");
        assert!(r.is_err());
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn parse_keeps_worker_lines_in_order() {
        let s = Status::parse(
            "pid=7\nstate=running\nworkers=2\nready=2\nserving_generation=3\nworker=0 3 10 ready\nworker=1 3 11 ready\n",
        );
        assert_eq!(s.get("pid"), "7");
        assert_eq!(s.num("serving_generation"), 3);
        assert_eq!(s.get("nothing"), "");
        assert_eq!(s.workers, vec!["0 3 10 ready", "1 3 11 ready"]);
        assert!(s.serving());
        let s = Status::parse("state=running\nworkers=2\nready=1\nserving_generation=3\n");
        assert!(!s.serving());
    }

    #[test]
    fn a_foreign_or_dead_pid_is_not_a_chain() {
        let d = tempdir("foreign");
        let path = d.join("status");
        // this test process: alive, but not a supervisor
        std::fs::write(
            &path,
            format!("pid={}\nstate=running\n", std::process::id()),
        )
        .unwrap();
        let e = chain(&path).unwrap_err();
        assert!(e.0.contains("not forkpool or loop-forever"), "{e}");
        std::fs::write(&path, "pid=junk\n").unwrap();
        assert!(chain(&path).unwrap_err().0.contains("no valid pid"));
        std::fs::remove_file(&path).unwrap();
        assert!(chain(&path).unwrap_err().0.contains("unable to read"));
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn the_answer_to_a_control_line() {
        let st = Status::parse("command=3 commit refused\nreason=nothing is prepared\n");
        assert_eq!(command_of(&st), (3, false));
        let st = Status::parse("command=4 confirm accepted\n");
        assert_eq!(command_of(&st), (4, true));
        assert_eq!(command_of(&Status::parse("command=0\n")), (0, false));
        assert_eq!(command_of(&Status::parse("pid=1\n")), (0, false));
    }
}
