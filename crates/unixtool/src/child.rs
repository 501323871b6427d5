//! Children of a supervisor (loop-forever, forkpool): fork and exec of
//! `prog...` with a clean signal state, `LISTEN_PID` rewritten, extra
//! environment, an optional working directory, an optional parent-death signal
//! and descriptors moved into place; then reaping and one-line descriptions of
//! how a child ended.
//!
//! The supervisors are single-threaded, so the child may allocate and set its
//! environment between fork and exec. A child that cannot exec says so in one
//! line on stderr (`name: fatal: unable to run prog: reason`) and exits 111,
//! which its supervisor sees as any other failed start.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::{exec_errno, signals, strerror, EXIT_TEMPORARY};

/// What to run and how; [`Spawn::spawn`] forks and execs it.
pub struct Spawn<'a> {
    /// The tool's name, the prefix of the child's error message.
    pub tool: &'static str,
    pub argv: &'a [OsString],
    /// Variables set in the child, beside what it inherits.
    pub env: Vec<(String, OsString)>,
    /// Working directory of the child (prog is looked up after the chdir).
    pub dir: Option<PathBuf>,
    /// PR_SET_PDEATHSIG: the signal the child gets when its parent dies.
    pub parent_death: Option<Signal>,
    /// Descriptors to put in place: (open descriptor, number in the child).
    pub fds: Vec<(RawFd, RawFd)>,
    /// Put the child in a process group of its own (its pid), set in the
    /// child before exec and in the parent after fork, so that neither side
    /// can signal the group before it exists. Its SIGTSTP is then back to
    /// the default action even when inherited ignored: the group's owner
    /// stops it with TSTP (forkpool's park).
    pub process_group: bool,
    /// Variables set to the child's own pid (`WATCHDOG_PID`).
    pub own_pid_env: Vec<&'static str>,
}

impl<'a> Spawn<'a> {
    pub fn new(tool: &'static str, argv: &'a [OsString]) -> Spawn<'a> {
        Spawn {
            tool,
            argv,
            env: Vec::new(),
            dir: None,
            parent_death: None,
            fds: Vec::new(),
            process_group: false,
            own_pid_env: Vec::new(),
        }
    }

    pub fn env(&mut self, key: &str, value: impl Into<OsString>) -> &mut Self {
        self.env.push((key.to_string(), value.into()));
        self
    }

    /// Fork; in the child, set everything up and exec prog. Returns the
    /// child's pid. Signals are blocked around the fork so that no handler of
    /// the parent runs in the child.
    pub fn spawn(&self) -> Result<Pid, Errno> {
        let parent = nix::unistd::getpid();
        let old = signals::block_all();
        // SAFETY: the supervisors are single-threaded (module documentation),
        // so the child may run any code between fork and exec.
        let res = unsafe { fork() };
        match res {
            Ok(ForkResult::Child) => self.child(parent),
            Ok(ForkResult::Parent { child }) => {
                if self.process_group {
                    // The child does the same; whichever comes second fails
                    // harmlessly (EACCES once it has exec'd).
                    let _ = nix::unistd::setpgid(child, child);
                }
                signals::restore_mask(&old);
                Ok(child)
            }
            Err(e) => {
                signals::restore_mask(&old);
                Err(e)
            }
        }
    }

    fn child(&self, parent: Pid) -> ! {
        signals::reset_for_child();
        if self.process_group {
            if let Err(e) = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0)) {
                self.die(format_args!("unable to make a process group"), e);
            }
            signals::default_action(Signal::SIGTSTP);
        }
        if let Some(sig) = self.parent_death {
            let _ = nix::sys::prctl::set_pdeathsig(sig);
            // The parent may have died before the prctl: then nobody will send it.
            if nix::unistd::getppid() != parent {
                exit_now();
            }
        }
        for &(from, to) in &self.fds {
            if let Err(e) = crate::move_fd(from, to) {
                self.die(format_args!("unable to move descriptor {from} to {to}"), e);
            }
        }
        if let Some(dir) = &self.dir {
            if let Err(e) = nix::unistd::chdir(dir) {
                self.die(format_args!("unable to chdir to {}", dir.display()), e);
            }
        }
        for (k, v) in &self.env {
            std::env::set_var(k, v);
        }
        for k in &self.own_pid_env {
            std::env::set_var(k, nix::unistd::getpid().to_string());
        }
        if std::env::var_os("LISTEN_FDS").is_some() {
            std::env::set_var("LISTEN_PID", nix::unistd::getpid().to_string());
        }
        signals::unblock_all();
        let err = exec_errno(self.argv);
        let prog = self
            .argv
            .first()
            .map(|p| p.to_string_lossy())
            .unwrap_or_default();
        self.die(format_args!("unable to run {prog}"), err)
    }

    fn die(&self, what: std::fmt::Arguments, err: Errno) -> ! {
        crate::message_line(self.tool, format_args!("fatal: {what}: {}", strerror(err)));
        exit_now()
    }
}

/// In the forked child: exit 111 without running the parent's exit handlers
/// or flushing its buffers.
fn exit_now() -> ! {
    // SAFETY: _exit(2) is async-signal-safe and touches no memory of ours.
    unsafe { libc::_exit(EXIT_TEMPORARY) }
}

/// Every child that has ended, reaped without blocking (EINTR retried).
pub fn reap() -> Vec<(Pid, WaitStatus)> {
    let mut out = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => break,
            Ok(st) => {
                if let Some(pid) = st.pid() {
                    out.push((pid, st));
                }
            }
            Err(Errno::EINTR) => continue,
            Err(_) => break, // ECHILD: none left
        }
    }
    out
}

/// How a child ended, as a shell sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Killed(Signal),
}

impl Ended {
    pub fn from_status(st: &WaitStatus) -> Option<Ended> {
        match *st {
            WaitStatus::Exited(_, code) => Some(Ended::Exited(code)),
            WaitStatus::Signaled(_, sig, _) => Some(Ended::Killed(sig)),
            _ => None,
        }
    }

    pub fn clean(self) -> bool {
        self == Ended::Exited(0)
    }

    /// The status a shell would report: the code, or 128 + the signal number.
    pub fn shell_status(self) -> i32 {
        match self {
            Ended::Exited(c) => c,
            Ended::Killed(s) => 128 + s as i32,
        }
    }
}

impl std::fmt::Display for Ended {
    /// `exited 1`, `was killed by SIGKILL`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ended::Exited(c) => write!(f, "exited {c}"),
            Ended::Killed(s) => write!(f, "was killed by {}", s.as_str()),
        }
    }
}

/// `0.02s`, `3.5s`, `2m3s`: a duration as the log lines write it.
pub fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{:.2}s", s)
    } else if s < 120.0 {
        format!("{:.1}s", s)
    } else {
        format!("{}m{}s", d.as_secs() / 60, d.as_secs() % 60)
    }
}

/// Send `sig` to `pid`, ignoring ESRCH (it may have just ended).
pub fn signal(pid: Pid, sig: Signal) {
    let _ = nix::sys::signal::kill(pid, sig);
}

/// Send `sig` to the process group `pgid`, ignoring ESRCH (it may be empty).
pub fn signal_group(pgid: Pid, sig: Signal) {
    let _ = nix::sys::signal::killpg(pgid, sig);
}
