//! pool-health: accept on the listening socket on descriptor 0 and answer every
//! HTTP request 200 while forkpool's pool is whole and serving and the host is
//! not drained, 503 with a one-line reason otherwise. See README.md.

mod http;
mod metrics;
mod verdict;

use std::ffi::OsString;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::time::Duration;

use lexopt::prelude::*;
use nix::errno::Errno;
use nix::sys::socket::{accept4, getsockopt, sockopt, SockFlag};
use unixtool::{Tool, EXIT_TEMPORARY};
use verdict::{Seen, Verdict};

const TOOL: Tool = Tool {
    name: "pool-health",
    usage: "pool-health [-D drainfile] [-t ms] [-o file.prom] statusfile",
    help: "
  -D, --drain FILE   answer 503 while FILE exists (the host is drained)
  -t, --timeout MS   a client must send its request within MS milliseconds (default 2000)
  -o, --textfile F   write the metrics of GET /metrics to F (temporary, rename) and exit
  -h, --help         this text
  -V, --version      the version
The listening socket is descriptor 0 (tcplisten 127.0.0.1 8081 pool-health ...).
",
};

fn main() {
    let mut drain: Option<OsString> = None;
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
    loop {
        let conn = accept_one();
        http::serve(conn, timeout, |path| answer(path, &status, drain.as_ref()));
    }
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

/// The next connection. The socket may be non-blocking (the flag is shared by
/// every holder of it): then wait until it is readable. Transient failures (a
/// client gone before accept, descriptors or memory short) are retried.
fn accept_one() -> OwnedFd {
    loop {
        match accept4(0, SockFlag::SOCK_CLOEXEC) {
            // SAFETY: accept4 returned a new descriptor that nothing else owns.
            Ok(fd) => return unsafe { OwnedFd::from_raw_fd(fd) },
            Err(Errno::EAGAIN) => wait_readable(),
            Err(Errno::EINTR | Errno::ECONNABORTED | Errno::EPROTO | Errno::EPERM) => {}
            Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                TOOL.warn(format_args!(
                    "unable to accept a connection: {}; trying again in 100 ms",
                    unixtool::strerror(e)
                ));
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => TOOL.fatal_errno(EXIT_TEMPORARY, "accept on descriptor 0", e),
        }
    }
}

fn wait_readable() {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let stdin = std::io::stdin();
    let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
    let _ = poll(&mut fds, PollTimeout::NONE);
}

/// /metrics: the text format; any other path: the health check.
fn answer(path: &str, status: &OsString, drain: Option<&OsString>) -> http::Answer {
    if path == "/metrics" {
        return (200, metrics::CONTENT_TYPE, metrics::scrape(status, drain));
    }
    let (code, line) = check(status, drain);
    (code, http::PLAIN, format!("{line}\n"))
}

/// Look at the drain file and the status file now; the status and the reason.
pub(crate) fn check(status: &OsString, drain: Option<&OsString>) -> (u16, String) {
    let drain_state = drain.and_then(|d| match std::fs::symlink_metadata(d) {
        Ok(_) => Some(Ok(())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => Some(Err(unixtool::io_reason(&e))),
    });
    let drain_path = drain.map(|d| d.to_string_lossy()).unwrap_or_default();
    let status_path = status.to_string_lossy();
    let seen = Seen {
        drain: drain_state,
        drain_path: &drain_path,
        status: std::fs::read_to_string(status).map_err(|e| unixtool::io_reason(&e)),
        status_path: &status_path,
    };
    match verdict::judge(&seen, unixtool::statusfile::alive) {
        Verdict::Up(why) => (200, format!("up: {why}")),
        Verdict::Down(why) => (503, format!("down: {why}")),
    }
}
