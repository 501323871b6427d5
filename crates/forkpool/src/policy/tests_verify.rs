//! The verified switch (policy/verify.rs) without processes: a fake clock,
//! pids handed out here; each transition of `verify=` on its own.

use super::sim::*;
use super::*;
use crate::two_phase::Stage;
use crate::verify::VerifyStage;

const WALL: f64 = 1_764_245_000.0;
const TIMEOUT: Duration = Duration::from_secs(5);

trait Verified {
    fn verified() -> Self;
    fn all_ready(&mut self, gen: u64) -> Vec<Action>;
    fn switched() -> Self;
    fn command(&mut self, e: fn(f64) -> Event<'static>) -> Vec<Action>;
    fn prepare(&mut self, to: &str) -> Vec<Action>;
    fn one_draining() -> (Self, WorkerId)
    where
        Self: Sized;
    fn stage(&self) -> VerifyStage;
    fn parked(&self) -> Vec<WorkerId>;
    fn parked_all(&mut self) -> Vec<Action>;
    fn status(&self, key: &str) -> String;
}

impl Verified for Sim {
    /// Generation 1 whole and serving, cutover with `-C` and
    /// `--confirm-timeout 5000`.
    fn verified() -> Sim {
        let mut set = settings(Mode::Cutover, Default::default());
        set.confirm_timeout = Some(TIMEOUT);
        let (mut p, _) = Policy::new(set, release("r1"), N);
        p.two_phase.control = Some(PathBuf::from("/run/app/control"));
        let mut s = Sim::start(p, Vec::new());
        s.at(100);
        s.all_ready(1);
        assert_eq!(s.p.serving.as_ref().map(|g| g.id), Some(1));
        assert_eq!(s.status("verify"), "none");
        s
    }

    fn all_ready(&mut self, gen: u64) -> Vec<Action> {
        let mut out = Vec::new();
        for id in self.of(gen, WorkerPhase::Starting) {
            out.extend(self.ready(&[id]));
        }
        out
    }

    /// A HUP to r2 at 1 s, its workers ready at 1.2 s: switched, 1 parked.
    fn switched() -> Sim {
        let mut s = Sim::verified();
        s.at(1000);
        let a = s.hup_then_step(release("r2"));
        s.feed(a);
        s.at(1200);
        s.all_ready(2);
        assert_eq!(s.stage(), VerifyStage::Pending);
        let a = s.parked_all();
        assert!(
            a.iter()
                .any(|a| matches!(a, Action::Release { generation: 2, .. })),
            "{a:?}"
        );
        s
    }

    /// Every parked worker's group seen stopped (TSTP's default action).
    fn parked_all(&mut self) -> Vec<Action> {
        let mut out = Vec::new();
        for id in self.parked() {
            let a = self.p.handle(self.now, Event::GroupStopped(id));
            out.extend(self.with_step(a));
        }
        out
    }

    fn command(&mut self, e: fn(f64) -> Event<'static>) -> Vec<Action> {
        let wall = WALL + (self.now - self.t0).as_secs_f64();
        let a = self.p.handle(self.now, e(wall));
        self.with_step(a)
    }

    fn stage(&self) -> VerifyStage {
        self.p.verify.stage
    }

    /// `prepare` to `to`, then a step (fed).
    fn prepare(&mut self, to: &str) -> Vec<Action> {
        let wall = WALL + (self.now - self.t0).as_secs_f64();
        let a = self.p.handle(
            self.now,
            Event::Prepare {
                wall,
                resolve: &mut || Ok(release(to)),
            },
        );
        self.with_step(a)
    }

    /// A HUP to r2 whose workers are all ready at 1.2 s while an old worker
    /// (retired before, still alive) drains: parked, not released yet.
    fn one_draining() -> (Sim, WorkerId) {
        let mut s = Sim::verified();
        let draining = s.of(1, WorkerPhase::Ready)[0];
        s.p.retire(draining, s.now, Why::Replaced);
        s.at(1000);
        let a = s.hup_then_step(release("r2"));
        s.feed(a);
        s.at(1200);
        let mut a = s.all_ready(2);
        a.extend(s.parked_all());
        assert!(
            !a.iter().any(|a| matches!(a, Action::Release { .. })),
            "{a:?}"
        );
        (s, draining)
    }

    fn parked(&self) -> Vec<WorkerId> {
        let ws = self.p.workers.iter();
        ws.filter(|w| w.parked).map(|w| w.id).collect()
    }

    fn status(&self, key: &str) -> String {
        let text = crate::status::text(&self.p);
        let want = format!("{key}=");
        let line = text.lines().find(|l| l.starts_with(&want));
        line.map(|l| l[want.len()..].to_string())
            .unwrap_or_default()
    }
}

fn confirm(wall: f64) -> Event<'static> {
    Event::Confirm { wall }
}

fn revert(wall: f64) -> Event<'static> {
    Event::Revert { wall }
}

fn holds(a: &[Action]) -> Vec<WorkerId> {
    a.iter()
        .filter_map(|a| match a {
            Action::Hold { worker } => Some(*worker),
            _ => None,
        })
        .collect()
}

fn starts(a: &[Action]) -> Vec<u64> {
    a.iter()
        .filter_map(|a| match a {
            Action::Start { generation, .. } => Some(generation.id),
            _ => None,
        })
        .collect()
}

fn parks(a: &[Action]) -> Vec<WorkerId> {
    a.iter()
        .filter_map(|a| match a {
            Action::Park { worker } => Some(*worker),
            _ => None,
        })
        .collect()
}

fn released(a: &[Action]) -> bool {
    a.iter().any(|a| matches!(a, Action::Release { .. }))
}

#[test]
fn the_switch_parks_the_old_generation_and_releases_the_new_one_once_none_accepts() {
    let mut s = Sim::verified();
    let old = s.of(1, WorkerPhase::Ready);
    s.at(1000);
    let a = s.hup_then_step(release("r2"));
    s.feed(a);
    s.at(1200);
    let a = s.all_ready(2);
    // The park signal (TSTP) to each old group, never the stop signal; no
    // release yet: a process sent a signal stops when it next runs.
    assert_eq!(parks(&a), old);
    assert!(retired(&a).is_empty() && !released(&a), "{a:?}");
    assert_eq!(s.parked(), old);
    assert_eq!(s.status("parking"), "3");
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(1));
    assert_eq!(s.p.next_deadline(), Some(s.now + crate::verify::PARK_BOUND));
    // Two seen stopped as whole groups, the third says `parked` (it
    // cooperates: nothing accepted, nothing in hand): STOP for it, release.
    s.at(1201);
    for &id in &old[..2] {
        let a = s.p.handle(s.now, Event::GroupStopped(id));
        let a = s.with_step(a);
        assert!(!released(&a) && holds(&a).is_empty(), "{a:?}");
    }
    assert_eq!(s.status("parking"), "1");
    s.at(1202);
    let a = s.p.handle(s.now, Event::Parked(old[2]));
    let a = s.with_step(a);
    assert_eq!(holds(&a), vec![old[2]]);
    let release = a.iter().position(|a| matches!(a, Action::Release { .. }));
    let hold = a.iter().position(|a| matches!(a, Action::Hold { .. }));
    assert!(hold < release, "{a:?}");
    // Said by a worker not parked: nothing.
    let new = s.of(2, WorkerPhase::Ready);
    let a = s.p.handle(s.now, Event::Parked(new[0]));
    assert!(holds(&a).is_empty(), "{a:?}");
    assert_eq!(s.parked(), old);
    assert_eq!(s.p.reload, Reload::Ok);
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(2));
    assert_eq!((s.p.ready_count(), s.p.held_count()), (N, 0));
    assert_eq!(s.p.verify.deadline, Some(s.now + TIMEOUT));
    assert_eq!(s.p.next_deadline(), Some(s.now + TIMEOUT));
    for (k, v) in [
        ("verify", "pending"),
        ("verify_generation", "2"),
        ("parked_generation", "1"),
        ("parked", "3"),
        ("parking", "0"),
        ("held", "0"),
        ("serving_generation", "2"),
        ("reload", "ok"),
    ] {
        assert_eq!(s.status(k), v, "{k}");
    }
    let deadline: f64 = s.status("verify_deadline").parse().unwrap();
    assert!(deadline > WALL, "{deadline}");
    let text = crate::status::text(&s.p);
    assert_eq!(text.matches(" parked age=").count(), N, "{text}");
}

#[test]
fn a_parked_worker_not_stopped_gets_stop_at_the_bound_and_the_release_comes_at_twice_it() {
    let mut s = Sim::verified();
    let old = s.of(1, WorkerPhase::Ready);
    s.at(1000);
    let a = s.hup_then_step(release("r2"));
    s.feed(a);
    s.at(1200);
    s.all_ready(2);
    for &id in &old[1..] {
        let a = s.p.handle(s.now, Event::GroupStopped(id));
        s.with_step(a);
    }
    // One worker catches TSTP and goes on: STOP at 1 s, then still waited for.
    s.at(2199);
    let a = s.tick();
    assert!(holds(&a).is_empty() && !released(&a), "{a:?}");
    s.at(2200);
    let a = s.tick();
    assert_eq!(holds(&a), vec![old[0]]);
    assert!(!released(&a), "{a:?}");
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Warn(m) if m.contains("not stopped within 1.00s of TSTP: sent STOP"))),
        "{a:?}"
    );
    assert_eq!(s.p.next_deadline(), Some(s.now + crate::verify::PARK_BOUND));
    // Seen stopped after the STOP: released.
    s.at(2201);
    let a = s.p.handle(s.now, Event::GroupStopped(old[0]));
    let a = s.with_step(a);
    assert!(released(&a), "{a:?}");
    // Never seen stopped (uninterruptible sleep): released at 2 s anyway.
    let mut s = Sim::verified();
    s.at(1000);
    let a = s.hup_then_step(release("r2"));
    s.feed(a);
    s.at(1200);
    s.all_ready(2);
    s.at(2200);
    let a = s.tick();
    assert_eq!(holds(&a).len(), N, "{a:?}");
    s.at(3199);
    assert!(!released(&s.tick()));
    s.at(3200);
    let a = s.tick();
    assert!(released(&a), "{a:?}");
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Warn(m) if m.contains("released anyway"))),
        "{a:?}"
    );
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(2));
}

#[test]
fn a_parked_worker_that_says_stopping_is_not_waited_for_and_gets_stop_only_once_parked() {
    let mut s = Sim::verified();
    let old = s.of(1, WorkerPhase::Ready);
    s.at(1000);
    let a = s.hup_then_step(release("r2"));
    s.feed(a);
    s.at(1200);
    s.all_ready(2);
    for &id in &old[1..] {
        let a = s.p.handle(s.now, Event::GroupStopped(id));
        s.with_step(a);
    }
    // old[0] cooperates and still finishes a request: it stopped accepting
    // (`stopping`): the new generation is released, and no STOP for it.
    s.at(1203);
    let a = s.p.handle(s.now, Event::StoppedAccepting(old[0]));
    let a = s.with_step(a);
    assert!(released(&a), "{a:?}");
    assert!(holds(&a).is_empty(), "{a:?}");
    assert_eq!(s.status("parking"), "0");
    // The park's bound passes: still no STOP (it would freeze the request).
    s.at(2300);
    let a = s.tick();
    assert!(holds(&a).is_empty(), "{a:?}");
    // Its request answered, it says `parked`: STOP now.
    s.at(2400);
    let a = s.p.handle(s.now, Event::Parked(old[0]));
    assert_eq!(holds(&s.with_step(a)), vec![old[0]]);
    // A revert continues it with the rest: it serves again, and the next
    // switch waits for it again.
    s.at(2500);
    let a = s.command(revert);
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Release { generation: 1, held, .. } if *held == old)),
        "{a:?}"
    );
    for id in s.of(2, WorkerPhase::Stopping) {
        s.end(id, Ended::Exited(0));
    }
    s.at(3000);
    let a = s.hup_then_step(release("r3"));
    s.feed(a);
    s.at(3200);
    let a = s.all_ready(3);
    assert_eq!(parks(&a), old);
    assert!(!released(&a), "{a:?}");
    assert_eq!(s.status("parking"), "3");
}

#[test]
fn a_parked_worker_that_dies_while_parking_is_not_waited_for() {
    let mut s = Sim::verified();
    let old = s.of(1, WorkerPhase::Ready);
    s.at(1000);
    let a = s.hup_then_step(release("r2"));
    s.feed(a);
    s.at(1200);
    s.all_ready(2);
    for &id in &old[1..] {
        let a = s.p.handle(s.now, Event::GroupStopped(id));
        s.with_step(a);
    }
    s.at(1210);
    let a = s.end(old[0], Ended::Killed(Signal::SIGKILL));
    assert!(released(&a), "{a:?}");
    assert_eq!(s.status("parking"), "0");
}

#[test]
fn a_revert_while_parking_sends_cont_to_the_parked_and_ends_the_park() {
    let mut s = Sim::verified();
    let old = s.of(1, WorkerPhase::Ready);
    s.at(1000);
    let a = s.hup_then_step(release("r2"));
    s.feed(a);
    s.at(1200);
    s.all_ready(2);
    s.at(1205);
    let a = s.command(revert);
    // CONT for every parked one (a cooperating one accepts again on it),
    // whether it was seen stopped or not.
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Release { generation: 1, held, .. } if *held == old)),
        "{a:?}"
    );
    assert_eq!(s.p.verify.parking, None);
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(1));
    // A `parked` said late changes nothing.
    let a = s.p.handle(s.now, Event::Parked(old[0]));
    assert!(holds(&a).is_empty(), "{a:?}");
}

#[test]
fn confirm_retires_the_parked_generation_as_a_cutover_does() {
    let mut s = Sim::switched();
    let old = s.parked();
    s.at(1500);
    let a = s.command(confirm);
    assert_eq!(retired(&a), old);
    for x in &a {
        if let Action::Retire { signal, cont, .. } = x {
            assert_eq!((*signal, *cont), (Signal::SIGTERM, true), "{a:?}");
        }
    }
    assert_eq!(s.stage(), VerifyStage::Confirmed);
    assert_eq!(s.status("verify"), "confirmed");
    assert_eq!(s.status("parked_generation"), "");
    assert_eq!(s.status("verify_deadline"), "");
    assert_eq!(s.status("command"), "1 confirm accepted");
    assert!(s.parked().is_empty());
    assert_eq!(s.p.next_deadline(), Some(s.now + Duration::from_secs(10)));
    // Nothing reverts later.
    s.at(10_000);
    let a = s.tick();
    assert!(starts(&a).is_empty() && holds(&a).is_empty(), "{a:?}");
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(2));
}

#[test]
fn revert_holds_the_new_releases_the_parked_then_retires_the_new() {
    let mut s = Sim::switched();
    let old = s.parked();
    let new = s.of(2, WorkerPhase::Ready);
    s.at(1300);
    let a = s.command(revert);
    // (1) the new generation stopped, (2) the parked one released, (3) the new one retired.
    let hold = a.iter().rposition(|a| matches!(a, Action::Hold { .. }));
    let rel = a
        .iter()
        .position(|a| matches!(a, Action::Release { generation: 1, held, .. } if *held == old));
    let retire = a.iter().position(|a| matches!(a, Action::Retire { .. }));
    assert!(hold.is_some() && hold < rel && rel < retire, "{a:?}");
    assert_eq!(holds(&a), new);
    assert_eq!(retired(&a), new);
    assert!(starts(&a).is_empty(), "no new process: {a:?}");
    assert_eq!(s.stage(), VerifyStage::Reverted);
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(1));
    assert_eq!(s.p.ready_count(), N);
    for (k, v) in [
        ("verify", "reverted"),
        ("verify_generation", "2"),
        ("parked_generation", ""),
        ("serving_generation", "1"),
        ("reason", "revert requested"),
        ("command", "1 revert accepted"),
        ("release", "/srv/releases/r1"),
    ] {
        assert_eq!(s.status(k), v, "{k}");
    }
    // The same workers serve: the parked ones, no longer held.
    assert_eq!(s.of(1, WorkerPhase::Ready), old);
    assert!(s.p.workers.iter().all(|w| !w.held && !w.parked));
}

#[test]
fn no_confirm_within_the_timeout_reverts_by_itself_and_says_why() {
    let mut s = Sim::switched();
    let old = s.parked();
    s.at(1200 + 4999);
    let a = s.tick();
    assert!(holds(&a).is_empty() && retired(&a).is_empty(), "{a:?}");
    assert_eq!(s.stage(), VerifyStage::Pending);
    s.at(1200 + 5000);
    let a = s.tick();
    assert_eq!(retired(&a).len(), N, "{a:?}");
    assert_eq!(s.stage(), VerifyStage::Reverted);
    assert_eq!(s.of(1, WorkerPhase::Ready), old);
    assert_eq!(
        s.status("reason"),
        "generation 2 not confirmed within 5.00s: reverted"
    );
    // A confirm too late is refused, and changes nothing.
    let a = s.command(confirm);
    assert!(retired(&a).is_empty(), "{a:?}");
    assert_eq!(s.status("command"), "1 confirm refused");
    assert!(s.status("reason").contains("verify=reverted"));
}

#[test]
fn confirm_or_revert_with_nothing_pending_is_refused_and_changes_nothing() {
    let mut s = Sim::verified();
    let before: Vec<_> = s.p.workers.iter().map(|w| (w.id, w.phase)).collect();
    let a = s.command(revert);
    assert!(retired(&a).is_empty() && holds(&a).is_empty(), "{a:?}");
    assert_eq!(s.status("command"), "1 revert refused");
    assert_eq!(
        s.status("reason"),
        "revert refused: no generation awaits confirm or revert (verify=none)"
    );
    s.command(confirm);
    assert_eq!(s.status("command"), "2 confirm refused");
    let after: Vec<_> = s.p.workers.iter().map(|w| (w.id, w.phase)).collect();
    assert_eq!(before, after);
    // Without --confirm-timeout: refused too, and no verify keys.
    let (mut p, _) = Policy::new(settings(Mode::Cutover, Default::default()), None, 1);
    p.two_phase.control = Some(PathBuf::from("/run/app/control"));
    let mut plain = Sim::start(p, Vec::new());
    plain.command(confirm);
    assert!(plain.status("reason").contains("without --confirm-timeout"));
    assert!(!crate::status::text(&plain.p).contains("verify="));
}

#[test]
fn a_hup_or_a_prepare_while_pending_is_refused() {
    let mut s = Sim::switched();
    s.at(1300);
    let a = s.hup_then_step(release("r3"));
    assert!(starts(&a).is_empty(), "{a:?}");
    assert_eq!(s.p.reload, Reload::Failed);
    assert_eq!(s.p.newest, 3);
    assert_eq!(
        s.status("reason"),
        "HUP refused: generation 2 awaits confirm or revert"
    );
    let a = s.prepare("r3");
    assert!(starts(&a).is_empty(), "{a:?}");
    assert_eq!(s.status("command"), "1 prepare refused");
    assert_eq!(s.stage(), VerifyStage::Pending);
    assert_eq!(s.parked().len(), N);
    // A revert still brings generation 1 back.
    s.command(revert);
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(1));
}

#[test]
fn a_stop_while_pending_stops_the_parked_workers_too() {
    let mut s = Sim::switched();
    s.at(1300);
    let a = s.p.handle(
        s.now,
        Event::Stop {
            how: Stop::Graceful,
            signal: Signal::SIGTERM,
        },
    );
    assert_eq!(retired(&a).len(), 2 * N, "{a:?}");
    for x in &a {
        if let Action::Retire { worker, cont, .. } = x {
            let gen = s.p.worker(*worker).map(|w| w.generation);
            // The parked ones are stopped (SIGSTOP): CONT after the signal.
            assert_eq!(*cont, gen == Some(1), "{x:?}");
        }
    }
    assert_eq!(s.stage(), VerifyStage::None);
    assert!(s.parked().is_empty());
    assert_eq!(s.p.verify_deadline(), None);
    let ids: Vec<WorkerId> = s.p.workers.iter().map(|w| w.id).collect();
    for id in ids {
        s.end(id, Ended::Exited(0));
    }
    assert!(s.p.finished());
}

#[test]
fn a_parked_worker_that_dies_is_refilled_in_the_old_release_at_a_revert_only() {
    let mut s = Sim::switched();
    let old = s.parked();
    s.at(1300);
    let a = s.end(old[1], Ended::Killed(Signal::SIGKILL));
    assert!(starts(&a).is_empty(), "not while pending: {a:?}");
    assert_eq!(s.status("parked"), "2");
    s.at(1400);
    let a = s.command(revert);
    // Generation 1 again, in r1, in the dead worker's slot, accepting at once.
    let refill: Vec<_> = a
        .iter()
        .filter_map(|a| match a {
            Action::Start {
                slot,
                generation,
                hold,
                ..
            } => Some((*slot, generation.id, generation.release.clone(), *hold)),
            _ => None,
        })
        .collect();
    assert_eq!(refill, vec![(1, 1, release("r1"), false)]);
    assert_eq!(s.p.ready_count(), N - 1);
    s.at(1500);
    let id = s.of(1, WorkerPhase::Starting);
    s.ready(&id);
    assert_eq!(s.p.ready_count(), N);
    assert_eq!(s.status("serving_generation"), "1");
}

#[test]
fn a_worker_of_the_new_generation_that_dies_while_pending_is_replaced_in_it() {
    let mut s = Sim::switched();
    let new = s.of(2, WorkerPhase::Ready);
    s.at(2500);
    let a = s.end(new[0], Ended::Exited(1));
    assert_eq!(starts(&a), vec![2], "{a:?}");
    assert_eq!(s.stage(), VerifyStage::Pending);
    // A revert then retires the new one that is still starting, too.
    let a = s.command(revert);
    assert_eq!(retired(&a).len(), N, "{a:?}");
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(1));
}

#[test]
fn a_two_phase_commit_parks_too() {
    let mut s = Sim::verified();
    s.at(1000);
    s.prepare("r2");
    s.at(1200);
    s.all_ready(2);
    assert_eq!(s.p.two_phase.stage, Stage::Prepared);
    assert!(s.parked().is_empty());
    s.at(1300);
    let a = s.p.handle(
        s.now,
        Event::Commit {
            wall: WALL + 1.3,
            at: None,
        },
    );
    let a = s.with_step(a);
    assert!(retired(&a).is_empty(), "{a:?}");
    s.parked_all();
    assert_eq!(s.p.two_phase.stage, Stage::Committed);
    assert_eq!(s.stage(), VerifyStage::Pending);
    assert_eq!(s.parked().len(), N);
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(2));
    assert_eq!(s.status("command"), "2 commit accepted");
    s.command(revert);
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(1));
    assert_eq!(s.status("command"), "3 revert accepted");
}

#[test]
fn each_switch_is_verified_again() {
    let mut s = Sim::switched();
    s.at(1500);
    s.command(confirm);
    let olds = s.of(1, WorkerPhase::Stopping);
    for id in olds {
        s.end(id, Ended::Exited(0));
    }
    s.at(2000);
    let a = s.hup_then_step(release("r3"));
    s.feed(a);
    s.at(2200);
    s.all_ready(3);
    assert_eq!(s.stage(), VerifyStage::Pending);
    assert_eq!(s.status("parked_generation"), "2");
    assert_eq!(s.status("verify_generation"), "3");
    s.command(revert);
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(2));
    assert_eq!(s.status("release"), "/srv/releases/r2");
}

#[test]
fn a_slot_added_while_pending_is_of_the_new_generation_and_of_the_old_after_a_revert() {
    let mut s = Sim::switched();
    s.at(1300);
    let a = s.p.handle(s.now, Event::AddSlot);
    let a = s.with_step(a);
    assert_eq!(starts(&a), vec![2], "{a:?}");
    s.at(1400);
    let a = s.command(revert);
    // The new generation's worker in slot 3 goes; generation 1 fills slot 3.
    assert_eq!(starts(&a), vec![1], "{a:?}");
    assert_eq!(retired(&a).len(), N + 1, "{a:?}");
    s.at(1500);
    let id = s.of(1, WorkerPhase::Starting);
    s.ready(&id);
    assert_eq!(s.p.ready_count(), N + 1);
}

#[test]
fn the_deadline_counts_from_the_release_not_from_the_park() {
    // An old worker draining (retired earlier, still alive) delays the release.
    let (mut s, draining) = Sim::one_draining();
    assert_eq!(s.stage(), VerifyStage::Pending);
    assert_eq!(s.parked().len(), N - 1);
    assert_eq!(s.p.verify.deadline, None);
    assert_eq!(s.status("verify_deadline"), "");
    s.at(3000);
    let a = s.end(draining, Ended::Exited(0));
    assert!(
        a.iter()
            .any(|a| matches!(a, Action::Release { generation: 2, .. })),
        "{a:?}"
    );
    assert_eq!(s.p.verify.deadline, Some(s.now + TIMEOUT));
    // Reverted: the dead slot is refilled in generation 1.
    let a = s.command(revert);
    assert_eq!(starts(&a), vec![1], "{a:?}");
}

#[test]
fn a_revert_before_the_release_fails_the_reload_and_a_hup_is_taken_again() {
    let (mut s, _) = Sim::one_draining();
    assert!(matches!(s.p.reload, Reload::Running { .. }));
    s.at(1300);
    let a = s.command(revert);
    assert_eq!(retired(&a).len(), N, "{a:?}");
    assert_eq!(s.p.reload, Reload::Failed);
    assert_eq!(s.status("reason"), "revert requested");
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(1));
    s.at(1400);
    let a = s.hup_then_step(release("r3"));
    assert_eq!(starts(&a), vec![3; N], "{a:?}");
}
