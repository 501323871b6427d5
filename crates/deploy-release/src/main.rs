//! deploy-release: deploy a release someone else built. Take deploy.lock beside
//! LINK, take what serves from the chain (its status file, --check URL), repair
//! LINK if it says otherwise, switch LINK by rename(2), reload through the
//! status file, verify, and roll back (verified) on failure or interrupt.
//! See README.md.

mod log;
mod release;
mod verify;

use std::cell::{Cell, RefCell};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lexopt::prelude::*;
use nix::sys::signal::Signal;
use unixtool::signals::{signal_name, SignalPipe};
use unixtool::statusfile::{self, Status, WaitError};
use unixtool::{Tool, EXIT_TEMPORARY, EXIT_USAGE};

use release::Release;
use unixtool::httpget::{self as check, Url};

const EXIT_ROLLED_BACK: i32 = 1;
const EXIT_ROLLBACK_FAILED: i32 = 2;
const EXIT_NOT_RUNNING: i32 = 3;
const EXIT_BUSY: i32 = 75;

const TOOL: Tool = Tool {
    name: "deploy-release",
    usage: "deploy-release [-t secs] [-c url]... [-w ms] [-g n] [-i id] release_dir link statusfile | deploy-release -r [-t secs] [-c url]... [-w ms] [-g n] link statusfile",
    help: "
  -t, --timeout SECS   wait at most SECS for the reload and the check (default 60)
  -c, --check URL      verify: URL (http://host:port/path) answers 2xx and the release's
                       id (X-Release header, or the body), else roll back; repeatable:
                       every URL must pass in each round
  -w, --verify-window MS  with a generation parked (forkpool --confirm-timeout): a good
                       round of every check within MS ms of the release and of the
                       last good round, else revert (default 1000)
  -g, --good N         N consecutive good rounds (at most 50 ms apart) verify (default 3)
  -i, --id ID          the release's id (default: the first line of RELEASE_DIR/RELEASE)
  -r, --rollback       go back to the last release before the serving one in history
  -h, --help           this text
  -V, --version        the version
",
};

struct Options {
    release_dir: Option<PathBuf>,
    link: PathBuf,
    statusfile: PathBuf,
    timeout: Duration,
    checks: Vec<Url>,
    verify_window: Duration,
    good: u32,
    id: Option<String>,
}

fn main() {
    let started = Instant::now();
    let opts = parse_options();
    let link_dir = link_directory(&opts.link);
    let _lock = take_lock(&link_dir);
    let mut d = Deploy::new(opts, link_dir, started);
    d.mark_running();
    pause("locked");
    let status = d.find_chain();
    let status = d.end_a_left_verify(status);
    let serving = d.what_serves(&status);
    d.repair_link(&serving);
    let (target, cut) = d.choose_target(&serving);
    d.planned(&serving, &target);
    if d.interrupted() {
        d.die(
            EXIT_ROLLED_BACK,
            "interrupted before the switch; nothing was changed",
        );
    }
    let code = d.switch_and_verify(&serving, &target, cut);
    d.finish(code)
}

fn parse_options() -> Options {
    let mut timeout = Duration::from_secs(60);
    let (mut checks, mut id, mut rollback) = (Vec::new(), None, false);
    let (mut verify_window, mut good) = (Duration::from_millis(1000), 3);
    let mut args: Vec<OsString> = Vec::new();
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = TOOL.next_arg(&mut parser) {
        match arg {
            Short('t') | Long("timeout") => {
                let v = TOOL.value(&mut parser);
                timeout = Duration::from_secs(TOOL.number("-t", &v, 1, 86_400));
            }
            Short('c') | Long("check") => {
                let v = TOOL.value(&mut parser).to_string_lossy().into_owned();
                checks.push(Url::parse(&v).unwrap_or_else(|| {
                    TOOL.usage(format_args!("-c wants http://host[:port]/path, not {v:?}"))
                }));
            }
            Short('w') | Long("verify-window") => {
                let v = TOOL.value(&mut parser);
                verify_window = Duration::from_millis(TOOL.number("-w", &v, 1, 3_600_000));
            }
            Short('g') | Long("good") => {
                good = TOOL.number("-g", &TOOL.value(&mut parser), 1, 1000)
            }
            Short('i') | Long("id") => id = Some(TOOL.value(&mut parser).to_string_lossy().into()),
            Short('r') | Long("rollback") => rollback = true,
            Short('h') | Long("help") => TOOL.print_help(),
            Short('V') | Long("version") => TOOL.print_version(),
            Value(v) => args.push(v),
            other => TOOL.bad_arg(other.unexpected()),
        }
    }
    let want = if rollback { 2 } else { 3 };
    if args.len() != want {
        TOOL.usage(format_args!(
            "expected {want} arguments, got {}",
            args.len()
        ));
    }
    if rollback && id.is_some() {
        TOOL.usage("--id names a new release: not with --rollback");
    }
    if let Some(dir) = args.first().filter(|_| !rollback) {
        if unixtool::quote::needs_quoting(&dir.to_string_lossy()) {
            TOOL.usage(format_args!(
                "release_dir {} holds a control character (a newline?): refused",
                dir.to_string_lossy()
            ));
        }
    }
    let statusfile = PathBuf::from(args.pop().unwrap_or_default());
    let link = PathBuf::from(args.pop().unwrap_or_default());
    let release_dir = args.pop().map(PathBuf::from);
    Options {
        release_dir,
        link,
        statusfile,
        timeout,
        checks,
        verify_window,
        good,
        id,
    }
}

/// LINK's directory, canonical (the lock, deploy.running and history live there).
fn link_directory(link: &Path) -> PathBuf {
    if link.file_name().is_none() {
        TOOL.usage(format_args!("link {} names a directory", link.display()));
    }
    let dir = match link.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::canonicalize(dir).unwrap_or_else(|e| {
        TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!(
                "unable to find directory {}: {}",
                dir.display(),
                unixtool::io_reason(&e)
            ),
        )
    })
}

/// deploy.lock beside LINK: flock, close-on-exec, never waited for. Created
/// 0600 and kept so (a lock another user can open, they can hold); one that
/// another user owns, or that is not a regular file, is refused.
fn take_lock(dir: &Path) -> OwnedFd {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let path = dir.join("deploy.lock");
    let fail = |what: String| -> ! {
        TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!(
                "unable to use {}: {what}; nothing was changed",
                path.display()
            ),
        )
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(&path)
        .unwrap_or_else(|e| fail(unixtool::io_reason(&e)));
    let meta = file
        .metadata()
        .unwrap_or_else(|e| fail(unixtool::io_reason(&e)));
    let me = nix::unistd::geteuid().as_raw();
    if !meta.file_type().is_file() {
        fail("not a regular file".to_string());
    }
    if meta.uid() != me {
        fail(format!(
            "it is owned by uid {}, not by uid {me} who deploys (another user could hold it)",
            meta.uid()
        ));
    }
    if meta.mode() & 0o7077 != 0 {
        if let Err(e) = file.set_permissions(std::fs::Permissions::from_mode(0o600)) {
            fail(format!(
                "unable to make it 0600: {}",
                unixtool::io_reason(&e)
            ));
        }
    }
    let fd = OwnedFd::from(file);
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let locked = unixtool::retry_eintr(|| {
        // SAFETY: flock(2) on a descriptor this function owns; no memory is passed.
        nix::errno::Errno::result(unsafe { libc::flock(raw, libc::LOCK_EX | libc::LOCK_NB) })
            .map(drop)
    });
    match locked {
        Ok(()) => fd,
        Err(nix::errno::Errno::EWOULDBLOCK) => TOOL.fatal(EXIT_BUSY, busy_reason(dir)),
        Err(e) => TOOL.fatal_errno(EXIT_TEMPORARY, format_args!("lock {}", path.display()), e),
    }
}

/// Who holds the lock, as deploy.running says.
fn busy_reason(dir: &Path) -> String {
    let running = dir.join("deploy.running");
    let pid: Option<i32> = unixtool::statusfile::read_small(&running, 64)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    match pid {
        Some(p) if statusfile::alive(p) => {
            format!("another deploy is running (pid {p}); nothing was changed")
        }
        Some(p) => format!(
            "{}/deploy.lock is held, but {} names pid {p}, which is not running (stale): a process that outlived that deploy holds the lock; nothing was changed",
            dir.display(),
            running.display()
        ),
        None => "another deploy is running; nothing was changed".to_string(),
    }
}

/// The test hook: with DEPLOY_RELEASE_PAUSE=STEP, stop (SIGSTOP) at STEP,
/// once, so a test can kill the deploy exactly there.
fn pause(step: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static DONE: AtomicBool = AtomicBool::new(false);
    if std::env::var_os("DEPLOY_RELEASE_PAUSE").is_some_and(|s| s == step)
        && !DONE.swap(true, Ordering::SeqCst)
    {
        say(format_args!("pausing at {step} (DEPLOY_RELEASE_PAUSE)"));
        let _ = nix::sys::signal::raise(Signal::SIGSTOP);
    }
}

/// One progress line on stderr.
fn say(what: std::fmt::Arguments) {
    unixtool::message_line(TOOL.name, what)
}

/// Why a reload (and check) did not verify.
enum Outcome {
    /// The release did not come up (or an interrupt): roll back.
    Failed(String),
    /// The chain is gone.
    NotRunning(String),
    /// The status file never changed: the chain cannot write it.
    Unchanged(String),
}

struct Deploy {
    opts: Options,
    link_dir: PathBuf,
    link: PathBuf,
    sigs: SignalPipe,
    /// The first INT, TERM or HUP that came.
    signal: Cell<Option<Signal>>,
    chain_pid: i32,
    /// The deploy log's line (log.rs), written at the end.
    log: RefCell<log::Entry>,
}

impl Deploy {
    fn new(opts: Options, link_dir: PathBuf, started: Instant) -> Deploy {
        let sigs = SignalPipe::install(&[Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP])
            .unwrap_or_else(|e| TOOL.fatal_errno(EXIT_TEMPORARY, "catch signals", e));
        let link = link_dir.join(opts.link.file_name().unwrap_or_default());
        let kind = if opts.release_dir.is_some() {
            "deploy"
        } else {
            "rollback"
        };
        let mut entry = log::Entry::new(started, kind);
        entry.step("lock", true);
        Deploy {
            opts,
            link_dir,
            link,
            sigs,
            signal: Cell::new(None),
            chain_pid: 0,
            log: RefCell::new(entry),
        }
    }

    /// The deploy log: what served, what is deployed; the step before.
    fn planned(&self, serving: &Release, target: &Release) {
        let mut e = self.log.borrow_mut();
        e.before = Some(serving.name());
        e.target = Some(target.name());
        e.target_id = target.id.clone();
        e.step("prepare", true);
    }

    fn step(&self, name: &str, ok: bool) {
        self.log.borrow_mut().step(name, ok);
    }

    /// The deploy log's line for exit `code`, appended; a warning if it cannot be.
    fn write_log(&self, code: i32) {
        let e = self.log.borrow();
        let after = match code {
            0 => e.target.clone(),
            1 => e.before.clone(),
            _ => None,
        };
        let link = Release::of_link(&self.link, &self.link_dir).map(|r| r.name());
        let line = e.line(code, after.as_deref(), link.as_deref());
        if let Err(err) = log::append(&self.link_dir, &line) {
            TOOL.warn(format_args!(
                "unable to append to {}: {}",
                self.link_dir.join(log::FILE).display(),
                unixtool::io_reason(&err)
            ));
        }
    }

    fn running_file(&self) -> PathBuf {
        self.link_dir.join("deploy.running")
    }

    fn history_file(&self) -> PathBuf {
        self.link_dir.join("history")
    }

    /// deploy.running names us; a stale one (dead pid) is reported.
    fn mark_running(&mut self) {
        let path = self.running_file();
        if let Some(p) = unixtool::statusfile::read_small(&path, 64)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok())
        {
            say(format_args!(
                "a stale {} names pid {p}: an earlier deploy was interrupted; checking {} against what serves",
                path.display(),
                self.link.display()
            ));
        }
        if let Err(e) = statusfile::replace(&path, &format!("{}\n", std::process::id())) {
            TOOL.fatal(
                EXIT_TEMPORARY,
                format_args!(
                    "unable to write {}: {}; nothing was switched",
                    path.display(),
                    unixtool::io_reason(&e)
                ),
            );
        }
    }

    /// Write the deploy log's line, remove deploy.running, exit.
    fn finish(&self, code: i32) -> ! {
        self.write_log(code);
        let _ = std::fs::remove_file(self.running_file());
        std::process::exit(code)
    }

    fn die(&self, code: i32, msg: impl std::fmt::Display) -> ! {
        say(format_args!("fatal: {msg}"));
        self.log.borrow_mut().reason(&msg);
        self.finish(code)
    }

    /// Whether INT, TERM or HUP came (the first one is kept).
    fn interrupted(&self) -> bool {
        if let Some(&sig) = self.sigs.drain().first() {
            if self.signal.get().is_none() {
                self.signal.set(Some(sig));
            }
        }
        self.signal.get().is_some()
    }

    /// The chain that writes STATUSFILE, checked (exit 3 if none).
    fn find_chain(&mut self) -> Status {
        match statusfile::chain(&self.opts.statusfile) {
            Ok((chain, status)) => {
                self.chain_pid = chain.pid;
                status
            }
            Err(e) => self.die(
                EXIT_NOT_RUNNING,
                format_args!("no chain runs: {e}; nothing was changed"),
            ),
        }
    }

    /// A generation still awaiting confirm or revert when we hold the lock:
    /// the deploy that switched to it was killed before its verdict, and
    /// nothing verified it. Revert it (the parked generation, verified by
    /// that deploy's predecessor, serves again at once), say so, go on.
    fn end_a_left_verify(&self, status: Status) -> Status {
        let Some(parked) = parked_generation(&status) else {
            return status;
        };
        let gen = status.num("verify_generation");
        match self.revert_parked() {
            Ok(st) => {
                say(format_args!(
                    "generation {gen} awaited confirm or revert (its deploy was interrupted): reverted to the parked generation {parked}"
                ));
                st
            }
            Err(why) => self.die(
                EXIT_TEMPORARY,
                format_args!(
                    "generation {gen} awaits confirm or revert (its deploy was interrupted), and the revert failed: {why}; nothing was changed"
                ),
            ),
        }
    }

    /// The release serving now: the status file's release=, else what --check
    /// answers (looked up in the history), else what LINK names.
    fn what_serves(&self, status: &Status) -> Release {
        let from_status = status.get("release");
        if status.num("serving_generation") > 0 && !from_status.is_empty() {
            match Release::at(Path::new(from_status), &self.link_dir) {
                Ok(r) => return r,
                Err(e) => self.die(
                    EXIT_TEMPORARY,
                    format_args!(
                        "unable to find the serving release {from_status}: {}",
                        unixtool::io_reason(&e)
                    ),
                ),
            }
        }
        let linked = Release::of_link(&self.link, &self.link_dir);
        if let Some(url) = self.opts.checks.first() {
            let until = Instant::now() + Duration::from_secs(5);
            if let Some(answer) = check::ask(url, until, &mut || self.interrupted()) {
                let history = release::read_history(&self.history_file()).unwrap_or_default();
                let known = linked.iter().cloned().chain(
                    history
                        .iter()
                        .rev()
                        .filter_map(|l| Release::at(&self.link_dir.join(l), &self.link_dir).ok()),
                );
                for r in known {
                    if r.id.as_deref() == Some(answer.release.as_str()) {
                        return r;
                    }
                }
            }
        }
        linked.unwrap_or_else(|| {
            self.die(
                EXIT_TEMPORARY,
                format_args!(
                    "unable to tell what serves: {} has no release= and {} names no release",
                    self.opts.statusfile.display(),
                    self.link.display()
                ),
            )
        })
    }

    /// LINK must name what serves before anything else is done.
    fn repair_link(&self, serving: &Release) {
        let linked = Release::of_link(&self.link, &self.link_dir);
        if linked.as_ref().map(|r| &r.dir) == Some(&serving.dir) {
            return;
        }
        let was = linked.map_or("nothing".to_string(), |r| r.name());
        if let Err(e) = self.switch(serving) {
            self.die(
                EXIT_TEMPORARY,
                format_args!("unable to repair {}: {e}", self.link.display()),
            );
        }
        say(format_args!(
            "repaired {}: it named {was}, but {} serves",
            self.link.display(),
            serving.name()
        ));
    }

    /// The release to deploy and, for --rollback, the history line it is at.
    fn choose_target(&self, serving: &Release) -> (Release, Option<usize>) {
        let Some(dir) = &self.opts.release_dir else {
            let history = release::read_history(&self.history_file()).unwrap_or_else(|e| {
                self.die(
                    EXIT_TEMPORARY,
                    format_args!(
                        "unable to read {}: {}",
                        self.history_file().display(),
                        unixtool::io_reason(&e)
                    ),
                )
            });
            return match release::rollback_target(&history, &serving.dir, &self.link_dir) {
                Some((i, r)) => {
                    say(format_args!(
                        "rolling back from {} to {}",
                        serving.name(),
                        r.name()
                    ));
                    (r, Some(i))
                }
                None => self.die(
                    EXIT_ROLLED_BACK,
                    format_args!(
                        "no earlier release to roll back to from {} (see {}); nothing was changed",
                        serving.name(),
                        self.history_file().display()
                    ),
                ),
            };
        };
        let mut r = Release::at(dir, &self.link_dir).unwrap_or_else(|e| {
            self.die(
                EXIT_USAGE,
                format_args!(
                    "unable to use release {}: {}",
                    dir.display(),
                    unixtool::io_reason(&e)
                ),
            )
        });
        // The history holds one name a line, and the status files and the
        // messages quote what they carry: a name with a newline or another
        // control character cannot be recorded as it is, so it is refused.
        if unixtool::quote::needs_quoting(&r.name()) {
            self.die(
                EXIT_USAGE,
                format_args!(
                    "unable to use release {}: its name holds a control character (a newline?); nothing was changed",
                    r.name()
                ),
            );
        }
        if let Some(id) = &self.opts.id {
            r.id = Some(id.clone());
        }
        if !self.opts.checks.is_empty() && r.id.is_none() {
            self.die(
                EXIT_USAGE,
                format_args!(
                    "--check needs the release's id: {}/RELEASE or --id",
                    dir.display()
                ),
            );
        }
        (r, None)
    }

    fn switch(&self, to: &Release) -> Result<(), String> {
        unixtool::symlink::replace(&to.target, &self.link).map_err(|e| unixtool::io_reason(&e))
    }

    /// Switch, reload, check; confirm or revert a parked generation, or
    /// record or roll back (cold). The exit code.
    fn switch_and_verify(&self, old: &Release, new: &Release, cut: Option<usize>) -> i32 {
        if new.dir == old.dir {
            say(format_args!("{} serves already; nothing to do", new.name()));
            self.log
                .borrow_mut()
                .reason(format_args!("{} serves already", new.name()));
            return 0;
        }
        if let Err(e) = self.switch(new) {
            self.die(
                EXIT_TEMPORARY,
                format_args!(
                    "unable to switch {} to {}: {e}; nothing was switched",
                    self.link.display(),
                    new.name()
                ),
            );
        }
        say(format_args!(
            "switched {}: {} -> {}",
            self.link.display(),
            old.name(),
            new.name()
        ));
        self.step("switch", true);
        self.log.borrow_mut().switched = true;
        pause("switched");
        let reloaded = match self.reload(true) {
            Ok(r) => r,
            Err(Outcome::Failed(reason)) => {
                say(format_args!(
                    "deploy of {} failed: {reason}; rolling back to {}",
                    new.name(),
                    old.name()
                ));
                self.log
                    .borrow_mut()
                    .reason(format_args!("deploy of {} failed: {reason}", new.name()));
                return self.roll_back(old, new, None);
            }
            Err(other) => self.gone(other, old),
        };
        let parked = parked_generation(&reloaded.status);
        let checked = self.check(new, Some(old), &reloaded, true);
        self.step_check(&checked);
        pause("checked");
        // an INT or TERM up to the confirm still reverts
        let checked = checked.and_then(|()| match parked {
            Some(_) if self.interrupted() => Err(self.interruption()),
            _ => Ok(()),
        });
        match (checked, parked) {
            (Ok(()), Some(_)) => match self.confirm() {
                Ok(st) => {
                    self.step("confirm", true);
                    say(format_args!(
                        "confirmed generation {}: the parked generation retires",
                        st.num("verify_generation")
                    ));
                    self.verified(old, new, cut)
                }
                Err(why) => {
                    self.step("confirm", false);
                    self.revert(old, new, &format!("the confirm failed: {why}"), reloaded.at)
                }
            },
            (Ok(()), None) => self.verified(old, new, cut),
            (Err(Outcome::Failed(reason)), Some(_)) => self.revert(old, new, &reason, reloaded.at),
            (Err(Outcome::Failed(reason)), None) => {
                say(format_args!(
                    "not verified: {reason}; served {} so far; rolling back to {}",
                    served(reloaded.at),
                    old.name()
                ));
                self.log
                    .borrow_mut()
                    .reason(format_args!("{} not verified: {reason}", new.name()));
                self.roll_back(old, new, Some(reloaded.at))
            }
            (Err(other), _) => self.gone(other, old),
        }
    }

    /// The release verified (and confirmed): the history, exit 0.
    fn verified(&self, old: &Release, new: &Release, cut: Option<usize>) -> i32 {
        let recorded = self.record(old, new, cut);
        self.step("history", recorded.is_ok());
        if let Err(e) = recorded {
            let undone = self.undo(old);
            self.die(
                EXIT_TEMPORARY,
                format_args!(
                    "unable to write {}: {e}; {undone}",
                    self.history_file().display()
                ),
            );
        }
        let what = if cut.is_some() {
            "rolled back to"
        } else {
            "deployed"
        };
        say(format_args!("{what} {}", new.name()));
        0
    }

    /// Not verified with a generation parked: revert to it (warm), LINK back.
    /// Exit 1; when the revert fails, the cold rollback.
    fn revert(&self, old: &Release, new: &Release, reason: &str, released: Instant) -> i32 {
        self.log
            .borrow_mut()
            .reason(format_args!("{} not verified: {reason}", new.name()));
        let reverted = self
            .revert_parked()
            .or_else(|why| self.reverted_by_itself().ok_or(why));
        self.step("revert", reverted.is_ok());
        match reverted {
            Ok(st) => {
                let took = served(released);
                let switched = self.switch(old);
                self.step("revert-switch", switched.is_ok());
                if let Err(e) = switched {
                    self.die(
                        EXIT_ROLLBACK_FAILED,
                        format_args!(
                            "not verified: {reason}; served {took}; reverted to {} (warm generation {}), but unable to switch {} back: {e}",
                            old.name(),
                            st.num("serving_generation"),
                            self.link.display()
                        ),
                    );
                }
                say(format_args!(
                    "not verified: {reason}; served {took}; reverted to {} (warm generation {})",
                    old.name(),
                    st.num("serving_generation")
                ));
                say(format_args!(
                    "rolled back: {} serves (no new process started); {} names it again",
                    old.name(),
                    self.link.display()
                ));
                EXIT_ROLLED_BACK
            }
            Err(why) => {
                say(format_args!(
                    "not verified: {reason}; served {} so far; the revert failed: {why}; rolling back to {}",
                    served(released),
                    old.name()
                ));
                self.roll_back(old, new, Some(released))
            }
        }
    }

    /// The chain died, or cannot write its status file: put LINK back, exit.
    fn gone(&self, why: Outcome, old: &Release) -> ! {
        match why {
            Outcome::NotRunning(r) => {
                let back = match self.switch(old) {
                    Ok(()) => format!(
                        "{} names {} again (the last verified release)",
                        self.link.display(),
                        old.name()
                    ),
                    Err(e) => format!(
                        "unable to switch {} back to {}: {e}",
                        self.link.display(),
                        old.name()
                    ),
                };
                self.die(
                    EXIT_NOT_RUNNING,
                    format_args!("the chain is gone: {r}; {back}"),
                )
            }
            Outcome::Unchanged(r) | Outcome::Failed(r) => {
                let undone = match self.switch(old) {
                    Ok(()) => {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(self.chain_pid),
                            Signal::SIGHUP,
                        );
                        format!(
                            "switched {} back to {} and sent HUP (not verified)",
                            self.link.display(),
                            old.name()
                        )
                    }
                    Err(e) => format!(
                        "unable to switch {} back to {}: {e}",
                        self.link.display(),
                        old.name()
                    ),
                };
                self.die(EXIT_TEMPORARY, format_args!("{r}; {undone}"))
            }
        }
    }

    /// Switch back to `old` and verify it: 1 when it serves again, else 2 (or
    /// 3, 111). `released`: when `new` began to serve (None: it never did).
    fn roll_back(&self, old: &Release, new: &Release, released: Option<Instant>) -> i32 {
        self.log.borrow_mut().prefix = "rollback-";
        let switched = self.switch(old);
        self.step("switch", switched.is_ok());
        if let Err(e) = switched {
            self.die(
                EXIT_ROLLBACK_FAILED,
                format_args!(
                    "unable to switch {} back to {}: {e}",
                    self.link.display(),
                    old.name()
                ),
            );
        }
        say(format_args!(
            "switched {} back: {} -> {}",
            self.link.display(),
            new.name(),
            old.name()
        ));
        pause("rollback");
        let verified = self.reload_and_check(old, Some(new), false);
        self.step_check(&verified);
        match verified {
            Ok(()) => {
                let took = match released {
                    Some(t) => format!("; {} served {} in all", new.name(), served(t)),
                    None => String::new(),
                };
                say(format_args!("rolled back: {} serves{took}", old.name()));
                EXIT_ROLLED_BACK
            }
            Err(Outcome::Failed(r)) => self.die(
                EXIT_ROLLBACK_FAILED,
                format_args!("the rollback to {} did not verify: {r}", old.name()),
            ),
            Err(other) => self.gone(other, old),
        }
    }

    /// After a history write failed: back to `old`, verified if possible.
    fn undo(&self, old: &Release) -> String {
        self.log.borrow_mut().prefix = "undo-";
        if let Err(e) = self.switch(old) {
            return format!(
                "unable to switch {} back to {}: {e}",
                self.link.display(),
                old.name()
            );
        }
        match self.reload_and_check(old, None, false) {
            Ok(()) => format!(
                "switched {} back to {}, which serves again",
                self.link.display(),
                old.name()
            ),
            Err(Outcome::Failed(r) | Outcome::NotRunning(r) | Outcome::Unchanged(r)) => {
                format!(
                    "switched {} back to {}, not verified: {r}",
                    self.link.display(),
                    old.name()
                )
            }
        }
    }

    /// Reload, then check (a rollback's or an undo's: whatever serves after
    /// it is final, a parked generation is confirmed at once).
    fn reload_and_check(
        &self,
        rel: &Release,
        not_yet: Option<&Release>,
        interruptible: bool,
    ) -> Result<(), Outcome> {
        let r = self.reload(interruptible)?;
        let checked = self.check(rel, not_yet, &r, interruptible);
        if parked_generation(&r.status).is_some() {
            // the rollback is what we go back to: nothing to verify against
            if let Err(why) = self.confirm() {
                say(format_args!(
                    "warning: the confirm of the rollback failed: {why}"
                ));
            }
        }
        checked
    }

    /// After a refused revert: forkpool may have reverted by itself (its
    /// --confirm-timeout passed first); then that is the revert.
    fn reverted_by_itself(&self) -> Option<Status> {
        let st = statusfile::read(&self.opts.statusfile).ok()?;
        (st.get("verify") == "reverted" && st.serving()).then_some(st)
    }

    /// HUP the chain and wait for the new generation to serve whole.
    fn reload(&self, interruptible: bool) -> Result<Reloaded, Outcome> {
        let started = Instant::now();
        let mut calls = 0;
        let mut stop = || {
            calls += 1;
            // "wait" on the first look too: a reload done before the second
            // look (a busy machine descheduled the deploy after the HUP)
            // never reached a hook on it, and a test waited for a pause
            // that never came.
            if calls == 1 {
                pause("hup");
                pause("wait");
            }
            self.interrupted() && interruptible
        };
        let answer = statusfile::reload(&self.opts.statusfile, self.opts.timeout, &mut stop);
        self.step("reload", answer.is_ok());
        self.log.borrow_mut().reload_ok = answer.is_ok();
        let st = match answer {
            Ok(st) => st,
            Err(WaitError::Failed(r)) => return Err(Outcome::Failed(r)),
            Err(WaitError::TimedOut {
                reason,
                unchanged: true,
            }) => return Err(Outcome::Unchanged(reason)),
            Err(WaitError::TimedOut { reason, .. }) => return Err(Outcome::Failed(reason)),
            Err(WaitError::NotRunning(r)) => return Err(Outcome::NotRunning(r)),
            Err(WaitError::Interrupted) => return Err(self.interruption()),
        };
        let parked = match parked_generation(&st) {
            Some(p) => format!(
                "; generation {p} parked until {} (--confirm-timeout)",
                st.get("verify_deadline")
            ),
            None => String::new(),
        };
        say(format_args!(
            "generation {} serving: {} of {} ready{parked}",
            st.num("serving_generation"),
            st.num("ready"),
            st.num("workers")
        ));
        let left = self.opts.timeout.saturating_sub(started.elapsed());
        Ok(Reloaded {
            status: st,
            at: Instant::now(),
            deadline: Instant::now() + left.max(Duration::from_secs(1)),
        })
    }

    /// With --check: rounds of every URL until `rel` is verified or not
    /// (verify.rs). With a parked generation the rule is strict: a good
    /// round within --verify-window, any other answer is bad. Without one,
    /// `before` (the release that served before) may still take a connection
    /// in the moment after reload=ok (forkpool's rolling mode), so its id is
    /// "not yet"; and a rollback would start the old release cold, no sooner
    /// than waiting, so silence is waited out until -t. A definite bad
    /// answer ends the check at once either way.
    fn check(
        &self,
        rel: &Release,
        before: Option<&Release>,
        r: &Reloaded,
        interruptible: bool,
    ) -> Result<(), Outcome> {
        if self.opts.checks.is_empty() {
            return Ok(());
        }
        let parked = parked_generation(&r.status).is_some();
        let rule = verify::Rule {
            urls: &self.opts.checks,
            want: rel.id.as_deref(),
            not_yet: before.filter(|_| !parked).and_then(|n| n.id.as_deref()),
            window: if parked {
                self.opts.verify_window
            } else {
                r.deadline.saturating_duration_since(Instant::now())
            },
            good: self.opts.good,
            deadline: r.deadline,
        };
        let dead = Cell::new(false);
        let mut stop = || {
            if !statusfile::alive(self.chain_pid) {
                dead.set(true);
                return true;
            }
            self.interrupted() && interruptible
        };
        let mut ask = |url: &Url, until: Instant| {
            // one try, by `until`, given up within 100 ms of an INT or TERM
            check::ask(url, until, &mut || self.interrupted() && interruptible)
        };
        let result = verify::rounds(
            &rule,
            &mut ask,
            &mut stop,
            &mut Instant::now,
            &mut std::thread::sleep,
        );
        match result {
            Ok(n) => {
                let urls: Vec<String> = self.opts.checks.iter().map(Url::to_string).collect();
                let verb = if urls.len() == 1 { "answers" } else { "answer" };
                say(format_args!(
                    "{} {verb} {} ({} good rounds in a row, {n} in all)",
                    urls.join(" and "),
                    rel.id.as_deref().unwrap_or("2xx"),
                    self.opts.good
                ));
                Ok(())
            }
            Err(_) if dead.get() => Err(Outcome::NotRunning(format!(
                "pid {} died while we waited",
                self.chain_pid
            ))),
            Err(verify::Bad::Interrupted) => Err(self.interruption()),
            Err(bad) => Err(Outcome::Failed(bad.reason())),
        }
    }

    /// confirm (the parked generation retires): the status, or why not.
    /// Not interruptible: the verdict is given whole.
    fn confirm(&self) -> Result<Status, String> {
        statusfile::confirm(&self.opts.statusfile, self.opts.timeout, &mut || false)
            .map_err(|e| e.to_string())
    }

    /// revert (the parked generation serves again): the status, or why not.
    fn revert_parked(&self) -> Result<Status, String> {
        statusfile::revert(&self.opts.statusfile, self.opts.timeout, &mut || false)
            .map_err(|e| e.to_string())
    }

    /// The deploy log: the check's step, when there was one (a reload said yes).
    fn step_check(&self, verified: &Result<(), Outcome>) {
        if !self.opts.checks.is_empty() && self.log.borrow().reload_ok {
            self.step("check", verified.is_ok());
        }
    }

    fn interruption(&self) -> Outcome {
        let sig = self.signal.get().map_or("a signal", signal_name);
        Outcome::Failed(format!("interrupted by {sig}"))
    }

    /// The history after a verified deploy (appended) or rollback (cut back).
    fn record(&self, old: &Release, new: &Release, cut: Option<usize>) -> Result<(), String> {
        let path = self.history_file();
        let mut lines = release::read_history(&path).map_err(|e| unixtool::io_reason(&e))?;
        match cut {
            Some(i) => lines.truncate(i + 1),
            None => {
                if lines.is_empty() {
                    // the release serving at the first deploy
                    lines.push(old.name());
                }
                lines.push(new.name());
            }
        }
        release::write_history(&path, &lines).map_err(|e| unixtool::io_reason(&e))
    }
}

/// A reload's answer: the status, when we saw it (the new generation
/// released), and the deadline left for the check.
struct Reloaded {
    status: Status,
    at: Instant,
    deadline: Instant,
}

/// The generation parked for a verify of the serving one (forkpool
/// --confirm-timeout: `verify=pending`), if any.
fn parked_generation(st: &Status) -> Option<u64> {
    (st.get("verify") == "pending" && st.num("verify_generation") == st.num("serving_generation"))
        .then(|| st.num("parked_generation"))
}

/// How long the new release served, for the verdict line.
fn served(since: Instant) -> String {
    format!("{} ms", since.elapsed().as_millis())
}
