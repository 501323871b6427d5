//! forkpool's own supervisor, told about the whole pool the systemd way: when
//! forkpool was started with `NOTIFY_SOCKET` (systemd's Type=notify or
//! Type=notify-reload), it sends `READY=1` once every worker of the first
//! generation is ready, `RELOADING=1` (with `MONOTONIC_USEC`) at each HUP,
//! `READY=1` again when the reload is over (done, or failed with the old
//! generation still serving), and `STOPPING=1` at TERM, INT or QUIT.
//!
//! The variable is taken out of forkpool's environment at start, so workers
//! never talk to forkpool's supervisor themselves (with `--notify` they get
//! forkpool's own socket instead).

use std::os::unix::net::{SocketAddr, UnixDatagram};

use crate::status::Summary;

pub struct Upstream {
    sock: UnixDatagram,
    addr: SocketAddr,
    /// NOTIFY_SOCKET's value, for messages.
    name: String,
    /// The newest generation already announced (RELOADING=1 sent for it).
    newest: u64,
    /// Whether the pool is between a RELOADING=1 (or the start) and its READY=1.
    pending: bool,
    stopping: bool,
    warned: bool,
}

impl Upstream {
    /// Take `NOTIFY_SOCKET` out of the environment; a sender for it if it was
    /// set to something usable (a path, or `@name` in the abstract namespace).
    pub fn from_env() -> Option<Upstream> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        std::env::remove_var("NOTIFY_SOCKET");
        let Some(addr) = unixtool::readiness::notify_address(&value) else {
            crate::TOOL.warn(format_args!(
                "NOTIFY_SOCKET={:?} is not a socket address: not notifying",
                value.to_string_lossy()
            ));
            return None;
        };
        let sock = match UnixDatagram::unbound() {
            Ok(s) => s,
            Err(e) => {
                crate::TOOL.warn(format_args!(
                    "unable to create a socket for NOTIFY_SOCKET: {}: not notifying",
                    unixtool::io_reason(&e)
                ));
                return None;
            }
        };
        Some(Upstream {
            sock,
            addr,
            name: value.to_string_lossy().into_owned(),
            newest: 1,
            pending: true,
            stopping: false,
            warned: false,
        })
    }

    /// Compare the pool's state with what was already said; say what changed.
    pub fn update(&mut self, s: &Summary) {
        if s.stopping {
            if !self.stopping {
                self.stopping = true;
                self.send("STOPPING=1\nSTATUS=stopping every worker\n".to_string());
            }
            return;
        }
        if s.newest > self.newest {
            self.newest = s.newest;
            self.pending = true;
            self.send(format!(
                "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading: generation {} starting\n",
                monotonic_usec(),
                s.newest
            ));
        }
        if !self.pending || s.serving == 0 {
            return;
        }
        let status = if s.serving == s.newest {
            format!(
                "generation {} serving: {} workers ready{}",
                s.serving,
                s.ready,
                if s.release.is_empty() {
                    String::new()
                } else {
                    format!(" in {}", s.release)
                }
            )
        } else if s.failed {
            format!(
                "reload to generation {} failed: {}; generation {} serving",
                s.newest, s.reason, s.serving
            )
        } else {
            return;
        };
        self.pending = false;
        self.send(format!(
            "READY=1\nMAINPID={}\nSTATUS={}\n",
            std::process::id(),
            status.replace('\n', " ")
        ));
    }

    fn send(&mut self, msg: String) {
        if let Err(e) = self.sock.send_to_addr(msg.as_bytes(), &self.addr) {
            if !self.warned {
                self.warned = true;
                crate::TOOL.warn(format_args!(
                    "unable to notify {}: {}",
                    self.name,
                    unixtool::io_reason(&e)
                ));
            }
        }
    }
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a live, writable timespec; CLOCK_MONOTONIC cannot
    // fail with a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}
