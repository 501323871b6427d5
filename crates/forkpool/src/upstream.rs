//! forkpool's own supervisor, told about the whole pool the systemd way: when
//! forkpool was started with `NOTIFY_SOCKET` (systemd's Type=notify or
//! Type=notify-reload), it sends `READY=1` once every worker of the first
//! generation is ready, `RELOADING=1` (with `MONOTONIC_USEC`) at each HUP,
//! `READY=1` again when the reload is over (done, or failed with the old
//! generation still serving), and `STOPPING=1` at TERM, INT or QUIT.
//!
//! The sender (and taking the variable out of forkpool's environment, so
//! workers never talk to forkpool's supervisor themselves; with `--notify`
//! they get forkpool's own socket instead) is `unixtool::upstream`.

use std::time::Instant;

use unixtool::upstream::{monotonic_usec, Upstream as Sender, Watchdog};

use crate::status::Summary;
use crate::tool::TOOL;

pub struct Upstream {
    sender: Sender,
    /// The newest generation already announced (RELOADING=1 sent for it).
    newest: u64,
    /// Whether the pool is between a RELOADING=1 (or the start) and its READY=1.
    pending: bool,
    stopping: bool,
    /// `WATCHDOG_USEC`: `WATCHDOG=1` from the loop (issue 14).
    watchdog: Option<Watchdog>,
}

impl Upstream {
    /// From `NOTIFY_SOCKET`, taken out of the environment (None: not set or unusable).
    pub fn from_env() -> Option<Upstream> {
        let watchdog = Watchdog::from_env();
        Some(Upstream {
            watchdog,
            sender: Sender::from_env(&TOOL)?,
            newest: 1,
            pending: true,
            stopping: false,
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

    /// An in-place upgrade begins: RELOADING=1 (READY=1 follows from the
    /// new image, or from this one if the upgrade is refused).
    pub fn reloading(&mut self, status: &str) {
        self.pending = true;
        self.send(format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS={status}\n",
            monotonic_usec()
        ));
    }

    /// The new image of an in-place upgrade: RELOADING=1 was sent by the old
    /// one for the pool as it is (generation `newest`); READY=1 is due.
    pub fn adopted(&mut self, newest: u64) {
        self.newest = newest;
        self.pending = true;
    }

    /// `NOTIFY_SOCKET` as forkpool got it, for the next image.
    pub fn env_value(&self) -> &std::ffi::OsStr {
        self.sender.env_value()
    }

    /// The supervisor's watchdog: `WATCHDOG=1` when due (the loop runs).
    pub fn ping(&mut self, now: Instant) {
        if self.watchdog.as_mut().is_some_and(|w| w.due(now)) {
            self.send("WATCHDOG=1\n".to_string());
        }
    }

    /// When the next watchdog ping is due.
    pub fn next_ping(&self) -> Option<Instant> {
        self.watchdog.as_ref().map(Watchdog::next)
    }

    fn send(&mut self, msg: String) {
        self.sender.send(&TOOL, &msg);
    }
}
