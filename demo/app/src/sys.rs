//! The system side: signals, the stop flag, accept, poll, readiness.

use std::ffi::OsStr;
use std::net::ToSocketAddrs;
use std::os::fd::{IntoRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static STOP: AtomicBool = AtomicBool::new(false);

/// Whether HUP, TERM or INT has come: finish the request in hand, accept no more.
pub fn stopping() -> bool {
    STOP.load(Ordering::Relaxed)
}

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
    // From now on, interrupt whatever blocks every 10 ms: a signal that came just
    // before a blocking accept/poll/read must not leave it blocked.
    let tick = libc::timeval {
        tv_sec: 0,
        tv_usec: 10_000,
    };
    let it = libc::itimerval {
        it_interval: tick,
        it_value: tick,
    };
    unsafe { libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) };
}

extern "C" fn on_quit(_: libc::c_int) {
    unsafe { libc::_exit(0) };
}

extern "C" fn on_alarm(_: libc::c_int) {}

/// HUP/TERM/INT: graceful stop; QUIT: exit now; ALRM: only interrupts. No
/// SA_RESTART, so a blocking accept, poll or read returns EINTR and the loops
/// look at the stop flag. PIPE is ignored (a write to a gone client fails).
pub fn install_signal_handlers() {
    let set = |sig, h| {
        let sa = SigAction::new(h, SaFlags::empty(), SigSet::empty());
        let _ = unsafe { sigaction(sig, &sa) };
    };
    for sig in [Signal::SIGHUP, Signal::SIGTERM, Signal::SIGINT] {
        set(sig, SigHandler::Handler(on_stop));
    }
    set(Signal::SIGQUIT, SigHandler::Handler(on_quit));
    set(Signal::SIGALRM, SigHandler::Handler(on_alarm));
    set(Signal::SIGPIPE, SigHandler::SigIgn);
}

/// Sleep, waking early when told to stop; false if stopped.
pub fn sleep_unless_stopped(d: Duration) -> bool {
    let end = Instant::now() + d;
    while !stopping() {
        let now = Instant::now();
        if now >= end {
            return true;
        }
        std::thread::sleep((end - now).min(Duration::from_millis(20)));
    }
    false
}

pub fn accept(listener: RawFd) -> Result<RawFd, Errno> {
    let fd = unsafe {
        libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    Errno::result(fd)
}

/// poll one descriptor; Ok(true) readable (or hung up), Ok(false) timed out.
pub fn poll_in(fd: RawFd, timeout_ms: i32) -> Result<bool, Errno> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let n = Errno::result(unsafe { libc::poll(&mut p, 1, timeout_ms) })?;
    Ok(n > 0)
}

/// Wait until a non-blocking listener has a connection (or a signal comes).
pub fn wait_readable(fd: RawFd) {
    let _ = poll_in(fd, -1);
}

pub fn read(fd: RawFd, buf: &mut [u8]) -> Result<usize, Errno> {
    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    Errno::result(n).map(|n| n as usize)
}

/// Write everything; EINTR is retried (a stop still finishes the response in hand).
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        let n = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        match Errno::result(n) {
            Ok(0) => return Err(Errno::EPIPE),
            Ok(n) => buf = &buf[n as usize..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

pub fn close(fd: RawFd) {
    unsafe { libc::close(fd) };
}

/// The sending side times out: a client that never reads cannot hold the worker.
pub fn set_send_timeout(fd: RawFd, d: Duration) {
    let tv = libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
}

/// Whether `fd` is a listening socket; the reason if not.
pub fn check_listening(fd: RawFd) -> Result<(), String> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    match Errno::result(r) {
        Err(e) => Err(unixtool::strerror(e).to_string()),
        Ok(_) if v == 0 => Err("it is not a listening socket".to_string()),
        Ok(_) => Ok(()),
    }
}

pub enum ListenError {
    Address,
    Os(&'static str, Errno),
}

/// Bind and listen on HOST:PORT (SO_REUSEADDR, backlog SOMAXCONN); (fd, port).
pub fn listen_on(addr: &str) -> Result<(RawFd, u16), ListenError> {
    let sa = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or(ListenError::Address)?;
    let l = std::net::TcpListener::bind(sa)
        .map_err(|e| ListenError::Os("bind", unixtool::errno_of(&e)))?;
    let port = l
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| ListenError::Os("bind", unixtool::errno_of(&e)))?;
    let fd = l.into_raw_fd();
    // std binds with SO_REUSEADDR and a backlog of 128; make it SOMAXCONN.
    unsafe { libc::listen(fd, libc::SOMAXCONN) };
    Ok((fd, port))
}

pub fn fork() -> Result<Option<libc::pid_t>, Errno> {
    let pid = Errno::result(unsafe { libc::fork() })?;
    Ok((pid > 0).then_some(pid))
}

/// --workers: stop the other processes gracefully and reap them.
pub fn stop_children(children: &[libc::pid_t]) {
    for &pid in children {
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    for &pid in children {
        let mut st = 0;
        while unsafe { libc::waitpid(pid, &mut st, 0) } == -1 && Errno::last() == Errno::EINTR {}
    }
}

/// Block on the hold descriptor until it yields a byte or EOF (or we are told to stop).
pub fn wait_for_release_of_hold(fd: RawFd) {
    let mut b = [0u8; 1];
    loop {
        match read(fd, &mut b) {
            Err(Errno::EINTR) if !stopping() => continue,
            Err(Errno::EAGAIN) if !stopping() => {
                let _ = poll_in(fd, -1);
            }
            _ => return,
        }
    }
}

/// systemd readiness: one datagram to $NOTIFY_SOCKET (a path, or `@name` for the
/// abstract namespace).
pub fn notify(path: &OsStr, msg: &[u8]) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    let addr = unixtool::readiness::notify_address(path)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    sock.send_to_addr(msg, &addr)?;
    Ok(())
}
