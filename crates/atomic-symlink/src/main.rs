//! atomic-symlink: point linkname at target with rename(2), so every reader at
//! every instant sees the old or the new target, never nothing. See README.md.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::fd::RawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use lexopt::prelude::*;
use nix::errno::Errno;
use nix::fcntl::{open, renameat, renameat2, OFlag, RenameFlags};
use nix::sys::stat::{fstatat, Mode, SFlag};
use nix::unistd::{fsync, symlinkat, unlinkat, UnlinkatFlags};
use unixtool::{Tool, EXIT_TEMPORARY, EXIT_USAGE};

/// `-c`: linkname exists already, nothing was changed.
const EXIT_EXISTS: i32 = 1;
/// The temporaries are `.<linkname>.atomic-symlink.<pid>.<16 hex digits>`.
const TEMP_TAG: &str = "atomic-symlink";

const TOOL: Tool = Tool {
    name: "atomic-symlink",
    usage: "atomic-symlink [-p] [-c|-f] target linkname",
    help: "
  -p, --print-previous  print linkname's previous target on stdout (for rollback)
  -c, --if-absent       create linkname only if nothing is there (else exit 1)
  -f, --force           also replace a regular file, or move a real directory aside
  -h, --help            this text
  -V, --version         the version
",
};

/// What the command line asks for.
struct Options {
    print_previous: bool,
    if_absent: bool,
    force: bool,
    target: OsString,
    linkname: OsString,
}

/// linkname, as every step after the parse sees it: its directory, opened once,
/// and its last component; every call below is relative to that directory.
struct Link<'a> {
    dirfd: RawFd,
    dir_name: String,
    base: &'a OsStr,
    /// linkname as messages print it.
    name: String,
}

fn main() {
    let opt = parse_options();
    let link = open_link(&opt.linkname);

    // -c: symlink(2) itself fails if anything is there; nothing to rename.
    if opt.if_absent {
        create_if_absent(&link, &opt.target);
        sync_dir(&link);
        return;
    }
    let kind = existing_kind(&link, opt.force);
    let is_dir = kind == Some(SFlag::S_IFDIR);
    let previous = match kind {
        Some(SFlag::S_IFLNK) if opt.print_previous => Some(read_previous(&link)),
        _ => None,
    };
    // The new link under a unique temporary name beside linkname, renamed over it
    // in one step (a real directory under -f: exchanged with it, then moved aside).
    let temp = make_temporary(&link, &opt.target);
    switch(&link, &temp, is_dir);
    if is_dir {
        move_aside(&link, &temp);
    }
    if let Some(p) = previous {
        print_previous(&link, p);
    }
    sync_dir(&link);
}

fn parse_options() -> Options {
    let mut print_previous = false;
    let mut if_absent = false;
    let mut force = false;

    let mut parser = lexopt::Parser::from_env();
    let args = loop {
        let Some(arg) = TOOL.next_arg(&mut parser) else {
            break Vec::new();
        };
        match arg {
            Short('p') | Long("print-previous") => print_previous = true,
            Short('c') | Long("if-absent") => if_absent = true,
            Short('f') | Long("force") => force = true,
            Short('h') | Long("help") => TOOL.print_help(),
            Short('V') | Long("version") => TOOL.print_version(),
            Value(first) => break unixtool::rest_of_args(first, &mut parser),
            other => TOOL.bad_arg(other.unexpected()),
        }
    };
    if if_absent && force {
        TOOL.usage("-c and -f conflict");
    }
    let [target, linkname] = match <[OsString; 2]>::try_from(args) {
        Ok(two) => two,
        Err(v) if v.len() < 2 => TOOL.usage("missing target or linkname"),
        Err(_) => TOOL.usage("too many arguments"),
    };
    if target.is_empty() {
        TOOL.usage("target is empty");
    }
    Options {
        print_previous,
        if_absent,
        force,
        target,
        linkname,
    }
}

/// Open linkname's directory, and clear it of temporaries dead runs left.
fn open_link(linkname: &OsStr) -> Link<'_> {
    let name = linkname.to_string_lossy().into_owned();
    let (dir, base) = split_linkname(linkname);
    let dir_name = dir.to_string_lossy().into_owned();
    let dirfd = match unixtool::retry_eintr(|| {
        open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    }) {
        Ok(fd) => fd,
        Err(e) => TOOL.fatal_errno(EXIT_TEMPORARY, format_args!("open directory {dir_name}"), e),
    };
    remove_stale_temporaries(dir);
    Link {
        dirfd,
        dir_name,
        base,
        name,
    }
}

/// -c: create linkname, or exit 1 if anything is there.
fn create_if_absent(link: &Link, target: &OsStr) {
    match symlinkat(target, Some(link.dirfd), link.base) {
        Ok(()) => {}
        Err(Errno::EEXIST) => TOOL.fatal(
            EXIT_EXISTS,
            format_args!("{} exists: left unchanged", link.name),
        ),
        Err(e) => TOOL.fatal_errno(EXIT_TEMPORARY, format_args!("create {}", link.name), e),
    }
}

/// What is there now: nothing and a symlink are fine; the rest needs -f.
fn existing_kind(link: &Link, force: bool) -> Option<SFlag> {
    let l = &link.name;
    let kind = match fstatat(
        Some(link.dirfd),
        link.base,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => Some(SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT),
        Err(Errno::ENOENT) => None,
        Err(e) => TOOL.fatal_errno(EXIT_TEMPORARY, format_args!("stat {l}"), e),
    };
    match kind {
        None | Some(SFlag::S_IFLNK) => {}
        Some(_) if force => {}
        Some(SFlag::S_IFDIR) => TOOL.fatal(
            EXIT_USAGE,
            format_args!(
                "refusing to replace {l}: it is a directory, not a symlink (-f moves it aside)"
            ),
        ),
        Some(_) => TOOL.fatal(
            EXIT_USAGE,
            format_args!("refusing to replace {l}: it is a file, not a symlink (-f replaces it)"),
        ),
    }
    kind
}

/// -p: the target linkname points at now.
fn read_previous(link: &Link) -> OsString {
    match nix::fcntl::readlinkat(Some(link.dirfd), link.base) {
        Ok(p) => p,
        Err(e) => TOOL.fatal_errno(
            EXIT_TEMPORARY,
            format_args!("read symlink {}", link.name),
            e,
        ),
    }
}

/// rename(2) the temporary over linkname; for a real directory, exchange the two.
fn switch(link: &Link, temp: &OsStr, is_dir: bool) {
    let dirfd = Some(link.dirfd);
    let switched = if is_dir {
        renameat2(dirfd, temp, dirfd, link.base, RenameFlags::RENAME_EXCHANGE)
    } else {
        renameat(dirfd, temp, dirfd, link.base)
    };
    if let Err(e) = switched {
        let _ = unlinkat(dirfd, temp, UnlinkatFlags::NoRemoveDir);
        TOOL.fatal_errno(
            EXIT_TEMPORARY,
            format_args!("rename a new symlink over {}", link.name),
            e,
        );
    }
}

/// -f on a directory: after the exchange it sits under the temporary name; move it
/// to `<linkname>.replaced-<pid>`, or warn where it was left.
fn move_aside(link: &Link, temp: &OsStr) {
    let mut aside = link.base.to_os_string();
    aside.push(format!(".replaced-{}", std::process::id()));
    let aside_name = aside.to_string_lossy();
    let dirfd = Some(link.dirfd);
    match renameat2(
        dirfd,
        temp,
        dirfd,
        aside.as_os_str(),
        RenameFlags::RENAME_NOREPLACE,
    ) {
        Ok(()) => TOOL.info(format_args!(
            "the directory {} was moved aside to {aside_name}",
            link.name
        )),
        Err(e) => TOOL.warn(format_args!(
            "the directory {} was left as {}: unable to rename it to {aside_name}: {}",
            link.name,
            temp.to_string_lossy(),
            unixtool::strerror(e)
        )),
    }
}

/// -p: the previous target and a newline on stdout.
fn print_previous(link: &Link, previous: OsString) {
    let mut line = previous.into_vec();
    line.push(b'\n');
    if let Err(e) = std::io::stdout().write_all(&line) {
        let e = unixtool::errno_of(&e);
        TOOL.fatal_errno(
            EXIT_TEMPORARY,
            format_args!("print the previous target of {}", link.name),
            e,
        );
    }
}

/// `a/b/c` -> (`a/b`, `c`); `c` -> (`.`, `c`); `/c` -> (`/`, `c`). A linkname
/// that ends in `/`, `.` or `..` names a directory to descend into: refused.
fn split_linkname(linkname: &OsStr) -> (&OsStr, &OsStr) {
    let bytes = linkname.as_bytes();
    let (dir, base) = match bytes.iter().rposition(|&b| b == b'/') {
        Some(0) => (&b"/"[..], &bytes[1..]),
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (&b"."[..], bytes),
    };
    if base.is_empty() || base == b"." || base == b".." {
        TOOL.usage(format_args!(
            "linkname {} names a directory, not a link (no trailing / . or ..)",
            linkname.to_string_lossy()
        ));
    }
    (OsStr::from_bytes(dir), OsStr::from_bytes(base))
}

/// symlink(2) `target` to `.<base>.atomic-symlink.<pid>.<random>` in the directory.
fn make_temporary(link: &Link, target: &OsStr) -> OsString {
    let base = link.base;
    let mut attempt = 0;
    loop {
        // At most 200 bytes of linkname, so that the name fits NAME_MAX (255).
        let mut temp = OsString::from(".");
        temp.push(OsStr::from_bytes(&base.as_bytes()[..base.len().min(200)]));
        temp.push(format!(
            ".{TEMP_TAG}.{}.{:016x}",
            std::process::id(),
            unixtool::symlink::random64()
        ));
        match symlinkat(target, Some(link.dirfd), temp.as_os_str()) {
            Ok(()) => return temp,
            Err(Errno::EEXIST) if attempt < 10 => attempt += 1,
            Err(e) => TOOL.fatal_errno(
                EXIT_TEMPORARY,
                format_args!("create a symlink in {}", link.dir_name),
                e,
            ),
        }
    }
}

/// Remove the temporaries a run killed between symlink(2) and rename(2) left
/// in this directory: symlinks named by the pattern whose pid no longer lives.
fn remove_stale_temporaries(dir: &OsStr) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = temporary_pid(name.as_bytes()) else {
            continue;
        };
        let dead = pid > 0
            && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) == Err(Errno::ESRCH);
        let is_link = entry.file_type().map(|t| t.is_symlink()).unwrap_or(false);
        if dead && is_link {
            let path = entry.path();
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    TOOL.warn(format_args!(
                        "unable to remove stale temporary {}: {}",
                        path.display(),
                        unixtool::io_reason(&e)
                    ));
                }
            }
        }
    }
}

/// The pid in `.<base>.atomic-symlink.<pid>.<16 hex>`, if `name` is one.
fn temporary_pid(name: &[u8]) -> Option<i32> {
    let rest = name.strip_prefix(b".")?;
    let mut parts = rest.rsplitn(3, |&b| b == b'.');
    let hex = parts.next()?;
    let pid = parts.next()?;
    let head = parts.next()?;
    let base = head.strip_suffix(format!(".{TEMP_TAG}").as_bytes())?;
    let is_hex = hex.len() == 16
        && hex
            .iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b));
    if base.is_empty() || !is_hex {
        return None;
    }
    unixtool::parse_number(OsStr::from_bytes(pid), 1, i32::MAX)
}

/// fsync(2) the directory, so the new link survives a crash.
fn sync_dir(link: &Link) {
    if let Err(e) = unixtool::retry_eintr(|| fsync(link.dirfd)) {
        TOOL.fatal_errno(
            EXIT_TEMPORARY,
            format_args!("sync directory {}", link.dir_name),
            e,
        );
    }
}
