//! The pool's settings, from the options: how a reload replaces the old
//! generation, the stop signal, the drain and readiness deadlines, the
//! lifecycle's limits. Plain data at the bottom of forkpool's layers.

use std::time::Duration;

use nix::sys::signal::Signal;
use unixtool::readiness;

use crate::lifecycle::Lifecycle;

/// How the old generation makes way for the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Retire one old worker for each new one that becomes ready.
    Rolling,
    /// Retire every old worker once the whole new generation is ready.
    AllAtOnce,
    /// Hold the new generation, ready, until the whole of it is ready and
    /// every old worker is gone; then release it at once.
    Cutover,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Rolling => "rolling",
            Mode::AllAtOnce => "all-at-once",
            Mode::Cutover => "cutover",
        }
    }
}

/// The policy's settings (from the options).
#[derive(Clone, Debug)]
pub struct Settings {
    pub mode: Mode,
    pub stop_signal: Signal,
    /// `-k`: a stopping worker gets KILL this long after its stop signal.
    pub drain: Duration,
    /// `-a` (ready after staying alive this long) and `-t` (the readiness
    /// deadline); `-d`/`--notify` are the pool's business.
    pub ready: readiness::Options,
    /// `-b`: the longest back-off.
    pub backoff_max: Duration,
    /// Recycling, watchdog, surge (lifecycle.rs).
    pub life: Lifecycle,
    /// `--confirm-timeout`: a cutover's switch parks the old generation
    /// until `confirm` or `revert`, and reverts by itself after this long
    /// (verify.rs, policy/verify.rs). None: the old generation is retired.
    pub confirm_timeout: Option<Duration>,
}
