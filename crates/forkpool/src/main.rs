//! forkpool: keep N copies of prog running, all inheriting descriptor 0, and
//! replace them on HUP without ever serving with fewer ready workers than
//! asked for. See README.md.
//!
//! main.rs parses the options, sets up the signals and the notification
//! socket, resolves the pinned release, then runs the loop: wait for a signal,
//! a readiness message or the next deadline; hand it to the pool (pool.rs,
//! events.rs); write the status file (status.rs). The policy (policy.rs)
//! decides what to start, what to retire; workers.rs runs the processes.

mod control;
mod events;
mod groups;
mod lifecycle;
mod policy;
mod pool;
mod rss;
mod state;
mod status;
mod upgrade;
mod upstream;
mod workers;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use unixtool::signals::{parse_signal, poll_readable, SignalPipe};
use unixtool::supervise::{self, SupervisorOptions};
use unixtool::{Tool, EXIT_TEMPORARY};

use policy::{Mode, Settings};
use pool::{Config, Pool};

const TOOL: Tool = Tool {
    name: "forkpool",
    usage: "forkpool [-v] [-n workers] [-s sig] [-k ms] [-d fd | --notify] [-a ms] [-t ms] [-p symlink] [-S statusfile] [-m rolling|all-at-once|cutover] [-b ms] [--surge k] [--max-age s [--jitter pct]] [--max-rss mib [--rss-samples k]] [--watchdog ms] [-C fifo [--prepare-timeout ms]] prog...",
    help: "
  -n, --workers N           keep N workers running (default 4)
  -s, --stop-signal SIG     the signal that tells a worker to finish and exit
                            (default TERM; HUP, INT, QUIT, USR1, USR2 or a number)
  -k, --drain MS            a stopped worker still alive after MS ms gets KILL (default 10000)
  -d, --notification-fd FD  a worker is ready when it writes a newline to FD (>= 3)
      --notify              a worker is ready when it sends READY=1 to $NOTIFY_SOCKET
  -a, --ready-after MS      a worker is ready once alive MS ms (default 1000 when
                            neither -d nor --notify is given)
  -t, --ready-timeout MS    a worker must be ready within MS ms (default 30000)
  -p, --pin SYMLINK         resolve SYMLINK at start and at each HUP; each generation
                            runs in the directory it resolved to
  -S, --status FILE         keep FILE up to date with the pool's state (key=value)
  -m, --mode MODE           rolling (default): retire one old worker per new ready one;
                            all-at-once: retire the old generation when the new one is ready;
                            cutover: hold the new generation (SIGSTOP, $FORKPOOL_HOLD_FD)
                            until it is whole and the old one is gone, then release it
  -b, --backoff-max MS      let the wait after failures in a row double up to MS ms
                            (default 1000: one second, as runsv)
      --surge K             at most N+K workers while recycling or in a rolling reload
      --max-age S           recycle a worker after about S seconds (replacement first)
      --jitter PCT          each worker's age is S less a random part of up to PCT% (default 10)
      --max-rss MIB         recycle a worker whose Pss stays over MIB (sampled every second)
      --rss-samples K       ... K samples in a row (default 3)
      --watchdog MS         a ready worker pings every MS ms (empty line on -d, WATCHDOG=1);
                            one that misses gets ABRT, KILL after -k, and is replaced
  -C, --control FIFO        (-m cutover) read prepare, commit [UNIX_TIME], abort from FIFO:
                            a new generation held ready until a commit switches to it
      --prepare-timeout MS  a prepare neither committed nor aborted in MS ms aborts
                            (default 60000)
  -v, --verbose             one info line per transition
  -h, --help                this text
  -V, --version             the version
",
};

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
            _ => return false,
        }
        true
    });
    if control.is_some() && mode != Mode::Cutover {
        TOOL.usage("-C needs -m cutover");
    }
    life.seed = lifecycle::seed();
    let ready = &mut common.ready;
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
    };
    let cfg = Config {
        prog,
        ready: common.ready,
        pin,
        status,
        verbose: common.verbose,
        control,
        prepare_timeout,
    };
    (cfg, settings, workers)
}

fn main() {
    let (cfg, settings, workers) = parse_options();
    // Handed a state by an in-place upgrade (USR2)? In check mode, exits here.
    let handed = upgrade::handed(&settings);
    // forkpool's own supervisor (systemd Type=notify): taken out of the
    // environment before any worker starts.
    let mut upstream = upstream::Upstream::from_env();
    let (sigs, mut pool) = match handed {
        Some(state) => upgrade::adopt(state, cfg, settings, upstream.as_mut()),
        None => start(cfg, settings, workers),
    };

    loop {
        pool.step(Instant::now());
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
        fds.extend(pool.control_fd());
        let due = [
            pool.next_deadline(),
            upstream.as_ref().and_then(|u| u.next_ping()),
        ];
        let timeout = supervise::earliest(due).map(|d| d.saturating_duration_since(Instant::now()));
        poll_readable(&fds, timeout);
        let now = Instant::now();
        // Drained before check_readiness takes the kernel's HUPs (signals.rs).
        let arrived = sigs.drain();
        pool.check_readiness(now);
        for sig in arrived {
            pool.signal(sig, now);
        }
        pool.read_control(now);
        pool.reap(now);
        pool.upgrade_if_asked(&sigs, upstream.as_mut());
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
