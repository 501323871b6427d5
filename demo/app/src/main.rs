//! app: the demo site. One release, pinned at start; accepts on descriptor 0 and
//! serves one connection at a time (workers are processes: forkpool runs N of them).

mod http;
mod sys;

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lexopt::prelude::*;
use nix::errno::Errno;
use unixtool::{Tool, EXIT_TEMPORARY, EXIT_USAGE};

const TOOL: Tool = Tool {
    name: "app",
    usage: "app [--root DIR] [--ready-fd N] [--slow-start MS] [--fail-start] [--read-timeout MS] [--listen HOST:PORT [--workers N]] [-v]",
    help: "
  -r, --root DIR         the release directory (default .): canonicalized once, chdir there
  -d, --ready-fd N       write a newline to descriptor N once able to accept, then close it
      --slow-start MS    wait MS milliseconds before becoming ready
      --fail-start       exit 1 at start (a release that fails, on purpose)
  -t, --read-timeout MS  close a connection silent for MS milliseconds (default 5000)
  -l, --listen HOST:PORT bind a socket of its own instead of using descriptor 0
                         (prints the port on stdout; for benchmarks)
  -w, --workers N        with --listen: N processes accept on that socket (default 1)
  -v, --verbose          one line per request on stderr
  -h, --help             this text
  -V, --version          the version
",
};

/// What a request handler needs to know, fixed at start.
pub struct Site {
    /// The release id read from DIR/RELEASE at start: the release of the running code.
    pub release: String,
    /// The canonical DIR/htdocs, computed once; no file outside it is ever served.
    pub htdocs: PathBuf,
    pub read_timeout: Duration,
    pub verbose: bool,
    /// The listening socket, to see whether others wait for this worker.
    pub listener: RawFd,
}

fn main() {
    let mut root = PathBuf::from(".");
    let mut ready_fd: Option<RawFd> = None;
    let mut slow_start_ms: u64 = 0;
    let mut fail_start = false;
    let mut read_timeout_ms: u64 = 5000;
    let mut listen: Option<String> = None;
    let mut workers: u32 = 1;
    let mut verbose = false;

    let mut p = lexopt::Parser::from_env();
    while let Some(arg) = TOOL.next_arg(&mut p) {
        match arg {
            Short('r') | Long("root") => root = PathBuf::from(TOOL.value(&mut p)),
            Short('d') | Long("ready-fd") => {
                ready_fd = Some(TOOL.number("--ready-fd", &TOOL.value(&mut p), 0, i32::MAX))
            }
            Long("slow-start") => {
                slow_start_ms = TOOL.number("--slow-start", &TOOL.value(&mut p), 0, 86_400_000)
            }
            Long("fail-start") => fail_start = true,
            Short('t') | Long("read-timeout") => {
                read_timeout_ms = TOOL.number("--read-timeout", &TOOL.value(&mut p), 1, 86_400_000)
            }
            Short('l') | Long("listen") => match TOOL.value(&mut p).into_string() {
                Ok(s) => listen = Some(s),
                Err(v) => TOOL.usage(format_args!("bad address {:?}", v.to_string_lossy())),
            },
            Short('w') | Long("workers") => {
                workers = TOOL.number("--workers", &TOOL.value(&mut p), 1, 1024)
            }
            Short('v') | Long("verbose") => verbose = true,
            Short('h') | Long("help") => TOOL.print_help(),
            Short('V') | Long("version") => TOOL.print_version(),
            Value(v) => TOOL.usage(format_args!(
                "unexpected argument {:?}",
                v.to_string_lossy()
            )),
            other => TOOL.bad_arg(other.unexpected()),
        }
    }
    if workers > 1 && listen.is_none() {
        TOOL.usage("--workers needs --listen");
    }
    let hold_fd: Option<RawFd> = std::env::var_os("FORKPOOL_HOLD_FD").map(|v| {
        match unixtool::parse_number(&v, 0, i32::MAX) {
            Some(n) => n,
            None => TOOL.fatal(
                EXIT_USAGE,
                format_args!(
                    "FORKPOOL_HOLD_FD is not a descriptor number: {:?}",
                    v.to_string_lossy()
                ),
            ),
        }
    });

    if fail_start {
        TOOL.fatal(
            1,
            "unable to start: --fail-start was given (a release that fails at start, on purpose)",
        );
    }

    // The release: resolved once, for the life of this process.
    let root = match std::fs::canonicalize(&root) {
        Ok(r) => r,
        Err(e) => TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!(
                "unable to resolve {}: {}",
                root.display(),
                unixtool::io_reason(&e)
            ),
        ),
    };
    if let Err(e) = std::env::set_current_dir(&root) {
        TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!(
                "unable to chdir to {}: {}",
                root.display(),
                unixtool::io_reason(&e)
            ),
        );
    }
    let release = read_release(&root);
    let htdocs = match std::fs::canonicalize(root.join("htdocs")) {
        Ok(h) => h,
        Err(e) => TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!(
                "unable to resolve {}/htdocs: {}",
                root.display(),
                unixtool::io_reason(&e)
            ),
        ),
    };
    for fd in ready_fd.iter().chain(hold_fd.iter()) {
        if !unixtool::fd_is_open(*fd) {
            TOOL.fatal(
                EXIT_USAGE,
                format_args!("unable to use descriptor {fd}: it is not open"),
            );
        }
        let _ = unixtool::set_cloexec(*fd, true);
    }

    sys::install_signal_handlers();

    // The socket: descriptor 0 (tcplisten, forkpool), or our own for benchmarks.
    let listener: RawFd = match &listen {
        Some(addr) => {
            let (fd, port) = match sys::listen_on(addr) {
                Ok(x) => x,
                Err(sys::ListenError::Address) => {
                    TOOL.usage(format_args!("bad address {addr:?} (want HOST:PORT)"))
                }
                Err(sys::ListenError::Os(what, e)) => {
                    TOOL.fatal_errno(EXIT_TEMPORARY, format_args!("{what} {addr}"), e)
                }
            };
            println!("{port}");
            fd
        }
        None => 0,
    };
    if let Err(e) = sys::check_listening(listener) {
        TOOL.fatal(
            EXIT_USAGE,
            format_args!("unable to accept on descriptor {listener}: {e}"),
        );
    }

    let mut children = Vec::new();
    for _ in 1..workers {
        match sys::fork() {
            Ok(Some(pid)) => children.push(pid),
            Ok(None) => {
                children.clear();
                ready_fd = None;
                break;
            }
            Err(e) => TOOL.fatal_errno(EXIT_TEMPORARY, "fork", e),
        }
    }

    if slow_start_ms > 0 && !sys::sleep_unless_stopped(Duration::from_millis(slow_start_ms)) {
        std::process::exit(0);
    }

    // Ready: it can accept now (connections queue in the kernel's backlog meanwhile).
    if let Some(fd) = ready_fd {
        if let Err(e) = sys::write_all(fd, b"\n") {
            TOOL.warn(format_args!(
                "unable to write to descriptor {fd}: {}",
                unixtool::strerror(e)
            ));
        }
        sys::close(fd);
    }
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        if let Err(e) = sys::notify(&path, b"READY=1") {
            TOOL.warn(format_args!(
                "unable to notify {}: {}",
                path.to_string_lossy(),
                unixtool::io_reason(&e)
            ));
        }
    }
    if verbose {
        TOOL.info(format_args!(
            "release {release} ready in {} (pid {})",
            root.display(),
            std::process::id()
        ));
    }

    // Held: a cutover keeps the new generation from accepting until it lets go.
    if let Some(fd) = hold_fd {
        sys::wait_for_release_of_hold(fd);
        sys::close(fd);
        if sys::stopping() {
            std::process::exit(0);
        }
    }

    let site = Site {
        release,
        htdocs,
        read_timeout: Duration::from_millis(read_timeout_ms),
        verbose,
        listener,
    };
    let mut conn_buf = Vec::with_capacity(http::MAX_HEAD);
    loop {
        if sys::stopping() {
            break;
        }
        match sys::accept(listener) {
            Ok(fd) => http::serve_connection(&site, fd, &mut conn_buf),
            Err(Errno::EINTR) | Err(Errno::ECONNABORTED) | Err(Errno::EPROTO) => {}
            Err(Errno::EAGAIN) => sys::wait_readable(listener),
            Err(e @ (Errno::EMFILE | Errno::ENFILE | Errno::ENOBUFS | Errno::ENOMEM)) => {
                TOOL.warn(format_args!("unable to accept: {}", unixtool::strerror(e)));
                sys::sleep_unless_stopped(Duration::from_millis(100));
            }
            Err(e) => TOOL.fatal_errno(
                EXIT_TEMPORARY,
                format_args!("accept on descriptor {listener}"),
                e,
            ),
        }
    }
    sys::stop_children(&children);
    std::process::exit(0);
}

/// DIR/RELEASE: the release id, one line, read once.
fn read_release(root: &Path) -> String {
    let path = root.join("RELEASE");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!(
                "unable to read {}: {}",
                path.display(),
                unixtool::io_reason(&e)
            ),
        ),
    };
    let id = text.lines().next().unwrap_or("").trim().to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_graphic()) {
        TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!(
                "unable to read {}: not one line of printable text",
                path.display()
            ),
        );
    }
    id
}
