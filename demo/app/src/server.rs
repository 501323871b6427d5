//! The event loop: one process serves many connections on epoll, each under
//! whole-request deadlines, and stops gracefully.
//!
//! A connection is in one phase at a time:
//! - `Request`: reading a request (head and announced body) until it is whole,
//!   under the request deadline (`--read-timeout`, from its first byte, or from
//!   the accept for a fresh connection);
//! - `Response`: writing one response, all of it under the send deadline;
//! - `Idle`: kept alive between requests, under the idle deadline;
//! - `Linger`: our side is shut after the last response; what the client still
//!   sends is read and dropped for a moment, so that unread input does not make
//!   the kernel reset the connection and destroy the response.
//!
//! With forkpool's `--handoff` (`FORKPOOL_HANDOFF_FD`), a stop hands every
//! connection that is between requests to forkpool, which passes it to a
//! worker of the new generation; this loop takes such connections in as idle
//! ones. While stopping, a connection is read no further than the end of the
//! request in hand, so that the next one stays in the kernel's buffer and
//! travels with the socket.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};

use crate::lifecycle::Lifecycle;
use crate::sys::{self, Order, Signals};
use crate::{http, Site, TOOL};

/// How long a closing connection drains what the client still sends.
const LINGER: Duration = Duration::from_millis(500);
/// The pause after accept(2) failed for lack of descriptors or memory.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// How much of a file body is read at a time.
const FILE_PIECE: usize = 64 * 1024;
const LISTENER: u64 = u64::MAX;
const SIGNALS: u64 = u64::MAX - 1;
const HANDOFF: u64 = u64::MAX - 2;

/// The deadlines and limits of `--read-timeout`, `--send-timeout`,
/// `--idle-timeout`, `--stop-timeout`, `--max-connections`, `--retire-after`.
pub struct Limits {
    pub request: Duration,
    pub send: Duration,
    pub idle: Duration,
    pub stop: Duration,
    pub max_connections: usize,
    pub retire_after: Option<u64>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Request,
    Response,
    Idle,
    Linger,
}

struct Conn {
    fd: OwnedFd,
    /// Tells this connection from an earlier one in the same slot (for the timers).
    serial: u64,
    phase: Phase,
    deadline: Instant,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    /// The rest of the response body, in a file: read into `output` in pieces.
    file: Option<http::FileBody>,
    close_after: bool,
    /// The client has finished sending (end of file).
    eof: bool,
}

pub struct Server<'a> {
    site: &'a Site,
    limits: &'a Limits,
    life: &'a mut Lifecycle,
    signals: &'a mut Signals,
    listener: &'a OwnedFd,
    /// `FORKPOOL_HANDOFF_FD`: connections come and go on it (None once closed).
    handoff: Option<&'a OwnedFd>,
    epoll: Epoll,
    slots: Vec<Option<Conn>>,
    free: Vec<usize>,
    open: usize,
    serial: u64,
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    accepting: bool,
    paused_until: Option<Instant>,
    stop_at: Option<Instant>,
    /// TSTP taken and no CONT since: winding down as for a stop (`stop_at`
    /// is set), to wait parked instead of ending.
    parking: bool,
    /// QUIT taken between two accepts: the loop ends at once.
    quit: bool,
    /// Connections that answered a request and stay open: their next one is
    /// read in the next round, after the others' (one request each a round).
    again: Vec<usize>,
    served: u64,
    /// A released worker's short slice and when to put the one before back.
    slice_back: Option<(Instant, sys::Slice)>,
}

/// How the loop ended.
pub enum End {
    /// Stopped (HUP, TERM, INT) and every connection finished.
    Stopped,
    /// QUIT.
    Quit,
}

impl<'a> Server<'a> {
    pub fn new(
        site: &'a Site,
        limits: &'a Limits,
        life: &'a mut Lifecycle,
        signals: &'a mut Signals,
        listener: &'a OwnedFd,
        handoff: Option<&'a OwnedFd>,
    ) -> Result<Server<'a>, Errno> {
        // Another worker may take a connection between our wake-up and our
        // accept(2): it must fail with EAGAIN, not block. (O_NONBLOCK is shared by
        // every holder of the socket; servers such as gunicorn set it too.)
        sys::set_nonblocking(listener.as_fd())?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(signals.fd(), EpollEvent::new(EpollFlags::EPOLLIN, SIGNALS))?;
        if let Some(h) = handoff {
            epoll.add(h, EpollEvent::new(EpollFlags::EPOLLIN, HANDOFF))?;
        }
        let mut s = Server {
            site,
            limits,
            life,
            signals,
            listener,
            handoff,
            epoll,
            slots: Vec::new(),
            free: Vec::new(),
            open: 0,
            serial: 0,
            timers: BinaryHeap::new(),
            accepting: false,
            paused_until: None,
            stop_at: None,
            parking: false,
            quit: false,
            again: Vec::new(),
            served: 0,
            slice_back: None,
        };
        s.listen(true)?;
        Ok(s)
    }

    /// Put `slice` (what `sys::shorten_slice` took) back at `at`.
    pub fn restore_slice_at(&mut self, at: Instant, slice: sys::Slice) {
        self.slice_back = Some((at, slice));
    }

    /// Serve until stopped and drained, or QUIT.
    pub fn run(&mut self) -> End {
        let mut events = vec![EpollEvent::empty(); 256];
        loop {
            if self
                .slice_back
                .as_ref()
                .is_some_and(|(at, _)| Instant::now() >= *at)
            {
                if let Some((_, slice)) = self.slice_back.take() {
                    slice.restore();
                }
            }
            if self.stop_at.is_some() && self.open == 0 {
                if self.parking {
                    match self.parked() {
                        Some(end) => return end,
                        None => continue,
                    }
                }
                // What forkpool passed before the stop and this loop has not
                // read yet would close with our end: back to forkpool.
                if let Some(h) = self.handoff {
                    hand_back_waiting(h.as_fd());
                }
                return End::Stopped;
            }
            let timeout = sys::poll_timeout(if self.again.is_empty() {
                self.next_wake()
                    .map(|t| t.saturating_duration_since(Instant::now()))
            } else {
                Some(Duration::ZERO)
            });
            let mut n = match self.epoll.wait(&mut events[..256], timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => TOOL.fatal_errno(unixtool::EXIT_TEMPORARY, "wait in epoll", e),
            };
            // The connections of the last round that may have a next request,
            // after this wake-up's: driven as if their event had come.
            events.truncate(n);
            for slot in self.again.drain(..) {
                events.push(EpollEvent::new(EpollFlags::EPOLLIN, slot as u64));
            }
            n = events.len();
            // A stop signal first, before the connections of the same wake-up:
            // the switch waits for it (the `stopping` notice), and nothing is
            // accepted after it.
            if events[..n].iter().any(|ev| ev.data() == SIGNALS) {
                if let Some(order) = self.signals.take() {
                    if let Some(end) = self.obey(order) {
                        return end;
                    }
                }
            }
            for ev in &events[..n] {
                match ev.data() {
                    LISTENER => {
                        self.accept_all();
                        if self.quit {
                            return End::Quit;
                        }
                    }
                    HANDOFF => self.take_handed(),
                    SIGNALS => {}
                    slot => {
                        self.drive(slot as usize);
                        // One that came while this wake-up's work is done
                        // waits for no more of it (one read(2) of the
                        // signalfd, EAGAIN when none).
                        if self.stop_at.is_none() || self.parking {
                            if let Some(order) = self.signals.take() {
                                if let Some(end) = self.obey(order) {
                                    return end;
                                }
                            }
                        }
                    }
                }
            }
            self.expire(Instant::now());
            events.resize(events.len().max(256), EpollEvent::empty());
        }
    }

    /// The earliest of: a connection's deadline, a watchdog ping, the end of an
    /// accept pause.
    fn next_wake(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, slot, serial))) = self.timers.peek().copied() {
            if self.current(slot, serial, at) {
                break;
            }
            self.timers.pop();
        }
        let timer = self.timers.peek().map(|Reverse((at, _, _))| *at);
        let slice = self.slice_back.as_ref().map(|(at, _)| *at);
        [timer, self.life.next_ping(), self.paused_until, slice]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether a timer entry is still the deadline of the connection it names.
    fn current(&self, slot: usize, serial: u64, at: Instant) -> bool {
        matches!(self.slots.get(slot), Some(Some(c)) if c.serial == serial && c.deadline == at)
    }

    fn expire(&mut self, now: Instant) {
        self.life.tick(now);
        if self.paused_until.is_some_and(|t| now >= t) {
            self.paused_until = None;
            let _ = self.listen(true);
        }
        while let Some(Reverse((at, slot, serial))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.current(slot, serial, at) {
                self.deadline_passed(slot);
            }
        }
    }

    /// Register or unregister the listener, as the cap, a pause and a stop allow.
    fn listen(&mut self, on: bool) -> Result<(), Errno> {
        let want = on
            && self.stop_at.is_none()
            && self.paused_until.is_none()
            && self.open < self.limits.max_connections;
        if want == self.accepting {
            return Ok(());
        }
        self.accepting = want;
        if want {
            // EPOLLEXCLUSIVE: one waiting worker wakes per connection, not all.
            let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLEXCLUSIVE;
            self.epoll
                .add(self.listener, EpollEvent::new(flags, LISTENER))
        } else {
            self.epoll.delete(self.listener)
        }
    }

    fn accept_all(&mut self) {
        while self.accepting {
            // A stop signal that came since the last accept is taken before
            // the next one. It matters most for a worker stopped (SIGSTOP)
            // anywhere in this loop and given its stop signal with SIGCONT:
            // forkpool's verified switch parks the old generation so, and
            // holds the new one so at a revert, while the other generation
            // accepts; without this look it would go on accepting from the
            // backlog, answering with its release after the other's.
            if let Some(order) = self.signals.take() {
                if let Some(End::Quit) = self.obey(order) {
                    self.quit = true;
                }
                return;
            }
            match sys::accept(self.listener.as_fd()) {
                Ok(fd) => self.add(fd, Phase::Request),
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR | Errno::ECONNABORTED | Errno::EPROTO) => {}
                Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                    TOOL.warn(format_args!("unable to accept: {}", unixtool::strerror(e)));
                    let _ = self.listen(false);
                    self.paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
                Err(e) => TOOL.fatal_errno(
                    unixtool::EXIT_TEMPORARY,
                    "accept on the listening socket",
                    e,
                ),
            }
        }
    }

    /// Watch a new connection: `Request` for one just accepted (its request
    /// deadline starts now), `Idle` for one handed over between requests.
    fn add(&mut self, fd: OwnedFd, phase: Phase) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let flags = EpollFlags::EPOLLIN
            | EpollFlags::EPOLLOUT
            | EpollFlags::EPOLLRDHUP
            | EpollFlags::EPOLLET;
        if let Err(e) = self.epoll.add(&fd, EpollEvent::new(flags, slot as u64)) {
            TOOL.warn(format_args!(
                "unable to watch a connection: {}",
                unixtool::strerror(e)
            ));
            self.free.push(slot);
            return;
        }
        self.serial += 1;
        self.slots[slot] = Some(Conn {
            fd,
            serial: self.serial,
            phase,
            deadline: Instant::now(),
            input: Vec::new(),
            output: Vec::new(),
            written: 0,
            file: None,
            close_after: false,
            eof: false,
        });
        self.open += 1;
        let after = match phase {
            Phase::Idle => self.limits.idle,
            _ => self.limits.request,
        };
        self.set_deadline(slot, after);
        if self.open >= self.limits.max_connections {
            let _ = self.listen(false);
        }
    }

    fn remove(&mut self, slot: usize) {
        if let Some(c) = self.slots.get_mut(slot).and_then(Option::take) {
            let _ = self.epoll.delete(&c.fd);
            drop(c);
            self.free.push(slot);
            self.open -= 1;
            if !self.accepting {
                let _ = self.listen(true);
            }
        }
    }

    fn set_deadline(&mut self, slot: usize, after: Duration) {
        let mut at = Instant::now() + after;
        if let Some(stop) = self.stop_at {
            at = at.min(stop);
        }
        if let Some(Some(c)) = self.slots.get_mut(slot) {
            c.deadline = at;
            self.timers.push(Reverse((at, slot, c.serial)));
        }
    }

    /// What a signal asks: Some(end) when the loop ends at once (QUIT).
    fn obey(&mut self, order: Order) -> Option<End> {
        match order {
            Order::Quit => return Some(End::Quit),
            Order::Stop => self.stop(),
            Order::Park => self.park(),
            Order::Resume => self.unpark(),
        }
        None
    }

    /// HUP, TERM, INT: stop accepting, close idle connections (or hand them
    /// over), give the others at most --stop-timeout, tell the supervisor.
    /// A stop while parking is one (the connections were dealt with at the
    /// park).
    fn stop(&mut self) {
        if self.parking {
            self.parking = false;
            self.life.stopping();
            return;
        }
        if self.stop_at.is_some() {
            return;
        }
        self.wind_down();
    }

    /// TSTP, forkpool's park (`--confirm-timeout`): as a stop (it stops
    /// accepting and says `stopping`: the new generation need not wait for
    /// the requests in hand), but once nothing is in hand the app says
    /// `parked` and waits for CONT ([`Server::parked`]) instead of ending:
    /// forkpool then stops it (warm) until a confirm (the stop signal and
    /// CONT: it ends) or a revert (CONT: it accepts again). Idle connections
    /// are closed or handed over as at a stop, so that no client waits on a
    /// parked worker.
    fn park(&mut self) {
        if self.stop_at.is_some() {
            return;
        }
        self.parking = true;
        self.wind_down();
    }

    /// CONT after a park: accept again (a revert's CONT, or one that came
    /// before the `parked` was said).
    fn unpark(&mut self) {
        if !self.parking {
            return;
        }
        self.parking = false;
        self.stop_at = None;
        let _ = self.listen(true);
    }

    /// Parked, nothing in hand: say so and wait for CONT (None: serve on),
    /// a stop or QUIT (the end), pinging the watchdog meanwhile.
    fn parked(&mut self) -> Option<End> {
        self.life.parked();
        loop {
            match sys::wait_for(None, self.signals, self.life.next_ping()) {
                sys::Woke::Signal(Order::Quit) => return Some(End::Quit),
                sys::Woke::Signal(Order::Stop) => return Some(End::Stopped),
                sys::Woke::Signal(Order::Resume) => {
                    self.unpark();
                    return None;
                }
                sys::Woke::Signal(Order::Park) | sys::Woke::Readable => {}
                sys::Woke::Timeout => self.life.tick(Instant::now()),
            }
        }
    }

    /// Stop accepting, say `stopping`, close idle connections (or hand them
    /// over), give the others at most --stop-timeout.
    fn wind_down(&mut self) {
        let now = Instant::now();
        self.stop_at = Some(now + self.limits.stop);
        let _ = self.listen(false);
        for slot in 0..self.slots.len() {
            let Some(c) = &self.slots[slot] else { continue };
            if self.handoff.is_some() && between_requests(c) {
                self.hand_over(slot);
            } else if c.phase == Phase::Idle && !bytes_waiting(c) {
                self.remove(slot);
            } else if c.deadline > now + self.limits.stop {
                self.set_deadline(slot, self.limits.stop);
            }
        }
        // Connections forkpool passed to us before it sent the stop signal
        // (it passes none to a retired worker) are all on our end now, even
        // those of no wake-up yet (this wake-up's events may predate them):
        // back to forkpool at once, not closed with our end at exit.
        if let Some(h) = self.handoff {
            hand_back_waiting(h.as_fd());
        }
        // `stopping` last: the switch ends at it, and forkpool, woken by it,
        // takes the CPU; what this worker handed over (or closed) before it
        // reaches the new generation in forkpool's turn of the release. Said
        // first, a worker preempted right after it handed over its idle
        // connections one turn of the CPU later: 10-50 ms on a busy
        // machine, all of them requests waiting (issue 30).
        self.life.stopping();
    }

    /// A connection between requests, while stopping: to forkpool if the
    /// hand-over is on (what the client sent meanwhile is still in the
    /// kernel's buffer and travels with it); closed otherwise, or if forkpool
    /// does not take it.
    fn hand_over(&mut self, slot: usize) {
        let Some(Some(c)) = self.slots.get(slot) else {
            return;
        };
        let sent = self
            .handoff
            .is_some_and(|h| unixtool::handoff::send(h.as_fd(), c.fd.as_fd()).is_ok());
        if !sent {
            // Not taken: from now on this stop is one without the hand-over;
            // an idle connection is closed, one whose request has not come
            // yet is served (its answer says close).
            let idle = c.phase == Phase::Idle;
            if let Some(h) = self.handoff.take() {
                // Not watched either: what forkpool may still send is never read.
                let _ = self.epoll.delete(h);
            }
            if !idle {
                return;
            }
        }
        self.remove(slot);
    }

    /// Connections forkpool hands over: idle ones of this loop from now on;
    /// while stopping, handed back.
    fn take_handed(&mut self) {
        let mut lost = 0;
        while let Some(h) = self.handoff {
            match unixtool::handoff::recv(h.as_fd()) {
                unixtool::handoff::Received::Conn(fd) => {
                    if self.stop_at.is_some() {
                        hand_back(h.as_fd(), fd);
                    } else if sys::set_nonblocking(fd.as_fd()).is_ok() {
                        self.add(fd, Phase::Idle);
                    }
                }
                unixtool::handoff::Received::Nothing => {}
                // The kernel closed it: this worker had no descriptor left.
                unixtool::handoff::Received::Lost => lost += 1,
                unixtool::handoff::Received::Empty => break,
                unixtool::handoff::Received::Closed => {
                    let _ = self.epoll.delete(h);
                    self.handoff = None;
                }
            }
        }
        if lost > 0 {
            TOOL.warn(format_args!(
                "closed {lost} handed-over connections: no descriptor left for them (raise the descriptor limit)"
            ));
        }
    }

    fn deadline_passed(&mut self, slot: usize) {
        let Some(Some(c)) = self.slots.get_mut(slot) else {
            return;
        };
        match c.phase {
            // A request begun but not finished in time: 408, then close.
            Phase::Request if !c.input.is_empty() && self.stop_at.is_none() => {
                c.output = http::error_response(self.site, 408);
                c.written = 0;
                c.close_after = true;
                c.phase = Phase::Response;
                self.set_deadline(slot, self.limits.send);
                self.drive(slot);
            }
            // A response not taken in time (a slow reader): cut it, so that the
            // kernel does not go on sending it for us.
            Phase::Response => {
                sys::reset_on_close(c.fd.as_fd());
                self.remove(slot);
            }
            // Silent, idle, lingering, or the stop deadline: close.
            _ => self.remove(slot),
        }
    }

    /// Move a connection on as far as it goes without waiting, up to the end
    /// of one response: a connection that stays open reads its next request
    /// in the next round, after the other connections' events ([`Server::run`]).
    /// Driven on, a client as quick as this loop (on the same CPU each
    /// response wakes it and it sends the next request at once) kept the
    /// worker answering it for as long as it went on: the worker's other
    /// connections waited (10-30 ms, the requests handed over at a cutover
    /// among them), and so did a stop signal (5-16 ms: the switch) (issue 30).
    fn drive(&mut self, slot: usize) {
        loop {
            let Some(Some(c)) = self.slots.get_mut(slot) else {
                return;
            };
            let answering = c.phase == Phase::Response;
            let step = match c.phase {
                Phase::Request | Phase::Idle => self.read_request(slot),
                Phase::Response => self.write_response(slot),
                Phase::Linger => self.linger(slot),
            };
            if !step {
                return;
            }
            if answering {
                if let Some(Some(c)) = self.slots.get(slot) {
                    if matches!(c.phase, Phase::Idle | Phase::Request) {
                        self.again.push(slot);
                        return;
                    }
                }
            }
        }
    }

    /// Read what the client sent, answer a whole request. True if the phase changed.
    fn read_request(&mut self, slot: usize) -> bool {
        let stopping = self.stop_at.is_some();
        let handing = stopping && self.handoff.is_some();
        let Some(Some(c)) = self.slots.get_mut(slot) else {
            return false;
        };
        let was_empty = c.input.is_empty();
        let filled = if handing { fill_one(c) } else { fill(c) };
        match filled {
            Ok(()) => {}
            Err(_) => {
                self.remove(slot);
                return false;
            }
        }
        if c.input.is_empty() {
            if c.eof {
                self.remove(slot);
            }
            return false;
        }
        let idle = c.phase == Phase::Idle;
        let started = idle && was_empty;
        // Stopping: the last response says close, unless the connection is
        // to be handed over after it.
        let next = http::next(self.site, &c.input, (stopping && !handing) || c.eof);
        match next {
            http::Next::Wait => {
                if c.eof {
                    self.remove(slot);
                    return false;
                }
                if started {
                    // The first bytes of the next request: its deadline starts now.
                    c.phase = Phase::Request;
                    self.set_deadline(slot, self.limits.request);
                }
                false
            }
            http::Next::Answer {
                out,
                file,
                consumed,
                close,
            } => {
                c.input.drain(..consumed.min(c.input.len()));
                c.output = out;
                c.file = file;
                c.written = 0;
                c.close_after = close;
                c.phase = Phase::Response;
                self.set_deadline(slot, self.limits.send);
                true
            }
        }
    }

    /// Write what the socket takes. True if the response is done (phase changed).
    fn write_response(&mut self, slot: usize) -> bool {
        let Some(Some(c)) = self.slots.get_mut(slot) else {
            return false;
        };
        loop {
            while c.written < c.output.len() {
                match sys::send(c.fd.as_fd(), &c.output[c.written..]) {
                    Ok(n) => c.written += n,
                    Err(Errno::EINTR) => {}
                    Err(Errno::EAGAIN) => return false,
                    Err(_) => {
                        self.remove(slot);
                        return false;
                    }
                }
            }
            match refill(c) {
                Ok(true) => {}
                Ok(false) => break,
                Err(()) => {
                    // The file ended before its announced length: the response
                    // cannot be completed; cut it.
                    sys::reset_on_close(c.fd.as_fd());
                    self.remove(slot);
                    return false;
                }
            }
        }
        c.output = Vec::new();
        self.served += 1;
        if self.limits.retire_after.is_some_and(|n| self.served >= n) {
            self.life.recycle();
        }
        let Some(Some(c)) = self.slots.get_mut(slot) else {
            return false;
        };
        if c.close_after {
            sys::shutdown_write(c.fd.as_fd());
            c.phase = Phase::Linger;
            self.set_deadline(slot, LINGER);
        } else if c.input.is_empty() {
            c.phase = Phase::Idle;
            if self.stop_at.is_some() && self.handoff.is_some() {
                // Between requests while stopping: on to the new generation.
                self.hand_over(slot);
                return false;
            }
            self.set_deadline(slot, self.limits.idle);
        } else {
            // A pipelined request is already here: its deadline starts now.
            c.phase = Phase::Request;
            self.set_deadline(slot, self.limits.request);
        }
        true
    }

    /// Drop what the client still sends; close at its end of file.
    fn linger(&mut self, slot: usize) -> bool {
        let Some(Some(c)) = self.slots.get_mut(slot) else {
            return false;
        };
        let mut scratch = [0u8; 4096];
        loop {
            match sys::recv(c.fd.as_fd(), &mut scratch) {
                Ok(0) => break,
                Ok(_) | Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return false,
                Err(_) => break,
            }
        }
        self.remove(slot);
        false
    }
}

/// A connection forkpool passed to a worker that is stopping: back to
/// forkpool, which passes it to the accepting generation.
fn hand_back(h: BorrowedFd, conn: OwnedFd) {
    let _ = unixtool::handoff::send(h, conn.as_fd());
}

/// Every connection waiting on the hand-over end, back to forkpool: a
/// stopping worker's (also one stopped while held, before its loop ran).
pub fn hand_back_waiting(h: BorrowedFd) {
    loop {
        match unixtool::handoff::recv(h) {
            unixtool::handoff::Received::Conn(fd) => hand_back(h, fd),
            unixtool::handoff::Received::Nothing | unixtool::handoff::Received::Lost => {}
            unixtool::handoff::Received::Empty | unixtool::handoff::Received::Closed => return,
        }
    }
}

/// The next piece of a file body into the (sent) output. Ok(false): no more.
fn refill(c: &mut Conn) -> Result<bool, ()> {
    let Some(f) = c.file.as_mut() else {
        return Ok(false);
    };
    if f.left == 0 {
        c.file = None;
        return Ok(false);
    }
    let piece = f.left.min(FILE_PIECE as u64) as usize;
    c.output.resize(piece, 0);
    c.written = 0;
    match std::io::Read::read(&mut f.file, &mut c.output) {
        Ok(n) if n > 0 => {
            c.output.truncate(n);
            f.left -= n as u64;
            Ok(true)
        }
        _ => Err(()),
    }
}

/// Whether the client already sent something we have not read (or closed):
/// an idle connection with bytes in the kernel's buffer has a request begun,
/// and a stop finishes it instead of closing it unanswered.
fn bytes_waiting(c: &Conn) -> bool {
    let mut one = [0u8; 1];
    matches!(sys::peek(c.fd.as_fd(), &mut one), Ok(1..))
}

/// Whether a connection is between requests: nothing of a next request read
/// (idle, or accepted and not read from), no response under way.
fn between_requests(c: &Conn) -> bool {
    matches!(c.phase, Phase::Idle | Phase::Request) && c.input.is_empty() && c.output.is_empty()
}

/// As [`fill`], but never past the end of the first request: what follows it
/// stays in the kernel's buffer (peeked at, not taken).
fn fill_one(c: &mut Conn) -> Result<(), Errno> {
    let mut look = vec![0u8; 16 * 1024];
    while !c.eof && c.input.len() < http::MAX_REQUEST {
        if http::first_request_len(&c.input).is_some() {
            return Ok(());
        }
        let room = (http::MAX_REQUEST - c.input.len()).min(look.len());
        let n = match sys::peek(c.fd.as_fd(), &mut look[..room]) {
            Ok(0) => {
                c.eof = true;
                return Ok(());
            }
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut whole = c.input.clone();
        whole.extend_from_slice(&look[..n]);
        let take = match http::first_request_len(&whole) {
            Some(len) => len - c.input.len(),
            None => n,
        };
        if !recv_into(c, take)? {
            return Ok(());
        }
    }
    Ok(())
}

/// Read at most `room` bytes onto the connection's input. Ok(false): nothing
/// is there now (EAGAIN).
fn recv_into(c: &mut Conn, room: usize) -> Result<bool, Errno> {
    let start = c.input.len();
    c.input.resize(start + room, 0);
    let r = sys::recv(c.fd.as_fd(), &mut c.input[start..]);
    c.input.truncate(start + *r.as_ref().unwrap_or(&0));
    match r {
        Ok(0) => c.eof = true,
        Ok(_) | Err(Errno::EINTR) => {}
        Err(Errno::EAGAIN) => return Ok(false),
        Err(e) => return Err(e),
    }
    Ok(true)
}

/// Read into the connection's input until the socket has no more, the client's
/// end of file, or the input holds the most one request may be.
fn fill(c: &mut Conn) -> Result<(), Errno> {
    while !c.eof && c.input.len() < http::MAX_REQUEST {
        let room = (http::MAX_REQUEST - c.input.len()).min(16 * 1024);
        if !recv_into(c, room)? {
            return Ok(());
        }
    }
    Ok(())
}
