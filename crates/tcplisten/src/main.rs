//! tcplisten: the socket holder. Create a listening socket (TCP over IPv4 or
//! IPv6, or a Unix-domain socket), put it on descriptor 0 (or on 3, systemd
//! style), drop privileges, exec prog. No process of its own is left behind.
//! See README.md.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fmt::Display;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{
    self, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6, SockaddrStorage,
    UnixAddr,
};
use nix::sys::stat::{lstat, umask, Mode, SFlag};
use nix::unistd::{Gid, Group, Uid, User};
use unixtool::{parse_number, Tool, EXIT_TEMPORARY, EXIT_USAGE};

const TOOL: Tool = Tool {
    name: "tcplisten",
    usage: "tcplisten [-1dDBN6sU] [-b backlog] [-m mode] [-u user] [-g group] [-F fd | --listen-fds] [--fdstore] [--fdname name] {host port | path} prog...",
    help: "  host port: TCP (0 = 0.0.0.0, :: = any IPv6 and IPv4); path (it has a '/'): Unix-domain socket
  -b, --backlog N     listen backlog (default: the kernel's maximum)
  -1, --print-port    print the bound port number on stdout before exec
  -d, --reuseaddr     set SO_REUSEADDR (default)
  -D, --no-reuseaddr  do not set SO_REUSEADDR
  -B, --blocking      leave the socket blocking (default)
  -N, --nonblock      make the socket non-blocking (O_NONBLOCK)
  -6, --ipv6-only     set IPV6_V6ONLY (default for an IPv6 address: off, dual stack)
  -m, --mode MODE     Unix socket: create the socket file with this octal mode
  -u, --user USER     after bind, run as USER (name or number; its group unless -g)
  -g, --group GROUP   after bind, run with group GROUP (name or number)
  -U, --env-uidgid    after bind, run as $UID and $GID (as set by envuidgid)
  -s, --systemd       hand the socket on fd 3 with LISTEN_FDS=1, LISTEN_PID, LISTEN_FDNAMES
  -F, --fd FD         take the listening socket open on FD instead of binding;
                      host port (or path) say what it must be (port 0: any port)
      --listen-fds    take the socket systemd passes (LISTEN_FDS=1, fd 3) if
                      LISTEN_PID is ours; else bind
      --fdstore       after binding, hand a copy to systemd's fd store
                      (FDSTORE=1 to $NOTIFY_SOCKET)
      --fdname NAME   with -s: the LISTEN_FDNAMES entry; with --fdstore: the
                      FDNAME (default: tcplisten)
  -h, --help          this text
  -V, --version       the version",
};

/// Where the socket is bound.
enum Address {
    Inet(SocketAddr),
    Unix(PathBuf),
}

/// `-u`: the user id, and the user's own group when it was given by name.
type User_ = (Uid, Option<Gid>);

/// What the options ask for.
struct Options {
    backlog: libc::c_int,
    print_port: bool,
    reuseaddr: bool,
    nonblock: bool,
    v6only: bool,
    mode: Option<u32>,
    user: Option<User_>,
    group: Option<Gid>,
    systemd: bool,
    fdname: Option<String>,
    /// `-F`: the descriptor of an inherited socket to take instead of binding.
    inherit: Option<RawFd>,
    /// `--listen-fds`: take systemd's socket (fd 3) when it passes one.
    listen_fds: bool,
    /// `--fdstore`: hand a copy of a socket tcplisten bound to systemd's fd store.
    fdstore: bool,
    /// Options that apply to binding only (`-b`, `-D`, `-m`, `-6`), for the
    /// usage error with `-F`.
    bind_only: Option<&'static str>,
}

/// The socket, bound and listening, and what a failure from here on must undo.
struct Listening {
    sock: OwnedFd,
    /// The Unix socket file, removed again if tcplisten fails before its exec.
    socket_file: Option<PathBuf>,
    /// The TCP address the kernel bound (port 0 resolved).
    local: Option<SocketAddr>,
}

impl Listening {
    /// A fatal error once the socket file exists: remove it first, so none is left behind.
    fn fatal(&self, code: i32, what: impl Display, err: Errno) -> ! {
        fatal_after_bind(self.socket_file.as_deref(), code, what, err)
    }
}

fn main() {
    // Before tcplisten opens anything: is descriptor 3 someone else's (-s replaces it)?
    let fd3_inherited = unixtool::fd_is_open(3);
    let (opt, args) = parse_options();
    let (address, prog) = parse_operands(&opt, args);
    let (uid, gid) = target_ids(&opt);
    let inherited = inherited_fd(&opt);
    let listening = match inherited {
        Some(fd) => take_inherited(fd, &address, &opt),
        None => {
            let l = bind_and_listen(&address, &opt);
            if opt.fdstore {
                store_in_systemd(&l, &opt);
            }
            l
        }
    };
    drop_privileges(&listening, uid, gid);
    // (-F 3 or --listen-fds: descriptor 3 is the socket itself, no one else's)
    let fd3_other = fd3_inherited && inherited != Some(3);
    let target = export_environment(&address, &listening, &opt, fd3_other);
    hand_off(listening, target, opt.print_port, &prog)
}

/// The options, and the operands after them (untouched: prog's own options are its own).
fn parse_options() -> (Options, Vec<OsString>) {
    let mut opt = Options {
        backlog: libc::c_int::MAX, // the kernel clamps it to its maximum
        print_port: false,
        reuseaddr: true,
        nonblock: false,
        v6only: false,
        mode: None,
        user: None,
        group: None,
        systemd: false,
        fdname: None,
        inherit: None,
        listen_fds: false,
        fdstore: false,
        bind_only: None,
    };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = TOOL.next_arg(&mut parser) {
        use lexopt::prelude::*;
        match arg {
            Short('b') | Long("backlog") => {
                opt.backlog = TOOL.number("-b", &TOOL.value(&mut parser), 1, libc::c_int::MAX);
                opt.bind_only = Some("-b");
            }
            Short('1') | Long("print-port") => opt.print_port = true,
            Short('d') | Long("reuseaddr") => opt.reuseaddr = true,
            Short('D') | Long("no-reuseaddr") => {
                opt.reuseaddr = false;
                opt.bind_only = Some("-D");
            }
            Short('B') | Long("blocking") => opt.nonblock = false,
            Short('N') | Long("nonblock") => opt.nonblock = true,
            Short('6') | Long("ipv6-only") => {
                opt.v6only = true;
                opt.bind_only = Some("-6");
            }
            Short('m') | Long("mode") => {
                opt.mode = Some(parse_mode(&TOOL.value(&mut parser)));
                opt.bind_only = Some("-m");
            }
            Short('u') | Long("user") => opt.user = Some(parse_user(&TOOL.value(&mut parser))),
            Short('g') | Long("group") => opt.group = Some(parse_group(&TOOL.value(&mut parser))),
            Short('U') | Long("env-uidgid") => {
                opt.user = Some((Uid::from_raw(env_id("UID")), None));
                opt.group = Some(Gid::from_raw(env_id("GID")));
            }
            Short('s') | Long("systemd") => opt.systemd = true,
            Long("fdname") => opt.fdname = Some(parse_fdname(&TOOL.value(&mut parser))),
            Short('F') | Long("fd") => {
                opt.inherit = Some(TOOL.number("-F", &TOOL.value(&mut parser), 0, libc::c_int::MAX))
            }
            Long("listen-fds") => opt.listen_fds = true,
            Long("fdstore") => opt.fdstore = true,
            Short('h') | Long("help") => TOOL.print_help(),
            Short('V') | Long("version") => TOOL.print_version(),
            Value(v) => return (opt, unixtool::rest_of_args(v, &mut parser)),
            _ => TOOL.bad_arg(arg.unexpected()),
        }
    }
    (opt, Vec::new())
}

/// `host port prog...` or `path prog...`; everything checked before any socket exists.
fn parse_operands(opt: &Options, mut args: Vec<OsString>) -> (Address, Vec<OsString>) {
    let Some(first) = args.first() else {
        TOOL.usage("no address given")
    };
    let unix = first.as_bytes().contains(&b'/');
    let (port, prog_at) = if unix {
        (0, 1)
    } else {
        let Some(port) = args.get(1) else {
            TOOL.usage("no port given")
        };
        (parse_port(port), 2)
    };
    if args.len() <= prog_at {
        TOOL.usage("no program given");
    }
    if unix && opt.print_port {
        TOOL.usage("-1 prints a TCP port; a Unix socket has none");
    }
    if unix && opt.v6only {
        TOOL.usage("-6 applies to IPv6 addresses, not to a Unix socket");
    }
    if !unix && opt.mode.is_some() {
        TOOL.usage("-m applies to a Unix socket path only");
    }
    if opt.fdname.is_some() && !opt.systemd && !opt.fdstore {
        TOOL.usage("--fdname applies with -s or --fdstore only");
    }
    if opt.inherit.is_some() && (opt.listen_fds || opt.fdstore) {
        TOOL.usage("-F takes a socket: --listen-fds and --fdstore do not apply");
    }
    if let (Some(_), Some(o)) = (opt.inherit, opt.bind_only) {
        TOOL.usage(format_args!(
            "{o} applies when tcplisten binds, not with -F"
        ));
    }
    if opt.fdstore && std::env::var_os("NOTIFY_SOCKET").is_none() {
        TOOL.usage("--fdstore wants $NOTIFY_SOCKET (systemd's notification socket)");
    }
    let prog = args.split_off(prog_at);
    let address = if unix {
        Address::Unix(PathBuf::from(&args[0]))
    } else {
        Address::Inet(parse_host(&args[0], port))
    };
    if opt.v6only && matches!(address, Address::Inet(SocketAddr::V4(_))) {
        TOOL.usage("-6 applies to IPv6 addresses only");
    }
    (address, prog)
}

/// The uid and gid to run as after bind (`-u`, `-g`, `-U`), looked up before the bind.
fn target_ids(opt: &Options) -> (Option<Uid>, Option<Gid>) {
    let gid = opt.group.or_else(|| opt.user.map(user_group));
    (opt.user.map(|(uid, _)| uid), gid)
}

/// Socket, bind, listen, the O_NONBLOCK flag, the bound address. From the bind
/// on, a failure removes the socket file.
fn bind_and_listen(address: &Address, opt: &Options) -> Listening {
    let (sock, socket_file) = match address {
        Address::Inet(sa) => (bind_inet(sa, opt.reuseaddr, opt.v6only), None),
        Address::Unix(path) => (bind_unix(path, opt.mode), Some(path.clone())),
    };
    let mut l = Listening {
        sock,
        socket_file,
        local: None,
    };
    let fd = l.sock.as_raw_fd();
    if let Err(e) = unixtool::retry_eintr(|| listen(fd, opt.backlog)) {
        l.fatal(EXIT_TEMPORARY, "listen", e);
    }
    set_nonblock(&l, opt.nonblock);
    if let Address::Inet(_) = address {
        match local_address(&l.sock) {
            Ok(sa) => l.local = Some(sa),
            Err(e) => l.fatal(EXIT_TEMPORARY, "read the bound address", e),
        }
    }
    l
}

/// The descriptor of a socket to take instead of binding: `-F fd`, or with
/// `--listen-fds` descriptor 3 when systemd passes one to this process
/// (`LISTEN_PID` ours, `LISTEN_FDS=1`). The `LISTEN_*` variables are consumed
/// (removed; `-s` sets them again for prog).
fn inherited_fd(opt: &Options) -> Option<RawFd> {
    if opt.inherit.is_some() || !opt.listen_fds {
        return opt.inherit;
    }
    let fds = std::env::var_os("LISTEN_FDS");
    let pid = std::env::var_os("LISTEN_PID");
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let ours = pid.is_some_and(|p| p.to_str() == Some(&std::process::id().to_string()));
    let fds = fds.filter(|_| ours)?;
    match parse_number::<u32>(&fds, 0, u32::MAX) {
        Some(0) => None,
        Some(1) => Some(3),
        _ => TOOL.fatal(
            EXIT_USAGE,
            format_args!(
                "LISTEN_FDS={:?}: tcplisten takes one socket",
                fds.to_string_lossy()
            ),
        ),
    }
}

/// `-F` / `--listen-fds`: the inherited descriptor, checked before anything
/// runs: a socket, of the stream type, listening, of the address family (and
/// address, and port unless 0) the operands name. Anything else is refused
/// (100). Then the O_NONBLOCK flag, as for a socket tcplisten binds.
fn take_inherited(fd: RawFd, address: &Address, opt: &Options) -> Listening {
    let want = match address {
        Address::Inet(sa) if sa.port() == 0 => format!("{} (any port)", sa.ip()),
        Address::Inet(sa) => sa.to_string(),
        Address::Unix(p) => p.display().to_string(),
    };
    let refuse = |why: &str| -> ! {
        TOOL.fatal(
            EXIT_USAGE,
            format_args!("descriptor {fd} is not a listening stream socket on {want}: {why}"),
        )
    };
    let st = match nix::sys::stat::fstat(fd) {
        Ok(st) => st,
        Err(Errno::EBADF) => refuse("it is not open"),
        Err(e) => TOOL.fatal_errno(EXIT_TEMPORARY, format_args!("examine descriptor {fd}"), e),
    };
    let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if kind != SFlag::S_IFSOCK {
        refuse(match kind {
            SFlag::S_IFREG => "it is a regular file",
            SFlag::S_IFDIR => "it is a directory",
            SFlag::S_IFIFO => "it is a pipe",
            SFlag::S_IFCHR => "it is a character device",
            _ => "it is not a socket",
        });
    }
    // SAFETY: the descriptor is open (fstat succeeded) and was inherited for
    // tcplisten to take: from here on this OwnedFd is its only owner.
    let sock = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    match socket::getsockopt(&sock, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(SockType::Datagram) => refuse("it is a datagram (UDP) socket"),
        Ok(_) | Err(_) => refuse("it is not a stream socket"),
    }
    match socket::getsockopt(&sock, sockopt::AcceptConn) {
        Ok(true) => {}
        Ok(false) => refuse("it is not listening (a connected or unbound socket)"),
        Err(e) => TOOL.fatal_errno(EXIT_TEMPORARY, format_args!("examine descriptor {fd}"), e),
    }
    let bound: SockaddrStorage = match socket::getsockname(fd) {
        Ok(a) => a,
        Err(e) => TOOL.fatal_errno(EXIT_TEMPORARY, format_args!("examine descriptor {fd}"), e),
    };
    let local = match address {
        Address::Inet(sa) => {
            let Ok(got) = local_address(&sock) else {
                refuse(match socket::SockaddrLike::family(&bound) {
                    Some(AddressFamily::Unix) => "it is a Unix-domain socket",
                    _ => "it is not a TCP socket",
                })
            };
            if got.is_ipv4() != sa.is_ipv4() {
                refuse(if got.is_ipv4() {
                    "it is an IPv4 socket"
                } else {
                    "it is an IPv6 socket"
                });
            }
            if got.ip() != sa.ip() || (sa.port() != 0 && got.port() != sa.port()) {
                refuse(&format!("it is bound to {got}"));
            }
            Some(got)
        }
        Address::Unix(path) => {
            let Some(un) = bound.as_unix_addr() else {
                refuse("it is not a Unix-domain socket")
            };
            if un.path() != Some(path.as_path()) {
                refuse(&match un.path() {
                    Some(p) => format!("it is bound to {}", p.display()),
                    None => "it is bound to no path".to_string(),
                });
            }
            None
        }
    };
    let l = Listening {
        sock,
        socket_file: None,
        local,
    };
    set_nonblock(&l, opt.nonblock);
    l
}

/// `--fdstore`: a copy of the socket tcplisten just bound to systemd's fd
/// store (`FDSTORE=1`, `FDNAME=`, the descriptor as SCM_RIGHTS on the
/// datagram to `$NOTIFY_SOCKET`), so that the next start of the service gets
/// it back in `LISTEN_FDS` (`--listen-fds`).
fn store_in_systemd(l: &Listening, opt: &Options) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::UnixDatagram;
    let value = std::env::var_os("NOTIFY_SOCKET").unwrap_or_default();
    let name = opt.fdname.as_deref().unwrap_or("tcplisten");
    let what = format_args!(
        "hand the socket to the fd store at {}",
        value.to_string_lossy()
    );
    let addr = unixtool::readiness::notify_address(&value).and_then(|a| {
        match (a.as_pathname(), a.as_abstract_name()) {
            (Some(p), _) => UnixAddr::new(p).ok(),
            (None, Some(n)) => UnixAddr::new_abstract(n).ok(),
            _ => None,
        }
    });
    let Some(addr) = addr else {
        fatal_after_bind(l.socket_file.as_deref(), EXIT_USAGE, what, Errno::EINVAL)
    };
    let sent = UnixDatagram::unbound()
        .map_err(|e| unixtool::errno_of(&e))
        .and_then(|d| {
            let msg = format!("FDSTORE=1\nFDNAME={name}\n");
            let iov = [std::io::IoSlice::new(msg.as_bytes())];
            let fds = [l.sock.as_raw_fd()];
            let cmsg = [socket::ControlMessage::ScmRights(&fds)];
            unixtool::retry_eintr(|| {
                socket::sendmsg(
                    d.as_raw_fd(),
                    &iov,
                    &cmsg,
                    socket::MsgFlags::empty(),
                    Some(&addr),
                )
            })
        });
    if let Err(e) = sent {
        fatal_after_bind(l.socket_file.as_deref(), EXIT_TEMPORARY, what, e);
    }
}

/// The socket blocking, or non-blocking with -N.
fn set_nonblock(l: &Listening, nonblock: bool) {
    let fd = l.sock.as_raw_fd();
    let fl = match fcntl(fd, FcntlArg::F_GETFL) {
        Ok(fl) => OFlag::from_bits_truncate(fl),
        Err(e) => l.fatal(EXIT_TEMPORARY, "read the socket's flags", e),
    };
    let fl = if nonblock {
        fl | OFlag::O_NONBLOCK
    } else {
        fl - OFlag::O_NONBLOCK
    };
    if let Err(e) = fcntl(fd, FcntlArg::F_SETFL(fl)) {
        l.fatal(EXIT_TEMPORARY, "set the socket's O_NONBLOCK flag", e);
    }
}

/// listen(2) with any backlog up to INT_MAX (the kernel clamps it to its
/// maximum; nix's Backlog refuses values above SOMAXCONN).
fn listen(fd: RawFd, backlog: libc::c_int) -> Result<(), Errno> {
    // SAFETY: listen(2) takes a descriptor number and an int, no memory; a bad
    // descriptor is an error return, not undefined behaviour.
    Errno::result(unsafe { libc::listen(fd, backlog) }).map(drop)
}

/// Groups first, then the user; if any step fails, nothing is exec'd.
fn drop_privileges(l: &Listening, uid: Option<Uid>, gid: Option<Gid>) {
    if let Some(g) = gid {
        if let Err(e) = nix::unistd::setgroups(&[g]) {
            l.fatal(EXIT_TEMPORARY, format_args!("set groups to {g}"), e);
        }
        if let Err(e) = nix::unistd::setgid(g) {
            l.fatal(EXIT_TEMPORARY, format_args!("set gid to {g}"), e);
        }
    }
    if let Some(u) = uid {
        if let Err(e) = nix::unistd::setuid(u) {
            l.fatal(EXIT_TEMPORARY, format_args!("set uid to {u}"), e);
        }
    }
}

/// The environment prog reads (ucspi; systemd with -s). Returns the descriptor
/// the socket goes on: 0, or 3 with -s.
fn export_environment(
    address: &Address,
    l: &Listening,
    opt: &Options,
    fd3_inherited: bool,
) -> RawFd {
    for var in [
        "PROTO",
        "TCPLOCALIP",
        "TCPLOCALPORT",
        "TCP6LOCALIP",
        "TCP6LOCALPORT",
        "IPCLOCALPATH",
    ] {
        std::env::remove_var(var);
    }
    match (address, l.local) {
        (_, Some(SocketAddr::V4(a))) => {
            std::env::set_var("PROTO", "TCP");
            std::env::set_var("TCPLOCALIP", a.ip().to_string());
            std::env::set_var("TCPLOCALPORT", a.port().to_string());
        }
        (_, Some(SocketAddr::V6(a))) => {
            std::env::set_var("PROTO", "TCP6");
            for (ip, port) in [
                ("TCP6LOCALIP", "TCP6LOCALPORT"),
                ("TCPLOCALIP", "TCPLOCALPORT"),
            ] {
                std::env::set_var(ip, a.ip().to_string());
                std::env::set_var(port, a.port().to_string());
            }
        }
        (Address::Unix(path), _) => {
            std::env::set_var("PROTO", "IPC");
            std::env::set_var("IPCLOCALPATH", path);
        }
        (Address::Inet(_), None) => {}
    }
    if !opt.systemd {
        return 0;
    }
    if fd3_inherited {
        TOOL.warn("descriptor 3 was open when tcplisten started; -s replaces it with the socket");
    }
    std::env::set_var("LISTEN_FDS", "1");
    std::env::set_var("LISTEN_PID", std::process::id().to_string());
    std::env::set_var(
        "LISTEN_FDNAMES",
        opt.fdname.as_deref().unwrap_or("tcplisten"),
    );
    3
}

/// The socket on its descriptor, inheritable (everything else stays
/// close-on-exec), the port printed with -1, then exec prog.
fn hand_off(l: Listening, target: RawFd, print_port: bool, prog: &[OsString]) -> ! {
    let socket_file = l.socket_file.as_deref();
    let raw = l.sock.into_raw_fd();
    if let Err(e) = unixtool::move_fd(raw, target) {
        fatal_after_bind(
            socket_file,
            EXIT_TEMPORARY,
            format_args!("move the socket to descriptor {target}"),
            e,
        );
    }
    if print_port {
        let port = l.local.map(|a| a.port()).unwrap_or(0);
        if let Err(e) = write_all_stdout(format!("{port}\n").as_bytes()) {
            fatal_after_bind(socket_file, EXIT_TEMPORARY, "print the port", e);
        }
    }
    // exec_errno gives prog SIGPIPE's default disposition back (Rust ignores it).
    let err = unixtool::exec_errno(prog);
    fatal_after_bind(
        socket_file,
        EXIT_TEMPORARY,
        format_args!("run {}", prog[0].to_string_lossy()),
        err,
    )
}

/// A fatal error once the socket file exists: remove it first, so none is left behind.
fn fatal_after_bind(socket_file: Option<&Path>, code: i32, what: impl Display, err: Errno) -> ! {
    if let Some(p) = socket_file {
        let _ = nix::unistd::unlink(p);
    }
    TOOL.fatal_errno(code, what, err)
}

/// `-m`: an octal mode up to 0777.
fn parse_mode(v: &OsStr) -> u32 {
    v.to_str()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| (b'0'..=b'7').contains(&b)))
        .and_then(|s| u32::from_str_radix(s, 8).ok())
        .filter(|m| *m <= 0o777)
        .unwrap_or_else(|| {
            TOOL.usage(format_args!(
                "-m wants an octal mode up to 0777, not {:?}",
                v.to_string_lossy()
            ))
        })
}

/// `-u`: a user name (its group comes with it) or a number.
fn parse_user(v: &OsStr) -> User_ {
    if let Some(n) = parse_number::<u32>(v, 0, u32::MAX - 1) {
        return (Uid::from_raw(n), None);
    }
    let name = v.to_string_lossy();
    match User::from_name(&name) {
        Ok(Some(u)) => (u.uid, Some(u.gid)),
        Ok(None) => TOOL.usage(format_args!("unknown user {name:?}")),
        Err(e) => TOOL.fatal_errno(EXIT_TEMPORARY, format_args!("look up user {name}"), e),
    }
}

/// `-g`: a group name or a number.
fn parse_group(v: &OsStr) -> Gid {
    if let Some(n) = parse_number::<u32>(v, 0, u32::MAX - 1) {
        return Gid::from_raw(n);
    }
    let name = v.to_string_lossy();
    match Group::from_name(&name) {
        Ok(Some(g)) => g.gid,
        Ok(None) => TOOL.usage(format_args!("unknown group {name:?}")),
        Err(e) => TOOL.fatal_errno(EXIT_TEMPORARY, format_args!("look up group {name}"), e),
    }
}

/// The group for `-u` without `-g`: the user's own (never root's group by accident).
fn user_group((uid, gid): User_) -> Gid {
    if let Some(g) = gid {
        return g;
    }
    match User::from_uid(uid) {
        Ok(Some(u)) => u.gid,
        Ok(None) => TOOL.usage(format_args!(
            "uid {uid} has no passwd entry to take a group from: give -g"
        )),
        Err(e) => TOOL.fatal_errno(EXIT_TEMPORARY, format_args!("look up uid {uid}"), e),
    }
}

/// `-U`: $UID or $GID as a number.
fn env_id(var: &str) -> u32 {
    match std::env::var_os(var) {
        None => TOOL.usage(format_args!("-U wants ${var} set")),
        Some(v) => parse_number::<u32>(&v, 0, u32::MAX - 1).unwrap_or_else(|| {
            TOOL.usage(format_args!(
                "-U: ${var} is not a number: {:?}",
                v.to_string_lossy()
            ))
        }),
    }
}

/// `--fdname`: what systemd accepts in LISTEN_FDNAMES (printable ASCII, no ':', 1 to 255 bytes).
fn parse_fdname(v: &OsStr) -> String {
    v.to_str()
        .filter(|s| {
            (1..=255).contains(&s.len())
                && s.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b':')
        })
        .map(str::to_string)
        .unwrap_or_else(|| {
            TOOL.usage(format_args!(
                "--fdname wants 1 to 255 printable ASCII characters without ':', not {:?}",
                v.to_string_lossy()
            ))
        })
}

/// A port: a number up to 65535 (0: any free port) or a service name from /etc/services.
fn parse_port(v: &OsStr) -> u16 {
    if let Some(n) = parse_number::<u16>(v, 0, u16::MAX) {
        return n;
    }
    let bad = || TOOL.usage(format_args!("bad port {:?}", v.to_string_lossy()));
    if v.is_empty() || v.as_bytes().iter().all(u8::is_ascii_digit) {
        bad();
    }
    let Ok(name) = CString::new(v.as_bytes()) else {
        bad()
    };
    // SAFETY: both arguments are NUL-terminated strings that outlive the call.
    let ent = unsafe { libc::getservbyname(name.as_ptr(), c"tcp".as_ptr()) };
    if ent.is_null() {
        bad();
    }
    // SAFETY: `ent` is not null: it points to the C library's static servent,
    // valid until the next getservbyname call, and tcplisten has one thread.
    let port = unsafe { (*ent).s_port };
    u16::from_be(port as u16)
}

/// The host: `0` (0.0.0.0), an IPv4 dotted quad, an IPv6 literal (brackets and
/// `%scope` allowed), or a name, resolved once: the first address getaddrinfo gives.
fn parse_host(host: &OsStr, port: u16) -> SocketAddr {
    let s = host
        .to_str()
        .unwrap_or_else(|| TOOL.usage(format_args!("bad address {:?}", host.to_string_lossy())));
    if s == "0" {
        return SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    }
    let literal = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    if literal.contains(':') {
        let (ip, scope) = match literal.split_once('%') {
            Some((ip, iface)) => (ip, scope_id(iface)),
            None => (literal, 0),
        };
        let ip: Ipv6Addr = ip
            .parse()
            .unwrap_or_else(|_| TOOL.usage(format_args!("bad IPv6 address {s:?}")));
        return SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope));
    }
    if s.is_empty() {
        TOOL.usage("empty host");
    }
    if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let ip: Ipv4Addr = s
            .parse()
            .unwrap_or_else(|_| TOOL.usage(format_args!("bad IPv4 address {s:?}")));
        return SocketAddr::new(IpAddr::V4(ip), port);
    }
    let mut sa = resolve(s);
    sa.set_port(port);
    sa
}

/// An IPv6 scope: an interface name or index.
fn scope_id(iface: &str) -> u32 {
    if let Some(n) = parse_number::<u32>(OsStr::new(iface), 0, u32::MAX) {
        return n;
    }
    nix::net::if_::if_nametoindex(iface).unwrap_or_else(|_| {
        TOOL.usage(format_args!(
            "unknown interface {iface:?} in the IPv6 address"
        ))
    })
}

/// Resolve a host name once with getaddrinfo; its first IPv4 or IPv6 address wins.
fn resolve(host: &str) -> SocketAddr {
    let Ok(c) = CString::new(host) else {
        TOOL.usage(format_args!("bad host {host:?}"))
    };
    let hints = libc::addrinfo {
        ai_flags: 0,
        ai_family: libc::AF_UNSPEC,
        ai_socktype: libc::SOCK_STREAM,
        ai_protocol: 0,
        ai_addrlen: 0,
        ai_addr: std::ptr::null_mut(),
        ai_canonname: std::ptr::null_mut(),
        ai_next: std::ptr::null_mut(),
    };
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: `c` is NUL-terminated, a null service is allowed, `hints` and `res`
    // are valid for the call; on success `res` is a list we free below, once.
    let rc = unsafe { libc::getaddrinfo(c.as_ptr(), std::ptr::null(), &hints, &mut res) };
    if rc != 0 {
        let reason = if rc == libc::EAI_SYSTEM {
            Errno::last().desc().to_string()
        } else {
            // SAFETY: gai_strerror returns a static NUL-terminated string, for any code.
            unsafe { CStr::from_ptr(libc::gai_strerror(rc)) }
                .to_string_lossy()
                .into_owned()
        };
        let code = if name_unknown(rc) {
            EXIT_USAGE
        } else {
            EXIT_TEMPORARY
        };
        TOOL.fatal(code, format_args!("unable to resolve {host}: {reason}"));
    }
    let mut found = None;
    let mut ai = res;
    // SAFETY: `ai` is null or a node of the list getaddrinfo returned, not yet freed.
    while let (None, Some(a)) = (found, unsafe { ai.as_ref() }) {
        found = match a.ai_family {
            libc::AF_INET => {
                // SAFETY: an AF_INET entry's ai_addr points to a sockaddr_in, alive
                // until freeaddrinfo; only the copied address leaves this scope.
                let sin = unsafe { &*(a.ai_addr as *const libc::sockaddr_in) };
                Some(SocketAddr::new(
                    IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))),
                    0,
                ))
            }
            libc::AF_INET6 => {
                // SAFETY: an AF_INET6 entry's ai_addr points to a sockaddr_in6, alive
                // until freeaddrinfo; only the copied address leaves this scope.
                let sin6 = unsafe { &*(a.ai_addr as *const libc::sockaddr_in6) };
                let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                Some(SocketAddr::V6(SocketAddrV6::new(
                    ip,
                    0,
                    0,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        };
        ai = a.ai_next;
    }
    // SAFETY: `res` came from a successful getaddrinfo and is freed once; nothing
    // borrowed from it is used after this line.
    unsafe { libc::freeaddrinfo(res) };
    found.unwrap_or_else(|| {
        TOOL.usage(format_args!(
            "unable to resolve {host}: no IPv4 or IPv6 address"
        ))
    })
}

/// Whether a getaddrinfo error says the name does not exist (permanent), not that the lookup failed.
fn name_unknown(rc: libc::c_int) -> bool {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if rc == libc::EAI_NODATA {
        return true;
    }
    rc == libc::EAI_NONAME
}

/// A TCP socket bound to `sa`, close-on-exec until it is moved to its descriptor.
fn bind_inet(sa: &SocketAddr, reuseaddr: bool, v6only: bool) -> OwnedFd {
    let family = if sa.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .unwrap_or_else(|e| TOOL.fatal_errno(EXIT_TEMPORARY, "create a TCP socket", e));
    if let Err(e) = socket::setsockopt(&fd, sockopt::ReuseAddr, &reuseaddr) {
        TOOL.fatal_errno(EXIT_TEMPORARY, "set SO_REUSEADDR", e);
    }
    let bound = match sa {
        SocketAddr::V4(a) => socket::bind(fd.as_raw_fd(), &SockaddrIn::from(*a)),
        SocketAddr::V6(a) => socket::setsockopt(&fd, sockopt::Ipv6V6Only, &v6only)
            .and_then(|()| socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(*a))),
    };
    if let Err(e) = bound {
        TOOL.fatal_errno(EXIT_TEMPORARY, format_args!("bind {sa}"), e);
    }
    fd
}

/// The address the kernel bound (port 0 becomes the chosen port).
fn local_address(fd: &OwnedFd) -> Result<SocketAddr, Errno> {
    let ss: SockaddrStorage = socket::getsockname(fd.as_raw_fd())?;
    if let Some(a) = ss.as_sockaddr_in() {
        return Ok(SocketAddr::V4(SocketAddrV4::from(*a)));
    }
    ss.as_sockaddr_in6()
        .map(|a| SocketAddr::V6(SocketAddrV6::from(*a)))
        .ok_or(Errno::EAFNOSUPPORT)
}

/// A Unix-domain socket bound to `path`. A stale socket file there (nobody
/// listening) is removed and the bind tried again; a live server, or a file that
/// is not a socket, is refused.
fn bind_unix(path: &Path, mode: Option<u32>) -> OwnedFd {
    let addr = UnixAddr::new(path)
        .unwrap_or_else(|_| TOOL.usage(format_args!("socket path {} is too long", path.display())));
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap_or_else(|e| TOOL.fatal_errno(EXIT_TEMPORARY, "create a Unix socket", e));
    match bind_with_mode(&fd, &addr, mode) {
        Ok(()) => return fd,
        Err(Errno::EADDRINUSE) => {}
        Err(e) => TOOL.fatal_errno(EXIT_TEMPORARY, format_args!("bind {}", path.display()), e),
    }
    match stale_socket(path, &addr) {
        Ok(true) => {}
        Ok(false) => TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!(
                "unable to bind {}: a server is listening there",
                path.display()
            ),
        ),
        Err(Errno::ENOTSOCK) => TOOL.fatal(
            EXIT_TEMPORARY,
            format_args!(
                "unable to bind {}: the file exists and is not a socket",
                path.display()
            ),
        ),
        Err(e) => TOOL.fatal_errno(
            EXIT_TEMPORARY,
            format_args!("check the socket {}", path.display()),
            e,
        ),
    }
    match nix::unistd::unlink(path) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => TOOL.fatal_errno(
            EXIT_TEMPORARY,
            format_args!("remove the stale socket {}", path.display()),
            e,
        ),
    }
    if let Err(e) = bind_with_mode(&fd, &addr, mode) {
        TOOL.fatal_errno(EXIT_TEMPORARY, format_args!("bind {}", path.display()), e);
    }
    fd
}

/// bind(2), with the umask set so that the socket file gets exactly `mode`.
fn bind_with_mode(fd: &OwnedFd, addr: &UnixAddr, mode: Option<u32>) -> Result<(), Errno> {
    let old = mode.map(|m| umask(Mode::from_bits_truncate((!m & 0o777) as libc::mode_t)));
    let r = socket::bind(fd.as_raw_fd(), addr);
    if let Some(old) = old {
        umask(old);
    }
    r
}

/// Whether the socket file at `path` is stale: a socket nobody accepts on
/// (connect is refused). ENOTSOCK when the file is not a socket at all.
fn stale_socket(path: &Path, addr: &UnixAddr) -> Result<bool, Errno> {
    match lstat(path) {
        Err(Errno::ENOENT) => return Ok(true), // gone meanwhile: bind again
        Err(e) => return Err(e),
        Ok(st)
            if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFSOCK =>
        {
            return Err(Errno::ENOTSOCK)
        }
        Ok(_) => {}
    }
    let probe = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    match socket::connect(probe.as_raw_fd(), addr) {
        Ok(()) | Err(Errno::EAGAIN) | Err(Errno::EINPROGRESS) => Ok(false), // live (EAGAIN: backlog full)
        Err(Errno::ECONNREFUSED) | Err(Errno::ENOENT) => Ok(true),
        Err(e) => Err(e),
    }
}

/// Write all of `buf` to descriptor 1, unbuffered (a closed stdout is an error, not silence).
fn write_all_stdout(mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match nix::unistd::write(std::io::stdout(), buf) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
