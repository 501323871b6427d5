//! The rule without processes: a fake clock (an `Instant` base plus
//! offsets), pids handed out by the test, readiness and ends told by it.

use super::sim::*;
use super::*;

fn settings(mode: Mode) -> Settings {
    super::sim::settings(mode, Default::default())
}

/// How these tests set up and drive a host.
trait Rules {
    fn new(mode: Mode) -> Self;
    fn with(s: Settings, n: usize) -> Self;
    fn serving(mode: Mode) -> Self;
    fn all_ready(&mut self, gen: u64) -> Vec<Action>;
    fn serving_size(&self) -> usize;
    fn hup(&mut self, to: &str) -> Vec<Action>;
}

impl Rules for Sim {
    fn new(mode: Mode) -> Sim {
        Sim::with(settings(mode), N)
    }

    fn with(s: Settings, n: usize) -> Sim {
        let (p, log) = Policy::new(s, release("r1"), n);
        Sim::start(p, log)
    }

    /// Generation 1 whole and serving.
    fn serving(mode: Mode) -> Sim {
        let mut s = Sim::new(mode);
        s.at(100);
        s.all_ready(1);
        assert_eq!(s.p.serving.as_ref().map(|g| g.id), Some(1));
        s
    }

    /// Every starting worker of `gen` says it is ready, one at a time; the
    /// ready count never drops below N on the way (but in a cutover, where
    /// the switch is a moment with none accepting).
    fn all_ready(&mut self, gen: u64) -> Vec<Action> {
        let mut out = Vec::new();
        for id in self.of(gen, WorkerPhase::Starting) {
            out.extend(self.ready(&[id]));
            if self.p.settings.mode != Mode::Cutover {
                assert!(self.p.ready_count() >= N.min(self.serving_size()));
            }
        }
        out
    }

    fn serving_size(&self) -> usize {
        if self.p.serving.is_some() {
            N
        } else {
            0
        }
    }

    fn hup(&mut self, to: &str) -> Vec<Action> {
        let a = self.p.handle(
            self.now,
            Event::Hup {
                resolve: &mut || Ok(release(to)),
            },
        );
        self.with_step(a)
    }
}

fn starts(a: &[Action]) -> Vec<(usize, u64, bool)> {
    a.iter()
        .filter_map(|a| match a {
            Action::Start {
                slot,
                generation,
                hold,
                ..
            } => Some((*slot, generation.id, *hold)),
            _ => None,
        })
        .collect()
}

fn released(a: &[Action]) -> Option<(u64, Vec<WorkerId>)> {
    a.iter().find_map(|a| match a {
        Action::Release {
            generation, held, ..
        } => Some((*generation, held.clone())),
        _ => None,
    })
}

fn warned(a: &[Action], text: &str) -> bool {
    a.iter()
        .any(|a| matches!(a, Action::Warn(m) if m.contains(text)))
}

#[test]
fn rule_1_every_slot_gets_a_worker_of_the_target_generation() {
    let s = Sim::new(Mode::Rolling);
    assert_eq!(
        starts(&s.log),
        vec![(0, 1, false), (1, 1, false), (2, 1, false)]
    );
    assert_eq!(s.of(1, WorkerPhase::Starting).len(), N);
    assert!(s.p.workers.iter().all(|w| w.pid > 0));
    assert_eq!(s.p.serving, None);
}

#[test]
fn rule_3_a_wholly_ready_generation_serves_and_not_before() {
    let mut s = Sim::new(Mode::Rolling);
    let ids = s.of(1, WorkerPhase::Starting);
    s.ready(&ids[..2]);
    assert_eq!(s.p.serving, None);
    s.ready(&ids[2..]);
    assert_eq!(s.p.serving.as_ref().map(|g| g.id), Some(1));
    assert_eq!(s.p.ready_count(), N);
    assert!(retired(&s.log).is_empty());
}

#[test]
fn rule_2_rolling_retires_one_old_worker_per_new_ready_one() {
    let mut s = Sim::serving(Mode::Rolling);
    s.at(2000);
    let a = s.hup("r2");
    assert_eq!(
        starts(&a),
        vec![(0, 2, false), (1, 2, false), (2, 2, false)]
    );
    assert!(
        retired(&a).is_empty(),
        "nothing old goes before a new one is ready"
    );
    assert_eq!(s.p.reload, Reload::Running { since: s.now });
    let new = s.of(2, WorkerPhase::Starting);
    for (k, id) in new.iter().enumerate() {
        let a = s.ready(&[*id]);
        assert_eq!(retired(&a).len(), 1, "one old worker for new worker {k}");
        assert_eq!(s.p.ready_count(), N);
    }
    assert_eq!(s.of(1, WorkerPhase::Stopping).len(), N);
    assert_eq!(s.p.reload, Reload::Ok);
    assert_eq!((s.p.reloads.ok, s.p.reloads.failed), (1, 0));
    assert_eq!(
        s.p.serving.as_ref().and_then(|g| g.release.clone()),
        release("r2")
    );
}

#[test]
fn rule_2_all_at_once_retires_the_old_generation_when_the_new_one_is_whole() {
    let mut s = Sim::serving(Mode::AllAtOnce);
    s.hup("r2");
    let new = s.of(2, WorkerPhase::Starting);
    for id in &new[..N - 1] {
        assert!(retired(&s.ready(&[*id])).is_empty());
    }
    let a = s.ready(&new[N - 1..]);
    assert_eq!(retired(&a).len(), N);
    assert_eq!(s.of(1, WorkerPhase::Stopping).len(), N);
    assert_eq!(s.p.reload, Reload::Ok);
}

#[test]
fn rule_2_an_outgoing_worker_that_is_not_ready_is_retired_at_once() {
    let mut s = Sim::serving(Mode::Rolling);
    // A serving worker crashes; its replacement is still starting at the HUP.
    s.at(5000);
    let victim = s.of(1, WorkerPhase::Ready)[0];
    let a = s.end(victim, Ended::Exited(1));
    assert!(warned(&a, "restarting in"));
    let replacement = s.of(1, WorkerPhase::Starting);
    assert_eq!(replacement.len(), 1);
    let a = s.hup("r2");
    assert_eq!(
        retired(&a),
        replacement,
        "not ready: not serving, goes at once"
    );
    assert_eq!(s.p.ready_count(), N - 1, "the ready ones stay");
}

#[test]
fn rule_4_cutover_holds_the_new_generation_and_releases_it_when_the_old_one_is_gone() {
    let mut s = Sim::serving(Mode::Cutover);
    let a = s.hup("r2");
    assert!(starts(&a).iter().all(|&(_, g, hold)| g == 2 && hold));
    let new = s.of(2, WorkerPhase::Starting);
    let a = s.ready(&new[..1]);
    assert!(a.contains(&Action::Hold { worker: new[0] }));
    assert!(
        retired(&a).is_empty(),
        "cutover retires nothing before the whole is ready"
    );
    assert_eq!(
        s.p.ready_count(),
        N,
        "a held worker does not count as accepting"
    );
    let a = s.ready(&new[1..]);
    let old: Vec<WorkerId> = s.of(1, WorkerPhase::Stopping);
    assert_eq!(retired(&a).len(), N);
    assert_eq!(old.len(), N);
    assert_eq!(s.p.held_count(), N);
    assert!(released(&a).is_none(), "not before the old ones are gone");
    assert!(matches!(s.p.reload, Reload::Running { .. }));
    assert_eq!(s.p.shown_serving().map(|g| g.id), Some(1));
    for id in &old[..N - 1] {
        assert!(released(&s.end(*id, Ended::Exited(0))).is_none());
    }
    s.at(2500);
    let a = s.end(old[N - 1], Ended::Exited(0));
    assert_eq!(released(&a), Some((2, new.clone())));
    assert_eq!(s.p.held_count(), 0);
    assert_eq!(s.p.ready_count(), N);
    assert_eq!(s.p.reload, Reload::Ok);
    assert_eq!(s.p.accepting.id, 2);
}

#[test]
fn cutover_an_old_worker_that_does_not_stop_is_killed_then_the_release_follows() {
    let mut s = Sim::serving(Mode::Cutover);
    s.at(1000);
    s.hup("r2");
    s.all_ready(2);
    let old = s.of(1, WorkerPhase::Stopping);
    s.at(1000 + 9_999);
    assert!(!s.tick().iter().any(|a| matches!(a, Action::Kill { .. })));
    assert_eq!(
        s.p.next_deadline(),
        Some(s.t0 + Duration::from_millis(11_000))
    );
    s.at(11_000);
    let a = s.tick();
    let kills: Vec<_> = a
        .iter()
        .filter(|a| matches!(a, Action::Kill { .. }))
        .collect();
    assert_eq!(kills.len(), N);
    assert!(warned(&a, "did not stop in 10.0s: sent KILL"));
    for id in &old[..N - 1] {
        s.end(*id, Ended::Killed(Signal::SIGKILL));
    }
    let a = s.end(old[N - 1], Ended::Killed(Signal::SIGKILL));
    assert_eq!(released(&a).map(|r| r.0), Some(2));
}

#[test]
fn a_new_generation_that_dies_before_ready_is_abandoned_and_the_old_one_comes_back() {
    let mut s = Sim::serving(Mode::Rolling);
    s.hup("r2");
    let new = s.of(2, WorkerPhase::Starting);
    // One new worker ready: one old one was retired for it.
    let a = s.ready(&new[..1]);
    let gone_old = retired(&a);
    assert_eq!(gone_old.len(), 1);
    s.at(300);
    let a = s.end(new[1], Ended::Exited(1));
    assert!(warned(&a, "reload to generation 2 failed"));
    assert_eq!(s.p.reload, Reload::Failed);
    assert_eq!((s.p.reloads.ok, s.p.reloads.failed), (0, 1));
    assert!(s.p.reason.contains("before it was ready"));
    assert_eq!(s.p.target.id, 1);
    // The old generation's missing slot is started again in the old release...
    assert_eq!(starts(&a), vec![(0, 1, false)]);
    // ... the new not-ready worker goes at once (and the dead one is marked
    // stopping), the ready one waits for the old one to be back.
    assert_eq!(retired(&a), vec![new[1], new[2]]);
    assert_eq!(
        s.p.worker(new[0]).map(|w| w.phase),
        Some(WorkerPhase::Ready)
    );
    let back = s.of(1, WorkerPhase::Starting);
    let a = s.ready(&back);
    assert_eq!(retired(&a), vec![new[0]]);
    assert_eq!(s.p.ready_count(), N);
    assert_eq!(s.p.serving.as_ref().map(|g| g.id), Some(1));
    // The broken code is not retried.
    s.at(5000);
    assert!(starts(&s.tick()).is_empty());
}

#[test]
fn a_new_generation_that_misses_the_readiness_deadline_is_abandoned() {
    let mut s = Sim::serving(Mode::AllAtOnce);
    s.at(1000);
    s.hup("r2");
    s.at(1000 + 29_999);
    assert!(s.tick().is_empty());
    assert_eq!(
        s.p.next_deadline(),
        Some(s.t0 + Duration::from_millis(31_000))
    );
    s.at(31_000);
    let a = s.tick();
    assert!(warned(&a, "not ready after 30.0s"));
    assert_eq!(s.p.reload, Reload::Failed);
    assert_eq!(s.of(2, WorkerPhase::Stopping).len(), N);
    assert_eq!(
        s.of(1, WorkerPhase::Ready).len(),
        N,
        "the old generation never stopped"
    );
}

/// A fork that took seconds (forkpool 12 s in the kernel's fork on a
/// busy machine) is not the worker's time: its readiness deadline starts
/// when the fork returned. Counted from the turn that asked for it, the
/// workers of a reload failed as "not ready after 12.3s" the moment forkpool
/// ran again, one of them forked a moment before.
#[test]
fn a_workers_readiness_deadline_starts_when_its_fork_returned() {
    let mut s = Sim::serving(Mode::AllAtOnce);
    s.at(1000);
    s.fork_takes = Duration::from_secs(2);
    s.hup("r2");
    s.at(1000 + 2_000 + 29_999);
    assert!(s.tick().is_empty());
    assert!(matches!(s.p.reload, Reload::Running { .. }));
    s.at(1000 + 2_000 + 30_000);
    let a = s.tick();
    assert!(warned(&a, "not ready after 30.0s"));
    assert_eq!(s.p.reload, Reload::Failed);
}

#[test]
fn a_hup_that_cannot_resolve_the_pin_fails_at_once_and_starts_nothing() {
    let mut s = Sim::serving(Mode::Rolling);
    let a = s.p.handle(
        s.now,
        Event::Hup {
            resolve: &mut || Err("unable to resolve current: gone".into()),
        },
    );
    assert!(warned(
        &a,
        "reload to generation 2 failed: unable to resolve"
    ));
    assert_eq!((s.p.newest, s.p.target.id), (2, 1));
    assert_eq!(s.p.reload, Reload::Failed);
    assert!(starts(&s.step()).is_empty());
}

#[test]
fn a_hup_during_a_reload_starts_over_with_the_newest_generation() {
    let mut s = Sim::serving(Mode::Rolling);
    s.hup("r2");
    let g2 = s.of(2, WorkerPhase::Starting);
    s.ready(&g2[..1]);
    let a = s.hup("r3");
    assert_eq!(s.p.target.id, 3);
    assert_eq!(starts(&a).len(), N);
    // The starting ones of generation 2 go at once; its ready one stays for now.
    assert_eq!(retired(&a), g2[1..].to_vec());
    assert_eq!(s.p.ready_count(), N);
    s.all_ready(3);
    assert_eq!(s.p.reload, Reload::Ok);
    assert_eq!(s.p.serving.as_ref().map(|g| g.id), Some(3));
    assert!(s.p.workers.iter().all(|w| w.generation == 3 || !w.live()));
}

#[test]
fn a_hup_during_a_cutover_before_the_switch_stops_the_held_workers() {
    let mut s = Sim::serving(Mode::Cutover);
    s.hup("r2");
    let g2 = s.of(2, WorkerPhase::Starting);
    s.ready(&g2[..2]);
    assert_eq!(s.p.held_count(), 2);
    let a = s.hup("r3");
    // Held or not, they never accepted: all of generation 2 goes, with SIGCONT.
    let mut r = retired(&a);
    r.sort();
    assert_eq!(r, g2);
    assert!(a
        .iter()
        .any(|a| matches!(a, Action::Retire { cont: true, .. })));
    assert_eq!(s.p.held_count(), 0);
    assert_eq!(s.of(1, WorkerPhase::Ready).len(), N);
}

#[test]
fn a_hup_during_a_cutovers_switch_keeps_the_switch_and_goes_on_to_the_newest() {
    let mut s = Sim::serving(Mode::Cutover);
    s.hup("r2");
    s.all_ready(2);
    let g2 = s.of(2, WorkerPhase::Ready);
    let old = s.of(1, WorkerPhase::Stopping);
    assert_eq!(s.p.serving.as_ref().map(|g| g.id), Some(2));
    let a = s.hup("r3");
    assert!(
        retired(&a).is_empty(),
        "generation 2 stays held: it is the serving one"
    );
    assert_eq!(s.p.held_count(), N);
    s.all_ready(3);
    // Generation 3 is whole before the old ones are gone: 2 is never released.
    assert_eq!(s.of(2, WorkerPhase::Stopping).len(), N);
    let mut last = Vec::new();
    for id in old.iter().chain(g2.iter()) {
        last = s.end(*id, Ended::Exited(0));
    }
    assert_eq!(released(&last).map(|r| r.0), Some(3));
    assert!(!s
        .log
        .iter()
        .any(|a| matches!(a, Action::Release { generation: 2, .. })));
    assert_eq!(s.p.reload, Reload::Ok);
}

#[test]
fn a_crash_during_a_cutovers_switch_is_replaced_held_and_released_with_the_others() {
    let mut s = Sim::serving(Mode::Cutover);
    s.hup("r2");
    s.all_ready(2);
    let old = s.of(1, WorkerPhase::Stopping);
    let g2 = s.of(2, WorkerPhase::Ready);
    s.at(400);
    let a = s.end(g2[1], Ended::Killed(Signal::SIGSEGV));
    assert!(
        !warned(&a, "failed"),
        "not a failed reload: the generation was whole"
    );
    assert!(warned(&a, "restarting in"));
    assert!(starts(&a).is_empty(), "the one-second rule first");
    s.at(1100);
    let a = s.tick();
    assert_eq!(
        starts(&a),
        vec![(1, 2, true)],
        "its replacement is held too"
    );
    let repl = s.of(2, WorkerPhase::Starting);
    s.ready(&repl);
    let mut last = Vec::new();
    for id in &old {
        last = s.end(*id, Ended::Exited(0));
    }
    let (gen, mut held) = released(&last).expect("released");
    held.sort();
    let mut want = vec![g2[0], g2[2], repl[0]];
    want.sort();
    assert_eq!((gen, held), (2, want));
    assert_eq!(s.p.reload, Reload::Ok);
}

#[test]
fn a_replacement_after_the_release_is_not_held() {
    let mut s = Sim::serving(Mode::Cutover);
    s.hup("r2");
    s.all_ready(2);
    for id in s.of(1, WorkerPhase::Stopping) {
        s.end(id, Ended::Exited(0));
    }
    s.at(60_000);
    let w = s.of(2, WorkerPhase::Ready)[0];
    let a = s.end(w, Ended::Exited(0));
    assert_eq!(starts(&a), vec![(0, 2, false)]);
    let repl = s.of(2, WorkerPhase::Starting);
    let a = s.ready(&repl);
    assert!(!a.iter().any(|a| matches!(a, Action::Hold { .. })));
}

#[test]
fn the_one_second_rule_and_the_back_off() {
    let mut st = settings(Mode::Rolling);
    st.backoff_max = Duration::from_secs(4);
    let mut s = Sim::with(st, 1);
    let mut waits = Vec::new();
    let mut t = 0;
    for _ in 0..4 {
        let id = s.of(1, WorkerPhase::Starting)[0];
        let started = s.p.worker(id).map(|w| w.started).unwrap_or(s.t0);
        t += 200;
        s.at(t);
        let a = s.end(id, Ended::Exited(1));
        assert!(starts(&a).is_empty(), "not at once");
        let next = s.p.next_deadline().expect("a start is due");
        waits.push((next - started).as_millis());
        t = (next - s.t0).as_millis() as u64;
        s.at(t - 1);
        assert!(starts(&s.tick()).is_empty());
        s.at(t);
        assert_eq!(starts(&s.tick()).len(), 1);
    }
    assert_eq!(waits, vec![1000, 2000, 4000, 4000]);
}

#[test]
fn a_ready_worker_that_exits_0_is_replaced_at_once() {
    let mut s = Sim::serving(Mode::Rolling);
    // after the one-second minimum (before it, a crash: tests_hostile.rs)
    s.at(1000);
    let id = s.of(1, WorkerPhase::Ready)[0];
    let a = s.end(id, Ended::Exited(0));
    assert_eq!(starts(&a), vec![(0, 1, false)]);
    assert!(!warned(&a, ""));
}

#[test]
fn a_failed_start_is_retried_after_a_second() {
    let (mut p, _) = Policy::new(settings(Mode::Rolling), None, 1);
    let t0 = Instant::now();
    let a = p.handle(t0, Event::Step);
    let Some(Action::Start { worker, .. }) = a.first().cloned() else {
        panic!("no start: {a:?}");
    };
    let a = p.handle(
        t0,
        Event::StartFailed {
            worker,
            reason: "Resource temporarily unavailable",
        },
    );
    assert!(warned(&a, "unable to start worker 0 (generation 1)"));
    assert!(p.workers.is_empty());
    assert!(starts(&p.handle(t0 + Duration::from_millis(999), Event::Step)).is_empty());
    assert_eq!(
        starts(&p.handle(t0 + Duration::from_secs(1), Event::Step)).len(),
        1
    );
}

#[test]
fn ready_after_a_time_alone() {
    let mut st = settings(Mode::Rolling);
    st.ready = readiness::Options {
        alive: Some(Duration::from_secs(1)),
        deadline: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let mut s = Sim::with(st, 2);
    assert_eq!(s.p.next_deadline(), Some(s.t0 + Duration::from_secs(1)));
    s.at(999);
    s.tick();
    assert_eq!(s.p.ready_count(), 0);
    s.at(1000);
    s.tick();
    assert_eq!(s.p.ready_count(), 2);
    assert_eq!(s.p.serving.as_ref().map(|g| g.id), Some(1));
}

#[test]
fn ttin_adds_a_slot_and_ttou_retires_the_last_one_while_n_stay_ready() {
    let mut s = Sim::serving(Mode::Rolling);
    s.p.handle(s.now, Event::AddSlot);
    let a = s.step();
    assert_eq!(starts(&a), vec![(N, 1, false)]);
    let extra = s.of(1, WorkerPhase::Starting);
    s.ready(&extra);
    assert_eq!(s.p.ready_count(), N + 1);
    s.p.handle(s.now, Event::RemoveSlot);
    let a = s.step();
    assert_eq!(retired(&a), extra, "the slot beyond N goes");
    for _ in 0..N {
        s.p.handle(s.now, Event::RemoveSlot);
    }
    assert_eq!(s.p.slots.len(), 1, "never below one");
    let a = s.step();
    assert_eq!(retired(&a).len(), N - 1);
    assert_eq!(s.p.ready_count(), 1);
}

#[test]
fn stop_tells_every_worker_once_and_finishes_when_all_are_gone() {
    let mut s = Sim::serving(Mode::Cutover);
    s.hup("r2");
    let g2 = s.of(2, WorkerPhase::Starting);
    s.ready(&g2[..1]);
    let a = s.p.handle(
        s.now,
        Event::Stop {
            how: Stop::Graceful,
            signal: Signal::SIGTERM,
        },
    );
    assert_eq!(retired(&a).len(), 2 * N);
    assert!(a.contains(&Action::Retire {
        worker: g2[0],
        signal: Signal::SIGTERM,
        cont: true
    }));
    assert!(s
        .p
        .handle(
            s.now,
            Event::Stop {
                how: Stop::Graceful,
                signal: Signal::SIGTERM
            }
        )
        .is_empty());
    // QUIT after TERM: told again, fast.
    let a = s.p.handle(
        s.now,
        Event::Stop {
            how: Stop::Fast,
            signal: Signal::SIGQUIT,
        },
    );
    assert_eq!(retired(&a).len(), 2 * N);
    assert!(starts(&s.step()).is_empty());
    let hup = s.p.handle(
        s.now,
        Event::Hup {
            resolve: &mut || panic!("not resolved while stopping"),
        },
    );
    assert!(starts(&hup).is_empty());
    let ids: Vec<WorkerId> = s.p.workers.iter().map(|w| w.id).collect();
    for id in ids {
        assert!(!s.p.finished());
        s.end(id, Ended::Exited(0));
    }
    assert!(s.p.finished());
}

#[test]
fn the_state_is_plain_data_that_clones() {
    let mut s = Sim::serving(Mode::Cutover);
    s.hup("r2");
    let copy = s.p.clone();
    assert_eq!(copy.workers.len(), s.p.workers.len());
    assert_eq!(copy.target, s.p.target);
    assert_eq!(crate::status::text(&copy), crate::status::text(&s.p));
}
