//! What two or more of the tools share, and nothing else: the exit codes, the
//! one-line messages (`name: fatal: unable to VERB OBJ: reason`), the exec of
//! `prog...` through PATH, number and argument parsing, descriptor helpers.

pub mod backoff;
pub mod child;
pub mod handoff;
pub mod httpget;
pub mod json;
pub mod quote;
pub mod readiness;
pub mod reexec;
pub mod signals;
pub mod statusfile;
pub mod supervise;
pub mod symlink;
pub mod upstream;

use std::ffi::{CString, OsStr, OsString};
use std::fmt::Display;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::str::FromStr;

use nix::errno::Errno;

/// Usage or permanent error: bad option, bad number, bad address.
pub const EXIT_USAGE: i32 = 100;
/// Temporary or system failure: bind failed, lock busy, exec failed.
pub const EXIT_TEMPORARY: i32 = 111;

/// A tool's identity: its name (the prefix of every message) and its synopsis.
pub struct Tool {
    pub name: &'static str,
    pub usage: &'static str,
    pub help: &'static str,
}

impl Tool {
    /// `name: what` and a newline on stderr in one write(2), so lines from
    /// processes sharing the descriptor (a pool and its workers) never interleave.
    fn line(&self, what: std::fmt::Arguments) {
        message_line(self.name, what)
    }

    /// `name: fatal: msg` on stderr, exit with `code`.
    pub fn fatal(&self, code: i32, msg: impl Display) -> ! {
        self.line(format_args!("fatal: {msg}"));
        std::process::exit(code)
    }

    /// `name: fatal: unable to WHAT: reason`, exit with `code`.
    pub fn fatal_errno(&self, code: i32, what: impl Display, err: Errno) -> ! {
        self.fatal(code, format_args!("unable to {}: {}", what, strerror(err)))
    }

    /// A usage error: the reason and the synopsis on one line, exit 100.
    pub fn usage(&self, msg: impl Display) -> ! {
        self.line(format_args!("usage: {msg} (usage: {})", self.usage));
        std::process::exit(EXIT_USAGE)
    }

    pub fn warn(&self, msg: impl Display) {
        self.line(format_args!("warning: {msg}"));
    }

    pub fn info(&self, msg: impl Display) {
        self.line(format_args!("info: {msg}"));
    }

    /// Turn a lexopt error into a usage error.
    pub fn bad_arg(&self, err: lexopt::Error) -> ! {
        self.usage(err)
    }

    /// The next option or argument, None at the end; a parse error is a usage error.
    pub fn next_arg<'a>(&self, parser: &'a mut lexopt::Parser) -> Option<lexopt::Arg<'a>> {
        parser.next().unwrap_or_else(|e| self.bad_arg(e))
    }

    /// The value of the option just returned; a missing one is a usage error.
    pub fn value(&self, parser: &mut lexopt::Parser) -> OsString {
        parser.value().unwrap_or_else(|e| self.bad_arg(e))
    }

    /// `-h/--help`: the synopsis and the option list on stdout, exit 0.
    pub fn print_help(&self) -> ! {
        self.print(format_args!(
            "usage: {}\n{}\n",
            self.usage,
            self.help.trim_end()
        ));
        std::process::exit(0)
    }

    /// Write to stdout, whole; a stdout that cannot take it (closed, a pipe
    /// whose reader is gone, a full disk) is one fatal line and exit 111,
    /// never a panic (the Rust runtime ignores SIGPIPE, so print! would panic).
    pub fn print(&self, what: std::fmt::Arguments) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_fmt(what).and_then(|()| out.flush()) {
            self.fatal_errno(EXIT_TEMPORARY, "write to standard output", errno_of(&e));
        }
    }

    /// `-V/--version`: the name, the version, the build id
    /// ([`reexec::build_id`]: what a status file's `version=` says).
    pub fn print_version(&self) -> ! {
        self.print(format_args!(
            "{} {} build {}\n",
            self.name,
            env!("CARGO_PKG_VERSION"),
            reexec::build_id()
        ));
        std::process::exit(0)
    }

    /// Parse `value` of option `opt` as a number in `min..=max`; anything else
    /// (empty, junk, trailing characters, out of range) is a usage error.
    pub fn number<T>(&self, opt: &str, value: &OsStr, min: T, max: T) -> T
    where
        T: FromStr + PartialOrd + Display + Copy,
    {
        match parse_number(value, min, max) {
            Some(n) => n,
            None => self.usage(format_args!(
                "{} wants a number from {} to {}, not {:?}",
                opt,
                min,
                max,
                value.to_string_lossy()
            )),
        }
    }

    /// exec `argv` through PATH; on failure `name: fatal: unable to run PROG: reason`, exit 111.
    pub fn exec(&self, argv: &[OsString]) -> ! {
        let err = exec_errno(argv);
        let prog = argv
            .first()
            .map(|p| p.to_string_lossy())
            .unwrap_or_default();
        self.fatal_errno(EXIT_TEMPORARY, format_args!("run {prog}"), err)
    }
}

/// The wall clock now, in seconds since the epoch (0 before 1970).
pub fn wall_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `name: what` and a newline on stderr in one write(2) (see [`Tool::info`] and
/// the others; also for a forked child that reports before its exec). What
/// the line carries is quoted ([`quote::line`]: no control byte reaches the
/// terminal or the log, no line break splits it) and cut to
/// [`quote::MAX_LINE`] bytes, so that the write stays atomic.
pub fn message_line(name: &str, what: std::fmt::Arguments) {
    use std::io::Write;
    let text = format!(
        "{name}: {}\n",
        quote::line(&what.to_string(), quote::MAX_LINE)
    );
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Parse a whole decimal number in `min..=max`.
pub fn parse_number<T>(value: &OsStr, min: T, max: T) -> Option<T>
where
    T: FromStr + PartialOrd + Copy,
{
    let s = value.to_str()?;
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: T = s.parse().ok()?;
    (n >= min && n <= max).then_some(n)
}

/// The text of an errno, without the `(os error N)` Rust adds.
pub fn strerror(err: Errno) -> &'static str {
    err.desc()
}

/// The errno behind an I/O error (EIO when it carries none).
pub fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// An I/O error's text as a message line says it: the errno's text without
/// Rust's `(os error N)`, or the error's own text when it carries no errno.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => strerror(Errno::from_raw(n)).to_string(),
        None => e.to_string(),
    }
}

/// A raised descriptor limit: the soft limit the process was given and the
/// one it raised it to ([`raise_nofile`]).
static NOFILE: std::sync::OnceLock<(u64, u64)> = std::sync::OnceLock::new();

/// Raise this process's soft descriptor limit to `want`, at most its hard
/// limit (never lowered; a process that polls needs no select(2)-sized
/// limit, and a soft limit of 1,024 is the common default). What it execs
/// afterwards, a child or a new image of itself, gets the soft limit the
/// process was given (the exec functions here run under [`exec_as_given`]). Returns the soft limit it has now; None if it cannot be read.
pub fn raise_nofile(want: u64) -> Option<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    let want = want.min(hard);
    if want <= soft {
        return Some(soft);
    }
    if setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_err() {
        return Some(soft);
    }
    // Once: a second raise keeps the limit first given as the one to restore.
    let _ = NOFILE.set((soft, want));
    Some(want)
}

/// This process's soft descriptor limit, if it can be read.
pub fn nofile_soft() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Run `exec` (an exec that returns only on failure) with the soft
/// descriptor limit the process was given, if it raised it; the raised one
/// again after a failed exec.
pub(crate) fn exec_as_given(exec: impl FnOnce() -> Errno) -> Errno {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Some(&(given, raised)) = NOFILE.get() else {
        return exec();
    };
    let set = |soft: u64| {
        if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, soft.min(hard), hard);
        }
    };
    set(given);
    let err = exec();
    set(raised);
    err
}

/// execvp `argv`; returns only on failure, with the errno. SIGPIPE, which the
/// Rust runtime ignores (and an ignored disposition survives exec), is put back
/// to its default first, so prog starts as it would from a shell.
pub fn exec_errno(argv: &[OsString]) -> Errno {
    // SAFETY: SIG_DFL installs no handler; nothing else runs in this process
    // between here and the exec.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let Some(prog) = argv.first() else {
        return Errno::ENOENT;
    };
    let cargs: Result<Vec<CString>, _> = argv.iter().map(|a| CString::new(a.as_bytes())).collect();
    let Ok(cargs) = cargs else {
        return Errno::EINVAL;
    };
    let Ok(cprog) = CString::new(prog.as_bytes()) else {
        return Errno::EINVAL;
    };
    exec_as_given(|| match nix::unistd::execvp(&cprog, &cargs) {
        Ok(never) => match never {},
        Err(e) => e,
    })
}

/// The positional arguments: `first` (the value lexopt already returned) and
/// everything after it, untouched, so prog's own options are never parsed.
pub fn rest_of_args(first: OsString, parser: &mut lexopt::Parser) -> Vec<OsString> {
    let mut v = vec![first];
    v.extend(
        parser
            .raw_args()
            .map(|mut raw| raw.by_ref().collect::<Vec<_>>())
            .unwrap_or_default(),
    );
    v
}

/// Set O_NONBLOCK on `fd`.
pub fn set_nonblocking(fd: RawFd) -> Result<(), Errno> {
    // SAFETY: F_GETFL reads the status flags of a descriptor number; no memory is passed.
    let flags = Errno::result(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    // SAFETY: F_SETFL sets the status flags of a descriptor number; no memory is passed.
    Errno::result(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    Ok(())
}

/// Set or clear FD_CLOEXEC on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> Result<(), Errno> {
    // SAFETY: F_GETFD reads a flag of a descriptor number; no memory is passed.
    let flags = Errno::result(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let new = if on {
        flags | libc::FD_CLOEXEC
    } else {
        flags & !libc::FD_CLOEXEC
    };
    if new != flags {
        // SAFETY: F_SETFD sets a flag of a descriptor number; no memory is passed.
        Errno::result(unsafe { libc::fcntl(fd, libc::F_SETFD, new) })?;
    }
    Ok(())
}

/// Whether `fd` is an open descriptor.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD reads a flag of a descriptor number; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    flags != -1
}

/// Put the open file `from` on descriptor `to`, inheritable, and close `from`
/// (unless they are the same, in which case only close-on-exec is cleared).
pub fn move_fd(from: RawFd, to: RawFd) -> Result<(), Errno> {
    if from == to {
        return set_cloexec(to, false);
    }
    loop {
        // SAFETY: dup2 takes two descriptor numbers; the caller owns `to`'s
        // number (it is what the child is to get), so nothing else loses it.
        match Errno::result(unsafe { libc::dup2(from, to) }) {
            Err(Errno::EINTR) | Err(Errno::EBUSY) => continue,
            Err(e) => return Err(e),
            Ok(_) => break,
        }
    }
    // SAFETY: `from` is the caller's to give up (it was moved to `to`).
    unsafe { libc::close(from) };
    Ok(())
}

/// Retry `f` while it fails with EINTR.
pub fn retry_eintr<T>(mut f: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    loop {
        match f() {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}
