//! The reload/replace rule, as a pure function of the pool's state and the
//! time: no processes, no descriptors, no clock of its own. The pool (pool.rs)
//! feeds it what happened (a start, a readiness, an end, a signal, the time)
//! and applies the [`Action`]s it returns, in order.
//!
//! There is always a *target* generation (the one the pool wants in every
//! slot) and, once some generation has had all its workers ready, a *serving*
//! generation (the last one that did). At each step:
//!
//! 1. every slot without a live worker of the target generation gets one (at
//!    once, or after its back-off when the previous one failed);
//! 2. every live worker that is not of the target generation, or sits in a
//!    slot beyond N, is *outgoing*: retired at once if it is not ready; if it
//!    is ready, retired only when the pool keeps at least N ready workers
//!    without it (rolling), or when the target generation is wholly ready
//!    (all-at-once);
//! 3. a target generation with every slot ready becomes the serving one.
//!
//! Lifecycle (lifecycle.rs): a ready worker due for recycling (age, memory,
//! its own word) is *marked*; step 1 counts a marked worker as missing from
//! its slot (a second worker in a slot starts only within the `--surge`
//! bound), and step 2b retires the marked worker once a ready worker of the
//! target generation stands in its slot. The watchdog retires a silent worker
//! with ABRT; step 1 then fills its slot at once.
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
//! The state is plain data. Its only clock values are `Instant`s (a start, a
//! KILL deadline, a back-off's end, a reload's or a switch's beginning); to
//! hand the state to another process (an in-place upgrade) write each as the
//! offset `now - t` (or `t - now`) and rebuild it there from that process's
//! `now`. Workers are named by a [`WorkerId`] the policy hands out, not by
//! pid: the pid is learned after the fork ([`Policy::started`]).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use unixtool::backoff::{Backoff, ONE_SECOND};
use unixtool::child::{secs, Ended};
use unixtool::readiness;
use unixtool::signals::signal_name;
use unixtool::supervise::{earliest, KillDeadline, ReadinessTimes};

use crate::lifecycle::{Lifecycle, PoolLife, Recycle, WorkerLife};
use crate::reloads::ReloadCounts;

/// How the old generation makes way for the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Retire one old worker for each new one that becomes ready.
    Rolling,
    /// Retire every old worker once the whole new generation is ready.
    AllAtOnce,
    /// Hold the new generation, ready, until the whole of it is ready and
    /// every old worker is gone; then release it at once.
    Cutover,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Rolling => "rolling",
            Mode::AllAtOnce => "all-at-once",
            Mode::Cutover => "cutover",
        }
    }
}

/// The policy's settings (from the options).
#[derive(Clone, Debug)]
pub struct Settings {
    pub mode: Mode,
    pub stop_signal: Signal,
    /// `-k`: a stopping worker gets KILL this long after its stop signal.
    pub drain: Duration,
    /// `-a` (ready after staying alive this long) and `-t` (the readiness
    /// deadline); `-d`/`--notify` are the pool's business.
    pub ready: readiness::Options,
    /// `-b`: the longest back-off.
    pub backoff_max: Duration,
    /// Recycling, watchdog, surge (lifecycle.rs).
    pub life: Lifecycle,
}

/// One generation: its number and the release directory it is pinned to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub id: u64,
    pub release: Option<PathBuf>,
}

/// A worker's name in the policy (a pid is known only after the fork).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u64);

/// Why a worker was retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Outgoing and ready: a worker of the target generation stands in for it.
    Replaced,
    /// Outgoing and not serving (not ready, or held in a generation that
    /// will not serve).
    NotNeeded,
    /// It died or missed its readiness deadline.
    Failed,
    /// The pool stops (TERM, INT, QUIT).
    Stopping,
    /// Recycled (age, memory, its own word) once its replacement was ready.
    Recycled(Recycle),
    /// It missed its watchdog ping.
    Watchdog,
}

impl Why {
    pub fn name(self) -> &'static str {
        match self {
            Why::Replaced => "replaced",
            Why::NotNeeded => "not needed",
            Why::Failed => "failed",
            Why::Stopping => "stopping",
            Why::Recycled(Recycle::Age) => "recycled: age",
            Why::Recycled(Recycle::Memory) => "recycled: memory",
            Why::Recycled(Recycle::Asked) => "recycled: it asked",
            Why::Recycled(Recycle::Watchdog) | Why::Watchdog => "watchdog",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Ready,
    Stopping,
}

/// One worker, as the policy sees it.
#[derive(Clone, Debug)]
pub struct Worker {
    pub id: WorkerId,
    /// Known once started (0 before).
    pub pid: i32,
    pub slot: usize,
    pub generation: u64,
    pub phase: Phase,
    pub started: Instant,
    /// When a stopping worker gets KILL.
    pub kill_at: KillDeadline,
    /// Cutover: ready, but stopped (SIGSTOP) and not released yet.
    pub held: bool,
    /// Why it was retired (None while it is not).
    pub retired: Option<Why>,
    /// Recycling and watchdog state (lifecycle.rs).
    pub life: WorkerLife,
}

impl Worker {
    pub fn live(&self) -> bool {
        self.phase != Phase::Stopping
    }

    pub fn name(&self) -> String {
        format!(
            "worker {} (pid {}, generation {})",
            self.slot, self.pid, self.generation
        )
    }
}

/// A slot's restart schedule.
#[derive(Clone, Debug)]
pub struct Slot {
    pub backoff: Backoff,
    /// The next start of a target worker in this slot is not before this.
    pub not_before: Option<Instant>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reload {
    None,
    Running { since: Instant },
    Ok,
    Failed,
}

/// Whether the pool is stopping, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    No,
    Graceful,
    Fast,
}

/// What the pool must do, in this order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Fork and exec a worker of `generation` in `slot`; then tell
    /// [`Policy::started`] or [`Policy::start_failed`]. `hold`: its hold
    /// descriptor stays shut (cutover, a generation that does not accept yet).
    Start {
        worker: WorkerId,
        slot: usize,
        generation: Generation,
        hold: bool,
    },
    /// Send `signal` (the stop signal; TERM/INT/QUIT at a pool stop), then
    /// SIGCONT if `cont` (it was held: it gets the stop, never the release).
    Retire {
        worker: WorkerId,
        signal: Signal,
        cont: bool,
    },
    /// Cutover: the worker just became ready and accepts nothing yet: SIGSTOP.
    Hold { worker: WorkerId },
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
    out: Vec<Action>,
    /// Recycle counts and the random state of the age draws (lifecycle.rs).
    pub life: PoolLife,
    /// `-C`: prepare, commit, abort (policy/prepare.rs).
    pub two_phase: TwoPhase,
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
    /// [`Policy::step`] starts them).
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
            out: Vec::new(),
            life,
            two_phase: TwoPhase::default(),
            reloads: ReloadCounts::default(),
        };
        p.info(format!(
            "generation 1: starting {n} workers{}",
            release_text(&p.target)
        ));
        let actions = p.take();
        (p, actions)
    }

    pub(crate) fn take(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    pub(crate) fn info(&mut self, msg: String) {
        self.out.push(Action::Info(msg));
    }

    pub(crate) fn warn(&mut self, msg: String) {
        self.out.push(Action::Warn(msg));
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
            .filter(|w| w.phase == Phase::Ready && !w.held)
            .count()
    }

    pub fn held_count(&self) -> usize {
        self.workers.iter().filter(|w| w.held).count()
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
            self.workers
                .iter()
                .any(|w| w.slot == s && w.generation == self.target.id && w.phase == Phase::Ready)
        })
    }

    fn is_outgoing(&self, w: &Worker) -> bool {
        w.live() && (w.generation != self.target.id || w.slot >= self.slots.len())
    }

    /// Converge: start what is missing, retire what is outgoing, note a
    /// generation that became wholly ready.
    pub fn step(&mut self, now: Instant) -> Vec<Action> {
        self.converge(now);
        self.take()
    }

    pub(crate) fn converge(&mut self, now: Instant) {
        if self.stop != Stop::No {
            return;
        }
        self.prepare_due(now);
        // 1. A live target worker in every slot.
        for slot in 0..self.slots.len() {
            let has = self.workers.iter().any(|w| {
                w.live()
                    && w.slot == slot
                    && w.generation == self.target.id
                    && w.life.recycle.is_none()
            });
            if has || self.slots[slot].not_before.is_some_and(|t| t > now) {
                continue;
            }
            // The surge bound (lifecycle.rs): a second worker in a slot waits.
            if !self.may_start(slot) {
                continue;
            }
            self.slots[slot].not_before = None;
            self.start(slot, now);
        }
        // 2. Retire outgoing workers: the ones not serving at once (not ready,
        // or held in a generation that is not about to serve)...
        let serving_id = self.serving.as_ref().map(|g| g.id);
        let idle: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|w| {
                self.is_outgoing(w)
                    && (w.phase != Phase::Ready || (w.held && Some(w.generation) != serving_id))
            })
            .map(|w| w.id)
            .collect();
        for id in idle {
            self.retire(id, now, Why::NotNeeded);
        }
        // ... the ready ones while N ready workers remain without them, or
        // (all-at-once) when the whole target generation is ready. Slots
        // beyond N (TTOU) go first, then the oldest generation.
        let mode = self.settings.mode;
        let all_at_once_go =
            mode != Mode::Rolling && self.target_ready() && !self.prepare_holds(now);
        loop {
            let n = self.slots.len();
            let candidate = self
                .workers
                .iter()
                .filter(|w| self.is_outgoing(w) && w.phase == Phase::Ready)
                .filter(|w| mode == Mode::Rolling || all_at_once_go || w.slot >= n)
                .min_by_key(|w| (w.slot < n, w.generation, w.slot))
                .map(|w| w.id);
            let Some(id) = candidate else { break };
            if self.ready_count() <= n && !all_at_once_go {
                break;
            }
            self.retire(id, now, Why::Replaced);
        }
        // 2b. Recycled workers whose replacement is ready (lifecycle.rs).
        self.retire_recycled(now);
        // 3. A wholly ready target generation serves.
        if self.serving.as_ref().map(|g| g.id) != Some(self.target.id)
            && self.target_ready()
            && !self.prepare_holds(now)
        {
            if mode == Mode::Cutover && self.target.id > self.accepting.id {
                // The switch: the old generations go now; the new one stays
                // held until they are gone (4.). The reload is done then.
                self.info(format!(
                    "cutover to generation {}: every worker ready and held until the older ones are gone",
                    self.target.id
                ));
                self.switch_since = Some(now);
                self.serving = Some(self.target.clone());
                self.converge(now);
                return;
            }
            if let Reload::Running { since } = self.reload {
                self.info(format!(
                    "reload to generation {} done in {}: every worker ready",
                    self.target.id,
                    secs(now - since)
                ));
                self.reloads.ok(now - since);
                self.reload = Reload::Ok;
                self.reason.clear();
            } else {
                self.info(format!("generation {}: every worker ready", self.target.id));
            }
            self.serving = Some(self.target.clone());
            self.accepting = self.target.clone();
            // All-at-once: the old generation goes now that the new one is whole.
            self.converge(now);
        }
        // 4. Cutover: release the serving generation once nothing older is left.
        if let Some(s) = self.serving.clone() {
            // (An old worker that said it stopped accepting counts as gone.)
            let gone = |w: &Worker| w.generation >= s.id || Policy::gone_for_switch(w);
            if s.id > self.accepting.id && self.workers.iter().all(gone) {
                self.release(s, now);
            }
        }
    }

    /// A new worker of the target generation in `slot`.
    fn start(&mut self, slot: usize, now: Instant) {
        let id = WorkerId(self.next_worker);
        self.next_worker += 1;
        let generation = self.target.clone();
        let hold = self.settings.mode == Mode::Cutover && generation.id > self.accepting.id;
        self.workers.push(Worker {
            id,
            pid: 0,
            slot,
            generation: generation.id,
            phase: Phase::Starting,
            started: now,
            kill_at: KillDeadline::default(),
            held: false,
            retired: None,
            life: WorkerLife::default(),
        });
        self.out.push(Action::Start {
            worker: id,
            slot,
            generation,
            hold,
        });
    }

    /// The [`Action::Start`] of `id` forked `pid`.
    pub fn started(&mut self, id: WorkerId, pid: i32) -> Vec<Action> {
        if let Some(i) = self.index(id) {
            self.workers[i].pid = pid;
            let w = &self.workers[i];
            let msg = format!(
                "worker {} (generation {}) started as pid {pid}",
                w.slot, w.generation
            );
            self.info(msg);
        }
        self.take()
    }

    /// The [`Action::Start`] of `id` failed (`reason`): try again in a second.
    pub fn start_failed(&mut self, id: WorkerId, now: Instant, reason: &str) -> Vec<Action> {
        if let Some(i) = self.index(id) {
            let w = self.workers.remove(i);
            if w.generation != self.target.id {
                // A start the pool had in hand when its generation was given up.
                self.info(format!(
                    "worker {} (generation {}) not started: {reason}",
                    w.slot, w.generation
                ));
                return self.take();
            }
            if self.reload_at_stake(w.generation) {
                let why = format!(
                    "unable to start worker {} (generation {}): {reason}",
                    w.slot, w.generation
                );
                self.abandon(why);
                return self.take();
            }
            self.warn(format!(
                "unable to start worker {} (generation {}): {reason}; retrying in 1s",
                w.slot, w.generation
            ));
            if let Some(s) = self.slots.get_mut(w.slot) {
                s.not_before = Some(now + Duration::from_secs(1));
            }
        }
        self.take()
    }

    /// Let generation `gen` accept: its hold descriptors and its held workers.
    fn release(&mut self, gen: Generation, now: Instant) {
        let id = gen.id;
        self.accepting = gen;
        let workers = self
            .workers
            .iter()
            .filter(|w| w.generation == id)
            .map(|w| w.id)
            .collect();
        let mut held = Vec::new();
        for w in self
            .workers
            .iter_mut()
            .filter(|w| w.generation == id && w.held)
        {
            w.held = false;
            held.push(w.id);
        }
        let n = held.len();
        self.out.push(Action::Release {
            generation: id,
            workers,
            held,
        });
        let drained = self
            .switch_since
            .take()
            .map(|t| now - t)
            .unwrap_or_default();
        if let (Reload::Running { since }, true) = (&self.reload, self.target.id == id) {
            let took = now - *since;
            let msg = format!(
                "reload to generation {id} done in {}: the old workers were gone after {}; released {n} workers",
                secs(now - *since),
                millis(drained)
            );
            self.info(msg);
            self.reloads.ok(took);
            self.reload = Reload::Ok;
            self.reason.clear();
        } else {
            self.info(format!(
                "cutover to generation {id}: the old workers were gone after {}; released {n} workers",
                millis(drained)
            ));
        }
        self.prepare_released(id, now);
    }

    /// Send worker `id` the stop signal; KILL after the drain deadline.
    pub(crate) fn retire(&mut self, id: WorkerId, now: Instant, why: Why) {
        let signal = self.settings.stop_signal;
        self.retire_with(id, now, why, signal);
    }

    /// Send worker `id` `signal`; KILL after the drain deadline.
    pub(crate) fn retire_with(&mut self, id: WorkerId, now: Instant, why: Why, signal: Signal) {
        let Some(i) = self.index(id) else { return };
        let drain = self.settings.drain;
        let w = &mut self.workers[i];
        if w.phase == Phase::Stopping {
            return;
        }
        w.phase = Phase::Stopping;
        w.retired = Some(why);
        w.kill_at.arm(now, drain);
        let cont = std::mem::take(&mut w.held);
        let name = w.name();
        self.out.push(Action::Retire {
            worker: id,
            signal,
            cont,
        });
        self.info(format!(
            "{name} stopping ({}): sent {}",
            why.name(),
            signal_name(signal)
        ));
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
            Phase::Starting => self.settings.ready.due(w.started),
            Phase::Stopping => [w.kill_at.0, None],
            Phase::Ready => [None, None],
        });
        let reload = match self.reload {
            Reload::Running { since } => Some(since + self.reload_deadline()),
            _ => None,
        };
        earliest(
            starts
                .chain(workers)
                .chain([reload, self.life_deadline()])
                .chain(self.prepare_deadlines()),
        )
    }

    /// The time passed: readiness by `-a`, readiness deadlines, KILL
    /// deadlines. `ready`: the workers that told their readiness since the
    /// last call (pipe or `READY=1`), each at most once.
    pub fn tick(&mut self, now: Instant, ready: &[WorkerId]) -> Vec<Action> {
        let s = self.settings.clone();
        let ids: Vec<WorkerId> = self.workers.iter().map(|w| w.id).collect();
        for id in ids {
            let Some(i) = self.index(id) else { continue };
            let w = &self.workers[i];
            if w.phase != Phase::Starting {
                continue;
            }
            let by_time = s.ready.ready_by_time(w.started, now);
            if ready.contains(&id) || by_time {
                let held = s.mode == Mode::Cutover && w.generation > self.accepting.id;
                let w = &mut self.workers[i];
                w.phase = Phase::Ready;
                if held {
                    // At once: the window in which it may accept is this long.
                    w.held = true;
                    self.out.push(Action::Hold { worker: id });
                }
                let w = &self.workers[i];
                let msg = format!(
                    "{} ready after {}{}",
                    w.name(),
                    secs(now - w.started),
                    if held { "; held (sent STOP)" } else { "" }
                );
                self.info(msg);
            } else if s.ready.missed_deadline(w.started, now) {
                let msg = format!("{} not ready after {}", w.name(), secs(now - w.started));
                self.failed(i, now, msg);
            }
        }
        self.reload_overdue(now);
        for i in 0..self.workers.len() {
            let w = &mut self.workers[i];
            if w.kill_at.due(now) {
                let (id, name) = (w.id, w.name());
                self.out.push(Action::Kill { worker: id });
                self.warn(format!(
                    "{name} did not stop in {}: sent KILL",
                    secs(s.drain)
                ));
            }
        }
        self.take()
    }

    /// Worker `i` failed (`what` says how). A new generation that fails makes
    /// the reload fail; a serving worker is replaced after its slot's back-off.
    /// A live worker is retired; one that ended is forgotten by the caller.
    fn failed(&mut self, i: usize, now: Instant, what: String) {
        let w = &self.workers[i];
        let (id, slot, generation, started) = (w.id, w.slot, w.generation, w.started);
        if self.reload_at_stake(generation) || self.prepare_failing(generation) {
            self.abandon(what);
        } else if generation == self.target.id && slot < self.slots.len() {
            let wait = self.slots[slot].backoff.failed(now - started);
            self.slots[slot].not_before = Some(now + wait);
            self.warn(format!("{what}; restarting in {}", secs(wait)));
        } else {
            self.warn(format!(
                "{what}; not replaced: generation {generation} is outgoing"
            ));
        }
        if self.workers[i].live() {
            self.retire(id, now, Why::Failed);
        }
    }

    /// Whether a failure of a worker of `generation` fails the running
    /// reload: it is of the new generation, not yet whole. (A cutover's new
    /// generation, once whole, is the serving one: a crash of it while the
    /// old one drains is replaced, not a failed reload.)
    fn reload_at_stake(&self, generation: u64) -> bool {
        let reloading = matches!(self.reload, Reload::Running { .. });
        let whole = self.serving.as_ref().map(|g| g.id) == Some(generation);
        generation == self.target.id && reloading && self.serving.is_some() && !whole
    }

    /// The overall reload deadline: the readiness deadline (`-t`), the drain
    /// deadline (`-k`) and one second to reap. A reload still running then
    /// cannot complete (see README.md, "Every reload ends").
    pub fn reload_deadline(&self) -> Duration {
        self.settings.ready.deadline.unwrap_or_default() + self.settings.drain + ONE_SECOND
    }

    /// The running reload passed its overall deadline: it failed. Before its
    /// generation is whole, back to the serving one; after (a cutover whose
    /// old workers will not go), the switch stays under way.
    fn reload_overdue(&mut self, now: Instant) {
        let Reload::Running { since } = self.reload else {
            return;
        };
        let limit = self.reload_deadline();
        if now < since + limit {
            return;
        }
        let why = format!("the reload did not complete in {}", secs(limit));
        if self.reload_at_stake(self.target.id) {
            self.abandon(why);
        } else {
            self.warn(format!(
                "reload to generation {} failed: {why}; older workers are still alive",
                self.target.id
            ));
            self.reason = why;
            self.reloads.failed();
            self.reload = Reload::Failed;
        }
    }

    /// Give up the running reload: back to the serving generation.
    fn abandon(&mut self, why: String) {
        let Some(old) = self.serving.clone() else {
            return;
        };
        self.warn(format!(
            "reload to generation {} failed: {why}; generation {} keeps serving",
            self.target.id, old.id
        ));
        self.reason = why;
        if matches!(self.reload, Reload::Running { .. }) {
            self.reloads.failed(); // not a prepare's (prepare_abandoned)
        }
        self.reload = Reload::Failed;
        self.target = old;
        for s in &mut self.slots {
            s.not_before = None;
        }
        self.prepare_abandoned();
    }

    /// Worker `id` ended (reaped): account for it, forget it.
    pub fn ended(&mut self, id: WorkerId, ended: Ended, now: Instant) -> Vec<Action> {
        let Some(i) = self.index(id) else {
            return self.take();
        };
        let w = &self.workers[i];
        let ran = now.saturating_duration_since(w.started);
        let what = format!("{} {ended} after {}", w.name(), secs(ran));
        match w.phase {
            Phase::Stopping => self.info(what),
            Phase::Ready if ended.clean() && ran >= ONE_SECOND => {
                // A worker that finished its work (e.g. max requests): replace it at once.
                let slot = w.slot;
                if w.generation == self.target.id && slot < self.slots.len() {
                    self.slots[slot].backoff.succeeded();
                    self.info(format!("{what}; replacing it"));
                } else {
                    self.info(what);
                }
            }
            // A clean exit soon after the start is a crash for restart
            // timing: no tight, silent loop of workers that exit 0 at once.
            Phase::Ready if ended.clean() => {
                self.failed(i, now, format!("{what} (less than 1s: counted as a crash)"))
            }
            Phase::Ready => self.failed(i, now, what),
            Phase::Starting => self.failed(i, now, format!("{what} before it was ready")),
        }
        self.workers.remove(i);
        self.take()
    }

    /// HUP: a new generation, pinned to what `resolve` says the symlink names
    /// now (`Err`: why it cannot be resolved; the reload fails at once).
    pub fn hup(
        &mut self,
        now: Instant,
        resolve: impl FnOnce() -> Result<Option<PathBuf>, String>,
    ) -> Vec<Action> {
        if self.stop != Stop::No {
            self.info("HUP while stopping: ignored".to_string());
            return self.take();
        }
        if let Some(refused) = self.hup_refused() {
            return refused;
        }
        self.newest += 1;
        let id = self.newest;
        let release = match resolve() {
            Ok(r) => r,
            Err(why) => {
                self.warn(format!(
                    "reload to generation {id} failed: {why}; generation {} keeps serving",
                    self.target.id
                ));
                self.reason = why;
                self.reloads.failed();
                self.reload = Reload::Failed;
                return self.take();
            }
        };
        if let Reload::Running { .. } = self.reload {
            self.info(format!(
                "HUP during the reload to generation {}: starting over",
                self.target.id
            ));
        }
        self.begin_generation(id, release);
        self.reload = Reload::Running { since: now };
        self.info(format!(
            "HUP: generation {id}: starting {} workers{}",
            self.slots.len(),
            release_text(&self.target)
        ));
        self.take()
    }

    /// A new target generation (a HUP, a prepare): every slot starts afresh,
    /// without the back-off of the generation before.
    pub(crate) fn begin_generation(&mut self, id: u64, release: Option<PathBuf>) {
        self.target = Generation { id, release };
        self.reason.clear();
        let fresh: Vec<Slot> = self
            .slots
            .iter()
            .map(|_| Slot::new(&self.settings))
            .collect();
        self.slots = fresh;
    }

    /// TTIN: one slot more.
    pub fn ttin(&mut self) -> Vec<Action> {
        if self.stop == Stop::No {
            self.slots.push(Slot::new(&self.settings));
            self.info(format!("TTIN: {} workers", self.slots.len()));
        }
        self.take()
    }

    /// TTOU: one slot less (never below one).
    pub fn ttou(&mut self) -> Vec<Action> {
        if self.stop == Stop::No {
            if self.slots.len() > 1 {
                self.slots.pop();
                self.info(format!("TTOU: {} workers", self.slots.len()));
            } else {
                self.info("TTOU: already at 1 worker".to_string());
            }
        }
        self.take()
    }

    /// TERM/INT (`Graceful`, the stop signal) or QUIT (`Fast`, `signal`):
    /// every worker is told to stop; KILL after the drain deadline.
    pub fn stop(&mut self, now: Instant, how: Stop, signal: Signal) -> Vec<Action> {
        if self.stop == Stop::Fast || self.stop == how || how == Stop::No {
            return self.take();
        }
        self.info(format!(
            "stopping every worker: sent {}",
            signal_name(signal)
        ));
        self.stop = how;
        self.prepare_stopped();
        let drain = self.settings.drain;
        for w in &mut self.workers {
            if w.phase != Phase::Stopping || how == Stop::Fast {
                w.phase = Phase::Stopping;
                w.retired.get_or_insert(Why::Stopping);
                w.kill_at.arm(now, drain);
                let cont = std::mem::take(&mut w.held);
                self.out.push(Action::Retire {
                    worker: w.id,
                    signal,
                    cont,
                });
            }
        }
        self.take()
    }
}

impl Slot {
    fn new(settings: &Settings) -> Slot {
        Slot {
            backoff: Backoff::new(settings.backoff_max),
            not_before: None,
        }
    }
}

mod prepare;
pub use prepare::TwoPhase;

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
