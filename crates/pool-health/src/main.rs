//! pool-health: accept on the listening socket on descriptor 0 and answer every
//! HTTP request 200 while forkpool's pool is whole and serving and the host is
//! not drained, 503 with a one-line reason otherwise. See README.md.

mod http;
mod metrics;
mod verdict;

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use lexopt::prelude::*;
use nix::sys::socket::{getsockopt, sockopt};
use unixtool::httpget::{self, Url};
use unixtool::statusfile::{self, ProcState, Status};
use unixtool::Tool;
use verdict::{Processes, Seen, Verdict};

const TOOL: Tool = Tool {
    name: "pool-health",
    usage: "pool-health [-D drainfile] [-t ms] [-c url] [-o file.prom] statusfile",
    help: "
  -D, --drain FILE   answer 503 while FILE exists (the host is drained)
  -t, --timeout MS   a client must send its request within MS milliseconds (default 2000)
  -c, --check URL    also GET URL (http://host:port/path, the site's own socket) for
                     every check: up only when it answers 2xx within the -t deadline
  -o, --textfile F   write the metrics of GET /metrics to F (temporary, rename) and exit
  -h, --help         this text
  -V, --version      the version
The listening socket is descriptor 0 (tcplisten 127.0.0.1 8081 pool-health ...).
",
};

fn main() {
    let mut drain: Option<OsString> = None;
    let mut site: Option<Url> = None;
    let mut timeout_ms: u32 = 2000;
    let mut textfile: Option<OsString> = None;
    let mut parser = lexopt::Parser::from_env();
    let mut args = Vec::new();
    while let Some(arg) = TOOL.next_arg(&mut parser) {
        match arg {
            Short('D') | Long("drain") => drain = Some(TOOL.value(&mut parser)),
            Short('t') | Long("timeout") => {
                let v = TOOL.value(&mut parser);
                timeout_ms = TOOL.number("-t", &v, 1, 3_600_000);
            }
            Short('c') | Long("check") => {
                let v = TOOL.value(&mut parser).to_string_lossy().into_owned();
                site = Some(Url::parse(&v).unwrap_or_else(|| {
                    TOOL.usage(format_args!("-c wants http://host[:port]/path, not {v:?}"))
                }));
            }
            Short('o') | Long("textfile") => textfile = Some(TOOL.value(&mut parser)),
            Short('h') | Long("help") => TOOL.print_help(),
            Short('V') | Long("version") => TOOL.print_version(),
            Value(v) => args.push(v),
            other => TOOL.bad_arg(other.unexpected()),
        }
    }
    let status = match args.as_slice() {
        [one] => one.clone(),
        [] => TOOL.usage("missing statusfile"),
        _ => TOOL.usage("one statusfile only"),
    };
    if let Some(file) = textfile {
        metrics::write_textfile(&file, &status, drain.as_ref());
    }
    check_listening();
    let timeout = Duration::from_millis(u64::from(timeout_ms));
    http::serve_forever(timeout, |path| {
        answer(path, &status, drain.as_ref(), site.as_ref(), timeout)
    })
}

/// Descriptor 0 must be a listening socket: anything else is a mistake in the
/// command line (exit 100), not a state to wait out.
fn check_listening() {
    match getsockopt(&std::io::stdin().as_fd(), sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => TOOL.fatal(
            unixtool::EXIT_USAGE,
            "unable to accept on descriptor 0: it is a socket that does not listen",
        ),
        Err(e) => TOOL.fatal(
            unixtool::EXIT_USAGE,
            format_args!(
                "unable to accept on descriptor 0: {} (start me behind tcplisten)",
                unixtool::strerror(e)
            ),
        ),
    }
}

/// The processes of this system, as /proc and poolctl's checks see them.
struct System<'a>(&'a Path);

impl Processes for System<'_> {
    fn state(&self, pid: i32) -> Option<ProcState> {
        statusfile::proc_state(pid)
    }
    fn writes_this_file(&self, status: &Status) -> Result<(), String> {
        statusfile::check_chain(self.0, status)
            .map(drop)
            .map_err(|e| e.0)
    }
}

/// /metrics: the text format; any other path: the health check.
fn answer(
    path: &str,
    status: &OsString,
    drain: Option<&OsString>,
    site: Option<&Url>,
    timeout: Duration,
) -> http::Answer {
    if path == "/metrics" {
        return (200, metrics::CONTENT_TYPE, metrics::scrape(status, drain));
    }
    let (code, line) = check(status, drain, site, timeout);
    (code, http::PLAIN, format!("{line}\n"))
}

/// Look at the drain file and the status file now (and, with -c, ask the
/// site); the status and the reason.
pub(crate) fn check(
    status: &OsString,
    drain: Option<&OsString>,
    site: Option<&Url>,
    timeout: Duration,
) -> (u16, String) {
    let drain_state = drain.and_then(|d| match std::fs::symlink_metadata(d) {
        Ok(_) => Some(Ok(())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(unixtool::io_reason(&e))),
    });
    let drain_path = drain.map(|d| d.to_string_lossy()).unwrap_or_default();
    let status_path = status.to_string_lossy();
    let age = std::fs::metadata(status)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    let seen = Seen {
        drain: drain_state,
        drain_path: &drain_path,
        status: statusfile::read_small(status.as_ref(), statusfile::MAX_READ)
            .map_err(|e| unixtool::io_reason(&e)),
        status_path: &status_path,
        age,
    };
    let verdict = match verdict::judge(&seen, &System(Path::new(status))) {
        Verdict::Up(why) => match site {
            Some(url) => ask_site(url, timeout, why),
            None => Verdict::Up(why),
        },
        down => down,
    };
    match verdict {
        Verdict::Up(why) => (200, format!("up: {why}")),
        Verdict::Down(why) => (503, format!("down: {why}")),
    }
}

/// -c: one request through the site's own socket, 2xx within `timeout`.
fn ask_site(url: &Url, timeout: Duration, why: String) -> Verdict {
    match httpget::ask(url, Instant::now() + timeout, &mut || false) {
        Some(a) if (200..300).contains(&a.status) => {
            Verdict::Up(format!("{why}; {url} answers {}", a.status))
        }
        Some(a) => Verdict::Down(format!("{url} answers {} ({why})", a.status)),
        None => Verdict::Down(format!(
            "{url} does not answer within {} ms ({why})",
            timeout.as_millis()
        )),
    }
}
