//! forkpool: keep N copies of prog running, all inheriting descriptor 0, and
//! replace them on HUP without ever serving with fewer ready workers than
//! asked for. See README.md; docs/conventions.md, "How forkpool is built".
//!
//! The layers, each using only those below it (the `use` lines show it):
//!
//! 1. plain data and pure functions: tool.rs (TOOL), settings.rs,
//!    worker.rs (a worker, its phase, its slot), generation.rs (a
//!    generation, a reload, a stop), lifecycle.rs (recycling's data and
//!    arithmetic), two_phase.rs (the prepare's stage), verify.rs (the
//!    verified switch's stage), command.rs (control lines), messages.rs
//!    (what a worker says after READY), reloads.rs (reloads by result,
//!    their durations);
//! 2. the rule, policy/: the pool's state and a pure function of it and the
//!    time; events in through `Policy::handle`, actions out; its steps in
//!    converge.rs, its events in events.rs, lifecycle.rs, prepare.rs and
//!    verify.rs;
//! 3. the text formats over the rule's state: status.rs (the status file,
//!    the summary), state.rs (the upgrade's hand-over, one `Snapshot`);
//!    beside them the I/O leaves: workers.rs (the process table), groups.rs
//!    (the guard), control.rs (the FIFO), upstream.rs (forkpool's own
//!    supervisor), rss.rs (Pss), handoff.rs (`--handoff`'s connections
//!    on their way);
//! 4. the hub, pool.rs, the only `impl Pool`: each event from a leaf to the
//!    rule, each action from the rule to a leaf;
//! 5. upgrade.rs (USR2) and this file: the options and the main loop.

mod command;
mod control;
mod generation;
mod groups;
mod handoff;
mod lifecycle;
mod messages;
mod policy;
mod pool;
mod reloads;
mod rss;
mod settings;
mod state;
mod status;
mod tool;
mod two_phase;
mod upgrade;
mod upstream;
mod verify;
mod worker;
mod workers;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use unixtool::signals::{parse_signal, poll_readable, SignalPipe};
use unixtool::supervise::{self, SupervisorOptions};
use unixtool::EXIT_TEMPORARY;

use pool::{Config, Pool};
use settings::{Mode, Settings};
use tool::TOOL;

/// The options, checked: the pool's configuration, the policy's settings, N.
fn parse_options() -> (Config, Settings, usize) {
    let mut workers = 4usize;
    let mut stop_signal = Signal::SIGTERM;
    let mut pin: Option<PathBuf> = None;
    let mut status: Option<PathBuf> = None;
    let mut mode = Mode::Rolling;
    let mut life = lifecycle::Lifecycle::default();
    let mut control: Option<PathBuf> = None;
    let mut prepare_timeout = Duration::from_secs(60);
    let mut handoff = false;
    let mut confirm_timeout: Option<Duration> = None;

    let (mut common, prog) = SupervisorOptions::parse(&TOOL, |opt, parser| {
        match opt {
            "-n" | "--workers" => {
                let v = TOOL.value(parser);
                workers = TOOL.number("-n", &v, 1, 10_000);
            }
            "-s" | "--stop-signal" => {
                let v = TOOL.value(parser);
                stop_signal = match v.to_str().and_then(parse_signal) {
                    Some(s) if s != Signal::SIGKILL && s != Signal::SIGSTOP => s,
                    _ => TOOL.usage(format_args!(
                        "-s wants a signal name such as TERM, not {:?}",
                        v.to_string_lossy()
                    )),
                };
            }
            "-p" | "--pin" => pin = Some(TOOL.value(parser).into()),
            "-S" | "--status" => status = Some(TOOL.value(parser).into()),
            "-m" | "--mode" => {
                let v = TOOL.value(parser);
                mode = match v.to_str() {
                    Some("rolling") => Mode::Rolling,
                    Some("all-at-once") => Mode::AllAtOnce,
                    Some("cutover") => Mode::Cutover,
                    _ => TOOL.usage(format_args!(
                        "-m wants rolling, all-at-once or cutover, not {:?}",
                        v.to_string_lossy()
                    )),
                };
            }
            // Lifecycle (issue 14): lifecycle.rs.
            "--surge" => life.surge = Some(TOOL.number("--surge", &TOOL.value(parser), 1, 10_000)),
            "--max-age" => {
                let s: u64 = TOOL.number("--max-age", &TOOL.value(parser), 1, 31_536_000);
                life.max_age = Some(Duration::from_secs(s));
            }
            "--jitter" => life.jitter_pct = TOOL.number("--jitter", &TOOL.value(parser), 0, 90),
            "--max-rss" => {
                let mib: u64 = TOOL.number("--max-rss", &TOOL.value(parser), 1, 1 << 30);
                life.max_rss_kib = Some(mib * 1024);
            }
            "--rss-samples" => {
                life.rss_samples = TOOL.number("--rss-samples", &TOOL.value(parser), 1, 3600)
            }
            "--watchdog" => {
                let ms: u64 = TOOL.number("--watchdog", &TOOL.value(parser), 10, 86_400_000);
                life.watchdog = Some(Duration::from_millis(ms));
            }
            "-C" | "--control" => control = Some(TOOL.value(parser).into()),
            "--prepare-timeout" => {
                let v = TOOL.value(parser);
                let ms = TOOL.number("--prepare-timeout", &v, 1, 86_400_000);
                prepare_timeout = Duration::from_millis(ms);
            }
            "--handoff" => handoff = true,
            "--confirm-timeout" => {
                let v = TOOL.value(parser);
                let ms = TOOL.number("--confirm-timeout", &v, 1, 86_400_000);
                confirm_timeout = Some(Duration::from_millis(ms));
            }
            _ => return false,
        }
        true
    });
    if control.is_some() && mode != Mode::Cutover {
        TOOL.usage("-C needs -m cutover");
    }
    if confirm_timeout.is_some() && (mode != Mode::Cutover || control.is_none()) {
        TOOL.usage("--confirm-timeout needs -m cutover and -C FIFO");
    }
    life.seed = lifecycle::seed();
    let ready = &mut common.ready;
    if mode == Mode::Cutover && (!ready.told() || ready.alive.is_some()) {
        // Issue 26: a worker that forks (a pre-fork server) accepts before
        // the hold reaches its children, or counts as ready while it fails.
        TOOL.warn("-m cutover with timed readiness (-a, or neither -d nor --notify) cannot hold a pre-fork server's workers nor see them fail: use -d or --notify and the hold descriptor (examples/gunicorn)");
    }
    if !ready.told() && ready.alive.is_none() {
        ready.alive = Some(Duration::from_secs(1));
    }
    let deadline = *ready.deadline.get_or_insert(Duration::from_secs(30));
    if ready.alive.is_some_and(|a| a >= deadline) {
        TOOL.usage("-a must be shorter than -t");
    }
    let settings = Settings {
        mode,
        stop_signal,
        drain: common.drain,
        ready: common.ready.clone(),
        backoff_max: common.backoff_max,
        life,
        confirm_timeout,
    };
    let cfg = Config {
        prog,
        ready: common.ready,
        pin,
        status,
        verbose: common.verbose,
        control,
        prepare_timeout,
        handoff,
        check_timeout: common.check_timeout,
    };
    (cfg, settings, workers)
}

fn main() {
    let (cfg, settings, workers) = parse_options();
    // --handoff: at a deploy every kept connection of the pool passes
    // through forkpool; its soft descriptor limit up to the hard one (the
    // workers, and a next image, get the one it was given).
    if cfg.handoff {
        unixtool::raise_nofile(u64::MAX);
    }
    // Handed a state by an in-place upgrade (USR2)? In check mode, exits here.
    let handed = upgrade::handed(&settings);
    // forkpool's own supervisor (systemd Type=notify): taken out of the
    // environment before any worker starts.
    let mut upstream = upstream::Upstream::from_env();
    let (sigs, mut pool) = match handed {
        Some(state) => upgrade::adopt(state, cfg, settings, upstream.as_mut()),
        None => start(cfg, settings, workers),
    };

    // One turn of the loop, in order (docs/conventions.md, "How forkpool is
    // built"): the rule's own step, the status, forkpool's supervisor; wait;
    // then each source of events, each handed to the pool, which hands it
    // to the rule and carries out the actions.
    loop {
        pool.step(Instant::now());
        // --handoff: kept connections from retiring workers to the accepting ones.
        pool.hand_over(Instant::now());
        // The status file first: a supervisor told READY=1 may read it at once.
        pool.write_status();
        if let Some(u) = upstream.as_mut() {
            u.update(&pool.summary());
            u.ping(Instant::now());
        }
        if pool.finished() {
            std::process::exit(0);
        }
        let mut fds = vec![sigs.raw_fd()];
        fds.extend(pool.poll_fds());
        let due = [
            pool.next_deadline(),
            upstream.as_ref().and_then(|u| u.next_ping()),
        ];
        let timeout = supervise::earliest(due).map(|d| d.saturating_duration_since(Instant::now()));
        poll_readable(&fds, timeout);
        let now = Instant::now();
        // Drained before the kernel's HUPs are taken (signals.rs).
        let arrived = sigs.drain();
        warn_kernel_hups();
        pool.hear_workers(now);
        pool.watch_park(now);
        pool.lifecycle(now);
        for sig in arrived {
            pool.signal(sig, now);
        }
        pool.read_control();
        pool.reap(now);
        upgrade::if_asked(&mut pool, &sigs, upstream.as_mut());
    }
}

/// A SIGHUP the kernel sent (an orphaned process group, a terminal's
/// hangup) is not a reload: one warning line.
fn warn_kernel_hups() {
    if unixtool::signals::take_kernel_hups() > 0 {
        TOOL.warn("ignored a SIGHUP sent by the kernel (orphaned process group or terminal hangup): not a reload");
    }
}

/// A fresh start: the signals, the notification socket, the pinned release,
/// the first generation.
fn start(cfg: Config, settings: Settings, workers: usize) -> (SignalPipe, Pool) {
    let (sigs, notify) = supervise::catch_signals(&TOOL, &cfg.ready);
    let release = cfg.pin.as_ref().map(|p| {
        pool::resolve(p).unwrap_or_else(|e| {
            TOOL.fatal(
                EXIT_TEMPORARY,
                format_args!("unable to resolve {}: {e}", p.display()),
            )
        })
    });
    let mut pool = Pool::new(cfg, settings, notify, release, workers);
    pool.open_control();
    (sigs, pool)
}
