//! loop-forever: run prog as a child; when it exits, run it again; never exit
//! by itself, so the descriptors it was given (the listening socket on fd 0)
//! stay open across restarts. See README.md.

//!
//! Code map: main.rs is the whole tool: the options, then the loop (start
//! when due, wait, readiness, signals, reaping), one method of [`Loop`] per
//! phase. What it shares with forkpool (the supervised child, readiness,
//! the KILL deadline, the back-off) is in unixtool's supervise, readiness,
//! child and backoff modules.

mod status;
mod upgrade;

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use unixtool::backoff::{Backoff, ONE_SECOND};
use unixtool::child::{self, secs, Ended, Spawn};
use unixtool::readiness::NotifySocket;
use unixtool::signals::{poll_readable, signal_name, SignalPipe};
use unixtool::supervise::{
    self, earliest, notice_owner, Child, KillDeadline, ReadinessTimes, SupervisorOptions,
};
use unixtool::Tool;

const TOOL: Tool = Tool {
    name: "loop-forever",
    usage: "loop-forever [-v] [-b ms] [-d fd | --notify] [-a ms] [-t ms] [-k ms] [-S statusfile] [--check-timeout ms] prog...",
    help: "
  -b, --backoff-max MS      let the wait after failures in a row double from 1 s up
                            to MS milliseconds (default 1000: the one-second rule)
  -d, --notification-fd FD  prog says it is ready by writing a newline to FD (>= 3)
      --notify              prog says READY=1 on $NOTIFY_SOCKET (systemd style)
  -a, --ready-after MS      prog is ready once it has stayed alive MS milliseconds
  -t, --ready-timeout MS    a prog not ready after MS milliseconds is stopped (TERM)
                            and counts as a failure (default: no deadline)
  -k, --drain MS            after that TERM, wait MS milliseconds, then KILL (default 10000)
  -S, --status FILE         keep FILE up to date with the child's state (key=value)
      --check-timeout MS    an in-place upgrade's check (USR2) must end within MS ms
                            (default 30000)
  -v, --verbose             one info line per start, readiness and clean exit
  -h, --help                this text
  -V, --version             the version
",
};

/// The child now running.
struct Running {
    child: Child,
    ready: bool,
    /// The last signal loop-forever forwarded to it (HUP: "restart with the new code").
    forwarded: Option<Signal>,
    /// It was sent a HUP: whatever its end, the next start is at once.
    hup: bool,
    /// It missed the readiness deadline and was told to stop.
    too_slow: bool,
    kill: KillDeadline,
}

/// The options.
struct Options {
    prog: Vec<OsString>,
    common: SupervisorOptions,
    status: Option<PathBuf>,
}

/// The supervisor's state between two turns of the loop.
struct Loop {
    opts: Options,
    name: String,
    notify: Option<NotifySocket>,
    backoff: Backoff,
    child: Option<Running>,
    start_at: Option<Instant>,
    stopping: Option<Signal>,
    /// The last child exited 0 young without being asked to: one more is a failure.
    young_clean: bool,
    status: status::StatusFile,
    /// USR2, the in-place upgrade (upgrade.rs).
    upgrade: unixtool::reexec::Upgrade,
}

fn parse_options() -> Options {
    let mut status = None;
    let (common, prog) = SupervisorOptions::parse(&TOOL, |opt, parser| match opt {
        "-S" | "--status" => {
            status = Some(TOOL.value(parser).into());
            true
        }
        _ => false,
    });
    Options {
        prog,
        common,
        status,
    }
}

fn main() {
    let opts = parse_options();
    // Handed a state by an in-place upgrade (USR2)? In check mode, exits here.
    let (sigs, mut l) = match upgrade::handed(&opts) {
        Some(state) => upgrade::adopt(state, opts),
        None => {
            let (sigs, notify) = supervise::catch_signals(&TOOL, &opts.common.ready);
            (sigs, Loop::new(opts, notify, upgrade::fresh()))
        }
    };
    loop {
        l.start_if_due(Instant::now());
        l.status.upgrade = upgrade::status_keys(&l.upgrade);
        l.status.write();
        l.wait(&sigs);
        let now = Instant::now();
        l.check_readiness(now);
        for sig in sigs.drain() {
            l.status.signal(sig);
            l.signal(sig, now);
        }
        l.reap(now);
        l.upgrade_if_asked(&sigs);
    }
}

impl Loop {
    fn new(opts: Options, notify: Option<NotifySocket>, mut up: unixtool::reexec::Upgrade) -> Loop {
        up.check_timeout = opts.common.check_timeout;
        let name = opts.prog[0].to_string_lossy().into_owned();
        let tracked = opts.common.ready.tracked();
        Loop {
            status: status::StatusFile::new(opts.status.clone(), &name, tracked),
            name,
            backoff: Backoff::new(opts.common.backoff_max),
            opts,
            notify,
            child: None,
            start_at: Some(Instant::now()),
            stopping: None,
            young_clean: false,
            upgrade: up,
        }
    }

    fn info(&self, msg: std::fmt::Arguments) {
        if self.opts.common.verbose {
            TOOL.info(msg)
        }
    }

    /// No child: exit if stopping, else start one when its time has come.
    fn start_if_due(&mut self, now: Instant) {
        if self.child.is_some() {
            return;
        }
        if self.stopping.is_some() {
            std::process::exit(0);
        }
        if self.start_at.is_none_or(|t| t > now) {
            return;
        }
        self.start_at = None;
        let spawn = Spawn::new(TOOL.name, &self.opts.prog);
        match Child::spawn(spawn, &self.opts.common.ready, self.notify.as_ref()) {
            Ok(child) => {
                self.info(format_args!("started {} (pid {})", self.name, child.pid));
                self.status.started(child.pid);
                self.child = Some(Running {
                    child,
                    ready: false,
                    forwarded: None,
                    hup: false,
                    too_slow: false,
                    kill: KillDeadline::default(),
                });
            }
            Err(e) => {
                TOOL.warn(format_args!(
                    "unable to start {}: {}; retrying in 1s",
                    self.name,
                    unixtool::strerror(e)
                ));
                self.start_at = Some(now + ONE_SECOND);
            }
        }
    }

    /// Sleep until a signal, a readiness message, or the next deadline.
    fn wait(&self, sigs: &SignalPipe) {
        let mut due = vec![self.start_at];
        if let Some(c) = &self.child {
            if !c.ready {
                let [alive, deadline] = self.opts.common.ready.due(c.child.started);
                due.push(alive);
                due.push(deadline.filter(|_| !c.too_slow));
            }
            due.push(c.kill.0);
        }
        let (check_fds, check_due) = unixtool::reexec::check_wait(&self.upgrade);
        due.push(check_due);
        let mut fds = vec![sigs.raw_fd()];
        fds.extend(self.notify.as_ref().map(|n| n.fd()));
        fds.extend(self.child.as_ref().and_then(|c| c.child.pipe_fd()));
        fds.extend(check_fds);
        let timeout = earliest(due).map(|d| d.saturating_duration_since(Instant::now()));
        poll_readable(&fds, timeout);
    }

    /// Readiness (pipe, NOTIFY_SOCKET, -a), the readiness deadline, KILL.
    fn check_readiness(&mut self, now: Instant) {
        let notices = self.notify.as_ref().map(|n| n.drain()).unwrap_or_default();
        let opts = &self.opts.common;
        let Some(c) = self.child.as_mut() else {
            return;
        };
        let mut became_ready = c.child.told_ready();
        for notice in notices {
            if notice_owner(notice.pid, &[c.child.pid]).is_some() && notice.ready() {
                became_ready = true;
            }
        }
        let started = c.child.started;
        if !c.ready && opts.ready.ready_by_time(started, now) {
            became_ready = true;
        }
        let (name, pid) = (&self.name, c.child.pid);
        let info = |msg: std::fmt::Arguments| {
            if opts.verbose {
                TOOL.info(msg)
            }
        };
        if became_ready && !c.ready && !c.too_slow {
            c.ready = true;
            self.status.ready(pid);
            info(format_args!(
                "{name} (pid {pid}) is ready after {}",
                secs(now - started)
            ));
        }
        if !c.ready && !c.too_slow && opts.ready.missed_deadline(started, now) {
            TOOL.warn(format_args!(
                "{name} (pid {pid}) is not ready after {}; stopping it",
                secs(now - started)
            ));
            c.too_slow = true;
            child::signal(pid, Signal::SIGTERM);
            c.kill.arm(now, opts.drain);
        }
        if c.kill.due(now) {
            TOOL.warn(format_args!(
                "{name} (pid {pid}) did not stop in {}; killing it",
                secs(opts.drain)
            ));
            child::signal(pid, Signal::SIGKILL);
        }
    }

    /// A signal, in order of arrival.
    fn signal(&mut self, sig: Signal, now: Instant) {
        match sig {
            Signal::SIGCHLD => {}
            Signal::SIGTERM | Signal::SIGINT => {
                self.stopping = Some(sig);
                let Some(pid) = self.child.as_ref().map(|c| c.child.pid) else {
                    std::process::exit(0);
                };
                self.info(format_args!(
                    "got {}: stopping {} (pid {pid})",
                    signal_name(sig),
                    self.name
                ));
                self.forward(sig);
            }
            // USR2: the in-place upgrade, after this turn's signals (upgrade.rs).
            Signal::SIGUSR2 => self.upgrade.asked = true,
            Signal::SIGHUP if self.child.is_none() => {
                // A HUP during a back-off: the code was fixed; start it now.
                self.info(format_args!(
                    "got HUP while waiting: starting {} now",
                    self.name
                ));
                self.backoff.succeeded();
                self.young_clean = false;
                self.start_at = Some(now);
            }
            _ if self.child.is_some() => self.forward(sig),
            _ => self.info(format_args!(
                "got {} while no child runs: ignored",
                signal_name(sig)
            )),
        }
    }

    fn forward(&mut self, sig: Signal) {
        if let Some(c) = self.child.as_mut() {
            c.forwarded = Some(sig);
            c.hup |= sig == Signal::SIGHUP;
            child::signal(c.child.pid, sig);
        }
    }

    /// Reap every child (and any inherited one); the child's end decides
    /// the next start (or loop-forever's own exit when stopping).
    fn reap(&mut self, now: Instant) {
        for (pid, status) in child::reap() {
            let Some(c) = self.child.as_ref().filter(|c| c.child.pid == pid) else {
                // The upgrade's check program, when one runs.
                if let Some(chk) = self.upgrade.check.as_mut() {
                    chk.reaped(pid, status);
                }
                continue;
            };
            let Some(ended) = Ended::from_status(&status) else {
                continue;
            };
            let ran = now.saturating_duration_since(c.child.started);
            self.status.ended(pid, ended, ran);
            if let Some(stop) = self.stopping {
                // Stopped as asked: exit 0; otherwise the child's own status.
                let code = if ended.clean() || ended == Ended::Killed(stop) {
                    0
                } else {
                    ended.shell_status()
                };
                self.info(format_args!(
                    "{} (pid {pid}) {ended} after {}; exiting {code}",
                    self.name,
                    secs(ran)
                ));
                std::process::exit(code);
            }
            self.restart(ended, ran, now);
            self.child = None;
        }
    }

    /// The child ended on its own (or as told by a forwarded signal): when
    /// the next one starts, by the one-second rule and the back-off.
    fn restart(&mut self, ended: Ended, ran: Duration, now: Instant) {
        let Some(c) = self.child.as_ref() else { return };
        let tracked = self.opts.common.ready.tracked();
        let asked = c.forwarded.is_some();
        let young = ran < ONE_SECOND && !asked && !c.ready;
        let failed = c.too_slow
            || match ended {
                Ended::Exited(0) if tracked => !c.ready && !asked,
                Ended::Exited(0) => young && self.young_clean,
                Ended::Killed(s) => c.forwarded != Some(s),
                Ended::Exited(_) => true,
            };
        self.young_clean = young && ended.clean();
        let before = if tracked && !c.ready {
            " before it was ready"
        } else {
            ""
        };
        let name = &self.name;
        if failed && c.hup {
            // It failed, but it was told to restart with the new code: a HUP
            // is never lost, even when it reaches a child already on its way out.
            self.backoff.succeeded();
            TOOL.warn(format_args!(
                "{name} {ended} after {}{before}; restarting now (HUP)",
                secs(ran)
            ));
            self.start_at = Some(now);
        } else if failed {
            let wait = self.backoff.failed(ran);
            TOOL.warn(format_args!(
                "{name} {ended} after {}{before}; restarting in {}",
                secs(ran),
                secs(wait)
            ));
            self.start_at = Some(now + wait);
        } else {
            if !young {
                self.backoff.succeeded();
            }
            self.info(format_args!(
                "{name} {ended} after {}{before}; restarting now",
                secs(ran)
            ));
            self.start_at = Some(now);
        }
    }
}
