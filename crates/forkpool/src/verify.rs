//! The verified switch's state (`--confirm-timeout`, issue 26): at a
//! cutover's switch the old generation is *parked* (stopped, warm) instead
//! of retired, until `confirm`, `revert` or the deadline. Plain data at the
//! bottom of forkpool's layers; the rule's part is policy/verify.rs.

use std::time::{Duration, Instant};

use crate::generation::Generation;
use crate::worker::WorkerId;

/// How long a parked worker has to stop accepting after the park signal
/// (TSTP) before it gets STOP; as long again after that, and the new
/// generation is released whatever the old one does.
pub const PARK_BOUND: Duration = Duration::from_secs(1);

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
    /// From the park signal until every parked worker is known not to
    /// accept: the new generation is released only then.
    pub parking: Option<Parking>,
}

/// The park under way: the old generation was sent TSTP at `since`; each
/// worker in `waiting` has neither said `parked` nor been seen stopped as a
/// whole group yet. Never handed over by an in-place upgrade: it lies
/// inside a cutover's reload (before the release), and USR2 waits until
/// the reload ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Parking {
    pub since: Instant,
    /// STOP was sent to the ones still waiting at `since` + [`PARK_BOUND`].
    pub forced: bool,
    pub waiting: Vec<WorkerId>,
}

impl Default for Verify {
    fn default() -> Verify {
        Verify {
            stage: VerifyStage::None,
            generation: 0,
            parked: None,
            deadline: None,
            parking: None,
        }
    }
}

impl Verify {
    pub fn pending(&self) -> bool {
        self.stage == VerifyStage::Pending
    }
}
