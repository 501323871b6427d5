//! loop-forever's status file (`-S FILE`): the keys of forkpool's where they
//! apply, so that poolctl and deploy-release read both supervisors alike.
//! main.rs tells it what happened (a start, readiness, a signal, an end); it
//! rewrites the file (unixtool::statusfile::replace) only when its text changed.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use unixtool::child::{secs, Ended};

/// The child of one generation.
struct Child {
    generation: u64,
    pid: Pid,
    /// starting | ready | stopping
    state: &'static str,
}

pub struct StatusFile {
    path: Option<PathBuf>,
    /// prog's name, for the reason of a failed reload.
    name: String,
    /// Readiness is tracked (-d, --notify, -a); otherwise a child is ready when started.
    tracked: bool,
    state: &'static str,
    generation: u64,
    serving_generation: u64,
    reload: &'static str,
    reason: String,
    release: String,
    child: Option<Child>,
    last: String,
    warned: bool,
}

impl StatusFile {
    pub fn new(path: Option<PathBuf>, name: &str, tracked: bool) -> StatusFile {
        StatusFile {
            path,
            name: name.to_string(),
            tracked,
            state: "running",
            generation: 1,
            serving_generation: 0,
            reload: "none",
            reason: String::new(),
            release: String::new(),
            child: None,
            last: String::new(),
            warned: false,
        }
    }

    /// A child was started (it runs the code of the newest generation).
    pub fn started(&mut self, pid: Pid) {
        self.child = Some(Child {
            generation: self.generation,
            pid,
            state: "starting",
        });
        if !self.tracked {
            self.ready(pid);
        }
    }

    /// The child said it is ready: its generation serves.
    pub fn ready(&mut self, pid: Pid) {
        let Some(c) = self.child.as_mut().filter(|c| c.pid == pid) else {
            return;
        };
        c.state = "ready";
        self.serving_generation = c.generation;
        self.release = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if c.generation == self.generation && self.reload == "running" {
            self.reload = "ok";
            self.reason.clear();
        }
    }

    /// A signal loop-forever got: HUP starts a new generation, TERM and INT stop.
    pub fn signal(&mut self, sig: Signal) {
        match sig {
            Signal::SIGHUP if self.state == "running" => {
                self.generation += 1;
                self.reload = "running";
                self.reason.clear();
                if let Some(c) = self.child.as_mut() {
                    c.state = "stopping";
                }
            }
            Signal::SIGTERM | Signal::SIGINT => {
                self.state = if self.child.is_some() {
                    "stopping"
                } else {
                    "stopped"
                };
                if let Some(c) = self.child.as_mut() {
                    c.state = "stopping";
                }
                self.write();
            }
            _ => {}
        }
    }

    /// The child ended. One of the newest generation that was never ready
    /// while a reload runs makes the reload fail.
    pub fn ended(&mut self, pid: Pid, ended: Ended, ran: Duration) {
        let Some(c) = self.child.take().filter(|c| c.pid == pid) else {
            return;
        };
        if c.generation == self.generation && c.state == "starting" && self.reload == "running" {
            self.reload = "failed";
            self.reason = format!(
                "{} (pid {pid}, generation {}) {ended} after {} before it was ready",
                self.name,
                c.generation,
                secs(ran)
            );
        }
        if self.state == "stopping" {
            self.state = "stopped";
            self.write();
        }
    }

    fn text(&self) -> String {
        let mut s = String::new();
        let ready = self.child.as_ref().is_some_and(|c| c.state == "ready");
        let _ = writeln!(s, "pid={}", std::process::id());
        let _ = writeln!(s, "state={}", self.state);
        let _ = writeln!(s, "generation={}", self.generation);
        let _ = writeln!(s, "serving_generation={}", self.serving_generation);
        let _ = writeln!(s, "workers=1");
        let _ = writeln!(s, "ready={}", u8::from(ready));
        let _ = writeln!(s, "reload={}", self.reload);
        let _ = writeln!(s, "reason={}", self.reason.replace('\n', " "));
        let _ = writeln!(s, "release={}", self.release);
        let _ = writeln!(s, "mode=loop");
        if let Some(c) = &self.child {
            let _ = writeln!(s, "worker=0 {} {} {}", c.generation, c.pid, c.state);
        }
        s
    }

    /// Replace the file if its text changed; one warning per run of failures.
    pub fn write(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        let text = self.text();
        if text == self.last {
            return;
        }
        match unixtool::statusfile::replace(&path, &text) {
            Ok(()) => {
                self.last = text;
                self.warned = false;
            }
            Err(e) if !self.warned => {
                self.warned = true;
                unixtool::message_line(
                    "loop-forever",
                    format_args!(
                        "warning: unable to write status file {}: {}",
                        path.display(),
                        unixtool::io_reason(&e)
                    ),
                );
            }
            Err(_) => {}
        }
    }
}
