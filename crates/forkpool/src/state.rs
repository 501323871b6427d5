//! The hand-over of an in-place upgrade (upgrade.rs) as one value, a
//! [`Snapshot`], and its text: built by the hub (pool.rs, `Pool::snapshot`),
//! written here by [`write`], checked by the new program in check mode,
//! read back by [`read`] and adopted by the hub (`Pool::adopt`).
//! The descriptors kept across the exec are [`Snapshot::kept_fds`], from the
//! same value. The format is unixtool::reexec's: a first line
//! `forkpool-state VERSION`, one record a line (`KIND key=value ...`), `end`.
//!
//! Records, in order: `clock` (CLOCK_MONOTONIC when written, so times are put
//! back exactly), `pool`, `generation` (role target, serving, accepting,
//! parked), `verify` (the verified switch's stage, issue 26),
//! `slot` (one per slot, in order), `worker` (one per worker: the policy's
//! fields and the descriptors of its process), `notify`, `upgrade`.
//! Instants are microseconds from the moment of writing.
//!
//! The options are not in it: the new image reads the same command line.
//!
//! Every struct of the state is taken apart field by field in [`write`] and
//! built whole in [`read`], so a field added to Policy, Worker, Slot,
//! WorkerLife or PoolLife does not compile until it is handed over (write it
//! as one more `(key, value)` of its record, take it with
//! `r.take`/`r.num`/`r.instant`, and bump [`VERSION`]: a build that does not
//! know the key refuses the state, its check fails and the old image keeps
//! running) or marked in both places as starting fresh, with why.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use unixtool::backoff::Backoff;
use unixtool::reexec::{clock_base, instant_field, path_text, Record, StateText};
use unixtool::supervise::KillDeadline;

use crate::generation::{Generation, Reload, Stop};
use crate::lifecycle::{Counts, PoolLife, Recycle, WorkerLife};
use crate::policy::Policy;
use crate::reloads::ReloadCounts;
use crate::settings::Settings;
use crate::two_phase::{Stage, TwoPhase};
use crate::verify::{Verify, VerifyStage};
use crate::worker::{Slot, Why, Worker, WorkerId, WorkerPhase};

pub const MAGIC: &str = "forkpool-state";
/// The version of the format this build writes and reads.
/// 2: the reload counts (reloads.rs); 3: the two-phase `control` record;
/// 4: the hand-over ends (issue 30); 5: `verify`, the parked generation, a
/// worker's `parked` (issue 26).
pub const VERSION: u32 = 5;

/// The descriptors of worker `id`'s process, as handed over (its pid and
/// start are the policy's [`Worker`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandedProcess {
    pub id: WorkerId,
    pub pipe: Option<RawFd>,
    pub hold: Option<RawFd>,
    /// `--handoff`: forkpool's end of the worker's socket pair.
    pub handoff: Option<RawFd>,
}

/// Everything one image hands the next.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub policy: Policy,
    pub procs: Vec<HandedProcess>,
    /// `--notify`: the socket's descriptor and name.
    pub notify: Option<(RawFd, String)>,
    /// The guard's write end and pid (groups.rs), when one runs.
    pub guard: Option<(RawFd, i32)>,
    /// `-C`: the control FIFO's descriptor, kept across the exec (a line
    /// written meanwhile waits in it; the path is never opened again).
    pub control: Option<RawFd>,
    pub upgrades: u64,
    pub upgrade_failures: u64,
    /// The program the next image runs.
    pub exe: PathBuf,
}

impl Snapshot {
    /// The descriptors the next image needs: the notification socket, the
    /// guard, the workers' readiness pipes and hold descriptors.
    pub fn kept_fds(&self) -> Vec<RawFd> {
        let mut keep: Vec<RawFd> = self.notify.iter().map(|(fd, _)| *fd).collect();
        keep.extend(self.guard.map(|(fd, _)| fd));
        keep.extend(self.control);
        for p in &self.procs {
            // Taken apart whole: a descriptor added is kept, or this does
            // not compile.
            let HandedProcess {
                id: _,
                pipe,
                hold,
                handoff,
            } = p;
            keep.extend(*pipe);
            keep.extend(*hold);
            keep.extend(*handoff);
        }
        keep
    }
}

fn fd_field(fd: Option<RawFd>) -> String {
    fd.map(|f| f.to_string()).unwrap_or_else(|| "-".into())
}

fn generation_fields(role: &str, g: &Generation) -> Result<Vec<(&'static str, String)>, String> {
    let Generation { id, release } = g;
    let release = match release {
        Some(r) => path_text(r)?,
        None => String::new(),
    };
    Ok(vec![
        ("role", role.to_string()),
        ("id", id.to_string()),
        ("release", release),
    ])
}

const PHASES: [(&str, WorkerPhase); 3] = [
    ("starting", WorkerPhase::Starting),
    ("ready", WorkerPhase::Ready),
    ("stopping", WorkerPhase::Stopping),
];

const WHYS: [(&str, Option<Why>); 10] = [
    ("-", None),
    ("replaced", Some(Why::Replaced)),
    ("not-needed", Some(Why::NotNeeded)),
    ("failed", Some(Why::Failed)),
    ("stopping", Some(Why::Stopping)),
    ("recycled-age", Some(Why::Recycled(Recycle::Age))),
    ("recycled-memory", Some(Why::Recycled(Recycle::Memory))),
    ("recycled-asked", Some(Why::Recycled(Recycle::Asked))),
    ("recycled-watchdog", Some(Why::Recycled(Recycle::Watchdog))),
    ("watchdog", Some(Why::Watchdog)),
];

const VERIFY_STAGES: [(&str, VerifyStage); 4] = [
    ("none", VerifyStage::None),
    ("pending", VerifyStage::Pending),
    ("confirmed", VerifyStage::Confirmed),
    ("reverted", VerifyStage::Reverted),
];

const STAGES: [(&str, Stage); 7] = [
    ("none", Stage::None),
    ("preparing", Stage::Preparing),
    ("prepared", Stage::Prepared),
    ("committing", Stage::Committing),
    ("committed", Stage::Committed),
    ("aborted", Stage::Aborted),
    ("failed", Stage::Failed),
];

const STOPS: [(&str, Stop); 3] = [
    ("no", Stop::No),
    ("graceful", Stop::Graceful),
    ("fast", Stop::Fast),
];

/// The name of `v` in a table of names.
fn name_of<T: PartialEq>(names: &[(&'static str, T)], v: &T) -> &'static str {
    names
        .iter()
        .find(|(_, t)| t == v)
        .map(|(n, _)| *n)
        .unwrap_or("-")
}

/// A recycle reason's name, `-` for none.
fn recycle_name(r: Option<Recycle>) -> &'static str {
    r.map_or("-", Recycle::name)
}

fn recycle_of(r: &Record, key: &str, v: &str) -> Result<Option<Recycle>, String> {
    let mut names: Vec<(&str, Option<Recycle>)> = vec![("-", None)];
    names.extend(Recycle::ALL.iter().map(|x| (x.name(), Some(*x))));
    one_of(r, key, v, &names)
}

fn counts_of(key: &str, v: &str) -> Result<Counts, String> {
    Counts::from_list(v).ok_or_else(|| format!("{key}={v:?} is not four counts"))
}

/// The snapshot as text, at `now`. Err: something cannot be handed over.
pub fn write(snapshot: &Snapshot, now: Instant) -> Result<String, String> {
    let Snapshot {
        policy,
        procs,
        notify,
        guard,
        control,
        upgrades,
        upgrade_failures,
        exe,
    } = snapshot;
    let Policy {
        settings: _, // the new image reads the same command line
        workers,
        slots,
        target,
        serving,
        accepting,
        switch_since,
        newest,
        next_worker,
        reload,
        reason,
        stop,
        queued: _, // empty between events (Policy::handle takes them)
        life,
        two_phase,
        verify,
        reloads,
    } = policy;
    let TwoPhase {
        control: _, // -C and --prepare-timeout: the same command line
        timeout: _,
        stage,
        generation: tp_generation,
        // An upgrade waits while a prepare is open (the hub's upgrade_due):
        // these are the open prepare's and start fresh.
        expires: _,
        commit_at: _,
        wall_ref: _,
        reload_before: _,
        commit_wall,
        released_wall,
        commands,
        last,
    } = two_phase;
    let Verify {
        stage: verify_stage,
        generation: verify_generation,
        parked,
        deadline: verify_deadline,
        // Never under way at an upgrade: it lies inside a cutover's reload,
        // which USR2 waits out (verify.rs).
        parking: _,
    } = verify;
    let PoolLife {
        rng,
        totals,
        slots: slot_counts,
    } = life;
    let mut s = StateText::new(MAGIC, VERSION);
    s.clock();
    let (reload, since) = match reload {
        Reload::None => ("none", None),
        Reload::Running { since } => ("running", Some(*since)),
        Reload::Ok => ("ok", None),
        Reload::Failed => ("failed", None),
    };
    s.record(
        "pool",
        &[
            ("newest", newest.to_string()),
            ("next_worker", next_worker.to_string()),
            ("reload", reload.to_string()),
            ("reload_since", instant_field(since, now)),
            ("reason", reason.clone()),
            ("stop", name_of(&STOPS, stop).to_string()),
            ("switch_since", instant_field(*switch_since, now)),
            ("rng", rng.to_string()),
            ("recycled", totals.list()),
            ("reloads", reloads.list()),
        ],
    );
    s.record("generation", &generation_fields("target", target)?);
    if let Some(g) = serving {
        s.record("generation", &generation_fields("serving", g)?);
    }
    s.record("generation", &generation_fields("accepting", accepting)?);
    if let Some(g) = parked {
        s.record("generation", &generation_fields("parked", g)?);
    }
    s.record(
        "verify",
        &[
            ("stage", name_of(&VERIFY_STAGES, verify_stage).to_string()),
            ("generation", verify_generation.to_string()),
            ("deadline", instant_field(*verify_deadline, now)),
        ],
    );
    for slot in slots {
        let Slot {
            backoff,
            not_before,
        } = slot;
        s.record(
            "slot",
            &[
                ("failures", backoff.failures().to_string()),
                ("not_before", instant_field(*not_before, now)),
            ],
        );
    }
    for counts in slot_counts {
        s.record("slot_recycled", &[("counts", counts.list())]);
    }
    for w in workers {
        let Worker {
            id,
            pid,
            slot,
            generation,
            phase,
            started,
            kill_at,
            held,
            parked,
            retired,
            life,
        } = w;
        let WorkerLife {
            max_age,
            recycle,
            ping_due,
            over,
            stopped_accepting,
        } = life;
        let (pipe, hold, handoff) = match procs.iter().find(|p| p.id == *id) {
            Some(HandedProcess {
                id: _,
                pipe,
                hold,
                handoff,
            }) => (*pipe, *hold, *handoff),
            None => (None, None, None),
        };
        s.record(
            "worker",
            &[
                ("id", id.0.to_string()),
                ("pid", pid.to_string()),
                ("slot", slot.to_string()),
                ("generation", generation.to_string()),
                ("phase", name_of(&PHASES, phase).to_string()),
                ("started", instant_field(Some(*started), now)),
                ("kill_at", instant_field(kill_at.0, now)),
                ("held", (*held as u8).to_string()),
                ("parked", (*parked as u8).to_string()),
                ("retired", name_of(&WHYS, retired).to_string()),
                (
                    "max_age_ms",
                    max_age.map_or("-".to_string(), |d| d.as_millis().to_string()),
                ),
                ("recycle", recycle_name(*recycle).to_string()),
                ("ping_due", instant_field(*ping_due, now)),
                ("over", over.to_string()),
                ("stopped_accepting", (*stopped_accepting as u8).to_string()),
                ("pipe", fd_field(pipe)),
                ("hold", fd_field(hold)),
                ("handoff", fd_field(handoff)),
            ],
        );
    }
    match notify {
        Some((fd, name)) => s.record("notify", &[("fd", fd.to_string()), ("name", name.clone())]),
        None => s.record("notify", &[("fd", "-".into()), ("name", String::new())]),
    }
    s.record(
        "guard",
        &[
            ("fd", fd_field(guard.map(|(fd, _)| fd))),
            ("pid", guard.map_or("-".to_string(), |(_, p)| p.to_string())),
        ],
    );
    let wall = |w: &Option<f64>| w.map_or("-".to_string(), |w| w.to_string());
    s.record(
        "control",
        &[
            ("fd", fd_field(*control)),
            ("stage", stage.name().to_string()),
            ("generation", tp_generation.to_string()),
            ("commands", commands.to_string()),
            ("last", last.clone()),
            ("commit_wall", wall(commit_wall)),
            ("released_wall", wall(released_wall)),
        ],
    );
    s.record(
        "upgrade",
        &[
            ("count", upgrades.to_string()),
            ("failures", upgrade_failures.to_string()),
            ("exe", path_text(exe)?),
        ],
    );
    Ok(s.finish())
}

fn generation(r: &mut Record) -> Result<Generation, String> {
    let id = r.num("id")?;
    let release = r.take("release")?;
    Ok(Generation {
        id,
        release: (!release.is_empty()).then(|| PathBuf::from(release)),
    })
}

fn one_of<T: Copy>(r: &Record, key: &str, v: &str, names: &[(&str, T)]) -> Result<T, String> {
    names
        .iter()
        .find(|(n, _)| *n == v)
        .map(|(_, t)| *t)
        .ok_or_else(|| format!("{}: {key}={v:?} is not known", r.kind))
}

/// Read a state written by [`write`] (by this build or another one with the
/// same [`VERSION`]) into a snapshot whose policy has `settings`, at `now`.
/// Nothing is adopted here: the check mode runs this alone.
pub fn read(text: &str, settings: Settings, now: Instant) -> Result<Snapshot, String> {
    let mut records = StateText::parse(text, MAGIC, VERSION)?;
    // The time between the write and now (the check, the exec): every
    // instant is put back against the moment of writing.
    let base = match records.first_mut() {
        Some(r) if r.kind == "clock" => {
            let base = clock_base(r, now)?;
            records.remove(0).done()?;
            base
        }
        _ => now,
    };
    read_records(records, settings, base)
}

/// The records after `clock`, their instants against `base`.
fn read_records(
    records: Vec<Record>,
    settings: Settings,
    base: Instant,
) -> Result<Snapshot, String> {
    let mut workers = Vec::new();
    let mut slots = Vec::new();
    let mut procs = Vec::new();
    let mut notify = None;
    let mut guard = None;
    let mut control = None;
    let mut two_phase = None;
    let mut upgrade = None;
    let mut serving = None;
    let mut target = None;
    let mut accepting = None;
    let mut parked = None;
    let mut verify = None;
    let mut pool = None;
    let mut slot_counts = Vec::new();
    for mut r in records {
        match r.kind.as_str() {
            "clock" => return Err("clock: not the first record".to_string()),
            "pool" => {
                let newest = r.num("newest")?;
                let next_worker = r.num("next_worker")?;
                let reload = r.take("reload")?;
                let since = r.instant("reload_since", base)?;
                let reload = match (reload.as_str(), since) {
                    ("none", _) => Reload::None,
                    ("ok", _) => Reload::Ok,
                    ("failed", _) => Reload::Failed,
                    ("running", Some(since)) => Reload::Running { since },
                    _ => return Err(format!("pool: reload={reload:?} is not known")),
                };
                let reason = r.take("reason")?;
                let stop = r.take("stop")?;
                let stop = one_of(&r, "stop", &stop, &STOPS)?;
                let switch_since = r.instant("switch_since", base)?;
                let rng = r.num("rng")?;
                let totals = counts_of("recycled", &r.take("recycled")?)?;
                let reloads = r.take("reloads")?;
                let reloads = ReloadCounts::from_list(&reloads)
                    .ok_or_else(|| format!("pool: reloads={reloads:?} is not counts"))?;
                pool = Some((
                    newest,
                    next_worker,
                    reload,
                    reason,
                    stop,
                    switch_since,
                    rng,
                    totals,
                    reloads,
                ));
            }
            "generation" => {
                let role = r.take("role")?;
                let g = generation(&mut r)?;
                match role.as_str() {
                    "target" => target = Some(g),
                    "serving" => serving = Some(g),
                    "accepting" => accepting = Some(g),
                    "parked" => parked = Some(g),
                    _ => return Err(format!("generation: role={role:?} is not known")),
                }
            }
            "verify" => {
                let stage = r.take("stage")?;
                verify = Some((
                    one_of(&r, "stage", &stage, &VERIFY_STAGES)?,
                    r.num("generation")?,
                    r.instant("deadline", base)?,
                ));
            }
            "slot_recycled" => {
                let counts = counts_of("counts", &r.take("counts")?)?;
                slot_counts.push(counts);
            }
            "slot" => {
                let failures = r.num("failures")?;
                slots.push(Slot {
                    backoff: Backoff::restored(settings.backoff_max, failures),
                    not_before: r.instant("not_before", base)?,
                });
            }
            "worker" => {
                let id = WorkerId(r.num("id")?);
                let pid: i32 = r.num("pid")?;
                let phase = r.take("phase")?;
                let phase = one_of(&r, "phase", &phase, &PHASES)?;
                let retired = r.take("retired")?;
                let retired = one_of(&r, "retired", &retired, &WHYS)?;
                let life_recycle = r.take("recycle")?;
                let life = WorkerLife {
                    max_age: r.opt_num::<u64>("max_age_ms")?.map(Duration::from_millis),
                    recycle: recycle_of(&r, "recycle", &life_recycle)?,
                    ping_due: r.instant("ping_due", base)?,
                    over: r.num("over")?,
                    stopped_accepting: r.num::<u8>("stopped_accepting")? == 1,
                };
                let started = r
                    .instant("started", base)?
                    .ok_or_else(|| "worker: no start".to_string())?;
                let w = Worker {
                    id,
                    pid,
                    slot: r.num("slot")?,
                    generation: r.num("generation")?,
                    phase,
                    started,
                    kill_at: KillDeadline(r.instant("kill_at", base)?),
                    held: r.num::<u8>("held")? != 0,
                    parked: r.num::<u8>("parked")? != 0,
                    retired,
                    life,
                };
                let pipe = r.opt_num("pipe")?;
                let hold = r.opt_num("hold")?;
                let handoff = r.opt_num("handoff")?;
                if pid <= 0 {
                    return Err(format!("worker: pid {pid}"));
                }
                procs.push(HandedProcess {
                    id,
                    pipe,
                    hold,
                    handoff,
                });
                workers.push(w);
            }
            "notify" => {
                let fd: Option<RawFd> = r.opt_num("fd")?;
                let name = r.take("name")?;
                notify = fd.map(|fd| (fd, name));
            }
            "guard" => {
                let fd: Option<RawFd> = r.opt_num("fd")?;
                let pid: Option<i32> = r.opt_num("pid")?;
                guard = fd.zip(pid);
            }
            "control" => {
                control = r.opt_num("fd")?;
                let stage = r.take("stage")?;
                let stage = one_of(&r, "stage", &stage, &STAGES)?;
                two_phase = Some(TwoPhase {
                    stage,
                    generation: r.num("generation")?,
                    commands: r.num("commands")?,
                    last: r.take("last")?,
                    commit_wall: r.opt_num("commit_wall")?,
                    released_wall: r.opt_num("released_wall")?,
                    ..TwoPhase::default()
                });
            }
            "upgrade" => {
                upgrade = Some((
                    r.num("count")?,
                    r.num("failures")?,
                    PathBuf::from(r.take("exe")?),
                ));
            }
            other => return Err(format!("unknown record {other}")),
        }
        r.done()?;
    }
    let (
        Some(target),
        Some(accepting),
        Some((upgrades, upgrade_failures, exe)),
        Some((newest, next_worker, reload, reason, stop, switch_since, rng, totals, reloads)),
        Some((verify_stage, verify_generation, verify_deadline)),
    ) = (target, accepting, upgrade, pool, verify)
    else {
        return Err(
            "the state lacks a pool, target, accepting, verify or upgrade record".to_string(),
        );
    };
    if slots.is_empty() {
        return Err("the state has no slot".to_string());
    }
    if settings.ready.notify != notify.is_some() {
        return Err("--notify differs between the state and the command line".to_string());
    }
    let policy = Policy {
        settings,
        workers,
        slots,
        target,
        serving,
        accepting,
        switch_since,
        newest,
        next_worker,
        reload,
        reason,
        stop,
        queued: Vec::new(),
        life: PoolLife {
            rng,
            totals,
            slots: slot_counts,
        },
        // Handed over but for the open prepare's fields (an upgrade waits
        // while one is open); Pool::open_control sets `control` and `timeout`.
        two_phase: two_phase.ok_or("the state lacks a control record")?,
        // Handed over: a USR2 while a switch awaits confirm or revert keeps
        // the parked workers, and the deadline, as they were.
        verify: Verify {
            stage: verify_stage,
            generation: verify_generation,
            parked,
            deadline: verify_deadline,
            parking: None,
        },
        reloads,
    };
    Ok(Snapshot {
        policy,
        procs,
        notify,
        guard,
        control,
        upgrades,
        upgrade_failures,
        exe,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Action, Event};
    use crate::settings::Mode;
    use nix::sys::signal::Signal;
    use unixtool::readiness;

    fn settings() -> Settings {
        Settings {
            life: Default::default(),
            mode: Mode::Cutover,
            stop_signal: Signal::SIGTERM,
            drain: Duration::from_secs(10),
            ready: readiness::Options {
                fd: Some(3),
                deadline: Some(Duration::from_secs(30)),
                ..Default::default()
            },
            backoff_max: Duration::from_secs(8),
            confirm_timeout: Some(Duration::from_secs(5)),
        }
    }

    /// A pool of three workers mid-reload (a HUP with a release that has
    /// spaces and `=` in its name), with fake pids, written at `now`.
    fn pool(now: Instant) -> Snapshot {
        let t0 = now - Duration::from_secs(5);
        let r1 = Some(PathBuf::from("/srv/releases/r 1=x"));
        let (mut p, _) = Policy::new(settings(), r1, 3);
        let mut procs = Vec::new();
        let mut pid = 100;
        let mut feed = |p: &mut Policy, actions: Vec<Action>, procs: &mut Vec<HandedProcess>| {
            for a in actions {
                if let Action::Start { worker, .. } = a {
                    pid += 1;
                    let _ = p.handle(t0, Event::Started { worker, pid });
                    procs.push(HandedProcess {
                        id: worker,
                        pipe: None,
                        hold: None,
                        handoff: None,
                    });
                }
            }
        };
        let a = p.handle(t0, Event::Step);
        feed(&mut p, a, &mut procs);
        let ids: Vec<WorkerId> = p.workers.iter().map(|w| w.id).collect();
        let _ = p.handle(t0 + Duration::from_millis(200), Event::Time { ready: &ids });
        let _ = p.handle(t0 + Duration::from_millis(200), Event::Step);
        let _ = p.handle(
            t0 + Duration::from_secs(4),
            Event::Hup {
                resolve: &mut || Ok(Some(PathBuf::from("/srv/releases/r2"))),
            },
        );
        let a = p.handle(t0 + Duration::from_secs(4), Event::Step);
        feed(&mut p, a, &mut procs);
        // Lifecycle state (lifecycle.rs) that must survive an upgrade.
        p.life.rng = 0xfeed;
        p.life.totals.add(crate::lifecycle::Recycle::Age);
        p.life.totals.add(crate::lifecycle::Recycle::Watchdog);
        p.reloads.ok(Duration::from_millis(80));
        p.reloads.failed();
        p.life.slots = vec![Counts::default(), Counts::from_list("2,0,1,0").unwrap()];
        p.workers[0].life.max_age = Some(Duration::from_millis(1900));
        p.workers[0].life.recycle = Some(crate::lifecycle::Recycle::Memory);
        p.workers[0].life.ping_due = Some(t0 + Duration::from_secs(5));
        p.workers[0].life.over = 2;
        p.workers[0].life.stopped_accepting = true;
        p.workers[1].retired = Some(Why::Recycled(crate::lifecycle::Recycle::Asked));
        Snapshot {
            policy: p,
            procs,
            notify: None,
            guard: None,
            control: None,
            upgrades: 7,
            upgrade_failures: 0,
            exe: PathBuf::from("/usr/bin/forkpool"),
        }
    }

    #[test]
    fn a_state_reads_back_as_it_was_written() {
        let now = Instant::now();
        let pool = pool(now);
        let text = write(&pool, now).unwrap();
        let h = read(&text, settings(), now).unwrap();
        // The status file's text covers every key a reader sees.
        assert_eq!(
            crate::status::text(&h.policy),
            crate::status::text(&pool.policy)
        );
        let (a, b) = (&pool.policy, &h.policy);
        assert_eq!(a.workers.len(), 6);
        for (x, y) in a.workers.iter().zip(&b.workers) {
            assert_eq!(
                (
                    x.id,
                    x.pid,
                    x.slot,
                    x.generation,
                    x.phase,
                    x.held,
                    x.retired
                ),
                (
                    y.id,
                    y.pid,
                    y.slot,
                    y.generation,
                    y.phase,
                    y.held,
                    y.retired
                )
            );
            // Within the time the test took between write and read.
            let d = x.started.max(y.started) - x.started.min(y.started);
            assert!(d < Duration::from_millis(50), "{d:?}");
        }
        assert_eq!(
            (a.target.clone(), a.serving.clone()),
            (b.target.clone(), b.serving.clone())
        );
        assert_eq!(a.accepting, b.accepting);
        assert!(matches!(b.reload, Reload::Running { .. }));
        assert_eq!((a.newest, a.next_worker), (b.newest, b.next_worker));
        assert_eq!(h.upgrades, 7);
        assert_eq!(h.procs.len(), 6);
        // lifecycle: counts, random state, and each worker's marks
        assert_eq!((a.life.rng, &a.life.totals), (b.life.rng, &b.life.totals));
        assert_eq!((a.reloads.ok, a.reloads.failed), (1, 1));
        assert_eq!(a.reloads, b.reloads);
        assert_eq!(a.life.slots, b.life.slots);
        let (x, y) = (&a.workers[0].life, &b.workers[0].life);
        assert_eq!(
            (x.max_age, x.recycle, x.over, x.stopped_accepting),
            (y.max_age, y.recycle, y.over, y.stopped_accepting)
        );
        assert!(y.ping_due.is_some());
        assert_eq!(a.workers[1].retired, b.workers[1].retired);
        assert_eq!(h.exe, PathBuf::from("/usr/bin/forkpool"));
    }

    #[test]
    fn another_version_an_unknown_key_or_a_cut_state_is_refused() {
        let now = Instant::now();
        let text = write(&pool(now), now).unwrap();
        let (this, next) = (
            format!("{MAGIC} {VERSION}"),
            format!("{MAGIC} {}", VERSION + 1),
        );
        let other = text.replacen(&this, &next, 1);
        let e = read(&other, settings(), now).err().unwrap();
        assert!(e.contains(&format!("state version {}", VERSION + 1)), "{e}");
        let extra = text.replacen("worker id=", "worker colour=red id=", 1);
        let e = read(&extra, settings(), now).err().unwrap();
        assert!(e.contains("unknown key colour"), "{e}");
        let cut = &text[..text.len() / 2];
        assert!(read(cut, settings(), now).is_err());
        let missing = text.replace(" slot=", " slut=");
        assert!(read(&missing, settings(), now).is_err());
    }

    /// Every field of the snapshot set to something other than its fresh
    /// value, written and read back: the same value, but for what is marked
    /// as starting fresh. (That no field is forgotten is the compiler's
    /// part: [`write`] takes every struct apart without `..`, [`read`]
    /// builds each whole.)
    #[test]
    fn a_fully_populated_snapshot_reads_back_whole() {
        let now = Instant::now();
        let t0 = now - Duration::from_secs(5);
        let mut s = pool(now);
        let p = &mut s.policy;
        p.serving = Some(Generation {
            id: 1,
            release: Some(PathBuf::from("/srv/releases/r 1=x")),
        });
        p.switch_since = Some(t0 + Duration::from_millis(4100));
        p.reason = "a reason with spaces = and %".to_string();
        p.stop = Stop::Graceful;
        p.slots[1].backoff = Backoff::restored(settings().backoff_max, 3);
        p.slots[2].not_before = Some(now + Duration::from_millis(750));
        let w = &mut p.workers[2];
        w.phase = WorkerPhase::Stopping;
        w.kill_at = KillDeadline(Some(now + Duration::from_secs(9)));
        w.held = true;
        w.retired = Some(Why::Watchdog);
        p.workers[1].parked = true;
        p.verify = Verify {
            stage: VerifyStage::Pending,
            generation: 2,
            parked: Some(Generation {
                id: 1,
                release: Some(PathBuf::from("/srv/releases/r 1=x")),
            }),
            deadline: Some(now + Duration::from_millis(2500)),
            parking: None,
        };
        p.two_phase.stage = crate::two_phase::Stage::Committed;
        p.two_phase.commands = 4;
        p.two_phase.generation = 2;
        p.two_phase.last = "commit accepted".to_string();
        p.two_phase.commit_wall = Some(1764245000.25);
        p.two_phase.released_wall = Some(1764245000.5);
        for (i, h) in s.procs.iter_mut().enumerate() {
            h.pipe = Some(10 + i as RawFd);
            h.hold = (i % 2 == 0).then_some(40 + i as RawFd);
            h.handoff = (i % 2 == 1).then_some(70 + i as RawFd);
        }
        s.notify = Some((5, "@forkpool-notify".to_string()));
        s.guard = Some((7, 4321));
        s.control = Some(8);
        s.upgrade_failures = 3;
        let text = write(&s, now).unwrap();
        // Read against the moment of writing itself: instants come back exact.
        let mut records = StateText::parse(&text, MAGIC, VERSION).unwrap();
        assert_eq!(records.remove(0).kind, "clock");
        let mut notify_settings = settings();
        notify_settings.ready.notify = true;
        let back = read_records(records, notify_settings.clone(), now).unwrap();
        let mut want = s.clone();
        want.policy.settings = notify_settings;
        // The two-phase state is handed over (item 12 of issue 24), but for
        // the open prepare's fields and what the command line gives.
        assert_eq!(format!("{back:#?}"), format!("{want:#?}"));
        assert_eq!(back.kept_fds(), s.kept_fds());
        assert_eq!(
            s.kept_fds(),
            vec![5, 7, 8, 10, 40, 11, 71, 12, 42, 13, 73, 14, 44, 15, 75]
        );
    }
}
