//! The two-phase deploy's state (`-C`): where it stands, its deadlines, the
//! last command. Plain data at the bottom of forkpool's layers; the rule's
//! steps for it are policy/prepare.rs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::generation::Reload;

/// Where the two-phase deploy stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    None,
    Preparing,
    Prepared,
    Committing,
    Committed,
    Aborted,
    Failed,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::None => "none",
            Stage::Preparing => "preparing",
            Stage::Prepared => "prepared",
            Stage::Committing => "committing",
            Stage::Committed => "committed",
            Stage::Aborted => "aborted",
            Stage::Failed => "failed",
        }
    }
}

/// The two-phase state: plain data, part of [`Policy`].
#[derive(Clone, Debug)]
pub struct TwoPhase {
    /// `-C`: the control FIFO (shown in the status file); None: no two-phase.
    pub control: Option<PathBuf>,
    /// `--prepare-timeout`: a prepare not committed or aborted by then aborts.
    pub timeout: Duration,
    pub stage: Stage,
    /// The generation the prepare started.
    pub generation: u64,
    /// When the open prepare aborts by itself.
    pub expires: Option<Instant>,
    /// When a commit opens the gate.
    pub commit_at: Option<Instant>,
    /// The commit's instant on the wall clock (seconds since the epoch).
    pub commit_wall: Option<f64>,
    /// When the committed generation was released, on the wall clock.
    pub released_wall: Option<f64>,
    /// The wall clock at the last command: `(now, wall)`.
    pub wall_ref: Option<(Instant, f64)>,
    /// Commands read so far (lines that were not blank).
    pub commands: u64,
    /// The last one: `WORD accepted` or `WORD refused`.
    pub last: String,
    /// The reload state before the prepare (an abandoned prepare is not a
    /// failed reload: it is put back).
    pub reload_before: Reload,
}

impl Default for TwoPhase {
    fn default() -> TwoPhase {
        TwoPhase {
            control: None,
            timeout: Duration::from_secs(60),
            stage: Stage::None,
            generation: 0,
            expires: None,
            commit_at: None,
            commit_wall: None,
            released_wall: None,
            wall_ref: None,
            commands: 0,
            last: String::new(),
            reload_before: Reload::None,
        }
    }
}

impl TwoPhase {
    /// A prepare is open: its generation is the target and must not switch
    /// on its own (preparing, prepared, or committing before the switch).
    pub fn open(&self) -> bool {
        matches!(
            self.stage,
            Stage::Preparing | Stage::Prepared | Stage::Committing
        )
    }
}
