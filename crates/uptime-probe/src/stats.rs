//! What one client counts, merged at the end: outcomes, releases, latency
//! (a log-linear histogram in microseconds, under 1% error), one-second windows.

use std::collections::HashMap;
use std::time::Duration;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Outcome {
    Ok,
    Refused,
    Reset,
    Timeout,
    /// Past a cap: head, chunk line, trailers or body.
    TooLarge,
    Eof,
    BadStatus,
    Error,
}

/// Latency buckets: values below 128 us exactly, then 64 buckets per power of two.
const SUB: u64 = 64;
const BUCKETS: usize = 128 + 64 * 58;

#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    pub max_us: u64,
    pub n: u64,
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            max_us: 0,
            n: 0,
        }
    }

    fn index(us: u64) -> usize {
        if us < 128 {
            return us as usize;
        }
        let shift = 63 - us.leading_zeros() as u64 - 6; // us >> shift is in 64..128
        (128 + (shift - 1) * SUB + ((us >> shift) - SUB)) as usize
    }

    /// The upper end of a bucket (what a percentile in it reports).
    fn value(i: usize) -> u64 {
        if i < 128 {
            return i as u64;
        }
        let k = (i - 128) as u64;
        let shift = k / SUB + 1;
        let m = k % SUB + SUB;
        ((m + 1) << shift) - 1
    }

    pub fn record(&mut self, us: u64) {
        let i = Self::index(us).min(BUCKETS - 1);
        self.counts[i] += 1;
        self.n += 1;
        self.max_us = self.max_us.max(us);
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.max_us = self.max_us.max(o.max_us);
    }

    /// What is left of `self` without `part`, a histogram of some of the same
    /// values; the max (which counts cannot give back) is `max_us`.
    pub fn without(&self, part: &Histogram, max_us: u64) -> Histogram {
        let mut h = Histogram::new();
        for ((c, a), b) in h.counts.iter_mut().zip(&self.counts).zip(&part.counts) {
            *c = a.saturating_sub(*b);
        }
        h.n = self.n.saturating_sub(part.n);
        h.max_us = max_us;
        h
    }

    /// The latency below which `q` (0..1) of the requests fall, in microseconds.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::value(i).min(self.max_us);
            }
        }
        self.max_us
    }
}

#[derive(Clone, Copy, Default)]
pub struct Second {
    pub requests: u64,
    pub failed: u64,
    pub max_us: u64,
}

/// One client's counts (and, merged, the run's).
pub struct Stats {
    pub ok: u64,
    pub refused: u64,
    pub reset: u64,
    pub timeout: u64,
    pub too_large: u64,
    pub eof: u64,
    pub bad_status: u64,
    pub error: u64,
    pub retried: u64,
    /// Connections made (each client's first, and every one after a close).
    pub connects: u64,
    pub mixed: u64,
    pub flapping: u64,
    /// Responses without an X-Release header / without a data-release in the body.
    pub no_code_release: u64,
    pub no_content_release: u64,
    /// Responses per release (by X-Release, else the body's), for the
    /// releases tracked (client::MAX_RELEASES).
    pub releases: HashMap<Vec<u8>, u64>,
    /// Responses of releases past the tracked ones.
    pub untracked: u64,
    pub latency: Histogram,
    /// The latency of the requests that finished in a marked part (between
    /// an odd SIGUSR1 and the next), kept once there is one; the unmarked
    /// ones are `latency` without these.
    pub marked: Option<Histogram>,
    /// The max latency of the requests that finished unmarked.
    pub unmarked_max_us: u64,
    pub seconds: Vec<Second>,
}

/// The latency outside and inside the marked parts.
pub struct Parts {
    pub unmarked: Histogram,
    pub marked: Histogram,
}

impl Stats {
    /// The latency outside and inside the marked parts (an empty `marked`
    /// when no request finished in one).
    pub fn parts(&self) -> Parts {
        let marked = self.marked.clone().unwrap_or_else(Histogram::new);
        Parts {
            unmarked: self.latency.without(&marked, self.unmarked_max_us),
            marked,
        }
    }

    pub fn new() -> Stats {
        Stats {
            ok: 0,
            refused: 0,
            reset: 0,
            timeout: 0,
            too_large: 0,
            eof: 0,
            bad_status: 0,
            error: 0,
            retried: 0,
            connects: 0,
            mixed: 0,
            flapping: 0,
            no_code_release: 0,
            no_content_release: 0,
            releases: HashMap::new(),
            untracked: 0,
            latency: Histogram::new(),
            marked: None,
            unmarked_max_us: 0,
            seconds: Vec::new(),
        }
    }

    pub fn failed(&self) -> u64 {
        self.refused
            + self.reset
            + self.timeout
            + self.too_large
            + self.eof
            + self.bad_status
            + self.error
    }

    pub fn requests(&self) -> u64 {
        self.ok + self.failed()
    }

    /// Count one finished request: its outcome, at `at` since the start, taking
    /// `took`; `marked`: it finished in a marked part.
    pub fn count(
        &mut self,
        outcome: Outcome,
        at: Duration,
        took: Duration,
        answered: bool,
        marked: bool,
    ) {
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Reset => self.reset += 1,
            Outcome::Timeout => self.timeout += 1,
            Outcome::TooLarge => self.too_large += 1,
            Outcome::Eof => self.eof += 1,
            Outcome::BadStatus => self.bad_status += 1,
            Outcome::Error => self.error += 1,
        }
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        if answered {
            self.latency.record(us);
            if marked {
                self.marked.get_or_insert_with(Histogram::new).record(us);
            } else {
                self.unmarked_max_us = self.unmarked_max_us.max(us);
            }
        }
        let s = at.as_secs() as usize;
        if self.seconds.len() <= s {
            self.seconds.resize(s + 1, Second::default());
        }
        let sec = &mut self.seconds[s];
        sec.requests += 1;
        sec.failed += u64::from(outcome != Outcome::Ok);
        if answered {
            sec.max_us = sec.max_us.max(us);
        }
    }

    pub fn merge(&mut self, o: &Stats) {
        self.ok += o.ok;
        self.refused += o.refused;
        self.reset += o.reset;
        self.timeout += o.timeout;
        self.too_large += o.too_large;
        self.eof += o.eof;
        self.bad_status += o.bad_status;
        self.error += o.error;
        self.retried += o.retried;
        self.connects += o.connects;
        self.mixed += o.mixed;
        self.flapping += o.flapping;
        self.no_code_release += o.no_code_release;
        self.no_content_release += o.no_content_release;
        for (k, v) in &o.releases {
            *self.releases.entry(k.clone()).or_insert(0) += v;
        }
        self.untracked += o.untracked;
        self.latency.merge(&o.latency);
        if let Some(h) = &o.marked {
            self.marked.get_or_insert_with(Histogram::new).merge(h);
        }
        self.unmarked_max_us = self.unmarked_max_us.max(o.unmarked_max_us);
        if self.seconds.len() < o.seconds.len() {
            self.seconds.resize(o.seconds.len(), Second::default());
        }
        for (a, b) in self.seconds.iter_mut().zip(&o.seconds) {
            a.requests += b.requests;
            a.failed += b.failed;
            a.max_us = a.max_us.max(b.max_us);
        }
    }
}

/// The width of a timeline bin (the picture's x resolution).
pub const BIN: Duration = Duration::from_millis(100);
/// A bin's latency buckets: four per power of two of microseconds (under 19% wide).
const BIN_BUCKETS: usize = 4 * 40;

/// The failed outcomes, in the order of a bin's `failed` counts.
pub const FAILED_KINDS: [(Outcome, &str); 7] = [
    (Outcome::Refused, "refused"),
    (Outcome::Reset, "reset"),
    (Outcome::Timeout, "timeout"),
    (Outcome::TooLarge, "too_large"),
    (Outcome::Eof, "eof"),
    (Outcome::BadStatus, "bad_status"),
    (Outcome::Error, "error"),
];

/// The count of one outcome in `s`.
pub fn count_of(s: &Stats, o: Outcome) -> u64 {
    match o {
        Outcome::Ok => s.ok,
        Outcome::Refused => s.refused,
        Outcome::Reset => s.reset,
        Outcome::Timeout => s.timeout,
        Outcome::TooLarge => s.too_large,
        Outcome::Eof => s.eof,
        Outcome::BadStatus => s.bad_status,
        Outcome::Error => s.error,
    }
}

/// What finished in one 100 ms of the run (for --svg).
#[derive(Clone, Default)]
pub struct Bin {
    pub ok: u64,
    pub failed: [u64; 7],
    pub retried: u64,
    pub mixed: u64,
    pub flapping: u64,
    /// Responses per release, by order of first appearance.
    pub releases: Vec<u64>,
    latency: Vec<u32>,
}

impl Bin {
    pub fn requests(&self) -> u64 {
        self.ok + self.failed.iter().sum::<u64>()
    }

    pub fn count(&mut self, outcome: Outcome, took: Duration, answered: bool, retried: bool) {
        match FAILED_KINDS.iter().position(|(o, _)| *o == outcome) {
            Some(i) => self.failed[i] += 1,
            None => self.ok += 1,
        }
        self.retried += u64::from(retried);
        if answered {
            let us = took.as_micros().max(1) as f64;
            let i = ((us.log2() * 4.0) as usize).min(BIN_BUCKETS - 1);
            if self.latency.is_empty() {
                self.latency = vec![0; BIN_BUCKETS];
            }
            self.latency[i] += 1;
        }
    }

    pub fn release(&mut self, index: usize) {
        if self.releases.len() <= index {
            self.releases.resize(index + 1, 0);
        }
        self.releases[index] += 1;
    }

    pub fn merge(&mut self, o: &Bin) {
        self.ok += o.ok;
        for (a, b) in self.failed.iter_mut().zip(&o.failed) {
            *a += b;
        }
        self.retried += o.retried;
        self.mixed += o.mixed;
        self.flapping += o.flapping;
        for (i, n) in o.releases.iter().enumerate() {
            if *n > 0 {
                if self.releases.len() <= i {
                    self.releases.resize(i + 1, 0);
                }
                self.releases[i] += n;
            }
        }
        if !o.latency.is_empty() {
            if self.latency.is_empty() {
                self.latency = vec![0; BIN_BUCKETS];
            }
            for (a, b) in self.latency.iter_mut().zip(&o.latency) {
                *a += b;
            }
        }
    }

    /// The latency (ms, a bucket's upper end) below which `q` of the bin's
    /// answered requests fall; None when none was answered.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let n: u64 = self.latency.iter().map(|&c| u64::from(c)).sum();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (i, &c) in self.latency.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(2f64.powf((i + 1) as f64 / 4.0) / 1000.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_close() {
        for us in [0u64, 1, 127, 128, 129, 1000, 12_345, 1_000_000, 123_456_789] {
            let v = Histogram::value(Histogram::index(us));
            assert!(v >= us, "{us} -> {v}");
            assert!((v - us) as f64 <= us as f64 / 64.0 + 1.0, "{us} -> {v}");
        }
        let mut h = Histogram::new();
        for us in 1..=1000 {
            h.record(us);
        }
        assert!((500..=508).contains(&h.quantile(0.5)));
        assert!((990..=1000).contains(&h.quantile(0.99)));
        assert_eq!(h.quantile(1.0), 1000);
    }

    #[test]
    fn bins_count_and_merge() {
        let mut a = Bin::default();
        for ms in 1..=100 {
            a.count(Outcome::Ok, Duration::from_millis(ms), true, ms == 7);
        }
        a.count(Outcome::Timeout, Duration::from_secs(5), false, false);
        a.release(2);
        let mut b = Bin::default();
        b.count(Outcome::TooLarge, Duration::from_millis(1), false, false);
        b.release(0);
        b.merge(&a);
        assert_eq!((b.requests(), b.ok, b.retried), (102, 100, 1));
        assert_eq!(b.failed, [0, 0, 1, 1, 0, 0, 0]);
        assert_eq!(b.releases, vec![1, 0, 1]);
        let p50 = b.quantile_ms(0.5).unwrap();
        let p99 = b.quantile_ms(0.99).unwrap();
        assert!((50.0..=50.0 * 1.19).contains(&p50), "{p50}");
        assert!((99.0..=99.0 * 1.19).contains(&p99), "{p99}");
        assert_eq!(Bin::default().quantile_ms(0.5), None);
    }

    #[test]
    fn a_marked_run_has_each_parts_latency() {
        let ms = Duration::from_millis;
        let mut a = Stats::new();
        let mut b = Stats::new();
        // Unmarked: 1 ms; marked: 9 ms (in two threads' stats, merged).
        for i in 0..100 {
            a.count(Outcome::Ok, ms(i), ms(1), true, false);
            b.count(Outcome::Ok, ms(9_000 + i), ms(1), true, false);
            a.count(Outcome::Ok, ms(10_000 + i), ms(9), true, true);
        }
        // Not answered: in neither part's latency.
        b.count(Outcome::Timeout, ms(12_000), ms(5_000), false, true);
        a.merge(&b);
        let p = a.parts();
        assert_eq!((p.unmarked.n, p.marked.n, a.latency.n), (200, 100, 300));
        assert!((1000..=1016).contains(&p.unmarked.quantile(0.99)));
        assert_eq!(p.unmarked.max_us, 1000);
        assert!((9000..=9141).contains(&p.marked.quantile(0.5)));
        assert_eq!(p.marked.max_us, 9000);
        // Nothing marked: everything is unmarked.
        let p = b.parts();
        assert_eq!((p.unmarked.n, p.marked.n), (100, 0));
    }
}
