//! The rule in a hostile world (issue 17): a worker that exits 0 at once, a
//! worker that cannot be started during a reload, a reload that cannot end.
//! A fake clock, as in tests.rs.

use super::sim::Sim;
use super::*;

fn settings(mode: Mode) -> Settings {
    super::sim::settings(mode, Default::default())
}

/// How these tests set up and drive a host.
trait Hostile {
    fn new(mode: Mode, n: usize) -> Self;
    fn ready_all(&mut self) -> Vec<Action>;
    fn starts(actions: &[Action]) -> usize;
    fn warnings(actions: &[Action]) -> Vec<String>;
    fn of_gen(&self, gen: u64) -> Vec<WorkerId>;
}

impl Hostile for Sim {
    fn new(mode: Mode, n: usize) -> Sim {
        let (p, _) = Policy::new(settings(mode), None, n);
        Sim::start(p, Vec::new())
    }

    fn ready_all(&mut self) -> Vec<Action> {
        let ids: Vec<WorkerId> = self
            .p
            .workers
            .iter()
            .filter(|w| w.phase == WorkerPhase::Starting)
            .map(|w| w.id)
            .collect();
        let a = self.p.handle(self.now, Event::Time { ready: &ids });
        let mut out = self.feed(a);
        out.extend(self.step());
        out
    }

    fn starts(actions: &[Action]) -> usize {
        actions
            .iter()
            .filter(|a| matches!(a, Action::Start { .. }))
            .count()
    }

    fn warnings(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Warn(w) => Some(w.clone()),
                _ => None,
            })
            .collect()
    }

    fn of_gen(&self, gen: u64) -> Vec<WorkerId> {
        self.p
            .workers
            .iter()
            .filter(|w| w.generation == gen && w.live())
            .map(|w| w.id)
            .collect()
    }
}

#[test]
fn a_clean_exit_soon_after_the_start_is_a_crash() {
    let mut s = Sim::new(Mode::Rolling, 1);
    s.at(10);
    s.ready_all();
    let id = s.of_gen(1)[0];
    s.at(20);
    let a = s.p.handle(
        s.now,
        Event::Ended {
            worker: id,
            how: Ended::Exited(0),
        },
    );
    let w = Sim::warnings(&a);
    assert_eq!(w.len(), 1, "{a:?}");
    assert!(w[0].contains("exited 0"), "{w:?}");
    assert!(w[0].contains("counted as a crash"), "{w:?}");
    assert!(w[0].contains("restarting in 0.98s"), "{w:?}");
    // not at once: one second after the previous start
    assert_eq!(Sim::starts(&s.step()), 0);
    s.at(999);
    assert_eq!(Sim::starts(&s.step()), 0);
    s.at(1000);
    assert_eq!(Sim::starts(&s.step()), 1);
}

#[test]
fn a_clean_exit_after_the_minimum_is_replaced_at_once() {
    let mut s = Sim::new(Mode::Rolling, 1);
    s.at(10);
    s.ready_all();
    let id = s.of_gen(1)[0];
    s.at(1000);
    let a = s.p.handle(
        s.now,
        Event::Ended {
            worker: id,
            how: Ended::Exited(0),
        },
    );
    assert!(Sim::warnings(&a).is_empty(), "{a:?}");
    assert_eq!(Sim::starts(&s.step()), 1);
}

#[test]
fn a_worker_that_cannot_be_started_fails_the_reload_at_once() {
    let mut s = Sim::new(Mode::Cutover, 4);
    s.at(10);
    s.ready_all();
    s.at(100);
    let a = s.p.handle(
        s.now,
        Event::Hup {
            resolve: &mut || Ok(None),
        },
    );
    s.feed(a);
    // the pool carries out the Starts: the third fails (EMFILE)
    let a = s.p.handle(s.now, Event::Step);
    let mut out = Vec::new();
    let mut n = 0;
    for act in a {
        if let Action::Start { worker, .. } = act {
            n += 1;
            let more = if n == 3 {
                s.p.handle(
                    s.now,
                    Event::StartFailed {
                        worker,
                        reason: "Too many open files",
                    },
                )
            } else {
                s.p.handle(
                    s.now,
                    Event::Started {
                        worker,
                        pid: 200 + n,
                    },
                )
            };
            out.extend(more);
        }
    }
    assert_eq!(s.p.reload, Reload::Failed);
    assert!(
        s.p.reason
            .contains("unable to start worker 2 (generation 2): Too many open files"),
        "{}",
        s.p.reason
    );
    assert_eq!(Sim::warnings(&out).len(), 1, "{out:?}");
    // back to generation 1: nothing more of generation 2 is started, its
    // workers go, generation 1 keeps serving
    let a = s.step();
    assert_eq!(Sim::starts(&a), 0, "{a:?}");
    assert!(s.of_gen(2).is_empty());
    assert_eq!(s.of_gen(1).len(), 4);
}

#[test]
fn a_start_failure_outside_a_reload_is_retried_after_a_second() {
    let (mut p, _) = Policy::new(settings(Mode::Rolling), None, 1);
    let t0 = Instant::now();
    let a = p.handle(t0, Event::Step);
    let Some(Action::Start { worker, .. }) = a.into_iter().next() else {
        panic!("no start");
    };
    let out = p.handle(
        t0,
        Event::StartFailed {
            worker,
            reason: "Resource temporarily unavailable",
        },
    );
    assert!(Sim::warnings(&out)[0].contains("retrying in 1s"), "{out:?}");
    assert_eq!(p.reload, Reload::None);
    assert!(p
        .handle(t0 + Duration::from_millis(999), Event::Step)
        .is_empty());
    assert_eq!(
        Sim::starts(&p.handle(t0 + Duration::from_secs(1), Event::Step)),
        1
    );
}

#[test]
fn a_reload_that_cannot_end_fails_at_its_deadline() {
    // cutover: the new generation is whole and held, an old worker never
    // goes (KILL sent, never reaped: a process stuck in the kernel)
    let mut s = Sim::new(Mode::Cutover, 2);
    s.at(10);
    s.ready_all();
    s.at(100);
    let a = s.p.handle(
        s.now,
        Event::Hup {
            resolve: &mut || Ok(None),
        },
    );
    s.feed(a);
    s.step();
    s.at(200);
    s.ready_all();
    assert_eq!(s.p.held_count(), 2);
    let limit = s.p.reload_deadline();
    assert_eq!(limit, Duration::from_secs(41));
    assert_eq!(
        s.p.next_deadline(),
        Some(s.t0 + Duration::from_millis(10_200))
    );
    s.at(10_200);
    let a = s.p.handle(s.now, Event::Time { ready: &[] });
    assert!(a.iter().any(|a| matches!(a, Action::Kill { .. })), "{a:?}");
    assert!(matches!(s.p.reload, Reload::Running { .. }));
    assert_eq!(
        s.p.next_deadline(),
        Some(s.t0 + Duration::from_millis(100) + limit)
    );
    s.at(100 + 41_000);
    let a = s.p.handle(s.now, Event::Time { ready: &[] });
    assert_eq!(s.p.reload, Reload::Failed);
    assert_eq!(s.p.reason, "the reload did not complete in 41.0s");
    assert_eq!(Sim::warnings(&a).len(), 1, "{a:?}");
    assert_eq!(s.p.next_deadline(), None);
}

#[test]
fn a_reload_whose_generation_never_gets_whole_fails_at_its_deadline() {
    // rolling, -t longer than the overall deadline cannot be: the readiness
    // deadline fails it first; here a slot's start keeps failing outside
    // the reload's reach (generation 1 never whole: no reload at stake)
    let mut s = Sim::new(Mode::Rolling, 1);
    s.at(100);
    let a = s.p.handle(
        s.now,
        Event::Hup {
            resolve: &mut || Ok(None),
        },
    );
    s.feed(a);
    s.step();
    s.at(100 + 41_000);
    let a = s.p.handle(s.now, Event::Time { ready: &[] });
    assert_eq!(s.p.reload, Reload::Failed, "{a:?}");
    assert!(s.p.reason.contains("did not complete"), "{}", s.p.reason);
}
