//! Prepare, commit, abort (policy/prepare.rs) without processes: a fake clock
//! and a fake wall clock (`WALL` at the start), pids handed out here.

use super::sim::*;
use super::*;
use crate::two_phase::Stage;

const WALL: f64 = 1_764_245_000.0;

/// How these tests set up and drive a host with `-C`.
trait TwoPhase {
    fn serving() -> Self;
    fn wall(&self) -> f64;
    fn all_ready(&mut self, gen: u64) -> Vec<Action>;
    fn prepare(&mut self, to: &str) -> Vec<Action>;
    fn commit(&mut self, at_ms: Option<u64>) -> Vec<Action>;
    fn abort(&mut self) -> Vec<Action>;
    fn stopped_ones_exit(&mut self) -> Vec<Action>;
    fn stage(&self) -> Stage;
}

impl TwoPhase for Sim {
    /// Generation 1 whole and serving, with `-C` and a 60 s prepare deadline.
    fn serving() -> Sim {
        let (mut p, _) = Policy::new(
            settings(Mode::Cutover, Default::default()),
            release("r1"),
            N,
        );
        p.two_phase.control = Some(PathBuf::from("/run/app/control"));
        let mut s = Sim::start(p, Vec::new());
        s.at(100);
        s.all_ready(1);
        assert_eq!(s.p.serving.as_ref().map(|g| g.id), Some(1));
        s
    }

    fn wall(&self) -> f64 {
        WALL + (self.now - self.t0).as_secs_f64()
    }

    fn all_ready(&mut self, gen: u64) -> Vec<Action> {
        let mut out = Vec::new();
        for id in self.of(gen, WorkerPhase::Starting) {
            out.extend(self.ready(&[id]));
        }
        out
    }

    fn prepare(&mut self, to: &str) -> Vec<Action> {
        let wall = self.wall();
        let a = self.p.handle(
            self.now,
            Event::Prepare {
                wall,
                resolve: &mut || Ok(release(to)),
            },
        );
        self.with_step(a)
    }

    /// `commit` now (`None`) or at `ms` on the fake clock.
    fn commit(&mut self, at_ms: Option<u64>) -> Vec<Action> {
        let wall = self.wall();
        let at = at_ms.map(|ms| {
            let i = self.t0 + Duration::from_millis(ms);
            (i, WALL + ms as f64 / 1000.0)
        });
        let a = self.p.handle(self.now, Event::Commit { wall, at });
        self.with_step(a)
    }

    fn abort(&mut self) -> Vec<Action> {
        let wall = self.wall();
        let a = self.p.handle(self.now, Event::Abort { wall });
        self.with_step(a)
    }

    /// Every worker told to stop exits (after its stop signal).
    fn stopped_ones_exit(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        let ids: Vec<WorkerId> = self
            .p
            .workers
            .iter()
            .filter(|w| w.phase == WorkerPhase::Stopping)
            .map(|w| w.id)
            .collect();
        for id in ids {
            out.extend(self.end(id, Ended::Exited(0)));
        }
        out
    }

    fn stage(&self) -> Stage {
        self.p.two_phase.stage
    }
}

fn released(a: &[Action]) -> Option<u64> {
    a.iter().find_map(|a| match a {
        Action::Release { generation, .. } => Some(*generation),
        _ => None,
    })
}

/// A prepared host: generation 2 ready and held, generation 1 serving.
fn prepared() -> Sim {
    let mut s = Sim::serving();
    s.at(1000);
    s.prepare("r2");
    s.at(1200);
    s.all_ready(2);
    assert_eq!(s.stage(), Stage::Prepared);
    s
}

#[test]
fn prepare_holds_the_new_generation_ready_and_never_switches_on_its_own() {
    let mut s = Sim::serving();
    s.at(1000);
    let a = s.prepare("r2");
    assert_eq!(s.stage(), Stage::Preparing);
    assert_eq!(s.p.two_phase.generation, 2);
    assert_eq!(s.p.newest, 2);
    let holds: Vec<bool> = a
        .iter()
        .filter_map(|a| match a {
            Action::Start {
                hold, generation, ..
            } if generation.id == 2 => Some(*hold),
            _ => None,
        })
        .collect();
    assert_eq!(holds, vec![true; N], "every new worker starts held");
    s.at(1200);
    let a = s.all_ready(2);
    assert_eq!(s.stage(), Stage::Prepared);
    assert!(retired(&a).is_empty(), "no old worker retired: {a:?}");
    assert_eq!(released(&a), None);
    assert_eq!(s.p.held_count(), N);
    assert_eq!(s.p.ready_count(), N, "the old generation serves");
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(1));
    // time passes (short of the deadline): nothing changes
    for ms in [5_000, 30_000, 59_000] {
        s.at(ms);
        let a = s.tick();
        assert!(retired(&a).is_empty() && released(&a).is_none(), "{a:?}");
    }
    assert_eq!(s.stage(), Stage::Prepared);
    assert_eq!(s.of(1, WorkerPhase::Ready).len(), N);
}

#[test]
fn commit_switches_as_a_cutover_does_and_only_commit_releases() {
    let mut s = prepared();
    s.at(2000);
    let a = s.commit(None);
    assert_eq!(s.stage(), Stage::Committing);
    assert_eq!(retired(&a).len(), N, "the old generation goes: {a:?}");
    assert_eq!(released(&a), None, "held until the old ones are gone");
    s.at(2010);
    let a = s.stopped_ones_exit();
    assert_eq!(released(&a), Some(2));
    assert_eq!(s.stage(), Stage::Committed);
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(2));
    let r = s.p.two_phase.released_wall.expect("released_at");
    assert!((r - (WALL + 2.010)).abs() < 1e-6, "{r}");
}

#[test]
fn commit_at_an_instant_waits_for_it() {
    let mut s = prepared();
    s.at(2000);
    let a = s.commit(Some(5000));
    assert!(retired(&a).is_empty(), "{a:?}");
    assert_eq!(
        s.p.next_deadline(),
        Some(s.t0 + Duration::from_millis(5000))
    );
    s.at(4999);
    assert!(retired(&s.tick()).is_empty());
    s.at(5000);
    let a = s.tick();
    assert_eq!(retired(&a).len(), N, "switch at the instant: {a:?}");
    // the instant is past: no deadline left polled again and again
    assert!(s
        .p
        .next_deadline()
        .is_some_and(|d| d > s.t0 + Duration::from_millis(5000)));
    let a = s.stopped_ones_exit();
    assert_eq!(released(&a), Some(2));
    assert_eq!(s.p.two_phase.commit_wall, Some(WALL + 5.0));
}

#[test]
fn commit_without_a_prepare_is_refused_with_a_reason() {
    let mut s = Sim::serving();
    let a = s.commit(None);
    assert_eq!(s.stage(), Stage::None);
    assert!(retired(&a).is_empty());
    assert_eq!(s.p.two_phase.last, "commit refused");
    assert!(s.p.reason.contains("nothing is prepared"), "{}", s.p.reason);
    // while preparing: refused too (only a prepared generation commits)
    s.prepare("r2");
    s.commit(None);
    assert_eq!(s.stage(), Stage::Preparing);
    assert!(s.p.reason.contains("not prepared yet"), "{}", s.p.reason);
    assert_eq!(s.p.two_phase.commands, 3);
}

#[test]
fn a_commit_instant_after_the_deadline_is_refused() {
    let mut s = prepared();
    s.commit(Some(1000 + 61_000));
    assert_eq!(s.stage(), Stage::Prepared);
    assert!(s.p.reason.contains("expires"), "{}", s.p.reason);
}

#[test]
fn abort_stops_the_held_generation_and_nothing_else() {
    let mut s = prepared();
    let old = s.of(1, WorkerPhase::Ready);
    let a = s.abort();
    assert_eq!(s.stage(), Stage::Aborted);
    let r = retired(&a);
    assert_eq!(r.len(), N, "{a:?}");
    assert!(r.iter().all(|id| !old.contains(id)), "only new ones go");
    assert!(a
        .iter()
        .any(|a| matches!(a, Action::Retire { cont: true, .. })));
    assert_eq!(s.p.target.id, 1);
    assert!(s.p.reason.contains("aborted"), "{}", s.p.reason);
    let a = s.stopped_ones_exit();
    assert_eq!(released(&a), None);
    assert_eq!(s.of(1, WorkerPhase::Ready), old);
    assert!(s.p.workers.iter().all(|w| w.generation == 1));
    // a second abort: nothing to do, accepted
    s.abort();
    assert_eq!(s.p.two_phase.last, "abort accepted");
    // after an abort, a commit is refused
    s.commit(None);
    assert_eq!(s.p.two_phase.last, "commit refused");
}

#[test]
fn a_prepare_neither_committed_nor_aborted_aborts_at_its_deadline() {
    let mut s = prepared();
    assert_eq!(
        s.p.next_deadline(),
        Some(s.t0 + Duration::from_millis(61_000))
    );
    s.at(61_000);
    let a = s.tick();
    assert_eq!(s.stage(), Stage::Aborted);
    assert_eq!(retired(&a).len(), N);
    assert!(s.p.reason.contains("expired"), "{}", s.p.reason);
    assert_eq!(s.p.target.id, 1);
}

#[test]
fn a_new_worker_that_dies_fails_the_prepare_and_the_old_one_serves() {
    let mut s = Sim::serving();
    s.at(1000);
    s.prepare("broken");
    let id = s.of(2, WorkerPhase::Starting)[0];
    s.at(1050);
    let a = s.end(id, Ended::Exited(1));
    assert_eq!(s.stage(), Stage::Failed);
    let old = s.of(1, WorkerPhase::Ready);
    assert_eq!(old.len(), N);
    let r = retired(&a);
    assert_eq!(r.len(), N, "every new one goes: {a:?}");
    assert!(r.iter().all(|id| !old.contains(id)), "no old one goes");
    assert_eq!(s.p.target.id, 1);
    assert_eq!(s.p.reload, Reload::None, "not a failed reload");
    assert_eq!(s.p.reloads.failed, 0, "not counted as one");
    assert!(s.p.reason.contains("exited 1"), "{}", s.p.reason);
    assert_eq!(s.of(1, WorkerPhase::Ready).len(), N);
}

#[test]
fn a_hup_during_a_prepare_is_refused_and_the_prepare_goes_on() {
    let mut s = prepared();
    let a = s.p.handle(
        s.now,
        Event::Hup {
            resolve: &mut || Ok(release("r3")),
        },
    );
    assert_eq!(s.p.newest, 3, "the HUP has its answer: generation grows");
    assert_eq!(s.p.reload, Reload::Failed);
    assert_eq!(s.p.reloads.failed, 1);
    assert!(s.p.reason.contains("HUP refused"), "{}", s.p.reason);
    assert!(a.iter().all(|a| !matches!(a, Action::Start { .. })));
    assert_eq!(s.stage(), Stage::Prepared);
    assert_eq!(s.p.target.id, 2);
    s.commit(None);
    s.stopped_ones_exit();
    assert_eq!(s.stage(), Stage::Committed);
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(2));
}

#[test]
fn a_second_prepare_or_one_during_a_reload_is_refused() {
    let mut s = prepared();
    s.prepare("r3");
    assert_eq!(s.p.two_phase.last, "prepare refused");
    assert_eq!(s.p.two_phase.generation, 2);
    assert_eq!(s.p.newest, 2);
    let mut s = Sim::serving();
    s.p.handle(
        s.now,
        Event::Hup {
            resolve: &mut || Ok(release("r2")),
        },
    );
    s.prepare("r3");
    assert!(s.p.reason.contains("reload"), "{}", s.p.reason);
    assert_eq!(s.stage(), Stage::None);
}

#[test]
fn a_prepare_that_cannot_resolve_the_pin_fails_at_once() {
    let mut s = Sim::serving();
    let wall = s.wall();
    let a = s.p.handle(
        s.now,
        Event::Prepare {
            wall,
            resolve: &mut || Err("no such file".to_string()),
        },
    );
    assert_eq!(s.stage(), Stage::Failed);
    assert_eq!(s.p.two_phase.generation, 2);
    assert!(a.iter().all(|a| !matches!(a, Action::Start { .. })));
}

#[test]
fn abort_after_the_switch_began_is_refused() {
    let mut s = prepared();
    s.commit(None);
    s.abort();
    assert_eq!(s.p.two_phase.last, "abort refused");
    assert_eq!(s.stage(), Stage::Committing);
    s.stopped_ones_exit();
    assert_eq!(s.stage(), Stage::Committed);
}

#[test]
fn a_commit_whose_instant_is_past_switches_now_and_says_how_late() {
    let mut s = prepared();
    s.at(3000);
    let a = s.commit(Some(2750));
    assert_eq!(retired(&a).len(), N, "switched at once: {a:?}");
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Warn(m) if m.contains("was 250 ms past"))),
        "{a:?}"
    );
}
