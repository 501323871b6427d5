//! `--handoff`: kept connections from retiring workers to the accepting
//! generation (an I/O leaf; the wire is unixtool::handoff, the protocol on
//! the page). Each worker has a socket pair of its own: forkpool's end is in
//! its process (workers.rs), the worker's end is `FORKPOOL_HANDOFF_FD`. What
//! a worker sends on it is taken in and waits here until a worker of the
//! accepting generation is there to take it (the worker in the slot of the
//! one that handed it over, so that a deploy keeps the spread of the
//! connections over the workers that the kernel's accepts made; round robin
//! over those the hub names when that slot has none), at most [`BOUND`] from the moment one is there (while none is, in
//! a cutover until the release, it waits: the switch itself is bounded by
//! the drain deadline); then it is closed, as a stop closes it without the
//! hand-over. While the pool stops, no worker will take it: closed
//! [`BOUND`] after it came. forkpool takes in no more than it has
//! descriptors for ([`room`], [`RESERVE`] kept for its own work): the rest
//! waits on the workers' ends, in the kernel, until what it holds has gone
//! on (an end whose worker was reaped meanwhile is kept until it is read to
//! its end); taken in without one, the kernel would close it.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use unixtool::handoff::{self, Received};

/// How long a connection waits for a worker of the accepting generation.
pub const BOUND: Duration = Duration::from_millis(1000);

/// Descriptors kept free for forkpool's own work (a worker's start takes
/// six, the status file one).
const RESERVE: u64 = 32;

/// How many descriptors forkpool may take in now: its soft limit less
/// [`RESERVE`] less those open. Counted in /proc/self/fd unless the lowest
/// free number (`any` dup'd finds it) leaves more than 65,536 (a raised
/// limit): the lowest free number alone misses what is open above a hole
/// (with 64, it let 17 more in than there was room for). None: no limit
/// could be read (take what comes).
fn room(any: BorrowedFd) -> Option<usize> {
    use nix::fcntl::{fcntl, FcntlArg};
    let soft = unixtool::nofile_soft()?;
    let lowest = match fcntl(any.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(0)) {
        Ok(n) => {
            let _ = nix::unistd::close(n);
            n as u64
        }
        // None free at all (EMFILE): no room.
        Err(_) => return Some(0),
    };
    let left = soft.saturating_sub(RESERVE);
    let open = if left.saturating_sub(lowest) > 65_536 {
        lowest
    } else {
        // (less the directory's own descriptor)
        match std::fs::read_dir("/proc/self/fd") {
            Ok(d) => (d.count() as u64).saturating_sub(1),
            Err(_) => return Some(0),
        }
    };
    Some(left.saturating_sub(open) as usize)
}

/// The connections taken in and not yet passed on.
#[derive(Default)]
pub struct Handoff {
    /// Each with when it came and the slot of the worker that handed it over.
    waiting: VecDeque<(OwnedFd, Instant, usize)>,
    /// Round robin over the takers (a connection whose slot has none).
    turn: usize,
    /// Counted for `-v`: passed on, closed after the bound.
    pub passed: u64,
    pub expired: u64,
    /// Closed by the kernel on their way in: forkpool had no descriptor
    /// left for them (a warning says so).
    pub lost: u64,
    /// How many of `lost` a warning has told.
    pub lost_told: u64,
    /// How many more may be taken in now (None: no bound).
    room: Option<usize>,
    /// Whether [`room`] is to be looked up at the first connection of a
    /// round (`room` None until then): a round with nothing to take in,
    /// most of them, costs no look.
    look_up_room: bool,
    /// Set when a take_in stopped for want of room (more may wait).
    pub held_back: bool,
    /// Ends of reaped workers with connections still on them.
    orphans: Vec<(OwnedFd, usize)>,
}

impl Handoff {
    /// Take in every connection waiting on `end` (forkpool's end of one
    /// worker's pair; `slot`: that worker's). False: the worker closed its
    /// end (forget it).
    /// Taken in no further than [`Handoff::room`] allows (but one when
    /// nothing waits here, so that a pass goes on): then `held_back`, and
    /// true (the rest waits on the end).
    pub fn take_in(&mut self, end: BorrowedFd, slot: usize, now: Instant) -> bool {
        loop {
            if self.room == Some(0) && !self.waiting.is_empty() {
                self.held_back = true;
                return true;
            }
            match handoff::recv(end) {
                Received::Conn(fd) => {
                    if std::mem::take(&mut self.look_up_room) {
                        // (this one in already: room for it is not counted)
                        self.room = room(fd.as_fd()).map(|r| r + 1);
                    }
                    self.room = self.room.map(|r| r.saturating_sub(1));
                    self.waiting.push_back((fd, now, slot));
                }
                Received::Nothing => {}
                Received::Lost => self.lost += 1,
                Received::Empty => return true,
                Received::Closed => return false,
            }
        }
    }

    /// A round of taking in begins: its room is looked up at its first
    /// connection, nothing held back yet.
    pub fn begin_round(&mut self) {
        (self.room, self.look_up_room, self.held_back) = (None, true, false);
    }

    /// The end of a reaped worker (`slot` its): what is on it taken in;
    /// kept if some of it was held back, closed once read to its end.
    pub fn take_in_last(&mut self, end: OwnedFd, slot: usize, now: Instant) {
        if self.take_in(end.as_fd(), slot, now) {
            self.orphans.push((end, slot));
        }
    }

    /// Take in from the ends of reaped workers; each dropped once read to
    /// its end (or, being no longer held back, found empty).
    pub fn take_in_orphans(&mut self, now: Instant) {
        let mut orphans = std::mem::take(&mut self.orphans);
        orphans.retain(|(end, slot)| {
            let was = self.held_back;
            self.held_back = false;
            let open = self.take_in(end.as_fd(), *slot, now);
            let keep = open && self.held_back;
            self.held_back |= was;
            keep
        });
        self.orphans.append(&mut orphans);
    }

    /// Pass what waits on to `takers` (their slots and forkpool's ends): each
    /// connection to the taker in its giver's slot (the same worker's share
    /// as before the deploy: spreading a few workers' connections over all
    /// of them raised bench 45's p99 on 2 cores), else round robin; a taker
    /// whose end fails or is full is skipped. Then close what
    /// waited longer than [`BOUND`] since a worker accepts. `switching`: no
    /// worker accepts now and one will (a cutover before its release; not
    /// while the pool stops): what waits keeps waiting, its bound not begun.
    pub fn pass_on(&mut self, takers: &[(usize, BorrowedFd)], now: Instant, switching: bool) {
        if switching {
            // The bound is for a worker that does not take, so it starts
            // when one accepts: the switch itself is bounded by the drain.
            for (_, since, _) in &mut self.waiting {
                *since = now;
            }
            return;
        }
        let mut full = vec![false; takers.len()];
        'conns: while let Some((conn, since, slot)) = self.waiting.pop_front() {
            // Its giver's slot first; then the others, from the turn on.
            let start = takers
                .iter()
                .position(|(s, _)| *s == slot)
                .unwrap_or_else(|| {
                    let turn = self.turn;
                    self.turn = turn.wrapping_add(1);
                    turn
                });
            for k in 0..takers.len() {
                let i = start.wrapping_add(k) % takers.len();
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
            self.waiting.push_front((conn, since, slot));
            break;
        }
        while self
            .waiting
            .front()
            .is_some_and(|(_, t, _)| now >= *t + BOUND)
        {
            self.waiting.pop_front();
            self.expired += 1;
        }
    }

    /// When the oldest waiting connection is due to be closed.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.waiting.front().map(|(_, t, _)| *t + BOUND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// A worker's pair: (forkpool's end, the worker's end).
    fn pair() -> (OwnedFd, OwnedFd) {
        handoff::pair().unwrap()
    }

    /// `n` connections sent on a worker's end; their client ends.
    fn send_conns(end: &OwnedFd, n: usize) -> Vec<UnixStream> {
        (0..n)
            .map(|_| {
                let (client, server) = UnixStream::pair().unwrap();
                handoff::send(end.as_fd(), server.as_fd()).unwrap();
                client
            })
            .collect()
    }

    /// What the worker's end received, as a stream.
    fn received(worker_end: &OwnedFd) -> Option<UnixStream> {
        match handoff::recv(worker_end.as_fd()) {
            Received::Conn(fd) => Some(UnixStream::from(fd)),
            _ => None,
        }
    }

    #[test]
    fn connections_go_round_robin_to_the_takers_and_stay_the_same_socket() {
        let t0 = Instant::now();
        let (old_ours, old_theirs) = pair();
        let (a_ours, a_theirs) = pair();
        let (b_ours, b_theirs) = pair();
        let mut clients = send_conns(&old_theirs, 4);
        let mut h = Handoff::default();
        assert!(h.take_in(old_ours.as_fd(), 9, t0));
        assert_eq!(h.next_deadline(), Some(t0 + BOUND));
        let takers = [(1, a_ours.as_fd()), (2, b_ours.as_fd())];
        h.pass_on(&takers, t0, false);
        assert_eq!((h.passed, h.expired, h.next_deadline()), (4, 0, None));
        // Each taker got two; what a client sends arrives on what it got.
        for (i, client) in clients.iter_mut().enumerate() {
            let end = if i % 2 == 0 { &a_theirs } else { &b_theirs };
            let mut conn = received(end).expect("a connection");
            client.write_all(&[i as u8]).unwrap();
            let mut b = [0u8; 1];
            conn.read_exact(&mut b).unwrap();
            assert_eq!(b[0], i as u8);
        }
        assert!(received(&a_theirs).is_none());
    }

    #[test]
    fn a_connection_goes_to_the_taker_in_its_givers_slot() {
        let t0 = Instant::now();
        let (a_ours, a_theirs) = pair();
        let (b_ours, b_theirs) = pair();
        let (c_ours, c_theirs) = pair();
        let (old0_ours, old0_theirs) = pair();
        let (old1_ours, old1_theirs) = pair();
        let mut keep = Vec::new();
        // Three from the worker of slot 1, one from slot 0: the spread the
        // kernel's accepts made stays the same over the deploy.
        for (end, n) in [(&old1_theirs, 3), (&old0_theirs, 1)] {
            keep.extend(send_conns(end, n));
        }
        let mut h = Handoff::default();
        assert!(h.take_in(old1_ours.as_fd(), 1, t0));
        assert!(h.take_in(old0_ours.as_fd(), 0, t0));
        let takers = [
            (0, a_ours.as_fd()),
            (1, b_ours.as_fd()),
            (2, c_ours.as_fd()),
        ];
        h.pass_on(&takers, t0, false);
        assert_eq!(h.passed, 4);
        let count = |end: &OwnedFd| std::iter::from_fn(|| received(end)).count();
        assert_eq!(
            (count(&a_theirs), count(&b_theirs), count(&c_theirs)),
            (1, 3, 0)
        );
    }

    #[test]
    fn a_connection_waits_for_the_switch_then_is_closed_a_bound_after_takers_came() {
        let t0 = Instant::now();
        let (ours, theirs) = pair();
        let (mut client, server) = UnixStream::pair().unwrap();
        handoff::send(theirs.as_fd(), server.as_fd()).unwrap();
        drop(server);
        let mut h = Handoff::default();
        assert!(h.take_in(ours.as_fd(), 0, t0));
        // The switch under way (a slow old worker holds it): it waits on,
        // whatever the time.
        let t1 = t0 + BOUND * 3;
        h.pass_on(&[], t1, true);
        assert_eq!((h.expired, h.next_deadline()), (0, Some(t1 + BOUND)));
        // A taker that cannot take (its worker closed its end): the bound runs.
        let (closed_ours, closed_theirs) = pair();
        drop(closed_theirs);
        let takers = [(1, closed_ours.as_fd())];
        h.pass_on(&takers, t1 + BOUND - Duration::from_millis(1), false);
        assert_eq!(h.expired, 0);
        h.pass_on(&takers, t1 + BOUND, false);
        assert_eq!((h.expired, h.next_deadline()), (1, None));
        // The last copy closed: the client reads end of file.
        let mut rest = Vec::new();
        assert_eq!(client.read_to_end(&mut rest).unwrap(), 0);
    }

    #[test]
    fn with_no_switch_under_way_a_connection_is_closed_a_bound_after_it_came() {
        let t0 = Instant::now();
        let (ours, theirs) = pair();
        let (_client, server) = UnixStream::pair().unwrap();
        handoff::send(theirs.as_fd(), server.as_fd()).unwrap();
        let mut h = Handoff::default();
        assert!(h.take_in(ours.as_fd(), 0, t0));
        // The pool stops (or nothing accepts for good): no taker will come.
        h.pass_on(&[], t0 + BOUND - Duration::from_millis(1), false);
        assert_eq!(h.expired, 0);
        h.pass_on(&[], t0 + BOUND, false);
        assert_eq!((h.expired, h.next_deadline()), (1, None));
    }

    #[test]
    fn take_in_stops_at_its_room_and_the_rest_waits_on_the_end() {
        let t0 = Instant::now();
        let (ours, theirs) = pair();
        let (a_ours, a_theirs) = pair();
        let _keep = send_conns(&theirs, 3);
        let mut h = Handoff {
            room: Some(1),
            ..Handoff::default()
        };
        assert!(h.take_in(ours.as_fd(), 0, t0));
        assert!(h.held_back);
        assert_eq!(h.waiting.len(), 1);
        h.pass_on(&[(0, a_ours.as_fd())], t0, false);
        // Room again: the next one, and so on; none lost.
        for _ in 0..2 {
            (h.room, h.held_back) = (Some(1), false);
            assert!(h.take_in(ours.as_fd(), 0, t0));
            h.pass_on(&[(0, a_ours.as_fd())], t0, false);
        }
        (h.room, h.held_back) = (Some(1), false);
        assert!(h.take_in(ours.as_fd(), 0, t0));
        assert!(!h.held_back);
        assert_eq!((h.passed, h.lost), (3, 0));
        assert_eq!(std::iter::from_fn(|| received(&a_theirs)).count(), 3);
    }

    #[test]
    fn a_reaped_workers_end_is_kept_until_read_to_its_end() {
        let t0 = Instant::now();
        let (ours, theirs) = pair();
        let _keep = send_conns(&theirs, 2);
        drop(theirs);
        // No room: one is taken in all the same (nothing waits here), the
        // other stays on the end, which is kept.
        let mut h = Handoff {
            room: Some(0),
            ..Handoff::default()
        };
        h.take_in_last(ours, 3, t0);
        assert_eq!((h.waiting.len(), h.orphans.len()), (1, 1));
        h.room = Some(5);
        h.take_in_orphans(t0);
        assert_eq!((h.waiting.len(), h.orphans.len()), (2, 0));
        assert!(h.waiting.iter().all(|(_, _, slot)| *slot == 3));
    }

    #[test]
    fn a_closed_end_is_told_and_a_full_or_closed_taker_is_skipped() {
        let t0 = Instant::now();
        let (ours, theirs) = pair();
        drop(theirs);
        let mut h = Handoff::default();
        assert!(!h.take_in(ours.as_fd(), 0, t0));
        // A taker whose worker closed its end: the connection waits.
        let (old_ours, old_theirs) = pair();
        let (_client, server) = UnixStream::pair().unwrap();
        handoff::send(old_theirs.as_fd(), server.as_fd()).unwrap();
        assert!(h.take_in(old_ours.as_fd(), 9, t0));
        h.pass_on(&[(1, ours.as_fd())], t0, false);
        assert_eq!((h.passed, h.next_deadline()), (0, Some(t0 + BOUND)));
    }
}
