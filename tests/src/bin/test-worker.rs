//! test-worker: the small server the supervisor tests run under loop-forever
//! and forkpool. It accepts on descriptor 0 and answers each connection with
//! one line naming itself, then closes:
//!
//! `pid=P gen=G worker=W listen_pid=L release=R cwd=C`
//!
//! (G, W, L, R from FORKPOOL_GENERATION, FORKPOOL_WORKER, LISTEN_PID,
//! FORKPOOL_RELEASE, `-` when unset). A stop signal (TERM, HUP, INT, QUIT) is
//! taken only between connections: the connection in hand is answered, then
//! the worker exits 0.
//!
//! Options (behaviour the tests need):
//!   --ready-delay MS  become ready after MS milliseconds (default 0)
//!   --ready-when PATH become ready only once PATH exists (after --ready-delay):
//!                     a reload that lasts until the test says
//!   --never-ready     never become ready, never accept (stop signals still work)
//!   --notify-fd N     say ready by writing a newline to descriptor N
//!   --notify          say ready by sending READY=1 to $NOTIFY_SOCKET
//!   --exit CODE       exit CODE at once
//!   --ignore-term     ignore SIGTERM
//!   --crash-after K   exit 1 after answering K connections
//!   --serve-delay MS  wait MS milliseconds before answering each connection
//!   --serve-until PATH  before answering each connection (after --serve-delay),
//!                     wait until PATH exists: a request in hand for as long as
//!                     the test wants, whatever the machine's load
//!   --start-log PATH  append "PID GEN WORKER" to PATH at start
//!   --conf PATH       read more options (whitespace-separated) from PATH if it exists
//!   --stamp PATH      append "start PID NS" at start and "exit PID NS" before an
//!                     --exit / --exit-after exit (NS: wall clock, for benchmarks)
//!   --exit-after MS   stay alive MS milliseconds (not accepting), then exit 0
//!   --accept-log PATH append "accept PID" to PATH after each accept
//!   --helper          after the hold, fork a helper that accepts on descriptor 0
//!                     too (the same answers, its own pid), as a worker that
//!                     forks children would; its pid goes to --start-log as
//!                     "PID GEN WORKER helper"
//!   --ignore-hold     do not read FORKPOOL_HOLD_FD (a program that does not
//!                     cooperate with forkpool's cutover: only SIGSTOP holds it)
//!   --window-log PATH after saying ready, read the clock in a loop (yielding the
//!                     CPU each time) instead of accepting, until a SIGCONT comes
//!                     (3 s at most); append "window PID NS" to PATH, NS the time
//!                     from just before the readiness message to the last reading
//!                     before the process was stopped ("window PID none" if no
//!                     SIGCONT came): the window of forkpool's SIGSTOP hold
//!
//!   --ping            with WATCHDOG_USEC set, ping forkpool's watchdog every third
//!                     of it after ready: an empty line on --notify-fd, or WATCHDOG=1
//!   --hang-after MS   MS ms after ready, hang: accept nothing, ping no more, take
//!                     no stop signal (only KILL or ABRT ends it)
//!   --abrt-log PATH   catch SIGABRT: append "abrt PID" to PATH and keep hanging
//!   --recycle-after K after answering K connections, ask to be recycled (once):
//!                     `recycle` on --notify-fd, or RECYCLE=1
//!   --say-stopping    on a stop signal during a connection (--serve-delay), stop
//!                     accepting at once (close descriptor 0) and say so: `stopping`
//!                     on --notify-fd, or STOPPING=1; then finish the connection
//!   --leak MIB        before ready, allocate and touch MIB MiB and keep them (a big app)
//!   --spike MIB       after ready, allocate and touch MIB MiB, once; free them
//!                     1.5 s after they were touched, or with --spike-until
//!   --spike-until PATH  free the spike only once PATH exists: a spike that lasts
//!                     until the test says, whatever the machine's load
//!
//! With FORKPOOL_HOLD_FD set (forkpool -m cutover) and without --ignore-hold,
//! the worker reads that descriptor after saying ready and before its first
//! accept, until a byte or end of file; a stop signal meanwhile ends it (exit 0).

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

static STOP: AtomicI32 = AtomicI32::new(0);
static CONT: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_cont(_: libc::c_int) {
    CONT.store(1, Ordering::SeqCst);
}

extern "C" fn on_stop(sig: libc::c_int) {
    STOP.store(sig, Ordering::SeqCst);
}

#[derive(Default)]
struct Opts {
    ready_delay: u64,
    ready_when: Option<String>,
    never_ready: bool,
    notify_fd: Option<i32>,
    notify: bool,
    exit: Option<i32>,
    ignore_term: bool,
    crash_after: Option<u64>,
    serve_delay: u64,
    serve_until: Option<String>,
    start_log: Option<String>,
    stamp: Option<String>,
    exit_after: Option<u64>,
    ignore_hold: bool,
    window_log: Option<String>,
    accept_log: Option<String>,
    helper: bool,
    ping: bool,
    hang_after: Option<u64>,
    abrt_log: Option<String>,
    recycle_after: Option<u64>,
    say_stopping: bool,
    leak: u64,
    spike: u64,
    spike_until: Option<String>,
}

fn parse(args: Vec<String>, o: &mut Opts) {
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| die(&format!("{a} wants a value")))
        };
        match a.as_str() {
            "--ready-delay" => o.ready_delay = num(&val()),
            "--ready-when" => o.ready_when = Some(val()),
            "--never-ready" => o.never_ready = true,
            "--notify-fd" => o.notify_fd = Some(num(&val()) as i32),
            "--notify" => o.notify = true,
            "--exit" => o.exit = Some(num(&val()) as i32),
            "--ignore-term" => o.ignore_term = true,
            "--crash-after" => o.crash_after = Some(num(&val())),
            "--serve-delay" => o.serve_delay = num(&val()),
            "--serve-until" => o.serve_until = Some(val()),
            "--start-log" => o.start_log = Some(val()),
            "--stamp" => o.stamp = Some(val()),
            "--exit-after" => o.exit_after = Some(num(&val())),
            "--ignore-hold" => o.ignore_hold = true,
            "--helper" => o.helper = true,
            "--accept-log" => o.accept_log = Some(val()),
            "--window-log" => o.window_log = Some(val()),
            "--ping" => o.ping = true,
            "--hang-after" => o.hang_after = Some(num(&val())),
            "--abrt-log" => o.abrt_log = Some(val()),
            "--recycle-after" => o.recycle_after = Some(num(&val())),
            "--say-stopping" => o.say_stopping = true,
            "--leak" => o.leak = num(&val()),
            "--spike" => o.spike = num(&val()),
            "--spike-until" => o.spike_until = Some(val()),
            "--conf" => {
                let path = val();
                if let Ok(text) = std::fs::read_to_string(&path) {
                    parse(text.split_whitespace().map(str::to_string).collect(), o);
                }
            }
            _ => die(&format!("unknown option {a}")),
        }
    }
}

fn num(s: &str) -> u64 {
    s.parse()
        .unwrap_or_else(|_| die(&format!("not a number: {s}")))
}

fn die(msg: &str) -> ! {
    eprintln!("test-worker: fatal: {msg}");
    std::process::exit(100)
}

fn env(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| "-".into())
}

/// Wait for `fd` (or only for a signal when fd < 0) at most `ms` (-1: forever),
/// with every stop signal deliverable only during the wait; exit 0 on one.
fn wait(fd: i32, ms: i64) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    let tsp = if ms < 0 {
        std::ptr::null()
    } else {
        &ts as *const libc::timespec
    };
    // SAFETY: sigset_t is plain data; all zeroes is a valid value, emptied below.
    let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `empty` is a valid sigset_t to write.
    unsafe { libc::sigemptyset(&mut empty) };
    // SAFETY: `p` is one valid pollfd (0 are read when fd < 0), `tsp` is null or
    // points to `ts`, and `empty` is a valid mask; all outlive the call.
    let n = unsafe { libc::ppoll(&mut p, if fd < 0 { 0 } else { 1 }, tsp, &empty) };
    if STOP.load(Ordering::SeqCst) != 0 {
        std::process::exit(0);
    }
    // ppoll that finds fd ready returns with a stop signal still pending (the
    // handler runs only on EINTR): that signal too means stop, not accept.
    // SAFETY: sigset_t is plain data; all zeroes is a valid value, filled below.
    let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `pending` is a valid sigset_t to write.
    unsafe { libc::sigpending(&mut pending) };
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGQUIT] {
        // SAFETY: `pending` is an initialised sigset_t and `sig` a valid signal.
        if unsafe { libc::sigismember(&pending, sig) } == 1 {
            std::process::exit(0);
        }
    }
    n > 0
}

/// Append "WHAT PID NS" to the --stamp file.
fn stamp(o: &Opts, what: &str) {
    if let Some(path) = &o.stamp {
        let ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        append_line(path, &format!("{what} {} {ns}", std::process::id()));
    }
}

fn main() {
    let mut o = Opts::default();
    parse(std::env::args().skip(1).collect(), &mut o);
    stamp(&o, "start");
    if let Some(ms) = o.exit_after {
        std::thread::sleep(Duration::from_millis(ms));
        stamp(&o, "exit");
        std::process::exit(0);
    }
    if let Some(path) = &o.start_log {
        append_line(path, &start_line(""));
    }
    if let Some(code) = o.exit {
        stamp(&o, "exit");
        std::process::exit(code);
    }
    // Stop signals: caught, and blocked except while waiting. An ignored TERM
    // (--ignore-term) is not blocked: the kernel keeps a blocked signal
    // pending even when its action is to ignore it, and `wait` would take
    // that pending TERM for a stop (issue 25); unblocked, it is discarded.
    // SAFETY: sigset_t is plain data; all zeroes is a valid value, emptied below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t to write.
    unsafe { libc::sigemptyset(&mut set) };
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGQUIT] {
        if !(sig == libc::SIGTERM && o.ignore_term) {
            // SAFETY: `set` is an initialised sigset_t and `sig` a valid signal.
            unsafe { libc::sigaddset(&mut set, sig) };
        }
        // SAFETY: struct sigaction is plain data; all zeroes is a valid value
        // (no flags, an empty mask), the handler is set below.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = if sig == libc::SIGTERM && o.ignore_term {
            libc::SIG_IGN
        } else {
            on_stop as extern "C" fn(libc::c_int) as libc::sighandler_t
        };
        // SAFETY: on_stop only stores to an atomic (async-signal-safe); `sa` is
        // valid for the call and the old action is not wanted (null).
        unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) };
    }
    // SAFETY: `set` is an initialised sigset_t; the old mask is not wanted (null).
    unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if o.never_ready {
        loop {
            wait(-1, -1);
        }
    }
    let leak = vec![1u8; (o.leak as usize) << 20];
    if o.ready_delay > 0 {
        let end = std::time::Instant::now() + Duration::from_millis(o.ready_delay);
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            if left.is_zero() {
                break;
            }
            wait(-1, left.as_millis().max(1) as i64);
        }
    }
    if let Some(path) = &o.ready_when {
        while !std::path::Path::new(path).exists() {
            wait(-1, 5);
        }
    }
    if o.window_log.is_some() {
        // SAFETY: struct sigaction is plain data; all zeroes is a valid value
        // (no flags, an empty mask), the handler is set below.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_cont as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: on_cont only stores to an atomic (async-signal-safe); `sa` is
        // valid for the call and the old action is not wanted (null).
        unsafe { libc::sigaction(libc::SIGCONT, &sa, std::ptr::null_mut()) };
    }
    // --abrt-log: caught before saying ready (a worker slow to reach its
    // first ping on a busy machine may get the watchdog's ABRT early).
    if let Some(path) = &o.abrt_log {
        let _ = ABRT_LOG.set(std::ffi::CString::new(path.as_str()).unwrap_or_default());
        // SAFETY: struct sigaction is plain data; all zeroes is a valid value
        // (no flags, an empty mask), the handler is set below.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_abrt as extern "C" fn(libc::c_int) as libc::sighandler_t;
        // SAFETY: on_abrt uses async-signal-safe calls only; `sa` is valid.
        unsafe { libc::sigaction(libc::SIGABRT, &sa, std::ptr::null_mut()) };
    }
    let t_ready = std::time::Instant::now();
    let mut chan = None;
    if let Some(fd) = o.notify_fd {
        // SAFETY: --notify-fd names a descriptor the parent handed us for our
        // messages; nothing else in this process owns or closes it.
        let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let _ = f.write_all(b"\n");
        chan = Some(f);
    }
    if o.notify {
        notify();
    }
    let mut life = Life::new(&o, chan);
    life.leak = leak;
    if let Some(path) = &o.window_log {
        window(t_ready, path);
    }
    if !o.ignore_hold {
        if let Ok(v) = std::env::var("FORKPOOL_HOLD_FD") {
            hold(num(&v) as i32);
        }
    }
    if o.helper {
        helper(&o);
    }
    serve(&o, &mut life);
}

static ABRT_LOG: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();

extern "C" fn on_abrt(_: libc::c_int) {
    if let Some(path) = ABRT_LOG.get() {
        // SAFETY: open/write/close are async-signal-safe; `path` is a valid C
        // string that lives for the whole program (a static).
        unsafe {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT,
                0o644,
            );
            if fd >= 0 {
                let mut digits = [0u8; 10];
                let (mut pid, mut n) = (libc::getpid() as u32, 0);
                while pid > 0 && n < digits.len() {
                    digits[n] = b'0' + (pid % 10) as u8;
                    pid /= 10;
                    n += 1;
                }
                let mut buf = [0u8; 16];
                buf[..5].copy_from_slice(b"abrt ");
                for i in 0..n {
                    buf[5 + i] = digits[n - 1 - i];
                }
                buf[5 + n] = b'\n';
                let buf = &buf[..6 + n];
                libc::write(fd, buf.as_ptr().cast(), buf.len());
                libc::close(fd);
            }
        }
    }
}

/// What a worker does beside serving: watchdog pings, asking to be
/// recycled, saying it stops, hanging, memory.
struct Life {
    chan: Option<std::fs::File>,
    datagrams: bool,
    ping_every: Option<Duration>,
    next_ping: std::time::Instant,
    hang_at: Option<std::time::Instant>,
    spike_end: Option<std::time::Instant>,
    spike_until: Option<String>,
    spike: Vec<u8>,
    leak: Vec<u8>,
    served: u64,
    asked: bool,
}

impl Life {
    fn new(o: &Opts, chan: Option<std::fs::File>) -> Life {
        let now = std::time::Instant::now();
        // As sd_watchdog_enabled(3): WATCHDOG_PID, when set, must be our pid.
        let mine =
            std::env::var("WATCHDOG_PID").map_or(true, |p| p == std::process::id().to_string());
        let usec = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|_| mine);
        let mut l = Life {
            chan,
            datagrams: o.notify,
            ping_every: usec
                .filter(|_| o.ping)
                .map(|u| Duration::from_micros(u / 3)),
            next_ping: now,
            hang_at: o.hang_after.map(|ms| now + Duration::from_millis(ms)),
            spike_end: None,
            spike_until: None,
            spike: Vec::new(),
            leak: Vec::new(),
            served: 0,
            asked: false,
        };
        if o.spike > 0 {
            l.spike = vec![1u8; (o.spike as usize) << 20];
            // Timed from when the pages are touched (that alone takes
            // seconds on a busy machine), or held until the test says.
            match &o.spike_until {
                Some(path) => l.spike_until = Some(path.clone()),
                None => {
                    l.spike_end = Some(std::time::Instant::now() + Duration::from_millis(1500));
                }
            }
        }
        l
    }

    /// Tell forkpool `line` (pipe) or `dgram` (NOTIFY_SOCKET).
    fn say(&mut self, line: &[u8], dgram: &[u8]) {
        if let Some(f) = self.chan.as_mut() {
            let _ = f.write_all(line);
        }
        if self.datagrams {
            send_notify(dgram);
        }
    }

    /// Time-based chores; how long the next wait may last (-1: forever).
    fn chores(&mut self) -> i64 {
        let now = std::time::Instant::now();
        if self.hang_at.is_some_and(|t| now >= t) {
            loop {
                // SAFETY: pause(2) takes no arguments.
                unsafe { libc::pause() };
            }
        }
        let told = self
            .spike_until
            .as_ref()
            .is_some_and(|p| std::path::Path::new(p).exists());
        if told || self.spike_end.is_some_and(|t| now >= t) {
            self.spike = Vec::new();
            self.spike_end = None;
            self.spike_until = None;
        }
        if let Some(every) = self.ping_every {
            if now >= self.next_ping {
                self.say(b"\n", b"WATCHDOG=1\n");
                self.next_ping = now + every;
            }
        }
        let dues = [
            self.hang_at,
            self.spike_end,
            self.ping_every.map(|_| self.next_ping),
            // --spike-until: look for the file every 5 ms
            self.spike_until
                .as_ref()
                .map(|_| now + Duration::from_millis(5)),
        ];
        match dues.into_iter().flatten().min() {
            Some(t) => t.saturating_duration_since(now).as_millis() as i64 + 1,
            None => -1,
        }
    }

    /// One more connection answered.
    fn served(&mut self, o: &Opts) {
        self.served += 1;
        if !self.asked && o.recycle_after.is_some_and(|k| self.served >= k) {
            self.asked = true;
            self.say(b"recycle\n", b"RECYCLE=1\n");
        }
        let _ = self.leak.len();
    }
}

/// A stop signal waiting (blocked outside of `wait`)?
fn stop_pending() -> bool {
    // SAFETY: sigset_t is plain data; all zeroes is a valid value, filled below.
    let mut pending: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `pending` is a valid sigset_t to write.
    unsafe { libc::sigpending(&mut pending) };
    [libc::SIGTERM, libc::SIGHUP, libc::SIGINT, libc::SIGQUIT]
        .iter()
        // SAFETY: `pending` is an initialised sigset_t and `sig` a valid signal.
        .any(|&sig| unsafe { libc::sigismember(&pending, sig) } == 1)
}

/// --helper: fork; the child (the helper) returns and serves like its parent.
fn helper(o: &Opts) {
    // SAFETY: test-worker is single-threaded here, so the child may run any code.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        if let Some(path) = &o.start_log {
            append_line(path, &start_line(" helper"));
        }
    } else if pid < 0 {
        die("unable to fork a helper");
    }
}

/// Wait on the hold descriptor until a byte or EOF; a stop signal ends us.
fn hold(fd: i32) {
    while !wait(fd, -1) {}
    let mut b = [0u8; 1];
    // SAFETY: read(2) writes at most 1 byte into `b`, which is 1 byte long.
    unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
    // SAFETY: the hold descriptor is ours alone and is not used after this.
    unsafe { libc::close(fd) };
}

/// --window-log: tick until SIGCONT; the last tick before it is when we were stopped.
fn window(t_ready: std::time::Instant, path: &str) {
    let mut last = std::time::Instant::now();
    let end = t_ready + Duration::from_secs(3);
    let got = loop {
        std::thread::yield_now();
        if CONT.load(Ordering::SeqCst) != 0 {
            break Some(last.duration_since(t_ready).as_nanos());
        }
        last = std::time::Instant::now();
        if last > end {
            break None;
        }
    };
    let ns = got.map_or("none".to_string(), |u| u.to_string());
    append_line(path, &format!("window {} {ns}", std::process::id()));
}

/// `line` and a newline appended to the file at `path` (created if need
/// be) in one write(2): lines of processes appending at once never mix.
/// (writeln! on a File writes each piece apart: "start", " ", the pid, ...;
/// a helper's line inside a worker's was two lines no test could read,
/// forkpool_hostile kill_9_...: "no helpers" after 30 s, once.)
fn append_line(path: &str, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// A --start-log line: "PID GEN WORKER", then `suffix`.
fn start_line(suffix: &str) -> String {
    format!(
        "{} {} {}{suffix}",
        std::process::id(),
        env("FORKPOOL_GENERATION"),
        env("FORKPOOL_WORKER")
    )
}

fn notify() {
    send_notify(b"READY=1\n");
}

fn send_notify(msg: &[u8]) {
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        die("NOTIFY_SOCKET is not set")
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        die("unable to create a socket")
    };
    let res = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes()).and_then(|a| sock.send_to_addr(msg, &a))
    } else {
        sock.send_to(msg, &path)
    };
    if let Err(e) = res {
        die(&format!("unable to notify {path}: {e}"));
    }
}

fn serve(o: &Opts, life: &mut Life) {
    // Shared flag of the socket, as gunicorn sets it: accept never blocks.
    // SAFETY: fcntl(2) on descriptor 0 with integer arguments: no memory is passed.
    let fl = unsafe { libc::fcntl(0, libc::F_GETFL) };
    // SAFETY: as above.
    unsafe { libc::fcntl(0, libc::F_SETFL, fl | libc::O_NONBLOCK) };
    let cwd = std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "-".into());
    let line = format!(
        "pid={} gen={} worker={} listen_pid={} release={} cwd={}\n",
        std::process::id(),
        env("FORKPOOL_GENERATION"),
        env("FORKPOOL_WORKER"),
        env("LISTEN_PID"),
        env("FORKPOOL_RELEASE"),
        cwd
    );
    let mut served = 0u64;
    loop {
        let ms = life.chores();
        if !wait(0, ms) {
            continue;
        }
        // SAFETY: null address and length pointers are allowed (the peer is not wanted).
        let fd = unsafe {
            libc::accept4(
                0,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if e == libc::EAGAIN || e == libc::EINTR || e == libc::ECONNABORTED {
                continue;
            }
            die(&format!(
                "unable to accept: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: accept4 just returned `fd` (not negative, checked above); nothing
        // else owns it.
        let mut conn = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        if let Some(path) = &o.accept_log {
            append_line(path, &format!("accept {}", std::process::id()));
        }
        // The connection inherits nothing from the listener on Linux, but be sure.
        // SAFETY: fcntl(2) on a descriptor we own, with integer arguments only.
        unsafe { libc::fcntl(conn.as_raw_fd(), libc::F_SETFL, 0) };
        if o.serve_delay > 0 {
            let end = std::time::Instant::now() + Duration::from_millis(o.serve_delay);
            let mut said = false;
            while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
                if o.say_stopping && !said && stop_pending() {
                    // Stop accepting now, say so, finish this connection.
                    // SAFETY: descriptor 0 is our copy of the listening socket;
                    // nothing uses it after this (we exit after this answer).
                    unsafe { libc::close(0) };
                    life.say(b"stopping\n", b"STOPPING=1\n");
                    said = true;
                }
                std::thread::sleep(left.min(Duration::from_millis(5)));
            }
        }
        if let Some(path) = &o.serve_until {
            // (stop signals stay blocked: taken after the answer, as above)
            while !std::path::Path::new(path).exists() {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = conn.write_all(line.as_bytes());
        drop(conn);
        life.served(o);
        served += 1;
        if o.crash_after.is_some_and(|k| served >= k) {
            std::process::exit(1);
        }
    }
}
