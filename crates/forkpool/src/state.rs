//! The whole state of the pool as text, for an in-place upgrade (upgrade.rs):
//! written by the old image, checked by the new program in check mode, read
//! by the new image. The format is unixtool::reexec's: a first line
//! `forkpool-state VERSION`, one record a line (`KIND key=value ...`), `end`.
//!
//! Records, in order: `clock` (CLOCK_MONOTONIC when written, so times are put
//! back exactly), `pool`, `generation` (role target, serving, accepting),
//! `slot` (one per slot, in order), `worker` (one per worker: the policy's
//! fields and the descriptors of its process), `notify`, `upgrade`.
//! Instants are microseconds from the moment of writing.
//!
//! The options are not in it: the new image reads the same command line.
//!
//! Adding a field (a new field of Worker, Slot, Policy): write it in
//! [`write`] as one more `(key, value)` of its record, take it in [`read`]
//! with `r.take`/`r.num`/`r.instant`, and bump [`VERSION`]: a build that
//! does not know the key refuses the state (its check fails, the old image
//! keeps running), and a build that expects it refuses an older state.

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use unixtool::backoff::Backoff;
use unixtool::reexec::{instant_field, path_text, Record, StateText};
use unixtool::supervise::KillDeadline;
use unixtool::upstream::monotonic_usec;

use crate::lifecycle::{Counts, Recycle, WorkerLife};
use crate::policy::{Generation, Phase, Policy, Reload, Settings, Slot, Stop, Why, WorkerId};
use crate::pool::Pool;

pub const MAGIC: &str = "forkpool-state";
/// The version of the format this build writes and reads.
pub const VERSION: u32 = 2;

/// A worker process as handed over: its pid, its descriptors.
pub struct HandedProcess {
    pub id: WorkerId,
    pub pid: i32,
    pub started: Instant,
    pub pipe: Option<RawFd>,
    pub hold: Option<RawFd>,
}

/// What the new image gets from a state.
pub struct Handed {
    pub policy: Policy,
    pub procs: Vec<HandedProcess>,
    /// `--notify`: the socket's descriptor and name.
    pub notify: Option<(RawFd, String)>,
    /// The guard's write end (groups.rs), when one runs.
    pub guard: Option<RawFd>,
    pub upgrades: u64,
    pub upgrade_failures: u64,
    pub exe: PathBuf,
}

fn fd_field(fd: Option<RawFd>) -> String {
    fd.map(|f| f.to_string()).unwrap_or_else(|| "-".into())
}

fn generation_fields(role: &str, g: &Generation) -> Result<Vec<(&'static str, String)>, String> {
    let release = match &g.release {
        Some(r) => path_text(r)?,
        None => String::new(),
    };
    Ok(vec![
        ("role", role.to_string()),
        ("id", g.id.to_string()),
        ("release", release),
    ])
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Starting => "starting",
        Phase::Ready => "ready",
        Phase::Stopping => "stopping",
    }
}

fn why_name(w: Option<Why>) -> &'static str {
    match w {
        None => "-",
        Some(Why::Replaced) => "replaced",
        Some(Why::NotNeeded) => "not-needed",
        Some(Why::Failed) => "failed",
        Some(Why::Stopping) => "stopping",
        Some(Why::Recycled(Recycle::Age)) => "recycled-age",
        Some(Why::Recycled(Recycle::Memory)) => "recycled-memory",
        Some(Why::Recycled(Recycle::Asked)) => "recycled-asked",
        Some(Why::Recycled(Recycle::Watchdog)) => "recycled-watchdog",
        Some(Why::Watchdog) => "watchdog",
    }
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

/// The pool's state as text, at `now`. Err: something cannot be handed over.
pub fn write(pool: &Pool, exe: &std::path::Path, now: Instant) -> Result<String, String> {
    let p = &pool.policy;
    let mut s = StateText::new(MAGIC, VERSION);
    s.record("clock", &[("monotonic_us", monotonic_usec().to_string())]);
    let (reload, since) = match &p.reload {
        Reload::None => ("none", None),
        Reload::Running { since } => ("running", Some(*since)),
        Reload::Ok => ("ok", None),
        Reload::Failed => ("failed", None),
    };
    let stop = match p.stop {
        Stop::No => "no",
        Stop::Graceful => "graceful",
        Stop::Fast => "fast",
    };
    s.record(
        "pool",
        &[
            ("newest", p.newest.to_string()),
            ("next_worker", p.next_worker.to_string()),
            ("reload", reload.to_string()),
            ("reload_since", instant_field(since, now)),
            ("reason", p.reason.clone()),
            ("stop", stop.to_string()),
            ("switch_since", instant_field(p.switch_since, now)),
            ("rng", p.life.rng.to_string()),
            ("recycled", p.life.totals.list()),
            ("reloads", p.reloads.list()),
        ],
    );
    s.record("generation", &generation_fields("target", &p.target)?);
    if let Some(g) = &p.serving {
        s.record("generation", &generation_fields("serving", g)?);
    }
    s.record("generation", &generation_fields("accepting", &p.accepting)?);
    for slot in &p.slots {
        s.record(
            "slot",
            &[
                ("failures", slot.backoff.failures().to_string()),
                ("not_before", instant_field(slot.not_before, now)),
            ],
        );
    }
    for counts in &p.life.slots {
        s.record("slot_recycled", &[("counts", counts.list())]);
    }
    for w in &p.workers {
        let proc = pool.procs.get(w.id);
        if proc.is_none() && w.pid != 0 {
            return Err(format!("worker {} has no process", w.pid));
        }
        let pipe = proc.and_then(|pr| pr.child.pipe_fd());
        let hold = proc.and_then(|pr| pr.hold.as_ref().map(std::os::fd::AsRawFd::as_raw_fd));
        s.record(
            "worker",
            &[
                ("id", w.id.0.to_string()),
                ("pid", w.pid.to_string()),
                ("slot", w.slot.to_string()),
                ("generation", w.generation.to_string()),
                ("phase", phase_name(w.phase).to_string()),
                ("started", instant_field(Some(w.started), now)),
                ("kill_at", instant_field(w.kill_at.0, now)),
                ("held", (w.held as u8).to_string()),
                ("retired", why_name(w.retired).to_string()),
                (
                    "max_age_ms",
                    w.life
                        .max_age
                        .map_or("-".to_string(), |d| d.as_millis().to_string()),
                ),
                ("recycle", recycle_name(w.life.recycle).to_string()),
                ("ping_due", instant_field(w.life.ping_due, now)),
                ("over", w.life.over.to_string()),
                (
                    "stopped_accepting",
                    (w.life.stopped_accepting as u8).to_string(),
                ),
                ("pipe", fd_field(pipe)),
                ("hold", fd_field(hold)),
            ],
        );
    }
    match &pool.notify {
        Some(n) => s.record(
            "notify",
            &[("fd", n.fd().to_string()), ("name", n.name().to_string())],
        ),
        None => s.record("notify", &[("fd", "-".into()), ("name", String::new())]),
    }
    s.record("guard", &[("fd", fd_field(pool.procs.guard_fd()))]);
    s.record(
        "upgrade",
        &[
            ("count", pool.upgrade.count.to_string()),
            ("failures", pool.upgrade.failures.to_string()),
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
/// same [`VERSION`]) into a policy with `settings`, at `now`. Nothing is
/// adopted here: the check mode runs this alone.
pub fn read(text: &str, settings: Settings, now: Instant) -> Result<Handed, String> {
    let records = StateText::parse(text, MAGIC, VERSION)?;
    let (mut policy, _) = Policy::new(settings.clone(), None, 1);
    policy.slots.clear();
    let mut procs = Vec::new();
    let mut notify = None;
    let mut guard = None;
    let mut upgrade = None;
    let mut base = now;
    let mut serving = None;
    let mut target = None;
    let mut accepting = None;
    let mut seen_pool = false;
    let mut slot_counts = Vec::new();
    for mut r in records {
        match r.kind.as_str() {
            "clock" => {
                // The time between the write and now (the check, the exec):
                // every instant is put back against the moment of writing.
                let then: u64 = r.num("monotonic_us")?;
                let ago = monotonic_usec().saturating_sub(then);
                base = now.checked_sub(Duration::from_micros(ago)).unwrap_or(now);
            }
            "pool" => {
                seen_pool = true;
                policy.newest = r.num("newest")?;
                policy.next_worker = r.num("next_worker")?;
                let reload = r.take("reload")?;
                let since = r.instant("reload_since", base)?;
                policy.reload = match (reload.as_str(), since) {
                    ("none", _) => Reload::None,
                    ("ok", _) => Reload::Ok,
                    ("failed", _) => Reload::Failed,
                    ("running", Some(since)) => Reload::Running { since },
                    _ => return Err(format!("pool: reload={reload:?} is not known")),
                };
                policy.reason = r.take("reason")?;
                let stop = r.take("stop")?;
                policy.stop = one_of(
                    &r,
                    "stop",
                    &stop,
                    &[
                        ("no", Stop::No),
                        ("graceful", Stop::Graceful),
                        ("fast", Stop::Fast),
                    ],
                )?;
                policy.switch_since = r.instant("switch_since", base)?;
                policy.life.rng = r.num("rng")?;
                policy.life.totals = counts_of("recycled", &r.take("recycled")?)?;
                let reloads = r.take("reloads")?;
                policy.reloads = crate::reloads::ReloadCounts::from_list(&reloads)
                    .ok_or_else(|| format!("pool: reloads={reloads:?} is not counts"))?;
            }
            "generation" => {
                let role = r.take("role")?;
                let g = generation(&mut r)?;
                match role.as_str() {
                    "target" => target = Some(g),
                    "serving" => serving = Some(g),
                    "accepting" => accepting = Some(g),
                    _ => return Err(format!("generation: role={role:?} is not known")),
                }
            }
            "slot_recycled" => {
                let counts = counts_of("counts", &r.take("counts")?)?;
                slot_counts.push(counts);
            }
            "slot" => {
                let failures = r.num("failures")?;
                policy.slots.push(Slot {
                    backoff: Backoff::restored(settings.backoff_max, failures),
                    not_before: r.instant("not_before", base)?,
                });
            }
            "worker" => {
                let id = WorkerId(r.num("id")?);
                let pid: i32 = r.num("pid")?;
                let phase = r.take("phase")?;
                let phase = one_of(
                    &r,
                    "phase",
                    &phase,
                    &[
                        ("starting", Phase::Starting),
                        ("ready", Phase::Ready),
                        ("stopping", Phase::Stopping),
                    ],
                )?;
                let retired = r.take("retired")?;
                let retired = one_of(
                    &r,
                    "retired",
                    &retired,
                    &[
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
                    ],
                )?;
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
                let w = crate::policy::Worker {
                    id,
                    pid,
                    slot: r.num("slot")?,
                    generation: r.num("generation")?,
                    phase,
                    started,
                    kill_at: KillDeadline(r.instant("kill_at", base)?),
                    held: r.num::<u8>("held")? != 0,
                    retired,
                    life,
                };
                let pipe = r.opt_num("pipe")?;
                let hold = r.opt_num("hold")?;
                if pid <= 0 {
                    return Err(format!("worker: pid {pid}"));
                }
                procs.push(HandedProcess {
                    id,
                    pid,
                    started,
                    pipe,
                    hold,
                });
                policy.workers.push(w);
            }
            "notify" => {
                let fd: Option<RawFd> = r.opt_num("fd")?;
                let name = r.take("name")?;
                notify = fd.map(|fd| (fd, name));
            }
            "guard" => guard = r.opt_num("fd")?,
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
    let (Some(target), Some(accepting), Some((upgrades, upgrade_failures, exe)), true) =
        (target, accepting, upgrade, seen_pool)
    else {
        return Err("the state lacks a pool, target, accepting or upgrade record".to_string());
    };
    if policy.slots.is_empty() {
        return Err("the state has no slot".to_string());
    }
    if settings.ready.notify != notify.is_some() {
        return Err("--notify differs between the state and the command line".to_string());
    }
    policy.life.slots = slot_counts;
    policy.target = target;
    policy.serving = serving;
    policy.accepting = accepting;
    Ok(Handed {
        policy,
        procs,
        notify,
        guard,
        upgrades,
        upgrade_failures,
        exe,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Action, Mode};
    use crate::pool::Config;
    use crate::workers::{Process, Processes};
    use nix::sys::signal::Signal;
    use unixtool::readiness;
    use unixtool::supervise::Child;

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
        }
    }

    /// A pool of three workers mid-reload (a HUP with a release that has
    /// spaces and `=` in its name), with fake pids, written at `now`.
    fn pool(now: Instant) -> Pool {
        let t0 = now - Duration::from_secs(5);
        let r1 = Some(PathBuf::from("/srv/releases/r 1=x"));
        let (mut p, _) = Policy::new(settings(), r1, 3);
        let mut procs = Processes::default();
        let mut pid = 100;
        let mut feed = |p: &mut Policy, actions: Vec<Action>, procs: &mut Processes| {
            for a in actions {
                if let Action::Start { worker, .. } = a {
                    pid += 1;
                    let _ = p.started(worker, pid);
                    procs.list.push(Process {
                        id: worker,
                        child: Child::adopt(nix::unistd::Pid::from_raw(pid), t0, None),
                        hold: None,
                    });
                }
            }
        };
        let a = p.step(t0);
        feed(&mut p, a, &mut procs);
        let ids: Vec<WorkerId> = p.workers.iter().map(|w| w.id).collect();
        let _ = p.tick(t0 + Duration::from_millis(200), &ids);
        let _ = p.step(t0 + Duration::from_millis(200));
        let _ = p.hup(t0 + Duration::from_secs(4), || {
            Ok(Some(PathBuf::from("/srv/releases/r2")))
        });
        let a = p.step(t0 + Duration::from_secs(4));
        feed(&mut p, a, &mut procs);
        let cfg = Config {
            prog: vec!["app".into()],
            ready: settings().ready,
            pin: None,
            status: None,
            verbose: false,
            control: None,
            prepare_timeout: Duration::from_secs(60),
        };
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
        let mut up = crate::upgrade::fresh();
        up.count = 7;
        Pool::from_parts(cfg, p, None, procs, up)
    }

    #[test]
    fn a_state_reads_back_as_it_was_written() {
        let now = Instant::now();
        let pool = pool(now);
        let text = write(&pool, std::path::Path::new("/usr/bin/forkpool"), now).unwrap();
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
        let text = write(&pool(now), std::path::Path::new("/x"), now).unwrap();
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
}
