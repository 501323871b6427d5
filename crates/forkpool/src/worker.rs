//! A worker and its slot as the rule sees them: plain data at the bottom of
//! forkpool's layers (the rule, policy/, changes them; the hand-over,
//! state.rs, and the status file, status.rs, read them).

use std::time::Instant;

use unixtool::backoff::Backoff;
use unixtool::supervise::KillDeadline;

use crate::lifecycle::{Recycle, WorkerLife};
use crate::settings::Settings;

/// A worker's name in the policy (a pid is known only after the fork).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u64);

/// Why a worker was retired.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// Outgoing and ready: a worker of the target generation stands in for it.
    Replaced,
    /// Outgoing and not serving (not ready, or held in a generation that
    /// will not serve).
    NotNeeded,
    /// It died or missed its readiness deadline.
    Failed,
    /// The pool stops (TERM, INT, QUIT).
    Stopping,
    /// Recycled (age, memory, its own word) once its replacement was ready.
    Recycled(Recycle),
    /// It missed its watchdog ping.
    Watchdog,
}

impl Why {
    pub fn name(self) -> &'static str {
        match self {
            Why::Replaced => "replaced",
            Why::NotNeeded => "not needed",
            Why::Failed => "failed",
            Why::Stopping => "stopping",
            Why::Recycled(Recycle::Age) => "recycled: age",
            Why::Recycled(Recycle::Memory) => "recycled: memory",
            Why::Recycled(Recycle::Asked) => "recycled: it asked",
            Why::Recycled(Recycle::Watchdog) | Why::Watchdog => "watchdog",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerPhase {
    Starting,
    Ready,
    Stopping,
}

/// One worker, as the policy sees it.
#[derive(Clone, Debug)]
pub struct Worker {
    pub id: WorkerId,
    /// Known once started (0 before).
    pub pid: i32,
    pub slot: usize,
    pub generation: u64,
    pub phase: WorkerPhase,
    pub started: Instant,
    /// When a stopping worker gets KILL.
    pub kill_at: KillDeadline,
    /// Cutover: ready, but stopped (SIGSTOP) and not released yet.
    pub held: bool,
    /// `--confirm-timeout`: an old worker stopped (SIGSTOP) at the switch,
    /// warm, until confirm or revert. A parked worker is `held` too (it
    /// gets SIGCONT with any signal), but it is never released as new.
    pub parked: bool,
    /// Why it was retired (None while it is not).
    pub retired: Option<Why>,
    /// Recycling and watchdog state (lifecycle.rs).
    pub life: WorkerLife,
}

impl Worker {
    pub fn live(&self) -> bool {
        self.phase != WorkerPhase::Stopping
    }

    pub fn name(&self) -> String {
        format!(
            "worker {} (pid {}, generation {})",
            self.slot, self.pid, self.generation
        )
    }
}

/// A slot's restart schedule.
#[derive(Clone, Debug)]
pub struct Slot {
    pub backoff: Backoff,
    /// The next start of a target worker in this slot is not before this.
    pub not_before: Option<Instant>,
}

impl Slot {
    pub fn new(settings: &Settings) -> Slot {
        Slot {
            backoff: Backoff::new(settings.backoff_max),
            not_before: None,
        }
    }
}
