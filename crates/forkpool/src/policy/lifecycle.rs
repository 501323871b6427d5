//! The lifecycle's steps of the rule (lifecycle.rs has its data and pure
//! functions): recycling by age, by memory, at a worker's own word; the
//! watchdog; the surge bound. Recycling never kills first: a worker due for
//! recycling is only *marked*; step 1 then starts a replacement in its slot
//! (when the surge bound allows), and step 2c retires the marked worker once
//! the replacement is ready ([`Policy::retire_recycled`]).

use super::*;
use crate::lifecycle::{jittered_age, next_random, over_in_a_row, surge_allows};

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl Policy {
    /// May step 1 start a worker in `slot` now? Filling a slot that has no
    /// live worker always may (capacity first). A second worker in a slot (a
    /// recycle's replacement; a rolling reload's new worker) only within the
    /// surge bound. All-at-once and cutover reloads need their whole
    /// generation before the old one goes: the bound does not hold them.
    /// A recycle at a worker's own word is bounded by the surge even without
    /// `--surge` (then 1): a worker cannot grow the pool by asking.
    pub(crate) fn may_start(&self, slot: usize) -> bool {
        let mut here = self.workers.iter().filter(|w| w.slot == slot && w.live());
        let Some(first) = here.next() else {
            return true;
        };
        let asked = self
            .workers
            .iter()
            .any(|w| w.slot == slot && w.live() && w.life.recycle == Some(Recycle::Asked));
        let Some(k) = self.settings.life.surge.or(asked.then_some(1)) else {
            return true;
        };
        let recycle =
            first.generation == self.target.id && here.all(|w| w.generation == self.target.id);
        if !recycle && self.settings.mode != Mode::Rolling {
            return true;
        }
        surge_allows(self.workers.len(), self.slots.len(), Some(k))
    }

    /// Step 2b: a marked worker goes once a ready worker of the target
    /// generation stands in its slot: one not marked, or a newer one marked
    /// too (a replacement that asked as soon as it was ready: else, every
    /// live worker marked and the surge full, nothing could start or go).
    pub(crate) fn retire_recycled(&mut self, now: Instant) {
        let due: Vec<(WorkerId, Recycle)> = self
            .workers
            .iter()
            .filter(|w| w.live() && w.phase == WorkerPhase::Ready)
            .filter_map(|w| w.life.recycle.map(|r| (w, r)))
            .filter(|(w, _)| {
                self.workers.iter().any(|u| {
                    u.id != w.id
                        && u.slot == w.slot
                        && u.generation == self.target.id
                        && u.phase == WorkerPhase::Ready
                        && !u.held
                        && (u.life.recycle.is_none() || u.started > w.started)
                })
            })
            .map(|(w, r)| (w.id, r))
            .collect();
        for (id, r) in due {
            self.retire(id, now, Why::Recycled(r));
        }
    }

    /// Whether `w` may be marked for recycling: ready, serving, of the
    /// target generation, not marked already, the pool not stopping.
    fn recyclable(&self, w: &Worker) -> bool {
        self.stop == Stop::No
            && w.phase == WorkerPhase::Ready
            && !w.held
            && w.life.recycle.is_none()
            && w.generation == self.target.id
            && w.slot < self.slots.len()
    }

    /// Age recycling pauses while a reload runs.
    fn age_due(&self, w: &Worker) -> Option<Instant> {
        if matches!(self.reload, Reload::Running { .. }) || !self.recyclable(w) {
            return None;
        }
        w.life.max_age.map(|a| w.started + a)
    }

    fn mark(&mut self, i: usize, r: Recycle, why: String) {
        let w = &mut self.workers[i];
        w.life.recycle = Some(r);
        let (slot, name) = (w.slot, w.name());
        self.life.count(slot, r);
        self.info(format!(
            "{name} to be recycled ({why}): its replacement starts first"
        ));
    }

    /// The time passed: draw each new worker's age, recycle the old ones,
    /// fire the watchdog (then the rule runs at once: [`Event::LifeTick`]).
    pub(super) fn life_tick(&mut self, now: Instant) {
        let life = self.settings.life.clone();
        for i in 0..self.workers.len() {
            if let (Some(max), None) = (life.max_age, self.workers[i].life.max_age) {
                let r = next_random(&mut self.life.rng);
                self.workers[i].life.max_age = Some(jittered_age(max, life.jitter_pct, r));
            }
            if self.age_due(&self.workers[i]).is_some_and(|t| now >= t) {
                let age = now - self.workers[i].started;
                self.mark(i, Recycle::Age, format!("age {}", secs3(age)));
            }
            let Some(interval) = life.watchdog else {
                continue;
            };
            let w = &mut self.workers[i];
            if w.phase != WorkerPhase::Ready || w.held {
                w.life.ping_due = None;
                continue;
            }
            let due = *w.life.ping_due.get_or_insert(now + interval);
            if now >= due {
                w.life.ping_due = None;
                let (id, slot, name) = (w.id, w.slot, w.name());
                self.life.count(slot, Recycle::Watchdog);
                self.warn(format!(
                    "{name} missed its watchdog ping ({}ms): sent ABRT; replacing it",
                    interval.as_millis()
                ));
                self.retire_with(id, now, Why::Watchdog, Signal::SIGABRT);
            }
        }
    }

    /// The next lifecycle moment: an age limit, a watchdog deadline.
    pub fn life_deadline(&self) -> Option<Instant> {
        earliest(self.workers.iter().flat_map(|w| {
            let ping = (w.phase == WorkerPhase::Ready && !w.held)
                .then_some(w.life.ping_due)
                .flatten();
            [self.age_due(w), ping]
        }))
    }

    /// A watchdog ping (an empty line on `-d`, `WATCHDOG=1`).
    pub(super) fn ping(&mut self, id: WorkerId, now: Instant) {
        if let (Some(interval), Some(i)) = (self.settings.life.watchdog, self.index(id)) {
            let w = &mut self.workers[i];
            if w.phase == WorkerPhase::Ready && !w.held {
                w.life.ping_due = Some(now + interval);
            }
        }
    }

    /// The worker asked to be recycled (`recycle` on `-d`, `RECYCLE=1`).
    /// A worker asking young gets the crash loop's back-off (its slot's,
    /// with a warning): its replacement starts no sooner than the back-off
    /// says, so a worker asking in a loop cannot turn the pool into a fork
    /// storm.
    pub(super) fn asked_recycle(&mut self, id: WorkerId, now: Instant) -> Then {
        if let Some(i) = self.index(id) {
            if self.recyclable(&self.workers[i]) {
                let w = &self.workers[i];
                let (slot, ran, name) =
                    (w.slot, now.saturating_duration_since(w.started), w.name());
                let wait = self.slots[slot].backoff.failed(ran);
                if !wait.is_zero() {
                    self.slots[slot].not_before = Some(now + wait);
                    self.warn(format!(
                        "{name} asked to be recycled after {}; its replacement starts in {} (back-off)",
                        secs(ran),
                        secs(wait)
                    ));
                }
                self.mark(i, Recycle::Asked, "it asked".to_string());
                return Then::Converge;
            }
        }
        Then::NextTurn
    }

    /// The worker stopped accepting (`stopping` on `-d`, `STOPPING=1`): a
    /// retired one counts as gone for a cutover's switch. During a switch the
    /// line says how long after its start (the old workers' stop signal)
    /// forkpool heard it: the stop signal's way into the worker and the
    /// notice's way back, the switch's time but forkpool's own turn.
    pub(super) fn stopped_accepting(&mut self, id: WorkerId, now: Instant) -> Then {
        if self.worker(id).is_some_and(|w| w.parked) {
            return self.no_longer_accepts(id, now);
        }
        if let Some(i) = self.index(id) {
            let w = &mut self.workers[i];
            if !w.life.stopped_accepting {
                w.life.stopped_accepting = true;
                let name = w.name();
                let after = match (self.switch_since, &w.retired) {
                    (Some(t), Some(_)) => format!(" {} after the switch began", millis(now - t)),
                    _ => String::new(),
                };
                self.info(format!("{name} stopped accepting{after}"));
                return Then::Converge;
            }
        }
        Then::NextTurn
    }

    /// Whether `w` no longer holds up a cutover's switch: retired and said
    /// it stopped accepting.
    pub(crate) fn gone_for_switch(w: &Worker) -> bool {
        w.phase == WorkerPhase::Stopping && w.life.stopped_accepting
    }

    /// One memory sample of worker `id`: its Pss in KiB (`--max-rss`).
    pub(super) fn memory(&mut self, id: WorkerId, pss_kib: u64) -> Then {
        let (Some(limit), Some(i)) = (self.settings.life.max_rss_kib, self.index(id)) else {
            return Then::NextTurn;
        };
        if !self.recyclable(&self.workers[i]) {
            return Then::NextTurn;
        }
        let k = self.settings.life.rss_samples;
        let w = &mut self.workers[i];
        let before = w.life.over;
        w.life.over = over_in_a_row(before, pss_kib, limit);
        let (over, name) = (w.life.over, w.name());
        if over > 0 {
            self.info(format!(
                "{name} Pss {} over the limit {} ({over} of {k} in a row)",
                mib(pss_kib),
                mib(limit)
            ));
        } else if before > 0 {
            self.info(format!(
                "{name} Pss {}: under the limit again",
                mib(pss_kib)
            ));
        }
        if over >= k {
            self.mark(i, Recycle::Memory, format!("Pss {}", mib(pss_kib)));
            return Then::Converge;
        }
        Then::NextTurn
    }
}

fn secs3(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
