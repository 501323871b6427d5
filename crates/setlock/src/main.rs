//! setlock: open a lock file, take a flock(2) lock on it, exec prog holding it.
//! Drop-in for daemontools setlock (-nNxX), plus -r/-w, -t ms, -d fd. See README.md.

use std::ffi::{OsStr, OsString};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use lexopt::prelude::*;
use nix::errno::Errno;
use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::stat::{fstat, lstat, stat, Mode};
use unixtool::{Tool, EXIT_TEMPORARY};

/// The lock is held by someone else and `-t ms` ran out (sysexits EX_TEMPFAIL).
const EXIT_TIMEOUT: i32 = 75;

const TOOL: Tool = Tool {
    name: "setlock",
    usage: "setlock [-nNxX] [-r|-w] [-t ms] [-d fd] [--no-follow] file prog...",
    help: "
  -n, --nonblock     if file is locked, fail at once (exit 111)
  -N, --block        if file is locked, wait for it (default)
  -x, --exit-zero    if file cannot be opened or locked, exit 0 quietly
  -X, --exit-error   if file cannot be opened or locked, say so and fail (default)
  -r, --shared       take a shared lock (readers)
  -w, --exclusive    take an exclusive lock (default)
  -t, --timeout MS   wait at most MS milliseconds, then exit 75 (0: try once)
  -d, --fd FD        hand the lock to prog on descriptor FD
      --no-follow    refuse file if it is a symlink (O_NOFOLLOW)
  -h, --help         this text
  -V, --version      the version
",
};

/// What the command line asks for.
struct Options {
    wait: Option<bool>,      // -N / -n
    exit_zero: bool,         // -x / -X
    shared: bool,            // -r / -w
    timeout_ms: Option<u32>, // -t
    lock_fd: Option<RawFd>,  // -d
    no_follow: bool,         // --no-follow
    file: OsString,
    prog: Vec<OsString>,
}

/// Why the lock file could not be opened.
enum OpenFailure {
    /// open(2) failed: a missing directory, no permission.
    Errno(Errno),
    /// It is there, but it is not a regular file: a FIFO, a socket, a directory, a
    /// device, or (with --no-follow) a symlink. Never excused by -x.
    NotRegular(&'static str),
}

fn main() {
    let opt = parse_options();
    let name = opt.file.to_string_lossy();
    // With -x, a lock that cannot be had is not an error: exit 0, say nothing.
    let give_up = |code: i32, msg: std::fmt::Arguments| -> ! {
        if opt.exit_zero {
            std::process::exit(0)
        }
        TOOL.fatal(code, msg)
    };

    let fd = match open_lock(&opt) {
        Ok(fd) => fd,
        Err(OpenFailure::NotRegular(kind)) => TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!("unable to open {name}: it is {kind}, not a regular file"),
        ),
        Err(OpenFailure::Errno(e)) => give_up(
            EXIT_TEMPORARY,
            format_args!("unable to open {name}: {}", unixtool::strerror(e)),
        ),
    };
    match lock(fd, &opt) {
        Ok(()) => {}
        Err(Errno::EWOULDBLOCK) => give_up(
            EXIT_TEMPORARY,
            format_args!("unable to lock {name}: locked by another process"),
        ),
        Err(Errno::ETIMEDOUT) => give_up(
            EXIT_TIMEOUT,
            format_args!(
                "unable to lock {name}: still locked by another process after {} ms",
                opt.timeout_ms.unwrap_or(0)
            ),
        ),
        Err(e) => give_up(
            EXIT_TEMPORARY,
            format_args!("unable to lock {name}: {}", unixtool::strerror(e)),
        ),
    }

    // Hand the lock down: on -d fd, or where open put it; then become prog.
    let handed = match opt.lock_fd {
        Some(to) => unixtool::move_fd(fd, to),
        None => unixtool::set_cloexec(fd, false),
    };
    if let Err(e) = handed {
        TOOL.fatal_errno(
            EXIT_TEMPORARY,
            format_args!("put the lock on descriptor {}", opt.lock_fd.unwrap_or(fd)),
            e,
        );
    }
    TOOL.exec(&opt.prog)
}

fn parse_options() -> Options {
    let mut wait: Option<bool> = None;
    let mut exit_zero = false;
    let mut shared: Option<bool> = None;
    let mut timeout_ms: Option<u32> = None;
    let mut lock_fd: Option<RawFd> = None;
    let mut no_follow = false;

    let mut parser = lexopt::Parser::from_env();
    let args = loop {
        let Some(arg) = TOOL.next_arg(&mut parser) else {
            break Vec::new();
        };
        match arg {
            Short('n') | Long("nonblock") => wait = Some(false),
            Short('N') | Long("block") => wait = Some(true),
            Short('x') | Long("exit-zero") => exit_zero = true,
            Short('X') | Long("exit-error") => exit_zero = false,
            Short('r') | Long("shared") => set_once(&mut shared, true),
            Short('w') | Long("exclusive") => set_once(&mut shared, false),
            Short('t') | Long("timeout") => {
                let v = TOOL.value(&mut parser);
                timeout_ms = Some(TOOL.number("-t", &v, 0, i32::MAX as u32));
            }
            Short('d') | Long("fd") => {
                let v = TOOL.value(&mut parser);
                lock_fd = Some(TOOL.number("-d", &v, 0, i32::MAX));
            }
            Long("no-follow") => no_follow = true,
            Short('h') | Long("help") => TOOL.print_help(),
            Short('V') | Long("version") => TOOL.print_version(),
            Value(first) => break unixtool::rest_of_args(first, &mut parser),
            other => TOOL.bad_arg(other.unexpected()),
        }
    };
    if timeout_ms.is_some() && wait.is_some() {
        TOOL.usage("-t conflicts with -n and -N");
    }
    let mut args = args.into_iter();
    let Some(file) = args.next() else {
        TOOL.usage("missing file and prog")
    };
    let prog: Vec<OsString> = args.collect();
    if prog.is_empty() {
        TOOL.usage("missing prog");
    }
    Options {
        wait,
        exit_zero,
        shared: shared.unwrap_or(false),
        timeout_ms,
        lock_fd,
        no_follow,
        file,
        prog,
    }
}

/// Open the lock file (creating it 0600 if missing), close-on-exec until it is
/// handed down. O_NONBLOCK, so that a FIFO cannot hang open(2); cleared again
/// once the file is known to be a regular file, so prog gets a plain descriptor.
fn open_lock(opt: &Options) -> Result<RawFd, OpenFailure> {
    let (mode, append) = if opt.shared {
        (OFlag::O_RDONLY, 0)
    } else {
        (OFlag::O_WRONLY | OFlag::O_APPEND, libc::O_APPEND)
    };
    let mut flags = mode | OFlag::O_CREAT | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK;
    if opt.no_follow {
        flags |= OFlag::O_NOFOLLOW;
    }
    let path = opt.file.as_os_str();
    let fd = unixtool::retry_eintr(|| open(path, flags, Mode::from_bits_truncate(0o600))).map_err(
        |e| match kind_at(path, opt.no_follow) {
            Some(kind) => OpenFailure::NotRegular(kind),
            None => OpenFailure::Errno(e),
        },
    )?;
    let checked = match fstat(fd) {
        Ok(st) => match not_regular(st.st_mode) {
            None => fcntl(fd, FcntlArg::F_SETFL(OFlag::from_bits_truncate(append)))
                .map(drop)
                .map_err(OpenFailure::Errno),
            Some(kind) => Err(OpenFailure::NotRegular(kind)),
        },
        Err(e) => Err(OpenFailure::Errno(e)),
    };
    if checked.is_err() {
        let _ = nix::unistd::close(fd);
    }
    checked.map(|()| fd)
}

/// After a failed open(2): what is at `path` when it is not a regular file (the
/// reason to report), None when it is one or cannot be looked at (report the errno).
fn kind_at(path: &OsStr, no_follow: bool) -> Option<&'static str> {
    let st = if no_follow { lstat(path) } else { stat(path) };
    st.ok().and_then(|st| not_regular(st.st_mode))
}

/// None for a regular file; otherwise what it is, for the message.
fn not_regular(mode: libc::mode_t) -> Option<&'static str> {
    match mode & libc::S_IFMT {
        libc::S_IFREG => None,
        libc::S_IFDIR => Some("a directory"),
        libc::S_IFIFO => Some("a FIFO"),
        libc::S_IFSOCK => Some("a socket"),
        libc::S_IFCHR => Some("a character device"),
        libc::S_IFBLK => Some("a block device"),
        libc::S_IFLNK => Some("a symbolic link (--no-follow)"),
        _ => Some("an unknown kind of file"),
    }
}

/// Lock it: wait (-N), try once (-n, -t 0), or wait at most -t ms.
fn lock(fd: RawFd, opt: &Options) -> Result<(), Errno> {
    let op = if opt.shared {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    match (opt.wait, opt.timeout_ms) {
        (Some(false), _) => flock(fd, op | libc::LOCK_NB),
        (_, Some(0)) => flock(fd, op | libc::LOCK_NB).map_err(timed_out),
        (_, Some(ms)) => flock_timeout(fd, op, ms),
        _ => unixtool::retry_eintr(|| flock(fd, op)),
    }
}

/// `-r`/`-w` may be given again, but not both.
fn set_once(slot: &mut Option<bool>, v: bool) {
    if slot.is_some_and(|old| old != v) {
        TOOL.usage("-r and -w conflict");
    }
    *slot = Some(v);
}

fn flock(fd: RawFd, op: libc::c_int) -> Result<(), Errno> {
    // SAFETY: flock(2) takes a descriptor number and an operation, no memory;
    // a stale descriptor is an EBADF, not undefined behaviour.
    Errno::result(unsafe { libc::flock(fd, op) }).map(drop)
}

fn timed_out(e: Errno) -> Errno {
    if e == Errno::EWOULDBLOCK {
        Errno::ETIMEDOUT
    } else {
        e
    }
}

static ALARM: AtomicBool = AtomicBool::new(false);

extern "C" fn on_alarm(_: libc::c_int) {
    ALARM.store(true, Ordering::SeqCst);
}

/// A blocking flock(2) that an interval timer interrupts after `ms`. The timer
/// keeps firing every 10 ms after the deadline, so a signal that lands between
/// the flag check and the system call cannot leave us blocked. Timer and
/// SIGALRM disposition are put back before we return (prog inherits neither).
fn flock_timeout(fd: RawFd, op: libc::c_int, ms: u32) -> Result<(), Errno> {
    let itimer = |ms: u32, every_us: i64| libc::itimerval {
        it_value: libc::timeval {
            tv_sec: (ms / 1000) as libc::time_t,
            tv_usec: ((ms % 1000) * 1000) as libc::suseconds_t,
        },
        it_interval: libc::timeval {
            tv_sec: 0,
            tv_usec: every_us as libc::suseconds_t,
        },
    };
    // No SA_RESTART: the signal must interrupt flock(2).
    let act = SigAction::new(
        SigHandler::Handler(on_alarm),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe,
    // and setlock has no other threads whose signal handling this could upset.
    let old = unsafe { sigaction(Signal::SIGALRM, &act) }?;
    let result = set_timer(&itimer(ms, 10_000)).and_then(|()| loop {
        if ALARM.load(Ordering::SeqCst) {
            break Err(Errno::ETIMEDOUT);
        }
        match flock(fd, op) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    });
    let _ = set_timer(&itimer(0, 0));
    // SAFETY: puts back the disposition sigaction returned above, as it was before.
    let _ = unsafe { sigaction(Signal::SIGALRM, &old) };
    result
}

/// setitimer(2) on the real-time timer (SIGALRM); the old value is not wanted.
fn set_timer(t: &libc::itimerval) -> Result<(), Errno> {
    // SAFETY: `t` is a valid itimerval for the duration of the call, and a null
    // old-value pointer is allowed (nothing is written back).
    Errno::result(unsafe { libc::setitimer(libc::ITIMER_REAL, t, std::ptr::null_mut()) }).map(drop)
}
