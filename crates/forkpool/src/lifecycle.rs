//! A worker's life after it is ready (issue 14): recycling by age (each
//! worker its own randomized age), by memory (Pss over the limit several
//! samples in a row) or at its own word; the watchdog (a ready worker that
//! stops pinging gets ABRT, KILL after the drain deadline, and a replacement
//! at once); the surge bound (live workers <= N + k while recycling or in a
//! rolling reload).
//!
//! Recycling never kills first: a worker due for recycling is only *marked*;
//! the policy's step 1 then starts a replacement in its slot (when the surge
//! bound allows), and step 2b retires the marked worker once the replacement
//! is ready ([`Policy::retire_recycled`]). So ready workers never drop below N.
//!
//! Pure rules with a fake clock and a seeded random number: the unit tests
//! are in policy/tests_lifecycle.rs and below.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use unixtool::supervise::earliest;

use crate::policy::{Action, Mode, Phase, Policy, Reload, Stop, Why, Worker, WorkerId};

/// The lifecycle options (`--surge`, `--max-age`, `--jitter`, `--max-rss`,
/// `--rss-samples`, `--watchdog`).
#[derive(Clone, Debug)]
pub struct Lifecycle {
    /// `--surge k`: at most N + k workers while recycling or in a rolling reload.
    pub surge: Option<usize>,
    /// `--max-age S`: a ready worker older than its own age is recycled.
    pub max_age: Option<Duration>,
    /// `--jitter PCT`: each worker's age is drawn in [S - PCT% of S, S].
    pub jitter_pct: u32,
    /// `--max-rss MiB`, in KiB: the Pss limit.
    pub max_rss_kib: Option<u64>,
    /// `--rss-samples K`: samples in a row over the limit before a recycle.
    pub rss_samples: u32,
    /// `--watchdog ms`: a ready worker pings at least this often.
    pub watchdog: Option<Duration>,
    /// Seed of the age draws.
    pub seed: u64,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            surge: None,
            max_age: None,
            jitter_pct: 10,
            max_rss_kib: None,
            rss_samples: 3,
            watchdog: None,
            seed: 1,
        }
    }
}

/// Why a slot's worker was recycled (or killed by the watchdog).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recycle {
    Age,
    Memory,
    Asked,
    Watchdog,
}

impl Recycle {
    pub const ALL: [Recycle; 4] = [
        Recycle::Age,
        Recycle::Memory,
        Recycle::Asked,
        Recycle::Watchdog,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Recycle::Age => "age",
            Recycle::Memory => "memory",
            Recycle::Asked => "asked",
            Recycle::Watchdog => "watchdog",
        }
    }
}

/// How many recycles, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts([u64; 4]);

impl Counts {
    pub fn add(&mut self, r: Recycle) {
        self.0[r as usize] += 1;
    }

    pub fn get(&self, r: Recycle) -> u64 {
        self.0[r as usize]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// `1,0,2,0`: the counts in the order of [`Recycle::ALL`] (the state of
    /// an in-place upgrade).
    pub fn list(&self) -> String {
        let v: Vec<String> = self.0.iter().map(u64::to_string).collect();
        v.join(",")
    }

    /// Read back what [`Counts::list`] wrote.
    pub fn from_list(text: &str) -> Option<Counts> {
        let v: Vec<u64> = text
            .split(',')
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        Some(Counts(v.try_into().ok()?))
    }

    /// `age:2,asked:1` (reasons with a count), `-` when none.
    pub fn text(&self) -> String {
        let parts: Vec<String> = Recycle::ALL
            .iter()
            .filter(|r| self.get(**r) > 0)
            .map(|r| format!("{}:{}", r.name(), self.get(*r)))
            .collect();
        if parts.is_empty() {
            "-".to_string()
        } else {
            parts.join(",")
        }
    }
}

/// One worker's lifecycle state.
#[derive(Clone, Debug, Default)]
pub struct WorkerLife {
    /// Its own age limit, drawn once (`--max-age` with `--jitter`).
    pub max_age: Option<Duration>,
    /// Marked for recycling: a replacement comes first, then it is retired.
    pub recycle: Option<Recycle>,
    /// `--watchdog`: the next ping is due by then (ready and not held only).
    pub ping_due: Option<Instant>,
    /// `--max-rss`: samples over the limit in a row.
    pub over: u32,
    /// It said it stopped accepting (`stopping`, `STOPPING=1`).
    pub stopped_accepting: bool,
}

/// The pool's lifecycle state: the random state and the counts.
#[derive(Clone, Debug, Default)]
pub struct PoolLife {
    pub rng: u64,
    /// Recycles by reason, the whole pool.
    pub totals: Counts,
    /// Recycles by reason, per slot.
    pub slots: Vec<Counts>,
}

impl PoolLife {
    pub fn new(seed: u64) -> PoolLife {
        PoolLife {
            rng: seed,
            ..Default::default()
        }
    }

    fn count(&mut self, slot: usize, r: Recycle) {
        self.totals.add(r);
        if self.slots.len() <= slot {
            self.slots.resize(slot + 1, Counts::default());
        }
        self.slots[slot].add(r);
    }

    pub fn slot(&self, slot: usize) -> Counts {
        self.slots.get(slot).cloned().unwrap_or_default()
    }
}

/// A seed for the age draws: this process and the clock.
pub fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// splitmix64: the next pseudo-random number from `state`.
pub fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A worker's own age limit: `max` less a random part (from `r`) of at most
/// `pct` percent, so the limit stays a maximum and workers started together
/// are recycled apart.
pub fn jittered_age(max: Duration, pct: u32, r: u64) -> Duration {
    let span = max.as_secs_f64() * f64::from(pct.min(100)) / 100.0;
    let frac = (r % 1_000_001) as f64 / 1_000_000.0;
    max.saturating_sub(Duration::from_secs_f64(span * frac))
}

/// Samples over the limit in a row, after one more sample of `pss_kib`.
pub fn over_in_a_row(over: u32, pss_kib: u64, limit_kib: u64) -> u32 {
    if pss_kib > limit_kib {
        over.saturating_add(1)
    } else {
        0
    }
}

/// Whether a surge start may happen: `workers` (every process, stopping
/// ones included) stays at most `n + k`.
pub fn surge_allows(workers: usize, n: usize, surge: Option<usize>) -> bool {
    surge.is_none_or(|k| workers < n + k)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

impl Policy {
    /// May step 1 start a worker in `slot` now? Filling a slot that has no
    /// live worker always may (capacity first). A second worker in a slot (a
    /// recycle's replacement; a rolling reload's new worker) only within the
    /// surge bound. All-at-once and cutover reloads need their whole
    /// generation before the old one goes: the bound does not hold them.
    pub(crate) fn may_start(&self, slot: usize) -> bool {
        let Some(k) = self.settings.life.surge else {
            return true;
        };
        let mut here = self.workers.iter().filter(|w| w.slot == slot && w.live());
        let Some(first) = here.next() else {
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
    /// generation stands in its slot.
    pub(crate) fn retire_recycled(&mut self, now: Instant) {
        let due: Vec<(WorkerId, Recycle)> = self
            .workers
            .iter()
            .filter(|w| w.live() && w.phase == Phase::Ready)
            .filter_map(|w| w.life.recycle.map(|r| (w, r)))
            .filter(|(w, _)| {
                self.workers.iter().any(|u| {
                    u.id != w.id
                        && u.slot == w.slot
                        && u.generation == self.target.id
                        && u.phase == Phase::Ready
                        && !u.held
                        && u.life.recycle.is_none()
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
            && w.phase == Phase::Ready
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
    /// fire the watchdog.
    pub fn life_tick(&mut self, now: Instant) -> Vec<Action> {
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
            if w.phase != Phase::Ready || w.held {
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
        self.converge(now);
        self.take()
    }

    /// The next lifecycle moment: an age limit, a watchdog deadline.
    pub fn life_deadline(&self) -> Option<Instant> {
        earliest(self.workers.iter().flat_map(|w| {
            let ping = (w.phase == Phase::Ready && !w.held)
                .then_some(w.life.ping_due)
                .flatten();
            [self.age_due(w), ping]
        }))
    }

    /// A watchdog ping (an empty line on `-d`, `WATCHDOG=1`).
    pub fn ping(&mut self, id: WorkerId, now: Instant) -> Vec<Action> {
        if let (Some(interval), Some(i)) = (self.settings.life.watchdog, self.index(id)) {
            let w = &mut self.workers[i];
            if w.phase == Phase::Ready && !w.held {
                w.life.ping_due = Some(now + interval);
            }
        }
        self.take()
    }

    /// The worker asked to be recycled (`recycle` on `-d`, `RECYCLE=1`).
    pub fn asked_recycle(&mut self, id: WorkerId, now: Instant) -> Vec<Action> {
        if let Some(i) = self.index(id) {
            if self.recyclable(&self.workers[i]) {
                self.mark(i, Recycle::Asked, "it asked".to_string());
                self.converge(now);
            }
        }
        self.take()
    }

    /// The worker stopped accepting (`stopping` on `-d`, `STOPPING=1`): a
    /// retired one counts as gone for a cutover's switch.
    pub fn stopped_accepting(&mut self, id: WorkerId, now: Instant) -> Vec<Action> {
        if let Some(i) = self.index(id) {
            let w = &mut self.workers[i];
            if !w.life.stopped_accepting {
                w.life.stopped_accepting = true;
                let name = w.name();
                self.info(format!("{name} stopped accepting"));
                self.converge(now);
            }
        }
        self.take()
    }

    /// Whether `w` no longer holds up a cutover's switch: retired and said
    /// it stopped accepting.
    pub(crate) fn gone_for_switch(w: &Worker) -> bool {
        w.phase == Phase::Stopping && w.life.stopped_accepting
    }

    /// One memory sample of worker `id`: its Pss in KiB (`--max-rss`).
    pub fn memory(&mut self, id: WorkerId, pss_kib: u64, now: Instant) -> Vec<Action> {
        let (Some(limit), Some(i)) = (self.settings.life.max_rss_kib, self.index(id)) else {
            return self.take();
        };
        if !self.recyclable(&self.workers[i]) {
            return self.take();
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
            self.converge(now);
        }
        self.take()
    }
}

fn secs3(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_jittered_within_the_limit() {
        let max = Duration::from_secs(100);
        let mut rng = 7;
        let ages: Vec<Duration> = (0..50)
            .map(|_| jittered_age(max, 20, next_random(&mut rng)))
            .collect();
        assert!(ages
            .iter()
            .all(|a| *a <= max && *a >= Duration::from_secs(80)));
        let mut distinct = ages.clone();
        distinct.sort();
        distinct.dedup();
        assert!(distinct.len() > 40, "ages repeat: {ages:?}");
        assert_eq!(jittered_age(max, 0, 12345), max);
    }

    #[test]
    fn a_spike_is_not_a_leak() {
        let mut over = 0;
        for pss in [10, 50, 10, 50, 50, 10] {
            over = over_in_a_row(over, pss, 20);
            assert!(over < 3);
        }
        for pss in [50, 50, 50] {
            over = over_in_a_row(over, pss, 20);
        }
        assert_eq!(over, 3);
    }

    #[test]
    fn surge_bound() {
        assert!(surge_allows(100, 4, None));
        assert!(surge_allows(4, 4, Some(1)));
        assert!(!surge_allows(5, 4, Some(1)));
        assert!(surge_allows(5, 4, Some(2)));
    }

    #[test]
    fn counts_text() {
        let mut c = Counts::default();
        assert_eq!(c.text(), "-");
        c.add(Recycle::Age);
        c.add(Recycle::Age);
        c.add(Recycle::Watchdog);
        assert_eq!(c.text(), "age:2,watchdog:1");
        assert_eq!(c.total(), 3);
    }
}
