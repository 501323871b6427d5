//! One supervised child, the part loop-forever and forkpool share: the start
//! with the hand-down rules (what [`crate::child::Spawn`] does, plus the
//! parent-death KILL, the readiness pipe on descriptor N and `NOTIFY_SOCKET`),
//! the readiness intake and deadline, the drain deadline and KILL, and the
//! next moment something is due.
//!
//! Restart timing (the one-second rule, the back-off) is [`crate::backoff`].

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::child::Spawn;
use crate::readiness::{self, NotifySocket, PipeEvent, ReadinessPipe};
use crate::signals::{SignalPipe, SUPERVISOR_SIGNALS};
use crate::EXIT_TEMPORARY;

/// A child started by a supervisor, until it is reaped.
pub struct Child {
    pub pid: Pid,
    pub started: Instant,
    /// `-d`: the read end of its readiness pipe, until it is ready (or closed it).
    pipe: Option<ReadinessPipe>,
}

impl Child {
    /// Fork and exec `spawn` as a supervised child: KILL (or the
    /// `parent_death` signal `spawn` names) when the supervisor dies (an
    /// orphan never keeps the socket), its readiness pipe on the `-d`
    /// descriptor, `NOTIFY_SOCKET` naming the supervisor's socket.
    pub fn spawn(
        mut spawn: Spawn,
        opts: &readiness::Options,
        notify: Option<&NotifySocket>,
    ) -> Result<Child, Errno> {
        // KILL unless the caller chose another (forkpool: its stop signal,
        // its guard KILLs after the drain deadline).
        spawn.parent_death.get_or_insert(Signal::SIGKILL);
        if let Some(n) = notify {
            spawn.env("NOTIFY_SOCKET", n.env_value());
        }
        let mut pipe = None;
        if let Some(fd) = opts.fd {
            let p = ReadinessPipe::new()?;
            spawn.fds.insert(0, (p.write_fd(), fd));
            pipe = Some(p);
        }
        let pid = spawn.spawn()?;
        if let Some(p) = pipe.as_mut() {
            p.close_write();
        }
        Ok(Child {
            pid,
            started: Instant::now(),
            pipe,
        })
    }

    /// A child handed over by an in-place upgrade: still our child (its pid
    /// kept across exec), started at `started`, its readiness pipe if it is
    /// still listened to.
    pub fn adopt(pid: Pid, started: Instant, pipe: Option<ReadinessPipe>) -> Child {
        Child { pid, started, pipe }
    }

    /// The readiness pipe's descriptor, to poll, while it is listened to.
    pub fn pipe_fd(&self) -> Option<RawFd> {
        self.pipe.as_ref().map(|p| p.fd())
    }

    /// Whether the child wrote its newline since the last look (once); a
    /// pipe it closed without one is no longer listened to.
    pub fn told_ready(&mut self) -> bool {
        let Some(p) = self.pipe.as_mut() else {
            return false;
        };
        match p.check() {
            PipeEvent::Ready => true,
            PipeEvent::Closed => {
                self.pipe = None;
                false
            }
            PipeEvent::Nothing => false,
        }
    }

    /// Readiness and the messages after it ([`ReadinessPipe::messages`]);
    /// a pipe the child closed is no longer listened to.
    pub fn messages(&mut self) -> readiness::Messages {
        let Some(p) = self.pipe.as_mut() else {
            return readiness::Messages::default();
        };
        let m = p.messages();
        if m.closed {
            self.pipe = None;
        }
        m
    }

    /// No more readiness from this child (it is ready, or stopping).
    pub fn stop_listening(&mut self) {
        self.pipe = None;
    }
}

/// The readiness rule by time: ready once alive `-a`, failed at `-t`.
pub trait ReadinessTimes {
    /// Alive long enough (`-a`) to count as ready.
    fn ready_by_time(&self, started: Instant, now: Instant) -> bool;
    /// Past the readiness deadline (`-t`).
    fn missed_deadline(&self, started: Instant, now: Instant) -> bool;
    /// When either of the two falls due for a child started at `started`.
    fn due(&self, started: Instant) -> [Option<Instant>; 2];
}

impl ReadinessTimes for readiness::Options {
    fn ready_by_time(&self, started: Instant, now: Instant) -> bool {
        self.alive.is_some_and(|a| now >= started + a)
    }

    fn missed_deadline(&self, started: Instant, now: Instant) -> bool {
        self.deadline.is_some_and(|t| now >= started + t)
    }

    fn due(&self, started: Instant) -> [Option<Instant>; 2] {
        [
            self.alive.map(|a| started + a),
            self.deadline.map(|t| started + t),
        ]
    }
}

/// Which of `candidates` a `NOTIFY_SOCKET` datagram from `sender` is about:
/// the one with that pid, else the one it descends from (a worker that is a
/// shell script may send `READY=1` from a child process).
pub fn notice_owner(sender: Pid, candidates: &[Pid]) -> Option<Pid> {
    candidates
        .iter()
        .copied()
        .find(|&c| c == sender)
        .or_else(|| {
            candidates
                .iter()
                .copied()
                .find(|&c| readiness::is_same_or_descendant(sender, c))
        })
}

/// The drain deadline of a child told to stop: KILL once it passes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KillDeadline(pub Option<Instant>);

impl KillDeadline {
    /// Told to stop now: KILL at `now + drain`, unless a deadline runs already.
    pub fn arm(&mut self, now: Instant, drain: Duration) {
        self.0.get_or_insert(now + drain);
    }

    /// Whether the KILL is due now (once: the deadline is then spent).
    pub fn due(&mut self, now: Instant) -> bool {
        if self.0.is_some_and(|k| now >= k) {
            self.0 = None;
            return true;
        }
        false
    }
}

/// The earliest of the moments given (None: nothing due).
pub fn earliest(times: impl IntoIterator<Item = Option<Instant>>) -> Option<Instant> {
    times.into_iter().flatten().min()
}

/// A supervisor's first step: catch [`SUPERVISOR_SIGNALS`] on a self-pipe,
/// and with `--notify` bind the socket its children notify; exit 111 if
/// either cannot be had.
pub fn catch_signals(
    tool: &crate::Tool,
    ready: &readiness::Options,
) -> (SignalPipe, Option<NotifySocket>) {
    let sigs = SignalPipe::install(&SUPERVISOR_SIGNALS)
        .unwrap_or_else(|e| tool.fatal_errno(EXIT_TEMPORARY, "catch signals", e));
    let notify = ready.notify.then(|| {
        NotifySocket::new(tool.name).unwrap_or_else(|e| {
            tool.fatal_errno(EXIT_TEMPORARY, "create the notification socket", e)
        })
    });
    (sigs, notify)
}

/// The options both supervisors take, parsed once: readiness (`-d`,
/// `--notify`, `-a`, `-t`), the drain deadline `-k`, the back-off cap `-b`,
/// `-v`.
#[derive(Clone, Debug)]
pub struct SupervisorOptions {
    pub ready: readiness::Options,
    /// `-k ms`, `--drain ms` (0 to a day; default 10 s).
    pub drain: Duration,
    /// `-b ms`, `--backoff-max ms` (one second to a day; default one second).
    pub backoff_max: Duration,
    /// `-v`, `--verbose`.
    pub verbose: bool,
    /// `--check-timeout ms`: the bound of an in-place upgrade's check (100
    /// ms to a day; default [`crate::reexec::CHECK_TIMEOUT`], 30 s).
    pub check_timeout: Duration,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            ready: readiness::Options::default(),
            drain: Duration::from_secs(10),
            backoff_max: crate::backoff::ONE_SECOND,
            verbose: false,
            check_timeout: crate::reexec::CHECK_TIMEOUT,
        }
    }
}

impl SupervisorOptions {
    /// Whether `opt` (`-k`, `--drain`, ...) is one of these: then hand it
    /// to [`SupervisorOptions::take`].
    pub fn is_option(opt: &str) -> bool {
        matches!(
            opt,
            "-k" | "--drain" | "-b" | "--backoff-max" | "-v" | "--verbose" | "--check-timeout"
        ) || readiness::Options::is_option(opt)
    }

    /// A supervisor's command line: these options, `-h`, `-V`, the tool's
    /// own options (`own` takes one by its name, `-n` or `--workers`,
    /// reading its value from the parser, and says whether it knew it),
    /// then `prog...`, which must be there.
    pub fn parse(
        tool: &crate::Tool,
        mut own: impl FnMut(&str, &mut lexopt::Parser) -> bool,
    ) -> (SupervisorOptions, Vec<std::ffi::OsString>) {
        use lexopt::Arg::{Long, Short, Value};
        let mut opts = SupervisorOptions::default();
        let mut parser = lexopt::Parser::from_env();
        let prog = loop {
            let opt = match tool.next_arg(&mut parser) {
                None => break Vec::new(),
                Some(Value(first)) => break crate::rest_of_args(first, &mut parser),
                Some(Short(c)) => format!("-{c}"),
                Some(Long(l)) => format!("--{l}"),
            };
            match opt.as_str() {
                "-h" | "--help" => tool.print_help(),
                "-V" | "--version" => tool.print_version(),
                o if Self::is_option(o) => opts.take(o, &mut parser, tool),
                o if own(o, &mut parser) => {}
                _ => tool.bad_arg(lexopt::Error::UnexpectedOption(opt)),
            }
        };
        opts.check(&prog, tool);
        (opts, prog)
    }

    /// Take option `opt` (one [`SupervisorOptions::is_option`] knows),
    /// reading its value from `parser`.
    pub fn take(&mut self, opt: &str, parser: &mut lexopt::Parser, tool: &crate::Tool) {
        match opt {
            "-k" | "--drain" => {
                let v = tool.value(parser);
                self.drain = Duration::from_millis(tool.number("-k", &v, 0, 86_400_000));
            }
            "-b" | "--backoff-max" => {
                let v = tool.value(parser);
                self.backoff_max = Duration::from_millis(tool.number("-b", &v, 1000, 86_400_000));
            }
            "-v" | "--verbose" => self.verbose = true,
            "--check-timeout" => {
                let v = tool.value(parser);
                let ms = tool.number("--check-timeout", &v, 100, 86_400_000);
                self.check_timeout = Duration::from_millis(ms);
            }
            _ => self.ready.take(opt, parser, tool),
        }
    }

    /// After the options: `prog` is there, no combination excluded.
    pub fn check(&self, prog: &[std::ffi::OsString], tool: &crate::Tool) {
        if prog.is_empty() {
            tool.usage("missing prog");
        }
        self.ready.check(tool);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_deadline_fires_once() {
        let t0 = Instant::now();
        let mut k = KillDeadline::default();
        k.arm(t0, Duration::from_secs(2));
        k.arm(t0 + Duration::from_secs(1), Duration::from_secs(2));
        assert!(!k.due(t0 + Duration::from_secs(1)));
        assert!(k.due(t0 + Duration::from_secs(2)));
        assert!(!k.due(t0 + Duration::from_secs(3)));
    }

    #[test]
    fn readiness_times() {
        let t0 = Instant::now();
        let o = readiness::Options {
            alive: Some(Duration::from_secs(1)),
            deadline: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        assert!(!o.ready_by_time(t0, t0 + Duration::from_millis(999)));
        assert!(o.ready_by_time(t0, t0 + Duration::from_secs(1)));
        assert!(o.missed_deadline(t0, t0 + Duration::from_secs(5)));
        let [a, t] = o.due(t0);
        assert_eq!(earliest([t, a, None]), Some(t0 + Duration::from_secs(1)));
    }
}
