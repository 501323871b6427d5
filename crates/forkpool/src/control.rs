//! The control FIFO (`-C`): two-phase deploys for fleets. forkpool creates the
//! FIFO (0600), opens it read-write and non-blocking (so the open never
//! blocks and the FIFO never reads end of file, whoever comes and goes), and
//! reads one command per line:
//!
//! - `prepare`: resolve the pin, start a new generation, hold it ready;
//! - `commit [UNIX_TIME]`: switch to the prepared generation as a cutover
//!   does, now or at that wall-clock instant;
//! - `abort`: stop the prepared generation; nothing changes.
//!
//! [`parse`] is the pure part (a line in, a [`Command`] out); the policy
//! (policy/prepare.rs) decides what each command does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, Mode, SFlag};

use crate::pool::{resolve, Pool};
use crate::TOOL;

/// The longest command line read; a longer one is refused whole.
const MAX_LINE: usize = 256;

/// One control command.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Prepare,
    /// `at`: the wall-clock instant (seconds since the epoch) to switch at.
    Commit {
        at: Option<f64>,
    },
    Abort,
}

/// One line of the FIFO (without its newline): a command, nothing (a blank
/// line), or why it is not one.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    match words[..] {
        [] => Ok(None),
        ["prepare"] => Ok(Some(Command::Prepare)),
        ["abort"] => Ok(Some(Command::Abort)),
        ["commit"] => Ok(Some(Command::Commit { at: None })),
        ["commit", t] => match unix_time(t) {
            Some(at) => Ok(Some(Command::Commit { at: Some(at) })),
            None => Err(format!(
                "commit wants a time in seconds since the epoch such as 1764245000.250, not {t:?}"
            )),
        },
        [w @ ("prepare" | "abort"), ..] => Err(format!("{w} takes no argument: {line:?}")),
        ["commit", ..] => Err(format!("commit takes at most one argument: {line:?}")),
        _ => Err(format!(
            "unknown control command {:?} (prepare, commit [UNIX_TIME], abort)",
            words[0]
        )),
    }
}

/// `1764245000` or `1764245000.250`: digits, an optional fraction; below
/// the year 5138 (1e11 s), so that it is a time and not a typo.
fn unix_time(t: &str) -> Option<f64> {
    let (int, frac) = t.split_once('.').unwrap_or((t, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) || int.len() > 11 {
        return None;
    }
    t.parse::<f64>().ok().filter(|v| *v < 1e11)
}

/// The wall clock now, in seconds since the epoch.
pub fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The monotonic instant at which the wall clock reads `at`, given that it
/// reads `wall` at `now` (a time already past: `now`).
pub fn instant_of(at: f64, now: Instant, wall: f64) -> Instant {
    if at <= wall {
        return now;
    }
    now + Duration::try_from_secs_f64(at - wall).unwrap_or(Duration::MAX / 4)
}

/// The FIFO, open for reading, and the part of a line read so far.
pub struct ControlFifo {
    fd: OwnedFd,
    partial: Vec<u8>,
    /// A line grew past [`MAX_LINE`]: skip to its end.
    skipping: bool,
}

impl ControlFifo {
    /// Create the FIFO (0600) unless one is there, refuse anything else
    /// there (a file, a symlink, a FIFO of another user), open it.
    pub fn open(path: &Path) -> Result<ControlFifo, String> {
        match nix::unistd::mkfifo(path, Mode::S_IRUSR | Mode::S_IWUSR) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(unixtool::strerror(e).to_string()),
        }
        let flags = OFlag::O_RDWR | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
        let fd = match nix::fcntl::open(path, flags, Mode::empty()) {
            // SAFETY: open just returned this descriptor, owned by no one else.
            Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
            Err(Errno::ELOOP) => return Err("it is a symbolic link".to_string()),
            Err(e) => return Err(unixtool::strerror(e).to_string()),
        };
        let st = fstat(fd.as_raw_fd()).map_err(|e| unixtool::strerror(e).to_string())?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFIFO {
            return Err("it exists and is not a FIFO".to_string());
        }
        if st.st_uid != nix::unistd::geteuid().as_raw() {
            return Err(format!("the FIFO there belongs to uid {}", st.st_uid));
        }
        nix::sys::stat::fchmod(fd.as_raw_fd(), Mode::S_IRUSR | Mode::S_IWUSR)
            .map_err(|e| unixtool::strerror(e).to_string())?;
        Ok(ControlFifo {
            fd,
            partial: Vec::new(),
            skipping: false,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Every whole line written since the last call (`Err`: a line too long).
    pub fn lines(&mut self) -> Vec<Result<String, String>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = match unixtool::retry_eintr(|| nix::unistd::read(self.fd.as_raw_fd(), &mut buf))
            {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for &b in &buf[..n] {
                if b == b'\n' {
                    let line = std::mem::take(&mut self.partial);
                    if std::mem::take(&mut self.skipping) {
                        out.push(Err(format!("a line longer than {MAX_LINE} bytes")));
                    } else {
                        out.push(Ok(String::from_utf8_lossy(&line).into_owned()));
                    }
                } else if !self.skipping {
                    self.partial.push(b);
                    if self.partial.len() > MAX_LINE {
                        self.partial.clear();
                        self.skipping = true;
                    }
                }
            }
        }
        out
    }
}

impl Pool {
    /// `-C`: create and open the FIFO (or die, 111); the policy learns its
    /// name and the prepare deadline.
    pub fn open_control(&mut self) {
        let Some(path) = self.cfg.control.clone() else {
            return;
        };
        let fifo = ControlFifo::open(&path).unwrap_or_else(|why| {
            TOOL.fatal(
                unixtool::EXIT_TEMPORARY,
                format_args!("unable to open control FIFO {}: {why}", path.display()),
            )
        });
        self.policy.two_phase.control = Some(path);
        self.policy.two_phase.timeout = self.cfg.prepare_timeout;
        self.control = Some(fifo);
    }

    /// `-C`: the FIFO's descriptor, to poll.
    pub fn control_fd(&self) -> Option<RawFd> {
        self.control.as_ref().map(|c| c.fd())
    }

    /// Read and carry out the commands written to the FIFO, in order.
    pub fn read_control(&mut self, now: Instant) {
        let Some(c) = self.control.as_mut() else {
            return;
        };
        for line in c.lines() {
            let wall = wall_now();
            let actions = match line.and_then(|l| parse(&l)) {
                Ok(None) => continue,
                Err(why) => self.policy.bad_command(why),
                Ok(Some(Command::Prepare)) => {
                    let pin = self.cfg.pin.clone();
                    self.policy.prepare(now, wall, || match pin {
                        None => Ok(None),
                        Some(p) => resolve(&p)
                            .map(Some)
                            .map_err(|e| format!("unable to resolve {}: {e}", p.display())),
                    })
                }
                Ok(Some(Command::Commit { at })) => {
                    let at = at.map(|t| (instant_of(t, now, wall), t));
                    self.policy.commit(now, wall, at)
                }
                Ok(Some(Command::Abort)) => self.policy.abort(now, wall),
            };
            self.apply(actions, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_three_commands_parse() {
        assert_eq!(parse("prepare"), Ok(Some(Command::Prepare)));
        assert_eq!(parse("  abort \r"), Ok(Some(Command::Abort)));
        assert_eq!(parse("commit"), Ok(Some(Command::Commit { at: None })));
        assert_eq!(
            parse("commit 1764245000.250"),
            Ok(Some(Command::Commit {
                at: Some(1764245000.25)
            }))
        );
        assert_eq!(
            parse("commit 1764245000"),
            Ok(Some(Command::Commit {
                at: Some(1764245000.0)
            }))
        );
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("   "), Ok(None));
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        for bad in [
            "commit -1",
            "commit 1e9",
            "commit 12.",
            "commit .5",
            "commit 0x10",
            "commit nan",
            "commit 99999999999999",
            "commit 1 2",
            "prepare now",
            "abort 1",
            "reload",
            "PREPARE",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was taken");
        }
        assert!(parse("frobnicate")
            .unwrap_err()
            .contains("unknown control command"));
        assert!(parse("commit soon")
            .unwrap_err()
            .contains("seconds since the epoch"));
    }

    #[test]
    fn a_wall_clock_instant_becomes_a_monotonic_one() {
        let now = Instant::now();
        let wall = 1_764_245_000.0;
        assert_eq!(
            instant_of(wall + 1.5, now, wall),
            now + Duration::from_millis(1500)
        );
        assert_eq!(instant_of(wall - 3.0, now, wall), now);
        assert_eq!(instant_of(wall, now, wall), now);
    }

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("forkpool-control-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("mkdir");
        d
    }

    #[test]
    fn the_fifo_gives_whole_lines_and_refuses_what_is_not_a_fifo() {
        use std::io::Write;
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let d = tempdir("fifo");
        let path = d.join("control");
        let mut c = ControlFifo::open(&path).expect("open");
        let meta = std::fs::metadata(&path).expect("stat");
        assert!(meta.file_type().is_fifo());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert!(
            c.lines().is_empty(),
            "nothing written, nothing read, no EOF"
        );
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("writer");
        w.write_all(b"prepare\ncomm").expect("write");
        assert_eq!(c.lines(), vec![Ok("prepare".to_string())]);
        w.write_all(b"it 12\n").expect("write");
        drop(w);
        assert_eq!(c.lines(), vec![Ok("commit 12".to_string())]);
        let mut w = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("writer");
        w.write_all(&[b'x'; 300]).expect("write");
        w.write_all(b"\nabort\n").expect("write");
        let got = c.lines();
        assert!(got[0].is_err(), "{got:?}");
        assert_eq!(got[1], Ok("abort".to_string()));
        // opened again: the same FIFO
        drop(c);
        assert!(ControlFifo::open(&path).is_ok());
        // a file, a symlink: refused, untouched
        let file = d.join("file");
        std::fs::write(&file, "precious\n").expect("file");
        let e = ControlFifo::open(&file).err().expect("a file is refused");
        assert!(e.contains("not a FIFO"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious\n");
        let link = d.join("link");
        std::os::unix::fs::symlink(&path, &link).expect("symlink");
        let e = ControlFifo::open(&link)
            .err()
            .expect("a symlink is refused");
        assert!(e.contains("symbolic link"), "{e}");
        std::fs::remove_dir_all(&d).ok();
    }
}
