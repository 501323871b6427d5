//! USR2: loop-forever upgrades itself in place, keeping its pid, its child
//! and the child's readiness state (forkpool's upgrade.rs does the same for
//! a pool; the shared steps are unixtool::reexec):
//!
//! 1. USR2 during a reload (HUP until the new child is ready) waits for its
//!    end; USR2 while stopping is ignored (a warning).
//! 2. The state (below) goes into a memfd; the program by the path
//!    loop-forever was started with runs in check mode on it
//!    (`LOOP_FOREVER_UPGRADE_CHECK=1`, the descriptor in
//!    `LOOP_FOREVER_STATE_FD`) and must exit 0; otherwise one warning line,
//!    `upgrade=failed`, `reason=`, and nothing is exec'd.
//! 3. Every signal blocked, the state written again, exec of that path with
//!    the same argv, keeping fd 0, the child's readiness pipe, the
//!    notification socket and the state; the new image adopts the child,
//!    then unblocks the signals.
//!
//! The state: `clock`, `loop` (the next start, back-off failures, the
//! young-clean-exit rule), `child` (if one runs: pid, start, ready, the last
//! forwarded signal, HUP, too slow, KILL deadline, readiness pipe),
//! `notify`, `status` (the status file's own fields), `upgrade`. Adding a
//! field: write it in `state`, take it in `read`, bump `VERSION`.
//!
//! Test hook: `LOOP_FOREVER_UPGRADE_PAUSE_MS=N` pauses N ms between blocking
//! the signals and the exec.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Instant;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use unixtool::backoff::Backoff;
use unixtool::readiness::{NotifySocket, ReadinessPipe};
use unixtool::reexec::{self, instant_field, path_text, StateText, Upgrade, UpgradePhase};
use unixtool::signals::SignalPipe;
use unixtool::supervise::{Child, KillDeadline};
use unixtool::{EXIT_TEMPORARY, EXIT_USAGE};

use crate::{Loop, Options, Running, TOOL};

const MAGIC: &str = "loop-forever-state";
const VERSION: u32 = 1;
const NAMES: reexec::Names = reexec::Names {
    memfd: "loop-forever-state",
    state: "LOOP_FOREVER_STATE_FD",
    check: "LOOP_FOREVER_UPGRADE_CHECK",
    pause: "LOOP_FOREVER_UPGRADE_PAUSE_MS",
    fallback: "LOOP_FOREVER_UPGRADE_FALLBACK",
    failed: "LOOP_FOREVER_UPGRADE_FAILED",
};

/// A fresh start's upgrade bookkeeping.
pub fn fresh() -> Upgrade {
    Upgrade::new(TOOL.name)
}

/// The status file's upgrade keys.
pub fn status_keys(u: &Upgrade) -> (&'static str, String, u64, u64, String) {
    (
        u.name(),
        u.reason.clone(),
        u.count,
        u.failures,
        u.version.clone(),
    )
}

/// At start: when handed a state, its descriptor; in check mode, read it
/// and exit 0 (whole, this version) or 100 (one fatal line).
pub fn handed(opts: &Options) -> Option<OwnedFd> {
    let check = std::env::var_os(NAMES.check).is_some();
    std::env::remove_var(NAMES.check);
    let code = if check { EXIT_USAGE } else { EXIT_TEMPORARY };
    let fd = match reexec::handed_fd(NAMES.state)? {
        Ok(fd) => fd,
        Err(e) => TOOL.fatal(code, format_args!("unable to read the state: {e}")),
    };
    if !check {
        return Some(fd);
    }
    let mut l = Loop::new(clone_options(opts), None, fresh());
    match reexec::read_fd(fd.as_raw_fd()).and_then(|t| read(&mut l, &t, Instant::now()).map(|_| t))
    {
        Ok(text) => reexec::answer_and_exit(&text),
        Err(e) => TOOL.fatal(code, format_args!("unable to read the state: {e}")),
    }
}

fn clone_options(o: &Options) -> Options {
    Options {
        prog: o.prog.clone(),
        common: o.common.clone(),
        status: o.status.clone(),
    }
}

/// What [`read`] found that is a descriptor: adopted only by the new image.
struct Fds {
    pipe: Option<RawFd>,
    notify: Option<(RawFd, String)>,
}

/// The new image: read the state, adopt the child, unblock the signals.
pub fn adopt(fd: OwnedFd, opts: Options) -> (SignalPipe, Loop) {
    let now = Instant::now();
    let mut l = Loop::new(opts, None, fresh());
    let (fds, sigs) = reexec::take_state(&TOOL, &NAMES, fd, |t| {
        let fds = read(&mut l, t, now)?;
        // Every descriptor checked before any is adopted: a failure leaves
        // them all to the previous image, run again.
        let named: Vec<RawFd> = fds.notify.iter().map(|n| n.0).chain(fds.pipe).collect();
        reexec::verify_fds(&named)?;
        Ok(fds)
    });
    let fatal = |e: String| -> ! { reexec::adopt_failed(&TOOL, &NAMES, e) };
    if let Some((fd, name)) = fds.notify {
        let sock = reexec::adopt_fd(fd).unwrap_or_else(|e| fatal(e));
        l.notify = Some(NotifySocket::adopt(sock, name));
    }
    if let (Some(fd), Some(c)) = (fds.pipe, l.child.as_mut()) {
        let pipe = reexec::adopt_fd(fd).unwrap_or_else(|e| fatal(e));
        c.child = Child::adopt(
            c.child.pid,
            c.child.started,
            Some(ReadinessPipe::adopt(pipe, c.ready)),
        );
    }
    l.upgrade.fell_back(&TOOL, &NAMES);
    reexec::took_over(&NAMES);
    if l.opts.common.verbose {
        TOOL.info(format_args!(
            "upgraded in place: version {}",
            l.upgrade.version
        ));
    }
    // Whatever ended meanwhile is reaped now (its SIGCHLD may be long gone).
    l.reap(now);
    unixtool::signals::unblock_all();
    (sigs, l)
}

fn signal_field(s: Option<Signal>) -> String {
    s.map(|s| (s as i32).to_string())
        .unwrap_or_else(|| "-".into())
}

/// The state as text, at `now`.
fn state(l: &Loop, exe: &Path, now: Instant) -> Result<String, String> {
    let mut s = StateText::new(MAGIC, VERSION);
    s.clock();
    s.record(
        "loop",
        &[
            ("start_at", instant_field(l.start_at, now)),
            ("failures", l.backoff.failures().to_string()),
            ("young_clean", u8::from(l.young_clean).to_string()),
        ],
    );
    if let Some(c) = &l.child {
        let pipe = c.child.pipe_fd();
        s.record(
            "child",
            &[
                ("pid", c.child.pid.to_string()),
                ("started", instant_field(Some(c.child.started), now)),
                ("ready", u8::from(c.ready).to_string()),
                ("forwarded", signal_field(c.forwarded)),
                ("hup", u8::from(c.hup).to_string()),
                ("too_slow", u8::from(c.too_slow).to_string()),
                ("kill_at", instant_field(c.kill.0, now)),
                (
                    "pipe",
                    pipe.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                ),
            ],
        );
    }
    match &l.notify {
        Some(n) => s.record(
            "notify",
            &[("fd", n.fd().to_string()), ("name", n.name().into())],
        ),
        None => s.record("notify", &[("fd", "-".into()), ("name", String::new())]),
    }
    s.record("status", &l.status.save());
    s.record(
        "upgrade",
        &[
            ("count", l.upgrade.count.to_string()),
            ("failures", l.upgrade.failures.to_string()),
            ("exe", path_text(exe)?),
        ],
    );
    Ok(s.finish())
}

/// Read a state into `l` (fresh from the same command line).
fn read(l: &mut Loop, text: &str, now: Instant) -> Result<Fds, String> {
    let records = StateText::parse(text, MAGIC, VERSION)?;
    let mut base = now;
    let mut fds = Fds {
        pipe: None,
        notify: None,
    };
    let mut status = None;
    let mut upgrade = false;
    l.child = None;
    for mut r in records {
        match r.kind.as_str() {
            "clock" => base = reexec::clock_base(&mut r, now)?,
            "loop" => {
                l.start_at = r.instant("start_at", base)?;
                l.backoff = Backoff::restored(l.opts.common.backoff_max, r.num("failures")?);
                l.young_clean = r.num::<u8>("young_clean")? != 0;
            }
            "child" => {
                let pid = Pid::from_raw(r.num("pid")?);
                let started = r
                    .instant("started", base)?
                    .ok_or_else(|| "child: no start".to_string())?;
                let forwarded = match r.opt_num::<i32>("forwarded")? {
                    None => None,
                    Some(n) => Some(Signal::try_from(n).map_err(|_| format!("child: signal {n}"))?),
                };
                fds.pipe = r.opt_num("pipe")?;
                l.child = Some(Running {
                    child: Child::adopt(pid, started, None),
                    ready: r.num::<u8>("ready")? != 0,
                    forwarded,
                    hup: r.num::<u8>("hup")? != 0,
                    too_slow: r.num::<u8>("too_slow")? != 0,
                    kill: KillDeadline(r.instant("kill_at", base)?),
                });
            }
            "notify" => {
                let fd: Option<RawFd> = r.opt_num("fd")?;
                let name = r.take("name")?;
                fds.notify = fd.map(|fd| (fd, name));
            }
            "status" => {
                status = Some(r);
                continue;
            }
            "upgrade" => {
                let (count, failures) = (r.num("count")?, r.num("failures")?);
                l.upgrade
                    .adopted(count, failures, PathBuf::from(r.take("exe")?));
                upgrade = true;
            }
            other => return Err(format!("unknown record {other}")),
        }
        r.done()?;
    }
    let (Some(mut st), true) = (status, upgrade) else {
        return Err("the state lacks a status or upgrade record".to_string());
    };
    let pid = l.child.as_ref().map(|c| c.child.pid);
    l.status.restore(&mut st, pid)?;
    st.done()?;
    if l.opts.common.ready.notify != fds.notify.is_some() {
        return Err("--notify differs between the state and the command line".to_string());
    }
    Ok(fds)
}

impl Loop {
    /// After the signals of one turn: the upgrade's turn
    /// (unixtool::reexec::turn): a USR2 starts the check unless a reload
    /// runs (then it waits) or loop-forever stops (then it is dropped); the
    /// child is supervised on while the check runs; a passed check is
    /// exec'd once free.
    pub fn upgrade_if_asked(&mut self, sigs: &SignalPipe) {
        let u = &self.upgrade;
        if !(u.asked || u.check.is_some() || u.passed) {
            return;
        }
        let busy = if self.stopping.is_some() {
            reexec::Busy::Stopping
        } else if self.status.reloading() {
            reexec::Busy::Wait
        } else {
            reexec::Busy::No
        };
        if self.upgrade.asked && busy != reexec::Busy::Stopping {
            self.upgrade.phase = UpgradePhase::Running;
            self.status.upgrade = status_keys(&self.upgrade);
            self.status.write();
        }
        reexec::turn(
            self,
            |l| &mut l.upgrade,
            busy,
            &TOOL,
            &NAMES,
            sigs,
            &mut |l: &mut Loop, blocked, path| {
                if blocked {
                    l.reap(Instant::now());
                }
                let text = state(l, path, Instant::now())?;
                let mut keep: Vec<RawFd> = l.notify.iter().map(|n| n.fd()).collect();
                keep.extend(l.child.as_ref().and_then(|c| c.child.pipe_fd()));
                Ok((text, keep))
            },
            &mut |_| Vec::new(),
        );
    }
}
