//! What forkpool starts, it ends: every worker leads a process group of its
//! own (`unixtool::child::Spawn::process_group`), and a *guard* process, forked
//! once, knows every such group and KILLs them all when forkpool dies, kill -9
//! included: each group once its worker is gone, at the latest after the
//! drain deadline (`-k`); the workers themselves got their stop signal from
//! the kernel (their parent-death signal), so they finish what they hold.
//! See "What forkpool starts, it ends" in README.md.
//!
//! The guard learns the groups over a pipe: forkpool writes a worker's pid
//! (= its group) when it starts it and the negated pid when the group is gone
//! (the leader reaped, what was left of the group killed); a guard started
//! again finds every group there in the pipe when it is forked. The write end is
//! close-on-exec (no worker holds it); an in-place upgrade hands it to the
//! next image (state.rs's `guard` record), so one guard serves every image.
//! The guard reads end of file when forkpool's copy of the write end closes
//! (forkpool died), then waits until its parent is gone (SIGUSR1 by
//! PR_SET_PDEATHSIG ends the wait): then it sends CONT to every group it
//! knows (a held worker could not act on its stop signal), KILLs each group
//! whose worker is gone, the rest when `-k` has passed, and exits. The guard leads a process group of its own, so a KILL
//! to the chain's group (a test harness, a terminal's job control) does not
//! take it with the chain.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{fork, getpid, getppid, ForkResult, Pid};
use unixtool::child::signal_group;
use unixtool::signals;

use crate::tool::TOOL;

/// forkpool's side of the guard.
pub struct Guard {
    /// The write end of the pipe; None once the guard is gone.
    write: Option<OwnedFd>,
    /// The guard's pid (forkpool's child: its end is reaped, then a new
    /// guard is started, workers.rs).
    pid: Pid,
}

extern "C" fn on_parent_death(_: libc::c_int) {}

impl Guard {
    /// Fork the guard; `drain`: how long the workers of a dead forkpool may
    /// take to finish (-k); `groups`: the workers' groups there already (a
    /// guard started again after its predecessor was killed). They are in
    /// the pipe before the fork: a forkpool killed right after the fork
    /// leaves a guard that knows them all (the test that found it: a
    /// forkpool killed -9 just after it started a new guard left every
    /// helper alive, that guard having read no group).
    pub fn start(drain: Duration, groups: &[Pid]) -> Result<Guard, Errno> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut early = Guard {
            write: Some(write),
            pid: Pid::from_raw(0),
        };
        for &g in groups {
            early.watch(g);
        }
        let Some(write) = early.write.take() else {
            return Err(Errno::EPIPE);
        };
        let parent = getpid();
        let old = signals::block_all();
        // SAFETY: forkpool is single-threaded, so the child may run any code
        // (it never returns from `guard`).
        let res = unsafe { fork() };
        match res {
            Ok(ForkResult::Child) => {
                drop(write);
                guard(read.as_raw_fd(), parent, drain)
            }
            Ok(ForkResult::Parent { child }) => {
                // As in the child: the group exists before anyone signals it.
                let _ = nix::unistd::setpgid(child, child);
                signals::restore_mask(&old);
                Ok(Guard {
                    write: Some(write),
                    pid: child,
                })
            }
            Err(e) => {
                signals::restore_mask(&old);
                Err(e)
            }
        }
    }

    /// The write end, to hand over across an in-place upgrade (USR2): the
    /// guard then sees no end of file and keeps watching for the new image.
    pub fn fd(&self) -> Option<RawFd> {
        self.write.as_ref().map(|w| w.as_raw_fd())
    }

    /// The guard the previous image started (its write end, kept across
    /// exec, and its pid).
    pub fn adopt(write: OwnedFd, pid: Pid) -> Guard {
        Guard {
            write: Some(write),
            pid,
        }
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// A worker's group to KILL should forkpool die.
    pub fn watch(&mut self, pgid: Pid) {
        self.send(pgid.as_raw());
    }

    /// The group is gone (its leader reaped, the rest killed): forget it.
    pub fn forget(&mut self, pgid: Pid) {
        self.send(-pgid.as_raw());
    }

    fn send(&mut self, n: i32) {
        let Some(w) = &self.write else { return };
        // 4 bytes: one atomic write to a pipe.
        if let Err(e) = nix::unistd::write(w, &n.to_ne_bytes()) {
            TOOL.warn(format_args!(
                "the guard is gone ({}): helpers of the workers may outlive a killed forkpool",
                unixtool::strerror(e)
            ));
            self.write = None;
        }
    }
}

/// The guard process: read groups until forkpool is gone, then end them all.
fn guard(read: RawFd, parent: Pid, drain: Duration) -> ! {
    signals::reset_for_child();
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let act = SigAction::new(
        SigHandler::Handler(on_parent_death),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing (it only ends the sigsuspend below).
    let _ = unsafe { sigaction(Signal::SIGUSR1, &act) };
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    for sig in [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGTSTP,
    ] {
        // SAFETY: SIG_IGN installs no handler.
        let _ = unsafe { sigaction(sig, &ignore) };
    }
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGUSR1);
    close_all_but(read);
    // The parent-death signal stays blocked but in sigsuspend: none is lost
    // between a look at the parent and the wait.
    let mut usr1 = SigSet::empty();
    usr1.add(Signal::SIGUSR1);
    let _ = usr1.thread_set_mask();
    let groups = read_groups(read);
    // End of file: forkpool is gone, or exec'd itself (same pid, still our
    // parent): then wait for its death.
    while getppid() == parent {
        SigSet::empty().suspend().ok();
    }
    end_groups(groups, drain);
    // SAFETY: _exit(2) ends the forked guard without running forkpool's exit code.
    unsafe { libc::_exit(0) }
}

/// forkpool is dead and each worker got its stop signal from the kernel: CONT
/// to every group (a held worker acts on it), then KILL to each group whose
/// worker is gone (its helpers go with it), to the others once `drain` has
/// passed.
fn end_groups(mut groups: Vec<i32>, drain: Duration) {
    let deadline = Instant::now() + drain;
    for &g in &groups {
        signal_group(Pid::from_raw(g), Signal::SIGCONT);
    }
    loop {
        groups.retain(|&g| {
            let running = leader_running(g);
            if !running {
                signal_group(Pid::from_raw(g), Signal::SIGKILL);
            }
            running
        });
        if groups.is_empty() || Instant::now() >= deadline {
            break;
        }
        // (Not our children: nothing to wait on; a look every 20 ms.)
        std::thread::sleep(Duration::from_millis(20).min(deadline - Instant::now()));
    }
    for g in groups {
        signal_group(Pid::from_raw(g), Signal::SIGKILL);
    }
}

/// Whether the worker that leads group `g` still runs (not exited: a zombie
/// waiting for its new parent to reap it counts as gone). Its pid cannot be
/// reused while its group has members.
fn leader_running(g: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{g}/stat")) {
        // the state is the field after the command's closing parenthesis
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))),
        Err(_) => false,
    }
}

/// The groups forkpool announces on `read`, until end of file.
fn read_groups(read: RawFd) -> Vec<i32> {
    let mut groups: Vec<i32> = Vec::new();
    let mut buf = [0u8; 4096];
    let mut have = 0usize;
    loop {
        match nix::unistd::read(read, &mut buf[have..]) {
            Ok(0) => return groups,
            Ok(n) => have += n,
            Err(Errno::EINTR) => continue,
            Err(_) => return groups,
        }
        let whole = have - have % 4;
        for c in buf[..whole].chunks_exact(4) {
            let v = i32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
            if v > 0 {
                groups.push(v);
            } else {
                groups.retain(|&g| g != -v);
            }
        }
        buf.copy_within(whole..have, 0);
        have -= whole;
    }
}

/// Close every descriptor but `keep` and stderr: the guard must not hold the
/// listening socket (fd 0), nor any pipe of forkpool's.
fn close_all_but(keep: RawFd) {
    let fds: Vec<RawFd> = match std::fs::read_dir("/proc/self/fd") {
        Ok(d) => d
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
        Err(_) => (0..1024).collect(),
    };
    for fd in fds {
        if fd != keep && fd != 2 {
            let _ = nix::unistd::close(fd);
        }
    }
}
