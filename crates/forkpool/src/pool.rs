//! The pool: the policy (policy.rs, the rule) applied to real processes
//! (workers.rs). Events (events.rs) go in to the policy; its actions come out
//! here and are carried out in order; the status (status.rs) is written from
//! the policy's state.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sys::signal::Signal;
use unixtool::readiness::{self, NotifySocket};

use crate::policy::{Action, Policy, Settings};
use crate::status::{StatusFile, Summary};
use crate::workers::{Launch, Processes};
use crate::TOOL;

pub struct Config {
    pub prog: Vec<OsString>,
    /// `-d`, `--notify`, `-a`, `-t`.
    pub ready: readiness::Options,
    pub pin: Option<PathBuf>,
    pub status: Option<PathBuf>,
    pub verbose: bool,
    /// `-C`: the control FIFO; `--prepare-timeout`.
    pub control: Option<PathBuf>,
    pub prepare_timeout: std::time::Duration,
}

pub struct Pool {
    pub(crate) cfg: Config,
    pub(crate) notify: Option<NotifySocket>,
    pub(crate) policy: Policy,
    pub(crate) procs: Processes,
    status: Option<StatusFile>,
    /// USR2, the in-place upgrade (upgrade.rs).
    pub(crate) upgrade: crate::upgrade::Upgrade,
    /// `--max-rss`: the next memory sample (rss.rs).
    pub(crate) next_sample: Option<Instant>,
    /// `-C`: the control FIFO, open (control.rs).
    pub(crate) control: Option<crate::control::ControlFifo>,
}

/// Resolve the pinned symlink to the directory it names now.
pub fn resolve(pin: &Path) -> Result<PathBuf, String> {
    let dir = std::fs::canonicalize(pin).map_err(|e| unixtool::io_reason(&e))?;
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    Ok(dir)
}

impl Pool {
    pub fn new(
        cfg: Config,
        settings: Settings,
        notify: Option<NotifySocket>,
        release: Option<PathBuf>,
        n: usize,
    ) -> Pool {
        let (policy, actions) = Policy::new(settings, release, n);
        let status = cfg.status.clone().map(StatusFile::new);
        let mut pool = Pool {
            cfg,
            notify,
            policy,
            procs: Processes::default(),
            status,
            upgrade: crate::upgrade::fresh(),
            next_sample: None,
            control: None,
        };
        pool.apply(actions, Instant::now());
        pool
    }

    /// The pool as an in-place upgrade hands it over (upgrade.rs).
    pub(crate) fn from_parts(
        cfg: Config,
        policy: Policy,
        notify: Option<NotifySocket>,
        procs: Processes,
        upgrade: crate::upgrade::Upgrade,
    ) -> Pool {
        let status = cfg.status.clone().map(StatusFile::new);
        Pool {
            cfg,
            notify,
            policy,
            procs,
            status,
            upgrade,
            next_sample: None,
            control: None,
        }
    }

    /// Carry out the policy's actions, in order.
    pub(crate) fn apply(&mut self, actions: Vec<Action>, now: Instant) {
        for action in actions {
            match action {
                Action::Start {
                    worker,
                    slot,
                    generation,
                    hold,
                } => {
                    let how = Launch {
                        prog: &self.cfg.prog,
                        ready: &self.cfg.ready,
                        notify: self.notify.as_ref(),
                        cutover: self.policy.settings.mode == crate::policy::Mode::Cutover,
                        watchdog: self.policy.settings.life.watchdog,
                        stop_signal: self.policy.settings.stop_signal,
                        drain: self.policy.settings.drain,
                    };
                    // A reload given up by an earlier action: start nothing of it.
                    let more = if generation.id != self.policy.target.id {
                        self.policy
                            .start_failed(worker, now, "its reload was given up")
                    } else {
                        match self.procs.start(&how, worker, slot, &generation, hold) {
                            Ok(pid) => self.policy.started(worker, pid.as_raw()),
                            Err(e) => self.policy.start_failed(worker, now, unixtool::strerror(e)),
                        }
                    };
                    self.apply(more, now);
                }
                Action::Retire {
                    worker,
                    signal,
                    cont,
                } => {
                    self.procs.signal(worker, signal);
                    if cont {
                        self.procs.signal_group(worker, Signal::SIGCONT);
                    }
                }
                Action::Hold { worker } => self.procs.signal_group(worker, Signal::SIGSTOP),
                Action::Release { workers, held, .. } => self.procs.release(&workers, &held),
                Action::Kill { worker } => self.procs.signal_group(worker, Signal::SIGKILL),
                Action::Info(msg) => {
                    if self.cfg.verbose {
                        TOOL.info(msg);
                    }
                }
                Action::Warn(msg) => TOOL.warn(msg),
            }
        }
        // After READY the pipe carries the worker's messages (pings,
        // `recycle`, `stopping`): listened to while the worker lives.
        for p in &mut self.procs.list {
            if self.policy.worker(p.id).is_none() {
                p.child.stop_listening();
            }
        }
    }

    /// Converge: start what is missing, retire what is outgoing.
    pub fn step(&mut self, now: Instant) {
        let actions = self.policy.step(now);
        self.apply(actions, now);
    }

    /// Whether a stop is complete: every worker is gone.
    pub fn finished(&self) -> bool {
        self.policy.finished()
    }

    pub fn summary(&self) -> Summary {
        Summary::of(&self.policy)
    }

    /// Replace the status file when the state changed.
    pub fn write_status(&mut self) {
        if let Some(f) = self.status.as_mut() {
            f.upgrade = crate::status::UpgradeLines::of(&self.upgrade);
            f.write(&self.policy);
        }
    }

    /// Descriptors to poll: the notification socket, the pipes of workers not ready yet.
    pub fn poll_fds(&self) -> Vec<i32> {
        let mut fds: Vec<i32> = self.notify.iter().map(|n| n.fd()).collect();
        fds.extend(self.procs.list.iter().filter_map(|p| p.child.pipe_fd()));
        fds
    }

    /// The next moment something is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        unixtool::supervise::earliest([self.policy.next_deadline(), self.next_sample])
    }
}
