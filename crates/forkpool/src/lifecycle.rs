//! A worker's life after it is ready (issue 14), its data and pure
//! functions: the options (`--surge`, `--max-age`, `--jitter`, `--max-rss`,
//! `--rss-samples`, `--watchdog`), the recycle reasons and their counts, a
//! worker's and the pool's lifecycle state, the seeded random age draws, the
//! memory and surge arithmetic. Plain data at the bottom of forkpool's
//! layers: the rule's lifecycle steps (marking, recycling, the watchdog) are
//! policy/lifecycle.rs; their unit tests policy/tests_lifecycle.rs and below.

use std::time::{Duration, Instant};

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

    pub fn count(&mut self, slot: usize, r: Recycle) {
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
