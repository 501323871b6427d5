//! setlock: open a lock file, take a flock(2) lock on it, exec prog holding it.
//! Drop-in for daemontools setlock (-nNxX), plus -r/-w, -t ms, -d fd. See README.md.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use lexopt::prelude::*;
use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use unixtool::{Tool, EXIT_TEMPORARY};

/// The lock is held by someone else and `-t ms` ran out (sysexits EX_TEMPFAIL).
const EXIT_TIMEOUT: i32 = 75;

const TOOL: Tool = Tool {
    name: "setlock",
    usage: "setlock [-nNxX] [-r|-w] [-t ms] [-d fd] file prog...",
    help: "
  -n, --nonblock     if file is locked, fail at once (exit 111)
  -N, --block        if file is locked, wait for it (default)
  -x, --exit-zero    if file cannot be opened or locked, exit 0 quietly
  -X, --exit-error   if file cannot be opened or locked, say so and fail (default)
  -r, --shared       take a shared lock (readers)
  -w, --exclusive    take an exclusive lock (default)
  -t, --timeout MS   wait at most MS milliseconds, then exit 75 (0: try once)
  -d, --fd FD        hand the lock to prog on descriptor FD
  -h, --help         this text
  -V, --version      the version
",
};

fn main() {
    let mut wait: Option<bool> = None; // -N / -n
    let mut exit_zero = false; // -x / -X
    let mut shared: Option<bool> = None; // -r / -w
    let mut timeout_ms: Option<u32> = None;
    let mut lock_fd: Option<RawFd> = None;

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
            Short('h') | Long("help") => TOOL.print_help(),
            Short('V') | Long("version") => TOOL.print_version(),
            Value(first) => break unixtool::rest_of_args(first, &mut parser),
            other => TOOL.bad_arg(other.unexpected()),
        }
    };
    if timeout_ms.is_some() && wait.is_some() {
        TOOL.usage("-t conflicts with -n and -N");
    }
    let (file, prog): (&OsString, &[OsString]) = match args.split_first() {
        Some((file, prog)) if !prog.is_empty() => (file, prog),
        Some(_) => TOOL.usage("missing prog"),
        None => TOOL.usage("missing file and prog"),
    };
    let shared = shared.unwrap_or(false);
    let name = file.to_string_lossy();
    // With -x, a lock that cannot be had is not an error: exit 0, say nothing.
    let give_up = |code: i32, msg: std::fmt::Arguments| -> ! {
        if exit_zero {
            std::process::exit(0)
        }
        TOOL.fatal(code, msg)
    };

    // Open (creating it 0600 if missing), close-on-exec until we hand it down.
    let flags = if shared {
        OFlag::O_RDONLY
    } else {
        OFlag::O_WRONLY | OFlag::O_APPEND
    };
    let flags = flags | OFlag::O_CREAT | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
    let fd = match unixtool::retry_eintr(|| {
        open(file.as_os_str(), flags, Mode::from_bits_truncate(0o600))
    }) {
        Ok(fd) => fd,
        Err(e) => give_up(
            EXIT_TEMPORARY,
            format_args!("unable to open {name}: {}", unixtool::strerror(e)),
        ),
    };

    // Lock it: wait (-N), try once (-n, -t 0), or wait at most -t ms.
    let op = if shared { libc::LOCK_SH } else { libc::LOCK_EX };
    let result = match (wait, timeout_ms) {
        (Some(false), _) => flock(fd, op | libc::LOCK_NB),
        (_, Some(0)) => flock(fd, op | libc::LOCK_NB).map_err(timed_out),
        (_, Some(ms)) => flock_timeout(fd, op, ms),
        _ => unixtool::retry_eintr(|| flock(fd, op)),
    };
    match result {
        Ok(()) => {}
        Err(Errno::EWOULDBLOCK) => give_up(
            EXIT_TEMPORARY,
            format_args!("unable to lock {name}: locked by another process"),
        ),
        Err(Errno::ETIMEDOUT) => give_up(
            EXIT_TIMEOUT,
            format_args!(
                "unable to lock {name}: still locked by another process after {} ms",
                timeout_ms.unwrap_or(0)
            ),
        ),
        Err(e) => give_up(
            EXIT_TEMPORARY,
            format_args!("unable to lock {name}: {}", unixtool::strerror(e)),
        ),
    }

    // Hand the lock down: on -d fd, or where open put it; then become prog.
    let handed = match lock_fd {
        Some(to) => unixtool::move_fd(fd, to),
        None => unixtool::set_cloexec(fd, false),
    };
    if let Err(e) = handed {
        TOOL.fatal_errno(
            EXIT_TEMPORARY,
            format_args!("put the lock on descriptor {}", lock_fd.unwrap_or(fd)),
            e,
        );
    }
    TOOL.exec(prog)
}

/// `-r`/`-w` may be given again, but not both.
fn set_once(slot: &mut Option<bool>, v: bool) {
    if slot.is_some_and(|old| old != v) {
        TOOL.usage("-r and -w conflict");
    }
    *slot = Some(v);
}

fn flock(fd: RawFd, op: libc::c_int) -> Result<(), Errno> {
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
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_alarm as extern "C" fn(libc::c_int) as usize;
        act.sa_flags = 0; // no SA_RESTART: the signal must interrupt flock(2)
        libc::sigemptyset(&mut act.sa_mask);
        let mut old: libc::sigaction = std::mem::zeroed();
        Errno::result(libc::sigaction(libc::SIGALRM, &act, &mut old))?;
        let armed = itimer(ms, 10_000);
        let result = if libc::setitimer(libc::ITIMER_REAL, &armed, std::ptr::null_mut()) == -1 {
            Err(Errno::last())
        } else {
            loop {
                if ALARM.load(Ordering::SeqCst) {
                    break Err(Errno::ETIMEDOUT);
                }
                match flock(fd, op) {
                    Err(Errno::EINTR) => continue,
                    other => break other,
                }
            }
        };
        let off = itimer(0, 0);
        libc::setitimer(libc::ITIMER_REAL, &off, std::ptr::null_mut());
        libc::sigaction(libc::SIGALRM, &old, std::ptr::null_mut());
        result
    }
}
