//! Readiness of a supervised child (loop-forever, forkpool), three ways:
//!
//! - s6 style, [`ReadinessPipe`]: a pipe whose write end is descriptor N in the
//!   child; the child writes a newline when it is ready.
//! - systemd style, [`NotifySocket`]: a datagram socket named in
//!   `NOTIFY_SOCKET`; the child sends `READY=1`; the sender is known by its
//!   credentials (SO_PASSCRED), so one socket serves every worker of a pool.
//! - fallback: ready after staying alive for a given time ([`Options::alive`]).
//!
//! [`Options`] holds the choice, parsed from the same options in every tool:
//! `-d fd`, `--notify`, `-a ms`, `-t ms`.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::socket::{
    bind, recvmsg, setsockopt, socket, sockopt, AddressFamily, ControlMessageOwned, MsgFlags,
    SockFlag, SockType, UnixAddr,
};
use nix::unistd::Pid;

/// How a tool learns that a child is ready.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `-d fd`: the child writes a newline on this descriptor.
    pub fd: Option<RawFd>,
    /// `--notify`: the child sends `READY=1` to `$NOTIFY_SOCKET`.
    pub notify: bool,
    /// `-a ms`: ready after staying alive this long.
    pub alive: Option<Duration>,
    /// `-t ms`: the readiness deadline.
    pub deadline: Option<Duration>,
}

impl Options {
    /// Whether the child tells its readiness itself (`-d` or `--notify`).
    pub fn told(&self) -> bool {
        self.fd.is_some() || self.notify
    }

    /// Whether readiness is tracked at all.
    pub fn tracked(&self) -> bool {
        self.told() || self.alive.is_some()
    }
}

/// s6-style notification pipe. Both ends close-on-exec; the write end is moved
/// to descriptor N in the child by `child::Spawn::fds`, then closed in the parent
/// with [`ReadinessPipe::close_write`].
pub struct ReadinessPipe {
    read: OwnedFd,
    write: Option<OwnedFd>,
    seen: bool,
    /// [`ReadinessPipe::messages`]: bytes after the last whole line.
    rest: Vec<u8>,
}

/// What [`ReadinessPipe::messages`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Messages {
    /// The readiness newline arrived now.
    pub ready: bool,
    /// Whole lines after the readiness newline (without their newline; an
    /// empty line is an empty string).
    pub lines: Vec<String>,
    /// The child closed its end (or ended).
    pub closed: bool,
}

/// What a look at a readiness pipe found.
#[derive(Debug, PartialEq, Eq)]
pub enum PipeEvent {
    /// A newline arrived: the child is ready.
    Ready,
    /// The child closed its end (or ended) without a newline.
    Closed,
    /// Nothing yet.
    Nothing,
}

impl ReadinessPipe {
    pub fn new() -> Result<ReadinessPipe, Errno> {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let flags = nix::fcntl::fcntl(r.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(r.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(ReadinessPipe {
            read: r,
            write: Some(w),
            seen: false,
            rest: Vec::new(),
        })
    }

    /// The read end of a pipe handed over by an in-place upgrade,
    /// non-blocking; `seen`: the child wrote its readiness newline already
    /// (what comes next are messages: pings, recycle, stopping).
    pub fn adopt(read: OwnedFd, seen: bool) -> ReadinessPipe {
        ReadinessPipe {
            read,
            write: None,
            seen,
            rest: Vec::new(),
        }
    }

    /// The write end, to hand to the child (valid until [`Self::close_write`]).
    pub fn write_fd(&self) -> RawFd {
        self.write.as_ref().map(|w| w.as_raw_fd()).unwrap_or(-1)
    }

    /// Close the parent's copy of the write end (after the fork).
    pub fn close_write(&mut self) {
        self.write = None;
    }

    /// The read end, to poll for POLLIN.
    pub fn fd(&self) -> RawFd {
        self.read.as_raw_fd()
    }

    /// Read what is there: a newline means ready (once), EOF means closed.
    pub fn check(&mut self) -> PipeEvent {
        let mut buf = [0u8; 256];
        loop {
            match nix::unistd::read(self.read.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    return if self.seen {
                        PipeEvent::Nothing
                    } else {
                        PipeEvent::Closed
                    };
                }
                Ok(n) => {
                    if !self.seen && buf[..n].contains(&b'\n') {
                        self.seen = true;
                        return PipeEvent::Ready;
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(_) => return PipeEvent::Nothing,
            }
        }
    }
}

impl ReadinessPipe {
    /// Read what is there, keeping what comes after readiness: the first
    /// newline means ready, each line after it is a message (forkpool's
    /// protocol after READY). A line longer than 4 KiB is cut there.
    pub fn messages(&mut self) -> Messages {
        let mut m = Messages::default();
        let mut buf = [0u8; 4096];
        loop {
            match nix::unistd::read(self.read.as_raw_fd(), &mut buf) {
                Ok(0) => {
                    m.closed = true;
                    break;
                }
                Ok(n) => {
                    let mut data = &buf[..n];
                    if !self.seen {
                        let Some(at) = data.iter().position(|&b| b == b'\n') else {
                            continue;
                        };
                        self.seen = true;
                        m.ready = true;
                        data = &data[at + 1..];
                    }
                    for &b in data {
                        if b == b'\n' || self.rest.len() >= 4096 {
                            let line = std::mem::take(&mut self.rest);
                            m.lines.push(String::from_utf8_lossy(&line).into_owned());
                            if b == b'\n' {
                                continue;
                            }
                        }
                        self.rest.push(b);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        m
    }
}

/// A `NOTIFY_SOCKET` for children: an abstract-namespace datagram socket with
/// SO_PASSCRED, so every message comes with its sender's pid.
pub struct NotifySocket {
    sock: OwnedFd,
    name: String,
}

/// One datagram: who sent it and its `KEY=value` lines.
pub struct Notice {
    pub pid: Pid,
    pub lines: Vec<String>,
}

impl Notice {
    pub fn ready(&self) -> bool {
        self.lines.iter().any(|l| l == "READY=1")
    }

    pub fn stopping(&self) -> bool {
        self.lines.iter().any(|l| l == "STOPPING=1")
    }

    pub fn status(&self) -> Option<&str> {
        self.lines.iter().find_map(|l| l.strip_prefix("STATUS="))
    }
}

impl NotifySocket {
    /// Bind a fresh socket named after `tool` and this process.
    pub fn new(tool: &str) -> Result<NotifySocket, Errno> {
        let sock = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )?;
        setsockopt(&sock, sockopt::PassCred, &true)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("{tool}/{}/{nanos}", std::process::id());
        let addr = UnixAddr::new_abstract(name.as_bytes())?;
        bind(sock.as_raw_fd(), &addr)?;
        Ok(NotifySocket { sock, name })
    }

    /// The socket handed over by an in-place upgrade, by its descriptor and
    /// name (what [`NotifySocket::name`] said in the previous image).
    pub fn adopt(sock: OwnedFd, name: String) -> NotifySocket {
        NotifySocket { sock, name }
    }

    /// The socket's name (without the `@`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value of `NOTIFY_SOCKET` for children (`@` marks the abstract namespace).
    pub fn env_value(&self) -> OsString {
        OsString::from(format!("@{}", self.name))
    }

    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Every datagram waiting, with its sender's pid (messages without
    /// credentials are dropped).
    pub fn drain(&self) -> Vec<Notice> {
        let mut out = Vec::new();
        loop {
            let mut buf = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let res = recvmsg::<()>(
                self.sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT,
            );
            let (pid, len) = match res {
                Ok(msg) => {
                    let pid = msg.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|m| match m {
                            ControlMessageOwned::ScmCredentials(cred) => {
                                Some(Pid::from_raw(cred.pid()))
                            }
                            _ => None,
                        })
                    });
                    (pid, msg.bytes)
                }
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            };
            let Some(pid) = pid else { continue };
            let text = String::from_utf8_lossy(&buf[..len.min(buf.len())]);
            let lines = text
                .split('\n')
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect();
            out.push(Notice { pid, lines });
        }
        out
    }
}

/// Whether `pid` is `ancestor` or one of its descendants (a worker that is a
/// shell script may send `READY=1` from a child process). Best effort, by
/// walking parent pids in /proc.
pub fn is_same_or_descendant(pid: Pid, ancestor: Pid) -> bool {
    let mut p = pid.as_raw();
    for _ in 0..16 {
        if p == ancestor.as_raw() {
            return true;
        }
        if p <= 1 {
            return false;
        }
        match parent_of(p) {
            Some(pp) => p = pp,
            None => return false,
        }
    }
    false
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(1)?.parse().ok()
}

impl Options {
    /// The readiness options every supervisor takes, short and long.
    pub const SHORT: [char; 3] = ['d', 'a', 't'];
    pub const LONG: [&'static str; 4] =
        ["notification-fd", "notify", "ready-after", "ready-timeout"];

    /// Whether `opt` (`-d`, `--notify`, ...) is a readiness option: then
    /// hand it to [`Options::take`].
    pub fn is_option(opt: &str) -> bool {
        match (opt.strip_prefix("--"), opt.strip_prefix('-')) {
            (Some(long), _) => Self::LONG.contains(&long),
            (None, Some(short)) => {
                short.chars().count() == 1 && short.chars().all(|c| Self::SHORT.contains(&c))
            }
            _ => false,
        }
    }

    /// Take option `opt` (`-d`, `--notification-fd`, `--notify`, `-a`,
    /// `--ready-after`, `-t`, `--ready-timeout`), reading its value from `parser`.
    pub fn take(&mut self, opt: &str, parser: &mut lexopt::Parser, tool: &crate::Tool) {
        let mut value = |name: &str, min: u32| -> u32 {
            let v = tool.value(parser);
            tool.number(name, &v, min, i32::MAX as u32)
        };
        match opt {
            "-d" | "--notification-fd" => self.fd = Some(value("-d", 3) as RawFd),
            "--notify" => self.notify = true,
            "-a" | "--ready-after" => {
                self.alive = Some(Duration::from_millis(value("-a", 0).into()))
            }
            "-t" | "--ready-timeout" => {
                self.deadline = Some(Duration::from_millis(value("-t", 1).into()))
            }
            _ => tool.usage(format_args!("unknown option {opt}")),
        }
    }

    /// After the options are read: the combinations no supervisor accepts.
    pub fn check(&self, tool: &crate::Tool) {
        if self.fd.is_some() && self.notify {
            tool.usage("-d and --notify exclude each other");
        }
    }
}

/// The address a `NOTIFY_SOCKET` value names: a path, or `@name` in the
/// abstract namespace. None for an empty value or one no address can hold.
pub fn notify_address(value: &std::ffi::OsStr) -> Option<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::net::SocketAddr;
    let bytes = value.as_bytes();
    if bytes.is_empty() {
        return None;
    }
    match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(std::path::Path::new(value)),
    }
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_after_readiness_are_lines() {
        let mut p = ReadinessPipe::new().expect("pipe");
        let w = p.write.take().expect("write end");
        nix::unistd::write(&w, b"\nrecycle\n\nstopp").expect("write");
        let m = p.messages();
        assert!(m.ready);
        assert_eq!(m.lines, vec!["recycle".to_string(), String::new()]);
        assert!(!m.closed);
        nix::unistd::write(&w, b"ing\n").expect("write");
        drop(w);
        let m = p.messages();
        assert!(!m.ready);
        assert_eq!(m.lines, vec!["stopping".to_string()]);
        assert!(m.closed);
    }
}
