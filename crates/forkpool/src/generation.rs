//! Generations and the pool-wide state of the rule: a generation (its
//! number, its release), a reload's progress, a stop. Plain data at the
//! bottom of forkpool's layers.

use std::path::PathBuf;
use std::time::Instant;

/// One generation: its number and the release directory it is pinned to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    pub id: u64,
    pub release: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reload {
    None,
    Running { since: Instant },
    Ok,
    Failed,
}

/// Whether the pool is stopping, and how.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    No,
    Graceful,
    Fast,
}
