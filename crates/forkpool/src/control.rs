//! The control FIFO (`-C`), an I/O leaf: forkpool creates the FIFO (0600),
//! opens it read-write and non-blocking (so the open never blocks and the
//! FIFO never reads end of file, whoever comes and goes), and hands out one
//! whole line at a time. What a line means is command.rs; what a command
//! does, the rule's (policy/prepare.rs).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, Mode, SFlag};

/// The longest command line read; a longer one is refused whole.
const MAX_LINE: usize = 256;

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

    /// The FIFO the previous image had open (kept across an upgrade's exec):
    /// what was written meanwhile waits in it.
    pub fn adopt(fd: OwnedFd) -> ControlFifo {
        ControlFifo {
            fd,
            partial: Vec::new(),
            skipping: false,
        }
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Every whole line written since the last call (`Err`: a line too
    /// long, or a partial one). A line comes in one write (at most 256
    /// bytes: the kernel writes it whole, never interleaved); what is left
    /// without a newline once the FIFO is empty is refused and dropped, so
    /// it never merges with the next writer's line.
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
        if !self.partial.is_empty() || self.skipping {
            let long = std::mem::take(&mut self.skipping);
            let part = std::mem::take(&mut self.partial);
            out.push(Err(if long {
                format!("a line longer than {MAX_LINE} bytes")
            } else {
                format!(
                    "a partial line ({} bytes without a newline): dropped",
                    part.len()
                )
            }));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

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
        let got = c.lines();
        assert_eq!(got[0], Ok("prepare".to_string()));
        assert!(
            got[1].as_ref().is_err_and(|e| e.contains("partial line")),
            "{got:?}"
        );
        // Never merged with what comes next.
        w.write_all(b"it 12\n").expect("write");
        drop(w);
        assert_eq!(c.lines(), vec![Ok("it 12".to_string())]);
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
