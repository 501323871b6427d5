//! tcplisten, run as a user's shell would: the socket it hands down (checked
//! from inside the child), the backlog holding clients, addresses, Unix
//! sockets, privileges, the systemd form with real consumers (gunicorn,
//! uvicorn), and every error path with its exit code.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use integration_tests::{bin, require_peer, run, Proc, TempDir};

const T: Duration = Duration::from_secs(20);

/// Run inside the child: lists its open descriptors and describes the socket on
/// descriptor argv[1] (default 0) as `key=value` lines, then `end`. With SERVE
/// set it then accepts forever and greets each client.
const PROBE: &str = r#"
import os, sys, socket, fcntl
def is_open(f):
    try:
        os.fstat(f)
        return True
    except OSError:
        return False
fds = [f for f in sorted(int(x) for x in os.listdir('/proc/self/fd')) if is_open(f)]
fd = int(sys.argv[1]) if len(sys.argv) > 1 else 0
out = {'fds': ','.join(map(str, fds)), 'pid': os.getpid(), 'uid': os.getuid(), 'gid': os.getgid(),
       'groups': ','.join(map(str, sorted(os.getgroups())))}
out['fd0'] = os.readlink('/proc/self/fd/0') if is_open(0) else '-'
s = socket.socket(fileno=fd)
out['family'] = s.family.name
out['type'] = s.type.name
a = s.getsockname()
out['addr'] = a if isinstance(a, str) else '%s %d' % (a[0], a[1])
out['acceptconn'] = s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
out['reuseaddr'] = s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
out['nonblock'] = int(bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK))
if s.family == socket.AF_INET6:
    out['v6only'] = s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
for k in ['PROTO', 'TCPLOCALIP', 'TCPLOCALPORT', 'TCP6LOCALIP', 'TCP6LOCALPORT', 'IPCLOCALPATH',
          'LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES']:
    out['env.' + k] = os.environ.get(k, '-')
for k, v in out.items():
    print('%s=%s' % (k, v))
print('end', flush=True)
if os.environ.get('SERVE'):
    s.setblocking(True)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(b'hello from %d\n' % os.getpid())
        except OSError:
            pass  # a client that already left (tcplisten's liveness probe)
        c.close()
"#;

/// tcplisten with `args`; the test harness's own descriptors beyond 0, 1, 2 are
/// made close-on-exec first, so what the child sees is what tcplisten hands down.
fn tcplisten(args: &[&str]) -> Command {
    let mut c = Command::new(bin("tcplisten"));
    c.args(args);
    let cloexec_all = || {
        for fd in 3..1024 {
            // SAFETY: fcntl(2) with integer arguments; a closed descriptor is EBADF.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
        Ok(())
    };
    // SAFETY: between fork and exec the closure only calls fcntl(2), which is
    // async-signal-safe, and allocates nothing.
    unsafe { c.pre_exec(cloexec_all) };
    c
}

/// `args` followed by the probe program (describing descriptor `fd`).
fn with_probe<'a>(args: &[&'a str], fd: &'a str) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(["python3", "-c", PROBE, fd]);
    v
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Run `c` as nobody when the tests run as root (so permissions apply).
fn as_nobody(c: &mut Command) {
    if is_root() {
        c.uid(65534).gid(65534);
    }
}

/// A started tcplisten whose stdout is read line by line.
struct Started {
    p: Proc,
    lines: mpsc::Receiver<String>,
}

fn start(mut c: Command) -> Started {
    c.stdout(Stdio::piped()).stdin(Stdio::null());
    let mut p = Proc::spawn(c);
    let out = p.stdout();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Started { p, lines: rx }
}

impl Started {
    fn line(&self) -> String {
        self.lines
            .recv_timeout(T)
            .expect("a line from tcplisten or its child in time")
    }

    fn port(&self) -> u16 {
        let l = self.line();
        l.parse()
            .unwrap_or_else(|_| panic!("-1 printed {l:?}, not a port"))
    }

    fn probe(&self) -> HashMap<String, String> {
        let mut m = HashMap::new();
        loop {
            let l = self.line();
            if l == "end" {
                return m;
            }
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("probe line {l:?}"));
            m.insert(k.to_string(), v.to_string());
        }
    }
}

fn greet_tcp(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect_timeout(&addr, T).expect("connect");
    s.set_read_timeout(Some(T)).unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).expect("read greeting");
    r
}

fn http_get(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    r
}

fn file_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

#[test]
fn fd0_is_the_listening_socket_and_nothing_else_leaks() {
    let t = start(tcplisten(&with_probe(&["-1", "127.0.0.1", "0"], "0")));
    let port = t.port();
    let m = t.probe();
    assert_eq!(
        m["fds"], "0,1,2",
        "only 0, 1, 2 are open in the child: {m:?}"
    );
    assert_eq!(m["family"], "AF_INET");
    assert_eq!(m["type"], "SOCK_STREAM");
    assert_eq!(m["addr"], format!("127.0.0.1 {port}"));
    assert_eq!(m["acceptconn"], "1", "fd 0 is listening");
    assert_eq!(m["reuseaddr"], "1", "SO_REUSEADDR is on by default");
    assert_eq!(m["nonblock"], "0", "blocking by default");
    assert_eq!(m["env.PROTO"], "TCP");
    assert_eq!(m["env.TCPLOCALIP"], "127.0.0.1");
    assert_eq!(m["env.TCPLOCALPORT"], port.to_string());
    assert_eq!(m["env.TCP6LOCALIP"], "-");
    assert_eq!(m["env.LISTEN_FDS"], "-");
    assert_eq!(
        m["pid"],
        t.p.child.id().to_string(),
        "tcplisten execs: prog has its pid, no process is left"
    );
}

#[test]
fn options_d_and_n_and_stdout_and_signals() {
    let t = start(tcplisten(&with_probe(
        &["-D", "-N", "-1", "127.0.0.1", "0"],
        "0",
    )));
    t.port();
    let m = t.probe();
    assert_eq!(m["reuseaddr"], "0", "-D: no SO_REUSEADDR");
    assert_eq!(m["nonblock"], "1", "-N: non-blocking");

    // -1 prints the number and a newline and nothing else; prog's own options are its own.
    let (code, out, err) = run(
        tcplisten(&["-1", "127.0.0.1", "0", "echo", "-1", "-b", "x"]),
        T,
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out:?}");
    assert!(
        lines[0].parse::<u16>().map(|p| p > 0).unwrap_or(false),
        "{out:?}"
    );
    assert_eq!(lines[1], "-1 -b x");

    // Rust ignores SIGPIPE for itself; prog must get the default back (bit 13 of SigIgn).
    let (code, out, err) = run(
        tcplisten(&[
            "127.0.0.1",
            "0",
            "sh",
            "-c",
            "grep '^SigIgn' /proc/self/status",
        ]),
        T,
    );
    assert_eq!(code, 0, "{err}");
    let mask = u64::from_str_radix(out.split_whitespace().nth(1).unwrap_or("x"), 16).expect(&out);
    assert_eq!(mask & (1 << 12), 0, "SIGPIPE is not ignored in prog: {out}");
}

#[test]
fn backlog_holds_clients_until_the_child_accepts() {
    const CHILD: &str = r#"
import os, socket, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
s = socket.socket(fileno=0)
for i in range(50):
    c, _ = s.accept()
    c.sendall(b'served\n')
    c.close()
"#;
    let dir = TempDir::new("tcplisten-backlog");
    let go = dir.join("go");
    let go_s = go.to_str().unwrap();
    let mut t = start(tcplisten(&[
        "-1",
        "127.0.0.1",
        "0",
        "python3",
        "-c",
        CHILD,
        go_s,
    ]));
    let addr: SocketAddr = ([127, 0, 0, 1], t.port()).into();
    // Every client connects before the child has ever called accept.
    let clients: Vec<TcpStream> = (0..50)
        .map(|i| {
            TcpStream::connect_timeout(&addr, T)
                .unwrap_or_else(|e| panic!("client {i} refused: {e}"))
        })
        .collect();
    File::create(&go).unwrap();
    for (i, mut c) in clients.into_iter().enumerate() {
        c.set_read_timeout(Some(T)).unwrap();
        let mut r = String::new();
        let _ = c.read_to_string(&mut r);
        assert_eq!(r, "served\n", "client {i}");
    }
    let st =
        t.p.wait_timeout(T)
            .expect("the child exits after 50 clients");
    assert!(st.success());
}

#[test]
fn ipv6_loopback_and_dual_stack() {
    let t = start(tcplisten(&with_probe(&["-1", "::1", "0"], "0")));
    let port = t.port();
    let m = t.probe();
    assert_eq!(m["family"], "AF_INET6");
    assert_eq!(m["addr"], format!("::1 {port}"));
    assert_eq!(m["acceptconn"], "1");
    assert_eq!(m["fds"], "0,1,2");
    assert_eq!(m["env.PROTO"], "TCP6");
    assert_eq!(m["env.TCP6LOCALIP"], "::1");
    assert_eq!(m["env.TCP6LOCALPORT"], port.to_string());
    assert_eq!(m["env.TCPLOCALIP"], "::1");
    assert_eq!(m["env.TCPLOCALPORT"], port.to_string());
    // (Linux sets IPV6_V6ONLY itself when a specific IPv6 address is bound.)

    let t = start(tcplisten(&with_probe(&["-6", "-1", "[::1]", "0"], "0")));
    t.port();
    assert_eq!(t.probe()["v6only"], "1", "-6 sets IPV6_V6ONLY");

    // `::` without -6 takes IPv4 clients too.
    let mut c = tcplisten(&with_probe(&["-1", "::", "0"], "0"));
    c.env("SERVE", "1");
    let t = start(c);
    let port = t.port();
    let m = t.probe();
    assert_eq!(m["addr"], format!(":: {port}"));
    assert_eq!(m["v6only"], "0", "dual stack unless -6");
    assert!(greet_tcp(([127, 0, 0, 1], port).into()).starts_with("hello from"));
}

#[test]
fn host_name_binds_the_first_address_and_zero_means_any() {
    let first = ("localhost", 0)
        .to_socket_addrs()
        .expect("resolve localhost")
        .next()
        .expect("an address");
    let t = start(tcplisten(&with_probe(&["-1", "localhost", "0"], "0")));
    let port = t.port();
    assert_eq!(t.probe()["addr"], format!("{} {port}", first.ip()));

    let t = start(tcplisten(&with_probe(&["-1", "0", "0"], "0")));
    let port = t.port();
    let m = t.probe();
    assert_eq!(m["addr"], format!("0.0.0.0 {port}"));
    assert_eq!(m["env.TCPLOCALIP"], "0.0.0.0");
}

#[test]
fn unix_socket_mode_stale_and_live() {
    let dir = TempDir::new("tcplisten-unix");
    let path = dir.join("app.sock");
    let p = path.to_str().unwrap();

    let mut c = tcplisten(&with_probe(&["-m", "640", p], "0"));
    c.env("SERVE", "1");
    let t = start(c);
    let m = t.probe();
    assert_eq!(m["family"], "AF_UNIX");
    assert_eq!(m["addr"], p);
    assert_eq!(m["acceptconn"], "1");
    assert_eq!(m["fds"], "0,1,2");
    assert_eq!(m["env.PROTO"], "IPC");
    assert_eq!(m["env.IPCLOCALPATH"], p);
    assert_eq!(m["env.TCPLOCALIP"], "-");
    assert_eq!(
        std::fs::metadata(&path).unwrap().mode() & 0o7777,
        0o640,
        "-m 640"
    );
    let greet = |path: &Path| {
        let mut s =
            UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        s.set_read_timeout(Some(T)).unwrap();
        let mut r = String::new();
        let _ = s.read_to_string(&mut r);
        r
    };
    assert!(greet(&path).starts_with("hello from"));

    // A live server there: refused, its socket file kept, it still works, prog not run.
    let marker = dir.join("ran");
    let touch = format!("touch {}", marker.display());
    let (code, _, err) = run(tcplisten(&[p, "sh", "-c", &touch]), T);
    assert_eq!(code, 111, "{err}");
    assert!(err.contains("a server is listening there"), "{err}");
    assert!(!marker.exists());
    assert!(
        greet(&path).starts_with("hello from"),
        "the live server still serves"
    );
    drop(t);

    // The server is gone, its socket file is stale: reclaimed.
    assert!(path.exists(), "the killed server left its socket file");
    let mut c = tcplisten(&with_probe(&[p], "0"));
    c.env("SERVE", "1");
    let t = start(c);
    assert_eq!(t.probe()["acceptconn"], "1");
    assert!(greet(&path).starts_with("hello from"));
    drop(t);

    // A stale socket left by another program (bound, closed, never unlinked).
    let other = dir.join("other.sock");
    drop(UnixListener::bind(&other).unwrap());
    let mut c = tcplisten(&with_probe(&[other.to_str().unwrap()], "0"));
    c.env("SERVE", "1");
    let t = start(c);
    t.probe();
    assert!(greet(&other).starts_with("hello from"));

    // A file that is not a socket is never removed.
    let plain = dir.join("plain");
    std::fs::write(&plain, "data").unwrap();
    let (code, _, err) = run(tcplisten(&[plain.to_str().unwrap(), "true"]), T);
    assert_eq!(code, 111, "{err}");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(file_text(&plain), "data");
}

#[test]
fn privileges_are_dropped_after_bind() {
    if !is_root() {
        eprintln!("skipping: binding a privileged port and dropping to nobody needs root");
        return;
    }
    // A privileged port (below 1024) nobody else holds: try a few, as a user would.
    let base = 600 + (std::process::id() % 300) as u16;
    let mut found = None;
    for i in 0..30u16 {
        let port = (base + i * 7).to_string();
        let t = start(tcplisten(&with_probe(
            &["-u", "nobody", "-1", "127.0.0.1", &port],
            "0",
        )));
        if let Ok(l) = t.lines.recv_timeout(T) {
            assert_eq!(l, port);
            found = Some((t, port));
            break;
        }
    }
    let (t, port) = found.expect("a free privileged port");
    let m = t.probe();
    assert_eq!(m["addr"], format!("127.0.0.1 {port}"));
    assert_eq!(m["acceptconn"], "1");
    assert_eq!(
        (m["uid"].as_str(), m["gid"].as_str(), m["groups"].as_str()),
        ("65534", "65534", "65534")
    );

    // -U: $UID and $GID; -g overrides the group; numbers work.
    let mut c = tcplisten(&with_probe(&["-U", "-1", "127.0.0.1", "0"], "0"));
    c.env("UID", "65534").env("GID", "65533");
    let t = start(c);
    t.port();
    let m = t.probe();
    assert_eq!(
        (m["uid"].as_str(), m["gid"].as_str(), m["groups"].as_str()),
        ("65534", "65533", "65533")
    );

    let t = start(tcplisten(&with_probe(
        &["-u", "65534", "-g", "0", "-1", "127.0.0.1", "0"],
        "0",
    )));
    t.port();
    let m = t.probe();
    assert_eq!(
        (m["uid"].as_str(), m["gid"].as_str(), m["groups"].as_str()),
        ("65534", "0", "0")
    );
}

#[test]
fn systemd_form_hands_the_socket_on_fd3() {
    let t = start(tcplisten(&with_probe(
        &["-s", "--fdname", "web", "-1", "127.0.0.1", "0"],
        "3",
    )));
    let port = t.port();
    let m = t.probe();
    assert_eq!(m["fds"], "0,1,2,3");
    assert_eq!(m["fd0"], "/dev/null", "fd 0 is left as it was");
    assert_eq!(m["addr"], format!("127.0.0.1 {port}"));
    assert_eq!(m["acceptconn"], "1");
    assert_eq!(m["env.LISTEN_FDS"], "1");
    assert_eq!(
        m["env.LISTEN_PID"], m["pid"],
        "LISTEN_PID names prog (tcplisten execs)"
    );
    assert_eq!(m["env.LISTEN_FDNAMES"], "web");
    assert_eq!(m["env.PROTO"], "TCP");

    let t = start(tcplisten(&with_probe(&["-s", "-1", "127.0.0.1", "0"], "3")));
    t.port();
    assert_eq!(t.probe()["env.LISTEN_FDNAMES"], "tcplisten");

    // An inherited descriptor 3 is replaced, with a warning.
    let mut c = tcplisten(&["-s", "127.0.0.1", "0", "sh", "-c", "ls -l /proc/self/fd/3"]);
    let stderr_on_3 = || {
        // SAFETY: dup2(2) with integer arguments; no memory is passed.
        unsafe { libc::dup2(2, 3) };
        Ok(())
    };
    // SAFETY: between fork and exec the closure only calls dup2(2), which is
    // async-signal-safe, and allocates nothing.
    unsafe { c.pre_exec(stderr_on_3) };
    let (code, out, err) = run(c, T);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("socket:"), "{out}");
    assert!(
        err.starts_with("tcplisten: warning: descriptor 3 was open"),
        "{err}"
    );
}

const WSGI_APP: &str = r#"
import os
def app(environ, start_response):
    body = b'hello from gunicorn %d\n' % os.getpid()
    start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(body)))])
    return [body]
"#;

const ASGI_APP: &str = r#"
async def app(scope, receive, send):
    if scope['type'] != 'http':
        return
    await send({'type': 'http.response.start', 'status': 200, 'headers': [(b'content-type', b'text/plain')]})
    await send({'type': 'http.response.body', 'body': b'hello from uvicorn\n'})
"#;

/// tcplisten `args` then the server `server` in `dir` (its stderr kept in dir/stderr).
fn serve(dir: &TempDir, args: &[&str], server: &[&str]) -> Started {
    std::fs::write(dir.join("wsgiapp.py"), WSGI_APP).unwrap();
    std::fs::write(dir.join("asgiapp.py"), ASGI_APP).unwrap();
    let mut v = args.to_vec();
    v.extend(server);
    let mut c = tcplisten(&v);
    c.current_dir(dir.path());
    c.stderr(File::create(dir.join("stderr")).unwrap());
    c.env_remove("GUNICORN_CMD_ARGS");
    start(c)
}

fn assert_served(dir: &TempDir, port: u16, what: &str, requests: usize) {
    for i in 0..requests {
        let r = http_get(port);
        assert!(
            r.starts_with("HTTP/1.1 200") || r.starts_with("HTTP/1.0 200"),
            "request {i}: {r:?}; the server said: {}",
            file_text(&dir.join("stderr"))
        );
        assert!(r.contains(what), "{r:?}");
    }
}

#[test]
fn gunicorn_serves_on_fd0() {
    if !require_peer("gunicorn") {
        return;
    }
    let dir = TempDir::new("tcplisten-gunicorn");
    let t = serve(
        &dir,
        &["-1", "127.0.0.1", "0"],
        &[
            "gunicorn",
            "--workers",
            "2",
            "--bind",
            "fd://0",
            "wsgiapp:app",
        ],
    );
    assert_served(&dir, t.port(), "hello from gunicorn", 5);
}

#[test]
fn gunicorn_takes_the_systemd_form() {
    if !require_peer("gunicorn") {
        return;
    }
    // gunicorn uses LISTEN_FDS only when LISTEN_PID is its own pid; otherwise it
    // would bind the sentinel path given with --bind instead.
    let dir = TempDir::new("tcplisten-gunicorn-sd");
    let sentinel = dir.join("sentinel.sock");
    let bind = format!("unix:{}", sentinel.display());
    let t = serve(
        &dir,
        &["-s", "-1", "127.0.0.1", "0"],
        &["gunicorn", "--workers", "1", "--bind", &bind, "wsgiapp:app"],
    );
    assert_served(&dir, t.port(), "hello from gunicorn", 3);
    assert!(
        !sentinel.exists(),
        "gunicorn bound its own socket instead of fd 3"
    );
}

#[test]
fn uvicorn_serves_on_fd0() {
    if !require_peer("uvicorn") {
        return;
    }
    let dir = TempDir::new("tcplisten-uvicorn");
    let t = serve(
        &dir,
        &["-1", "127.0.0.1", "0"],
        &["uvicorn", "--fd", "0", "asgiapp:app"],
    );
    assert_served(&dir, t.port(), "hello from uvicorn", 3);
}

/// tcplisten `args` fails with `code`, one line on stderr containing `msg`, nothing on stdout.
fn fails(c: Command, code: i32, msg: &str) {
    let what = format!("{c:?}");
    let (got, out, err) = run(c, T);
    assert_eq!(got, code, "{what}: stderr {err:?}");
    assert!(err.contains(msg), "{what}: {err:?} lacks {msg:?}");
    assert_eq!(err.lines().count(), 1, "{what}: one line: {err:?}");
    assert!(err.starts_with("tcplisten: "), "{what}: {err:?}");
    assert!(out.is_empty(), "{what}: stdout {out:?}");
}

#[test]
fn usage_errors_exit_100() {
    let dir = TempDir::new("tcplisten-usage");
    let sock = dir.join("s.sock");
    let s = sock.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&[], "no address"),
        (&["127.0.0.1"], "no port"),
        (&["127.0.0.1", "0"], "no program"),
        (&[s], "no program"),
        (&["-x", "127.0.0.1", "0", "true"], "-x"),
        (&["-b"], "-b"),
        (&["-b", "0", "127.0.0.1", "0", "true"], "-b wants a number"),
        (&["-b", "x", "127.0.0.1", "0", "true"], "-b wants a number"),
        (&["-b", "-5", "127.0.0.1", "0", "true"], "-b wants a number"),
        (
            &["-b", "2147483648", "127.0.0.1", "0", "true"],
            "-b wants a number",
        ),
        (&["127.0.0.1", "65536", "true"], "bad port"),
        (&["127.0.0.1", "", "true"], "bad port"),
        (&["127.0.0.1", "no-such-service-xyz", "true"], "bad port"),
        (&["1.2.3.999", "0", "true"], "bad IPv4 address"),
        (&["127.1", "0", "true"], "bad IPv4 address"),
        (&["::zz", "0", "true"], "bad IPv6 address"),
        (&["fe80::1%no-such-if0", "0", "true"], "unknown interface"),
        (&["", "0", "true"], "empty host"),
        (&["-m", "800", s, "true"], "-m wants an octal mode"),
        (&["-m", "1777", s, "true"], "-m wants an octal mode"),
        (&["-m", "600", "127.0.0.1", "0", "true"], "-m applies"),
        (&["-1", s, "true"], "-1 prints a TCP port"),
        (&["-6", "127.0.0.1", "0", "true"], "-6 applies"),
        (&["-6", s, "true"], "-6 applies"),
        (
            &["--fdname", "x", "127.0.0.1", "0", "true"],
            "--fdname applies",
        ),
        (
            &["-s", "--fdname", "a:b", "127.0.0.1", "0", "true"],
            "--fdname wants",
        ),
        (
            &["-s", "--fdname", "", "127.0.0.1", "0", "true"],
            "--fdname wants",
        ),
        (
            &["-u", "no-such-user-xyz", "127.0.0.1", "0", "true"],
            "unknown user",
        ),
        (
            &["-g", "no-such-group-xyz", "127.0.0.1", "0", "true"],
            "unknown group",
        ),
        (
            &["-u", "4000000000", "127.0.0.1", "0", "true"],
            "no passwd entry",
        ),
    ];
    for (args, msg) in cases {
        fails(tcplisten(args), 100, msg);
    }
    let mut c = tcplisten(&["-U", "127.0.0.1", "0", "true"]);
    c.env_remove("UID").env_remove("GID");
    fails(c, 100, "-U wants $UID");
    let mut c = tcplisten(&["-U", "127.0.0.1", "0", "true"]);
    c.env("UID", "65534").env("GID", "x");
    fails(c, 100, "$GID is not a number");
    assert!(!sock.exists(), "no socket file is created on a usage error");

    for flag in ["-h", "--help", "-V", "--version"] {
        let (code, out, _) = run(tcplisten(&[flag]), T);
        assert_eq!(code, 0, "{flag}");
        assert!(
            out.starts_with("usage: tcplisten") || out.starts_with("tcplisten "),
            "{flag}: {out}"
        );
    }
}

#[test]
fn failures_exit_111_and_leave_no_socket_file() {
    let dir = TempDir::new("tcplisten-fail");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let marker = dir.join("ran");
    let touch = format!("touch {}", marker.display());

    // Address in use.
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    fails(
        tcplisten(&["127.0.0.1", &port, "sh", "-c", &touch]),
        111,
        &format!("unable to bind 127.0.0.1:{port}: Address already in use"),
    );
    fails(
        tcplisten(&["-D", "127.0.0.1", &port, "true"]),
        111,
        "Address already in use",
    );

    // prog missing: TCP, and Unix (the socket file is removed again).
    fails(
        tcplisten(&["127.0.0.1", "0", "/nonexistent/prog"]),
        111,
        "unable to run /nonexistent/prog",
    );
    let sock = dir.join("s.sock");
    let s = sock.to_str().unwrap();
    fails(
        tcplisten(&[s, "no-such-program-xyz"]),
        111,
        "unable to run no-such-program-xyz",
    );
    assert!(!sock.exists(), "socket file left behind after exec failure");

    // Permission denied: a socket in a directory we may not write.
    let ro = dir.join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let ro_sock = ro.join("s.sock");
    let mut c = tcplisten(&[ro_sock.to_str().unwrap(), "sh", "-c", &touch]);
    as_nobody(&mut c);
    fails(c, 111, "Permission denied");
    assert!(!ro_sock.exists());

    // Permission denied: a privileged port (here given by service name) without privileges.
    let unpriv_start = file_text(Path::new("/proc/sys/net/ipv4/ip_unprivileged_port_start"));
    if unpriv_start
        .trim()
        .parse::<u32>()
        .map(|n| n > 80)
        .unwrap_or(false)
    {
        let mut c = tcplisten(&["127.0.0.1", "http", "sh", "-c", &touch]);
        as_nobody(&mut c);
        fails(c, 111, "unable to bind 127.0.0.1:80: Permission denied");
    }

    // The privilege drop fails: nothing is exec'd, no socket file is left.
    let mut c = tcplisten(&["-u", "0", "-g", "0", s, "sh", "-c", &touch]);
    as_nobody(&mut c);
    fails(c, 111, "unable to set groups to 0: Operation not permitted");
    assert!(
        !sock.exists(),
        "socket file left behind after the privilege drop failed"
    );
    let mut c = tcplisten(&[
        "-u",
        "0",
        "-g",
        "0",
        "-1",
        "127.0.0.1",
        "0",
        "sh",
        "-c",
        &touch,
    ]);
    as_nobody(&mut c);
    fails(c, 111, "unable to set groups");

    assert!(!marker.exists(), "prog ran although tcplisten failed");
}
