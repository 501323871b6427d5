//! The pool: its workers, its generations, and the one rule it converges to.
//!
//! There is always a *target* generation (the one the pool wants in every
//! slot) and, once some generation has had all its workers ready, a *serving*
//! generation (the last one that did). At each step:
//!
//! 1. every slot without a live worker of the target generation gets one (at
//!    once, or after its back-off when the previous one failed);
//! 2. every live worker that is not of the target generation, or sits in a
//!    slot beyond N, is *outgoing*: retired at once if it is not ready; if it
//!    is ready, retired only when the pool keeps at least N ready workers
//!    without it (rolling), or when the target generation is wholly ready
//!    (all-at-once);
//! 3. a target generation with every slot ready becomes the serving one.
//!
//! A reload (HUP) only changes the target. A failed reload sets the target
//! back to the serving generation: the same rule then brings back whatever old
//! worker was already retired and retires the broken new ones, and ready
//! workers never drop below N on the way.
//!
//! Cutover adds one more thing, the *accepting* generation: a worker of a
//! newer generation is *held* from the moment it is ready (SIGSTOP, and the
//! hold descriptor it reads before its first accept), retired like the
//! all-at-once rule says, and:
//!
//! 4. once no worker older than the serving generation remains (they exited,
//!    or were killed at the drain deadline), the serving generation becomes
//!    the accepting one: every held worker of it is released at once.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{FcntlArg, OFlag};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use unixtool::backoff::Backoff;
use unixtool::child::{self, secs, Ended, Spawn};
use unixtool::readiness::{self, NotifySocket, PipeEvent, ReadinessPipe};
use unixtool::signals::signal_name;

use crate::TOOL;

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
    fn name(self) -> &'static str {
        match self {
            Mode::Rolling => "rolling",
            Mode::AllAtOnce => "all-at-once",
            Mode::Cutover => "cutover",
        }
    }
}

/// What forkpool's own supervisor is told about (see upstream.rs).
pub struct Summary {
    pub newest: u64,
    /// The serving generation, 0 while none was ever wholly ready.
    pub serving: u64,
    pub ready: usize,
    /// The last reload failed (the serving generation stays).
    pub failed: bool,
    pub reason: String,
    pub release: String,
    pub stopping: bool,
}

pub struct Config {
    pub prog: Vec<OsString>,
    pub stop_signal: Signal,
    pub drain: Duration,
    pub ready: readiness::Options,
    pub pin: Option<PathBuf>,
    pub status: Option<PathBuf>,
    pub mode: Mode,
    pub backoff_max: Duration,
    pub verbose: bool,
}

/// One generation: its number and the release directory it is pinned to.
#[derive(Clone, Debug)]
struct Generation {
    id: u64,
    release: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    Stopping,
}

struct Worker {
    slot: usize,
    generation: u64,
    pid: Pid,
    state: State,
    started: Instant,
    pipe: Option<ReadinessPipe>,
    /// When a stopping worker gets KILL.
    kill_at: Option<Instant>,
    /// Cutover: ready, but stopped (SIGSTOP) and not released yet.
    held: bool,
    /// Cutover: the write end of the hold descriptor, until the release (or
    /// until the worker ends: one that is retired while held gets no EOF).
    hold: Option<OwnedFd>,
}

impl Worker {
    fn live(&self) -> bool {
        self.state != State::Stopping
    }

    fn name(&self) -> String {
        format!(
            "worker {} (pid {}, generation {})",
            self.slot, self.pid, self.generation
        )
    }
}

/// A slot's restart schedule.
struct Slot {
    backoff: Backoff,
    /// The next start of a target worker in this slot is not before this.
    not_before: Option<Instant>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Reload {
    None,
    Running { since: Instant },
    Ok,
    Failed,
}

/// Whether the pool is stopping, and how.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stop {
    No,
    Graceful,
    Fast,
}

pub struct Pool {
    cfg: Config,
    notify: Option<NotifySocket>,
    workers: Vec<Worker>,
    slots: Vec<Slot>,
    target: Generation,
    serving: Option<Generation>,
    /// The newest generation whose workers may accept (cutover; in the other
    /// modes it follows `serving`).
    accepting: Generation,
    /// Cutover: when the old generation was told to stop for the switch.
    switch_since: Option<Instant>,
    newest: u64,
    reload: Reload,
    reason: String,
    stop: Stop,
    last_status: String,
    status_warned: bool,
}

/// Resolve the pinned symlink to the directory it names now.
pub fn resolve(pin: &Path) -> Result<PathBuf, String> {
    let dir = std::fs::canonicalize(pin).map_err(|e| unixtool::io_reason(&e))?;
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    Ok(dir)
}

/// `3.2ms`: a short duration (a cutover's switch) as the log lines write it.
fn millis(d: Duration) -> String {
    format!("{:.1}ms", d.as_secs_f64() * 1000.0)
}

/// A pipe for the hold descriptor, both ends close-on-exec; the read end is
/// moved off `avoid` (the -d descriptor, which the worker gets for readiness).
fn hold_pipe(avoid: Option<RawFd>) -> Result<(OwnedFd, OwnedFd), nix::errno::Errno> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    match avoid {
        Some(fd) if fd == read.as_raw_fd() => {
            let n = nix::fcntl::fcntl(read.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(fd + 1))?;
            // SAFETY: fcntl just returned this new descriptor, owned by no one else.
            Ok((unsafe { OwnedFd::from_raw_fd(n) }, write))
        }
        _ => Ok((read, write)),
    }
}

impl Pool {
    pub fn new(
        cfg: Config,
        notify: Option<NotifySocket>,
        release: Option<PathBuf>,
        n: usize,
    ) -> Pool {
        let slots = (0..n)
            .map(|_| Slot {
                backoff: Backoff::new(cfg.backoff_max),
                not_before: None,
            })
            .collect();
        let pool = Pool {
            cfg,
            notify,
            workers: Vec::new(),
            slots,
            accepting: Generation {
                id: 1,
                release: release.clone(),
            },
            switch_since: None,
            target: Generation { id: 1, release },
            serving: None,
            newest: 1,
            reload: Reload::None,
            reason: String::new(),
            stop: Stop::No,
            last_status: String::new(),
            status_warned: false,
        };
        pool.info(format_args!(
            "generation 1: starting {n} workers{}",
            pool.release_text()
        ));
        pool
    }

    fn info(&self, msg: std::fmt::Arguments) {
        if self.cfg.verbose {
            TOOL.info(msg);
        }
    }

    fn release_text(&self) -> String {
        match &self.target.release {
            Some(r) => format!(" in {}", r.display()),
            None => String::new(),
        }
    }

    /// Whether a stop is complete: every worker is gone.
    pub fn finished(&self) -> bool {
        self.stop != Stop::No && self.workers.is_empty()
    }

    /// Workers ready and accepting (held ones are not).
    fn ready_count(&self) -> usize {
        self.workers
            .iter()
            .filter(|w| w.state == State::Ready && !w.held)
            .count()
    }

    fn held_count(&self) -> usize {
        self.workers.iter().filter(|w| w.held).count()
    }

    /// The generation that serves as a client sees it: the serving one, or
    /// during a cutover's switch the one that still accepts until then.
    fn shown_serving(&self) -> Option<&Generation> {
        self.serving.as_ref().map(|s| {
            if s.id > self.accepting.id {
                &self.accepting
            } else {
                s
            }
        })
    }

    /// Whether every slot has a ready worker of the target generation.
    fn target_ready(&self) -> bool {
        (0..self.slots.len()).all(|s| {
            self.workers
                .iter()
                .any(|w| w.slot == s && w.generation == self.target.id && w.state == State::Ready)
        })
    }

    fn is_outgoing(&self, w: &Worker) -> bool {
        w.live() && (w.generation != self.target.id || w.slot >= self.slots.len())
    }

    /// Converge: start what is missing, retire what is outgoing, note a
    /// generation that became wholly ready.
    pub fn step(&mut self, now: Instant) {
        if self.stop != Stop::No {
            return;
        }
        // 1. A live target worker in every slot.
        for slot in 0..self.slots.len() {
            let has = self
                .workers
                .iter()
                .any(|w| w.live() && w.slot == slot && w.generation == self.target.id);
            if has || self.slots[slot].not_before.is_some_and(|t| t > now) {
                continue;
            }
            self.slots[slot].not_before = None;
            if let Err(e) = self.start(slot, now) {
                TOOL.warn(format_args!(
                    "unable to start worker {slot} (generation {}): {}; retrying in 1s",
                    self.target.id,
                    unixtool::strerror(e)
                ));
                self.slots[slot].not_before = Some(now + Duration::from_secs(1));
            }
        }
        // 2. Retire outgoing workers: the ones not serving at once (not ready,
        // or held in a generation that is not about to serve)...
        let serving_id = self.serving.as_ref().map(|g| g.id);
        let idle: Vec<usize> = (0..self.workers.len())
            .filter(|&i| {
                let w = &self.workers[i];
                self.is_outgoing(w)
                    && (w.state != State::Ready || (w.held && Some(w.generation) != serving_id))
            })
            .collect();
        for i in idle {
            self.retire(i, now, "not needed");
        }
        // ... the ready ones while N ready workers remain without them, or
        // (all-at-once) when the whole target generation is ready. Slots
        // beyond N (TTOU) go first, then the oldest generation.
        let all_at_once_go = self.cfg.mode != Mode::Rolling && self.target_ready();
        loop {
            let n = self.slots.len();
            let mut candidates: Vec<usize> = (0..self.workers.len())
                .filter(|&i| {
                    self.is_outgoing(&self.workers[i]) && self.workers[i].state == State::Ready
                })
                .filter(|&i| {
                    self.cfg.mode == Mode::Rolling || all_at_once_go || self.workers[i].slot >= n
                })
                .collect();
            candidates.sort_by_key(|&i| {
                (
                    self.workers[i].slot < n,
                    self.workers[i].generation,
                    self.workers[i].slot,
                )
            });
            let Some(&i) = candidates.first() else { break };
            if self.ready_count() <= n && !all_at_once_go {
                break;
            }
            self.retire(i, now, "replaced");
        }
        // 3. A wholly ready target generation serves.
        if self.serving.as_ref().map(|g| g.id) != Some(self.target.id) && self.target_ready() {
            if self.cfg.mode == Mode::Cutover && self.target.id > self.accepting.id {
                // The switch: the old generations go now; the new one stays
                // held until they are gone (4.). The reload is done then.
                self.info(format_args!(
                    "cutover to generation {}: every worker ready and held until the older ones are gone",
                    self.target.id
                ));
                self.switch_since = Some(now);
                self.serving = Some(self.target.clone());
                self.step(now);
                return;
            }
            if let Reload::Running { since } = self.reload {
                self.info(format_args!(
                    "reload to generation {} done in {}: every worker ready",
                    self.target.id,
                    secs(now - since)
                ));
                self.reload = Reload::Ok;
                self.reason.clear();
            } else {
                self.info(format_args!(
                    "generation {}: every worker ready",
                    self.target.id
                ));
            }
            self.serving = Some(self.target.clone());
            self.accepting = self.target.clone();
            // All-at-once: the old generation goes now that the new one is whole.
            self.step(now);
        }
        // 4. Cutover: release the serving generation once nothing older is left.
        if let Some(s) = self.serving.clone() {
            if s.id > self.accepting.id && self.workers.iter().all(|w| w.generation >= s.id) {
                self.release(s, now);
            }
        }
    }

    /// Let generation `gen` accept: write a byte to and close each of its
    /// hold descriptors, then SIGCONT its held workers, all in one go.
    fn release(&mut self, gen: Generation, now: Instant) {
        let id = gen.id;
        self.accepting = gen;
        let mut n = 0;
        for w in self.workers.iter_mut().filter(|w| w.generation == id) {
            if let Some(h) = w.hold.take() {
                let _ = nix::unistd::write(&h, b"\n");
            }
        }
        for w in self
            .workers
            .iter_mut()
            .filter(|w| w.generation == id && w.held)
        {
            w.held = false;
            child::signal(w.pid, Signal::SIGCONT);
            n += 1;
        }
        let drained = self
            .switch_since
            .take()
            .map(|t| now - t)
            .unwrap_or_default();
        if let (Reload::Running { since }, true) = (&self.reload, self.target.id == id) {
            self.info(format_args!(
                "reload to generation {id} done in {}: the old workers were gone after {}; released {n} workers",
                secs(now - *since),
                millis(drained)
            ));
            self.reload = Reload::Ok;
            self.reason.clear();
        } else {
            self.info(format_args!(
                "cutover to generation {id}: the old workers were gone after {}; released {n} workers",
                millis(drained)
            ));
        }
    }

    /// Fork and exec a worker of the target generation in `slot`.
    fn start(&mut self, slot: usize, now: Instant) -> Result<(), nix::errno::Errno> {
        let gen = self.target.clone();
        let mut spawn = Spawn::new(TOOL.name, &self.cfg.prog);
        spawn.parent_death = Some(Signal::SIGKILL);
        spawn.env("FORKPOOL_WORKER", slot.to_string());
        spawn.env("FORKPOOL_GENERATION", gen.id.to_string());
        if let Some(r) = &gen.release {
            spawn.env("FORKPOOL_RELEASE", r.clone());
            spawn.dir = Some(r.clone());
        }
        if let Some(n) = &self.notify {
            spawn.env("NOTIFY_SOCKET", n.env_value());
        }
        let mut pipe = None;
        if let Some(fd) = self.cfg.ready.fd {
            let p = ReadinessPipe::new()?;
            spawn.fds.push((p.write_fd(), fd));
            pipe = Some(p);
        }
        // Cutover: the hold descriptor, on the number the read end has here
        // (free in the worker too), never on the -d descriptor.
        let mut hold = None;
        if self.cfg.mode == Mode::Cutover {
            let (read, write) = hold_pipe(self.cfg.ready.fd)?;
            let n = read.as_raw_fd();
            spawn.fds.push((n, n));
            spawn.env("FORKPOOL_HOLD_FD", n.to_string());
            hold = Some((read, write));
        }
        let pid = spawn.spawn()?;
        if let Some(p) = pipe.as_mut() {
            p.close_write();
        }
        // A worker of a generation that accepts already is not held: EOF at once.
        let hold = hold
            .map(|(_read, write)| write)
            .filter(|_| gen.id > self.accepting.id);
        self.info(format_args!(
            "worker {slot} (generation {}) started as pid {pid}",
            gen.id
        ));
        self.workers.push(Worker {
            slot,
            generation: gen.id,
            pid,
            state: State::Starting,
            started: now,
            pipe,
            kill_at: None,
            held: false,
            hold,
        });
        Ok(())
    }

    /// Send worker `i` the stop signal; KILL after the drain deadline.
    fn retire(&mut self, i: usize, now: Instant, why: &str) {
        let sig = self.cfg.stop_signal;
        let drain = self.cfg.drain;
        let w = &mut self.workers[i];
        if w.state == State::Stopping {
            return;
        }
        w.state = State::Stopping;
        w.pipe = None;
        w.kill_at = Some(now + drain);
        child::signal(w.pid, sig);
        if w.held {
            // It gets the stop signal, not the release: its hold stays shut.
            w.held = false;
            child::signal(w.pid, Signal::SIGCONT);
        }
        let name = w.name();
        self.info(format_args!(
            "{name} stopping ({why}): sent {}",
            signal_name(sig)
        ));
    }

    /// Descriptors to poll: the notification socket, the pipes of workers not ready yet.
    pub fn poll_fds(&self) -> Vec<i32> {
        let mut fds: Vec<i32> = self.notify.iter().map(|n| n.fd()).collect();
        fds.extend(
            self.workers
                .iter()
                .filter_map(|w| w.pipe.as_ref())
                .map(|p| p.fd()),
        );
        fds
    }

    /// The next moment something is due: a start after a back-off, a worker
    /// alive long enough, a readiness deadline, a KILL.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n| n.min(t)));
        if self.stop == Stop::No {
            self.slots
                .iter()
                .filter_map(|s| s.not_before)
                .for_each(&mut consider);
        }
        for w in &self.workers {
            match w.state {
                State::Starting => {
                    if let Some(a) = self.cfg.ready.alive {
                        consider(w.started + a);
                    }
                    if let Some(t) = self.cfg.ready.deadline {
                        consider(w.started + t);
                    }
                }
                State::Stopping => {
                    if let Some(k) = w.kill_at {
                        consider(k);
                    }
                }
                State::Ready => {}
            }
        }
        next
    }

    /// Readiness messages and timers, readiness deadlines, KILL deadlines.
    pub fn check_readiness(&mut self, now: Instant) {
        let mut ready_pids: Vec<Pid> = Vec::new();
        if let Some(n) = &self.notify {
            for notice in n.drain() {
                // The worker itself, or (a worker that is a script) one of its children.
                let Some(w) = self
                    .workers
                    .iter()
                    .find(|w| w.pid == notice.pid)
                    .or_else(|| {
                        self.workers
                            .iter()
                            .find(|w| readiness::is_same_or_descendant(notice.pid, w.pid))
                    })
                else {
                    continue;
                };
                if notice.ready() {
                    ready_pids.push(w.pid);
                }
                if let Some(st) = notice.status() {
                    self.info(format_args!("{} status: {st}", w.name()));
                }
            }
        }
        for i in 0..self.workers.len() {
            let w = &mut self.workers[i];
            let mut became = ready_pids.contains(&w.pid);
            if let Some(p) = w.pipe.as_mut() {
                match p.check() {
                    PipeEvent::Ready => became = true,
                    PipeEvent::Closed => w.pipe = None,
                    PipeEvent::Nothing => {}
                }
            }
            if w.state != State::Starting {
                continue;
            }
            if self.cfg.ready.alive.is_some_and(|a| now >= w.started + a) {
                became = true;
            }
            if became {
                w.state = State::Ready;
                w.pipe = None;
                let held = self.cfg.mode == Mode::Cutover && w.generation > self.accepting.id;
                if held {
                    // At once: the window in which it may accept is this long.
                    child::signal(w.pid, Signal::SIGSTOP);
                    w.held = true;
                }
                let msg = format!(
                    "{} ready after {}{}",
                    w.name(),
                    secs(now - w.started),
                    if held { "; held (sent STOP)" } else { "" }
                );
                self.info(format_args!("{msg}"));
            } else if self
                .cfg
                .ready
                .deadline
                .is_some_and(|t| now >= w.started + t)
            {
                let msg = format!("{} not ready after {}", w.name(), secs(now - w.started));
                self.failed(i, now, msg);
            }
        }
        for w in self.workers.iter_mut() {
            if w.kill_at.is_some_and(|k| now >= k) {
                w.kill_at = None;
                child::signal(w.pid, Signal::SIGKILL);
                TOOL.warn(format_args!(
                    "{} did not stop in {}: sent KILL",
                    w.name(),
                    secs(self.cfg.drain)
                ));
            }
        }
    }

    /// Worker `i` failed (`what` says how). A new generation that fails makes
    /// the reload fail; a serving worker is replaced after its slot's back-off.
    /// A live worker is retired; one that ended is forgotten by the caller.
    fn failed(&mut self, i: usize, now: Instant, what: String) {
        let (slot, generation, started) = (
            self.workers[i].slot,
            self.workers[i].generation,
            self.workers[i].started,
        );
        let reloading = matches!(self.reload, Reload::Running { .. });
        // (A cutover's new generation, once whole, is the serving one: a crash
        // of it while the old one drains is replaced, not a failed reload.)
        let whole = self.serving.as_ref().map(|g| g.id) == Some(generation);
        if generation == self.target.id && reloading && self.serving.is_some() && !whole {
            self.abandon(now, what);
        } else if generation == self.target.id && slot < self.slots.len() {
            let wait = self.slots[slot].backoff.failed(now - started);
            self.slots[slot].not_before = Some(now + wait);
            TOOL.warn(format_args!("{what}; restarting in {}", secs(wait)));
        } else {
            TOOL.warn(format_args!(
                "{what}; not replaced: generation {} is outgoing",
                generation
            ));
        }
        if self.workers[i].live() {
            self.retire(i, now, "failed");
        }
    }

    /// Give up the running reload: back to the serving generation.
    fn abandon(&mut self, now: Instant, why: String) {
        let Some(old) = self.serving.clone() else {
            return;
        };
        TOOL.warn(format_args!(
            "reload to generation {} failed: {why}; generation {} keeps serving",
            self.target.id, old.id
        ));
        self.reason = why;
        self.reload = Reload::Failed;
        self.target = old;
        for s in &mut self.slots {
            s.not_before = None;
        }
        let _ = now;
    }

    /// A signal, in order of arrival.
    pub fn signal(&mut self, sig: Signal, now: Instant) {
        match sig {
            Signal::SIGCHLD => {}
            Signal::SIGHUP => self.hup(now),
            Signal::SIGTERM | Signal::SIGINT => {
                self.stop_all(now, Stop::Graceful, self.cfg.stop_signal)
            }
            Signal::SIGQUIT => self.stop_all(now, Stop::Fast, Signal::SIGQUIT),
            Signal::SIGTTIN if self.stop == Stop::No => {
                self.slots.push(Slot {
                    backoff: Backoff::new(self.cfg.backoff_max),
                    not_before: None,
                });
                self.info(format_args!("TTIN: {} workers", self.slots.len()));
            }
            Signal::SIGTTOU if self.stop == Stop::No => {
                if self.slots.len() > 1 {
                    self.slots.pop();
                    self.info(format_args!("TTOU: {} workers", self.slots.len()));
                } else {
                    self.info(format_args!("TTOU: already at 1 worker"));
                }
            }
            Signal::SIGTTIN | Signal::SIGTTOU => {}
            other => {
                for w in &self.workers {
                    child::signal(w.pid, other);
                }
            }
        }
    }

    /// HUP: a new generation, pinned to what the symlink names now.
    fn hup(&mut self, now: Instant) {
        if self.stop != Stop::No {
            self.info(format_args!("HUP while stopping: ignored"));
            return;
        }
        self.newest += 1;
        let id = self.newest;
        let release = match &self.cfg.pin {
            None => None,
            Some(p) => match resolve(p) {
                Ok(dir) => Some(dir),
                Err(e) => {
                    let why = format!("unable to resolve {}: {e}", p.display());
                    TOOL.warn(format_args!(
                        "reload to generation {id} failed: {why}; generation {} keeps serving",
                        self.target.id
                    ));
                    self.reason = why;
                    self.reload = Reload::Failed;
                    return;
                }
            },
        };
        if let Reload::Running { .. } = self.reload {
            self.info(format_args!(
                "HUP during the reload to generation {}: starting over",
                self.target.id
            ));
        }
        self.target = Generation { id, release };
        self.reload = Reload::Running { since: now };
        self.reason.clear();
        for s in &mut self.slots {
            *s = Slot {
                backoff: Backoff::new(self.cfg.backoff_max),
                not_before: None,
            };
        }
        self.info(format_args!(
            "HUP: generation {id}: starting {} workers{}",
            self.slots.len(),
            self.release_text()
        ));
    }

    fn stop_all(&mut self, now: Instant, how: Stop, sig: Signal) {
        if self.stop == Stop::Fast || self.stop == how {
            return;
        }
        self.info(format_args!(
            "stopping every worker: sent {}",
            signal_name(sig)
        ));
        self.stop = how;
        for w in &mut self.workers {
            if w.state != State::Stopping || how == Stop::Fast {
                w.state = State::Stopping;
                w.pipe = None;
                w.kill_at.get_or_insert(now + self.cfg.drain);
                child::signal(w.pid, sig);
                if w.held {
                    w.held = false;
                    child::signal(w.pid, Signal::SIGCONT);
                }
            }
        }
    }

    /// Reap every ended child; account for the workers among them.
    pub fn reap(&mut self, now: Instant) {
        for (pid, status) in child::reap() {
            let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
                continue;
            };
            let Some(ended) = Ended::from_status(&status) else {
                continue;
            };
            let w = &self.workers[i];
            let ran = now.saturating_duration_since(w.started);
            let what = format!("{} {ended} after {}", w.name(), secs(ran));
            match w.state {
                State::Stopping => self.info(format_args!("{what}")),
                State::Ready if ended.clean() => {
                    // A worker that finished its work (e.g. max requests): replace it at once.
                    let slot = w.slot;
                    if w.generation == self.target.id && slot < self.slots.len() {
                        self.slots[slot].backoff.succeeded();
                        self.info(format_args!("{what}; replacing it"));
                    } else {
                        self.info(format_args!("{what}"));
                    }
                }
                State::Ready => self.failed(i, now, what),
                State::Starting => self.failed(i, now, format!("{what} before it was ready")),
            }
            self.workers.remove(i);
        }
    }

    pub fn summary(&self) -> Summary {
        let serving = self.shown_serving();
        Summary {
            newest: self.newest,
            serving: serving.map(|g| g.id).unwrap_or(0),
            ready: self.ready_count(),
            failed: self.reload == Reload::Failed,
            reason: self.reason.clone(),
            release: serving
                .and_then(|g| g.release.as_ref())
                .map(|r| r.display().to_string())
                .unwrap_or_default(),
            stopping: self.stop != Stop::No,
        }
    }

    /// Replace the status file (by rename) when the state changed.
    pub fn write_status(&mut self) {
        let Some(path) = self.cfg.status.clone() else {
            return;
        };
        let text = self.status_text();
        if text == self.last_status {
            return;
        }
        let mut tmp = path.clone().into_os_string();
        tmp.push(format!(".tmp.{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let res = std::fs::File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|_| std::fs::rename(&tmp, &path));
        match res {
            Ok(()) => {
                self.last_status = text;
                self.status_warned = false;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                if !self.status_warned {
                    TOOL.warn(format_args!(
                        "unable to write {}: {}",
                        path.display(),
                        unixtool::io_reason(&e)
                    ));
                    self.status_warned = true;
                }
            }
        }
    }

    fn status_text(&self) -> String {
        let mut s = String::new();
        let state = match self.stop {
            Stop::No => "running",
            _ if self.workers.is_empty() => "stopped",
            _ => "stopping",
        };
        let reload = match self.reload {
            Reload::None => "none",
            Reload::Running { .. } => "running",
            Reload::Ok => "ok",
            Reload::Failed => "failed",
        };
        let serving = self.shown_serving();
        let release = serving
            .and_then(|g| g.release.as_ref())
            .map(|r| r.display().to_string())
            .unwrap_or_default();
        let _ = writeln!(s, "pid={}", std::process::id());
        let _ = writeln!(s, "state={state}");
        let _ = writeln!(s, "generation={}", self.newest);
        let _ = writeln!(
            s,
            "serving_generation={}",
            serving.map(|g| g.id).unwrap_or(0)
        );
        let _ = writeln!(s, "workers={}", self.slots.len());
        let _ = writeln!(s, "ready={}", self.ready_count());
        let _ = writeln!(s, "reload={reload}");
        let _ = writeln!(s, "reason={}", self.reason.replace('\n', " "));
        let _ = writeln!(s, "release={release}");
        let _ = writeln!(s, "mode={}", self.cfg.mode.name());
        let _ = writeln!(s, "held={}", self.held_count());
        let mut ws: Vec<&Worker> = self.workers.iter().collect();
        ws.sort_by_key(|w| (w.slot, w.generation));
        for w in ws {
            let st = match w.state {
                State::Starting => "starting",
                State::Ready if w.held => "held",
                State::Ready => "ready",
                State::Stopping => "stopping",
            };
            let _ = writeln!(s, "worker={} {} {} {st}", w.slot, w.generation, w.pid);
        }
        s
    }
}
