//! What the pool tells the world: the one [`Summary`] (for forkpool's own
//! supervisor, upstream.rs), and the status file (`-S`), its text and its
//! replacement by rename.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::lifecycle::Recycle;
use unixtool::reexec::Upgrade;

use crate::generation::{Reload, Stop};
use crate::policy::Policy;
use crate::tool::TOOL;
use crate::two_phase::TwoPhase;
use crate::verify::Verify;
use crate::worker::{Worker, WorkerPhase};

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

/// How often the status file is rewritten when nothing changed: its
/// `heartbeat=` says the main loop still turns.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The status file (`-S`): rewritten when its text changes, and at least
/// every [`HEARTBEAT`] (the `heartbeat=` key, the wall clock of the write).
pub struct StatusFile {
    path: PathBuf,
    last: String,
    warned: bool,
    /// When it was last written.
    written: Option<Instant>,
    /// The in-place upgrade's keys.
    pub upgrade: UpgradeLines,
}

/// The in-place upgrade's part of the status file (upgrade.rs).
#[derive(Default)]
pub struct UpgradeLines {
    /// none | running | ok | failed
    pub phase: &'static str,
    /// Why the last upgrade failed, while it is `failed`.
    pub reason: String,
    pub count: u64,
    pub failures: u64,
    pub version: String,
}

impl UpgradeLines {
    pub fn of(u: &Upgrade) -> UpgradeLines {
        UpgradeLines {
            phase: u.name(),
            reason: u.reason.clone(),
            count: u.count,
            failures: u.failures,
            version: u.version.clone(),
        }
    }
}

impl StatusFile {
    pub fn new(path: PathBuf) -> StatusFile {
        StatusFile {
            path,
            last: String::new(),
            warned: false,
            written: None,
            upgrade: UpgradeLines::default(),
        }
    }

    /// When the next heartbeat is due.
    pub fn next_heartbeat(&self) -> Option<Instant> {
        self.written.map(|t| t + HEARTBEAT)
    }

    /// Replace the file (by rename) when the state changed or the
    /// heartbeat is due; one warning per run of failures.
    pub fn write(&mut self, p: &Policy) {
        let now = Instant::now();
        let text = text_with(p, &self.upgrade);
        if text == self.last && self.next_heartbeat().is_some_and(|t| now < t) {
            return;
        }
        let wall = crate::command::wall_now();
        let whole = format!("{text}heartbeat={wall:.3}\n");
        // A temporary of an unpredictable name, O_EXCL|O_NOFOLLOW, then rename:
        // a symlink planted beside the status file is never followed.
        match unixtool::statusfile::replace(&self.path, &whole) {
            Ok(()) => {
                self.last = text;
                self.warned = false;
                self.written = Some(now);
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
#[allow(dead_code)] // the policy tests compare states by it
pub fn text(p: &Policy) -> String {
    text_with(p, &UpgradeLines::default())
}

/// The status file's text, with the upgrade's keys.
pub fn text_with(p: &Policy, up: &UpgradeLines) -> String {
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
    // reason= is shared: a failed reload's own reason, else a failed upgrade's.
    let reason = if p.reason.is_empty() && up.phase == "failed" {
        &up.reason
    } else {
        &p.reason
    };
    // Outside text (a check's stderr, a release directory's name): quoted.
    let value = unixtool::statusfile::value;
    let _ = writeln!(s, "reason={}", value(reason));
    let _ = writeln!(s, "release={}", value(&sum.release));
    let _ = writeln!(s, "mode={}", p.settings.mode.name());
    let _ = writeln!(s, "held={}", p.held_count());
    p.reloads.lines(&mut s);
    if !up.phase.is_empty() {
        let _ = writeln!(s, "upgrade={}", up.phase);
        let _ = writeln!(s, "upgrades={}", up.count);
        let _ = writeln!(s, "upgrade_failures={}", up.failures);
        let _ = writeln!(s, "version={}", up.version);
    }
    // Lifecycle (issue 14): recycles by reason, the whole pool.
    let totals = &p.life.totals;
    let _ = writeln!(s, "recycles={}", totals.total());
    for r in Recycle::ALL {
        let _ = writeln!(s, "recycled_{}={}", r.name(), totals.get(r));
    }
    two_phase_lines(&mut s, &p.two_phase);
    verify_lines(&mut s, p);
    let now = std::time::Instant::now();
    let mut ws: Vec<&Worker> = p.workers.iter().collect();
    ws.sort_by_key(|w| (w.slot, w.generation));
    for w in ws {
        let st = match w.phase {
            WorkerPhase::Starting => "starting",
            WorkerPhase::Ready if w.parked => "parked",
            WorkerPhase::Ready if w.held => "held",
            WorkerPhase::Ready => "ready",
            WorkerPhase::Stopping => "stopping",
        };
        let _ = write!(s, "worker={} {} {} {st}", w.slot, w.generation, w.pid);
        // After the four fields: age (whole seconds), the slot's recycles and why.
        let slot = p.life.slot(w.slot);
        let _ = write!(
            s,
            " age={} recycles={} why={}",
            now.saturating_duration_since(w.started).as_secs(),
            slot.total(),
            slot.text()
        );
        if let (Some(r), WorkerPhase::Ready) = (w.life.recycle, w.phase) {
            let _ = write!(s, " recycling={}", r.name());
        }
        let _ = writeln!(s);
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

/// `--confirm-timeout`: the verified switch's keys (README.md, "Verified
/// switch"). The parked generation and the deadline (the wall clock, to the
/// millisecond) while pending, empty otherwise.
fn verify_lines(s: &mut String, p: &Policy) {
    if p.settings.confirm_timeout.is_none() {
        return;
    }
    let Verify {
        stage,
        generation,
        parked,
        deadline,
        parking,
    } = &p.verify;
    let pending = p.verify.pending();
    let parked = parked
        .as_ref()
        .filter(|_| pending)
        .map(|g| g.id.to_string())
        .unwrap_or_default();
    let deadline = deadline
        .filter(|_| pending)
        .map(|d| {
            let now = std::time::Instant::now();
            let ahead = d.saturating_duration_since(now).as_secs_f64();
            format!("{:.3}", crate::command::wall_now() + ahead)
        })
        .unwrap_or_default();
    let _ = writeln!(s, "verify={}", stage.name());
    let _ = writeln!(s, "verify_generation={generation}");
    let _ = writeln!(s, "parked_generation={parked}");
    let _ = writeln!(s, "verify_deadline={deadline}");
    let _ = writeln!(s, "parked={}", p.parked_count());
    let waiting = parking.as_ref().map_or(0, |w| w.waiting.len());
    let _ = writeln!(s, "parking={waiting}");
}
