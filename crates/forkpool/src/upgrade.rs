//! USR2: forkpool upgrades itself in place. Same pid, same workers, the
//! socket never closed:
//!
//! 1. USR2 during a reload waits until the reload ends (`upgrade=running`
//!    meanwhile); USR2 while stopping is ignored (a warning).
//! 2. The whole state (state.rs) goes into a memfd; the program by the path
//!    forkpool was started with runs in check mode on it
//!    (`FORKPOOL_UPGRADE_CHECK=1`, the descriptor in `FORKPOOL_STATE_FD`): it
//!    must read the same command line and the state, and exit 0. Otherwise
//!    nothing is exec'd: one warning line, `upgrade=failed` and `reason=`.
//! 3. Every signal is blocked (the ones caught and not handled yet are made
//!    pending again), the state is written once more, and forkpool execs that
//!    path with the same argv, keeping fd 0, the workers' readiness pipes and
//!    hold descriptors, the notification socket and the state's descriptor
//!    (close-on-exec cleared just for the exec). `NOTIFY_SOCKET` of its own
//!    supervisor goes back into the environment (RELOADING=1 was sent; the new
//!    image sends READY=1).
//! 4. The new image ([`adopt`]) reads the state, adopts the workers (still
//!    its children), then unblocks the signals: a HUP or TERM that arrived
//!    meanwhile is handled now.
//!
//! Test hook: `FORKPOOL_UPGRADE_PAUSE_MS=N` makes the old image pause N ms
//! between blocking the signals and the exec (one warning line says so).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use unixtool::reexec;
use unixtool::signals::SignalPipe;
use unixtool::EXIT_TEMPORARY;

use crate::pool::{Config, Pool};
use crate::settings::Settings;
use crate::state::Snapshot;
use crate::tool::TOOL;
use crate::upstream::Upstream;

pub const STATE_VAR: &str = "FORKPOOL_STATE_FD";
pub const CHECK_VAR: &str = "FORKPOOL_UPGRADE_CHECK";
pub const NAMES: reexec::Names = reexec::Names {
    memfd: "forkpool-state",
    state: STATE_VAR,
    check: CHECK_VAR,
    pause: "FORKPOOL_UPGRADE_PAUSE_MS",
    fallback: "FORKPOOL_UPGRADE_FALLBACK",
    failed: "FORKPOOL_UPGRADE_FAILED",
};

/// At start: when handed a state, its descriptor. In check mode, read the
/// state with `settings` and exit: 0 if it is whole and of this version,
/// 100 (one fatal line) if not.
pub fn handed(settings: &Settings) -> Option<OwnedFd> {
    let check = std::env::var_os(CHECK_VAR).is_some();
    std::env::remove_var(CHECK_VAR);
    let fd = match reexec::handed_fd(STATE_VAR)? {
        Ok(fd) => fd,
        Err(e) if check => TOOL.fatal(
            unixtool::EXIT_USAGE,
            format_args!("unable to read the state: {e}"),
        ),
        Err(e) => TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!("unable to read the state: {e}"),
        ),
    };
    if !check {
        return Some(fd);
    }
    let read = reexec::read_fd(fd.as_raw_fd())
        .and_then(|text| crate::state::read(&text, settings.clone(), Instant::now()).map(|_| text));
    match read {
        Ok(text) => reexec::answer_and_exit(&text),
        Err(e) => TOOL.fatal(
            unixtool::EXIT_USAGE,
            format_args!("unable to read the state: {e}"),
        ),
    }
}

/// The new image: read the state, adopt the workers and descriptors, then
/// unblock the signals (still blocked since the old image's exec).
pub fn adopt(
    fd: OwnedFd,
    cfg: Config,
    settings: Settings,
    upstream: Option<&mut Upstream>,
) -> (SignalPipe, Pool) {
    let now = Instant::now();
    let (snapshot, sigs) = reexec::take_state(&TOOL, &NAMES, fd, |text| {
        let s = crate::state::read(text, settings, now)?;
        // Every descriptor checked before any is adopted: a failure leaves
        // them all to the previous image, run again.
        reexec::verify_fds(&s.kept_fds())?;
        Ok(s)
    });
    let mut pool =
        Pool::adopt(cfg, snapshot).unwrap_or_else(|e| reexec::adopt_failed(&TOOL, &NAMES, e));
    pool.upgrade_mut().fell_back(&TOOL, &NAMES);
    if let Some(u) = upstream {
        u.adopted(pool.newest());
    }
    if pool.verbose() {
        TOOL.info(format_args!(
            "upgraded in place: version {}, {} workers adopted",
            pool.version(),
            pool.worker_count()
        ));
    }
    // -C: the policy learns the FIFO's name (its descriptor was handed over).
    pool.open_control();
    // Taken over: from here a failure is this image's own.
    reexec::took_over(&NAMES);
    // Whatever ended meanwhile is reaped now (its SIGCHLD may be long gone).
    pool.reap(now);
    unixtool::signals::unblock_all();
    (sigs, pool)
}

/// After the signals of one turn: the upgrade's turn (unixtool::reexec::turn):
/// a USR2 starts the check unless the pool reloads or a prepare is open
/// (then it waits) or it stops (then it is dropped); the pool supervises on
/// while the check runs; a passed check is exec'd once the pool is free.
pub fn if_asked(pool: &mut Pool, sigs: &SignalPipe, mut upstream: Option<&mut Upstream>) {
    if !pool.upgrade_active() {
        return;
    }
    let starting = pool.upgrade_mut().asked && pool.upgrade_mut().check.is_none();
    let busy = pool.upgrade_busy();
    reexec::turn(
        pool,
        Pool::upgrade_mut,
        busy,
        &TOOL,
        &NAMES,
        sigs,
        &mut hand_over,
        &mut |_| {
            let mut env = Vec::new();
            if let Some(u) = upstream.as_deref_mut() {
                u.reloading("upgrading forkpool in place");
                env.push(("NOTIFY_SOCKET", u.env_value().to_os_string()));
            }
            env
        },
    );
    if starting {
        pool.write_status();
    }
}

/// The state handed over (once for the check, once more with every signal
/// blocked right before the exec): one [`Snapshot`], its text and the
/// descriptors kept across the exec.
fn hand_over(pool: &mut Pool, blocked: bool, exe: &Path) -> reexec::Handed {
    if blocked {
        // SIGCHLD is blocked: what ended during the check is accounted for
        // now; the state is as of this moment.
        pool.reap(Instant::now());
    }
    let snapshot: Snapshot = pool.snapshot(exe)?;
    let text = crate::state::write(&snapshot, Instant::now())?;
    Ok((text, snapshot.kept_fds()))
}
