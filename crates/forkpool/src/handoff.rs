//! `--handoff`: kept connections from retiring workers to the accepting
//! generation (an I/O leaf; the wire is unixtool::handoff, the protocol on
//! the page). Each worker has a socket pair of its own: forkpool's end is in
//! its process (workers.rs), the worker's end is `FORKPOOL_HANDOFF_FD`. What
//! a worker sends on it is taken in and waits here until a worker of the
//! accepting generation is there to take it (round robin over those the hub
//! names), at most [`BOUND`]; then it is closed, as a stop closes it without
//! the hand-over.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use unixtool::handoff::{self, Received};

use crate::worker::WorkerId;

/// How long a connection waits for a worker of the accepting generation.
pub const BOUND: Duration = Duration::from_millis(1000);

/// The connections taken in and not yet passed on.
#[derive(Default)]
pub struct Handoff {
    waiting: VecDeque<(OwnedFd, Instant)>,
    /// Round robin over the takers.
    turn: usize,
    /// Counted for `-v`: passed on, closed after the bound.
    pub passed: u64,
    pub expired: u64,
}

impl Handoff {
    /// Take in every connection waiting on `end` (forkpool's end of one
    /// worker's pair). False: the worker closed its end (forget it).
    pub fn take_in(&mut self, end: BorrowedFd, now: Instant) -> bool {
        loop {
            match handoff::recv(end) {
                Received::Conn(fd) => self.waiting.push_back((fd, now)),
                Received::Nothing => {}
                Received::Empty => return true,
                Received::Closed => return false,
            }
        }
    }

    /// Pass what waits on to `takers` (their ids and forkpool's ends), round
    /// robin; a taker whose end fails or is full is skipped. Then close what
    /// waited longer than [`BOUND`].
    pub fn pass_on(&mut self, takers: &[(WorkerId, BorrowedFd)], now: Instant) {
        let mut full = vec![false; takers.len()];
        'conns: while let Some((conn, since)) = self.waiting.pop_front() {
            for _ in 0..takers.len() {
                let i = self.turn % takers.len();
                self.turn = self.turn.wrapping_add(1);
                if full[i] {
                    continue;
                }
                match handoff::send(takers[i].1, conn.as_fd()) {
                    Ok(()) => {
                        self.passed += 1;
                        continue 'conns;
                    }
                    // Full (EAGAIN) or gone: the next taker.
                    Err(_) => full[i] = true,
                }
            }
            self.waiting.push_front((conn, since));
            break;
        }
        while self.waiting.front().is_some_and(|(_, t)| now >= *t + BOUND) {
            self.waiting.pop_front();
            self.expired += 1;
        }
    }

    /// When the oldest waiting connection is due to be closed.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.front().map(|(_, t)| *t + BOUND)
    }
}
