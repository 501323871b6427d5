//! uptime-probe: C clients request URL for a duration, a count, or until stopped,
//! and count what a deploy cost: failed, retried and mixed-release responses,
//! versions, flapping, latency. Exit 0 only when nothing failed and nothing mixed.

mod client;
mod marks;
mod report;
mod stats;
mod svg;

use std::io::IsTerminal;
use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lexopt::prelude::*;
use nix::sys::signal::{SigSet, Signal};
use unixtool::{Tool, EXIT_TEMPORARY};

use client::{Live, Shared, Target, Usr1};
use stats::{Bin, Stats};

const TOOL: Tool = Tool {
    name: "uptime-probe",
    usage: "uptime-probe [-c N] [-d SECS | -n COUNT] [--no-keepalive] [-t MS] [--json] [--flapping-fails] [-q] [--svg FILE [--marks FILE]] URL",
    help: "
  -c, --concurrency N    N clients at once (default 8)
  -d, --duration SECS    stop after SECS seconds
  -n, --requests COUNT   stop after COUNT requests in all
                         (neither -d nor -n: run until SIGINT or SIGTERM)
      --no-keepalive     a fresh connection per request (Connection: close)
  -t, --timeout MS       a request that takes longer failed as timeout (default 5000)
      --json             the results as one JSON object on stdout, not a table
      --flapping-fails   a client seeing an older release after a newer one fails the run
  -q, --quiet            no progress lines on stderr
      --svg FILE         draw the run's timeline (100 ms bins) into FILE, an SVG picture
      --marks FILE       add a labelled mark per `unix-time label` line of FILE, or per
                         deploy-release deploys.jsonl line (with --svg)
  -h, --help             this text
  -V, --version          the version
SIGINT or SIGTERM ends the run; each SIGUSR1 starts or ends a marked part
(latency inside and outside the marked parts).
Exit: 0 nothing failed and nothing mixed; 1 some request failed or was mixed (or
flapped, with --flapping-fails), or none finished; 100 usage; 111 could not start.
",
};

/// Exit status when the run counted a failure or a mixed response.
const EXIT_FAILED: i32 = 1;
/// How often the main thread looks at the clock (and prints progress).
const TICK: Duration = Duration::from_millis(50);

pub struct Run {
    pub url: String,
    pub concurrency: usize,
    pub keepalive: bool,
    pub elapsed: Duration,
    pub stats: Stats,
    /// Releases in order of first appearance, with when they were first seen.
    pub releases: Vec<(Vec<u8>, Duration)>,
    pub flapping_fails: bool,
    /// The SIGUSR1s (each starts or ends a marked part; the latency is
    /// reported inside and outside them).
    pub usr1: Usr1,
}

impl Run {
    /// The verdict: what made the run fail, or None.
    pub fn failure(&self) -> Option<String> {
        let s = &self.stats;
        let mut why = Vec::new();
        if s.requests() == 0 {
            why.push("no request finished".to_string());
        }
        if s.failed() > 0 {
            why.push(format!("{} failed", s.failed()));
        }
        if s.mixed > 0 {
            why.push(format!("{} mixed", s.mixed));
        }
        if self.flapping_fails && s.flapping > 0 {
            why.push(format!("{} flapping", s.flapping));
        }
        (!why.is_empty()).then(|| why.join(", "))
    }
}

/// The command line.
struct Options {
    concurrency: usize,
    duration: Option<u64>,
    limit: Option<u64>,
    keepalive: bool,
    timeout_ms: u64,
    json: bool,
    flapping_fails: bool,
    quiet: bool,
    svg: Option<PathBuf>,
    marks: Option<PathBuf>,
    url: String,
}

/// The clients at work, and what they share with the main thread.
struct Clients {
    shared: Arc<Shared>,
    live: Arc<Vec<Live>>,
    finished: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<Stats>>,
}

fn main() {
    let opts = parse_options();
    let target = Arc::new(target(&opts));
    let signals = block_signals();
    let start_unix = unix_now();
    let clients = start_clients(&opts, target);
    let stopped_by = wait_for_the_end(&opts, &clients, &signals);
    clients.shared.stop.store(true, Ordering::Relaxed);
    if let (Some(sig), false) = (stopped_by, opts.quiet) {
        TOOL.info(format_args!("stopped by signal {sig}"));
    }
    let (run, bins) = collect(&opts, clients);
    let out = if opts.json {
        report::json(&run)
    } else {
        report::table(&run)
    };
    TOOL.print(format_args!("{out}"));
    if let Some(path) = &opts.svg {
        write_picture(path, opts.marks.as_deref(), &run, &bins, start_unix);
    }
    std::process::exit(if run.failure().is_some() {
        EXIT_FAILED
    } else {
        0
    });
}

fn parse_options() -> Options {
    let mut o = Options {
        concurrency: 8,
        duration: None,
        limit: None,
        keepalive: true,
        timeout_ms: 5000,
        json: false,
        flapping_fails: false,
        quiet: false,
        svg: None,
        marks: None,
        url: String::new(),
    };
    let mut url: Option<String> = None;
    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = TOOL.next_arg(&mut p) {
        match arg {
            Short('c') | Long("concurrency") => {
                o.concurrency = TOOL.number("-c", &TOOL.value(&mut p), 1, 4096)
            }
            Short('d') | Long("duration") => {
                o.duration = Some(TOOL.number("-d", &TOOL.value(&mut p), 1, 100 * 365 * 86_400))
            }
            Short('n') | Long("requests") => {
                o.limit = Some(TOOL.number("-n", &TOOL.value(&mut p), 1, u64::MAX / 2))
            }
            Long("no-keepalive") => o.keepalive = false,
            Short('t') | Long("timeout") => {
                o.timeout_ms = TOOL.number("-t", &TOOL.value(&mut p), 1, 86_400_000)
            }
            Long("json") => o.json = true,
            Long("flapping-fails") => o.flapping_fails = true,
            Short('q') | Long("quiet") => o.quiet = true,
            Long("svg") => o.svg = Some(PathBuf::from(TOOL.value(&mut p))),
            Long("marks") => o.marks = Some(PathBuf::from(TOOL.value(&mut p))),
            Short('h') | Long("help") => TOOL.print_help(),
            Short('V') | Long("version") => TOOL.print_version(),
            Value(v) if url.is_none() => match v.into_string() {
                Ok(s) => url = Some(s),
                Err(v) => TOOL.usage(format_args!("bad URL {:?}", v.to_string_lossy())),
            },
            Value(v) => TOOL.usage(format_args!(
                "unexpected argument {:?}",
                v.to_string_lossy()
            )),
            other => TOOL.bad_arg(other.unexpected()),
        }
    }
    let Some(url) = url else { TOOL.usage("no URL") };
    if o.marks.is_some() && o.svg.is_none() {
        TOOL.usage("--marks without --svg");
    }
    o.url = url;
    o
}

/// The address (resolved once) and the request every client sends.
fn target(opts: &Options) -> Target {
    let url = &opts.url;
    let Some((host, port, path)) = parse_url(url) else {
        TOOL.usage(format_args!(
            "bad URL {url:?} (want http://HOST[:PORT][/PATH])"
        ))
    };
    let addr = match (host.trim_start_matches('[').trim_end_matches(']'), port).to_socket_addrs() {
        Ok(mut a) => match a.next() {
            Some(a) => a,
            None => TOOL.fatal(
                EXIT_TEMPORARY,
                format_args!("unable to resolve {host}: no address"),
            ),
        },
        Err(e) => TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!("unable to resolve {host}: {}", unixtool::io_reason(&e)),
        ),
    };
    let authority = if port == 80 {
        host.clone()
    } else {
        format!("{host}:{port}")
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: uptime-probe/{}\r\nAccept: */*\r\n{}\r\n",
        env!("CARGO_PKG_VERSION"),
        if opts.keepalive { "" } else { "Connection: close\r\n" }
    );
    Target {
        addr,
        request: request.into_bytes(),
        keepalive: opts.keepalive,
        timeout: Duration::from_millis(opts.timeout_ms),
    }
}

/// SIGINT and SIGTERM end the run (and the results are printed), SIGUSR1
/// starts or ends a marked part: blocked in every thread (the clients
/// inherit the mask), taken by the main one with sigtimedwait.
fn block_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGUSR1);
    if let Err(e) = set.thread_block() {
        TOOL.fatal_errno(EXIT_TEMPORARY, "block INT, TERM and USR1", e);
    }
    set
}

fn start_clients(opts: &Options, target: Arc<Target>) -> Clients {
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        limit: opts.limit,
        start: Instant::now(),
        releases: Mutex::new(Vec::new()),
        bins: opts.svg.as_ref().map(|_| Mutex::new(Vec::new())),
        marked: AtomicBool::new(false),
        usr1: Mutex::new(Usr1::default()),
    });
    let n = opts.concurrency;
    let live: Arc<Vec<Live>> = Arc::new((0..n).map(|_| Live::default()).collect());
    let finished = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::with_capacity(n);
    for i in 0..n {
        let (t, s, l, f) = (
            target.clone(),
            shared.clone(),
            live.clone(),
            finished.clone(),
        );
        let spawned = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let stats = client::run(&t, &s, &l[i]);
                f.fetch_add(1, Ordering::Release);
                stats
            });
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => {
                shared.stop.store(true, Ordering::Relaxed);
                TOOL.fatal(
                    EXIT_TEMPORARY,
                    format_args!(
                        "unable to start client {}: {}",
                        i + 1,
                        unixtool::io_reason(&e)
                    ),
                );
            }
        }
    }
    Clients {
        shared,
        live,
        finished,
        threads,
    }
}

/// Wait for the duration, the count, or a signal (its name); progress on
/// stderr meanwhile.
fn wait_for_the_end(opts: &Options, c: &Clients, signals: &SigSet) -> Option<&'static str> {
    let every = if std::io::stderr().is_terminal() {
        1
    } else {
        10
    };
    let mut next_progress = Duration::from_secs(every);
    let mut releases_told = 0;
    let start = c.shared.start;
    while c.finished.load(Ordering::Acquire) < opts.concurrency {
        let t = start.elapsed();
        let end = opts.duration.map(Duration::from_secs);
        if end.is_some_and(|d| t >= d) {
            return None;
        }
        // Never past the duration's end: -d ends the run on time.
        let slice = end.map_or(TICK, |d| (d - t).min(TICK));
        match wait_signal(signals, slice) {
            Some(Signal::SIGUSR1) => mark(&c.shared, opts.quiet),
            Some(Signal::SIGINT) => return Some("INT"),
            Some(_) => return Some("TERM"),
            None => {}
        }
        if opts.quiet {
            continue;
        }
        if let Ok(r) = c.shared.releases.lock() {
            for (rel, at) in r.iter().skip(releases_told) {
                TOOL.info(format_args!(
                    "release {} first seen at {:.3} s",
                    String::from_utf8_lossy(rel),
                    at.as_secs_f64()
                ));
            }
            releases_told = r.len();
        }
        let t = start.elapsed();
        if t >= next_progress {
            next_progress += Duration::from_secs(every);
            progress(&c.live, t);
        }
    }
    None
}

/// SIGUSR1: the requests that finish from now on are in the other part
/// (marked after an odd number of USR1s, unmarked after an even one).
fn mark(shared: &Shared, quiet: bool) {
    let at = shared.start.elapsed();
    let marked = shared
        .usr1
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .add(at);
    shared.marked.store(marked, Ordering::Relaxed);
    if !quiet {
        TOOL.info(format_args!(
            "{} a marked part at {:.3} s",
            if marked { "start of" } else { "end of" },
            at.as_secs_f64()
        ));
    }
}

fn progress(live: &[Live], t: Duration) {
    let sum = |f: fn(&Live) -> &AtomicU64| {
        live.iter()
            .map(|l| f(l).load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let n = sum(|l| &l.requests);
    TOOL.info(format_args!(
        "{:.0} s: {} requests ({:.0}/s), {} failed, {} mixed",
        t.as_secs_f64(),
        n,
        n as f64 / t.as_secs_f64(),
        sum(|l| &l.failed),
        sum(|l| &l.mixed)
    ));
}

/// Join the clients (stopped) and merge what they counted: the run, and its
/// timeline (empty without --svg).
fn collect(opts: &Options, c: Clients) -> (Run, Vec<Bin>) {
    let mut stats = Stats::new();
    for h in c.threads {
        match h.join() {
            Ok(s) => stats.merge(&s),
            Err(_) => TOOL.fatal(EXIT_TEMPORARY, "a client thread died"),
        }
    }
    let elapsed = c.shared.start.elapsed();
    let releases = unpoison(c.shared.releases.lock()).clone();
    let bins = match &c.shared.bins {
        Some(b) => std::mem::take(&mut *unpoison(b.lock())),
        None => Vec::new(),
    };
    let run = Run {
        url: opts.url.clone(),
        concurrency: opts.concurrency,
        keepalive: opts.keepalive,
        elapsed,
        stats,
        releases,
        flapping_fails: opts.flapping_fails,
        usr1: c
            .shared
            .usr1
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    };
    (run, bins)
}

/// --svg: the picture, with the marks of the --marks file (read now, at the
/// end, so that marks written during the run are in it).
fn write_picture(path: &Path, marks: Option<&Path>, run: &Run, bins: &[Bin], start_unix: f64) {
    let marks = match marks.map(std::fs::read_to_string) {
        None => Vec::new(),
        Some(Ok(text)) => svg::parse_marks(&text, start_unix),
        Some(Err(e)) => {
            TOOL.warn(format_args!(
                "unable to read marks {}: {}",
                marks.unwrap_or(Path::new("")).display(),
                unixtool::io_reason(&e)
            ));
            Vec::new()
        }
    };
    if let Err(e) = std::fs::write(path, svg::picture(run, bins, &marks)) {
        TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!(
                "unable to write {}: {}",
                path.display(),
                unixtool::io_reason(&e)
            ),
        );
    }
}

/// A lock's value even if a client panicked holding it (the counts stay usable).
fn unpoison<T>(r: Result<T, std::sync::PoisonError<T>>) -> T {
    match r {
        Ok(v) => v,
        Err(p) => p.into_inner(),
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `http://HOST[:PORT][/PATH]` to (host, port, path); HOST may be `[v6]`.
fn parse_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url
        .get(..7)
        .filter(|s| s.eq_ignore_ascii_case("http://"))
        .map(|_| &url[7..])?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let path = path.split('#').next().unwrap_or("");
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    if authority.is_empty()
        || authority.contains('@')
        || path.bytes().any(|b| b <= b' ' || b == 0x7f)
    {
        return None;
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let close = v6.find(']')?;
        let port = &v6[close + 1..];
        (format!("[{}]", &v6[..close]), port)
    } else {
        match authority.rfind(':') {
            Some(i) => (authority[..i].to_string(), &authority[i..]),
            None => (authority.to_string(), ""),
        }
    };
    let port = match port {
        "" => 80,
        p => p.strip_prefix(':')?.parse().ok().filter(|&n| n > 0)?,
    };
    if host.is_empty() || host == "[]" {
        return None;
    }
    Some((host, port, path))
}

/// The blocked signal of `set` that came within `d`, if one did.
fn wait_signal(set: &SigSet, d: Duration) -> Option<Signal> {
    let ts = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `set` is a valid, initialised signal set and `ts` a valid
    // timespec, both alive for the call; the siginfo pointer may be null.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    match sig {
        libc::SIGINT => Some(Signal::SIGINT),
        libc::SIGTERM => Some(Signal::SIGTERM),
        libc::SIGUSR1 => Some(Signal::SIGUSR1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls() {
        let u = |s| parse_url(s);
        assert_eq!(
            u("http://127.0.0.1:8080/"),
            Some(("127.0.0.1".into(), 8080, "/".into()))
        );
        assert_eq!(
            u("http://localhost"),
            Some(("localhost".into(), 80, "/".into()))
        );
        assert_eq!(
            u("HTTP://h:1/a/b?c#d"),
            Some(("h".into(), 1, "/a/b?c".into()))
        );
        assert_eq!(
            u("http://[::1]:9/x"),
            Some(("[::1]".into(), 9, "/x".into()))
        );
        assert_eq!(u("http://h?q"), Some(("h".into(), 80, "/?q".into())));
        assert_eq!(u("https://h/"), None);
        assert_eq!(u("http://h:0/"), None);
        assert_eq!(u("http://h:x/"), None);
        assert_eq!(u("http:///"), None);
        assert_eq!(u("h:80"), None);
    }
}
