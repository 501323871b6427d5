//! The in-place upgrade both supervisors do on USR2 (forkpool, loop-forever):
//! a process keeps its pid, its children and its descriptors across
//! execve(2), so it can exec a new build of itself with its state handed over.
//!
//! The pieces shared here:
//! - [`started_path`]: the program by the path it was started with (argv[0]
//!   resolved against PATH and the working directory at start), so that a
//!   binary rebuilt at that path is what runs next (`/proc/self/exe` would
//!   name the old, possibly deleted, file);
//! - [`build_id`]: the `version=` of the status files, a hash of the running
//!   executable's bytes (two different builds differ), after an optional tag;
//! - [`StateText`]: the versioned, line-based state format (`KIND key=value
//!   ...`, values escaped; an unknown version, kind or key is refused), and
//!   [`memfd`]/[`read_fd`] to hand it over on a descriptor;
//! - [`check`]: the new program run in a check mode on that state (it must
//!   parse it and exit 0) before anything is exec'd;
//! - [`block_signals`] (pending signals stay pending across exec),
//!   [`exec_keeping`] (the descriptors to keep lose close-on-exec just for the
//!   exec, put back if the exec fails).

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::SigSet;

use crate::signals::SignalPipe;

/// argv[0] as a path to exec later: with a slash, against the working
/// directory now; without, the first executable file of that name in PATH.
pub fn started_path(argv0: &OsStr) -> Result<PathBuf, String> {
    let p = Path::new(argv0);
    if argv0.as_bytes().contains(&b'/') {
        if p.is_absolute() {
            return Ok(p.to_path_buf());
        }
        let cwd = std::env::current_dir().map_err(|e| crate::io_reason(&e))?;
        return Ok(cwd.join(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    for dir in std::env::split_paths(&path) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let cand = dir.join(p);
        let exec = std::fs::metadata(&cand)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false);
        if exec {
            if cand.is_absolute() {
                return Ok(cand);
            }
            let cwd = std::env::current_dir().map_err(|e| crate::io_reason(&e))?;
            return Ok(cwd.join(cand));
        }
    }
    Err(format!("{} is not in PATH", p.display()))
}

/// The build id: 16 hex digits of a 64-bit hash of the running executable's
/// bytes, so two builds that differ in any byte have different ids (what
/// `-V` prints after `build`, and `version=` in the status files);
/// `unknown` if the executable cannot be read.
pub fn build_id() -> String {
    let hash = match std::fs::File::open("/proc/self/exe") {
        Ok(mut f) => {
            let mut buf = vec![0u8; 1 << 16];
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            let mut ok = true;
            loop {
                match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        for chunk in buf[..n].chunks(8) {
                            let mut w = [0u8; 8];
                            w[..chunk.len()].copy_from_slice(chunk);
                            h ^= u64::from_le_bytes(w);
                            h = h.wrapping_mul(0x0100_0000_01b3).rotate_left(29);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        ok = false;
                        break;
                    }
                }
            }
            ok.then(|| format!("{h:016x}"))
        }
        Err(_) => None,
    };
    hash.unwrap_or_else(|| "unknown".to_string())
}

/// A memfd holding `text`, close-on-exec, its offset at 0.
pub fn memfd(name: &str, text: &str) -> Result<OwnedFd, Errno> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let cname = CString::new(name).map_err(|_| Errno::EINVAL)?;
    let fd = memfd_create(&cname, MemFdCreateFlag::MFD_CLOEXEC)?;
    let mut rest = text.as_bytes();
    while !rest.is_empty() {
        match nix::unistd::write(&fd, rest) {
            Ok(n) => rest = &rest[n..],
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
    nix::unistd::lseek(fd.as_raw_fd(), 0, nix::unistd::Whence::SeekSet)?;
    Ok(fd)
}

/// The whole text on `fd`, from its start (the offset is shared with the
/// check child, hence the seek).
pub fn read_fd(fd: RawFd) -> Result<String, String> {
    nix::unistd::lseek(fd, 0, nix::unistd::Whence::SeekSet)
        .map_err(|e| format!("unable to seek: {}", crate::strerror(e)))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match nix::unistd::read(fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("unable to read: {}", crate::strerror(e))),
        }
    }
    String::from_utf8(out).map_err(|_| "the state is not UTF-8".to_string())
}

/// The descriptor an upgrading image handed over in `var` (the variable is
/// taken out of the environment): None when not upgrading.
pub fn handed_fd(var: &str) -> Option<Result<OwnedFd, String>> {
    let v = std::env::var_os(var)?;
    std::env::remove_var(var);
    let fd = crate::parse_number::<RawFd>(&v, 0, RawFd::MAX)
        .filter(|&fd| crate::fd_is_open(fd))
        .ok_or_else(|| format!("{var}={:?} is not an open descriptor", v.to_string_lossy()));
    Some(fd.map(|fd| {
        let _ = crate::set_cloexec(fd, true);
        // SAFETY: the previous image handed this descriptor to us alone (it
        // is open, checked above); nothing else in this process owns it.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }))
}

/// Take a descriptor the previous image kept open for us, close-on-exec again.
pub fn adopt_fd(fd: RawFd) -> Result<OwnedFd, String> {
    if !crate::fd_is_open(fd) {
        return Err(format!("descriptor {fd} is not open"));
    }
    let _ = crate::set_cloexec(fd, true);
    // SAFETY: the state names this descriptor as one the previous image owned
    // and kept across exec for us; it is open (checked) and owned by no one
    // else in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The answer a check gives on stdout once it has read and accepted the
/// state `text`: its length and a digest of its bytes, which only a program
/// that read that state (and knows this function) can give. A program that
/// merely exits 0 fails the check.
pub fn answer(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("state read: {} bytes, digest {h:016x}", text.len())
}

/// In check mode, the state `text` accepted: say [`answer`] on stdout, exit 0.
pub fn answer_and_exit(text: &str) -> ! {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{}", answer(text));
    let _ = out.flush();
    std::process::exit(0)
}

/// The most kept of a check's stdout and stderr (the rest is read and dropped).
const CHECK_OUTPUT_MAX: usize = 4096;

/// A check under way: `exe argv[1..]` run with `check_var=1` and
/// `state_var=FD` (the state on a memfd), in a process group of its own.
/// The supervisor keeps supervising meanwhile: it polls [`Check::fds`] with
/// [`Check::deadline`], hands every reaped pid to [`Check::reaped`], and asks
/// [`Check::result`] each turn. The check passes when the program exits 0
/// having said [`answer`] of that state on stdout; it fails at the deadline
/// however its descriptors are held (what is left of its group is killed),
/// and when it ends otherwise.
pub struct Check {
    pid: nix::unistd::Pid,
    exe: PathBuf,
    out: Option<OwnedFd>,
    err: Option<OwnedFd>,
    said_out: Vec<u8>,
    said_err: Vec<u8>,
    deadline: Instant,
    timeout: Duration,
    want: String,
    ended: Option<nix::sys::wait::WaitStatus>,
    _state: OwnedFd,
}

impl Check {
    /// Start the check of `text` (`names`: the tool's variables).
    pub fn start(
        exe: &Path,
        argv: &[OsString],
        text: &str,
        names: &Names,
        timeout: Duration,
    ) -> Result<Check, String> {
        let state = memfd(names.memfd, text)
            .map_err(|e| format!("unable to create a memfd: {}", crate::strerror(e)))?;
        let fd = state.as_raw_fd();
        crate::set_cloexec(fd, false)
            .map_err(|e| format!("unable to hand the state over: {}", crate::strerror(e)))?;
        let spawned = Command::new(exe)
            .arg0(argv.first().cloned().unwrap_or_default())
            .args(argv.iter().skip(1))
            .env(names.check, "1")
            .env(names.state, fd.to_string())
            .env_remove(names.fallback)
            .env_remove(names.failed)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn();
        let _ = crate::set_cloexec(fd, true);
        let mut child = spawned
            .map_err(|e| format!("unable to run {}: {}", exe.display(), crate::io_reason(&e)))?;
        let pipe = |p: Option<OwnedFd>| {
            p.inspect(|fd| {
                let _ = crate::set_nonblocking(fd.as_raw_fd());
            })
        };
        let out = pipe(child.stdout.take().map(OwnedFd::from));
        let err = pipe(child.stderr.take().map(OwnedFd::from));
        Ok(Check {
            pid: nix::unistd::Pid::from_raw(child.id() as i32),
            exe: exe.to_path_buf(),
            out,
            err,
            said_out: Vec::new(),
            said_err: Vec::new(),
            deadline: Instant::now() + timeout,
            timeout,
            want: answer(text),
            ended: None,
            _state: state,
        })
    }

    /// The pipes to poll while the check runs.
    pub fn fds(&self) -> Vec<RawFd> {
        self.out
            .iter()
            .chain(self.err.iter())
            .map(|f| f.as_raw_fd())
            .collect()
    }

    /// When the check fails if it has not ended.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// A reaped child: true if it was the check's program.
    pub fn reaped(&mut self, pid: nix::unistd::Pid, status: nix::sys::wait::WaitStatus) -> bool {
        if pid != self.pid {
            return false;
        }
        self.ended = Some(status);
        // What is left of its group (a child holding its pipes) goes now,
        // while the group's id is still reserved by them.
        let _ = nix::sys::signal::killpg(self.pid, nix::sys::signal::Signal::SIGKILL);
        true
    }

    fn drain(&mut self) {
        for (fd, said) in [
            (&mut self.out, &mut self.said_out),
            (&mut self.err, &mut self.said_err),
        ] {
            let mut buf = [0u8; 4096];
            while let Some(f) = fd.as_ref() {
                match nix::unistd::read(f.as_raw_fd(), &mut buf) {
                    Ok(0) => *fd = None,
                    Ok(n) => {
                        let room = CHECK_OUTPUT_MAX.saturating_sub(said.len());
                        said.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(Errno::EINTR) => continue,
                    Err(_) => break, // EAGAIN: nothing more now
                }
            }
        }
    }

    /// None while the check runs; then whether it passed (Err: why not).
    pub fn result(&mut self, now: Instant) -> Option<Result<(), String>> {
        self.drain();
        let exe = self.exe.display().to_string();
        let Some(status) = self.ended else {
            if now < self.deadline {
                return None;
            }
            // `30s` (whole seconds), `1500ms`
            let t = self.timeout;
            let bound = if t.subsec_millis() == 0 {
                format!("{}s", t.as_secs())
            } else {
                format!("{}ms", t.as_millis())
            };
            return Some(Err(format!(
                "{exe} in check mode did not exit within {bound}"
            )));
        };
        use nix::sys::wait::WaitStatus;
        let how = match status {
            WaitStatus::Exited(_, 0) => {
                let out = String::from_utf8_lossy(&self.said_out);
                if out.lines().next().map(str::trim) == Some(self.want.as_str()) {
                    return Some(Ok(()));
                }
                return Some(Err(format!(
                    "{exe} in check mode exited 0 without reading the state (it did not answer \"{}\")",
                    self.want
                )));
            }
            WaitStatus::Exited(_, c) => format!("exited {c}"),
            WaitStatus::Signaled(_, s, _) => format!("was killed by signal {}", s as i32),
            _ => "failed".to_string(),
        };
        let said = String::from_utf8_lossy(&self.said_err);
        let first = said.lines().next().unwrap_or("").trim();
        let first = crate::quote::line(first, crate::quote::MAX_TEXT);
        Some(Err(if first.is_empty() {
            format!("{exe} in check mode {how}")
        } else {
            format!("{exe} in check mode {how}: {first}")
        }))
    }
}

impl Drop for Check {
    /// Whatever is left of the check's process group is killed (a child it
    /// left behind holding its pipes, the program itself at the deadline).
    fn drop(&mut self) {
        // Ended: its group was killed when it was reaped (`reaped`).
        if self.ended.is_none() {
            let _ = nix::sys::signal::killpg(self.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(self.pid, None);
        }
    }
}

use std::os::unix::process::CommandExt as _;

/// Block every signal, then move the ones already caught on `sigs` (read
/// from the self-pipe, not handled yet) back to pending, in order: across
/// the exec they stay pending and the new image handles them. Returns the
/// mask to restore if the exec fails.
pub fn block_signals(sigs: &SignalPipe) -> SigSet {
    let old = crate::signals::block_all();
    for sig in sigs.drain() {
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), sig);
    }
    old
}

/// Exec `exe` with `argv` (argv[0] kept as given), `env` added, the
/// descriptors `keep` inherited. Returns only on failure, with every
/// descriptor of `keep` close-on-exec again and `env` taken back out.
pub fn exec_keeping(
    exe: &Path,
    argv: &[OsString],
    keep: &[RawFd],
    env: &[(&str, OsString)],
) -> Errno {
    let mut cleared = Vec::new();
    for &fd in keep {
        if let Err(e) = crate::set_cloexec(fd, false) {
            undo(&cleared, env);
            return e;
        }
        cleared.push(fd);
    }
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    let err = exec_path(exe, argv);
    undo(&cleared, env);
    err
}

fn undo(cleared: &[RawFd], env: &[(&str, OsString)]) {
    for &fd in cleared {
        let _ = crate::set_cloexec(fd, true);
    }
    for (k, _) in env {
        std::env::remove_var(k);
    }
}

fn exec_path(exe: &Path, argv: &[OsString]) -> Errno {
    let Ok(cexe) = CString::new(exe.as_os_str().as_bytes()) else {
        return Errno::EINVAL;
    };
    let cargs: Result<Vec<CString>, _> = argv.iter().map(|a| CString::new(a.as_bytes())).collect();
    let Ok(cargs) = cargs else {
        return Errno::EINVAL;
    };
    // The next image raises its own limit, from the one this one was given.
    crate::exec_as_given(|| match nix::unistd::execv(&cexe, &cargs) {
        Ok(never) => match never {},
        Err(e) => e,
    })
}

/// Test hook `*_UPGRADE_PAUSE_MS`: the milliseconds to pause between
/// blocking the signals and the exec (0: none).
pub fn pause_hook(var: &str) -> Duration {
    std::env::var_os(var)
        .and_then(|v| crate::parse_number::<u64>(&v, 0, 600_000))
        .map(Duration::from_millis)
        .unwrap_or_default()
}

// ---- one upgrade, start to exec ------------------------------------------

/// The environment variables of one tool's upgrade.
pub struct Names {
    /// The memfd's name (`forkpool-state`).
    pub memfd: &'static str,
    /// The state's descriptor (`FORKPOOL_STATE_FD`).
    pub state: &'static str,
    /// Check mode (`FORKPOOL_UPGRADE_CHECK`).
    pub check: &'static str,
    /// Test hook: pause before the exec (`FORKPOOL_UPGRADE_PAUSE_MS`).
    pub pause: &'static str,
    /// `EXEFD,STATEFD`: the previous image's executable and the state, for
    /// the new image to run the previous one again if it fails to take over
    /// (`FORKPOOL_UPGRADE_FALLBACK`).
    pub fallback: &'static str,
    /// Set by a new image that failed to take over, for the previous image
    /// it runs again: why (`FORKPOOL_UPGRADE_FAILED`).
    pub failed: &'static str,
}

/// How long the check may take, unless `--check-timeout` says
/// ([`Upgrade::check_timeout`]).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a supervisor's in-place upgrade stands (`upgrade=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpgradePhase {
    None,
    Running,
    Ok,
    Failed,
}

/// A supervisor's upgrade bookkeeping: its status-file keys and the program
/// to exec.
pub struct Upgrade {
    /// A USR2 not acted on yet.
    pub asked: bool,
    pub phase: UpgradePhase,
    /// Why the last upgrade failed (while `phase` is Failed).
    pub reason: String,
    /// Upgrades done in this supervisor's life (`upgrades=`).
    pub count: u64,
    /// Upgrades refused (`upgrade_failures=`).
    pub failures: u64,
    /// `version=`: this image's build id.
    pub version: String,
    /// The program to exec: argv[0] as resolved at the first start.
    pub exe: Result<PathBuf, String>,
    pub argv: Vec<OsString>,
    /// The check under way (the supervisor supervises on meanwhile).
    pub check: Option<Check>,
    /// The check passed; the exec waits for the supervisor to be free.
    pub passed: bool,
    /// How long the check may take (`--check-timeout`; [`CHECK_TIMEOUT`]).
    pub check_timeout: Duration,
}

impl Upgrade {
    /// At a fresh start: the path to exec later, resolved now.
    pub fn new(tool: &str) -> Upgrade {
        let argv: Vec<OsString> = std::env::args_os().collect();
        let exe = argv
            .first()
            .ok_or_else(|| "no argv[0]".to_string())
            .and_then(|a| started_path(a))
            .map_err(|e| format!("unable to find the program {tool} was started as: {e}"));
        Upgrade {
            asked: false,
            phase: UpgradePhase::None,
            reason: String::new(),
            count: 0,
            failures: 0,
            version: build_id(),
            exe,
            argv,
            check: None,
            passed: false,
            check_timeout: CHECK_TIMEOUT,
        }
    }

    /// The new image: `count` upgrades before this one, `failures`, the
    /// path handed over. When this image is the previous one run again by a
    /// new image that failed to take over (`names.failed` set), the upgrade
    /// is counted as refused instead, with the new image's reason.
    pub fn adopted(&mut self, count: u64, failures: u64, exe: PathBuf) {
        self.count = count + 1;
        self.failures = failures;
        self.exe = Ok(exe);
        self.phase = UpgradePhase::Ok;
    }

    /// `upgrade=`.
    pub fn name(&self) -> &'static str {
        match self.phase {
            UpgradePhase::None => "none",
            UpgradePhase::Running => "running",
            UpgradePhase::Ok => "ok",
            UpgradePhase::Failed => "failed",
        }
    }

    /// The upgrade was refused (`why`): one warning line, the keys.
    pub fn refused(&mut self, tool: &crate::Tool, why: String) {
        self.phase = UpgradePhase::Failed;
        self.failures += 1;
        tool.warn(format_args!(
            "upgrade refused: {why}; this {} keeps running",
            tool.name
        ));
        self.reason = format!("upgrade refused: {why}");
    }

    /// The previous image run again (`names.failed` in the environment,
    /// taken out): not an upgrade but a refusal, with the new image's reason.
    pub fn fell_back(&mut self, tool: &crate::Tool, names: &Names) {
        let Some(why) = std::env::var_os(names.failed) else {
            return;
        };
        std::env::remove_var(names.failed);
        self.count = self.count.saturating_sub(1);
        self.refused(
            tool,
            format!(
                "the new image failed to take over after the exec ({}); the previous image runs again",
                why.to_string_lossy()
            ),
        );
    }
}

/// Where the supervisor stands for an upgrade, each turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// Free: a check may start, a passed check is exec'd.
    No,
    /// Reloading (or a prepare open): the upgrade waits (`upgrade=running`).
    Wait,
    /// Stopping: no upgrade.
    Stopping,
}

/// The USR2 step both supervisors take once a turn: start the check when
/// asked and free; see whether a running check ended (the supervisor goes
/// on supervising while it runs); once it passed and the supervisor is
/// free, block the signals, write the state again and exec. Nothing exec'd:
/// the refusal ([`Upgrade::refused`]).
/// `state(sup, blocked, exe)` writes the whole state and says which
/// descriptors to keep (once for the check, once more with every signal
/// blocked right before the exec); `env`: variables for the next image.
#[allow(clippy::too_many_arguments)]
pub fn turn<S>(
    sup: &mut S,
    upgrade: fn(&mut S) -> &mut Upgrade,
    busy: Busy,
    tool: &crate::Tool,
    names: &Names,
    sigs: &SignalPipe,
    state: &mut dyn FnMut(&mut S, bool, &Path) -> Handed,
    env: &mut dyn FnMut(&mut S) -> Vec<(&'static str, OsString)>,
) {
    let now = Instant::now();
    let u = upgrade(sup);
    if busy == Busy::Stopping {
        if u.asked || u.check.is_some() || u.passed {
            tool.warn("USR2 while stopping: no upgrade");
        }
        u.asked = false;
        u.check = None;
        u.passed = false;
        return;
    }
    if u.asked {
        u.phase = UpgradePhase::Running;
        if u.check.is_some() || u.passed {
            // Already under way.
            u.asked = false;
        }
    }
    if let Some(c) = u.check.as_mut() {
        match c.result(now) {
            None => return,
            Some(Ok(())) => {
                u.check = None;
                u.passed = true;
            }
            Some(Err(why)) => {
                u.check = None;
                u.refused(tool, why);
                return;
            }
        }
    }
    if busy == Busy::Wait {
        return;
    }
    let (exe, argv) = (u.exe.clone(), u.argv.clone());
    let path = exe.clone().unwrap_or_default();
    if u.asked {
        u.asked = false;
        let timeout = u.check_timeout;
        let started = exe.and_then(|exe| {
            let (text, _) = state(sup, false, &path)?;
            Check::start(&exe, &argv, &text, names, timeout)
        });
        match started {
            Ok(c) => upgrade(sup).check = Some(c),
            Err(why) => upgrade(sup).refused(tool, why),
        }
        return;
    }
    if !std::mem::take(&mut upgrade(sup).passed) {
        return;
    }
    let env = env(sup);
    let why = exec_now(
        &path,
        &argv,
        tool,
        names,
        sigs,
        &mut |b| state(sup, b, &path),
        env,
    );
    upgrade(sup).refused(tool, why);
}

/// The pipes and the deadline of a running check, for the supervisor's poll.
pub fn check_wait(u: &Upgrade) -> (Vec<RawFd>, Option<Instant>) {
    match &u.check {
        Some(c) => (c.fds(), Some(c.deadline())),
        None => (Vec::new(), None),
    }
}

/// Block the signals, write the state once more, exec `exe` keeping what
/// the state names, the state itself and the fallback (the running
/// executable, so that a new image that fails to take over runs this one
/// again). Returns only when nothing was exec'd: why.
fn exec_now(
    exe: &Path,
    argv: &[OsString],
    tool: &crate::Tool,
    names: &Names,
    sigs: &SignalPipe,
    state: &mut dyn FnMut(bool) -> Handed,
    mut env: Vec<(&str, OsString)>,
) -> String {
    let old = block_signals(sigs);
    let pause = pause_hook(names.pause);
    if !pause.is_zero() {
        tool.warn(format_args!(
            "test hook {}: signals blocked, pausing {}ms before the exec",
            names.pause,
            pause.as_millis()
        ));
        std::thread::sleep(pause);
    }
    let memfd_of = |text: &str| {
        memfd(names.memfd, text)
            .map_err(|e| format!("unable to create a memfd: {}", crate::strerror(e)))
    };
    let handed = state(true).and_then(|(text, keep)| Ok((memfd_of(&text)?, keep)));
    let self_exe = nix::fcntl::open(
        "/proc/self/exe",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("unable to open /proc/self/exe: {}", crate::strerror(e)));
    let (fd, mut keep, self_exe) = match (handed, self_exe) {
        (Ok((fd, keep)), Ok(x)) => {
            // SAFETY: open just returned this descriptor, owned by no one else.
            (fd, keep, unsafe { OwnedFd::from_raw_fd(x) })
        }
        (Err(e), _) | (_, Err(e)) => {
            crate::signals::restore_mask(&old);
            return e;
        }
    };
    keep.push(fd.as_raw_fd());
    keep.push(self_exe.as_raw_fd());
    env.push((names.state, OsString::from(fd.as_raw_fd().to_string())));
    let named: Vec<String> = keep.iter().map(|f| f.to_string()).collect();
    env.push((
        names.fallback,
        OsString::from(format!(
            "{},{},{}",
            self_exe.as_raw_fd(),
            fd.as_raw_fd(),
            named.join(",")
        )),
    ));
    let err = exec_keeping(exe, argv, &keep, &env);
    crate::signals::restore_mask(&old);
    format!("unable to run {}: {}", exe.display(), crate::strerror(err))
}

/// What a supervisor's state writer hands over: the state text and the
/// descriptors to keep across the exec; or why not.
pub type Handed = Result<(String, Vec<RawFd>), String>;

/// The new image failed to take over (`why`): run the previous image again
/// on the same state (`names.fallback`), with `names.failed` saying why; the
/// signals are still blocked, so none is lost. Without a fallback, or if
/// that exec fails: one fatal line, 111.
pub fn fall_back(tool: &crate::Tool, names: &Names, why: String) -> ! {
    let fds = fallback_fds(names);
    let (Some(&exe_fd), Some(&state_fd)) = (fds.first(), fds.get(1)) else {
        tool.fatal(crate::EXIT_TEMPORARY, format_args!("{why}"))
    };
    if !crate::fd_is_open(exe_fd) || !crate::fd_is_open(state_fd) {
        tool.fatal(crate::EXIT_TEMPORARY, format_args!("{why}"))
    }
    tool.warn(format_args!(
        "upgrade failed after the exec: {why}; running the previous image again"
    ));
    std::env::remove_var(names.fallback);
    std::env::set_var(names.state, state_fd.to_string());
    std::env::set_var(names.failed, &why);
    for fd in fallback_fds(names).into_iter().skip(1) {
        let _ = crate::set_cloexec(fd, false);
    }
    let args: Vec<CString> = std::env::args_os()
        .filter_map(|a| CString::new(a.as_bytes()).ok())
        .collect();
    let envs: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k.as_bytes().to_vec();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    // The previous image, as the next one, starts from the limit this one
    // was given (it raises its own).
    let err = crate::exec_as_given(|| {
        // SAFETY: exe_fd is open (checked); execveat with an empty path and
        // AT_EMPTY_PATH runs the file it refers to, or returns an error.
        unsafe {
            let argp: Vec<*const libc::c_char> = args
                .iter()
                .map(|a| a.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect();
            let envp: Vec<*const libc::c_char> = envs
                .iter()
                .map(|a| a.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect();
            libc::syscall(
                libc::SYS_execveat,
                exe_fd,
                c"".as_ptr(),
                argp.as_ptr(),
                envp.as_ptr(),
                libc::AT_EMPTY_PATH,
            );
            Errno::last()
        }
    });
    tool.fatal(
        crate::EXIT_TEMPORARY,
        format_args!(
            "{why}; unable to run the previous image again: {}",
            crate::strerror(err)
        ),
    )
}

/// `names.fallback`: the previous executable, the state, then every
/// descriptor the state names (kept across this exec, for the next one).
fn fallback_fds(names: &Names) -> Vec<RawFd> {
    std::env::var(names.fallback)
        .unwrap_or_default()
        .split(',')
        .filter_map(|f| f.parse::<RawFd>().ok())
        .collect()
}

/// The new image took over: the fallback's two descriptors closed, its
/// variable taken out (a later failure is this image's own).
pub fn took_over(names: &Names) {
    for fd in fallback_fds(names).into_iter().take(2) {
        if let Ok(fd) = adopt_fd(fd) {
            drop(fd);
        }
    }
    std::env::remove_var(names.fallback);
}

/// The new image's first step, shared by both supervisors: the state on
/// `fd` read by `read` (or the previous image run again, [`fall_back`]), the
/// descriptor closed, the signals caught again (still blocked since the old
/// image's exec: the caller unblocks them once it has adopted what it was
/// handed).
pub fn take_state<T>(
    tool: &crate::Tool,
    names: &Names,
    fd: OwnedFd,
    read: impl FnOnce(&str) -> Result<T, String>,
) -> (T, SignalPipe) {
    let state = read_fd(fd.as_raw_fd())
        .and_then(|text| read(&text))
        .unwrap_or_else(|e| fall_back(tool, names, format!("unable to read the state: {e}")));
    let sigs = SignalPipe::install(&crate::signals::SUPERVISOR_SIGNALS).unwrap_or_else(|e| {
        fall_back(
            tool,
            names,
            format!("unable to catch signals: {}", crate::strerror(e)),
        )
    });
    // The fallback's own copy of the state stays open until took_over.
    if std::env::var_os(names.fallback).is_none() {
        drop(fd);
    } else {
        std::mem::forget(fd);
    }
    (state, sigs)
}

/// What adopting a handed descriptor failed on: the previous image run
/// again ([`fall_back`]).
pub fn adopt_failed(tool: &crate::Tool, names: &Names, e: String) -> ! {
    fall_back(tool, names, format!("unable to adopt: {e}"))
}

/// The descriptors a state names, each open: checked before any is adopted,
/// so that a failure leaves them all for the previous image.
pub fn verify_fds(fds: &[RawFd]) -> Result<(), String> {
    match fds.iter().find(|&&fd| !crate::fd_is_open(fd)) {
        Some(fd) => Err(format!("descriptor {fd} is not open")),
        None => Ok(()),
    }
}

// ---- the state text ------------------------------------------------------

/// The state handed from one image to the next: a first line `MAGIC VERSION`,
/// then one record a line, `KIND key=value key=value ...`, values escaped
/// (`%XX` for `%`, space, `=`, control bytes and newlines), and a last line `end`.
/// Writing: [`StateText::new`], [`StateText::record`]; reading:
/// [`StateText::parse`] then [`Record::take`] for every key, and
/// [`Record::done`], which refuses a key nobody took.
pub struct StateText {
    text: String,
}

impl StateText {
    pub fn new(magic: &str, version: u32) -> StateText {
        StateText {
            text: format!("{magic} {version}\n"),
        }
    }

    /// One record: `kind` and its fields in order.
    pub fn record(&mut self, kind: &str, fields: &[(&str, String)]) {
        self.text.push_str(kind);
        for (k, v) in fields {
            self.text.push(' ');
            self.text.push_str(k);
            self.text.push('=');
            self.text.push_str(&escape(v));
        }
        self.text.push('\n');
    }

    /// The `clock` record, first: CLOCK_MONOTONIC now, so that the reader
    /// puts every instant back against the moment of writing ([`clock_base`]).
    pub fn clock(&mut self) {
        self.record(
            "clock",
            &[(
                "monotonic_us",
                crate::upstream::monotonic_usec().to_string(),
            )],
        );
    }

    pub fn finish(mut self) -> String {
        self.text.push_str("end\n");
        self.text
    }

    /// The records of `text`, refused whole unless it starts with exactly
    /// `magic version` and ends with `end` (nothing is ever half-read).
    pub fn parse(text: &str, magic: &str, version: u32) -> Result<Vec<Record>, String> {
        let mut lines = text.lines();
        let first = lines.next().unwrap_or("");
        let Some(v) = first.strip_prefix(magic).and_then(|r| r.strip_prefix(' ')) else {
            return Err(format!("not a {magic} (first line {first:?})"));
        };
        if v != version.to_string() {
            return Err(format!(
                "state version {v} is not the version this build reads ({version})"
            ));
        }
        let mut out = Vec::new();
        let mut ended = false;
        for line in lines {
            if ended {
                return Err("text after the end line".to_string());
            }
            if line == "end" {
                ended = true;
                continue;
            }
            let mut parts = line.split(' ');
            let kind = parts.next().unwrap_or("").to_string();
            let mut fields = BTreeMap::new();
            for p in parts {
                let (k, v) = p
                    .split_once('=')
                    .ok_or_else(|| format!("{kind}: {p:?} is not key=value"))?;
                if fields.insert(k.to_string(), unescape(v)?).is_some() {
                    return Err(format!("{kind}: {k} twice"));
                }
            }
            out.push(Record { kind, fields });
        }
        if !ended {
            return Err("the state is cut short (no end line)".to_string());
        }
        Ok(out)
    }
}

/// One record of a state, its fields taken one by one.
#[derive(Debug)]
pub struct Record {
    pub kind: String,
    fields: BTreeMap<String, String>,
}

impl Record {
    /// The field `key` (taken: [`Record::done`] checks that all were).
    pub fn take(&mut self, key: &str) -> Result<String, String> {
        self.fields
            .remove(key)
            .ok_or_else(|| format!("{}: no {key}", self.kind))
    }

    /// The field `key` as a number.
    pub fn num<T: std::str::FromStr>(&mut self, key: &str) -> Result<T, String> {
        let v = self.take(key)?;
        v.parse()
            .map_err(|_| format!("{}: {key}={v:?} is not a number", self.kind))
    }

    /// An optional number (`-` for none).
    pub fn opt_num<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>, String> {
        let v = self.take(key)?;
        if v == "-" {
            return Ok(None);
        }
        v.parse()
            .map(Some)
            .map_err(|_| format!("{}: {key}={v:?} is not a number", self.kind))
    }

    /// An `Instant` written by [`instant_field`], against `now`.
    pub fn instant(&mut self, key: &str, now: Instant) -> Result<Option<Instant>, String> {
        Ok(self.opt_num::<i64>(key)?.map(|us| instant_from(us, now)))
    }

    /// Every field was taken: an unknown one is refused.
    pub fn done(self) -> Result<(), String> {
        match self.fields.keys().next() {
            Some(k) => Err(format!("{}: unknown key {k}", self.kind)),
            None => Ok(()),
        }
    }
}

/// The `clock` record read back: the moment of writing as an `Instant` of
/// this process, `now` less the time since (the check, the exec), against
/// which every instant of the state is put back.
pub fn clock_base(r: &mut Record, now: Instant) -> Result<Instant, String> {
    let then: u64 = r.num("monotonic_us")?;
    let ago = crate::upstream::monotonic_usec().saturating_sub(then);
    Ok(now.checked_sub(Duration::from_micros(ago)).unwrap_or(now))
}

/// An `Instant` as microseconds from `now` (negative: in the past). Instants
/// are CLOCK_MONOTONIC, which runs on across exec, so the next image puts
/// them back against its own `now` within the time the exec took.
pub fn instant_field(t: Option<Instant>, now: Instant) -> String {
    match t {
        None => "-".to_string(),
        Some(t) if t >= now => ((t - now).as_micros().min(i64::MAX as u128) as i64).to_string(),
        Some(t) => (-((now - t).as_micros().min(i64::MAX as u128) as i64)).to_string(),
    }
}

fn instant_from(us: i64, now: Instant) -> Instant {
    let d = Duration::from_micros(us.unsigned_abs());
    if us >= 0 {
        now.checked_add(d).unwrap_or(now)
    } else {
        now.checked_sub(d).unwrap_or(now)
    }
}

fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for ch in v.chars() {
        let c = ch as u32;
        if ch == '%' || ch == ' ' || ch == '=' || c < 0x20 || c == 0x7f {
            out.push_str(&format!("%{c:02X}"));
        } else {
            out.push(ch);
        }
    }
    out
}

fn unescape(v: &str) -> Result<String, String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = v
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape in {v:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{v:?} is not UTF-8"))
}

/// A path field: paths are written as text (a path that is not UTF-8 cannot
/// be handed over, and the upgrade is refused).
pub fn path_text(p: &Path) -> Result<String, String> {
    p.to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("{} is not UTF-8", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_text_round_trip() {
        let now = Instant::now();
        let mut s = StateText::new("test-state", 3);
        s.record(
            "thing",
            &[
                ("name", "a b=c%d\ne".to_string()),
                (
                    "when",
                    instant_field(Some(now - Duration::from_millis(1500)), now),
                ),
                ("none", instant_field(None, now)),
                ("utf", "é ü".to_string()),
            ],
        );
        let text = s.finish();
        let mut recs = StateText::parse(&text, "test-state", 3).expect("parses");
        assert_eq!(recs.len(), 1);
        let mut r = recs.remove(0);
        assert_eq!(r.kind, "thing");
        assert_eq!(r.take("name").unwrap(), "a b=c%d\ne");
        assert_eq!(r.take("utf").unwrap(), "é ü");
        let when = r.instant("when", now).unwrap().unwrap();
        assert_eq!(now - when, Duration::from_millis(1500));
        assert_eq!(r.instant("none", now).unwrap(), None);
        r.done().unwrap();
    }

    #[test]
    fn refuses_other_versions_unknown_keys_and_cut_text() {
        let mut s = StateText::new("test-state", 3);
        s.record("thing", &[("a", "1".to_string()), ("b", "2".to_string())]);
        let text = s.finish();
        let err = StateText::parse(&text, "test-state", 4).unwrap_err();
        assert!(err.contains("version 3"), "{err}");
        assert!(StateText::parse(&text, "other", 3).is_err());
        let cut = text.trim_end_matches("end\n");
        assert!(StateText::parse(cut, "test-state", 3).is_err());
        let mut r = StateText::parse(&text, "test-state", 3).unwrap().remove(0);
        r.take("a").unwrap();
        assert!(r.done().unwrap_err().contains("unknown key b"));
    }

    #[test]
    fn started_path_resolves_relative_and_path_lookups() {
        let p = started_path(OsStr::new("./x/y")).unwrap();
        assert!(p.is_absolute() && p.ends_with("x/y"));
        let sh = started_path(OsStr::new("sh")).unwrap();
        assert!(sh.is_absolute() && sh.ends_with("sh"));
        assert!(started_path(OsStr::new("no-such-program-here-at-all")).is_err());
    }

    #[test]
    fn memfd_reads_back_from_the_start() {
        let fd = memfd("t", "hello\n").unwrap();
        assert_eq!(read_fd(fd.as_raw_fd()).unwrap(), "hello\n");
        assert_eq!(read_fd(fd.as_raw_fd()).unwrap(), "hello\n");
    }

    const TEST_NAMES: Names = Names {
        memfd: "test-state",
        state: "TEST_STATE_FD",
        check: "TEST_UPGRADE_CHECK",
        pause: "TEST_UPGRADE_PAUSE_MS",
        fallback: "TEST_UPGRADE_FALLBACK",
        failed: "TEST_UPGRADE_FAILED",
    };

    /// The check's bound: 30 s unless `--check-timeout` says, and the
    /// refusal names it (a program that never exits, `sleep 60`).
    #[test]
    fn a_check_that_does_not_exit_is_refused_at_its_bound() {
        assert_eq!(Upgrade::new("t").check_timeout, Duration::from_secs(30));
        assert_eq!(
            crate::supervise::SupervisorOptions::default().check_timeout,
            Duration::from_secs(30)
        );
        let argv = [OsString::from("sleep"), OsString::from("60")];
        for (timeout, says) in [
            (CHECK_TIMEOUT, "within 30s"),
            (Duration::from_millis(1500), "within 1500ms"),
        ] {
            let t0 = Instant::now();
            let mut c =
                Check::start(Path::new("/bin/sleep"), &argv, "x\n", &TEST_NAMES, timeout).unwrap();
            assert!(c.deadline() >= t0 + timeout);
            assert_eq!(c.result(c.deadline() - Duration::from_millis(1)), None);
            let why = c.result(c.deadline()).unwrap().unwrap_err();
            assert!(why.contains(&format!("did not exit {says}")), "{why}");
        }
    }
}
