//! The hub: the only owner of the pool's state and the only `impl Pool`.
//! It holds the rule (policy/), the worker processes (workers.rs), the
//! notification socket, the control FIFO (control.rs), the status file
//! (status.rs) and the upgrade's bookkeeping. Each event method below reads
//! an I/O leaf, hands what happened to the rule as an event, and carries out
//! the actions the rule returns, in order ([`Pool::apply`]). The hand-over
//! of an in-place upgrade leaves and enters here as one
//! [`Snapshot`] ([`Pool::snapshot`], [`Pool::adopt`]).

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use unixtool::child::{self, Ended};
use unixtool::readiness::{self, NotifySocket, ReadinessPipe};
use unixtool::reexec::{self, Upgrade};
use unixtool::supervise::{notice_owner, Child};

use crate::command::{instant_of, parse, wall_now, Command};
use crate::control::ControlFifo;
use crate::generation::{Reload, Stop};
use crate::handoff::Handoff;
use crate::messages::Said;
use crate::policy::{Action, Event, Policy};
use crate::settings::{Mode, Settings};
use crate::state::{HandedProcess, Snapshot};
use crate::status::{StatusFile, Summary, UpgradeLines};
use crate::tool::TOOL;
use crate::worker::{Worker, WorkerId, WorkerPhase};
use crate::workers::{Launch, Process, Processes};

/// While a park is under way: how often /proc is looked at.
const PARK_LOOK: Duration = Duration::from_millis(1);

/// --handoff: how soon connections held back for want of room (the
/// accepting workers' ends full) are looked at again.
const HELD_BACK_LOOK: Duration = Duration::from_millis(10);

pub struct Config {
    pub prog: Vec<OsString>,
    /// `-d`, `--notify`, `-a`, `-t`.
    pub ready: readiness::Options,
    pub pin: Option<PathBuf>,
    pub status: Option<PathBuf>,
    pub verbose: bool,
    /// `-C`: the control FIFO; `--prepare-timeout`.
    pub control: Option<PathBuf>,
    pub prepare_timeout: Duration,
    /// `--handoff`: kept connections handed to the accepting generation.
    pub handoff: bool,
    /// `--check-timeout`: the bound of an in-place upgrade's check.
    pub check_timeout: Duration,
}

pub struct Pool {
    cfg: Config,
    notify: Option<NotifySocket>,
    policy: Policy,
    procs: Processes,
    status: Option<StatusFile>,
    /// USR2, the in-place upgrade (upgrade.rs).
    upgrade: Upgrade,
    /// `--max-rss`: the next memory sample (rss.rs).
    next_sample: Option<Instant>,
    /// `-C`: the control FIFO, open (control.rs).
    control: Option<ControlFifo>,
    /// `--handoff`: the connections on their way (handoff.rs).
    handoff: Handoff,
}

/// Resolve the pinned symlink to the directory it names now.
pub fn resolve(pin: &Path) -> Result<PathBuf, String> {
    let dir = std::fs::canonicalize(pin).map_err(|e| unixtool::io_reason(&e))?;
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    Ok(dir)
}

/// The pin resolved for a new generation (HUP, prepare): None without `-p`.
fn resolve_pin(pin: &Option<PathBuf>) -> Result<Option<PathBuf>, String> {
    match pin {
        None => Ok(None),
        Some(p) => resolve(p)
            .map(Some)
            .map_err(|e| format!("unable to resolve {}: {e}", p.display())),
    }
}

// ---- building a pool: a fresh start, an upgrade's adoption -----------------

impl Pool {
    pub fn new(
        cfg: Config,
        settings: Settings,
        notify: Option<NotifySocket>,
        release: Option<PathBuf>,
        n: usize,
    ) -> Pool {
        let (policy, actions) = Policy::new(settings, release, n);
        let mut pool = Pool::of_parts(cfg, policy, notify, Processes::default(), fresh_upgrade());
        pool.apply(actions, Instant::now());
        pool
    }

    fn of_parts(
        cfg: Config,
        policy: Policy,
        notify: Option<NotifySocket>,
        procs: Processes,
        mut upgrade: Upgrade,
    ) -> Pool {
        let status = cfg.status.clone().map(StatusFile::new);
        upgrade.check_timeout = cfg.check_timeout;
        Pool {
            cfg,
            notify,
            policy,
            procs,
            status,
            upgrade,
            next_sample: None,
            control: None,
            handoff: Handoff::default(),
        }
    }

    /// The whole pool as an in-place upgrade hands it over, with `exe`, the
    /// program the next image runs. Err: something cannot be handed over.
    pub fn snapshot(&self, exe: &Path) -> Result<Snapshot, String> {
        let mut procs = Vec::new();
        for w in &self.policy.workers {
            let Some(p) = self.procs.get(w.id) else {
                if w.pid != 0 {
                    return Err(format!("worker {} has no process", w.pid));
                }
                continue;
            };
            procs.push(HandedProcess {
                id: p.id,
                pipe: p.child.pipe_fd(),
                hold: p.hold.as_ref().map(|h| h.as_raw_fd()),
                handoff: p.handoff.as_ref().map(|h| h.as_raw_fd()),
            });
        }
        Ok(Snapshot {
            policy: self.policy.clone(),
            procs,
            notify: self.notify.as_ref().map(|n| (n.fd(), n.name().to_string())),
            guard: self.procs.guard_handed(),
            control: self.control.as_ref().map(|c| c.fd()),
            upgrades: self.upgrade.count,
            upgrade_failures: self.upgrade.failures,
            exe: exe.to_path_buf(),
        })
    }

    /// The new image's pool from the old one's [`Snapshot`]: the workers
    /// (still its children) and every descriptor adopted. Err: a descriptor
    /// that cannot be adopted.
    pub fn adopt(cfg: Config, snapshot: Snapshot) -> Result<Pool, String> {
        let Snapshot {
            policy,
            procs: handed,
            notify,
            guard,
            control,
            upgrades,
            upgrade_failures,
            exe,
        } = snapshot;
        let notify = match notify {
            Some((fd, name)) => Some(NotifySocket::adopt(reexec::adopt_fd(fd)?, name)),
            None => None,
        };
        let mut procs = Processes::default();
        for p in handed {
            let HandedProcess {
                id,
                pipe,
                hold,
                handoff,
            } = p;
            let Some(w) = policy.worker(id) else {
                return Err(format!("no worker {} in the state", id.0));
            };
            let (pid, started) = (w.pid, w.started);
            // A ready worker's pipe carries messages now, not readiness.
            let seen = w.phase != WorkerPhase::Starting;
            let pipe = match pipe {
                Some(fd) => Some(ReadinessPipe::adopt(reexec::adopt_fd(fd)?, seen)),
                None => None,
            };
            let hold = hold.map(reexec::adopt_fd).transpose()?;
            let handoff = handoff.map(reexec::adopt_fd).transpose()?;
            let child = Child::adopt(nix::unistd::Pid::from_raw(pid), started, pipe);
            procs.list.push(Process {
                id,
                child,
                hold,
                handoff,
            });
        }
        if let Some((fd, pid)) = guard {
            procs.adopt_guard(reexec::adopt_fd(fd)?, nix::unistd::Pid::from_raw(pid));
        }
        let control = control
            .map(|fd| reexec::adopt_fd(fd).map(ControlFifo::adopt))
            .transpose()?;
        let mut up = fresh_upgrade();
        up.adopted(upgrades, upgrade_failures, exe);
        let mut pool = Pool::of_parts(cfg, policy, notify, procs, up);
        pool.control = control;
        Ok(pool)
    }
}

/// `--handoff`: whether `w` accepts (ready, released, not retired): a
/// taker of handed-over connections if of the newest such generation.
fn accepts(w: &Worker) -> bool {
    w.phase == WorkerPhase::Ready && !w.held && w.retired.is_none()
}

/// A fresh start's upgrade bookkeeping.
pub fn fresh_upgrade() -> Upgrade {
    Upgrade::new(TOOL.name)
}

// ---- the one place events go in and actions are carried out ---------------

impl Pool {
    /// Hand `event` to the rule; carry out what it says.
    fn handle(&mut self, now: Instant, event: Event) {
        let actions = self.policy.handle(now, event);
        self.apply(actions, now);
    }

    /// Carry out the policy's actions, in order.
    fn apply(&mut self, actions: Vec<Action>, now: Instant) {
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
                        cutover: self.policy.settings.mode == Mode::Cutover,
                        watchdog: self.policy.settings.life.watchdog,
                        handoff: self.cfg.handoff,
                        stop_signal: self.policy.settings.stop_signal,
                        drain: self.policy.settings.drain,
                    };
                    // A reload given up by an earlier action: start nothing of it.
                    let event = if generation.id != self.policy.target.id {
                        Event::StartFailed {
                            worker,
                            reason: "its reload was given up",
                        }
                    } else {
                        match self.procs.start(&how, worker, slot, &generation, hold) {
                            Ok(pid) => Event::Started {
                                worker,
                                pid: pid.as_raw(),
                            },
                            Err(e) => Event::StartFailed {
                                worker,
                                reason: unixtool::strerror(e),
                            },
                        }
                    };
                    // The time the fork returned, not the turn's: one fork
                    // took 12 s in the kernel (BENCHMARKS.md, 2026-12-07).
                    let now = match event {
                        Event::Started { .. } => Instant::now(),
                        _ => now,
                    };
                    self.handle(now, event);
                }
                Action::Retire {
                    worker,
                    signal,
                    cont,
                } => {
                    if cont {
                        // A stopped group (held or parked): the stop signal
                        // to every process of it before the CONT, so each
                        // wakes with it pending and acts on it before it runs
                        // on; a master's worker woken by the CONT alone
                        // would accept again until its master told it
                        // (conventions.md, Signals).
                        self.procs.signal_group(worker, signal);
                        self.procs.signal_group(worker, Signal::SIGCONT);
                    } else {
                        self.procs.signal(worker, signal);
                    }
                }
                Action::Hold { worker } => self.procs.signal_group(worker, Signal::SIGSTOP),
                Action::Park { worker } => self.procs.signal_group(worker, Signal::SIGTSTP),
                Action::Release { workers, held, .. } => {
                    // --handoff: what the older workers handed over goes to
                    // the released ones before they run (the rule counts
                    // them as accepting already): each one passed to a
                    // running worker woke it, and it took the CPU from
                    // forkpool before the next was passed (issue 30).
                    self.hand_over(now);
                    self.procs.release(&workers, &held)
                }
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
}

// ---- the main loop's turn, in order (main.rs) ------------------------------

impl Pool {
    /// The rule's own turn: start what is missing, retire what is outgoing.
    pub fn step(&mut self, now: Instant) {
        self.handle(now, Event::Step);
    }

    /// Replace the status file when the state changed.
    pub fn write_status(&mut self) {
        if let Some(f) = self.status.as_mut() {
            f.upgrade = UpgradeLines::of(&self.upgrade);
            f.write(&self.policy);
        }
    }

    /// What forkpool's own supervisor is told (upstream.rs).
    pub fn summary(&self) -> Summary {
        Summary::of(&self.policy)
    }

    /// Whether a stop is complete: every worker is gone.
    pub fn finished(&self) -> bool {
        self.policy.finished()
    }

    /// Descriptors to poll: the notification socket, the workers' pipes,
    /// the control FIFO.
    pub fn poll_fds(&self) -> Vec<RawFd> {
        let mut fds: Vec<RawFd> = self.notify.iter().map(|n| n.fd()).collect();
        fds.extend(self.procs.list.iter().filter_map(|p| p.child.pipe_fd()));
        fds.extend(self.control.as_ref().map(|c| c.fd()));
        fds.extend(reexec::check_wait(&self.upgrade).0);
        // --handoff: not during a cutover's switch, when nothing could be
        // passed on yet: each connection an old worker hands over would wake
        // forkpool and take a turn of the CPU the other old workers need to
        // see their stop signal. What they send waits on forkpool's ends;
        // the first turn after the release takes it in (hand_over runs every
        // turn), as does the reaping of a worker that ends meanwhile.
        // Nor while some is held back for want of room: the ends stay
        // readable; a look again in HELD_BACK_LOOK instead (next_deadline).
        if !self.switching() && !self.handoff.held_back {
            fds.extend(
                self.procs
                    .list
                    .iter()
                    .filter_map(|p| p.handoff.as_ref())
                    .map(|h| h.as_raw_fd()),
            );
        }
        fds
    }

    /// `--handoff`: no worker accepts and one will (a cutover's switch under
    /// way; not while the pool stops).
    fn switching(&self) -> bool {
        self.policy.stop == Stop::No && !self.policy.workers.iter().any(accepts)
    }

    /// The next moment something is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        unixtool::supervise::earliest([
            self.policy.next_deadline(),
            self.next_sample,
            reexec::check_wait(&self.upgrade).1,
            self.status.as_ref().and_then(|s| s.next_heartbeat()),
            self.handoff.next_deadline(),
            // --handoff: connections held back for want of room.
            self.handoff
                .held_back
                .then(|| Instant::now() + HELD_BACK_LOOK),
            // A park under way: /proc is looked at again in a millisecond.
            self.policy
                .verify
                .parking
                .as_ref()
                .map(|_| Instant::now() + PARK_LOOK),
        ])
    }

    /// What the workers said (readiness pipes and `NOTIFY_SOCKET`): their
    /// readiness with the time (readiness and KILL deadlines), then what each
    /// says after READY: a ping, `recycle`, `stopping` on the pipe;
    /// `WATCHDOG=1`, `RECYCLE=1`, `STOPPING=1` as datagrams.
    pub fn hear_workers(&mut self, now: Instant) {
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
        self.handle(now, Event::Time { ready: &ready });
        for (id, what) in said {
            let event = match what {
                Said::Ping => Event::Ping(id),
                Said::Recycle => Event::AskedRecycle(id),
                Said::Stopping => Event::StoppedAccepting(id),
                Said::Parked => Event::Parked(id),
            };
            self.handle(now, event);
        }
    }

    /// A park under way (`--confirm-timeout`): the parked workers whose whole
    /// group is stopped now (TSTP's default action, or the STOP after the
    /// bound), one look at /proc a turn.
    pub fn watch_park(&mut self, now: Instant) {
        let Some(p) = &self.policy.verify.parking else {
            return;
        };
        for id in self.procs.stopped_groups(&p.waiting) {
            self.handle(now, Event::GroupStopped(id));
        }
    }

    /// The lifecycle's turn: ages and watchdog deadlines, then (`--max-rss`,
    /// once a second) every worker's Pss.
    pub fn lifecycle(&mut self, now: Instant) {
        self.handle(now, Event::LifeTick);
        if self.policy.settings.life.max_rss_kib.is_none() {
            return;
        }
        let due = *self.next_sample.get_or_insert(now);
        if now < due {
            return;
        }
        self.next_sample = Some(now + Duration::from_secs(1));
        let ids: Vec<_> = self
            .procs
            .list
            .iter()
            .map(|p| (p.id, p.child.pid))
            .collect();
        for (id, pid) in ids {
            if let Some(kib) = crate::rss::pss_kib(pid) {
                let event = Event::Memory {
                    worker: id,
                    pss_kib: kib,
                };
                self.handle(now, event);
            }
        }
    }

    /// A signal, in order of arrival.
    pub fn signal(&mut self, sig: Signal, now: Instant) {
        let stop_signal = self.policy.settings.stop_signal;
        let pin = self.cfg.pin.clone();
        let mut resolve = || resolve_pin(&pin);
        let event = match sig {
            Signal::SIGCHLD => return,
            Signal::SIGHUP => Event::Hup {
                resolve: &mut resolve,
            },
            Signal::SIGTERM | Signal::SIGINT => Event::Stop {
                how: Stop::Graceful,
                signal: stop_signal,
            },
            Signal::SIGQUIT => Event::Stop {
                how: Stop::Fast,
                signal: Signal::SIGQUIT,
            },
            Signal::SIGTTIN => Event::AddSlot,
            Signal::SIGTTOU => Event::RemoveSlot,
            // USR2: the in-place upgrade, after this turn's signals (upgrade.rs).
            Signal::SIGUSR2 => {
                self.upgrade.asked = true;
                return;
            }
            other => {
                for p in &self.procs.list {
                    child::signal(p.child.pid, other);
                }
                return;
            }
        };
        self.handle(now, event);
    }

    /// `-C`: create and open the FIFO at a fresh start (or die, 111; an
    /// upgraded image has the previous one's descriptor and opens nothing);
    /// the policy learns its name and the prepare deadline.
    pub fn open_control(&mut self) {
        let Some(path) = self.cfg.control.clone() else {
            return;
        };
        if self.control.is_none() {
            let fifo = ControlFifo::open(&path).unwrap_or_else(|why| {
                TOOL.fatal(
                    unixtool::EXIT_TEMPORARY,
                    format_args!("unable to open control FIFO {}: {why}", path.display()),
                )
            });
            self.control = Some(fifo);
        }
        self.policy.two_phase.control = Some(path);
        self.policy.two_phase.timeout = self.cfg.prepare_timeout;
    }

    /// Read and carry out the commands written to the FIFO, in order (each
    /// at the time it is read).
    pub fn read_control(&mut self) {
        let Some(c) = self.control.as_mut() else {
            return;
        };
        let pin = self.cfg.pin.clone();
        for line in c.lines() {
            // The two clocks read together: `now` is the turn's, taken before
            // the workers' messages, the signals and this read, so a pool
            // busy (or preempted) meanwhile would map the commit's wall-clock
            // instant that much too early and switch before the others.
            let (now, wall) = (Instant::now(), wall_now());
            let mut resolve = || resolve_pin(&pin);
            let event = match line.and_then(|l| parse(&l)) {
                Ok(None) => continue,
                Err(why) => Event::BadCommand(why),
                Ok(Some(Command::Prepare)) => Event::Prepare {
                    wall,
                    resolve: &mut resolve,
                },
                Ok(Some(Command::Commit { at })) => Event::Commit {
                    wall,
                    at: at.map(|t| (instant_of(t, now, wall), t)),
                },
                Ok(Some(Command::Abort)) => Event::Abort { wall },
                Ok(Some(Command::Confirm)) => Event::Confirm { wall },
                Ok(Some(Command::Revert)) => Event::Revert { wall },
            };
            self.handle(now, event);
        }
    }

    /// Reap every ended child; account for the workers among them.
    pub fn reap(&mut self, now: Instant) {
        for (pid, status) in child::reap() {
            let Some(id) = self.procs.by_pid(pid).map(|p| p.id) else {
                // The guard (then a new one), or the upgrade's check program.
                let how = Ended::from_status(&status).map(|e| e.to_string());
                let drain = self.policy.settings.drain;
                let how = how.as_deref().unwrap_or("ended");
                if !self.procs.guard_ended(pid, how, drain) {
                    if let Some(c) = self.upgrade.check.as_mut() {
                        c.reaped(pid, status);
                    }
                }
                continue;
            };
            let Some(ended) = Ended::from_status(&status) else {
                continue;
            };
            // What it handed over before it ended is taken in before its
            // end closes (--handoff); what there is no room for yet keeps
            // the end open until it is.
            let end = (self.procs.list.iter_mut())
                .find(|p| p.id == id)
                .and_then(|p| p.handoff.take());
            if let Some(end) = end {
                let slot = self.policy.worker(id).map_or(0, |w| w.slot);
                self.handoff.begin_round();
                self.handoff.take_in_last(end, slot, now);
            }
            // Gone first: no signal of the actions below reaches its pid.
            self.procs.remove(id);
            self.handle(
                now,
                Event::Ended {
                    worker: id,
                    how: ended,
                },
            );
        }
    }

    /// `--handoff`: take in what the workers sent, pass it on to the ready
    /// workers of the accepting generation that are released and not
    /// retired, close what waited too long (handoff.rs).
    pub fn hand_over(&mut self, now: Instant) {
        if !self.cfg.handoff {
            return;
        }
        let (passed, expired) = (self.handoff.passed, self.handoff.expired);
        // Rounds: what forkpool has no room for waits on the ends; it is
        // taken in as what it holds goes on (handoff.rs, room).
        loop {
            let before = self.handoff.passed;
            self.hand_over_round(now);
            if !self.handoff.held_back || self.handoff.passed == before {
                break;
            }
        }
        // Not only with -v: connections closed for want of a descriptor
        // (taken in here or from a worker's end as it was reaped) say the
        // limit is too low for the pool's clients.
        let h = &mut self.handoff;
        if h.lost > h.lost_told {
            TOOL.warn(format_args!(
                "closed {} handed-over connections: no descriptor left for them (limit {}); raise forkpool's descriptor limit",
                h.lost - h.lost_told,
                unixtool::nofile_soft().map_or("unknown".to_string(), |n| n.to_string())
            ));
            h.lost_told = h.lost;
        }
        if self.cfg.verbose && self.handoff.expired > expired {
            TOOL.info(format_args!(
                "closed {} handed-over connections no worker took within {}ms",
                self.handoff.expired - expired,
                crate::handoff::BOUND.as_millis()
            ));
        }
        if self.cfg.verbose && self.handoff.passed > passed {
            let newest = self
                .policy
                .workers
                .iter()
                .filter(|w| accepts(w))
                .map(|w| w.generation)
                .max();
            TOOL.info(format_args!(
                "handed {} connections to generation {}",
                self.handoff.passed - passed,
                newest.unwrap_or(0)
            ));
        }
    }

    /// One round of hand_over: take in (as far as there is room), pass on.
    fn hand_over_round(&mut self, now: Instant) {
        self.handoff.begin_round();
        self.handoff.take_in_orphans(now);
        for p in &mut self.procs.list {
            let slot = self.policy.worker(p.id).map_or(0, |w| w.slot);
            let open = p
                .handoff
                .as_ref()
                .map(|h| self.handoff.take_in(h.as_fd(), slot, now));
            if open == Some(false) {
                p.handoff = None;
            }
        }
        // Those that accept; of them, the newest generation's (in a
        // cutover, none until the release).
        let workers = &self.policy.workers;
        let newest = workers
            .iter()
            .filter(|w| accepts(w))
            .map(|w| w.generation)
            .max();
        let takers: Vec<_> = workers
            .iter()
            .filter(|w| accepts(w))
            .filter(|w| Some(w.generation) == newest)
            .filter_map(|w| Some((w.slot, self.procs.get(w.id)?.handoff.as_ref()?.as_fd())))
            .collect();
        let switching = self.switching();
        self.handoff.pass_on(&takers, now, switching);
    }

    /// After the signals of one turn: whether an upgrade is under way
    /// (asked, its check running, or passed and waiting): upgrade.rs.
    pub fn upgrade_active(&self) -> bool {
        let u = &self.upgrade;
        u.asked || u.check.is_some() || u.passed
    }

    /// Where the pool stands for the upgrade: stopping (no upgrade),
    /// reloading or a prepare open (it waits for the end, ok or failed,
    /// committed, aborted or expired), or free.
    pub fn upgrade_busy(&self) -> reexec::Busy {
        if self.policy.stop != Stop::No {
            reexec::Busy::Stopping
        } else if matches!(self.policy.reload, Reload::Running { .. })
            || self.policy.two_phase.open()
        {
            reexec::Busy::Wait
        } else {
            reexec::Busy::No
        }
    }

    /// The upgrade's bookkeeping, for unixtool::reexec::upgrade_now.
    pub fn upgrade_mut(&mut self) -> &mut Upgrade {
        &mut self.upgrade
    }

    /// The newest generation (forkpool's supervisor is told about it).
    pub fn newest(&self) -> u64 {
        self.policy.newest
    }

    /// The workers the rule knows of.
    pub fn worker_count(&self) -> usize {
        self.policy.workers.len()
    }

    /// This image's build id (`version=`).
    pub fn version(&self) -> &str {
        &self.upgrade.version
    }

    pub fn verbose(&self) -> bool {
        self.cfg.verbose
    }
}
