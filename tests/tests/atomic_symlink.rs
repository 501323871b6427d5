//! atomic-symlink: the real binary, swapped under racing readers and kill -9.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::{bin, run, wait_until, Proc, TempDir};

const T: Duration = Duration::from_secs(20);

fn go(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let mut c = Command::new(bin("atomic-symlink"));
    c.args(args).current_dir(dir);
    run(c, T)
}

/// A quick synchronous run (status() reaps it before returning: nothing can be
/// left behind), for the loops that run the binary thousands of times.
fn swap(dir: &Path, target: &str, link: &str) {
    let st = Command::new(bin("atomic-symlink"))
        .args([target, link])
        .current_dir(dir)
        .stdin(Stdio::null())
        .status()
        .expect("spawn atomic-symlink");
    assert!(st.success(), "atomic-symlink {target} {link}: {st:?}");
}

/// The names in `dir` that look like our temporaries.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".atomic-symlink."))
        .collect()
}

fn release_dirs(d: &TempDir) {
    for r in ["releases/a", "releases/b"] {
        std::fs::create_dir_all(d.join(r)).unwrap();
        std::fs::write(d.join(r).join("index.html"), r).unwrap();
    }
}

fn link_of(p: &Path) -> String {
    std::fs::read_link(p)
        .map(|t| t.to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("<{e}>"))
}

const SWAPS: u64 = 300;

#[test]
fn racing_reader_never_sees_the_link_missing() {
    let d = TempDir::new("asl-race");
    release_dirs(&d);
    swap(d.path(), "releases/a", "current");
    let link = d.join("current");
    let stop = Arc::new(AtomicBool::new(false));
    let (reads, missing, wrong) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let reader = {
        let (stop, reads, missing, wrong, link) = (
            stop.clone(),
            reads.clone(),
            missing.clone(),
            wrong.clone(),
            link.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                reads.fetch_add(1, Ordering::Relaxed);
                match std::fs::read_link(&link) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        missing.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(t) if t != Path::new("releases/a") && t != Path::new("releases/b") => {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                }
                match std::fs::metadata(link.join("index.html")) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                        missing.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        wrong.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                }
            }
        })
    };
    // The short form, 300 swaps (2000 took 41 to 91 s on the loaded 2 cores):
    // it fails on a swap that is unlink and symlink (seen with such an
    // atomic-symlink on TOOLS_BIN_DIR). A read between every two swaps is
    // waited for (a condition: the reader runs all along). The long form
    // (thousands of swaps, the peers beside) is scripts/bench.d/11-atomic-symlink.sh.
    for i in 0..SWAPS {
        let r = reads.load(Ordering::Relaxed);
        assert!(
            wait_until(Duration::from_secs(30), || reads.load(Ordering::Relaxed)
                > r),
            "the reader stopped reading"
        );
        swap(
            d.path(),
            if i % 2 == 0 {
                "releases/b"
            } else {
                "releases/a"
            },
            "current",
        );
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let (reads, missing, wrong) = (
        reads.load(Ordering::Relaxed),
        missing.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
    );
    eprintln!("{SWAPS} swaps: {reads} reads, {missing} ENOENT, {wrong} other errors or targets");
    assert!(
        reads >= SWAPS,
        "the reader hardly ran ({reads} reads): the test proves nothing"
    );
    assert_eq!(missing, 0, "a reader saw the link missing");
    assert_eq!(wrong, 0, "a reader saw an error or a foreign target");
    assert_eq!(link_of(&link), "releases/a");
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
}

#[test]
fn kill_9_at_random_moments_never_leaves_the_link_missing() {
    use std::os::unix::process::ExitStatusExt;
    let d = TempDir::new("asl-kill");
    release_dirs(&d);
    swap(d.path(), "releases/a", "current");
    let link = d.join("current");
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // How long one run takes here, so the kills spread over a whole run.
    let t0 = std::time::Instant::now();
    for _ in 0..20 {
        swap(d.path(), "releases/a", "current");
    }
    let span = (t0.elapsed() / 20).as_micros() as u64 * 3 / 2 + 1;
    let (mut killed, mut finished) = (0, 0);
    for i in 0..500 {
        let target = if i % 2 == 0 {
            "releases/b"
        } else {
            "releases/a"
        };
        let mut c = Command::new(bin("atomic-symlink"));
        c.args([target, "current"])
            .current_dir(d.path())
            .stdin(Stdio::null());
        let mut p = Proc::spawn(c);
        std::thread::sleep(Duration::from_micros(rand() % span));
        p.signal(nix::sys::signal::Signal::SIGKILL);
        let st = p.wait_timeout(T).expect("killed atomic-symlink not reaped");
        if st.signal() == Some(libc::SIGKILL) {
            killed += 1;
        } else {
            assert!(st.success(), "{st:?}");
            finished += 1;
        }
        let now = link_of(&link);
        assert!(
            now == "releases/a" || now == "releases/b",
            "after kill {i}: current is {now}"
        );
    }
    let left = temporaries(d.path());
    eprintln!(
        "500 runs of ~{span} us: {killed} killed, {finished} finished, {} temporaries left",
        left.len()
    );
    assert!(killed > 0, "no run was killed: the test proves nothing");
    // The next run in that directory removes what killed runs left.
    swap(d.path(), "releases/b", "current");
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
    assert_eq!(link_of(&link), "releases/b");
}

#[test]
fn stale_temporaries_of_dead_runs_are_removed_live_ones_kept() {
    let d = TempDir::new("asl-stale");
    release_dirs(&d);
    // A pid that is surely dead: a child we started and reaped.
    let mut c = Command::new("true");
    c.stdin(Stdio::null());
    let mut p = Proc::spawn(c);
    let dead = p.pid().as_raw();
    p.wait_timeout(T).expect("true did not exit");
    drop(p);
    let live = std::process::id();
    let stale = format!(".current.atomic-symlink.{dead}.0123456789abcdef");
    let other = format!(".other.atomic-symlink.{dead}.fedcba9876543210");
    let busy = format!(".current.atomic-symlink.{live}.0123456789abcdef");
    let not_ours = format!(".current.atomic-symlink.{dead}.xyz");
    for n in [&stale, &other, &busy, &not_ours] {
        std::os::unix::fs::symlink("releases/a", d.join(n)).unwrap();
    }
    let plain_file = format!(".file.atomic-symlink.{dead}.0123456789abcdef");
    std::fs::write(d.join(&plain_file), "keep").unwrap();
    let (code, _, err) = go(d.path(), &["releases/b", "current"]);
    assert_eq!(code, 0, "{err}");
    let mut left = temporaries(d.path());
    left.sort();
    let mut want = vec![busy, not_ours, plain_file];
    want.sort();
    assert_eq!(left, want, "only dead runs' symlinks go");
}

#[test]
fn never_descends_into_a_link_to_a_directory() {
    let d = TempDir::new("asl-trap");
    release_dirs(&d);
    // The trap, shown with ln -sf: the new link lands inside the old release.
    std::os::unix::fs::symlink("releases/a", d.join("current")).unwrap();
    let st = Command::new("ln")
        .args(["-sf", "releases/b", "current"])
        .current_dir(d.path())
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        link_of(&d.join("current")),
        "releases/a",
        "ln -sf is expected to fall into the trap here"
    );
    assert!(
        d.join("releases/a/b").symlink_metadata().is_ok(),
        "ln -sf is expected to put b inside releases/a"
    );
    std::fs::remove_file(d.join("releases/a/b")).unwrap();
    // Ours replaces the link itself.
    let (code, _, err) = go(d.path(), &["releases/b", "current"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(link_of(&d.join("current")), "releases/b");
    let inside: Vec<_> = std::fs::read_dir(d.join("releases/a"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        inside,
        vec![std::ffi::OsString::from("index.html")],
        "something was put inside the old release"
    );
    // Also through a longer path, and a link to a link to a directory.
    std::os::unix::fs::symlink("current", d.join("alias")).unwrap();
    let (code, _, err) = go(d.path(), &["releases/a", "alias"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(link_of(&d.join("alias")), "releases/a");
    assert_eq!(link_of(&d.join("current")), "releases/b");
    let sub = d.join("releases");
    let (code, _, err) = go(Path::new("/"), &["a", sub.join("latest").to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(link_of(&sub.join("latest")), "a");
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
    assert_eq!(temporaries(&sub), Vec::<String>::new());
}

#[test]
fn print_previous_and_if_absent() {
    let d = TempDir::new("asl-opts");
    release_dirs(&d);
    // -p with nothing there: no output.
    assert_eq!(
        go(d.path(), &["-p", "releases/a", "current"]),
        (0, String::new(), String::new())
    );
    assert_eq!(
        go(d.path(), &["-p", "releases/b", "current"]),
        (0, "releases/a\n".into(), String::new())
    );
    assert_eq!(
        go(d.path(), &["--print-previous", "releases/a", "current"]).1,
        "releases/b\n"
    );
    // -c: created when absent, exit 1 and untouched when anything is there.
    assert_eq!(go(d.path(), &["-c", "releases/a", "new"]).0, 0);
    assert_eq!(link_of(&d.join("new")), "releases/a");
    let (code, out, err) = go(d.path(), &["-c", "releases/b", "new"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(link_of(&d.join("new")), "releases/a");
    std::os::unix::fs::symlink("nowhere", d.join("dangling")).unwrap();
    assert_eq!(go(d.path(), &["-c", "releases/b", "dangling"]).0, 1);
    assert_eq!(link_of(&d.join("dangling")), "nowhere");
    assert_eq!(
        go(d.path(), &["--if-absent", "releases/b", "releases"]).0,
        1
    );
    // A dangling target is allowed (as ln -s): the deploy verifies, not us.
    assert_eq!(go(d.path(), &["releases/none", "current"]).0, 0);
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
}

#[test]
fn refuses_real_files_and_directories_unless_forced() {
    let d = TempDir::new("asl-refuse");
    release_dirs(&d);
    std::fs::create_dir(d.join("site")).unwrap();
    std::fs::write(d.join("site/index.html"), "old site").unwrap();
    std::fs::write(d.join("file"), "data").unwrap();
    for (name, what) in [("site", "a directory"), ("file", "a file")] {
        let (code, out, err) = go(d.path(), &["releases/a", name]);
        assert_eq!((code, out.as_str()), (100, ""), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("atomic-symlink: fatal: refusing to replace") && err.contains(what),
            "{err}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(d.join("site/index.html")).unwrap(),
        "old site"
    );
    assert_eq!(std::fs::read_to_string(d.join("file")).unwrap(), "data");
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
    // -f: a file is replaced; a directory is exchanged and kept aside, intact.
    assert_eq!(go(d.path(), &["-f", "releases/a", "file"]).0, 0);
    assert_eq!(link_of(&d.join("file")), "releases/a");
    let (code, _, err) = go(d.path(), &["-f", "releases/b", "site"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(link_of(&d.join("site")), "releases/b");
    let aside: Vec<PathBuf> = std::fs::read_dir(d.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("site.replaced-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::read_to_string(aside[0].join("index.html")).unwrap(),
        "old site"
    );
    assert!(
        err.contains(aside[0].file_name().unwrap().to_str().unwrap()),
        "{err}"
    );
    assert_eq!(temporaries(d.path()), Vec::<String>::new());
}

#[test]
fn usage_errors_exit_100() {
    let d = TempDir::new("asl-usage");
    let cases: &[&[&str]] = &[
        &[],
        &["a"],
        &["a", "b", "c"],
        &["", "current"],
        &["a", "current/"],
        &["a", "."],
        &["a", ".."],
        &["a", "x/.."],
        &["a", ""],
        &["-q", "a", "current"],
        &["--bogus", "a", "current"],
        &["-c", "-f", "a", "current"],
    ];
    for args in cases {
        let (code, out, err) = go(d.path(), args);
        assert_eq!((code, out.as_str()), (100, ""), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("atomic-symlink: usage: "), "{err}");
    }
    assert_eq!(
        std::fs::read_dir(d.path()).unwrap().count(),
        0,
        "a usage error created something"
    );
    // Options end at the first non-option: a target may start with a dash after --.
    assert_eq!(go(d.path(), &["--", "-odd", "current"]).0, 0);
    assert_eq!(link_of(&d.join("current")), "-odd");
    assert_eq!(go(d.path(), &["-h"]).0, 0);
    assert_eq!(go(d.path(), &["-V"]).0, 0);
    // The longest name a directory takes: the temporary's name still fits.
    let long = "x".repeat(255);
    assert_eq!(
        go(d.path(), &["-odd", &long]).0,
        100,
        "options end at the first non-option only"
    );
    let (code, _, err) = go(d.path(), &["--", "a", &long]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(link_of(&d.join(&long)), "a");
}

#[test]
fn system_failures_exit_111_and_leave_no_temporary() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let d = TempDir::new("asl-fail");
    let root = nix::unistd::geteuid().is_root();
    // The directory does not exist.
    let (code, _, err) = go(d.path(), &["a", "no/such/dir/current"]);
    assert_eq!(code, 111, "{err}");
    assert!(
        err.starts_with("atomic-symlink: fatal: unable to open directory no/such/dir:"),
        "{err}"
    );
    // Not a directory.
    std::fs::write(d.join("plain"), "").unwrap();
    let (code, _, err) = go(d.path(), &["a", "plain/current"]);
    assert_eq!(code, 111, "{err}");
    // The directory is not writable: the temporary cannot be made.
    let ro = d.join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let mut c = Command::new(bin("atomic-symlink"));
    c.args(["a", "current"]).current_dir(&ro);
    if root {
        c.uid(65534).gid(65534);
    }
    let (code, _, err) = run(c, T);
    assert_eq!(code, 111, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("unable to create a symlink in .: Permission denied"),
        "{err}"
    );
    // -c in that directory: the one symlink(2) fails.
    let mut c = Command::new(bin("atomic-symlink"));
    c.args(["-c", "a", "current"]).current_dir(&ro);
    if root {
        c.uid(65534).gid(65534);
    }
    let (code, _, err) = run(c, T);
    assert_eq!(code, 111, "{err}");
    assert!(
        err.starts_with("atomic-symlink: fatal: unable to create current: Permission denied"),
        "{err}"
    );
    // A directory we may read but not search: linkname cannot be looked at.
    let nox = d.join("nox");
    std::fs::create_dir(&nox).unwrap();
    std::fs::set_permissions(&nox, std::fs::Permissions::from_mode(0o444)).unwrap();
    let mut c = Command::new(bin("atomic-symlink"));
    c.args(["a", "nox/current"]).current_dir(d.path());
    if root {
        c.uid(65534).gid(65534);
    }
    let (code, _, err) = run(c, T);
    assert_eq!(code, 111, "{err}");
    assert!(
        err.starts_with("atomic-symlink: fatal: unable to stat nox/current: Permission denied"),
        "{err}"
    );
    // -p with stdout full: the link was switched, the caller is told it lacks the old target.
    std::fs::create_dir(d.join("w")).unwrap();
    std::os::unix::fs::symlink("a", d.join("w/current")).unwrap();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = Command::new(bin("atomic-symlink"))
        .args(["-p", "b", "current"])
        .current_dir(d.join("w"))
        .stdout(full)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(111), "{err}");
    assert!(
        err.starts_with("atomic-symlink: fatal: unable to print the previous target of current"),
        "{err}"
    );
    assert_eq!(link_of(&d.join("w/current")), "b");
    // The rename itself fails (a sticky directory, linkname owned by someone
    // else): the temporary made a moment before is removed.
    if !root {
        eprintln!("skipping the rename failure: needs root to make a file owned by another user");
        return;
    }
    let sticky = d.join("sticky");
    std::fs::create_dir(&sticky).unwrap();
    std::fs::set_permissions(&sticky, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::os::unix::fs::symlink("a", sticky.join("current")).unwrap();
    let mut c = Command::new(bin("atomic-symlink"));
    c.args(["b", "current"])
        .current_dir(&sticky)
        .uid(65534)
        .gid(65534);
    let (code, _, err) = run(c, T);
    assert_eq!(code, 111, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("unable to rename a new symlink over current"),
        "{err}"
    );
    assert_eq!(link_of(&sticky.join("current")), "a");
    assert_eq!(
        temporaries(&sticky),
        Vec::<String>::new(),
        "the temporary was left behind"
    );
}

/// A stale temporary that cannot be removed (the directory is not writable) is
/// a warning with the C library's reason, never Rust's "(os error N)".
#[test]
fn unremovable_stale_temporary_is_a_plain_warning() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let d = TempDir::new("asl-stale-ro");
    let ro = d.join("ro");
    std::fs::create_dir(&ro).unwrap();
    // A temporary of a run that is gone: pid 2^22 + 1 is above Linux's pid_max limit.
    let stale = ro.join(".current.atomic-symlink.4194305.0123456789abcdef");
    std::os::unix::fs::symlink("a", &stale).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let mut c = Command::new(bin("atomic-symlink"));
    c.args(["a", "current"]).current_dir(&ro);
    if nix::unistd::geteuid().is_root() {
        c.uid(65534).gid(65534);
    }
    let (code, _, err) = run(c, T);
    assert_eq!(code, 111, "{err}");
    assert!(!err.contains("os error"), "{err}");
    let warning = err
        .lines()
        .find(|l| l.starts_with("atomic-symlink: warning: unable to remove stale temporary"))
        .unwrap_or_else(|| panic!("no warning: {err}"));
    assert!(warning.ends_with(": Permission denied"), "{warning}");
    assert!(stale.symlink_metadata().is_ok());
}
