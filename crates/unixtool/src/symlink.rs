//! Switch a symlink with rename(2) (atomic-symlink and deploy-release): a new
//! link under an unpredictable temporary name beside it, renamed over it, then
//! the directory synced, so every reader at every instant sees the old or the
//! new target, and a crash after the call keeps the new one.

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::fcntl::{open, renameat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{fsync, symlinkat, unlinkat, UnlinkatFlags};

/// The temporaries are `.<linkname>.atomic-symlink.<pid>.<16 hex digits>`
/// (atomic-symlink removes those whose pid is dead).
pub const TEMP_TAG: &str = "atomic-symlink";

/// 64 random bits (getrandom(2); the clock and the pid if that fails).
pub fn random64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: buf is a valid, writable buffer of buf.len() bytes for the whole call.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
    if n == buf.len() as isize {
        return u64::from_ne_bytes(buf);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (t as u64) ^ ((std::process::id() as u64) << 32)
}

/// Point `link` at `target` by rename(2) and sync the directory. `link` must be
/// a symlink or absent (rename(2) over a directory fails).
pub fn replace(target: &Path, link: &Path) -> io::Result<()> {
    let dir = match link.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let base = link
        .file_name()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let dirfd = crate::retry_eintr(|| {
        open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    })?;
    let result = switch(dirfd, target.as_os_str(), base);
    // SAFETY: dirfd was opened above, is owned here and closed once.
    unsafe { libc::close(dirfd) };
    result
}

fn switch(dirfd: i32, target: &OsStr, base: &OsStr) -> io::Result<()> {
    let mut attempt = 0;
    let temp = loop {
        let mut temp = OsString::from(".");
        temp.push(OsStr::from_bytes(&base.as_bytes()[..base.len().min(200)]));
        temp.push(format!(
            ".{TEMP_TAG}.{}.{:016x}",
            std::process::id(),
            random64()
        ));
        match symlinkat(target, Some(dirfd), temp.as_os_str()) {
            Ok(()) => break temp,
            Err(nix::errno::Errno::EEXIST) if attempt < 10 => attempt += 1,
            Err(e) => return Err(e.into()),
        }
    };
    if let Err(e) = renameat(Some(dirfd), temp.as_os_str(), Some(dirfd), base) {
        let _ = unlinkat(Some(dirfd), temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        return Err(e.into());
    }
    crate::retry_eintr(|| fsync(dirfd))?;
    Ok(())
}
