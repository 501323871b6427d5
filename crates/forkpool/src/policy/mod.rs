//! The reload/replace rule, as a pure function of the pool's state and the
//! time: no processes, no descriptors, no clock of its own. The hub
//! (pool.rs) tells it what happened as an [`Event`] through
//! [`Policy::handle`], the one way in and out: the event's method changes
//! the state (events.rs, lifecycle.rs, prepare.rs), the rule's steps run at
//! once when the event says so (else at the next turn's [`Event::Step`]),
//! and the [`Action`]s come back to be applied in order. The unit tests'
//! simulator (sim.rs) goes through the same `handle`.
//!
//! There is always a *target* generation (the one the pool wants in every
//! slot) and, once some generation has had all its workers ready, a *serving*
//! generation (the last one that did). The rule's steps (converge.rs), in
//! order:
//!
//! 0. the gates: an open prepare past its deadline aborts, one whose
//!    generation is wholly ready is prepared (prepare.rs); a pending
//!    verified switch past its deadline reverts (verify.rs);
//! 1. every slot without a live worker of the target generation gets one (at
//!    once, or after its back-off when the previous one failed);
//! 2. every live worker that is not of the target generation, or sits in a
//!    slot beyond N, is *outgoing*: (2a) retired at once if it is not ready;
//!    (2b) if it is ready, retired only when the pool keeps at least N ready
//!    workers without it (rolling), or when the target generation is wholly
//!    ready (all-at-once); (2c) a recycled worker goes once its replacement
//!    is ready;
//! 3. a target generation with every slot ready becomes the serving one
//!    (then the steps run once more: the old generation goes now);
//! 4. (cutover) see below.
//!
//! Lifecycle (policy/lifecycle.rs): a ready worker due for recycling (age,
//! memory, its own word) is *marked*; step 1 counts a marked worker as
//! missing from its slot (a second worker in a slot starts only within the
//! `--surge` bound), and step 2c retires the marked worker once a ready
//! worker of the target generation stands in its slot. The watchdog retires
//! a silent worker with ABRT; step 1 then fills its slot at once.
//!
//! A reload (HUP) only changes the target. A failed reload sets the target
//! back to the serving generation: the same rule then brings back whatever old
//! worker was already retired and retires the broken new ones, and ready
//! workers never drop below N on the way.
//!
//! Cutover adds one more thing, the *accepting* generation: a worker of a
//! newer generation is *held* from the moment it is ready (SIGSTOP, and the
//! hold descriptor it reads before its first accept), retired like the
//! all-at-once rule says, and:
//!
//! 4. once no worker older than the serving generation remains (they exited,
//!    or were killed at the drain deadline), the serving generation becomes
//!    the accepting one: every held worker of it is released at once.
//!
//! With `--confirm-timeout` (policy/verify.rs) step 3 *parks* the old
//! generation instead (stopped, warm, counted as gone for 4.) until
//! `confirm` retires it or `revert` (or the deadline) brings it back.
//!
//! The state is plain data. Its only clock values are `Instant`s (a start, a
//! KILL deadline, a back-off's end, a reload's or a switch's beginning); to
//! hand the state to another process (an in-place upgrade, state.rs) write
//! each as the offset `now - t` (or `t - now`) and rebuild it there from
//! that process's `now`. Workers are named by a [`WorkerId`] the policy
//! hands out, not by pid: the pid is learned after the fork
//! ([`Event::Started`]).
//!
//! A new event: a variant of [`Event`], its method beside its kin, and one
//! arm in [`Policy::handle`] saying whether the steps run at once. A new
//! rule: a step in converge.rs's list.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use unixtool::backoff::ONE_SECOND;
use unixtool::child::{secs, Ended};
use unixtool::signals::signal_name;
use unixtool::supervise::{earliest, KillDeadline, ReadinessTimes};

use crate::generation::{Generation, Reload, Stop};
use crate::lifecycle::{PoolLife, Recycle, WorkerLife};
use crate::reloads::ReloadCounts;
use crate::settings::{Mode, Settings};
use crate::two_phase::TwoPhase;
use crate::verify::Verify;
use crate::worker::{Slot, Why, Worker, WorkerId, WorkerPhase};

/// What the pool must do, in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Fork and exec a worker of `generation` in `slot`; then tell
    /// [`Event::Started`] or [`Event::StartFailed`]. `hold`: its hold
    /// descriptor stays shut (cutover, a generation that does not accept yet).
    Start {
        worker: WorkerId,
        slot: usize,
        generation: Generation,
        hold: bool,
    },
    /// Send `signal` (the stop signal; TERM/INT/QUIT at a pool stop) to the
    /// worker; if `cont` (its group was stopped: held or parked, it gets the
    /// stop, never the release) to its whole group, then SIGCONT.
    Retire {
        worker: WorkerId,
        signal: Signal,
        cont: bool,
    },
    /// Cutover: the worker just became ready and accepts nothing yet: SIGSTOP
    /// (its group). Also a parked worker that said `parked`, or one the
    /// park's bound passed.
    Hold { worker: WorkerId },
    /// `--confirm-timeout`, at the switch: the park signal (TSTP) to the
    /// worker's group; then tell [`Event::GroupStopped`] once every process
    /// of the group is seen stopped.
    Park { worker: WorkerId },
    /// Cutover: write a byte to and close the hold descriptor of each of
    /// `workers`, then SIGCONT each of `held`, in one go.
    Release {
        generation: u64,
        workers: Vec<WorkerId>,
        held: Vec<WorkerId>,
    },
    /// The drain deadline passed: SIGKILL.
    Kill { worker: WorkerId },
    /// A line for `-v`.
    Info(String),
    /// A warning line.
    Warn(String),
}

/// Resolves the pin for a new generation (HUP, prepare): called only when
/// the generation is really begun. `Err`: why it cannot be resolved.
pub type Resolve<'a> = dyn FnMut() -> Result<Option<PathBuf>, String> + 'a;

/// What happens to the pool, as the rule hears it.
pub enum Event<'a> {
    /// The rule's own turn, at the top of the main loop: the steps run.
    Step,
    /// The time passed: readiness by `-a`, readiness deadlines, the reload's
    /// deadline, KILL deadlines. `ready`: the workers that told their
    /// readiness since the last one (pipe or `READY=1`), each at most once.
    Time { ready: &'a [WorkerId] },
    /// The [`Action::Start`] of `worker` forked `pid`.
    Started { worker: WorkerId, pid: i32 },
    /// The [`Action::Start`] of `worker` failed (`reason`): again in a second.
    StartFailed { worker: WorkerId, reason: &'a str },
    /// `worker` ended (reaped).
    Ended { worker: WorkerId, how: Ended },
    /// HUP: a new generation, pinned to what `resolve` says.
    Hup { resolve: &'a mut Resolve<'a> },
    /// TERM/INT (`Graceful`, the stop signal) or QUIT (`Fast`, `signal`).
    Stop { how: Stop, signal: Signal },
    /// TTIN: one slot more.
    AddSlot,
    /// TTOU: one slot less (never below one).
    RemoveSlot,
    /// The lifecycle's turn: ages, the watchdog.
    LifeTick,
    /// A watchdog ping (an empty line on `-d`, `WATCHDOG=1`).
    Ping(WorkerId),
    /// `recycle` on `-d`, `RECYCLE=1`.
    AskedRecycle(WorkerId),
    /// `stopping` on `-d`, `STOPPING=1`.
    StoppedAccepting(WorkerId),
    /// `parked` on `-d`, `PARKED=1`: after the park signal, nothing accepted
    /// and nothing in hand.
    Parked(WorkerId),
    /// Every process of a parked worker's group was seen stopped.
    GroupStopped(WorkerId),
    /// One memory sample: `worker`'s Pss in KiB (`--max-rss`).
    Memory { worker: WorkerId, pss_kib: u64 },
    /// A line of the control FIFO that is not a command.
    BadCommand(String),
    /// `prepare`, read when the wall clock said `wall`.
    Prepare {
        wall: f64,
        resolve: &'a mut Resolve<'a>,
    },
    /// `commit [T]`: `at`, the instant T (monotonic and wall clock).
    Commit {
        wall: f64,
        at: Option<(Instant, f64)>,
    },
    /// `abort`.
    Abort { wall: f64 },
    /// `confirm`: the parked generation is retired (policy/verify.rs).
    Confirm { wall: f64 },
    /// `revert`: the parked generation serves again, the new one goes.
    Revert { wall: f64 },
}

/// After an event: whether the rule's steps run at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Then {
    Converge,
    /// At the next turn's [`Event::Step`].
    NextTurn,
}

/// The whole state of the pool's rule: plain data.
#[derive(Clone, Debug)]
pub struct Policy {
    pub settings: Settings,
    pub workers: Vec<Worker>,
    pub slots: Vec<Slot>,
    pub target: Generation,
    pub serving: Option<Generation>,
    /// The newest generation whose workers may accept (cutover; in the other
    /// modes it follows `serving`).
    pub accepting: Generation,
    /// Cutover: when the old generation was told to stop for the switch.
    pub switch_since: Option<Instant>,
    pub newest: u64,
    pub reload: Reload,
    pub reason: String,
    pub stop: Stop,
    /// The next [`WorkerId`].
    pub next_worker: u64,
    /// The actions of the event at hand, taken by [`Policy::handle`] (empty
    /// between events).
    pub(crate) queued: Vec<Action>,
    /// Recycle counts and the random state of the age draws (lifecycle.rs).
    pub life: PoolLife,
    /// `-C`: prepare, commit, abort (policy/prepare.rs).
    pub two_phase: TwoPhase,
    /// `--confirm-timeout`: the verified switch (policy/verify.rs).
    pub verify: Verify,
    /// Reloads by result, their durations (reloads.rs).
    pub reloads: ReloadCounts,
}

/// `3.2ms`: a short duration (a cutover's switch) as the log lines write it.
fn millis(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

fn release_text(g: &Generation) -> String {
    match &g.release {
        Some(r) => format!(" in {}", r.display()),
        None => String::new(),
    }
}

impl Policy {
    /// Generation 1 in `release`, `n` slots; nothing started yet (the first
    /// [`Event::Step`] starts them).
    pub fn new(settings: Settings, release: Option<PathBuf>, n: usize) -> (Policy, Vec<Action>) {
        let first = Generation { id: 1, release };
        let slots = (0..n).map(|_| Slot::new(&settings)).collect();
        let life = PoolLife::new(settings.life.seed);
        let mut p = Policy {
            settings,
            workers: Vec::new(),
            slots,
            accepting: first.clone(),
            target: first,
            serving: None,
            switch_since: None,
            newest: 1,
            reload: Reload::None,
            reason: String::new(),
            stop: Stop::No,
            next_worker: 1,
            queued: Vec::new(),
            life,
            two_phase: TwoPhase::default(),
            verify: Verify::default(),
            reloads: ReloadCounts::default(),
        };
        p.info(format!(
            "generation 1: starting {n} workers{}",
            release_text(&p.target)
        ));
        let actions = std::mem::take(&mut p.queued);
        (p, actions)
    }

    /// The one way in and out of the rule: `event` changes the state, the
    /// steps run at once if the event says so, and its actions come back,
    /// to be carried out in order. Which events converge at once is
    /// written here and nowhere else.
    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let then = match event {
            Event::Step => Then::Converge,
            Event::Time { ready } => {
                self.time_passed(now, ready);
                Then::NextTurn
            }
            Event::Started { worker, pid } => {
                self.started(worker, pid, now);
                Then::NextTurn
            }
            Event::StartFailed { worker, reason } => {
                self.start_failed(worker, now, reason);
                Then::NextTurn
            }
            Event::Ended { worker, how } => {
                self.ended(worker, how, now);
                Then::NextTurn
            }
            Event::Hup { resolve } => {
                self.hup(now, resolve);
                Then::NextTurn
            }
            Event::Stop { how, signal } => {
                self.stop(now, how, signal);
                Then::NextTurn
            }
            Event::AddSlot => {
                self.add_slot();
                Then::NextTurn
            }
            Event::RemoveSlot => {
                self.remove_slot();
                Then::NextTurn
            }
            // A watchdog's ABRT is replaced at once.
            Event::LifeTick => {
                self.life_tick(now);
                Then::Converge
            }
            Event::Ping(worker) => {
                self.ping(worker, now);
                Then::NextTurn
            }
            // A worker marked for recycling gets its replacement at once; one
            // that stopped accepting may let a cutover's switch end.
            Event::AskedRecycle(worker) => self.asked_recycle(worker, now),
            Event::StoppedAccepting(worker) => self.stopped_accepting(worker, now),
            // A parked worker known not to accept may let the switch end.
            Event::Parked(worker) => self.said_parked(worker, now),
            Event::GroupStopped(worker) => self.no_longer_accepts(worker, now),
            Event::Memory { worker, pss_kib } => self.memory(worker, pss_kib),
            Event::BadCommand(why) => {
                self.bad_command(why);
                Then::NextTurn
            }
            Event::Prepare { wall, resolve } => {
                self.prepare(now, wall, resolve);
                Then::NextTurn
            }
            Event::Commit { wall, at } => {
                self.commit(now, wall, at);
                Then::NextTurn
            }
            // The prepared workers are retired at once.
            Event::Abort { wall } => self.abort(now, wall),
            // A revert retires the new generation and refills at once.
            Event::Confirm { wall } => self.confirm(now, wall),
            Event::Revert { wall } => self.revert(now, wall),
        };
        if then == Then::Converge {
            self.converge(now);
        }
        std::mem::take(&mut self.queued)
    }

    pub(crate) fn info(&mut self, msg: String) {
        self.queued.push(Action::Info(msg));
    }

    pub(crate) fn warn(&mut self, msg: String) {
        self.queued.push(Action::Warn(msg));
    }

    pub(crate) fn index(&self, id: WorkerId) -> Option<usize> {
        self.workers.iter().position(|w| w.id == id)
    }

    pub fn worker(&self, id: WorkerId) -> Option<&Worker> {
        self.workers.iter().find(|w| w.id == id)
    }

    /// Whether a stop is complete: every worker is gone.
    pub fn finished(&self) -> bool {
        self.stop != Stop::No && self.workers.is_empty()
    }

    /// Workers ready and accepting (held ones are not).
    pub fn ready_count(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.phase == WorkerPhase::Ready && !w.held)
            .count()
    }

    /// Held workers of a generation not released yet (parked ones are not).
    pub fn held_count(&self) -> usize {
        self.workers.iter().filter(|w| w.held && !w.parked).count()
    }

    /// Parked workers (`--confirm-timeout`: the old generation, stopped).
    pub fn parked_count(&self) -> usize {
        self.workers.iter().filter(|w| w.parked).count()
    }

    /// The generation that serves as a client sees it: the serving one, or
    /// during a cutover's switch the one that still accepts until then.
    pub fn shown_serving(&self) -> Option<&Generation> {
        self.serving.as_ref().map(|s| {
            if s.id > self.accepting.id {
                &self.accepting
            } else {
                s
            }
        })
    }

    /// Whether every slot has a ready worker of the target generation.
    fn target_ready(&self) -> bool {
        (0..self.slots.len()).all(|s| {
            self.workers.iter().any(|w| {
                w.slot == s && w.generation == self.target.id && w.phase == WorkerPhase::Ready
            })
        })
    }

    fn is_outgoing(&self, w: &Worker) -> bool {
        w.live() && (w.generation != self.target.id || w.slot >= self.slots.len())
    }

    /// The next moment something is due: a start after a back-off, a worker
    /// alive long enough, a readiness deadline, a KILL.
    pub fn next_deadline(&self) -> Option<Instant> {
        let starts = self
            .slots
            .iter()
            .filter(|_| self.stop == Stop::No)
            .map(|s| s.not_before);
        let workers = self.workers.iter().flat_map(|w| match w.phase {
            WorkerPhase::Starting => self.settings.ready.due(w.started),
            WorkerPhase::Stopping => [w.kill_at.0, None],
            WorkerPhase::Ready => [None, None],
        });
        let reload = match self.reload {
            Reload::Running { since } => Some(since + self.reload_deadline()),
            _ => None,
        };
        earliest(
            starts
                .chain(workers)
                .chain([
                    reload,
                    self.life_deadline(),
                    self.verify_deadline(),
                    self.park_deadline(),
                ])
                .chain(self.prepare_deadlines()),
        )
    }

    /// The overall reload deadline: the readiness deadline (`-t`), the drain
    /// deadline (`-k`) and one second to reap. A reload still running then
    /// cannot complete (see README.md, "Every reload ends").
    pub fn reload_deadline(&self) -> Duration {
        self.settings.ready.deadline.unwrap_or_default() + self.settings.drain + ONE_SECOND
    }
}

mod converge;
mod events;
mod lifecycle;
mod prepare;
mod verify;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_hostile;
#[cfg(test)]
mod tests_lifecycle;
#[cfg(test)]
mod tests_prepare;
#[cfg(test)]
mod tests_verify;
