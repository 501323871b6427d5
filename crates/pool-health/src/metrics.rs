//! The pool's figures in Prometheus's text exposition format (version 0.0.4),
//! from forkpool's status file: `GET /metrics`, and `-o FILE` (one file for
//! node_exporter's textfile collector). [`render`] is the policy, without
//! system calls; [`ProcTimes::of`] reads the pool's start from /proc. Every
//! metric is on README.md's list.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use unixtool::statusfile::Status;

/// The Content-Type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the caller found, beside the status file's text.
pub struct Seen<'a> {
    /// The status file's text, or None when it cannot be read.
    pub status: Option<&'a str>,
    /// The pid it names is alive (and not a zombie).
    pub alive: bool,
    /// When that process started, and for how long it has run.
    pub times: Option<ProcTimes>,
    /// The health check's verdict now (what /health answers: 200 or not).
    pub healthy: bool,
    /// `-D`: the drain file exists (or cannot be looked at).
    pub drained: bool,
}

/// The pool's process: its start (seconds since the epoch), its age.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProcTimes {
    pub start_unix: f64,
    pub uptime: f64,
}

impl ProcTimes {
    /// From /proc/PID/stat (start in clock ticks since boot), /proc/stat
    /// (`btime`, the boot in seconds since the epoch) and /proc/uptime. The
    /// pid survives exec, so an in-place upgrade keeps the start.
    pub fn of(pid: i32) -> Option<ProcTimes> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // after the command's ")": field 3 (state) on; starttime is field 22
        let ticks: f64 = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(19)?
            .parse()
            .ok()?;
        let boot: f64 = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        let up: f64 = std::fs::read_to_string("/proc/uptime")
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        // SAFETY: sysconf(3) takes a constant and touches no memory of ours.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if hz <= 0 {
            return None;
        }
        let since_boot = ticks / hz as f64;
        Some(ProcTimes {
            start_unix: boot + since_boot,
            uptime: (up - since_boot).max(0.0),
        })
    }
}

/// Look now (nothing is cached): the status file, its pid, the drain file,
/// the health verdict; the exposition.
pub fn scrape(status: &OsString, drain: Option<&OsString>) -> String {
    let text = std::fs::read_to_string(status).ok();
    let pid = text
        .as_deref()
        .map(Status::parse)
        .and_then(|s| s.get("pid").parse::<i32>().ok())
        .filter(|p| *p > 0);
    let alive = pid.is_some_and(unixtool::statusfile::alive);
    let drained = drain.is_some_and(|d| match std::fs::symlink_metadata(d) {
        Ok(_) => true,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    });
    render(&Seen {
        status: text.as_deref(),
        alive,
        times: pid.filter(|_| alive).and_then(ProcTimes::of),
        healthy: crate::check(status, drain, None, Duration::ZERO).0 == 200,
        drained,
    })
}

/// `-o FILE`: the exposition into FILE, through a temporary beside it (an
/// unpredictable name, O_EXCL|O_NOFOLLOW) renamed over it, then exit 0; 111
/// when it cannot be written.
pub fn write_textfile(file: &OsString, status: &OsString, drain: Option<&OsString>) -> ! {
    let path = Path::new(file);
    match unixtool::statusfile::replace(path, &scrape(status, drain)) {
        Ok(()) => std::process::exit(0),
        Err(e) => crate::TOOL.fatal(
            unixtool::EXIT_TEMPORARY,
            format_args!(
                "unable to write {}: {}",
                path.display(),
                unixtool::io_reason(&e)
            ),
        ),
    }
}

/// One metric family after another: HELP, TYPE, then its samples.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let l: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label_value(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", l.join(","));
        }
        let _ = writeln!(self.0, " {value}");
    }

    /// A family of one sample without labels.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A state set: one sample per state, 1 for the one that holds.
    fn states(&mut self, name: &str, label: &str, help: &str, all: &[&str], now: &str) {
        self.family(name, "gauge", help);
        for s in all {
            self.sample(name, &[(label, s)], u8::from(*s == now));
        }
    }
}

/// A label value: backslash, double quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn bool_num(b: bool) -> u8 {
    u8::from(b)
}

const RELOAD_STATES: [&str; 4] = ["none", "running", "ok", "failed"];
/// forkpool --confirm-timeout: the verified switch's `verify=`.
const VERIFY_STATES: [&str; 4] = ["none", "pending", "confirmed", "reverted"];
const PHASES: [&str; 7] = [
    "none",
    "preparing",
    "prepared",
    "committing",
    "committed",
    "aborted",
    "failed",
];
const WORKER_STATES: [&str; 4] = ["starting", "ready", "held", "stopping"];
const RECYCLE_REASONS: [&str; 4] = ["age", "memory", "asked", "watchdog"];

/// The whole exposition. Without a readable status file (or without its
/// pid alive), only what tells that: `forkpool_up 0` and the health verdict.
pub fn render(seen: &Seen) -> String {
    let mut o = Out(String::new());
    let st = seen.status.map(Status::parse);
    let running = st.as_ref().is_some_and(|s| s.get("state") == "running") && seen.alive;
    o.one(
        "pool_health_up",
        "gauge",
        "1 when the health check answers 200 now (the pool whole and serving, the host not drained)",
        bool_num(seen.healthy),
    );
    o.one(
        "pool_health_drained",
        "gauge",
        "1 while the drain file (-D) exists",
        bool_num(seen.drained),
    );
    o.one(
        "forkpool_up",
        "gauge",
        "1 when the status file is read, state=running and its pid is alive",
        bool_num(running),
    );
    let Some(st) = st.filter(|s| !s.get("pid").is_empty()) else {
        return o.0;
    };
    if !seen.alive {
        // a status file left behind: its figures are not the pool's any more
        return o.0;
    }
    pool(&mut o, &st, seen.times);
    reloads(&mut o, &st);
    lifecycle(&mut o, &st);
    o.0
}

fn pool(o: &mut Out, st: &Status, times: Option<ProcTimes>) {
    o.family(
        "forkpool_info",
        "gauge",
        "Always 1: the build id (version) and the reload mode of the running forkpool",
    );
    o.sample(
        "forkpool_info",
        &[("version", st.get("version")), ("mode", st.get("mode"))],
        1,
    );
    if let Some(t) = times {
        o.one(
            "forkpool_start_time_seconds",
            "gauge",
            "When forkpool's process started, in seconds since the epoch (kept by in-place upgrades)",
            format!("{:.2}", t.start_unix),
        );
        o.one(
            "forkpool_uptime_seconds",
            "gauge",
            "How long forkpool's process has run, in seconds",
            format!("{:.2}", t.uptime),
        );
    }
    o.one(
        "forkpool_workers_desired",
        "gauge",
        "Workers wanted (-n, TTIN and TTOU)",
        st.num("workers"),
    );
    o.family(
        "forkpool_workers",
        "gauge",
        "Worker processes by state: starting (not ready yet), ready (accepting), held (ready, not accepting: cutover, prepare), stopping (retired, draining)",
    );
    for s in WORKER_STATES {
        let n = st
            .workers
            .iter()
            .filter(|w| w.split_whitespace().nth(3) == Some(s))
            .count();
        o.sample("forkpool_workers", &[("state", s)], n);
    }
    o.one(
        "forkpool_generation",
        "gauge",
        "The newest generation started (each HUP or prepare adds one, failed or not)",
        st.num("generation"),
    );
    o.one(
        "forkpool_serving_generation",
        "gauge",
        "The generation that serves (0: none yet)",
        st.num("serving_generation"),
    );
    o.family(
        "forkpool_serving_info",
        "gauge",
        "Always 1: the serving generation and its pinned release (empty without -p)",
    );
    o.sample(
        "forkpool_serving_info",
        &[
            ("generation", st.get("serving_generation")),
            ("release", st.get("release")),
        ],
        1,
    );
}

fn reloads(o: &mut Out, st: &Status) {
    o.states(
        "forkpool_reload_state",
        "state",
        "The last reload's result: 1 for the state that holds",
        &RELOAD_STATES,
        st.get("reload"),
    );
    if st.get("reloads_ok").is_empty() {
        return; // a forkpool older than these keys
    }
    o.family(
        "forkpool_reloads_total",
        "counter",
        "Reloads (HUP) by result: ok (every new worker ready), failed (the old generation kept serving)",
    );
    o.sample(
        "forkpool_reloads_total",
        &[("result", "ok")],
        st.num("reloads_ok"),
    );
    o.sample(
        "forkpool_reloads_total",
        &[("result", "failed")],
        st.num("reloads_failed"),
    );
    if !st.get("reload_seconds").is_empty() {
        o.one(
            "forkpool_last_reload_duration_seconds",
            "gauge",
            "How long the last successful reload took, from the HUP to every new worker ready",
            st.get("reload_seconds"),
        );
    }
    let name = "forkpool_reload_duration_seconds";
    o.family(
        name,
        "histogram",
        "How long successful reloads took, from the HUP to every new worker ready",
    );
    for pair in st.get("reload_seconds_le").split(',') {
        if let Some((le, n)) = pair.split_once(':') {
            if le.parse::<f64>().is_ok() && n.parse::<u64>().is_ok() {
                o.sample(&format!("{name}_bucket"), &[("le", le)], n);
            }
        }
    }
    o.sample(
        &format!("{name}_bucket"),
        &[("le", "+Inf")],
        st.num("reloads_ok"),
    );
    let sum = st.get("reload_seconds_sum");
    let sum = if sum.parse::<f64>().is_ok() { sum } else { "0" };
    o.sample(&format!("{name}_sum"), &[], sum);
    o.sample(&format!("{name}_count"), &[], st.num("reloads_ok"));
}

fn lifecycle(o: &mut Out, st: &Status) {
    o.family(
        "forkpool_recycles_total",
        "counter",
        "Workers recycled (replaced, the replacement ready first) by reason: age (--max-age), memory (--max-rss), asked (the worker's own word), watchdog (missed pings: killed)",
    );
    for r in RECYCLE_REASONS {
        o.sample(
            "forkpool_recycles_total",
            &[("reason", r)],
            st.num(&format!("recycled_{r}")),
        );
    }
    if !st.get("upgrade").is_empty() {
        o.family(
            "forkpool_upgrades_total",
            "counter",
            "In-place upgrades (USR2) by result: ok (the new build runs), failed (refused: the old one runs on)",
        );
        o.sample(
            "forkpool_upgrades_total",
            &[("result", "ok")],
            st.num("upgrades"),
        );
        o.sample(
            "forkpool_upgrades_total",
            &[("result", "failed")],
            st.num("upgrade_failures"),
        );
        o.states(
            "forkpool_upgrade_state",
            "state",
            "The last in-place upgrade's result: 1 for the state that holds",
            &RELOAD_STATES,
            st.get("upgrade"),
        );
    }
    if !st.get("control").is_empty() {
        o.states(
            "forkpool_two_phase_state",
            "phase",
            "-C: where the two-phase deploy (prepare, commit, abort) stands: 1 for the phase that holds",
            &PHASES,
            st.get("phase"),
        );
        o.one(
            "forkpool_two_phase_generation",
            "gauge",
            "-C: the generation the last prepare started (0: none yet)",
            st.num("phase_generation"),
        );
        for (key, name, help) in [
            (
                "commit_at",
                "forkpool_two_phase_commit_timestamp_seconds",
                "-C: the instant the last commit was set for, in seconds since the epoch",
            ),
            (
                "released_at",
                "forkpool_two_phase_released_timestamp_seconds",
                "-C: when the committed generation was released, in seconds since the epoch",
            ),
        ] {
            if st.get(key).parse::<f64>().is_ok() {
                o.one(name, "gauge", help, st.get(key));
            }
        }
    }
    if !st.get("verify").is_empty() {
        o.states(
            "forkpool_verify_state",
            "state",
            "--confirm-timeout: where the verified switch stands (pending: the old generation parked): 1 for the state that holds",
            &VERIFY_STATES,
            st.get("verify"),
        );
        o.one(
            "forkpool_parked_workers",
            "gauge",
            "--confirm-timeout: workers of the old generation parked (stopped, warm) until confirm or revert",
            st.num("parked"),
        );
        if st.get("verify_deadline").parse::<f64>().is_ok() {
            o.one(
                "forkpool_verify_deadline_timestamp_seconds",
                "gauge",
                "--confirm-timeout: when the pending switch reverts unless confirmed, in seconds since the epoch",
                st.get("verify_deadline"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHOLE: &str = "pid=42\nstate=running\ngeneration=3\nserving_generation=3\nworkers=2\nready=2\nreload=ok\nreason=\nrelease=/srv/r\"2\\\nmode=cutover\nheld=0\nreloads_ok=2\nreloads_failed=1\nreload_seconds=0.250000\nreload_seconds_sum=0.300000\nreload_seconds_le=0.05:1,0.1:1,0.25:2\nupgrade=ok\nupgrades=4\nupgrade_failures=1\nversion=abc\nrecycles=3\nrecycled_age=2\nrecycled_memory=0\nrecycled_asked=1\nrecycled_watchdog=0\nworker=0 3 50 ready age=1 recycles=0 why=-\nworker=1 3 51 ready age=1 recycles=0 why=-\nworker=0 2 40 stopping age=9 recycles=0 why=-\n";

    fn seen(status: Option<&str>, alive: bool) -> Seen<'_> {
        Seen {
            status,
            alive,
            times: Some(ProcTimes {
                start_unix: 1000.5,
                uptime: 20.0,
            }),
            healthy: alive,
            drained: false,
        }
    }

    fn has(text: &str, line: &str) -> bool {
        text.lines().any(|l| l == line)
    }

    #[test]
    fn a_whole_pool_in_the_text_format() {
        let t = render(&seen(Some(WHOLE), true));
        for line in [
            "pool_health_up 1",
            "forkpool_up 1",
            "forkpool_workers{state=\"ready\"} 2",
            "forkpool_workers{state=\"stopping\"} 1",
            "forkpool_workers{state=\"held\"} 0",
            "forkpool_serving_info{generation=\"3\",release=\"/srv/r\\\"2\\\\\"} 1",
            "forkpool_reloads_total{result=\"ok\"} 2",
            "forkpool_reloads_total{result=\"failed\"} 1",
            "forkpool_reload_state{state=\"ok\"} 1",
            "forkpool_reload_state{state=\"failed\"} 0",
            "forkpool_last_reload_duration_seconds 0.250000",
            "forkpool_reload_duration_seconds_bucket{le=\"0.05\"} 1",
            "forkpool_reload_duration_seconds_bucket{le=\"+Inf\"} 2",
            "forkpool_reload_duration_seconds_count 2",
            "forkpool_recycles_total{reason=\"age\"} 2",
            "forkpool_upgrades_total{result=\"failed\"} 1",
            "forkpool_start_time_seconds 1000.50",
            "forkpool_info{version=\"abc\",mode=\"cutover\"} 1",
        ] {
            assert!(has(&t, line), "no {line:?} in\n{t}");
        }
        assert!(!t.contains("two_phase"), "no -C: no two-phase metrics\n{t}");
        // every family: HELP, TYPE, then its samples
        let families = t.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert_eq!(
            families,
            t.lines().filter(|l| l.starts_with("# HELP ")).count()
        );
    }

    #[test]
    fn two_phase_keys_and_an_older_status_file() {
        let st = format!(
            "{WHOLE}control=/c\nphase=prepared\nphase_generation=4\ncommit_at=\nreleased_at=\n"
        );
        let t = render(&seen(Some(&st), true));
        assert!(
            has(&t, "forkpool_two_phase_state{phase=\"prepared\"} 1"),
            "{t}"
        );
        assert!(has(&t, "forkpool_two_phase_generation 4"), "{t}");
        assert!(!t.contains("commit_timestamp"), "{t}");
        assert!(!t.contains("forkpool_verify_state"), "{t}");
        let st = format!(
            "{WHOLE}verify=pending\nverify_generation=4\nparked_generation=3\nverify_deadline=1764245000.250\nparked=2\n"
        );
        let t = render(&seen(Some(&st), true));
        assert!(has(&t, "forkpool_verify_state{state=\"pending\"} 1"), "{t}");
        assert!(
            has(&t, "forkpool_verify_state{state=\"confirmed\"} 0"),
            "{t}"
        );
        assert!(has(&t, "forkpool_parked_workers 2"), "{t}");
        assert!(
            has(
                &t,
                "forkpool_verify_deadline_timestamp_seconds 1764245000.250"
            ),
            "{t}"
        );
        let old = "pid=42\nstate=running\nworkers=1\nreload=none\n";
        let t = render(&seen(Some(old), true));
        assert!(!t.contains("forkpool_reloads_total"), "{t}");
        assert!(!t.contains("forkpool_upgrades_total"), "{t}");
        assert!(has(&t, "forkpool_reload_state{state=\"none\"} 1"), "{t}");
    }

    #[test]
    fn no_pool_says_so_and_nothing_else() {
        for (status, alive) in [(None, false), (Some(WHOLE), false), (Some("junk\n"), true)] {
            let t = render(&seen(status, alive));
            assert!(has(&t, "forkpool_up 0"), "{t}");
            assert!(!t.contains("forkpool_workers"), "{t}");
        }
    }
}
