//! The system side, on nix and OwnedFd: signals as a descriptor, the listening
//! socket, accept, non-blocking reads and writes, waiting, forking.

use std::net::ToSocketAddrs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{self, sockopt, MsgFlags, Shutdown, SockFlag};
use nix::unistd::Pid;

/// What a signal asks of the app.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Order {
    /// HUP, TERM, INT: stop accepting, finish what is in hand, exit 0.
    Stop,
    /// QUIT: exit 0 now.
    Quit,
    /// TSTP, forkpool's park (--confirm-timeout): stop accepting, finish
    /// what is in hand, say `parked`, wait for CONT.
    Park,
    /// CONT: go on (accept again after a park).
    Resume,
}

impl Order {
    /// Of two orders taken together, the one that counts: QUIT over a stop
    /// over CONT over TSTP (a park and its CONT in one read is no park).
    fn rank(self) -> u8 {
        match self {
            Order::Quit => 3,
            Order::Stop => 2,
            Order::Resume => 1,
            Order::Park => 0,
        }
    }
}

/// HUP, TERM, INT, QUIT, TSTP and CONT, blocked and read from a descriptor,
/// so that every wait (poll, epoll) sees them with no race (CONT still
/// continues a stopped process; blocked, it is also read); PIPE is ignored
/// (a write to a client that left fails with EPIPE).
pub struct Signals {
    fd: SignalFd,
}

impl Signals {
    pub fn install() -> Result<Signals, Errno> {
        let mut set = SigSet::empty();
        for sig in [
            Signal::SIGHUP,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGQUIT,
            Signal::SIGTSTP,
            Signal::SIGCONT,
        ] {
            set.add(sig);
        }
        let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
        // SAFETY: SIG_IGN runs no code of ours, so no handler can break any invariant.
        unsafe { sigaction(Signal::SIGPIPE, &ignore) }?;
        nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)?;
        Ok(Signals { fd })
    }

    /// The strongest order pending, if any ([`Order::rank`]).
    pub fn take(&mut self) -> Option<Order> {
        let mut order: Option<Order> = None;
        while let Ok(Some(info)) = self.fd.read_signal() {
            let this = match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGQUIT) => Order::Quit,
                Ok(Signal::SIGTSTP) => Order::Park,
                Ok(Signal::SIGCONT) => Order::Resume,
                _ => Order::Stop,
            };
            if order.is_none_or(|o| this.rank() > o.rank()) {
                order = Some(this);
            }
        }
        order
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Wait until `fd` is readable, a signal comes, or `until` passes. What came first.
pub enum Woke {
    Readable,
    Signal(Order),
    Timeout,
}

pub fn wait_for(fd: Option<BorrowedFd>, signals: &mut Signals, until: Option<Instant>) -> Woke {
    loop {
        if let Some(order) = signals.take() {
            return Woke::Signal(order);
        }
        let left = until.map(|u| u.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Woke::Timeout;
        }
        let mut fds = vec![PollFd::new(signals.fd(), PollFlags::POLLIN)];
        if let Some(fd) = fd {
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        match nix::poll::poll(&mut fds, poll_timeout(left)) {
            Ok(_)
                if fds
                    .get(1)
                    .and_then(|f| f.revents())
                    .is_some_and(|r| !r.is_empty()) =>
            {
                return Woke::Readable
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return Woke::Readable,
        }
    }
}

/// A timeout for poll/epoll: None waits for ever; rounded up to whole milliseconds.
pub fn poll_timeout(left: Option<Duration>) -> PollTimeout {
    match left {
        None => PollTimeout::NONE,
        Some(d) => {
            let ms = d.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32;
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
        }
    }
}

/// Descriptor `fd`, which the app was handed and is now the only user of.
pub fn adopt(fd: RawFd) -> OwnedFd {
    // SAFETY: the caller checked that `fd` is open (unixtool::fd_is_open) and no
    // other object in this process owns it: the app takes it over for good.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Switch O_NONBLOCK on for `fd` (for a socket: for every holder of it).
pub fn set_nonblocking(fd: BorrowedFd) -> Result<(), Errno> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL)?);
    if !flags.contains(OFlag::O_NONBLOCK) {
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    }
    Ok(())
}

/// Whether `fd` is a listening socket; the reason if not.
pub fn check_listening(fd: BorrowedFd) -> Result<(), String> {
    match socket::getsockopt(&fd, sockopt::AcceptConn) {
        Err(e) => Err(unixtool::strerror(e).to_string()),
        Ok(false) => Err("it is not a listening socket".to_string()),
        Ok(true) => Ok(()),
    }
}

pub enum ListenError {
    Address,
    Os(&'static str, Errno),
}

/// Bind and listen on HOST:PORT (SO_REUSEADDR, backlog SOMAXCONN); (socket, port).
pub fn listen_on(addr: &str) -> Result<(OwnedFd, u16), ListenError> {
    let sa = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or(ListenError::Address)?;
    let os = |what| move |e: std::io::Error| ListenError::Os(what, unixtool::errno_of(&e));
    let l = std::net::TcpListener::bind(sa).map_err(os("bind"))?;
    let port = l.local_addr().map_err(os("bind"))?.port();
    // std binds with SO_REUSEADDR and a backlog of 128; make it SOMAXCONN.
    socket::listen(&l, socket::Backlog::MAXCONN).map_err(|e| ListenError::Os("listen on", e))?;
    Ok((OwnedFd::from(l), port))
}

/// A connection from the listener: non-blocking, close-on-exec.
pub fn accept(listener: BorrowedFd) -> Result<OwnedFd, Errno> {
    let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
    let fd = socket::accept4(listener.as_raw_fd(), flags)?;
    // SAFETY: accept4 just returned this descriptor: it is open and nobody else owns it.
    let conn = unsafe { OwnedFd::from_raw_fd(fd) };
    limit_unsent(conn.as_fd());
    Ok(conn)
}

/// The most a connection may have queued in the kernel and not yet sent: a slow
/// reader holds this much kernel memory, not the socket's whole (autotuned, up to
/// tcp_wmem's 4 MB) send buffer; beyond it send(2) says EAGAIN.
const UNSENT_LIMIT: libc::c_int = 128 * 1024;

/// TCP_NOTSENT_LOWAT (nix 0.29 has no wrapper for it). A failure only leaves the
/// kernel's default, so it is not reported.
fn limit_unsent(fd: BorrowedFd) {
    let value = UNSENT_LIMIT;
    // SAFETY: the pointer and length describe `value`, a c_int that lives across
    // the call; setsockopt only reads it.
    let _ = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Read what is there (non-blocking socket); Ok(0) is end of file.
pub fn recv(fd: BorrowedFd, buf: &mut [u8]) -> Result<usize, Errno> {
    socket::recv(fd.as_raw_fd(), buf, MsgFlags::empty())
}

/// Look at what is there without taking it (non-blocking socket).
pub fn peek(fd: BorrowedFd, buf: &mut [u8]) -> Result<usize, Errno> {
    socket::recv(fd.as_raw_fd(), buf, MsgFlags::MSG_PEEK)
}

/// Write what fits (non-blocking socket); no SIGPIPE.
pub fn send(fd: BorrowedFd, buf: &[u8]) -> Result<usize, Errno> {
    socket::send(fd.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL)
}

/// Our side is done sending: the client reads end of file after the response.
pub fn shutdown_write(fd: BorrowedFd) {
    let _ = socket::shutdown(fd.as_raw_fd(), Shutdown::Write);
}

/// Cut the connection: close(2) then sends a reset and drops what the kernel
/// still holds for the client, instead of delivering it after we are gone.
pub fn reset_on_close(fd: BorrowedFd) {
    let abort = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = socket::setsockopt(&fd, sockopt::Linger, &abort);
}

/// --workers: fork; Some(pid) in the parent, None in the child.
pub fn fork() -> Result<Option<Pid>, Errno> {
    // SAFETY: the app has no other thread at this point, so the child may run any
    // code (the async-signal-safety rule of fork in threaded programs does not apply).
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { child } => Ok(Some(child)),
        nix::unistd::ForkResult::Child => Ok(None),
    }
}

/// --workers: stop the other processes gracefully and reap them.
pub fn stop_children(children: &[Pid]) {
    for &pid in children {
        let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    }
    for &pid in children {
        while let Err(Errno::EINTR) = nix::sys::wait::waitpid(pid, None) {}
    }
}

/// Sleep, waking early when told to stop; false if stopped.
pub fn sleep_unless_stopped(signals: &mut Signals, d: Duration) -> bool {
    if d.is_zero() {
        return true;
    }
    let until = Instant::now() + d;
    loop {
        match wait_for(None, signals, Some(until)) {
            Woke::Signal(Order::Stop | Order::Quit) => return false,
            Woke::Signal(Order::Park | Order::Resume) => {}
            _ => return true,
        }
    }
}

/// How `open_beneath` opens: `Path` only names the file (O_PATH: nothing of
/// the file's own is run, a FIFO or a device is not opened), `Read` opens it
/// for reading.
#[derive(Clone, Copy)]
pub enum Beneath {
    Path,
    Read,
}

/// `openat2(2)` of `rel` under `dir`, refusing to leave `dir` and to follow
/// any symlink: the walk that realpath(3) makes with a readlink(2) per
/// component, in one call. Any error (a symlink on the way: ELOOP; no
/// openat2: ENOSYS) is the caller's to take the long way.
pub fn open_beneath(
    dir: BorrowedFd,
    rel: &std::ffi::CStr,
    mode: Beneath,
) -> Result<OwnedFd, Errno> {
    // SAFETY: open_how is plain integers: all zeros is a valid value of it.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = match mode {
        Beneath::Path => libc::O_PATH | libc::O_CLOEXEC,
        Beneath::Read => libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
    } as u64;
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: openat2 reads `rel` (a NUL-terminated string alive for the
    // call) and `how` (an initialised open_how whose size is passed); it
    // returns a new descriptor we own, or -1 with errno.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            rel.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(Errno::last());
    }
    // SAFETY: `fd` was just returned by openat2: open, and ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `struct sched_attr` as `sched_setattr(2)` has it (its first published
/// size, 48 bytes: what is read and written here).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;
const SCHED_IDLE: u32 = 5;
const SCHED_FLAG_RESET_ON_FORK: u64 = 1;

fn sched_attr() -> Option<SchedAttr> {
    let mut a = SchedAttr::default();
    // SAFETY: `a` is a writable sched_attr of the size passed; the kernel
    // writes at most that many bytes; pid 0 is this thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            0,
            &mut a as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as libc::c_uint,
            0,
        )
    };
    (r == 0).then_some(a)
}

fn set_sched_attr(mut a: SchedAttr) {
    a.size = std::mem::size_of::<SchedAttr>() as u32;
    a.flags &= SCHED_FLAG_RESET_ON_FORK;
    // SAFETY: `a` is a whole sched_attr whose size field says its size; the
    // kernel only reads it; pid 0 is this thread.
    let _ = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &a as *const SchedAttr, 0) };
}

/// This thread's scheduler slice as it was before `shorten_slice`, to put back.
pub struct Slice(SchedAttr);

/// Ask the kernel for a slice of `ns` for this thread: the length of CPU
/// time it asks for at a time, by which Linux's scheduler (EEVDF, 6.12 on)
/// sets how soon a waking thread runs, the shorter the sooner. Its policy
/// and nice value stay. None where there is nothing to shorten: a kernel
/// that reports no slice, a policy not of the fair class (real time), or a
/// slice as short already. Needs no privilege.
pub fn shorten_slice(ns: u64) -> Option<Slice> {
    let was = sched_attr()?;
    if ![SCHED_OTHER, SCHED_BATCH, SCHED_IDLE].contains(&was.policy) || was.runtime <= ns {
        return None;
    }
    set_sched_attr(SchedAttr { runtime: ns, ..was });
    Some(Slice(was))
}

impl Slice {
    /// The slice it had before (as its length: a slice left to the kernel's
    /// default comes back as a slice of that length).
    pub fn restore(self) {
        set_sched_attr(self.0);
    }
}
