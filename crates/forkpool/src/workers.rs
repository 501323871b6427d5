//! Worker processes: fork and exec of one worker (its environment, its
//! release directory, its readiness pipe, its hold descriptor), and the
//! signals the policy's actions send. The policy names workers by
//! [`WorkerId`]; this table knows their pids and descriptors.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use unixtool::child;
use unixtool::readiness::{self, NotifySocket};
use unixtool::supervise::Child;

use crate::generation::Generation;
use crate::groups::Guard;
use crate::tool::TOOL;
use crate::worker::WorkerId;

/// One worker process.
pub struct Process {
    pub id: WorkerId,
    pub child: Child,
    /// Cutover: the write end of the hold descriptor, until the release (or
    /// until the worker ends: one that is retired while held gets no EOF).
    pub hold: Option<OwnedFd>,
    /// `--handoff`: forkpool's end of the worker's socket pair (handoff.rs).
    pub handoff: Option<OwnedFd>,
}

/// Every worker process of the pool.
#[derive(Default)]
pub struct Processes {
    pub list: Vec<Process>,
    /// KILLs every worker's group should forkpool die (started with the
    /// first worker; None if it could not be).
    guard: Option<Guard>,
    guard_tried: bool,
}

impl Processes {
    /// The guard's write end and pid, for an in-place upgrade's hand-over.
    pub fn guard_handed(&self) -> Option<(RawFd, i32)> {
        let g = self.guard.as_ref()?;
        Some((g.fd()?, g.pid().as_raw()))
    }

    /// The guard the previous image started: no second one is forked.
    pub fn adopt_guard(&mut self, write: OwnedFd, pid: Pid) {
        self.guard = Some(Guard::adopt(write, pid));
        self.guard_tried = true;
    }

    /// A reaped child that is not a worker: if it was the guard (killed,
    /// kill -9 included), one warning line and a new guard, told every
    /// worker's group; true if it was.
    pub fn guard_ended(&mut self, pid: Pid, how: &str, drain: std::time::Duration) -> bool {
        if self.guard.as_ref().map(|g| g.pid()) != Some(pid) {
            return false;
        }
        TOOL.warn(format_args!(
            "the guard (pid {pid}) {how}: starting a new one"
        ));
        self.guard = None;
        self.guard_tried = false;
        self.start_guard(drain);
        true
    }
}

/// A pipe for the hold descriptor, both ends close-on-exec; the read end is
/// moved off `avoid` (the -d descriptor, which the worker gets for readiness).
fn hold_pipe(avoid: Option<RawFd>) -> Result<(OwnedFd, OwnedFd), Errno> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    Ok((moved_off(read, avoid)?, write))
}

/// `fd`, moved to another number if it has the number `avoid` (the -d
/// descriptor, which the worker gets for readiness).
fn moved_off(fd: OwnedFd, avoid: Option<RawFd>) -> Result<OwnedFd, Errno> {
    match avoid {
        Some(n) if n == fd.as_raw_fd() => {
            let m = nix::fcntl::fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(n + 1))?;
            // SAFETY: fcntl just returned this new descriptor, owned by no one else.
            Ok(unsafe { OwnedFd::from_raw_fd(m) })
        }
        _ => Ok(fd),
    }
}

/// How every worker is started.
pub struct Launch<'a> {
    pub prog: &'a [OsString],
    pub ready: &'a readiness::Options,
    pub notify: Option<&'a NotifySocket>,
    /// Cutover: every worker gets a hold descriptor.
    pub cutover: bool,
    /// `--watchdog`: WATCHDOG_USEC and WATCHDOG_PID in every worker.
    pub watchdog: Option<std::time::Duration>,
    /// `--handoff`: every worker gets a socket pair's end (handoff.rs).
    pub handoff: bool,
    /// The stop signal (`-s`): each worker's parent-death signal, so that a
    /// worker of a forkpool that died finishes what it holds (groups.rs).
    pub stop_signal: Signal,
    /// `-k`: how long the guard lets them, after forkpool's death.
    pub drain: std::time::Duration,
}

impl Processes {
    pub fn get(&self, id: WorkerId) -> Option<&Process> {
        self.list.iter().find(|p| p.id == id)
    }

    pub fn by_pid(&self, pid: Pid) -> Option<&Process> {
        self.list.iter().find(|p| p.child.pid == pid)
    }

    /// Fork and exec worker `id` of generation `gen` in `slot`. `hold`: its
    /// hold descriptor stays shut until the release.
    pub fn start(
        &mut self,
        how: &Launch,
        id: WorkerId,
        slot: usize,
        gen: &Generation,
        hold: bool,
    ) -> Result<Pid, Errno> {
        self.start_guard(how.drain);
        let mut spawn = child::Spawn::new(TOOL.name, how.prog);
        // forkpool dies: the worker gets its stop signal, the guard KILLs its
        // group once the worker is gone or -k has passed (groups.rs).
        // No guard: KILL, as nothing would end a worker that ignores it.
        spawn.parent_death = Some(match self.guard {
            Some(_) => how.stop_signal,
            None => Signal::SIGKILL,
        });
        // A group of its own: held, killed and cleaned up as one (groups.rs).
        spawn.process_group = true;
        spawn.env("FORKPOOL_WORKER", slot.to_string());
        spawn.env("FORKPOOL_GENERATION", gen.id.to_string());
        if let Some(r) = &gen.release {
            spawn.env("FORKPOOL_RELEASE", r.clone());
            spawn.dir = Some(r.clone());
        }
        if let Some(w) = how.watchdog {
            spawn.env("WATCHDOG_USEC", w.as_micros().to_string());
            spawn.own_pid_env.push("WATCHDOG_PID");
        }
        // Cutover: the hold descriptor, on the number the read end has here
        // (free in the worker too), never on the -d descriptor.
        let mut hold_ends = None;
        if how.cutover {
            let (read, write) = hold_pipe(how.ready.fd)?;
            let n = read.as_raw_fd();
            spawn.fds.push((n, n));
            spawn.env("FORKPOOL_HOLD_FD", n.to_string());
            hold_ends = Some((read, write));
        }
        // --handoff: the worker's end of its pair, passed as the hold is.
        let mut handoff = None;
        if how.handoff {
            let (ours, theirs) = unixtool::handoff::pair()?;
            let theirs = moved_off(theirs, how.ready.fd)?;
            let n = theirs.as_raw_fd();
            spawn.fds.push((n, n));
            spawn.env(unixtool::handoff::ENV, n.to_string());
            handoff = Some((ours, theirs));
        }
        let child = Child::spawn(spawn, how.ready, how.notify)?;
        // The worker's end closes here: the worker has its own copy.
        let handoff = handoff.map(|(ours, _theirs)| ours);
        let pid = child.pid;
        if let Some(g) = self.guard.as_mut() {
            g.watch(pid);
        }
        // A worker of a generation that accepts already is not held: EOF at once.
        let hold = hold_ends.map(|(_read, write)| write).filter(|_| hold);
        self.list.push(Process {
            id,
            child,
            hold,
            handoff,
        });
        Ok(pid)
    }

    /// The guard, once: a failure is a warning (workers still get the
    /// parent-death KILL; their helpers would not).
    fn start_guard(&mut self, drain: std::time::Duration) {
        if std::mem::replace(&mut self.guard_tried, true) {
            return;
        }
        let groups: Vec<Pid> = self.list.iter().map(|p| p.child.pid).collect();
        match Guard::start(drain, &groups) {
            Ok(g) => self.guard = Some(g),
            Err(e) => TOOL.warn(format_args!(
                "unable to start the guard: {}: helpers of the workers may outlive a killed forkpool",
                unixtool::strerror(e)
            )),
        }
    }

    /// `sig` to the worker itself (its group's leader): the stop signal and
    /// forwarded signals, which a pre-fork server passes on as it sees fit.
    pub fn signal(&self, id: WorkerId, sig: Signal) {
        if let Some(p) = self.get(id) {
            child::signal(p.child.pid, sig);
        }
    }

    /// `sig` to the worker's whole process group: STOP (hold), CONT
    /// (release, or a held worker's retire) and KILL.
    pub fn signal_group(&self, id: WorkerId, sig: Signal) {
        if let Some(p) = self.get(id) {
            child::signal_group(p.child.pid, sig);
        }
    }

    /// Of `ids`, the workers each of whose groups is wholly stopped (every
    /// process of it stopped or dead; none left: gone): one pass over /proc.
    pub fn stopped_groups(&self, ids: &[WorkerId]) -> Vec<WorkerId> {
        let groups: Vec<(WorkerId, i32)> = ids
            .iter()
            .filter_map(|&id| self.get(id).map(|p| (id, p.child.pid.as_raw())))
            .collect();
        let mut running = vec![false; groups.len()];
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                let name = e.file_name();
                let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
                    continue;
                };
                let Some((state, pgrp)) = proc_state_group(pid) else {
                    continue;
                };
                if matches!(state, 'T' | 't' | 'Z' | 'X') {
                    continue;
                }
                for (i, (_, pgid)) in groups.iter().enumerate() {
                    if *pgid == pgrp {
                        running[i] = true;
                    }
                }
            }
        } else {
            // No /proc: nothing can be seen; the park's bound decides.
            return Vec::new();
        }
        groups
            .iter()
            .zip(running)
            .filter(|(_, r)| !r)
            .map(|((id, _), _)| *id)
            .collect()
    }

    /// Cutover: a byte to and close each hold descriptor of `workers`, then
    /// SIGCONT to each of `held`.
    pub fn release(&mut self, workers: &[WorkerId], held: &[WorkerId]) {
        for p in self.list.iter_mut().filter(|p| workers.contains(&p.id)) {
            if let Some(h) = p.hold.take() {
                let _ = nix::unistd::write(&h, b"\n");
            }
        }
        for &id in held {
            self.signal_group(id, Signal::SIGCONT);
        }
    }

    /// Forget a worker that ended (its descriptors close) and KILL what is
    /// left of its process group: helpers it forked end with it.
    pub fn remove(&mut self, id: WorkerId) {
        let Some(i) = self.list.iter().position(|p| p.id == id) else {
            return;
        };
        let p = self.list.remove(i);
        child::signal_group(p.child.pid, Signal::SIGKILL);
        if let Some(g) = self.guard.as_mut() {
            g.forget(p.child.pid);
        }
    }
}

/// /proc/PID/stat's state letter and process group; None when gone.
fn proc_state_group(pid: i32) -> Option<(char, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (comm) S PPID PGRP ...": comm may hold spaces and parentheses
    let mut rest = s.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let _ppid = rest.next()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some((state, pgrp))
}
