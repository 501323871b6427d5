//! uptime-probe: C clients request URL for a duration, a count, or until stopped,
//! and count what a deploy cost: failed, retried and mixed-release responses,
//! versions, flapping, latency. Exit 0 only when nothing failed and nothing mixed.

mod client;
mod report;
mod stats;

use std::io::IsTerminal;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lexopt::prelude::*;
use unixtool::{Tool, EXIT_TEMPORARY};

use client::{Live, Shared, Target};
use stats::Stats;

const TOOL: Tool = Tool {
    name: "uptime-probe",
    usage: "uptime-probe [-c N] [-d SECS | -n COUNT] [--no-keepalive] [-t MS] [--json] [--flapping-fails] [-q] URL",
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
  -h, --help             this text
  -V, --version          the version
Exit: 0 nothing failed and nothing mixed; 1 some request failed or was mixed (or
flapped, with --flapping-fails), or none finished; 100 usage; 111 could not start.
",
};

/// Exit status when the run counted a failure or a mixed response.
const EXIT_FAILED: i32 = 1;

pub struct Run {
    pub url: String,
    pub concurrency: usize,
    pub keepalive: bool,
    pub elapsed: Duration,
    pub stats: Stats,
    /// Releases in order of first appearance, with when they were first seen.
    pub releases: Vec<(Vec<u8>, Duration)>,
    pub flapping_fails: bool,
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

fn main() {
    let mut concurrency: usize = 8;
    let mut duration: Option<u64> = None;
    let mut limit: Option<u64> = None;
    let mut keepalive = true;
    let mut timeout_ms: u64 = 5000;
    let mut json = false;
    let mut flapping_fails = false;
    let mut quiet = false;
    let mut url: Option<String> = None;

    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = TOOL.next_arg(&mut p) {
        match arg {
            Short('c') | Long("concurrency") => {
                concurrency = TOOL.number("-c", &TOOL.value(&mut p), 1, 4096)
            }
            Short('d') | Long("duration") => {
                duration = Some(TOOL.number("-d", &TOOL.value(&mut p), 1, 100 * 365 * 86_400))
            }
            Short('n') | Long("requests") => {
                limit = Some(TOOL.number("-n", &TOOL.value(&mut p), 1, u64::MAX / 2))
            }
            Long("no-keepalive") => keepalive = false,
            Short('t') | Long("timeout") => {
                timeout_ms = TOOL.number("-t", &TOOL.value(&mut p), 1, 86_400_000)
            }
            Long("json") => json = true,
            Long("flapping-fails") => flapping_fails = true,
            Short('q') | Long("quiet") => quiet = true,
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
    let Some((host, port, path)) = parse_url(&url) else {
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
            format_args!("unable to resolve {host}: {e}"),
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
        if keepalive { "" } else { "Connection: close\r\n" }
    );
    let target = Arc::new(Target {
        addr,
        request: request.into_bytes(),
        keepalive,
        timeout: Duration::from_millis(timeout_ms),
    });

    // SIGINT and SIGTERM end the run (and the results are printed): blocked in
    // every thread, taken by this one with sigtimedwait.
    let stop_signals = signal_set();
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &stop_signals, std::ptr::null_mut()) };

    let start = Instant::now();
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        issued: AtomicU64::new(0),
        limit,
        start,
        releases: Mutex::new(Vec::new()),
    });
    let live: Arc<Vec<Live>> = Arc::new((0..concurrency).map(|_| Live::default()).collect());
    let finished = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::with_capacity(concurrency);
    for i in 0..concurrency {
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
            Ok(h) => clients.push(h),
            Err(e) => {
                shared.stop.store(true, Ordering::Relaxed);
                TOOL.fatal(
                    EXIT_TEMPORARY,
                    format_args!("unable to start client {}: {e}", i + 1),
                );
            }
        }
    }

    // Wait: for the duration, the count, or a signal; progress on stderr meanwhile.
    let every = if std::io::stderr().is_terminal() {
        1
    } else {
        10
    };
    let mut next_progress = Duration::from_secs(every);
    let mut releases_told = 0;
    let mut stopped_by = None;
    while finished.load(Ordering::Acquire) < concurrency {
        if let Some(sig) = wait_signal(&stop_signals, Duration::from_millis(50)) {
            stopped_by = Some(sig);
            break;
        }
        let t = start.elapsed();
        if duration.is_some_and(|d| t >= Duration::from_secs(d)) {
            break;
        }
        if quiet {
            continue;
        }
        if let Ok(r) = shared.releases.lock() {
            for (rel, at) in r.iter().skip(releases_told) {
                TOOL.info(format_args!(
                    "release {} first seen at {:.3} s",
                    String::from_utf8_lossy(rel),
                    at.as_secs_f64()
                ));
            }
            releases_told = r.len();
        }
        if t >= next_progress {
            next_progress += Duration::from_secs(every);
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
    }
    shared.stop.store(true, Ordering::Relaxed);
    if let (Some(sig), false) = (stopped_by, quiet) {
        TOOL.info(format_args!("stopped by signal {sig}"));
    }
    let mut stats = Stats::new();
    for h in clients {
        match h.join() {
            Ok(s) => stats.merge(&s),
            Err(_) => TOOL.fatal(EXIT_TEMPORARY, "a client thread died"),
        }
    }
    let elapsed = start.elapsed();
    let releases = match shared.releases.lock() {
        Ok(r) => r.clone(),
        Err(p) => p.into_inner().clone(),
    };
    let run = Run {
        url,
        concurrency,
        keepalive,
        elapsed,
        stats,
        releases,
        flapping_fails,
    };
    let out = if json {
        report::json(&run)
    } else {
        report::table(&run)
    };
    print!("{out}");
    std::process::exit(if run.failure().is_some() {
        EXIT_FAILED
    } else {
        0
    });
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

fn signal_set() -> libc::sigset_t {
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
    }
    set
}

/// The name of a blocked stop signal that came within `d`, if one did.
fn wait_signal(set: &libc::sigset_t, d: Duration) -> Option<&'static str> {
    let ts = libc::timespec {
        tv_sec: d.as_secs() as libc::time_t,
        tv_nsec: d.subsec_nanos() as libc::c_long,
    };
    let sig = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    match sig {
        libc::SIGINT => Some("INT"),
        libc::SIGTERM => Some("TERM"),
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
