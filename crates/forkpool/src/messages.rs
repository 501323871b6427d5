//! What a worker says after READY, on its `-d` pipe or in a `NOTIFY_SOCKET`
//! datagram: a ping, a recycle request, "I stopped accepting". A pure parser
//! at the bottom of forkpool's layers; the rule decides what each does
//! (policy/lifecycle.rs).

/// What a worker says after READY.
pub enum Said {
    /// A watchdog ping: an empty line, `WATCHDOG=1`.
    Ping,
    /// Recycle me: `recycle`, `RECYCLE=1`.
    Recycle,
    /// I stopped accepting: `stopping`, `STOPPING=1`.
    Stopping,
    /// Parked (after TSTP): I accept nothing and hold no request: `parked`,
    /// `PARKED=1`.
    Parked,
}

impl Said {
    /// A line on the `-d` pipe (other lines are ignored).
    pub fn line(l: &str) -> Option<Said> {
        match l.trim_end_matches('\r') {
            "" => Some(Said::Ping),
            "recycle" => Some(Said::Recycle),
            "stopping" => Some(Said::Stopping),
            "parked" => Some(Said::Parked),
            _ => None,
        }
    }

    /// A line of a `NOTIFY_SOCKET` datagram.
    pub fn datagram(l: &str) -> Option<Said> {
        match l {
            "WATCHDOG=1" => Some(Said::Ping),
            "RECYCLE=1" => Some(Said::Recycle),
            "STOPPING=1" => Some(Said::Stopping),
            "PARKED=1" => Some(Said::Parked),
            _ => None,
        }
    }
}
