//! The restart rule of supervise, runsv and s6-supervise, shared by
//! loop-forever and forkpool: a program that failed young is started again no
//! sooner than one second after its previous start, so broken code never turns
//! into a fork storm. Optionally the wait doubles with each failure in a row,
//! up to a cap.

use std::time::Duration;

/// The shortest time between two starts after a failure.
pub const ONE_SECOND: Duration = Duration::from_secs(1);

/// Back-off state of one supervised program (one slot of a pool).
#[derive(Clone, Debug)]
pub struct Backoff {
    /// The longest wait; `ONE_SECOND` (the default) means no growth.
    cap: Duration,
    /// Failures in a row.
    failures: u32,
}

impl Backoff {
    pub fn new(cap: Duration) -> Backoff {
        Backoff {
            cap: cap.max(ONE_SECOND),
            failures: 0,
        }
    }

    /// The wait between a start and the next one after the `k`th failure in a
    /// row: 1 s, 2 s, 4 s, ... up to the cap.
    fn wait(&self) -> Duration {
        let k = self.failures.saturating_sub(1).min(30);
        ONE_SECOND.saturating_mul(1u32 << k).min(self.cap)
    }

    /// The program failed after running `ran`: how long to wait before the
    /// next start. A program that ran longer than the cap failed "old": the
    /// count starts over and it is restarted at once.
    pub fn failed(&mut self, ran: Duration) -> Duration {
        if ran >= self.cap {
            self.failures = 0;
        }
        self.failures = self.failures.saturating_add(1);
        self.wait().saturating_sub(ran)
    }

    /// The program did well (became ready, or exited cleanly): start over.
    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// A back-off handed over by an in-place upgrade: `failures` in a row.
    pub fn restored(cap: Duration, failures: u32) -> Backoff {
        Backoff {
            cap: cap.max(ONE_SECOND),
            failures,
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_second_rule() {
        let mut b = Backoff::new(ONE_SECOND);
        assert_eq!(
            b.failed(Duration::from_millis(200)),
            Duration::from_millis(800)
        );
        assert_eq!(
            b.failed(Duration::from_millis(10)),
            Duration::from_millis(990)
        );
        assert_eq!(b.failed(Duration::from_secs(5)), Duration::ZERO);
    }

    #[test]
    fn growth_is_capped() {
        let mut b = Backoff::new(Duration::from_secs(5));
        let waits: Vec<_> = (0..5).map(|_| b.failed(Duration::ZERO).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 5, 5]);
        b.succeeded();
        assert_eq!(b.failed(Duration::ZERO), ONE_SECOND);
    }
}
