//! Signals handled in the main loop, never lost: a self-pipe.
//!
//! [`SignalPipe::install`] puts a tiny handler on each signal asked for; the
//! handler writes the signal's number, one byte, to a non-blocking pipe whose
//! read end the main loop polls beside its other descriptors. Two signals of one
//! kind that arrive together are two bytes, so nothing is counted twice or lost
//! (a TTIN sent three times is three bytes), and the order is kept.
//!
//! Both ends are close-on-exec. A child must not run the handlers between fork
//! and exec (they would write into the parent's pipe): [`block_all`] before
//! fork, then [`reset_for_child`] in the child and [`restore_mask`] in the
//! parent. `crate::child::Spawn` does all of this.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use nix::errno::Errno;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};

/// The signals a supervisor (loop-forever, forkpool) catches: CHLD to reap,
/// HUP/TERM/INT/QUIT/TTIN/TTOU with their meaning in docs/conventions.md, and the
/// others it forwards to its children.
pub const SUPERVISOR_SIGNALS: [Signal; 11] = [
    Signal::SIGCHLD,
    Signal::SIGHUP,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTTIN,
    Signal::SIGTTOU,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGALRM,
];

/// The write end of the pipe, for the handler (-1: none yet).
static WRITE_FD: AtomicI32 = AtomicI32::new(-1);
/// Bit n set: signal n has our handler (reset to default in children).
static HANDLED: AtomicU64 = AtomicU64::new(0);

/// SIGHUPs the kernel sent (si_code SI_KERNEL: the process group became
/// orphaned while a member was stopped, or the terminal hung up), not written
/// to the pipe as a HUP (only a 0 byte that wakes the loop): see
/// [`take_kernel_hups`].
static KERNEL_HUPS: AtomicU64 = AtomicU64::new(0);

extern "C" fn on_signal(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Only async-signal-safe calls here: write(2), and errno put back as it was.
    let saved = Errno::last_raw();
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t (or null,
    // checked); si_code is a plain integer field.
    let code = unsafe { info.as_ref() }.map_or(0, |i| i.si_code);
    let mut b = sig as u8;
    if sig == libc::SIGHUP && code == libc::SI_KERNEL {
        // Counted, and the loop woken by a 0 byte (no signal: `drain` skips
        // it). Without the byte a kernel HUP that came outside the loop's
        // poll was seen only at its next wake, maybe never (issue 25).
        KERNEL_HUPS.fetch_add(1, Ordering::SeqCst);
        b = 0;
    }
    let fd = WRITE_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; the pointer is to a live
        // local byte, the length 1; fd is the self-pipe's write end, which
        // is never closed (or -1 in a child, skipped above).
        unsafe { libc::write(fd, &b as *const u8 as *const libc::c_void, 1) };
    }
    Errno::set_raw(saved);
}

/// How many SIGHUPs the kernel sent since the last call. Such a HUP is job
/// control (an orphaned process group with a stopped member, a terminal's
/// hangup), never a `kill -HUP` (SI_USER) by someone who wants a reload: the
/// handler drops it and counts it here, so the tool can say so in a warning.
/// Call it after [`SignalPipe::drain`]: the handler counts before it writes
/// its wake byte, so a byte drained is a HUP already counted, and a HUP that
/// comes later leaves its byte for the next poll.
pub fn take_kernel_hups() -> u64 {
    KERNEL_HUPS.swap(0, Ordering::SeqCst)
}

/// The read end of the self-pipe; see the module documentation.
pub struct SignalPipe {
    read: OwnedFd,
}

impl SignalPipe {
    /// Create the pipe and catch every signal of `sigs` (SIGCHLD included if
    /// asked for, with SA_NOCLDSTOP). Call once per process.
    pub fn install(sigs: &[Signal]) -> Result<SignalPipe, Errno> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        // The write end lives as long as the process: the handler may run at any time.
        WRITE_FD.store(std::os::fd::IntoRawFd::into_raw_fd(write), Ordering::SeqCst);
        for &sig in sigs {
            let flags = if sig == Signal::SIGCHLD {
                SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP
            } else {
                SaFlags::SA_RESTART
            };
            let act = SigAction::new(SigHandler::SigAction(on_signal), flags, SigSet::empty());
            // SAFETY: on_signal only does async-signal-safe things (atomics,
            // write(2), errno saved and restored); nix adds SA_SIGINFO.
            unsafe { sigaction(sig, &act) }?;
            HANDLED.fetch_or(1u64 << (sig as i32 as u32), Ordering::SeqCst);
        }
        Ok(SignalPipe { read })
    }

    /// The descriptor to poll for POLLIN.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.read.as_fd()
    }

    pub fn raw_fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Every signal that arrived since the last call, in order of arrival.
    pub fn drain(&self) -> Vec<Signal> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match nix::unistd::read(self.read.as_raw_fd(), &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.extend(
                        buf[..n]
                            .iter()
                            .filter_map(|&b| Signal::try_from(b as i32).ok()),
                    );
                    if n < buf.len() {
                        break;
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        out
    }
}

/// Block every signal; returns the mask to restore. Used around fork.
pub fn block_all() -> SigSet {
    let mut old = SigSet::empty();
    let _ = nix::sys::signal::sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    );
    old
}

/// Put back the mask [`block_all`] returned.
pub fn restore_mask(old: &SigSet) {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(old), None);
}

/// In a freshly forked child (signals still blocked): every signal this
/// process catches, and SIGPIPE (which the Rust runtime ignores), back to the
/// default action. The mask is left blocked; [`unblock_all`] right before exec.
pub fn reset_for_child() {
    let handled = HANDLED.load(Ordering::SeqCst);
    for sig in Signal::iterator() {
        if sig == Signal::SIGPIPE || handled & (1u64 << (sig as i32 as u32)) != 0 {
            default_action(sig);
        }
    }
    // The handler, should one still run, must not write into the parent's pipe.
    WRITE_FD.store(-1, Ordering::SeqCst);
}

/// `sig` back to its default action (in a child before exec, where an
/// ignored disposition would be inherited).
pub fn default_action(sig: Signal) {
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    // SAFETY: SIG_DFL installs no handler of ours.
    let _ = unsafe { sigaction(sig, &dfl) };
}

/// An empty signal mask (the child's, right before exec).
pub fn unblock_all() {
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Parse a signal name as the classic tools spell it: `TERM`, `SIGTERM`,
/// `term`, or a number (`15`).
pub fn parse_signal(s: &str) -> Option<Signal> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i32>().ok().and_then(|n| Signal::try_from(n).ok());
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>().ok()
}

/// `TERM` for SIGTERM: the name as the pages and messages write it.
pub fn signal_name(sig: Signal) -> &'static str {
    let s = sig.as_str();
    s.strip_prefix("SIG").unwrap_or(s)
}

/// The main loop's wait: poll `fds` for input until one is readable or
/// `timeout` passes (None: no limit). Returns, for each descriptor, whether it
/// is readable (or hung up). EINTR counts as "nothing yet": all false.
pub fn poll_readable(fds: &[RawFd], timeout: Option<std::time::Duration>) -> Vec<bool> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // ppoll(2), not poll(2): poll's timeout is whole milliseconds, rounded up
    // (so a deadline is never polled for as 0 ms again and again), and a
    // deadline such as a two-phase commit's instant came up to 1 ms late.
    // The kernel's timer ends this wait at the deadline or after it, never
    // before, to the nanosecond (plus the timer slack, 50 us).
    let ts = timeout.map(|d| libc::timespec {
        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    });
    let tsp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: the pointer and length are those of `pfds`, alive and
    // exclusively borrowed for the call; `tsp` is null or points to `ts`,
    // alive until the call returns; a null signal mask leaves the mask as it is.
    let n = unsafe {
        libc::ppoll(
            pfds.as_mut_ptr(),
            pfds.len() as libc::nfds_t,
            tsp,
            std::ptr::null(),
        )
    };
    if n <= 0 {
        return vec![false; fds.len()];
    }
    pfds.iter()
        .map(|p| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
        .collect()
}
