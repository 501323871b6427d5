//! `prepare`, `commit`, `abort`: a line to the control FIFO of a checked
//! forkpool (`control=` in its status file, `forkpool -C`), then a wait for
//! its answer in the status file: `command=` counts the commands it read and
//! says whether the last was accepted; `phase=` says where the deploy stands.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use unixtool::statusfile::{self, Status};

use crate::{not_running, quoted, Args, EXIT_NO, TOOL};

/// What the pool said to our command: its count, its word, accepted or not.
fn command_of(st: &Status) -> (u64, bool) {
    let v = st.get("command");
    let mut f = v.split_whitespace();
    let n = f.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let accepted = v.ends_with(" accepted");
    (n, accepted)
}

/// A wall-clock time as `commit` takes it: digits, an optional fraction.
pub fn valid_time(t: &str) -> bool {
    let (int, frac) = t.split_once('.').unwrap_or((t, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    digits(int) && digits(frac) && int.len() <= 11
}

/// The FIFO the pool reads (`control=`; a relative name is the pool's cwd's).
fn fifo_of(pid: i32, st: &Status) -> Option<PathBuf> {
    let c = st.get("control");
    if c.is_empty() {
        return None;
    }
    let p = Path::new(c);
    if p.is_absolute() {
        return Some(p.to_path_buf());
    }
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
    Some(cwd.join(p))
}

/// Write `line` to the FIFO: never blocks, never follows a symlink, never
/// writes to anything but a FIFO.
/// `Err(why)`: `missing` when nothing is at the FIFO's name.
fn send(fifo: &Path, line: &str) -> Result<(), String> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(fifo)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "missing".to_string(),
            _ => unixtool::io_reason(&e),
        })?;
    let is_fifo = f.metadata().map(|m| m.file_type().is_fifo());
    if !is_fifo.unwrap_or(false) {
        return Err("not a FIFO".to_string());
    }
    f.write_all(format!("{line}\n").as_bytes())
        .map_err(|e| unixtool::io_reason(&e))
}

/// How a command's wait ends once the pool accepted it: `Some(Ok(line))`
/// done, `Some(Err(reason))` failed, `None` not yet.
type Done = fn(&Status) -> Option<Result<String, String>>;

/// Send `line`, wait for the answer; the exit code.
fn run(args: &Args, word: &str, line: &str, done: Done) -> i32 {
    let (chain, before) = match statusfile::chain(&args.statusfile) {
        Ok(c) => c,
        Err(e) => not_running(&e.0),
    };
    let pid = chain.pid;
    let Some(fifo) = fifo_of(pid, &before) else {
        unixtool::message_line(
            TOOL.name,
            format_args!(
                "{word} failed: pid {pid} ({}) has no control FIFO (forkpool -C)",
                chain.program
            ),
        );
        return EXIT_NO;
    };
    // The pool runs (checked above): the FIFO is what is wrong.
    if let Err(why) = send(&fifo, line) {
        let why = if why == "missing" {
            format!("control FIFO {} missing (pid {pid} runs)", fifo.display())
        } else {
            format!("unable to write to control FIFO {}: {why}", fifo.display())
        };
        return no(word, &why);
    }
    let (n0, _) = command_of(&before);
    let start = Instant::now();
    loop {
        if let Ok(st) = statusfile::read(&args.statusfile) {
            let (n, accepted) = command_of(&st);
            if n > n0 && !accepted {
                return no(word, st.get("reason"));
            }
            if n > n0 {
                match done(&st) {
                    Some(Ok(msg)) => {
                        TOOL.print(format_args!("poolctl: {word} ok: {}\n", quoted(&msg)));
                        return 0;
                    }
                    Some(Err(why)) => return no(word, &why),
                    None => {}
                }
            }
        }
        if !statusfile::alive(pid) {
            not_running(&format!(
                "pid {pid} ({}) died while we waited",
                chain.program
            ));
        }
        if start.elapsed() >= args.timeout {
            let st = statusfile::read(&args.statusfile).unwrap_or_default();
            return no(
                word,
                &format!(
                    "timed out after {}s: phase={} phase_generation={} command={}",
                    args.timeout.as_secs(),
                    st.get("phase"),
                    st.get("phase_generation"),
                    st.get("command")
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
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

/// `prepare`: 0 when `phase=prepared`, 1 when it failed or was aborted.
pub fn prepare(args: &Args) -> i32 {
    run(args, "prepare", "prepare", |st| {
        let g = st.num("phase_generation");
        match st.get("phase") {
            "prepared" => Some(Ok(format!(
                "generation {g} ready and held ({} workers), generation {} serving",
                workers_of(st, g),
                st.num("serving_generation")
            ))),
            "failed" | "aborted" => Some(Err(format!(
                "generation {g} {}: {}",
                st.get("phase"),
                st.get("reason")
            ))),
            _ => None,
        }
    })
}

/// `commit`: 0 when committed and the new generation serves, whole.
pub fn commit(args: &Args) -> i32 {
    let line = match &args.at {
        Some(t) => format!("commit {t}"),
        None => "commit".to_string(),
    };
    run(args, "commit", &line, |st| {
        let g = st.num("phase_generation");
        match st.get("phase") {
            "committed"
                if st.num("serving_generation") == g && st.num("ready") >= st.num("workers") =>
            {
                Some(Ok(format!(
                    "generation {g} serving, {} of {} ready, released at {} (commit at {})",
                    st.num("ready"),
                    st.num("workers"),
                    st.get("released_at"),
                    st.get("commit_at")
                )))
            }
            "failed" | "aborted" => Some(Err(format!(
                "generation {g} {}: {}",
                st.get("phase"),
                st.get("reason")
            ))),
            _ => None,
        }
    })
}

/// `abort`: 0 once nothing prepared is left (its workers gone) and the old
/// generation serves; 1 when it was too late (committed, switching).
pub fn abort(args: &Args) -> i32 {
    run(args, "abort", "abort", |st| {
        let g = st.num("phase_generation");
        match st.get("phase") {
            "aborted" | "failed" | "none" if workers_of(st, g) == 0 => Some(Ok(format!(
                "nothing of generation {g} runs, generation {} serving",
                st.num("serving_generation")
            ))),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_and_the_time() {
        let st = Status::parse("command=3 commit refused\nreason=nothing is prepared\n");
        assert_eq!(command_of(&st), (3, false));
        let st = Status::parse("command=4 prepare accepted\n");
        assert_eq!(command_of(&st), (4, true));
        assert_eq!(command_of(&Status::parse("command=0\n")), (0, false));
        assert!(valid_time("1764245000.250"));
        assert!(valid_time("1764245000"));
        for bad in ["", "-1", "1e9", "12.", ".5", "soon", "1764245000.25.1"] {
            assert!(!valid_time(bad), "{bad}");
        }
        let st = Status::parse("worker=0 2 10 ready\nworker=1 3 11 held\nworker=2 3 12 held\n");
        assert_eq!(workers_of(&st, 3), 2);
        assert_eq!(workers_of(&st, 4), 0);
    }
}
