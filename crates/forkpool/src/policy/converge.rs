//! The rule's own step, [`Policy::converge`]: the numbered steps of the
//! module comment (policy/mod.rs), each a small function, run in order by
//! one loop. A step that changes what the steps before it decided on (a
//! generation became the serving one) asks for another pass; the loop then
//! runs them all again from the first. Then the helpers the steps and the
//! events share: a start, a release, a retire.

use super::*;

/// What a step says about the rest of the pass.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Go on with the next step.
    On,
    /// Run every step again from the first (at most once more: the step
    /// that asks does not ask twice at the same state).
    Again,
}

type Step = fn(&mut Policy, Instant) -> Next;

/// The steps, in order.
const STEPS: [Step; 9] = [
    // 0. The two-phase gate: a prepare expires, or is whole (prepare.rs).
    |p, now| {
        p.prepare_due(now);
        Next::On
    },
    // 0. The verified switch's deadline: revert (verify.rs).
    Policy::verify_due,
    // 0. A park under way: its bounds (verify.rs).
    Policy::park_due,
    Policy::fill_slots,
    Policy::retire_idle,
    Policy::retire_replaced,
    // 2c. Recycled workers whose replacement is ready (policy/lifecycle.rs).
    |p, now| {
        p.retire_recycled(now);
        Next::On
    },
    Policy::serve_whole_generation,
    Policy::release_after_switch,
];

impl Policy {
    /// Converge: start what is missing, retire what is outgoing, note a
    /// generation that became wholly ready, release a cutover's generation.
    /// Nothing while the pool stops.
    pub(super) fn converge(&mut self, now: Instant) {
        if self.stop != Stop::No {
            return;
        }
        'pass: loop {
            for step in STEPS {
                if step(self, now) == Next::Again {
                    continue 'pass;
                }
            }
            return;
        }
    }

    /// Step 1: a live target worker in every slot: at once, or after its
    /// back-off; a second worker in a slot only within the surge bound.
    pub(super) fn fill_slots(&mut self, now: Instant) -> Next {
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
            // The surge bound (policy/lifecycle.rs): a second worker in a slot waits.
            if !self.may_start(slot) {
                continue;
            }
            self.slots[slot].not_before = None;
            self.start(slot, now);
        }
        Next::On
    }

    /// Step 2a: outgoing workers not serving go at once: not ready, or held in a
    /// generation that is not about to serve.
    pub(super) fn retire_idle(&mut self, now: Instant) -> Next {
        let serving_id = self.serving.as_ref().map(|g| g.id);
        let idle: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|w| {
                self.is_outgoing(w)
                    && !w.parked
                    && (w.phase != WorkerPhase::Ready
                        || (w.held && Some(w.generation) != serving_id))
            })
            .map(|w| w.id)
            .collect();
        for id in idle {
            self.retire(id, now, Why::NotNeeded);
        }
        Next::On
    }

    /// Step 2b: outgoing ready workers go while N ready workers remain without
    /// them (rolling), or when the whole target generation is ready
    /// (all-at-once, cutover). Slots beyond N (TTOU) go first, then the
    /// oldest generation.
    pub(super) fn retire_replaced(&mut self, now: Instant) -> Next {
        let mode = self.settings.mode;
        // A verified switch parks the old generation at step 3 instead.
        let parks = self.verifying() && self.target.id > self.accepting.id;
        let all_at_once_go =
            mode != Mode::Rolling && self.target_ready() && !self.prepare_holds(now) && !parks;
        loop {
            let n = self.slots.len();
            let candidate = self
                .workers
                .iter()
                .filter(|w| self.is_outgoing(w) && w.phase == WorkerPhase::Ready && !w.parked)
                .filter(|w| mode == Mode::Rolling || all_at_once_go || w.slot >= n)
                .min_by_key(|w| (w.slot < n, w.generation, w.slot))
                .map(|w| w.id);
            let Some(id) = candidate else { break };
            if self.ready_count() <= n && !all_at_once_go {
                break;
            }
            self.retire(id, now, Why::Replaced);
        }
        Next::On
    }

    /// Step 3: a wholly ready target generation serves (unless the two-phase
    /// gate holds it). Then another pass: all-at-once retires the old
    /// generation now that the new one is whole; a cutover's switch begins
    /// (the old generations go; the new one stays held until they are gone,
    /// 4.).
    pub(super) fn serve_whole_generation(&mut self, now: Instant) -> Next {
        if self.serving.as_ref().map(|g| g.id) == Some(self.target.id)
            || !self.target_ready()
            || self.prepare_holds(now)
        {
            return Next::On;
        }
        if self.settings.mode == Mode::Cutover && self.target.id > self.accepting.id {
            // The switch: the reload is done at the release (4.).
            self.info(format!(
                "cutover to generation {}: every worker ready and held until the older ones are gone",
                self.target.id
            ));
            self.switch_since = Some(now);
            self.serving = Some(self.target.clone());
            if self.verifying() {
                // Parked, not retired: gone for the switch (4.), warm for a revert.
                self.park_old(now);
            }
            return Next::Again;
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
        Next::Again
    }

    /// Step 4 (cutover): the serving generation is released once nothing older is
    /// left (an old worker that said it stopped accepting counts as gone, a
    /// parked one once it is known not to accept).
    pub(super) fn release_after_switch(&mut self, now: Instant) -> Next {
        if let Some(s) = self.serving.clone() {
            let gone = |w: &Worker| {
                w.generation >= s.id
                    || (w.parked && !self.parking_waits_for(w))
                    || Policy::gone_for_switch(w)
            };
            if s.id > self.accepting.id && self.workers.iter().all(gone) {
                self.release(s, now);
            }
        }
        Next::On
    }

    /// A new worker of the target generation in `slot`.
    pub(super) fn start(&mut self, slot: usize, now: Instant) {
        let id = WorkerId(self.next_worker);
        self.next_worker += 1;
        let generation = self.target.clone();
        let hold = self.settings.mode == Mode::Cutover && generation.id > self.accepting.id;
        self.workers.push(Worker {
            id,
            pid: 0,
            slot,
            generation: generation.id,
            phase: WorkerPhase::Starting,
            started: now,
            kill_at: KillDeadline::default(),
            held: false,
            parked: false,
            retired: None,
            life: WorkerLife::default(),
        });
        self.queued.push(Action::Start {
            worker: id,
            slot,
            generation,
            hold,
        });
    }

    /// Let generation `gen` accept: its hold descriptors and its held workers.
    pub(super) fn release(&mut self, gen: Generation, now: Instant) {
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
        self.queued.push(Action::Release {
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
        self.verify_released(id, now);
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
        if w.phase == WorkerPhase::Stopping {
            return;
        }
        w.phase = WorkerPhase::Stopping;
        w.retired = Some(why);
        w.kill_at.arm(now, drain);
        let cont = std::mem::take(&mut w.held);
        let name = w.name();
        self.queued.push(Action::Retire {
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
}
