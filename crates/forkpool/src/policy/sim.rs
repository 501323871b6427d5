//! The fake-clock simulator the policy unit tests share: an `Instant` base
//! plus offsets, pids handed out here, readiness and ends told by the test.
//! What differs between the test files (how a worker is told ready, how a
//! host is set up) stays in each file, as a trait of its own on [`Sim`].

use super::*;
pub(super) use crate::lifecycle::Lifecycle;
pub(super) use unixtool::readiness;

/// Slots in a simulated pool.
pub(super) const N: usize = 3;

pub(super) fn settings(mode: Mode, life: Lifecycle) -> Settings {
    Settings {
        mode,
        stop_signal: Signal::SIGTERM,
        drain: Duration::from_secs(10),
        ready: readiness::Options {
            fd: Some(3),
            deadline: Some(Duration::from_secs(30)),
            ..Default::default()
        },
        backoff_max: Duration::from_secs(1),
        life,
        confirm_timeout: None,
    }
}

pub(super) fn release(name: &str) -> Option<PathBuf> {
    Some(PathBuf::from(format!("/srv/releases/{name}")))
}

pub(super) struct Sim {
    pub(super) p: Policy,
    pub(super) t0: Instant,
    pub(super) now: Instant,
    pub(super) next_pid: i32,
    /// Every action so far, in order.
    pub(super) log: Vec<Action>,
    /// How long after the turn that asked for it a fork returns (the
    /// kernel's fork can take seconds: BENCHMARKS.md, 2026-12-07).
    pub(super) fork_takes: Duration,
}

impl Sim {
    /// A policy at time 0 (`log`: what `Policy::new` said), after its first step.
    pub(super) fn start(p: Policy, log: Vec<Action>) -> Sim {
        let t0 = Instant::now();
        let mut sim = Sim {
            p,
            t0,
            now: t0,
            next_pid: 100,
            log,
            fork_takes: Duration::ZERO,
        };
        sim.step();
        sim
    }

    pub(super) fn at(&mut self, ms: u64) {
        self.now = self.t0 + Duration::from_millis(ms);
    }

    /// Take actions in: every Start forks (a new pid); return what came out.
    pub(super) fn feed(&mut self, actions: Vec<Action>) -> Vec<Action> {
        let mut out = Vec::new();
        self.fork(actions, &mut out);
        self.log.extend(out.clone());
        out
    }

    fn fork(&mut self, actions: Vec<Action>, out: &mut Vec<Action>) {
        for a in actions {
            if let Action::Start { worker, .. } = &a {
                self.next_pid += 1;
                let more = self.p.handle(
                    self.now + self.fork_takes,
                    Event::Started {
                        worker: *worker,
                        pid: self.next_pid,
                    },
                );
                out.push(a);
                self.fork(more, out);
            } else {
                out.push(a);
            }
        }
    }

    pub(super) fn step(&mut self) -> Vec<Action> {
        let a = self.p.handle(self.now, Event::Step);
        self.feed(a)
    }

    /// These actions and a step after them, fed.
    pub(super) fn with_step(&mut self, mut a: Vec<Action>) -> Vec<Action> {
        a.extend(self.p.handle(self.now, Event::Step));
        self.feed(a)
    }

    /// A HUP to `release` and a step after it (not fed).
    pub(super) fn hup_then_step(&mut self, release: Option<PathBuf>) -> Vec<Action> {
        let mut a = self.p.handle(
            self.now,
            Event::Hup {
                resolve: &mut || Ok(release.clone()),
            },
        );
        a.extend(self.p.handle(self.now, Event::Step));
        a
    }

    /// Workers of generation `gen` in `phase`.
    pub(super) fn of(&self, gen: u64, phase: WorkerPhase) -> Vec<WorkerId> {
        let ws = self.p.workers.iter();
        ws.filter(|w| w.generation == gen && w.phase == phase)
            .map(|w| w.id)
            .collect()
    }
}

/// Readiness, ticks and ends without the lifecycle's tick (tests.rs,
/// tests_prepare.rs).
pub(super) trait Plain {
    fn ready(&mut self, ids: &[WorkerId]) -> Vec<Action>;
    fn tick(&mut self) -> Vec<Action>;
    fn end(&mut self, id: WorkerId, how: Ended) -> Vec<Action>;
}

impl Plain for Sim {
    /// These workers say they are ready; then a step.
    fn ready(&mut self, ids: &[WorkerId]) -> Vec<Action> {
        let a = self.p.handle(self.now, Event::Time { ready: ids });
        self.with_step(a)
    }

    fn tick(&mut self) -> Vec<Action> {
        self.ready(&[])
    }

    fn end(&mut self, id: WorkerId, how: Ended) -> Vec<Action> {
        let a = self.p.handle(self.now, Event::Ended { worker: id, how });
        self.with_step(a)
    }
}

/// The workers a `Retire` names.
pub(super) fn retired(a: &[Action]) -> Vec<WorkerId> {
    a.iter()
        .filter_map(|a| match a {
            Action::Retire { worker, .. } => Some(*worker),
            _ => None,
        })
        .collect()
}
