//! The verified switch's state (`--confirm-timeout`, issue 26): at a
//! cutover's switch the old generation is *parked* (stopped, warm) instead
//! of retired, until `confirm`, `revert` or the deadline. Plain data at the
//! bottom of forkpool's layers; the rule's part is policy/verify.rs.

use std::time::Instant;

use crate::generation::Generation;

/// Where the verified switch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VerifyStage {
    /// No switch was verified yet (or the pool stopped while one was pending).
    None,
    /// The new generation serves, the old one is parked.
    Pending,
    /// The parked generation was retired.
    Confirmed,
    /// The parked generation serves again, the new one was retired.
    Reverted,
}

impl VerifyStage {
    pub fn name(self) -> &'static str {
        match self {
            VerifyStage::None => "none",
            VerifyStage::Pending => "pending",
            VerifyStage::Confirmed => "confirmed",
            VerifyStage::Reverted => "reverted",
        }
    }
}

/// The verified switch: plain data, part of the rule's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verify {
    pub stage: VerifyStage,
    /// The generation switched to (the one to confirm or revert).
    pub generation: u64,
    /// The generation that served before the switch, parked while pending.
    pub parked: Option<Generation>,
    /// While pending: when it reverts by itself.
    pub deadline: Option<Instant>,
}

impl Default for Verify {
    fn default() -> Verify {
        Verify {
            stage: VerifyStage::None,
            generation: 0,
            parked: None,
            deadline: None,
        }
    }
}

impl Verify {
    pub fn pending(&self) -> bool {
        self.stage == VerifyStage::Pending
    }
}
