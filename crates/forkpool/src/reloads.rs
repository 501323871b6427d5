//! Reloads by result and how long the successful ones took (issue 29): the
//! status file's `reloads_ok=`, `reloads_failed=`, `reload_seconds=` (the
//! last), `reload_seconds_sum=` and `reload_seconds_le=` (a histogram, read
//! by pool-health's /metrics), kept across an in-place upgrade (state.rs).

use std::fmt::Write as _;
use std::time::Duration;

/// The histogram's upper bounds, in seconds (a bucket holds reloads that took
/// at most its bound; above the last one only the count and the sum see it).
pub const BOUNDS: [f64; 11] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadCounts {
    pub ok: u64,
    pub failed: u64,
    /// The last successful reload's duration, microseconds (0: none yet).
    pub last_us: u64,
    pub sum_us: u64,
    /// Successful reloads per bucket of [`BOUNDS`] (not cumulative).
    pub buckets: [u64; BOUNDS.len()],
}

impl ReloadCounts {
    /// A reload ended with every new worker ready, `took` after its HUP.
    pub fn ok(&mut self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.ok += 1;
        self.last_us = us;
        self.sum_us = self.sum_us.saturating_add(us);
        if let Some(i) = BOUNDS.iter().position(|b| took.as_secs_f64() <= *b) {
            self.buckets[i] += 1;
        }
    }

    pub fn failed(&mut self) {
        self.failed += 1;
    }

    /// The status file's lines.
    pub fn lines(&self, s: &mut String) {
        let secs = |us: u64| format!("{:.6}", us as f64 / 1e6);
        let _ = writeln!(s, "reloads_ok={}", self.ok);
        let _ = writeln!(s, "reloads_failed={}", self.failed);
        let last = if self.ok == 0 {
            String::new()
        } else {
            secs(self.last_us)
        };
        let _ = writeln!(s, "reload_seconds={last}");
        let _ = writeln!(s, "reload_seconds_sum={}", secs(self.sum_us));
        let mut cumulative = 0;
        let le: Vec<String> = BOUNDS
            .iter()
            .zip(self.buckets)
            .map(|(b, n)| {
                cumulative += n;
                format!("{b}:{cumulative}")
            })
            .collect();
        let _ = writeln!(s, "reload_seconds_le={}", le.join(","));
    }

    /// `ok,failed,last_us,sum_us,b0,...`: the state of an in-place upgrade.
    pub fn list(&self) -> String {
        let mut v = vec![self.ok, self.failed, self.last_us, self.sum_us];
        v.extend(self.buckets);
        let v: Vec<String> = v.iter().map(u64::to_string).collect();
        v.join(",")
    }

    /// Read back what [`ReloadCounts::list`] wrote.
    pub fn from_list(text: &str) -> Option<ReloadCounts> {
        let v: Vec<u64> = text
            .split(',')
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        if v.len() < 4 {
            return None;
        }
        let (head, buckets) = v.split_at(4);
        Some(ReloadCounts {
            ok: head[0],
            failed: head[1],
            last_us: head[2],
            sum_us: head[3],
            buckets: buckets.try_into().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_the_histogram_and_the_state_text() {
        let mut r = ReloadCounts::default();
        let mut s = String::new();
        r.lines(&mut s);
        assert!(
            s.contains("reloads_ok=0\nreloads_failed=0\nreload_seconds=\n"),
            "{s}"
        );
        r.ok(Duration::from_millis(70));
        r.ok(Duration::from_millis(100));
        r.ok(Duration::from_secs(200));
        r.failed();
        let mut s = String::new();
        r.lines(&mut s);
        assert!(s.contains("reloads_ok=3\nreloads_failed=1\n"), "{s}");
        assert!(s.contains("reload_seconds=200.000000\n"), "{s}");
        assert!(s.contains("reload_seconds_sum=200.170000\n"), "{s}");
        assert!(
            s.contains(
                "reload_seconds_le=0.05:0,0.1:2,0.25:2,0.5:2,1:2,2.5:2,5:2,10:2,30:2,60:2,120:2\n"
            ),
            "{s}"
        );
        assert_eq!(ReloadCounts::from_list(&r.list()), Some(r));
        assert_eq!(ReloadCounts::from_list("1,2,3"), None);
        assert_eq!(ReloadCounts::from_list("1,2,3,4,x"), None);
    }
}
