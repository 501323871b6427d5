//! The rule's event methods: each changes the state (and may queue
//! actions); none converges or hands actions out itself. [`Policy::handle`]
//! calls them, then runs the rule when the event says so, and takes the
//! actions: the one way out.

use super::*;

impl Policy {
    /// The [`Action::Start`] of `id` forked `pid`.
    pub(super) fn started(&mut self, id: WorkerId, pid: i32, now: Instant) {
        if let Some(i) = self.index(id) {
            self.workers[i].pid = pid;
            // Its time starts now, when the fork returned: a fork that took
            // seconds in the kernel is not the worker's (its readiness
            // deadline, its age).
            self.workers[i].started = now;
            let w = &self.workers[i];
            let msg = format!(
                "worker {} (generation {}) started as pid {pid}",
                w.slot, w.generation
            );
            self.info(msg);
        }
    }

    /// The [`Action::Start`] of `id` failed (`reason`): try again in a second.
    pub(super) fn start_failed(&mut self, id: WorkerId, now: Instant, reason: &str) {
        if let Some(i) = self.index(id) {
            let w = self.workers.remove(i);
            if w.generation != self.target.id {
                // A start the pool had in hand when its generation was given up.
                self.info(format!(
                    "worker {} (generation {}) not started: {reason}",
                    w.slot, w.generation
                ));
                return;
            }
            if self.reload_at_stake(w.generation) {
                let why = format!(
                    "unable to start worker {} (generation {}): {reason}",
                    w.slot, w.generation
                );
                self.abandon(why);
                return;
            }
            self.warn(format!(
                "unable to start worker {} (generation {}): {reason}; retrying in 1s",
                w.slot, w.generation
            ));
            if let Some(s) = self.slots.get_mut(w.slot) {
                s.not_before = Some(now + Duration::from_secs(1));
            }
        }
    }

    /// The time passed: readiness by `-a`, readiness deadlines, KILL
    /// deadlines. `ready`: the workers that told their readiness since the
    /// last call (pipe or `READY=1`), each at most once.
    pub(super) fn time_passed(&mut self, now: Instant, ready: &[WorkerId]) {
        let s = self.settings.clone();
        let ids: Vec<WorkerId> = self.workers.iter().map(|w| w.id).collect();
        for id in ids {
            let Some(i) = self.index(id) else { continue };
            let w = &self.workers[i];
            if w.phase != WorkerPhase::Starting {
                continue;
            }
            let by_time = s.ready.ready_by_time(w.started, now);
            if ready.contains(&id) || by_time {
                let held = s.mode == Mode::Cutover && w.generation > self.accepting.id;
                let w = &mut self.workers[i];
                w.phase = WorkerPhase::Ready;
                if held {
                    // At once: the window in which it may accept is this long.
                    w.held = true;
                    self.queued.push(Action::Hold { worker: id });
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
                self.queued.push(Action::Kill { worker: id });
                self.warn(format!(
                    "{name} did not stop in {}: sent KILL",
                    secs(s.drain)
                ));
            }
        }
    }

    /// Worker `i` failed (`what` says how). A new generation that fails makes
    /// the reload fail; a serving worker is replaced after its slot's back-off.
    /// A live worker is retired; one that ended is forgotten by the caller.
    pub(super) fn failed(&mut self, i: usize, now: Instant, what: String) {
        let w = &self.workers[i];
        let (id, slot, generation, started) = (w.id, w.slot, w.generation, w.started);
        if self.reload_at_stake(generation) || self.prepare_failing(generation) {
            self.abandon(what);
        } else if generation == self.target.id && slot < self.slots.len() {
            let wait = self.slots[slot].backoff.failed(now - started);
            self.slots[slot].not_before = Some(now + wait);
            self.warn(format!("{what}; restarting in {}", secs(wait)));
        } else if self.workers[i].parked {
            self.warn(format!(
                "{what} while parked; its slot is refilled if generation {generation} serves again"
            ));
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
    pub(super) fn reload_at_stake(&self, generation: u64) -> bool {
        let reloading = matches!(self.reload, Reload::Running { .. });
        let whole = self.serving.as_ref().map(|g| g.id) == Some(generation);
        generation == self.target.id && reloading && self.serving.is_some() && !whole
    }

    /// The running reload passed its overall deadline: it failed. Before its
    /// generation is whole, back to the serving one; after (a cutover whose
    /// old workers will not go), the switch stays under way.
    pub(super) fn reload_overdue(&mut self, now: Instant) {
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
    pub(super) fn abandon(&mut self, why: String) {
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
    pub(super) fn ended(&mut self, id: WorkerId, ended: Ended, now: Instant) {
        let Some(i) = self.index(id) else {
            return;
        };
        let w = &self.workers[i];
        let ran = now.saturating_duration_since(w.started);
        let what = format!("{} {ended} after {}", w.name(), secs(ran));
        match w.phase {
            WorkerPhase::Stopping => self.info(what),
            WorkerPhase::Ready if ended.clean() && ran >= ONE_SECOND => {
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
            WorkerPhase::Ready if ended.clean() => {
                self.failed(i, now, format!("{what} (less than 1s: counted as a crash)"))
            }
            WorkerPhase::Ready => self.failed(i, now, what),
            WorkerPhase::Starting => self.failed(i, now, format!("{what} before it was ready")),
        }
        self.workers.remove(i);
    }

    /// HUP: a new generation, pinned to what `resolve` says the symlink names
    /// now (`Err`: why it cannot be resolved; the reload fails at once).
    pub(super) fn hup(&mut self, now: Instant, resolve: &mut Resolve) {
        if self.stop != Stop::No {
            self.info("HUP while stopping: ignored".to_string());
            return;
        }
        if self.hup_refused() {
            return;
        }
        if let Some(why) = self.verify_blocks() {
            self.newest += 1;
            let why = format!("HUP refused: {why}");
            self.warn(format!(
                "reload to generation {} failed: {why}",
                self.newest
            ));
            self.reason = why;
            self.reload = Reload::Failed;
            return;
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
                return;
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
    }

    /// A new target generation (a HUP, a prepare): every slot starts afresh,
    /// without the back-off of the generation before.
    pub(super) fn begin_generation(&mut self, id: u64, release: Option<PathBuf>) {
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
    pub(super) fn add_slot(&mut self) {
        if self.stop == Stop::No {
            self.slots.push(Slot::new(&self.settings));
            self.info(format!("TTIN: {} workers", self.slots.len()));
        }
    }

    /// TTOU: one slot less (never below one).
    pub(super) fn remove_slot(&mut self) {
        if self.stop == Stop::No {
            if self.slots.len() > 1 {
                self.slots.pop();
                self.info(format!("TTOU: {} workers", self.slots.len()));
            } else {
                self.info("TTOU: already at 1 worker".to_string());
            }
        }
    }

    /// TERM/INT (`Graceful`, the stop signal) or QUIT (`Fast`, `signal`):
    /// every worker is told to stop; KILL after the drain deadline.
    pub(super) fn stop(&mut self, now: Instant, how: Stop, signal: Signal) {
        if self.stop == Stop::Fast || self.stop == how || how == Stop::No {
            return;
        }
        self.info(format!(
            "stopping every worker: sent {}",
            signal_name(signal)
        ));
        self.stop = how;
        self.prepare_stopped();
        self.verify_stopped();
        let drain = self.settings.drain;
        for w in &mut self.workers {
            if w.phase != WorkerPhase::Stopping || how == Stop::Fast {
                w.phase = WorkerPhase::Stopping;
                w.retired.get_or_insert(Why::Stopping);
                w.kill_at.arm(now, drain);
                let cont = std::mem::take(&mut w.held);
                self.queued.push(Action::Retire {
                    worker: w.id,
                    signal,
                    cont,
                });
            }
        }
    }
}
