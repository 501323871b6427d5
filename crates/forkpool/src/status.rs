//! What the pool tells the world: the one [`Summary`] (for forkpool's own
//! supervisor, upstream.rs), and the status file (`-S`), its text and its
//! replacement by rename.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::policy::{Phase, Policy, Reload, Stop, TwoPhase, Worker};
use crate::TOOL;

/// What forkpool's own supervisor is told about (see upstream.rs).
pub struct Summary {
    pub newest: u64,
    /// The serving generation, 0 while none was ever wholly ready.
    pub serving: u64,
    pub ready: usize,
    /// The last reload failed (the serving generation stays).
    pub failed: bool,
    pub reason: String,
    pub release: String,
    pub stopping: bool,
}

impl Summary {
    pub fn of(p: &Policy) -> Summary {
        let serving = p.shown_serving();
        Summary {
            newest: p.newest,
            serving: serving.map(|g| g.id).unwrap_or(0),
            ready: p.ready_count(),
            failed: p.reload == Reload::Failed,
            reason: p.reason.clone(),
            release: serving
                .and_then(|g| g.release.as_ref())
                .map(|r| r.display().to_string())
                .unwrap_or_default(),
            stopping: p.stop != Stop::No,
        }
    }
}

/// The status file (`-S`): rewritten when its text changes.
pub struct StatusFile {
    path: PathBuf,
    last: String,
    warned: bool,
}

impl StatusFile {
    pub fn new(path: PathBuf) -> StatusFile {
        StatusFile {
            path,
            last: String::new(),
            warned: false,
        }
    }

    /// Replace the file (by rename) when the state changed; one warning per
    /// run of failures.
    pub fn write(&mut self, p: &Policy) {
        let text = text(p);
        if text == self.last {
            return;
        }
        // A temporary of an unpredictable name, O_EXCL|O_NOFOLLOW, then rename:
        // a symlink planted beside the status file is never followed.
        match unixtool::statusfile::replace(&self.path, &text) {
            Ok(()) => {
                self.last = text;
                self.warned = false;
            }
            Err(e) => {
                if !self.warned {
                    TOOL.warn(format_args!(
                        "unable to write {}: {}",
                        self.path.display(),
                        unixtool::io_reason(&e)
                    ));
                    self.warned = true;
                }
            }
        }
    }
}

/// The status file's text (README.md, "Status file").
pub fn text(p: &Policy) -> String {
    let mut s = String::new();
    let state = match p.stop {
        Stop::No => "running",
        _ if p.workers.is_empty() => "stopped",
        _ => "stopping",
    };
    let reload = match p.reload {
        Reload::None => "none",
        Reload::Running { .. } => "running",
        Reload::Ok => "ok",
        Reload::Failed => "failed",
    };
    let sum = Summary::of(p);
    let _ = writeln!(s, "pid={}", std::process::id());
    let _ = writeln!(s, "state={state}");
    let _ = writeln!(s, "generation={}", p.newest);
    let _ = writeln!(s, "serving_generation={}", sum.serving);
    let _ = writeln!(s, "workers={}", p.slots.len());
    let _ = writeln!(s, "ready={}", sum.ready);
    let _ = writeln!(s, "reload={reload}");
    let _ = writeln!(s, "reason={}", p.reason.replace('\n', " "));
    let _ = writeln!(s, "release={}", sum.release);
    let _ = writeln!(s, "mode={}", p.settings.mode.name());
    let _ = writeln!(s, "held={}", p.held_count());
    two_phase_lines(&mut s, &p.two_phase);
    let mut ws: Vec<&Worker> = p.workers.iter().collect();
    ws.sort_by_key(|w| (w.slot, w.generation));
    for w in ws {
        let st = match w.phase {
            Phase::Starting => "starting",
            Phase::Ready if w.held => "held",
            Phase::Ready => "ready",
            Phase::Stopping => "stopping",
        };
        let _ = writeln!(s, "worker={} {} {} {st}", w.slot, w.generation, w.pid);
    }
    s
}

/// `-C`: the two-phase keys (README.md, "Two-phase: prepare, commit, abort").
fn two_phase_lines(s: &mut String, t: &TwoPhase) {
    let Some(control) = &t.control else { return };
    let wall = |w: Option<f64>| w.map(|w| format!("{w:.6}")).unwrap_or_default();
    let _ = writeln!(s, "control={}", control.display());
    let _ = writeln!(s, "phase={}", t.stage.name());
    let _ = writeln!(s, "phase_generation={}", t.generation);
    let command = format!("{} {}", t.commands, t.last);
    let _ = writeln!(s, "command={}", command.trim_end());
    let _ = writeln!(s, "commit_at={}", wall(t.commit_wall));
    let _ = writeln!(s, "released_at={}", wall(t.released_wall));
}
