//! app: the demo site. One release, pinned at start; accepts on descriptor 0 and
//! serves many connections per process on epoll, each under whole-request
//! deadlines (workers are processes: forkpool runs N of them).

mod http;
mod lifecycle;
mod server;
mod sys;

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lexopt::prelude::*;
use nix::unistd::Pid;
use unixtool::{Tool, EXIT_TEMPORARY, EXIT_USAGE};

use lifecycle::Lifecycle;
use server::Limits;
use sys::{Order, Signals, Woke};

/// A held worker's scheduler slice until RELEASE_SLICE_FOR after its
/// release: the kernel's shortest (0.1 ms; its default here is 0.7 ms times
/// 1 + log2 of the CPUs, 1.4 ms on 2), measured: BENCHMARKS.md, 2026-12-07.
const RELEASE_SLICE_NS: u64 = 100_000;
const RELEASE_SLICE_FOR: Duration = Duration::from_millis(20);

pub const TOOL: Tool = Tool {
    name: "app",
    usage: "app [--root DIR] [--ready-fd N] [--slow-start MS] [--fail-start] [--fail-requests] [--read-timeout MS] [--send-timeout MS] [--idle-timeout MS] [--stop-timeout MS] [--max-connections N] [--retire-after N] [--listen HOST:PORT [--workers N]] [-v]",
    help: "
  -r, --root DIR            the release directory (default .): canonicalized once, chdir there
  -d, --ready-fd N          write a newline to descriptor N once able to accept; later lines:
                            stopping, recycle, and an empty line per watchdog ping
      --slow-start MS       wait MS milliseconds before becoming ready
      --fail-start          exit 1 at start (a release that fails, on purpose)
      --fail-requests       start and become ready, then answer 500 to every request (a
                            release that imports fine but fails its requests, on purpose)
  -t, --read-timeout MS     a whole request (head and body) must arrive within MS ms (default 5000)
      --send-timeout MS     a whole response must be sent within MS ms (default 10000)
      --idle-timeout MS     close a keep-alive connection idle for MS ms (default 5000)
      --stop-timeout MS     after a stop signal, close what is still open after MS ms (default 1000)
  -c, --max-connections N   serve at most N connections at once (default: the soft limit on
                            open files, minus 32)
      --retire-after N      after N responses, ask the supervisor once to be replaced
  -l, --listen HOST:PORT    bind a socket of its own instead of using descriptor 0
                            (prints the port on stdout; for benchmarks)
  -w, --workers N           with --listen: N processes accept on that socket (default 1)
  -v, --verbose             one line per request on stderr
  -h, --help                this text
  -V, --version             the version
",
};

/// What a request handler needs to know, fixed at start.
pub struct Site {
    /// The release id read from DIR/RELEASE at start: the release of the running code.
    pub release: String,
    /// The canonical DIR/htdocs, computed once; no file outside it is ever served.
    pub htdocs: PathBuf,
    /// That directory, open (O_PATH): a path without symlinks is opened
    /// beneath it in one call (http.rs, serve_file); None if it would not open.
    pub htdocs_dir: Option<std::os::fd::OwnedFd>,
    pub verbose: bool,
    /// --fail-requests: every answer is a 500 (still naming the release).
    pub fail_requests: bool,
}

struct Options {
    root: PathBuf,
    ready_fd: Option<RawFd>,
    slow_start: Duration,
    fail_start: bool,
    fail_requests: bool,
    listen: Option<String>,
    workers: u32,
    verbose: bool,
    limits: Limits,
}

fn main() {
    let opts = parse_options();
    let hold_fd = env_descriptor("FORKPOOL_HOLD_FD");
    let handoff_fd = env_descriptor(unixtool::handoff::ENV);
    if opts.fail_start {
        TOOL.fatal(
            1,
            "unable to start: --fail-start was given (a release that fails at start, on purpose)",
        );
    }
    let (mut site, root) = pin_release(&opts.root, opts.verbose);
    site.fail_requests = opts.fail_requests;
    let ready_pipe = adopt_descriptor(opts.ready_fd);
    let hold = adopt_descriptor(hold_fd);
    let handoff = adopt_descriptor(handoff_fd);
    let mut signals = Signals::install()
        .unwrap_or_else(|e| TOOL.fatal_errno(EXIT_TEMPORARY, "block the stop signals", e));
    let listener = open_listener(opts.listen.as_deref());
    let (children, ready_pipe) = fork_workers(opts.workers, ready_pipe);

    // Ready: it can accept now (connections queue in the kernel's backlog meanwhile).
    if !sys::sleep_unless_stopped(&mut signals, opts.slow_start) {
        std::process::exit(0);
    }
    let mut life = Lifecycle::new(ready_pipe);
    life.ready();
    if opts.verbose {
        TOOL.info(format_args!(
            "release {} ready in {} (pid {})",
            site.release,
            root.display(),
            std::process::id()
        ));
    }
    // Held: a cutover keeps the new generation from accepting until it lets go.
    // Meanwhile, and for RELEASE_SLICE_FOR after, a short scheduler slice:
    // at the release the requests that waited for the switch are ours, and
    // the kernel runs a thread that asks for short slices sooner.
    let mut slice = None;
    if let Some(hold) = hold {
        slice = sys::shorten_slice(RELEASE_SLICE_NS);
        if !wait_for_release_of_hold(hold, &mut signals, &mut life) {
            // Released and stopped before it ran (a busy machine): what
            // forkpool passed meanwhile goes back, not closed at exit.
            if let Some(h) = &handoff {
                server::hand_back_waiting(h.as_fd());
            }
            std::process::exit(0);
        }
    }
    let mut server = server::Server::new(
        &site,
        &opts.limits,
        &mut life,
        &mut signals,
        &listener,
        handoff.as_ref(),
    )
    .unwrap_or_else(|e| TOOL.fatal_errno(EXIT_TEMPORARY, "set up epoll", e));
    if let Some(slice) = slice {
        server.restore_slice_at(Instant::now() + RELEASE_SLICE_FOR, slice);
    }
    if let server::End::Quit = server.run() {
        std::process::exit(0);
    }
    sys::stop_children(&children);
    std::process::exit(0);
}

fn parse_options() -> Options {
    let mut o = Options {
        root: PathBuf::from("."),
        ready_fd: None,
        slow_start: Duration::ZERO,
        fail_start: false,
        fail_requests: false,
        listen: None,
        workers: 1,
        verbose: false,
        limits: Limits {
            request: Duration::from_millis(5000),
            send: Duration::from_millis(10_000),
            idle: Duration::from_millis(5000),
            stop: Duration::from_millis(1000),
            max_connections: default_max_connections(),
            retire_after: None,
        },
    };
    let ms = |p: &mut lexopt::Parser, opt: &str, min: u64| {
        Duration::from_millis(TOOL.number(opt, &TOOL.value(p), min, 86_400_000))
    };
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = TOOL.next_arg(&mut p) {
        match arg {
            Short('r') | Long("root") => o.root = PathBuf::from(TOOL.value(&mut p)),
            Short('d') | Long("ready-fd") => {
                o.ready_fd = Some(TOOL.number("--ready-fd", &TOOL.value(&mut p), 0, i32::MAX))
            }
            Long("slow-start") => o.slow_start = ms(&mut p, "--slow-start", 0),
            Long("fail-start") => o.fail_start = true,
            Long("fail-requests") => o.fail_requests = true,
            Short('t') | Long("read-timeout") => o.limits.request = ms(&mut p, "--read-timeout", 1),
            Long("send-timeout") => o.limits.send = ms(&mut p, "--send-timeout", 1),
            Long("idle-timeout") => o.limits.idle = ms(&mut p, "--idle-timeout", 1),
            Long("stop-timeout") => o.limits.stop = ms(&mut p, "--stop-timeout", 0),
            Short('c') | Long("max-connections") => {
                o.limits.max_connections =
                    TOOL.number("--max-connections", &TOOL.value(&mut p), 1, 1_000_000)
            }
            Long("retire-after") => {
                o.limits.retire_after =
                    Some(TOOL.number("--retire-after", &TOOL.value(&mut p), 1, u64::MAX))
            }
            Short('l') | Long("listen") => match TOOL.value(&mut p).into_string() {
                Ok(s) => o.listen = Some(s),
                Err(v) => TOOL.usage(format_args!("bad address {:?}", v.to_string_lossy())),
            },
            Short('w') | Long("workers") => {
                o.workers = TOOL.number("--workers", &TOOL.value(&mut p), 1, 1024)
            }
            Short('v') | Long("verbose") => o.verbose = true,
            Short('h') | Long("help") => TOOL.print_help(),
            Short('V') | Long("version") => TOOL.print_version(),
            Value(v) => TOOL.usage(format_args!(
                "unexpected argument {:?}",
                v.to_string_lossy()
            )),
            other => TOOL.bad_arg(other.unexpected()),
        }
    }
    if o.workers > 1 && o.listen.is_none() {
        TOOL.usage("--workers needs --listen");
    }
    o
}

/// The soft limit on open files, less 32 for the listener, the files being
/// served and the rest; at least 1.
fn default_max_connections() -> usize {
    let limit = unixtool::nofile_soft().unwrap_or(1024);
    limit.saturating_sub(32).clamp(1, 1_000_000) as usize
}

/// A descriptor named by the environment (FORKPOOL_HOLD_FD,
/// FORKPOOL_HANDOFF_FD), if set.
fn env_descriptor(name: &str) -> Option<RawFd> {
    std::env::var_os(name).map(|v| match unixtool::parse_number(&v, 0, i32::MAX) {
        Some(n) => n,
        None => TOOL.fatal(
            EXIT_USAGE,
            format_args!(
                "{name} is not a descriptor number: {:?}",
                v.to_string_lossy()
            ),
        ),
    })
}

/// A descriptor handed down (--ready-fd, FORKPOOL_HOLD_FD, FORKPOOL_HANDOFF_FD): it must be open; the
/// app owns it from now on (close-on-exec).
fn adopt_descriptor(fd: Option<RawFd>) -> Option<OwnedFd> {
    let fd = fd?;
    if !unixtool::fd_is_open(fd) {
        TOOL.fatal(
            EXIT_USAGE,
            format_args!("unable to use descriptor {fd}: it is not open"),
        );
    }
    let _ = unixtool::set_cloexec(fd, true);
    Some(sys::adopt(fd))
}

/// Resolve the release once, chdir there, read its id: (the site, the directory).
fn pin_release(root: &Path, verbose: bool) -> (Site, PathBuf) {
    let resolve = |p: &Path, shown: &dyn std::fmt::Display| {
        std::fs::canonicalize(p).unwrap_or_else(|e| {
            TOOL.fatal(
                EXIT_TEMPORARY,
                format_args!("unable to resolve {shown}: {}", unixtool::io_reason(&e)),
            )
        })
    };
    let root = resolve(root, &root.display());
    if let Err(e) = std::env::set_current_dir(&root) {
        TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!(
                "unable to chdir to {}: {}",
                root.display(),
                unixtool::io_reason(&e)
            ),
        );
    }
    let release = read_release(&root);
    let htdocs = resolve(
        &root.join("htdocs"),
        &format_args!("{}/htdocs", root.display()),
    );
    let htdocs_dir = std::os::unix::fs::OpenOptionsExt::custom_flags(
        std::fs::OpenOptions::new().read(true),
        libc::O_PATH | libc::O_DIRECTORY,
    )
    .open(&htdocs)
    .ok()
    .map(std::os::fd::OwnedFd::from);
    let site = Site {
        release,
        htdocs_dir,
        htdocs,
        verbose,
        fail_requests: false,
    };
    (site, root)
}

/// Descriptor 0 (tcplisten, forkpool), or a socket of our own for benchmarks.
fn open_listener(listen: Option<&str>) -> OwnedFd {
    let listener = match listen {
        Some(addr) => {
            let (fd, port) = sys::listen_on(addr).unwrap_or_else(|e| match e {
                sys::ListenError::Address => {
                    TOOL.usage(format_args!("bad address {addr:?} (want HOST:PORT)"))
                }
                sys::ListenError::Os(what, e) => {
                    TOOL.fatal_errno(EXIT_TEMPORARY, format_args!("{what} {addr}"), e)
                }
            });
            TOOL.print(format_args!("{port}\n"));
            fd
        }
        None if unixtool::fd_is_open(0) => sys::adopt(0),
        None => TOOL.fatal(
            EXIT_USAGE,
            "unable to accept on descriptor 0: Bad file descriptor",
        ),
    };
    if let Err(e) = sys::check_listening(listener.as_fd()) {
        let which = if listen.is_some() {
            "the socket"
        } else {
            "descriptor 0"
        };
        TOOL.fatal(EXIT_USAGE, format_args!("unable to accept on {which}: {e}"));
    }
    listener
}

/// --workers N: N-1 more processes; the others get no readiness pipe.
fn fork_workers(workers: u32, ready: Option<OwnedFd>) -> (Vec<Pid>, Option<OwnedFd>) {
    let mut children = Vec::new();
    for _ in 1..workers {
        match sys::fork() {
            Ok(Some(pid)) => children.push(pid),
            Ok(None) => return (Vec::new(), None),
            Err(e) => TOOL.fatal_errno(EXIT_TEMPORARY, "fork", e),
        }
    }
    (children, ready)
}

/// Block on the hold descriptor until it yields a byte or end of file, pinging
/// the watchdog meanwhile; false if told to stop first.
fn wait_for_release_of_hold(hold: OwnedFd, signals: &mut Signals, life: &mut Lifecycle) -> bool {
    loop {
        match sys::wait_for(Some(hold.as_fd()), signals, life.next_ping()) {
            Woke::Signal(Order::Stop | Order::Quit) => return false,
            // CONT: the release of a hold by SIGSTOP alone; no park while held.
            Woke::Signal(Order::Park | Order::Resume) => {}
            Woke::Timeout => life.tick(Instant::now()),
            Woke::Readable => {
                let mut b = [0u8; 1];
                match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(&hold), &mut b) {
                    Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                    _ => return true,
                }
            }
        }
    }
}

/// DIR/RELEASE: the release id, one line, read once.
fn read_release(root: &Path) -> String {
    let path = root.join("RELEASE");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!(
                "unable to read {}: {}",
                path.display(),
                unixtool::io_reason(&e)
            ),
        ),
    };
    let id = text.lines().next().unwrap_or("").trim().to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) {
        TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!(
                "unable to read {}: not one line of printable text",
                path.display()
            ),
        );
    }
    id
}
