//! A site for the poolctl and deploy-release tests: releases of the demo app
//! in `releases/`, the `current` link, and the chain behind tcplisten, under
//! forkpool (-m cutover -p current -S status) or loop-forever (-S status).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use integration_tests::*;

pub const LONG: Duration = Duration::from_secs(45);

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mode {
    Forkpool,
    Loop,
}

pub struct Site {
    pub chain: Proc,
    pub port: u16,
    pub dir: TempDir,
    pub status: PathBuf,
    pub link: PathBuf,
    pub mode: Mode,
}

/// Lay out `releases/ID` under `dir`: RELEASE, htdocs, and `run` (the app with
/// `flags`, e.g. "--fail-start").
pub fn make_release(dir: &Path, id: &str, flags: &str) -> PathBuf {
    let r = dir.join("releases").join(id);
    std::fs::create_dir_all(r.join("htdocs")).expect("mkdir release");
    std::fs::write(r.join("RELEASE"), format!("{id}\n")).expect("RELEASE");
    std::fs::write(
        r.join("htdocs/index.html"),
        format!("<!doctype html><body data-release=\"{id}\">{id}</body>\n"),
    )
    .expect("index");
    let run = r.join("run");
    std::fs::write(
        &run,
        format!(
            "#!/bin/sh\nexec '{}' --root . --ready-fd 3 {flags} \"$@\"\n",
            bin("app").display()
        ),
    )
    .expect("run");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    r
}

impl Site {
    /// releases/r1, current -> releases/r1, the chain serving it.
    pub fn start(tag: &str, mode: Mode) -> Site {
        let dir = TempDir::new(tag);
        Site::start_in(dir, mode, None)
    }

    /// As start, with the status file at `status` (default dir/status).
    pub fn start_in(dir: TempDir, mode: Mode, status: Option<PathBuf>) -> Site {
        Site::start_with(dir, mode, status, &[])
    }

    /// As start_in, with `extra` options for forkpool (before `./run`).
    /// releases/r1 is laid out with no flags unless the caller made it.
    pub fn start_with(dir: TempDir, mode: Mode, status: Option<PathBuf>, extra: &[&str]) -> Site {
        if !dir.join("releases/r1/run").exists() {
            make_release(dir.path(), "r1", "");
        }
        std::os::unix::fs::symlink("releases/r1", dir.join("current")).expect("current");
        let status = status.unwrap_or_else(|| dir.join("status"));
        let mut c = cmd("tcplisten");
        c.args(["-1", "127.0.0.1", "0"]);
        match mode {
            Mode::Forkpool => {
                c.arg(bin("forkpool"))
                    .args(["-n", "2", "-m", "cutover", "-d", "3", "-t", "20000"])
                    .args(["-k", "10000", "-p", "current", "-S"])
                    .arg(&status)
                    .args(extra)
                    .arg("./run");
            }
            Mode::Loop => {
                c.arg(bin("loop-forever"))
                    .args(["-d", "3", "-S"])
                    .arg(&status)
                    .args(["sh", "-c", "cd -P current && exec ./run"]);
            }
        }
        c.current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("chain.log")).expect("log"));
        let mut chain = Proc::spawn(c);
        let (line, _) = read_line_timeout(chain.stdout(), LONG).expect("tcplisten prints the port");
        let port = line.trim().parse().expect("port");
        let link = dir.join("current");
        let site = Site {
            chain,
            port,
            dir,
            status,
            link,
            mode,
        };
        assert!(
            wait_until(LONG, || site.answer().as_deref() == Some("r1") && {
                // One read: the whole generation serves (two reads of a file
                // rewritten between them, or a file not there yet, could
                // agree on ready and workers while a worker still started).
                let st = PoolStatus::read(&site.status);
                st.num("serving_generation") >= 1 && st.get("ready") == st.get("workers")
            }),
            "the site never served r1: {}",
            site.log()
        );
        site
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chain.log")).unwrap_or_default()
    }

    /// What /release answers now (None: nothing answered).
    pub fn answer(&self) -> Option<String> {
        http_release(self.port)
    }

    /// The release `current` names (its last component).
    pub fn current(&self) -> String {
        std::fs::read_link(&self.link)
            .ok()
            .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_default()
    }

    /// The release the status file says serves (its last component).
    pub fn serving(&self) -> String {
        let st = PoolStatus::read(&self.status);
        Path::new(st.get("release"))
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    pub fn release(&self, id: &str, flags: &str) -> PathBuf {
        make_release(self.dir.path(), id, flags)
    }

    pub fn check_url(&self) -> String {
        format!("http://127.0.0.1:{}/release", self.port)
    }

    /// A deploy-release command for this site (ARGS before LINK STATUSFILE).
    pub fn deploy_cmd(&self, args: &[&str]) -> Command {
        let mut c = cmd("deploy-release");
        c.args(["-t", "30", "-c", &self.check_url()])
            .args(args)
            .arg(&self.link)
            .arg(&self.status)
            .env_remove("DEPLOY_RELEASE_PAUSE");
        c
    }

    /// deploy-release ARGS LINK STATUSFILE: (code, stderr).
    pub fn deploy(&self, args: &[&str]) -> (i32, String) {
        let (code, _, err) = run(self.deploy_cmd(args), Duration::from_secs(120));
        (code, err)
    }

    /// The chain is whole and no reload runs.
    pub fn wait_settled(&self) {
        assert!(
            wait_until(LONG, || {
                let st = PoolStatus::read(&self.status);
                st.get("reload") != "running"
                    && st.num("ready") == st.num("workers")
                    && st.num("workers") > 0
                    && st.workers.iter().all(|w| w.3 == "ready")
            }),
            "the chain did not settle: {}",
            std::fs::read_to_string(&self.status).unwrap_or_default()
        );
    }
}

/// GET /release on 127.0.0.1:port: the body, trimmed.
pub fn http_release(port: u16) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(15))).ok()?;
    s.write_all(b"GET /release HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (_, body) = out.split_once("\r\n\r\n")?;
    Some(body.trim().to_string())
}

/// A process's state letter from /proc (T: stopped).
pub fn proc_state(pid: i32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next())
        })
        .unwrap_or('?')
}

/// Whether nobody holds the flock on `path` (tried and released at once).
pub fn lock_is_free(path: &Path) -> bool {
    let Ok(f) = std::fs::File::open(path) else {
        return true;
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    // SAFETY: flock(2) on a descriptor owned by `f`, alive for the call.
    let r = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
    r == 0
}

/// uptime-probe against the site until stopped, once it has seen the site's
/// current release.
pub trait ProbeSite {
    fn start(site: &Site, keepalive: bool) -> Self;
}

impl ProbeSite for Probe {
    fn start(site: &Site, keepalive: bool) -> Probe {
        let err = site.dir.join(format!("probe-{keepalive}.err"));
        // a request may wait in the backlog while a loaded machine switches
        let args = ["--json", "-c", "4", "-t", "30000"];
        let probe = Probe::spawn(site.port, &args, keepalive, err, LONG);
        probe.wait_seen(&site.current());
        probe
    }
}

/// Nothing failed, nothing mixed, every response checked.
pub fn assert_clean(code: i32, json: &str, what: &str) {
    eprintln!("{what}: {json}");
    assert!(
        json_count(json, "requests") > 0,
        "{what}: no requests: {json}"
    );
    for k in ["failed", "mixed", "no_x_release", "no_data_release"] {
        assert_eq!(json_count(json, k), 0, "{what}: {k}: {json}");
    }
    assert_eq!(code, 0, "{what}: the probe's exit status: {json}");
}

/// The responses uptime-probe (--json) counted for release `id` (0: none).
pub fn responses_of(json: &str, id: &str) -> u64 {
    let k = format!("{{\"id\":\"{id}\",\"responses\":");
    json.find(&k).map_or(0, |at| {
        json[at + k.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0)
    })
}

/// Mount a small tmpfs at `dir`; false (and a message) when that is not possible here.
pub fn mount_tmpfs(dir: &std::path::Path, size: &str) -> bool {
    std::fs::create_dir_all(dir).expect("mkdir");
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .stderr(Stdio::null())
        .status();
    if !matches!(st, Ok(s) if s.success()) {
        eprintln!(
            "skipping: cannot mount a tmpfs at {} (not root?)",
            dir.display()
        );
        return false;
    }
    true
}

pub struct Mount(pub std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fill the filesystem of `dir` until a write fails.
pub fn fill(dir: &std::path::Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).expect("filler");
    let block = vec![b'x'; 4096];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

/// tcplisten + dir/TOOL (a copy) -v -S dir/status OPTS PROG, in dir (the
/// upgrade tests: a build can be put at dir/TOOL).
pub struct Chain {
    pub p: Proc,
    pub port: u16,
    pub dir: PathBuf,
    pub st: PathBuf,
    pub exe: PathBuf,
}

impl Chain {
    pub fn start(
        dir: &Path,
        tool: &str,
        opts: &[&str],
        prog: &[&str],
        env: &[(&str, &str)],
    ) -> Chain {
        Chain::start_wrapped(dir, &[], tool, opts, prog, env)
    }

    /// As start, with `wrap` (e.g. setlock FILE) in front of tcplisten.
    pub fn start_wrapped(
        dir: &Path,
        wrap: &[&std::ffi::OsStr],
        tool: &str,
        opts: &[&str],
        prog: &[&str],
        env: &[(&str, &str)],
    ) -> Chain {
        let exe = dir.join(tool);
        install(&bin(tool), &exe);
        let st = dir.join("status");
        let mut c = match wrap.split_first() {
            Some((first, rest)) => {
                let mut c = std::process::Command::new(first);
                c.args(rest).arg(bin("tcplisten"));
                c
            }
            None => cmd("tcplisten"),
        };
        c.args(["-1", "127.0.0.1", "0"]).arg(&exe);
        c.args(["-v", "-S"]).arg(&st).args(opts).args(prog);
        for (k, v) in env {
            c.env(k, v);
        }
        c.current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.join("log")).expect("log"))
            .stdin(Stdio::null());
        let mut p = Proc::spawn(c);
        let (line, _) = read_line_timeout(p.stdout(), LONG).expect("tcplisten prints the port");
        let port = line.trim().parse().expect("port");
        Chain {
            p,
            port,
            dir: dir.to_path_buf(),
            st,
            exe,
        }
    }

    pub fn status(&self) -> PoolStatus {
        PoolStatus::read(&self.st)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Every one of `n` workers ready, no reload running.
    pub fn settled(&self, n: usize) -> PoolStatus {
        let ok = wait_until(LONG, || {
            let s = self.status();
            s.get("reload") != "running"
                && s.get("upgrade") != "running"
                && s.pids("ready").len() == n
                && s.workers.len() == n
        });
        assert!(ok, "never settled: {:?}\n{}", self.status(), self.log());
        self.status()
    }

    /// `poolctl upgrade`: (exit code, stdout + stderr).
    pub fn poolctl_upgrade(&self) -> (i32, String) {
        let mut c = cmd("poolctl");
        c.args(["upgrade", "-t", "60"]).arg(&self.st);
        let (code, out, err) = run(c, Duration::from_secs(90));
        (code, format!("{out}{err}"))
    }

    /// Wait for a line containing `what` in the log.
    pub fn wait_log(&self, what: &str) {
        assert!(
            wait_until(LONG, || self.log().contains(what)),
            "never logged {what:?}:\n{}",
            self.log()
        );
    }
}

impl Chain {
    /// `poolctl ARGS dir/status`: (exit code, stdout + stderr).
    pub fn poolctl(&self, args: &[&str]) -> (i32, String) {
        let mut c = cmd("poolctl");
        c.args(args).arg(&self.st);
        let (code, out, err) = run(c, Duration::from_secs(90));
        (code, format!("{out}{err}"))
    }

    /// The chain's pid still runs (not a zombie).
    pub fn alive(&self) -> bool {
        alive(self.p.pid().as_raw())
    }
}
