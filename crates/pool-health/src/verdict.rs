//! The policy: from forkpool's status file and the drain file to up or down,
//! with a one-line reason. No system calls here but what the caller hands in.

use std::time::Duration;

use unixtool::statusfile::{ProcState, Status};

/// A status file that names ready workers which do not run, and has not
/// changed for this long, is one its pool does not write (forkpool rewrites
/// it within milliseconds of a worker's end).
pub const STALE: Duration = Duration::from_secs(2);

/// What judge asks the system (the real one reads /proc; the tests fake it).
pub trait Processes {
    /// /proc/PID/stat: None when there is no such process.
    fn state(&self, pid: i32) -> Option<ProcState>;
    /// The checks poolctl makes: forkpool or loop-forever, writing this file.
    fn writes_this_file(&self, status: &Status) -> Result<(), String>;
}

/// What the check answers: up (200) or down (503), and why, in one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Up(String),
    Down(String),
}

/// What the caller found on disk: the drain file, and the status file's text.
pub struct Seen<'a> {
    /// `Some(Ok(()))` the drain file exists; `Some(Err(reason))` it cannot be
    /// looked at; `None` no drain file was given, or it is absent.
    pub drain: Option<Result<(), String>>,
    pub drain_path: &'a str,
    /// The status file's text, or why it could not be read.
    pub status: Result<String, String>,
    pub status_path: &'a str,
    /// How long ago the status file last changed (its mtime).
    pub age: Duration,
}

/// Up when not drained and the pool is whole and serving: `state=running`, a
/// `serving_generation` above 0, `ready` at least `workers`; the pid it names
/// alive, not stopped, forkpool or loop-forever writing this very file; and
/// at least `workers` of the workers it names ready alive, not stopped, and
/// children of that pid. So a status file left behind by a pool that was
/// killed, one naming another process, or one that a stopped or stuck pool
/// no longer writes reads as down.
pub fn judge(seen: &Seen, procs: &dyn Processes) -> Verdict {
    match &seen.drain {
        Some(Ok(())) => return Verdict::Down(format!("drained: {} exists", seen.drain_path)),
        Some(Err(reason)) => {
            return Verdict::Down(format!(
                "unable to look at the drain file {}: {reason}",
                seen.drain_path
            ))
        }
        None => {}
    }
    let text = match &seen.status {
        Ok(t) => t,
        Err(reason) => {
            return Verdict::Down(format!(
                "unable to read the status file {}: {reason}",
                seen.status_path
            ))
        }
    };
    let st = Status::parse(text);
    let get = |k: &str| st.get(k);
    let num = |k: &str| get(k).parse::<u64>().ok();
    let Some(pid) = get("pid").parse::<i32>().ok().filter(|p| *p > 0) else {
        return Verdict::Down(format!("no pid= in the status file {}", seen.status_path));
    };
    if get("state") != "running" {
        let state = if get("state").is_empty() {
            "unknown"
        } else {
            get("state")
        };
        return Verdict::Down(format!("the pool is not running (state={state})"));
    }
    match procs.state(pid) {
        None => {
            return Verdict::Down(format!(
                "the pool's pid {pid} is not running (stale status file)"
            ))
        }
        Some(p) if p.dead() => {
            return Verdict::Down(format!(
                "the pool's pid {pid} is not running (stale status file)"
            ))
        }
        Some(p) if p.stopped() => {
            return Verdict::Down(format!(
                "the pool's pid {pid} is stopped: it supervises nothing and writes nothing"
            ))
        }
        Some(_) => {}
    }
    if let Err(why) = procs.writes_this_file(&st) {
        return Verdict::Down(why);
    }
    let (Some(ready), Some(workers)) = (num("ready"), num("workers")) else {
        return Verdict::Down("no ready= or workers= in the status file".to_string());
    };
    let generation = num("serving_generation").unwrap_or(0);
    if generation == 0 {
        return Verdict::Down("no generation serves yet".to_string());
    }
    if ready < workers {
        return Verdict::Down(format!(
            "{ready} of {workers} workers ready (generation {generation})"
        ));
    }
    if let Some(why) = workers_not_running(&st, pid, workers, seen, procs) {
        return Verdict::Down(why);
    }
    let phase = match get("phase") {
        "" | "none" => String::new(),
        p => format!(", phase {p}"),
    };
    Verdict::Up(format!(
        "generation {generation} serving, {ready} of {workers} workers ready{phase}"
    ))
}

/// Fewer than `workers` of the ready workers the file names run (alive, not
/// stopped, children of `pool`): why, in one line; None when enough do.
fn workers_not_running(
    st: &Status,
    pool: i32,
    workers: u64,
    seen: &Seen,
    procs: &dyn Processes,
) -> Option<String> {
    let mut running = 0u64;
    let mut first_bad = None;
    for w in &st.workers {
        let f: Vec<&str> = w.split_whitespace().collect();
        let (Some(pid), Some(&"ready")) = (f.get(2).and_then(|p| p.parse::<i32>().ok()), f.get(3))
        else {
            continue;
        };
        let why = match procs.state(pid) {
            None => Some("gone"),
            Some(p) if p.dead() => Some("gone"),
            Some(p) if p.stopped() => Some("stopped"),
            Some(p) if p.ppid != pool => Some("not a child of the pool"),
            Some(_) => None,
        };
        match why {
            None => running += 1,
            Some(w) => {
                first_bad.get_or_insert(format!("worker pid {pid} is {w}"));
            }
        }
    }
    if running >= workers {
        return None;
    }
    let bad = first_bad.unwrap_or_else(|| "no ready worker line".to_string());
    Some(if seen.age >= STALE {
        format!(
            "{running} of {workers} workers run ({bad}), and the status file has not changed for {}s: pid {pool} does not write it",
            seen.age.as_secs()
        )
    } else {
        format!("{running} of {workers} workers run ({bad})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHOLE: &str = "pid=42\nstate=running\ngeneration=3\nserving_generation=3\nworkers=4\nready=4\nreload=ok\nworker=0 3 50 ready\nworker=1 3 51 ready\nworker=2 3 52 ready\nworker=3 3 53 ready\n";

    /// Processes as the tests want them: every pid runs, a child of 42,
    /// but those named.
    #[derive(Default)]
    struct Fake {
        gone: Vec<i32>,
        stopped: Vec<i32>,
        foreign: Option<&'static str>,
    }

    impl Processes for Fake {
        fn state(&self, pid: i32) -> Option<ProcState> {
            if self.gone.contains(&pid) {
                return None;
            }
            let state = if self.stopped.contains(&pid) {
                'T'
            } else {
                'S'
            };
            Some(ProcState { state, ppid: 42 })
        }
        fn writes_this_file(&self, _: &Status) -> Result<(), String> {
            self.foreign.map_or(Ok(()), |f| Err(f.to_string()))
        }
    }

    fn ok() -> Fake {
        Fake::default()
    }

    fn seen(status: Result<&str, &str>, drain: Option<Result<(), String>>) -> Seen<'static> {
        Seen {
            drain,
            drain_path: "/s/drain",
            status: status.map(str::to_string).map_err(str::to_string),
            status_path: "/s/status",
            age: Duration::from_secs(1),
        }
    }

    fn up(v: Verdict) -> String {
        match v {
            Verdict::Up(s) => s,
            Verdict::Down(s) => panic!("down: {s}"),
        }
    }

    fn down(v: Verdict) -> String {
        match v {
            Verdict::Down(s) => s,
            Verdict::Up(s) => panic!("up: {s}"),
        }
    }

    #[test]
    fn whole_and_serving_is_up() {
        let s = up(judge(&seen(Ok(WHOLE), None), &ok()));
        assert_eq!(s, "generation 3 serving, 4 of 4 workers ready");
        // held workers of a prepared generation do not count against it
        let prepared = format!("{WHOLE}phase=prepared\nheld=4\n");
        let s = up(judge(&seen(Ok(&prepared), None), &ok()));
        assert!(s.ends_with(", phase prepared"), "{s}");
        // more ready than wanted (old and new during a rolling reload)
        let more = WHOLE.replace("ready=4", "ready=6");
        up(judge(&seen(Ok(&more), None), &ok()));
    }

    #[test]
    fn drained_is_down_whatever_the_pool() {
        let s = down(judge(&seen(Ok(WHOLE), Some(Ok(()))), &ok()));
        assert_eq!(s, "drained: /s/drain exists");
        let s = down(judge(
            &seen(Ok(WHOLE), Some(Err("Permission denied".into()))),
            &ok(),
        ));
        assert!(s.contains("drain file /s/drain: Permission denied"), "{s}");
    }

    #[test]
    fn a_pool_short_of_workers_or_not_serving_is_down() {
        let short = WHOLE.replace("ready=4", "ready=3");
        let s = down(judge(&seen(Ok(&short), None), &ok()));
        assert_eq!(s, "3 of 4 workers ready (generation 3)");
        let none = WHOLE.replace("serving_generation=3", "serving_generation=0");
        assert_eq!(
            down(judge(&seen(Ok(&none), None), &ok())),
            "no generation serves yet"
        );
        let stopping = WHOLE.replace("state=running", "state=stopping");
        assert_eq!(
            down(judge(&seen(Ok(&stopping), None), &ok())),
            "the pool is not running (state=stopping)"
        );
    }

    #[test]
    fn a_dead_pid_missing_or_garbled_file_is_down() {
        let s = down(judge(
            &seen(Ok(WHOLE), None),
            &Fake {
                gone: vec![42],
                ..Fake::default()
            },
        ));
        assert!(s.contains("pid 42 is not running"), "{s}");
        let s = down(judge(&seen(Err("No such file or directory"), None), &ok()));
        assert_eq!(
            s,
            "unable to read the status file /s/status: No such file or directory"
        );
        for junk in ["", "garbage\n", "pid=x\nstate=running\n"] {
            let s = down(judge(&seen(Ok(junk), None), &ok()));
            assert!(s.contains("no pid="), "{junk:?}: {s}");
        }
        let no_counts = "pid=42\nstate=running\nserving_generation=1\n";
        let s = down(judge(&seen(Ok(no_counts), None), &ok()));
        assert!(s.contains("no ready="), "{s}");
    }

    #[test]
    fn a_stopped_or_foreign_pool_and_workers_that_do_not_run_are_down() {
        let st = Fake {
            stopped: vec![42],
            ..Fake::default()
        };
        let s = down(judge(&seen(Ok(WHOLE), None), &st));
        assert!(s.contains("pid 42 is stopped"), "{s}");
        let foreign = Fake {
            foreign: Some("pid 42 named by /s/status is sleep, not forkpool"),
            ..Fake::default()
        };
        let s = down(judge(&seen(Ok(WHOLE), None), &foreign));
        assert!(s.contains("is sleep, not forkpool"), "{s}");
        // every worker stopped
        let stopped = Fake {
            stopped: vec![50, 51, 52, 53],
            ..Fake::default()
        };
        let s = down(judge(&seen(Ok(WHOLE), None), &stopped));
        assert_eq!(s, "0 of 4 workers run (worker pid 50 is stopped)");
        // one gone, and the file old: the pool does not write it
        let gone = Fake {
            gone: vec![52],
            ..Fake::default()
        };
        let mut old = seen(Ok(WHOLE), None);
        old.age = Duration::from_secs(30);
        let s = down(judge(&old, &gone));
        assert!(s.starts_with("3 of 4 workers run (worker pid 52 is gone), and the status file has not changed for 30s"), "{s}");
        // more ready lines than workers (a rolling reload): enough run
        let more = format!("{WHOLE}worker=0 4 60 ready\n");
        up(judge(&seen(Ok(&more), None), &gone));
    }
}
