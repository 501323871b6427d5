//! `prepare`, `commit`, `abort`, `confirm`, `revert`: a line to the control
//! FIFO of a checked forkpool (`control=` in its status file, `forkpool -C`),
//! then a wait for its answer in the status file (unixtool::statusfile's
//! `control`): `command=` counts the commands it read and says whether the
//! last was accepted; `phase=` says where the deploy stands, `verify=` where
//! the verified switch does (`--confirm-timeout`).

use unixtool::statusfile::{self, Answer, Status, WaitError};
use unixtool::wall_now;

use crate::{not_running, quoted, Args, EXIT_NO, TOOL};

/// A wall-clock time as `commit` takes it: digits, an optional fraction.
pub fn valid_time(t: &str) -> bool {
    let (int, frac) = t.split_once('.').unwrap_or((t, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(int) && digits(frac) && int.len() <= 11
}

/// The answer as one line and the exit code: 0 (`ok`: `message` of the
/// status), 1 refused, failed or timed out, 3 no pool runs there.
fn answer(word: &str, answer: Answer, message: &dyn Fn(&Status) -> String) -> i32 {
    match answer {
        Ok(st) => {
            TOOL.print(format_args!(
                "poolctl: {word} ok: {}\n",
                quoted(&message(&st))
            ));
            0
        }
        Err(WaitError::NotRunning(r)) => not_running(&r),
        Err(WaitError::Failed(why)) | Err(WaitError::TimedOut { reason: why, .. }) => {
            no(word, &why)
        }
        Err(WaitError::Interrupted) => no(word, "interrupted"),
    }
}

/// Send `line`, wait until `done`; the exit code.
fn run(
    args: &Args,
    word: &str,
    line: &str,
    done: statusfile::Done,
    message: &dyn Fn(&Status) -> String,
) -> i32 {
    let a = statusfile::control(&args.statusfile, line, args.timeout, &mut || false, done);
    answer(word, a, message)
}

fn no(word: &str, why: &str) -> i32 {
    unixtool::message_line(TOOL.name, format_args!("{word} failed: {why}"));
    EXIT_NO
}

/// The generation's workers still alive (in any state) in `st`.
fn workers_of(st: &Status, gen: u64) -> usize {
    st.workers
        .iter()
        .filter(|w| w.split_whitespace().nth(1) == Some(&gen.to_string()))
        .count()
}

/// A prepare that failed or was aborted meanwhile.
fn phase_failed(st: &Status) -> Option<Result<(), String>> {
    let g = st.num("phase_generation");
    match st.get("phase") {
        "failed" | "aborted" => Some(Err(format!(
            "generation {g} {}: {}",
            st.get("phase"),
            st.get("reason")
        ))),
        _ => None,
    }
}

/// `prepare`: 0 when `phase=prepared`, 1 when it failed or was aborted.
pub fn prepare(args: &Args) -> i32 {
    let done: statusfile::Done = &|_, st| match st.get("phase") {
        "prepared" => Some(Ok(())),
        _ => phase_failed(st),
    };
    run(args, "prepare", "prepare", done, &|st| {
        let g = st.num("phase_generation");
        format!(
            "generation {g} ready and held ({} workers), generation {} serving",
            workers_of(st, g),
            st.num("serving_generation")
        )
    })
}

/// `commit`: 0 when committed and the new generation serves, whole.
pub fn commit(args: &Args) -> i32 {
    let line = match &args.at {
        Some(t) => format!("commit {t}"),
        None => "commit".to_string(),
    };
    let done: statusfile::Done = &|_, st| match st.get("phase") {
        "committed"
            if st.num("serving_generation") == st.num("phase_generation")
                && st.num("ready") >= st.num("workers") =>
        {
            Some(Ok(()))
        }
        _ => phase_failed(st),
    };
    // When the commit reached this host (the line is written right after):
    // how early or late against its instant.
    let sent = wall_now();
    let came = args
        .at
        .as_deref()
        .and_then(|t| t.parse::<f64>().ok())
        .map(|at| lateness(at, sent))
        .unwrap_or_default();
    run(args, "commit", &line, done, &|st| {
        let mut msg = format!(
            "generation {} serving, {} of {} ready, released at {} (commit at {}{came})",
            st.num("phase_generation"),
            st.num("ready"),
            st.num("workers"),
            st.get("released_at"),
            st.get("commit_at")
        );
        if st.get("verify") == "pending" {
            msg += &verify_pending(st);
        }
        msg
    })
}

/// How the commit sent at `sent` came against its instant `at` (seconds
/// since the epoch): `; came N ms early` (the pool waits for the instant) or
/// `; came N ms late` (the pool switched at once, that late).
fn lateness(at: f64, sent: f64) -> String {
    if sent <= at {
        format!("; came {:.0} ms early", ((at - sent) * 1000.0).round())
    } else {
        format!("; came {:.0} ms late", ((sent - at) * 1000.0).ceil())
    }
}

/// `abort`: 0 once nothing prepared is left (its workers gone) and the old
/// generation serves; 1 when it was too late (committed, switching).
pub fn abort(args: &Args) -> i32 {
    let done: statusfile::Done = &|_, st| {
        let g = st.num("phase_generation");
        match st.get("phase") {
            "aborted" | "failed" | "none" if workers_of(st, g) == 0 => Some(Ok(())),
            _ => None,
        }
    };
    run(args, "abort", "abort", done, &|st| {
        format!(
            "nothing of generation {} runs, generation {} serving",
            st.num("phase_generation"),
            st.num("serving_generation")
        )
    })
}

/// `; generation G parked until T (confirm or revert)`.
fn verify_pending(st: &Status) -> String {
    format!(
        "; generation {} parked until {} (confirm or revert)",
        st.get("parked_generation"),
        st.get("verify_deadline")
    )
}

/// `confirm`: 0 once the parked generation is retired (`verify=confirmed`).
pub fn confirm(args: &Args) -> i32 {
    let a = statusfile::confirm(&args.statusfile, args.timeout, &mut || false);
    answer("confirm", a, &|st| {
        format!(
            "generation {} confirmed, {} of {} ready; the parked workers are retired",
            st.num("verify_generation"),
            st.num("ready"),
            st.num("workers")
        )
    })
}

/// `revert`: 0 once the parked generation serves again, whole.
pub fn revert(args: &Args) -> i32 {
    let a = statusfile::revert(&args.statusfile, args.timeout, &mut || false);
    answer("revert", a, &|st| {
        format!(
            "generation {} serving again, {} of {} ready; generation {} retired",
            st.num("serving_generation"),
            st.num("ready"),
            st.num("workers"),
            st.num("verify_generation")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_and_the_workers() {
        assert!(valid_time("1764245000.250"));
        assert!(valid_time("1764245000"));
        for bad in ["", "-1", "1e9", "12.", ".5", "soon", "1764245000.25.1"] {
            assert!(!valid_time(bad), "{bad}");
        }
        assert_eq!(lateness(100.5, 100.0), "; came 500 ms early");
        assert_eq!(lateness(100.0, 100.0), "; came 0 ms early");
        assert_eq!(lateness(100.0, 100.0301), "; came 31 ms late");
        // late by less than a millisecond is late all the same
        assert_eq!(lateness(100.0, 100.0002), "; came 1 ms late");
        let st = Status::parse("worker=0 2 10 ready\nworker=1 3 11 held\nworker=2 3 12 held\n");
        assert_eq!(workers_of(&st, 3), 2);
        assert_eq!(workers_of(&st, 4), 0);
    }
}
