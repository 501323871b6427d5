//! Two-phase deploys (`-C`, README.md "Two-phase: prepare, commit, abort"),
//! as more of the pure rule: a *prepared* generation is a target generation
//! that is held ready and never switched to until a commit says so.
//!
//! - `prepare`: a new target generation (like a HUP); its workers start held
//!   (cutover), and the switch (step 3, policy/converge.rs) and the all-at-once
//!   retirement of the old generation wait behind a gate;
//! - `commit [T]`: the gate opens at `T` (or now): the cutover's switch then
//!   runs as after a HUP, and the release of the new generation is the commit;
//! - `abort`, or the prepare's deadline: the target goes back to the serving
//!   generation, as when a reload is abandoned: the held workers are retired,
//!   nothing else changes;
//! - a new worker that dies or misses its readiness deadline while the
//!   prepare is open fails the prepare (the abandon rule);
//! - a HUP while a prepare is open is refused (a failed reload): only a
//!   commit switches a prepared host.
//!
//! Wall-clock times (for `commit T` and the status file) come in with each
//! command as `wall` (the wall clock at `now`); the rule itself runs on
//! `Instant`s.

use super::*;

use crate::two_phase::Stage;

impl Policy {
    pub(super) fn answer(&mut self, word: &str, accepted: bool, now: Instant, wall: f64) {
        let t = &mut self.two_phase;
        t.commands += 1;
        t.wall_ref = Some((now, wall));
        t.last = format!("{word} {}", if accepted { "accepted" } else { "refused" });
    }

    pub(super) fn refuse(&mut self, word: &str, why: String, now: Instant, wall: f64) {
        self.answer(word, false, now, wall);
        self.warn(format!("{word} refused: {why}"));
        self.reason = format!("{word} refused: {why}");
    }

    /// A line of the FIFO that is not a command.
    pub(super) fn bad_command(&mut self, why: String) {
        let t = &mut self.two_phase;
        t.commands += 1;
        t.last = "? refused".to_string();
        self.warn(format!("control: {why}"));
        self.reason = format!("control: {why}");
    }

    /// `prepare`: a new generation from what `resolve` says the pin names,
    /// started held; it will not switch before a commit.
    pub(super) fn prepare(&mut self, now: Instant, wall: f64, resolve: &mut Resolve) {
        let refused = if self.stop != Stop::No {
            Some("the pool is stopping".to_string())
        } else if self.two_phase.open() {
            Some(format!(
                "the prepare of generation {} is {} (commit or abort it first)",
                self.two_phase.generation,
                self.two_phase.stage.name()
            ))
        } else if matches!(self.reload, Reload::Running { .. }) {
            Some(format!("a reload to generation {} runs", self.target.id))
        } else if self.serving.is_none() {
            Some("no generation serves yet".to_string())
        } else {
            self.verify_blocks()
        };
        if let Some(why) = refused {
            return self.refuse("prepare", why, now, wall);
        }
        self.answer("prepare", true, now, wall);
        self.newest += 1;
        let id = self.newest;
        let t = &mut self.two_phase;
        t.generation = id;
        t.commit_at = None;
        t.commit_wall = None;
        t.released_wall = None;
        t.expires = None;
        let release = match resolve() {
            Ok(r) => r,
            Err(why) => {
                self.two_phase.stage = Stage::Failed;
                self.warn(format!("prepare of generation {id} failed: {why}"));
                self.reason = why;
                return;
            }
        };
        let t = &mut self.two_phase;
        t.stage = Stage::Preparing;
        t.expires = Some(now + t.timeout);
        t.reload_before = self.reload.clone();
        self.begin_generation(id, release);
        self.info(format!(
            "prepare: generation {id}: starting {} workers{}, held until a commit",
            self.slots.len(),
            release_text(&self.target)
        ));
    }

    /// `commit`: switch to the prepared generation at `at` (monotonic and
    /// wall clock), or now.
    pub(super) fn commit(&mut self, now: Instant, wall: f64, at: Option<(Instant, f64)>) {
        let t = &self.two_phase;
        let g = t.generation;
        let refused = match t.stage {
            _ if self.stop != Stop::No => Some("the pool is stopping".to_string()),
            Stage::Prepared => match (at, t.expires) {
                (Some((i, w)), Some(e)) if i > e => Some(format!(
                    "{w:.3} is after the prepare of generation {g} expires"
                )),
                _ => None,
            },
            Stage::Preparing => Some(format!("generation {g} is not prepared yet (preparing)")),
            Stage::Committing | Stage::Committed => {
                Some(format!("generation {g} is {} already", t.stage.name()))
            }
            Stage::None | Stage::Aborted | Stage::Failed => {
                Some(format!("nothing is prepared (phase={})", t.stage.name()))
            }
        };
        if let Some(why) = refused {
            return self.refuse("commit", why, now, wall);
        }
        self.answer("commit", true, now, wall);
        if let Some((_, w)) = at.filter(|(_, w)| *w < wall) {
            // Late: this host switches now, behind the others.
            self.warn(format!(
                "commit: the instant {w:.3} was {:.0} ms past when the commit came: switching now",
                (wall - w) * 1000.0
            ));
        }
        let (at, at_wall) = at.unwrap_or((now, wall));
        let t = &mut self.two_phase;
        t.stage = Stage::Committing;
        t.commit_at = Some(at.max(now));
        t.commit_wall = Some(at_wall);
        t.expires = None;
        self.info(format!(
            "commit: generation {g} switches at {at_wall:.3} (in {})",
            millis(at.saturating_duration_since(now))
        ));
    }

    /// `abort`: stop the prepared generation; the serving one stays.
    pub(super) fn abort(&mut self, now: Instant, wall: f64) -> Then {
        let t = &self.two_phase;
        let switching = t.stage == Stage::Committing
            && self.serving.as_ref().map(|s| s.id) == Some(t.generation);
        if t.stage == Stage::Committed || switching {
            let why = format!(
                "generation {} is {} (too late to abort)",
                t.generation,
                if switching { "switching" } else { "committed" }
            );
            self.refuse("abort", why, now, wall);
            return Then::NextTurn;
        }
        self.answer("abort", true, now, wall);
        if !self.two_phase.open() {
            self.info(format!(
                "abort: nothing to abort (phase={})",
                self.two_phase.stage.name()
            ));
            return Then::NextTurn;
        }
        let why = format!(
            "prepare of generation {} aborted (control command)",
            self.two_phase.generation
        );
        self.drop_prepared(why);
        Then::Converge
    }

    /// Back to the serving generation; the prepared one's workers are
    /// retired by the rule (outgoing, held in a generation that will not serve).
    fn drop_prepared(&mut self, why: String) {
        let t = &mut self.two_phase;
        t.stage = Stage::Aborted;
        t.expires = None;
        t.commit_at = None;
        if let Some(old) = self.serving.clone() {
            self.warn(format!("{why}; generation {} keeps serving", old.id));
            self.target = old;
        }
        self.reason = why;
        for s in &mut self.slots {
            s.not_before = None;
        }
    }

    /// At each step: an open prepare past its deadline aborts; one whose
    /// generation is wholly ready (held) is prepared.
    pub(super) fn prepare_due(&mut self, now: Instant) {
        let t = &mut self.two_phase;
        if t.stage == Stage::Committing && t.commit_at.is_some_and(|at| now >= at) {
            // The instant has come: the gate is open for good.
            t.commit_at = None;
        }
        if !matches!(t.stage, Stage::Preparing | Stage::Prepared) {
            return;
        }
        if t.expires.is_some_and(|e| now >= e) {
            let why = format!(
                "prepare of generation {} expired after {}: aborted",
                t.generation,
                secs(t.timeout)
            );
            self.drop_prepared(why);
            return;
        }
        if t.stage == Stage::Preparing && self.target_ready() {
            self.two_phase.stage = Stage::Prepared;
            self.info(format!(
                "prepare: generation {}: every worker ready and held",
                self.target.id
            ));
        }
    }

    /// Whether the switch to the target generation must wait (an open
    /// prepare, or a commit whose instant has not come).
    pub(super) fn prepare_holds(&self, now: Instant) -> bool {
        let t = &self.two_phase;
        t.generation == self.target.id
            && match t.stage {
                Stage::Preparing | Stage::Prepared => true,
                Stage::Committing => t.commit_at.is_some_and(|at| now < at),
                _ => false,
            }
    }

    /// A worker of `generation` failed: does it fail an open prepare?
    pub(super) fn prepare_failing(&self, generation: u64) -> bool {
        let t = &self.two_phase;
        t.open() && t.generation == generation && self.prepare_switch_not_begun()
    }

    fn prepare_switch_not_begun(&self) -> bool {
        self.serving.as_ref().map(|s| s.id) != Some(self.two_phase.generation)
    }

    /// The reload was abandoned (a new worker failed): if it was the prepare,
    /// the prepare failed; the last HUP's result stands.
    pub(super) fn prepare_abandoned(&mut self) {
        if self.two_phase.open() {
            self.two_phase.stage = Stage::Failed;
            self.two_phase.expires = None;
            self.reload = self.two_phase.reload_before.clone();
        }
    }

    /// Generation `id` was released: the commit is done.
    pub(super) fn prepare_released(&mut self, id: u64, now: Instant) {
        let t = &mut self.two_phase;
        if t.stage == Stage::Committing && t.generation == id {
            t.stage = Stage::Committed;
            t.released_wall = t
                .wall_ref
                .map(|(i, w)| w + now.saturating_duration_since(i).as_secs_f64());
            self.info(format!("commit: generation {id} serves"));
        }
    }

    /// HUP while a prepare is open: refused, as a reload that failed at once
    /// (so `generation` grows and a waiting deploy gets its answer).
    pub(super) fn hup_refused(&mut self) -> bool {
        if !self.two_phase.open() {
            return false;
        }
        self.newest += 1;
        let why = format!(
            "HUP refused: the prepare of generation {} is {} (commit or abort it)",
            self.two_phase.generation,
            self.two_phase.stage.name()
        );
        self.warn(format!(
            "reload to generation {} failed: {why}",
            self.newest
        ));
        self.reason = why;
        self.reloads.failed();
        self.reload = Reload::Failed;
        true
    }

    /// A verified switch to `generation` was reverted before its release:
    /// a commit of it still open ends as aborted.
    pub(super) fn prepare_reverted(&mut self, generation: u64) {
        let t = &mut self.two_phase;
        if t.open() && t.generation == generation {
            t.stage = Stage::Aborted;
            t.expires = None;
            t.commit_at = None;
        }
    }

    /// The pool stops: an open prepare is aborted.
    pub(super) fn prepare_stopped(&mut self) {
        if self.two_phase.open() {
            self.two_phase.stage = Stage::Aborted;
            self.two_phase.expires = None;
            self.reason = format!(
                "prepare of generation {} aborted: the pool stops",
                self.two_phase.generation
            );
        }
    }

    /// The prepare's deadline and the commit's instant.
    pub(super) fn prepare_deadlines(&self) -> [Option<Instant>; 2] {
        let t = &self.two_phase;
        match t.stage {
            Stage::Preparing | Stage::Prepared => [t.expires, None],
            Stage::Committing => [t.commit_at, None],
            _ => [None, None],
        }
    }
}
