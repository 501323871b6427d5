//! What the app tells its supervisor over its life: ready, stopping, recycle me,
//! and watchdog pings; on the readiness pipe (`--ready-fd N`, s6 style: one line
//! each) and on `$NOTIFY_SOCKET` (systemd style: one datagram each).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use crate::TOOL;

pub struct Lifecycle {
    pipe: Option<OwnedFd>,
    socket: Option<(UnixDatagram, SocketAddr, String)>,
    /// WATCHDOG_USEC / 2, when the watchdog is on for this process.
    pub watchdog_every: Option<Duration>,
    next_ping: Option<Instant>,
    recycle_asked: bool,
}

impl Lifecycle {
    /// The channels from `--ready-fd` and the environment (NOTIFY_SOCKET,
    /// WATCHDOG_USEC, WATCHDOG_PID).
    pub fn new(pipe: Option<OwnedFd>) -> Lifecycle {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let shown = path.to_string_lossy().into_owned();
            let addr = unixtool::readiness::notify_address(&path);
            match (UnixDatagram::unbound(), addr) {
                (Ok(s), Some(a)) => Some((s, a, shown)),
                (Err(e), _) => {
                    TOOL.warn(format_args!(
                        "unable to notify {shown}: {}",
                        unixtool::io_reason(&e)
                    ));
                    None
                }
                (_, None) => {
                    TOOL.warn(format_args!("unable to notify {shown}: Invalid argument"));
                    None
                }
            }
        });
        Lifecycle {
            pipe,
            socket,
            watchdog_every: watchdog_interval(),
            next_ping: None,
            recycle_asked: false,
        }
    }

    /// Ready: a newline on the pipe, `READY=1`; the watchdog starts.
    pub fn ready(&mut self) {
        if let Some(fd) = &self.pipe {
            if let Err(e) = nix::unistd::write(fd, b"\n") {
                TOOL.warn(format_args!(
                    "unable to write to the readiness descriptor: {}",
                    unixtool::strerror(e)
                ));
            }
            // A later line must never block the app: drop it if the pipe is full.
            let _ = crate::sys::set_nonblocking(fd.as_fd());
        }
        if let Some((sock, addr, shown)) = &self.socket {
            if let Err(e) = sock.send_to_addr(b"READY=1", addr) {
                TOOL.warn(format_args!(
                    "unable to notify {shown}: {}",
                    unixtool::io_reason(&e)
                ));
            }
        }
        self.next_ping = self.watchdog_every.map(|d| Instant::now() + d);
    }

    /// Stopped accepting (HUP, TERM, INT).
    pub fn stopping(&mut self) {
        self.tell(b"stopping\n", b"STOPPING=1");
    }

    /// Parked (TSTP): nothing accepted, nothing in hand.
    pub fn parked(&mut self) {
        self.tell(b"parked\n", b"PARKED=1");
    }

    /// `--retire-after` reached: ask once to be replaced.
    pub fn recycle(&mut self) {
        if !self.recycle_asked {
            self.recycle_asked = true;
            self.tell(b"recycle\n", b"RECYCLE=1");
        }
    }

    /// When the next watchdog ping is due, if the watchdog is on.
    pub fn next_ping(&self) -> Option<Instant> {
        self.next_ping
    }

    /// Ping if due.
    pub fn tick(&mut self, now: Instant) {
        if let (Some(due), Some(every)) = (self.next_ping, self.watchdog_every) {
            if now >= due {
                self.tell(b"\n", b"WATCHDOG=1");
                self.next_ping = Some(now + every);
            }
        }
    }

    /// One line on the pipe, one datagram on the socket; a supervisor that stopped
    /// listening (closed its end) is not an error.
    fn tell(&mut self, line: &[u8], datagram: &[u8]) {
        if let Some(fd) = &self.pipe {
            let _ = nix::unistd::write(fd, line);
        }
        if let Some((sock, addr, _)) = &self.socket {
            let _ = sock.send_to_addr(datagram, addr);
        }
    }
}

/// sd_watchdog_enabled: WATCHDOG_USEC set (a positive number) and WATCHDOG_PID
/// unset or this process; a ping every half of it.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}
