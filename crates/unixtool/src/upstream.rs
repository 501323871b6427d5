//! A supervisor's own supervisor, told the systemd way (`NOTIFY_SOCKET`,
//! Type=notify or Type=notify-reload): the sender only. What to say and when
//! is the tool's business (forkpool: its upstream.rs); loop-forever can use
//! the same sender for `RELOADING=1`/`READY=1` around an in-place upgrade.
//!
//! The variable is taken out of the environment at start, so children never
//! talk to their supervisor's supervisor themselves.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The socket `NOTIFY_SOCKET` named when the tool started.
pub struct Upstream {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// NOTIFY_SOCKET's value, for messages.
    name: String,
    /// NOTIFY_SOCKET's value as it was, to put back for an in-place upgrade.
    value: std::ffi::OsString,
    warned: bool,
}

impl Upstream {
    /// Take `NOTIFY_SOCKET` out of the environment; a sender for it if it was
    /// set to something usable (a path, or `@name` in the abstract namespace).
    /// A warning line (and None) for a value that is not.
    pub fn from_env(tool: &crate::Tool) -> Option<Upstream> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        std::env::remove_var("NOTIFY_SOCKET");
        let Some(addr) = crate::readiness::notify_address(&value) else {
            tool.warn(format_args!(
                "NOTIFY_SOCKET={:?} is not a socket address: not notifying",
                value.to_string_lossy()
            ));
            return None;
        };
        let sock = match UnixDatagram::unbound() {
            Ok(s) => s,
            Err(e) => {
                tool.warn(format_args!(
                    "unable to create a socket for NOTIFY_SOCKET: {}: not notifying",
                    crate::io_reason(&e)
                ));
                return None;
            }
        };
        Some(Upstream {
            sock,
            addr,
            name: value.to_string_lossy().into_owned(),
            value,
            warned: false,
        })
    }

    /// `NOTIFY_SOCKET` as it was at start: an in-place upgrade puts it back
    /// in the environment of the next image, which takes it out again.
    pub fn env_value(&self) -> &std::ffi::OsStr {
        &self.value
    }

    /// Send one datagram (`KEY=value` lines); the first failure is a warning.
    pub fn send(&mut self, tool: &crate::Tool, msg: &str) {
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &self.addr) {
            if !self.warned {
                self.warned = true;
                tool.warn(format_args!(
                    "unable to notify {}: {}",
                    self.name,
                    crate::io_reason(&e)
                ));
            }
        }
    }
}

/// CLOCK_MONOTONIC in microseconds, as `MONOTONIC_USEC=` wants it beside
/// `RELOADING=1`.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable timespec; CLOCK_MONOTONIC cannot
    // fail with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// The supervisor's watchdog (systemd `WatchdogSec=`): `WATCHDOG_USEC` (and
/// `WATCHDOG_PID`, when set, naming this process) in the environment ask for
/// `WATCHDOG=1` at least that often; it is sent every half of it. Both
/// variables are taken out of the environment, so children never see them.
pub struct Watchdog {
    interval: std::time::Duration,
    next: std::time::Instant,
}

impl Watchdog {
    pub fn from_env() -> Option<Watchdog> {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
        if pid.is_some_and(|p| p.trim() != std::process::id().to_string()) {
            return None;
        }
        let usec: u64 = usec?.trim().parse().ok().filter(|&u| u > 0)?;
        Some(Watchdog {
            interval: std::time::Duration::from_micros(usec / 2),
            next: std::time::Instant::now(),
        })
    }

    /// Whether a ping is due now; if so, the next one is due an interval later.
    pub fn due(&mut self, now: std::time::Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.next = now + self.interval;
        true
    }

    /// When the next ping is due.
    pub fn next(&self) -> std::time::Instant {
        self.next
    }
}
