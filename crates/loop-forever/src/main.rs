//! loop-forever: run prog as a child; when it exits, run it again; never exit
//! by itself, so the descriptors it was given (the listening socket on fd 0)
//! stay open across restarts. See README.md.

use std::ffi::OsString;
use std::time::{Duration, Instant};

mod status;

use lexopt::prelude::*;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use unixtool::backoff::{Backoff, ONE_SECOND};
use unixtool::child::{self, secs, Ended, Spawn};
use unixtool::readiness::{self, NotifySocket, PipeEvent, ReadinessPipe};
use unixtool::signals::{poll_readable, signal_name, SignalPipe, SUPERVISOR_SIGNALS};
use unixtool::{Tool, EXIT_TEMPORARY};

const TOOL: Tool = Tool {
    name: "loop-forever",
    usage: "loop-forever [-v] [-b ms] [-d fd | --notify] [-a ms] [-t ms] [-k ms] [-S statusfile] prog...",
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
  -v, --verbose             one info line per start, readiness and clean exit
  -h, --help                this text
  -V, --version             the version
",
};

/// The child now running.
struct Running {
    pid: Pid,
    started: Instant,
    ready: bool,
    pipe: Option<ReadinessPipe>,
    /// The last signal loop-forever forwarded to it (HUP: "restart with the new code").
    forwarded: Option<Signal>,
    /// It was sent a HUP: whatever its end, the next start is at once.
    hup: bool,
    /// It missed the readiness deadline and was told to stop.
    too_slow: bool,
    kill_at: Option<Instant>,
}

fn main() {
    let mut ready_opts = readiness::Options::default();
    let mut backoff_max = ONE_SECOND;
    let mut drain = Duration::from_secs(10);
    let mut verbose = false;
    let mut status_path = None;

    let mut parser = lexopt::Parser::from_env();
    let prog = loop {
        let Some(arg) = TOOL.next_arg(&mut parser) else {
            break Vec::new();
        };
        match arg {
            Short(c) if readiness::Options::SHORT.contains(&c) => {
                ready_opts.take(&format!("-{c}"), &mut parser, &TOOL)
            }
            Long(l) if readiness::Options::LONG.contains(&l) => {
                let opt = format!("--{l}");
                ready_opts.take(&opt, &mut parser, &TOOL)
            }
            Short('b') | Long("backoff-max") => {
                let v = TOOL.value(&mut parser);
                backoff_max = Duration::from_millis(TOOL.number("-b", &v, 1000, 86_400_000));
            }
            Short('k') | Long("drain") => {
                let v = TOOL.value(&mut parser);
                drain = Duration::from_millis(TOOL.number("-k", &v, 0, 86_400_000));
            }
            Short('S') | Long("status") => status_path = Some(TOOL.value(&mut parser).into()),
            Short('v') | Long("verbose") => verbose = true,
            Short('h') | Long("help") => TOOL.print_help(),
            Short('V') | Long("version") => TOOL.print_version(),
            Value(first) => break unixtool::rest_of_args(first, &mut parser),
            other => TOOL.bad_arg(other.unexpected()),
        }
    };
    if prog.is_empty() {
        TOOL.usage("missing prog");
    }
    ready_opts.check(&TOOL);
    let info = |msg: std::fmt::Arguments| {
        if verbose {
            TOOL.info(msg)
        }
    };
    let name = prog[0].to_string_lossy().into_owned();
    let mut state_file = status::StatusFile::new(status_path, &name, ready_opts.tracked());

    let sigs = SignalPipe::install(&SUPERVISOR_SIGNALS)
        .unwrap_or_else(|e| TOOL.fatal_errno(EXIT_TEMPORARY, "catch signals", e));
    let notify = ready_opts.notify.then(|| {
        NotifySocket::new(TOOL.name).unwrap_or_else(|e| {
            TOOL.fatal_errno(EXIT_TEMPORARY, "create the notification socket", e)
        })
    });

    let mut backoff = Backoff::new(backoff_max);
    let mut child: Option<Running> = None;
    let mut start_at: Option<Instant> = Some(Instant::now());
    let mut stopping: Option<Signal> = None;
    // The last child exited 0 young without being asked to: one more is a failure.
    let mut young_clean = false;

    loop {
        let now = Instant::now();
        if child.is_none() {
            if stopping.is_some() {
                std::process::exit(0);
            }
            if start_at.is_some_and(|t| t <= now) {
                start_at = None;
                match start(&prog, &ready_opts, notify.as_ref()) {
                    Ok(r) => {
                        info(format_args!("started {name} (pid {})", r.pid));
                        state_file.started(r.pid);
                        child = Some(r);
                    }
                    Err(e) => {
                        TOOL.warn(format_args!(
                            "unable to start {name}: {}; retrying in 1s",
                            unixtool::strerror(e)
                        ));
                        start_at = Some(now + ONE_SECOND);
                    }
                }
            }
        }

        // Sleep until a signal, a readiness message, or the next deadline.
        let mut deadline = start_at;
        if let Some(c) = &child {
            let mut consider = |t: Option<Instant>| {
                if let Some(t) = t {
                    deadline = Some(deadline.map_or(t, |d| d.min(t)));
                }
            };
            if !c.ready {
                consider(ready_opts.alive.map(|a| c.started + a));
                if !c.too_slow {
                    consider(ready_opts.deadline.map(|t| c.started + t));
                }
            }
            consider(c.kill_at);
        }
        let mut fds = vec![sigs.raw_fd()];
        if let Some(n) = &notify {
            fds.push(n.fd());
        }
        let pipe_fd = child.as_ref().and_then(|c| c.pipe.as_ref()).map(|p| p.fd());
        if let Some(fd) = pipe_fd {
            fds.push(fd);
        }
        state_file.write();
        poll_readable(
            &fds,
            deadline.map(|d| d.saturating_duration_since(Instant::now())),
        );
        let now = Instant::now();

        // Readiness.
        if let Some(c) = child.as_mut() {
            let mut became_ready = false;
            if let Some(p) = c.pipe.as_mut() {
                match p.check() {
                    PipeEvent::Ready => became_ready = true,
                    PipeEvent::Closed => c.pipe = None,
                    PipeEvent::Nothing => {}
                }
            }
            if let Some(n) = &notify {
                for notice in n.drain() {
                    if readiness::is_same_or_descendant(notice.pid, c.pid) && notice.ready() {
                        became_ready = true;
                    }
                }
            }
            if !c.ready && ready_opts.alive.is_some_and(|a| now >= c.started + a) {
                became_ready = true;
            }
            if became_ready && !c.ready && !c.too_slow {
                c.ready = true;
                state_file.ready(c.pid);
                info(format_args!(
                    "{name} (pid {}) is ready after {}",
                    c.pid,
                    secs(now - c.started)
                ));
            }
            if !c.ready && !c.too_slow && ready_opts.deadline.is_some_and(|t| now >= c.started + t)
            {
                TOOL.warn(format_args!(
                    "{name} (pid {}) is not ready after {}; stopping it",
                    c.pid,
                    secs(now - c.started)
                ));
                c.too_slow = true;
                child::signal(c.pid, Signal::SIGTERM);
                c.kill_at = Some(now + drain);
            }
            if c.kill_at.is_some_and(|t| now >= t) {
                TOOL.warn(format_args!(
                    "{name} (pid {}) did not stop in {}; killing it",
                    c.pid,
                    secs(drain)
                ));
                child::signal(c.pid, Signal::SIGKILL);
                c.kill_at = None;
            }
        } else if let Some(n) = &notify {
            n.drain();
        }

        // Signals, in order of arrival.
        for sig in sigs.drain() {
            state_file.signal(sig);
            match sig {
                Signal::SIGCHLD => {}
                Signal::SIGTERM | Signal::SIGINT => {
                    stopping = Some(sig);
                    match child.as_mut() {
                        Some(c) => {
                            info(format_args!(
                                "got {}: stopping {name} (pid {})",
                                signal_name(sig),
                                c.pid
                            ));
                            c.forwarded = Some(sig);
                            child::signal(c.pid, sig);
                        }
                        None => std::process::exit(0),
                    }
                }
                Signal::SIGHUP if child.is_none() => {
                    // A HUP during a back-off: the code was fixed; start it now.
                    info(format_args!("got HUP while waiting: starting {name} now"));
                    backoff.succeeded();
                    young_clean = false;
                    start_at = Some(now);
                }
                _ => match child.as_mut() {
                    Some(c) => {
                        c.forwarded = Some(sig);
                        c.hup |= sig == Signal::SIGHUP;
                        child::signal(c.pid, sig);
                    }
                    None => info(format_args!(
                        "got {} while no child runs: ignored",
                        signal_name(sig)
                    )),
                },
            }
        }

        // Reap every child (and any inherited one).
        for (pid, status) in child::reap() {
            let Some(c) = child.as_ref().filter(|c| c.pid == pid) else {
                continue;
            };
            let Some(ended) = Ended::from_status(&status) else {
                continue;
            };
            let ran = now.saturating_duration_since(c.started);
            state_file.ended(pid, ended, ran);
            if let Some(stop) = stopping {
                // Stopped as asked: exit 0; otherwise the child's own status.
                let code = if ended.clean() || ended == Ended::Killed(stop) {
                    0
                } else {
                    ended.shell_status()
                };
                info(format_args!(
                    "{name} (pid {pid}) {ended} after {}; exiting {code}",
                    secs(ran)
                ));
                std::process::exit(code);
            }
            let asked = c.forwarded.is_some();
            let young = ran < ONE_SECOND && !asked && !c.ready;
            let failed = c.too_slow
                || match ended {
                    Ended::Exited(0) => {
                        if ready_opts.tracked() {
                            !c.ready && !asked
                        } else {
                            young && young_clean
                        }
                    }
                    Ended::Killed(s) => c.forwarded != Some(s),
                    Ended::Exited(_) => true,
                };
            young_clean = young && ended.clean();
            let before = if ready_opts.tracked() && !c.ready {
                " before it was ready"
            } else {
                ""
            };
            if failed && c.hup {
                // It failed, but it was told to restart with the new code: a HUP
                // is never lost, even when it reaches a child already on its way out.
                backoff.succeeded();
                TOOL.warn(format_args!(
                    "{name} {ended} after {}{before}; restarting now (HUP)",
                    secs(ran)
                ));
                start_at = Some(now);
            } else if failed {
                let wait = backoff.failed(ran);
                TOOL.warn(format_args!(
                    "{name} {ended} after {}{before}; restarting in {}",
                    secs(ran),
                    secs(wait)
                ));
                start_at = Some(now + wait);
            } else {
                if !young {
                    backoff.succeeded();
                }
                info(format_args!(
                    "{name} {ended} after {}{before}; restarting now",
                    secs(ran)
                ));
                start_at = Some(now);
            }
            child = None;
        }
    }
}

/// Fork and exec prog with its readiness channel.
fn start(
    prog: &[OsString],
    opts: &readiness::Options,
    notify: Option<&NotifySocket>,
) -> Result<Running, nix::errno::Errno> {
    let mut spawn = Spawn::new(TOOL.name, prog);
    // Orphan guard: if loop-forever is killed, its child does not keep the socket.
    spawn.parent_death = Some(Signal::SIGKILL);
    let mut pipe = None;
    if let Some(fd) = opts.fd {
        let p = ReadinessPipe::new()?;
        spawn.fds.push((p.write_fd(), fd));
        pipe = Some(p);
    }
    if let Some(n) = notify {
        spawn.env("NOTIFY_SOCKET", n.env_value());
    }
    let pid = spawn.spawn()?;
    if let Some(p) = pipe.as_mut() {
        p.close_write();
    }
    Ok(Running {
        pid,
        started: Instant::now(),
        ready: false,
        pipe,
        forwarded: None,
        hup: false,
        too_slow: false,
        kill_at: None,
    })
}
