//! The verified switch (`--confirm-timeout`, README.md "Verified switch"),
//! as more of the pure rule. At a cutover's switch (step 3) the old
//! generation is *parked* instead of retired: each of its ready workers' groups
//! gets the park signal (TSTP, [`Action::Park`]) and stays warm;
//! `verify=pending` begins. A parked worker counts as gone for the switch
//! once it is known not to accept: it said `parked` (a cooperating app
//! stops accepting, finishes what it holds, says so; then it gets STOP), or
//! forkpool saw every process of its group stopped (TSTP's default action:
//! [`Event::GroupStopped`]). Not before: a process that is sent a signal
//! stops when it next runs, and one that had not run since could still
//! take a connection after the new generation answered (an old answer
//! after a new one). Within [`PARK_BOUND`] of the park signal the ones not
//! known stopped get STOP, within twice that the new generation is released
//! anyway (a process in uninterruptible sleep). Then (step 4) the new
//! generation is released and the deadline runs. Then:
//!
//! - `confirm`: the parked workers are retired as a cutover retires the old
//!   generation (the stop signal and SIGCONT, KILL at the drain deadline);
//! - `revert`, or the deadline (the gate of step 0): (1) every worker of the
//!   new generation is stopped (held: now none accepts), (2) the parked
//!   workers are released (SIGCONT), the parked generation is the target,
//!   serving and accepting one again, (3) the rule then retires the new
//!   generation (held in a generation that does not serve: step 2a) and
//!   refills in the old release any slot whose parked worker died;
//! - a HUP or a prepare while pending is refused; a stop (TERM, INT, QUIT)
//!   gives the parked workers the signal and SIGCONT like every other, and
//!   ends the verify (`verify=none`).

use super::*;

use super::converge::Next;
use crate::verify::{Parking, VerifyStage, PARK_BOUND};

impl Policy {
    /// Whether the verified switch is on (`--confirm-timeout`).
    pub(super) fn verifying(&self) -> bool {
        self.settings.confirm_timeout.is_some()
    }

    /// Step 3, at a cutover's switch with `--confirm-timeout`: park every
    /// ready worker older than the target generation (the park signal);
    /// verify is pending (its deadline starts at the release, 4.).
    pub(super) fn park_old(&mut self, now: Instant) {
        let target = self.target.id;
        let mut waiting = Vec::new();
        for w in self.workers.iter_mut().filter(|w| {
            w.live() && w.phase == WorkerPhase::Ready && w.generation != target && !w.held
        }) {
            w.parked = true;
            w.held = true;
            waiting.push(w.id);
            self.queued.push(Action::Park { worker: w.id });
        }
        let old = self.accepting.clone();
        self.info(format!(
            "generation {}: parking {} workers (sent TSTP) until confirm or revert",
            old.id,
            waiting.len()
        ));
        let parking = (!waiting.is_empty()).then_some(Parking {
            since: now,
            forced: false,
            waiting,
        });
        self.verify = Verify {
            stage: VerifyStage::Pending,
            generation: target,
            parked: Some(old),
            deadline: None,
            parking,
        };
    }

    /// Whether parked worker `w` may still accept (the park is under way
    /// and it is not known stopped): the release waits for it.
    pub(super) fn parking_waits_for(&self, w: &Worker) -> bool {
        self.verify
            .parking
            .as_ref()
            .is_some_and(|p| p.waiting.contains(&w.id))
    }

    /// `worker` said `parked` (it stopped accepting and holds nothing): STOP
    /// for its group, and the release no longer waits for it. Also after it
    /// said `stopping` at the park (it finished its requests since): STOP
    /// only now, so that nothing it had in hand was frozen. Not once the
    /// park is over (a revert or a confirm came first: the CONT or the stop
    /// signal it got since is what counts).
    pub(super) fn said_parked(&mut self, worker: WorkerId, now: Instant) -> Then {
        let parked =
            self.verify.pending() && self.worker(worker).is_some_and(|w| w.live() && w.parked);
        if !parked {
            return Then::NextTurn;
        }
        self.park_seen(worker, now);
        self.queued.push(Action::Hold { worker });
        Then::Converge
    }

    /// Every process of `worker`'s group was seen stopped, or it said
    /// `stopping` while parked (a cooperating app at TSTP: it accepts
    /// nothing more and finishes what it holds, then says `parked`; no STOP
    /// for it until then, whatever the park's bound): the release no longer
    /// waits for it.
    pub(super) fn no_longer_accepts(&mut self, worker: WorkerId, now: Instant) -> Then {
        if self.park_seen(worker, now) {
            Then::Converge
        } else {
            Then::NextTurn
        }
    }

    /// `worker` no longer accepts: out of the park's waiting list (false:
    /// it was not in it). The last one ends the park.
    fn park_seen(&mut self, worker: WorkerId, now: Instant) -> bool {
        let Some(p) = self.verify.parking.as_mut() else {
            return false;
        };
        let before = p.waiting.len();
        p.waiting.retain(|&id| id != worker);
        if p.waiting.len() == before {
            return false;
        }
        if p.waiting.is_empty() {
            let took = now.saturating_duration_since(p.since);
            self.verify.parking = None;
            self.info(format!(
                "generation {}: every parked worker stopped accepting {} after TSTP",
                self.verify.generation,
                super::millis(took)
            ));
        }
        true
    }

    /// Step 0: the park's bounds. Workers gone meanwhile are waited for no
    /// more; at [`PARK_BOUND`] the rest get STOP; at twice that the switch
    /// goes on without them.
    pub(super) fn park_due(&mut self, now: Instant) -> Next {
        let Some(mut p) = self.verify.parking.take() else {
            return Next::On;
        };
        p.waiting
            .retain(|&id| self.worker(id).is_some_and(|w| w.live() && w.parked));
        if !p.forced && now >= p.since + PARK_BOUND {
            p.forced = true;
            let names: Vec<String> = p
                .waiting
                .iter()
                .filter_map(|&id| self.worker(id).map(Worker::name))
                .collect();
            self.warn(format!(
                "{} not stopped within {} of TSTP: sent STOP",
                names.join(", "),
                secs(PARK_BOUND)
            ));
            for &worker in &p.waiting {
                self.queued.push(Action::Hold { worker });
            }
        }
        if !p.waiting.is_empty() && now >= p.since + 2 * PARK_BOUND {
            self.warn(format!(
                "{} parked workers still not seen stopped {} after TSTP: the new generation is released anyway",
                p.waiting.len(),
                secs(2 * PARK_BOUND)
            ));
            p.waiting.clear();
        }
        if !p.waiting.is_empty() {
            self.verify.parking = Some(p);
        }
        Next::On
    }

    /// The park's next bound, while it is under way.
    pub(super) fn park_deadline(&self) -> Option<Instant> {
        let p = self.verify.parking.as_ref()?;
        Some(if p.forced {
            p.since + 2 * PARK_BOUND
        } else {
            p.since + PARK_BOUND
        })
    }

    /// At the release of generation `id` (4.): a pending verify of it
    /// starts its deadline.
    pub(super) fn verify_released(&mut self, id: u64, now: Instant) {
        let timeout = self.settings.confirm_timeout;
        let v = &mut self.verify;
        if let (true, Some(t)) = (v.pending() && v.generation == id, timeout) {
            v.deadline = Some(now + t);
            let msg = format!(
                "generation {id} awaits confirm or revert within {}",
                secs(t)
            );
            self.info(msg);
        }
    }

    /// Step 0: a pending verify past its deadline reverts.
    pub(super) fn verify_due(&mut self, now: Instant) -> Next {
        let v = &self.verify;
        if !(v.pending() && v.deadline.is_some_and(|d| now >= d)) {
            return Next::On;
        }
        let timeout = self.settings.confirm_timeout.unwrap_or_default();
        let why = format!(
            "generation {} not confirmed within {}: reverted",
            v.generation,
            secs(timeout)
        );
        self.revert_to_parked(why);
        Next::On
    }

    /// Why a command of the verify cannot run now (None: it can).
    fn verify_refused(&self) -> Option<String> {
        let v = &self.verify;
        if self.stop != Stop::No {
            Some("the pool is stopping".to_string())
        } else if !self.verifying() {
            Some("no verified switch (forkpool runs without --confirm-timeout)".to_string())
        } else if !v.pending() {
            Some(format!(
                "no generation awaits confirm or revert (verify={})",
                v.stage.name()
            ))
        } else {
            None
        }
    }

    /// `confirm`: the parked generation is retired.
    pub(super) fn confirm(&mut self, now: Instant, wall: f64) -> Then {
        if let Some(why) = self.verify_refused() {
            self.refuse("confirm", why, now, wall);
            return Then::NextTurn;
        }
        self.answer("confirm", true, now, wall);
        let g = self.verify.generation;
        let parked: Vec<WorkerId> = self
            .workers
            .iter_mut()
            .filter(|w| w.parked)
            .map(|w| {
                w.parked = false;
                w.id
            })
            .collect();
        self.info(format!(
            "confirm: generation {g} confirmed; retiring {} parked workers",
            parked.len()
        ));
        for id in parked {
            // Still held: the stop signal, then SIGCONT.
            self.retire(id, now, Why::Replaced);
        }
        self.verify.stage = VerifyStage::Confirmed;
        self.verify.parked = None;
        self.verify.deadline = None;
        self.verify.parking = None;
        Then::NextTurn
    }

    /// `revert`: back to the parked generation at once.
    pub(super) fn revert(&mut self, now: Instant, wall: f64) -> Then {
        if let Some(why) = self.verify_refused() {
            self.refuse("revert", why, now, wall);
            return Then::NextTurn;
        }
        self.answer("revert", true, now, wall);
        self.revert_to_parked("revert requested".to_string());
        Then::Converge
    }

    /// (1) hold every live worker not parked, (2) release the parked ones
    /// and serve their generation; (3) the steps retire the rest.
    fn revert_to_parked(&mut self, why: String) {
        let Some(old) = self.verify.parked.take() else {
            return;
        };
        // A park under way ends: the CONT below tells a cooperating worker
        // to accept again, whether or not it said `parked` yet.
        self.verify.parking = None;
        let new = self.verify.generation;
        for w in self
            .workers
            .iter_mut()
            .filter(|w| w.live() && !w.parked && !w.held && w.generation != old.id)
        {
            w.held = true;
            self.queued.push(Action::Hold { worker: w.id });
        }
        let mut held = Vec::new();
        for w in self.workers.iter_mut().filter(|w| w.parked) {
            w.parked = false;
            w.held = false;
            held.push(w.id);
        }
        let n = held.len();
        self.queued.push(Action::Release {
            generation: old.id,
            workers: Vec::new(),
            held,
        });
        self.warn(format!(
            "{why}: generation {} serves again ({n} parked workers released); generation {new} stops",
            old.id
        ));
        self.target = old.clone();
        self.serving = Some(old.clone());
        self.accepting = old;
        self.switch_since = None;
        for s in &mut self.slots {
            s.not_before = None;
        }
        // Reverted before the release (an old worker still draining): the
        // reload, or the commit, did not happen.
        if matches!(self.reload, Reload::Running { .. }) {
            self.reload = Reload::Failed;
        }
        self.prepare_reverted(new);
        self.reason = why;
        self.verify.stage = VerifyStage::Reverted;
        self.verify.deadline = None;
    }

    /// A HUP or a prepare while pending: why it is refused.
    pub(super) fn verify_blocks(&self) -> Option<String> {
        let v = &self.verify;
        v.pending()
            .then(|| format!("generation {} awaits confirm or revert", v.generation))
    }

    /// The pool stops: the parked workers get the signal like the rest (they
    /// are held: SIGCONT after it); the verify ends.
    pub(super) fn verify_stopped(&mut self) {
        if self.verify.pending() {
            for w in &mut self.workers {
                w.parked = false;
            }
            self.verify.stage = VerifyStage::None;
            self.verify.parked = None;
            self.verify.deadline = None;
            self.verify.parking = None;
        }
    }

    /// The deadline of a pending verify.
    pub(super) fn verify_deadline(&self) -> Option<Instant> {
        self.verify.deadline.filter(|_| self.verify.pending())
    }
}
