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
    /// The in-place upgrade's keys: upgrade, its reason, upgrades,
    /// upgrade_failures, version (set by upgrade.rs before each write).
    pub upgrade: (&'static str, String, u64, u64, String),
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
            upgrade: ("none", String::new(), 0, 0, String::new()),
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

    /// Whether a reload runs (an upgrade waits for its end).
    pub fn reloading(&self) -> bool {
        self.reload == "running"
    }

    /// The fields an in-place upgrade hands over (upgrade.rs).
    pub fn save(&self) -> Vec<(&'static str, String)> {
        let (cg, cstate) = match &self.child {
            Some(c) => (c.generation.to_string(), c.state.to_string()),
            None => ("-".to_string(), "-".to_string()),
        };
        vec![
            ("state", self.state.to_string()),
            ("generation", self.generation.to_string()),
            ("serving_generation", self.serving_generation.to_string()),
            ("reload", self.reload.to_string()),
            ("reason", self.reason.clone()),
            ("release", self.release.clone()),
            ("child_generation", cg),
            ("child_state", cstate),
        ]
    }

    /// Put back what [`StatusFile::save`] wrote; `pid`: the child's.
    pub fn restore(
        &mut self,
        r: &mut unixtool::reexec::Record,
        pid: Option<Pid>,
    ) -> Result<(), String> {
        fn known(v: &str, names: &[&'static str]) -> Result<&'static str, String> {
            names
                .iter()
                .copied()
                .find(|n| *n == v)
                .ok_or_else(|| format!("status: {v:?} is not known"))
        }
        self.state = known(&r.take("state")?, &["running", "stopping", "stopped"])?;
        self.generation = r.num("generation")?;
        self.serving_generation = r.num("serving_generation")?;
        self.reload = known(&r.take("reload")?, &["none", "running", "ok", "failed"])?;
        self.reason = r.take("reason")?;
        self.release = r.take("release")?;
        let cg: Option<u64> = r.opt_num("child_generation")?;
        let cstate = r.take("child_state")?;
        self.child = match (cg, pid) {
            (Some(generation), Some(pid)) => Some(Child {
                generation,
                pid,
                state: known(&cstate, &["starting", "ready", "stopping"])?,
            }),
            _ => None,
        };
        Ok(())
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
        // reason= is shared: a failed reload's, else a failed upgrade's.
        let reason = if self.reason.is_empty() && self.upgrade.0 == "failed" {
            &self.upgrade.1
        } else {
            &self.reason
        };
        // Outside text (a check's stderr, the child's directory): quoted.
        let value = unixtool::statusfile::value;
        let _ = writeln!(s, "reason={}", value(reason));
        let _ = writeln!(s, "release={}", value(&self.release));
        let _ = writeln!(s, "mode=loop");
        let _ = writeln!(s, "upgrade={}", self.upgrade.0);
        let _ = writeln!(s, "upgrades={}", self.upgrade.2);
        let _ = writeln!(s, "upgrade_failures={}", self.upgrade.3);
        let _ = writeln!(s, "version={}", self.upgrade.4);
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
