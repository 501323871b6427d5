//! The policy: from forkpool's status file and the drain file to up or down,
//! with a one-line reason. No system calls here but what the caller hands in.

use unixtool::statusfile::Status;

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
}

/// Up when not drained and the pool is whole and serving: `state=running`, a
/// `serving_generation` above 0, `ready` at least `workers`, and the pid it
/// names alive (`pid_alive`), so a status file left behind by a pool that was
/// killed reads as down.
pub fn judge(seen: &Seen, pid_alive: impl Fn(i32) -> bool) -> Verdict {
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
    if !pid_alive(pid) {
        return Verdict::Down(format!(
            "the pool's pid {pid} is not running (stale status file)"
        ));
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
    let phase = match get("phase") {
        "" | "none" => String::new(),
        p => format!(", phase {p}"),
    };
    Verdict::Up(format!(
        "generation {generation} serving, {ready} of {workers} workers ready{phase}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WHOLE: &str = "pid=42\nstate=running\ngeneration=3\nserving_generation=3\nworkers=4\nready=4\nreload=ok\nworker=0 3 50 ready\n";

    fn seen(status: Result<&str, &str>, drain: Option<Result<(), String>>) -> Seen<'static> {
        Seen {
            drain,
            drain_path: "/s/drain",
            status: status.map(str::to_string).map_err(str::to_string),
            status_path: "/s/status",
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
        let s = up(judge(&seen(Ok(WHOLE), None), |_| true));
        assert_eq!(s, "generation 3 serving, 4 of 4 workers ready");
        // held workers of a prepared generation do not count against it
        let prepared = format!("{WHOLE}phase=prepared\nheld=4\n");
        let s = up(judge(&seen(Ok(&prepared), None), |_| true));
        assert!(s.ends_with(", phase prepared"), "{s}");
        // more ready than wanted (old and new during a rolling reload)
        let more = WHOLE.replace("ready=4", "ready=6");
        up(judge(&seen(Ok(&more), None), |_| true));
    }

    #[test]
    fn drained_is_down_whatever_the_pool() {
        let s = down(judge(&seen(Ok(WHOLE), Some(Ok(()))), |_| true));
        assert_eq!(s, "drained: /s/drain exists");
        let s = down(judge(
            &seen(Ok(WHOLE), Some(Err("Permission denied".into()))),
            |_| true,
        ));
        assert!(s.contains("drain file /s/drain: Permission denied"), "{s}");
    }

    #[test]
    fn a_pool_short_of_workers_or_not_serving_is_down() {
        let short = WHOLE.replace("ready=4", "ready=3");
        let s = down(judge(&seen(Ok(&short), None), |_| true));
        assert_eq!(s, "3 of 4 workers ready (generation 3)");
        let none = WHOLE.replace("serving_generation=3", "serving_generation=0");
        assert_eq!(
            down(judge(&seen(Ok(&none), None), |_| true)),
            "no generation serves yet"
        );
        let stopping = WHOLE.replace("state=running", "state=stopping");
        assert_eq!(
            down(judge(&seen(Ok(&stopping), None), |_| true)),
            "the pool is not running (state=stopping)"
        );
    }

    #[test]
    fn a_dead_pid_missing_or_garbled_file_is_down() {
        let s = down(judge(&seen(Ok(WHOLE), None), |p| p != 42));
        assert!(s.contains("pid 42 is not running"), "{s}");
        let s = down(judge(&seen(Err("No such file or directory"), None), |_| {
            true
        }));
        assert_eq!(
            s,
            "unable to read the status file /s/status: No such file or directory"
        );
        for junk in ["", "garbage\n", "pid=x\nstate=running\n"] {
            let s = down(judge(&seen(Ok(junk), None), |_| true));
            assert!(s.contains("no pid="), "{junk:?}: {s}");
        }
        let no_counts = "pid=42\nstate=running\nserving_generation=1\n";
        let s = down(judge(&seen(Ok(no_counts), None), |_| true));
        assert!(s.contains("no ready="), "{s}");
    }
}
