//! What happens to the pool, handed to the policy: readiness notices (pipes
//! and `NOTIFY_SOCKET`) and the time, signals in order of arrival, children
//! that ended.

use std::time::Instant;

use nix::sys::signal::Signal;
use unixtool::child::{self, Ended};
use unixtool::supervise::notice_owner;

use crate::policy::{Stop, WorkerId};
use crate::pool::{resolve, Pool};
use crate::TOOL;

/// What a worker says after READY.
enum Said {
    /// A watchdog ping: an empty line, `WATCHDOG=1`.
    Ping,
    /// Recycle me: `recycle`, `RECYCLE=1`.
    Recycle,
    /// I stopped accepting: `stopping`, `STOPPING=1`.
    Stopping,
}

impl Said {
    /// A line on the `-d` pipe (other lines are ignored).
    fn line(l: &str) -> Option<Said> {
        match l.trim_end_matches('\r') {
            "" => Some(Said::Ping),
            "recycle" => Some(Said::Recycle),
            "stopping" => Some(Said::Stopping),
            _ => None,
        }
    }

    /// A line of a `NOTIFY_SOCKET` datagram.
    fn datagram(l: &str) -> Option<Said> {
        match l {
            "WATCHDOG=1" => Some(Said::Ping),
            "RECYCLE=1" => Some(Said::Recycle),
            "STOPPING=1" => Some(Said::Stopping),
            _ => None,
        }
    }
}

impl Pool {
    /// Readiness messages and timers, readiness deadlines, KILL deadlines;
    /// then what workers say after READY (lifecycle.rs): a ping, `recycle`,
    /// `stopping` on the pipe; `WATCHDOG=1`, `RECYCLE=1`, `STOPPING=1` as
    /// datagrams; then ages, watchdog deadlines and memory samples.
    pub fn check_readiness(&mut self, now: Instant) {
        if unixtool::signals::take_kernel_hups() > 0 {
            TOOL.warn("ignored a SIGHUP sent by the kernel (orphaned process group or terminal hangup): not a reload");
        }
        let mut ready: Vec<WorkerId> = Vec::new();
        let mut said: Vec<(WorkerId, Said)> = Vec::new();
        if let Some(n) = &self.notify {
            let pids: Vec<_> = self.procs.list.iter().map(|p| p.child.pid).collect();
            for notice in n.drain() {
                let Some(owner) = notice_owner(notice.pid, &pids) else {
                    continue;
                };
                let Some(p) = self.procs.by_pid(owner) else {
                    continue;
                };
                if notice.ready() {
                    ready.push(p.id);
                }
                said.extend(
                    notice
                        .lines
                        .iter()
                        .filter_map(|l| Said::datagram(l))
                        .map(|s| (p.id, s)),
                );
                if let (Some(st), true) = (notice.status(), self.cfg.verbose) {
                    if let Some(w) = self.policy.worker(p.id) {
                        TOOL.info(format_args!("{} status: {st}", w.name()));
                    }
                }
            }
        }
        for p in &mut self.procs.list {
            let m = p.child.messages();
            if m.ready {
                ready.push(p.id);
            }
            said.extend(
                m.lines
                    .iter()
                    .filter_map(|l| Said::line(l))
                    .map(|s| (p.id, s)),
            );
        }
        let actions = self.policy.tick(now, &ready);
        self.apply(actions, now);
        for (id, what) in said {
            let actions = match what {
                Said::Ping => self.policy.ping(id, now),
                Said::Recycle => self.policy.asked_recycle(id, now),
                Said::Stopping => self.policy.stopped_accepting(id, now),
            };
            self.apply(actions, now);
        }
        let actions = self.policy.life_tick(now);
        self.apply(actions, now);
        self.sample_memory(now);
    }

    /// A signal, in order of arrival.
    pub fn signal(&mut self, sig: Signal, now: Instant) {
        let stop_signal = self.policy.settings.stop_signal;
        let actions = match sig {
            Signal::SIGCHLD => Vec::new(),
            Signal::SIGHUP => {
                let pin = self.cfg.pin.clone();
                self.policy.hup(now, || match pin {
                    None => Ok(None),
                    Some(p) => resolve(&p)
                        .map(Some)
                        .map_err(|e| format!("unable to resolve {}: {e}", p.display())),
                })
            }
            Signal::SIGTERM | Signal::SIGINT => self.policy.stop(now, Stop::Graceful, stop_signal),
            Signal::SIGQUIT => self.policy.stop(now, Stop::Fast, Signal::SIGQUIT),
            Signal::SIGTTIN => self.policy.ttin(),
            Signal::SIGTTOU => self.policy.ttou(),
            // USR2: the in-place upgrade, after this turn's signals (upgrade.rs).
            Signal::SIGUSR2 => {
                self.upgrade.asked = true;
                Vec::new()
            }
            other => {
                for p in &self.procs.list {
                    child::signal(p.child.pid, other);
                }
                Vec::new()
            }
        };
        self.apply(actions, now);
    }

    /// Reap every ended child; account for the workers among them.
    pub fn reap(&mut self, now: Instant) {
        for (pid, status) in child::reap() {
            let Some(id) = self.procs.by_pid(pid).map(|p| p.id) else {
                continue;
            };
            let Some(ended) = Ended::from_status(&status) else {
                continue;
            };
            // Gone first: no signal of the actions below reaches its pid.
            self.procs.remove(id);
            let actions = self.policy.ended(id, ended, now);
            self.apply(actions, now);
        }
    }
}
