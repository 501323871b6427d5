//! `--max-rss`: a worker's proportional set size, from the `Pss:` line of
//! `/proc/PID/smaps_rollup` (Linux 4.14 and later). Pss charges each page
//! shared by k processes 1/k to each, so the pages a worker shares
//! copy-on-write with its siblings are not held against it as RSS would be.
//! An I/O leaf: the hub (pool.rs) samples, the rule (policy/lifecycle.rs)
//! decides.

use nix::unistd::Pid;

/// The `Pss:` of `/proc/PID/smaps_rollup` in KiB; None when it cannot be read
/// (the worker is gone, or the kernel has no smaps_rollup).
pub fn pss_kib(pid: Pid) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_pss(&text)
}

/// The `Pss:` value (KiB) of smaps_rollup's text.
pub fn parse_pss(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix("Pss:")?;
        v.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pss_of_smaps_rollup() {
        let text = "00400000-7ffd [rollup]\nRss:                4820 kB\nPss:                1234 kB\nPss_Anon:            800 kB\n";
        assert_eq!(parse_pss(text), Some(1234));
        assert_eq!(parse_pss("Rss: 10 kB\n"), None);
    }

    #[test]
    fn pss_of_this_process() {
        let me = Pid::this();
        assert!(pss_kib(me).is_some_and(|k| k > 0));
    }
}
