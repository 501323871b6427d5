//! poolctl: ask the supervisor (forkpool or loop-forever) that writes a status
//! file for its state, a reload or an in-place upgrade, and wait for the
//! definite answer; with forkpool -C, prepare, commit or abort a two-phase
//! deploy, confirm or revert a verified switch (control.rs). See README.md.

mod control;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lexopt::prelude::*;
use unixtool::statusfile::{self, Status, WaitError};
use unixtool::{Tool, EXIT_TEMPORARY};

/// Not whole and serving; the reload or upgrade failed or timed out.
const EXIT_NO: i32 = 1;
/// No pool runs there: no status file, a stale or foreign pid.
const EXIT_NOT_RUNNING: i32 = 3;

const TOOL: Tool = Tool {
    name: "poolctl",
    usage: "poolctl status|reload|upgrade|prepare|abort|confirm|revert [-t secs] statusfile | poolctl commit [--at unix_time] [-t secs] statusfile",
    help: "
  status                    the pool in one screen; exit 0 when whole and serving
  reload                    HUP the pool, wait until the new generation serves
  upgrade                   USR2 the pool, wait until the new binary runs
  prepare                   (forkpool -C) start a new generation, wait until it is
                            ready and held while the old one serves
  commit                    switch to the prepared generation, wait until it serves
      --at UNIX_TIME        commit at that wall-clock instant (e.g. 1764245000.250)
  abort                     stop the prepared generation, wait until it is gone
  confirm                   (forkpool --confirm-timeout) retire the parked generation
                            after a switch, wait until it is done
  revert                    serve the parked generation again at once, retire the
                            new one, wait until the old one serves, whole
  -t, --timeout SECS        how long every form but status waits (default 60)
  -h, --help                this text
  -V, --version             the version
",
};

/// What a subcommand gets.
struct Args {
    statusfile: PathBuf,
    timeout: Duration,
    /// `commit --at`: the wall-clock instant, as given (checked).
    at: Option<String>,
}

/// The subcommands: name and what runs it (returns the exit code).
type Command = (&'static str, fn(&Args) -> i32);
const COMMANDS: [Command; 8] = [
    ("status", status),
    ("reload", reload),
    ("upgrade", upgrade),
    ("prepare", control::prepare),
    ("commit", control::commit),
    ("abort", control::abort),
    ("confirm", control::confirm),
    ("revert", control::revert),
];

fn main() {
    let mut parser = lexopt::Parser::from_env();
    let mut timeout = Duration::from_secs(60);
    let mut words: Vec<OsString> = Vec::new();
    let mut at: Option<String> = None;
    while let Some(arg) = TOOL.next_arg(&mut parser) {
        match arg {
            Short('t') | Long("timeout") => {
                let v = TOOL.value(&mut parser);
                timeout = Duration::from_secs(TOOL.number("-t", &v, 1, 86_400));
            }
            Long("at") => {
                let v = TOOL.value(&mut parser);
                match v.to_str().filter(|t| control::valid_time(t)) {
                    Some(t) => at = Some(t.to_string()),
                    None => TOOL.usage(format_args!(
                        "--at wants seconds since the epoch such as 1764245000.250, not {:?}",
                        v.to_string_lossy()
                    )),
                }
            }
            Short('h') | Long("help") => TOOL.print_help(),
            Short('V') | Long("version") => TOOL.print_version(),
            Value(v) => words.push(v),
            other => TOOL.bad_arg(other.unexpected()),
        }
    }
    let [command, statusfile] = match <[OsString; 2]>::try_from(words) {
        Ok(two) => two,
        Err(v) if v.len() < 2 => TOOL.usage("missing command or statusfile"),
        Err(_) => TOOL.usage("too many arguments"),
    };
    let command = command.to_string_lossy();
    let Some((_, run)) = COMMANDS.iter().find(|(name, _)| *name == command) else {
        TOOL.usage(format_args!("unknown command {command}"))
    };
    if at.is_some() && command != "commit" {
        TOOL.usage("--at goes with commit only");
    }
    let args = Args {
        statusfile: statusfile.into(),
        timeout,
        at,
    };
    std::process::exit(run(&args))
}

/// `status`: one screen; 0 whole and serving, 1 not, 3 no pool.
fn status(args: &Args) -> i32 {
    let (chain, st) = match statusfile::chain(&args.statusfile) {
        Ok(c) => c,
        Err(e) => not_running(&e.0),
    };
    TOOL.print(format_args!("{}", screen(&chain, &st)));
    if st.serving() {
        0
    } else {
        EXIT_NO
    }
}

/// What a status file says, for a terminal: control bytes quoted, long text
/// cut (a hostile or foreign file cannot send escapes to the screen).
pub fn quoted(text: &str) -> String {
    unixtool::quote::line(text, unixtool::quote::MAX_LINE)
}

/// The pool in a few lines, for a human (each line [`quoted`]).
fn screen(chain: &statusfile::Chain, st: &Status) -> String {
    let mut out = String::new();
    for line in screen_text(chain, st).lines() {
        out += &quoted(line);
        out.push('\n');
    }
    out
}

fn screen_text(chain: &statusfile::Chain, st: &Status) -> String {
    let mut s = format!(
        "{} pid {}: {}, generation {} serving of {} started, {} of {} ready ({})\n",
        chain.program,
        chain.pid,
        st.get("state"),
        st.num("serving_generation"),
        st.num("generation"),
        st.num("ready"),
        st.num("workers"),
        st.get("mode"),
    );
    if !st.get("release").is_empty() {
        s += &format!("release {}\n", st.get("release"));
    }
    s += &format!("last reload: {}", st.get("reload"));
    if !st.get("reason").is_empty() {
        s += &format!(": {}", st.get("reason"));
    }
    s.push('\n');
    for w in &st.workers {
        let f: Vec<&str> = w.split_whitespace().collect();
        // Four fields, then forkpool's lifecycle fields (age=, recycles=, ...).
        if let [slot, gen, pid, state, ref more @ ..] = f[..] {
            s += &format!("worker {slot}: generation {gen}, pid {pid}, {state}");
            if !more.is_empty() {
                s += &format!(" ({})", more.join(" "));
            }
            s.push('\n');
        }
    }
    s
}

/// `reload`: HUP and wait for the new generation to serve.
fn reload(args: &Args) -> i32 {
    let answer = statusfile::reload(&args.statusfile, args.timeout, &mut || false);
    verdict("reload", answer, &args.statusfile)
}

/// `upgrade`: USR2 and wait for the new binary to run.
fn upgrade(args: &Args) -> i32 {
    let answer = statusfile::upgrade(&args.statusfile, args.timeout, &mut || false);
    verdict("upgrade", answer, &args.statusfile)
}

/// One line for the answer; the exit code.
fn verdict(what: &str, answer: statusfile::Answer, path: &Path) -> i32 {
    match answer {
        Ok(st) => {
            let release = match st.get("release") {
                "" => String::new(),
                r => format!(" in {}", quoted(r)),
            };
            TOOL.print(format_args!(
                "poolctl: {what} ok: generation {} serving, {} of {} ready{release}\n",
                st.num("serving_generation"),
                st.num("ready"),
                st.num("workers")
            ));
            0
        }
        Err(WaitError::NotRunning(r)) => not_running(&r),
        Err(WaitError::Failed(r)) => {
            unixtool::message_line(TOOL.name, format_args!("{what} failed: {r}"));
            EXIT_NO
        }
        Err(WaitError::TimedOut { reason, .. }) => {
            unixtool::message_line(TOOL.name, format_args!("{what} failed: {reason}"));
            EXIT_NO
        }
        Err(WaitError::Interrupted) => TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!("{what} of {} interrupted", path.display()),
        ),
    }
}

fn not_running(reason: &str) -> ! {
    TOOL.fatal(
        EXIT_NOT_RUNNING,
        format_args!("no pool runs there: {reason}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_screen_says_what_the_file_says() {
        let st = Status::parse(
            "pid=7\nstate=running\ngeneration=3\nserving_generation=2\nworkers=2\nready=2\nreload=failed\nreason=worker 1 exited 1\nrelease=/srv/r2\nmode=cutover\nworker=0 2 10 ready\nworker=1 2 11 ready age=5 recycles=1 why=age:1\n",
        );
        let chain = statusfile::Chain {
            pid: 7,
            program: "forkpool".into(),
        };
        let s = screen(&chain, &st);
        assert_eq!(
            s,
            "forkpool pid 7: running, generation 2 serving of 3 started, 2 of 2 ready (cutover)\n\
             release /srv/r2\n\
             last reload: failed: worker 1 exited 1\n\
             worker 0: generation 2, pid 10, ready\n\
             worker 1: generation 2, pid 11, ready (age=5 recycles=1 why=age:1)\n"
        );
        assert!(st.serving());
    }
}
