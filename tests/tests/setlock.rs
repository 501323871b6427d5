//! setlock: the real binary, and daemontools' own setlock beside it for -nNxX.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration_tests::{bin, read_line_timeout, require_peer, run, wait_until, Proc, TempDir};

const T: Duration = Duration::from_secs(20);

fn ours() -> PathBuf {
    bin("setlock")
}

/// daemontools' setlock, called by its absolute path: ours is named setlock too.
fn daemontools() -> Option<PathBuf> {
    if !require_peer("setlock") {
        return None;
    }
    let p = PathBuf::from("/usr/bin/setlock");
    if p.is_file() {
        Some(p)
    } else if std::env::var_os("ALLOW_MISSING_PEERS").is_some() {
        None
    } else {
        panic!(
            "/usr/bin/setlock (Debian package daemontools) is not installed: run scripts/test-deps"
        );
    }
}

fn sl(prog: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(prog);
    c.args(args);
    c
}

/// Run `prog args...` to completion: (exit code, stdout, stderr).
fn go(prog: &Path, args: &[&str]) -> (i32, String, String) {
    run(sl(prog, args), T)
}

/// `prog [opts] file sh -c 'echo locked; exec sleep 60'`, returned once it holds the lock.
fn holder(prog: &Path, opts: &[&str], file: &Path) -> Proc {
    let mut c = sl(prog, opts);
    c.arg(file).args(["sh", "-c", "echo locked; exec sleep 60"]);
    c.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut p = Proc::spawn(c);
    let (line, _) = read_line_timeout(p.stdout(), T).expect("holder did not start");
    assert_eq!(line, "locked");
    p
}

fn one_line(err: &str) {
    assert_eq!(
        err.lines().count(),
        1,
        "want one line on stderr, got {err:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn counter_is_exact_under_exclusive_lock() {
    let d = TempDir::new("setlock-counter");
    std::fs::write(d.join("counter"), "0\n").unwrap();
    let script = r#"i=0
        while [ $i -lt 200 ]; do
            "$0" lock sh -c 'read n < counter; echo $((n + 1)) > counter' || exit 1
            i=$((i + 1))
        done"#;
    let procs: Vec<Proc> = (0..8)
        .map(|_| {
            let mut c = Command::new("sh");
            c.args(["-c", script])
                .arg(ours())
                .current_dir(d.path())
                .stdin(Stdio::null());
            Proc::spawn(c)
        })
        .collect();
    for mut p in procs {
        let st = p
            .wait_timeout(Duration::from_secs(120))
            .expect("incrementer did not finish");
        assert!(st.success(), "an incrementer failed: {st:?}");
    }
    let n = std::fs::read_to_string(d.join("counter")).unwrap();
    assert_eq!(n.trim(), "1600", "lost updates under the lock");
}

#[test]
fn nonblock_on_held_lock_fails_at_once() {
    let d = TempDir::new("setlock-n");
    let f = d.join("lock");
    let _h = holder(&ours(), &[], &f);
    let fs = f.to_str().unwrap();
    let t0 = Instant::now();
    let (code, out, err) = go(&ours(), &["-n", fs, "echo", "ran"]);
    assert_eq!(code, 111, "{err}");
    // The holder keeps the lock for 60 s: a wait for it would take that long
    // (a bound well away from 0, this machine having stalled a fork for 6 s).
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "-n waited {:?}",
        t0.elapsed()
    );
    assert_eq!(out, "", "prog ran without the lock");
    one_line(&err);
    assert!(err.starts_with("setlock: fatal: unable to lock "), "{err}");
    // -t 0: the same single try, but with the timeout's own code.
    let (code, _, err) = go(&ours(), &["-t", "0", fs, "true"]);
    assert_eq!(code, 75, "{err}");
    one_line(&err);
}

#[test]
fn timeout_gives_up_within_its_bound() {
    let d = TempDir::new("setlock-t");
    let f = d.join("lock");
    let h = holder(&ours(), &[], &f);
    let fs = f.to_str().unwrap();
    let t0 = Instant::now();
    let (code, out, err) = go(&ours(), &["-t", "300", fs, "echo", "ran"]);
    let took = t0.elapsed();
    assert_eq!(code, 75, "{err}");
    assert_eq!(out, "");
    one_line(&err);
    assert!(err.contains("after 300 ms"), "{err}");
    assert!(
        took >= Duration::from_millis(300),
        "gave up early: {took:?}"
    );
    assert!(took < Duration::from_millis(1500), "gave up late: {took:?}");
    // -x: a timeout is "cannot be locked" too: exit 0, quietly, prog not run.
    let (code, out, err) = go(&ours(), &["-x", "-t", "50", fs, "echo", "ran"]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
    drop(h);
    // Released within the bound: -t takes the lock and runs prog.
    let _h = holder(&ours(), &[], &f);
    let mut c = sl(&ours(), &["-t", "10000", fs, "echo", "ran"]);
    c.stdout(Stdio::piped()).stdin(Stdio::null());
    let mut waiter = Proc::spawn(c);
    let out = waiter.stdout();
    drop(_h);
    let (line, _) = read_line_timeout(out, T).expect("-t did not get the released lock");
    assert_eq!(line, "ran");
    assert!(waiter.wait_timeout(T).expect("waiter hung").success());
}

#[test]
fn timeout_leaves_no_timer_or_handler_to_prog() {
    // An interval timer or a SIGALRM handler leaking into prog would kill this sh.
    let d = TempDir::new("setlock-t-leak");
    let f = d.join("lock");
    let (code, out, err) = go(
        &ours(),
        &[
            "-t",
            "20",
            f.to_str().unwrap(),
            "sh",
            "-c",
            "sleep 0.3; echo alive",
        ],
    );
    assert_eq!((code, out.trim()), (0, "alive"), "{err}");
}

#[test]
fn shared_locks_coexist_and_exclude_a_writer() {
    let d = TempDir::new("setlock-r");
    let f = d.join("lock");
    let fs = f.to_str().unwrap();
    let reader = holder(&ours(), &["-r"], &f);
    assert_eq!(
        go(&ours(), &["-r", "-n", fs, "true"]).0,
        0,
        "shared locks must coexist"
    );
    assert_eq!(
        go(&ours(), &["-n", fs, "true"]).0,
        111,
        "a writer got in beside a reader"
    );
    assert_eq!(go(&ours(), &["-w", "-t", "100", fs, "true"]).0, 75);
    drop(reader);
    let writer = holder(&ours(), &["-w"], &f);
    assert_eq!(
        go(&ours(), &["-r", "-n", fs, "true"]).0,
        111,
        "a reader got in beside a writer"
    );
    drop(writer);
    assert_eq!(go(&ours(), &["-n", fs, "true"]).0, 0);
}

#[test]
fn lock_survives_prog_forking_a_child_and_exiting() {
    let d = TempDir::new("setlock-fork");
    let f = d.join("lock");
    let fs = f.to_str().unwrap();
    let mut c = sl(
        &ours(),
        &[fs, "sh", "-c", "sleep 60 >/dev/null 2>&1 & echo $!"],
    );
    c.stdout(Stdio::piped()).stdin(Stdio::null());
    let mut p = Proc::spawn(c); // its group (the sleeping child too) is killed at the end
    let (line, _) = read_line_timeout(p.stdout(), T).expect("no child pid");
    let child: i32 = line.parse().expect("child pid");
    assert!(p.wait_timeout(T).expect("prog did not exit").success());
    assert!(integration_tests::alive(child));
    assert_eq!(
        go(&ours(), &["-n", fs, "true"]).0,
        111,
        "the child's lock was lost when prog exited"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(
        wait_until(T, || go(&ours(), &["-n", fs, "true"]).0 == 0),
        "lock not released with its last holder"
    );
}

#[test]
fn lock_descriptor_is_the_only_one_handed_down() {
    let d = TempDir::new("setlock-fd");
    let f = d.join("lock");
    let fs = f.to_str().unwrap();
    let (code, out, err) = go(
        &ours(),
        &["-d", "7", fs, "readlink", "-v", "/proc/self/fd/7"],
    );
    assert_eq!((code, out.trim()), (0, fs), "{err}");
    // Without -d: exactly one more descriptor than a plain run, and it is the lock file.
    let fds = |out: &str| out.split_whitespace().map(String::from).collect::<Vec<_>>();
    let list = "for f in /proc/self/fd/*; do readlink $f; done; true";
    let (_, plain, _) = run(sl(Path::new("sh"), &["-c", list]), T);
    let (code, locked, _) = go(&ours(), &[fs, "sh", "-c", list]);
    assert_eq!(code, 0);
    let (plain, locked) = (fds(&plain), fds(&locked));
    assert_eq!(locked.len(), plain.len() + 1, "{plain:?} vs {locked:?}");
    assert!(locked.iter().any(|l| l == fs), "{locked:?}");
    // The lock file is created 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o600, 0, "mode {mode:o}");
}

/// daemontools' options, run against both binaries side by side: same codes.
#[test]
fn compatible_with_daemontools_setlock() {
    let Some(djb) = daemontools() else { return };
    let d = TempDir::new("setlock-compat");
    let f = d.join("lock");
    let fs = f.to_str().unwrap();
    let missing = d.join("no/such/dir/lock");
    let ms = missing.to_str().unwrap();
    let dir = d.path().to_str().unwrap();
    let marker = d.join("ran");
    let mark = format!("touch {}", marker.display());
    for (name, tool) in [("ours", ours()), ("daemontools", djb.clone())] {
        let ctx = |what: &str| format!("{name}: {what}");
        // Usage: 100.
        assert_eq!(go(&tool, &[]).0, 100, "{}", ctx("no args"));
        assert_eq!(go(&tool, &[fs]).0, 100, "{}", ctx("no prog"));
        assert_eq!(
            go(&tool, &["-q", fs, "true"]).0,
            100,
            "{}",
            ctx("bad option")
        );
        // Free lock: prog's own status comes through, with every option.
        for opts in [
            &[][..],
            &["-n"],
            &["-N"],
            &["-x"],
            &["-X"],
            &["-nx"],
            &["-nX"],
        ] {
            let mut a: Vec<&str> = opts.to_vec();
            a.extend([fs, "sh", "-c", "exit 7"]);
            assert_eq!(
                go(&tool, &a).0,
                7,
                "{}",
                ctx(&format!("{opts:?} exit status"))
            );
        }
        // Cannot open: 111, or 0 quietly with -x.
        assert_eq!(go(&tool, &[ms, "true"]).0, 111, "{}", ctx("missing dir"));
        assert_eq!(
            go(&tool, &["-X", ms, "true"]).0,
            111,
            "{}",
            ctx("-X missing dir")
        );
        assert_eq!(
            go(&tool, &["-x", ms, "true"]),
            (0, String::new(), String::new()),
            "{}",
            ctx("-x missing dir")
        );
        assert_eq!(go(&tool, &[dir, "true"]).0, 111, "{}", ctx("directory"));
        // -x and a directory: daemontools exits 0 (open failed); ours refuses a lock
        // file that is not a regular file even under -x (see the page's Notes).
        let want = if name == "ours" { 111 } else { 0 };
        assert_eq!(
            go(&tool, &["-x", dir, "true"]).0,
            want,
            "{}",
            ctx("-x directory")
        );
        // prog not found: 111 even with -x (only open and lock failures are excused).
        assert_eq!(go(&tool, &[fs, "/no/such/prog"]).0, 111, "{}", ctx("exec"));
        assert_eq!(
            go(&tool, &["-x", fs, "/no/such/prog"]).0,
            111,
            "{}",
            ctx("-x exec")
        );

        // Held, by either implementation: both see the same flock(2).
        for (hname, htool) in [("ours", ours()), ("daemontools", djb.clone())] {
            let ctx = |what: &str| format!("{name} against a lock held by {hname}: {what}");
            let h = holder(&htool, &[], &f);
            let _ = std::fs::remove_file(&marker);
            assert_eq!(
                go(&tool, &["-n", fs, "sh", "-c", &mark]).0,
                111,
                "{}",
                ctx("-n")
            );
            assert_eq!(
                go(&tool, &["-nX", fs, "sh", "-c", &mark]).0,
                111,
                "{}",
                ctx("-nX")
            );
            assert_eq!(
                go(&tool, &["-Nn", fs, "sh", "-c", &mark]).0,
                111,
                "{}",
                ctx("-Nn: last wins")
            );
            let (code, out, err) = go(&tool, &["-nx", fs, "sh", "-c", &mark]);
            assert_eq!(
                (code, out.as_str(), err.as_str()),
                (0, "", ""),
                "{}",
                ctx("-nx")
            );
            assert!(!marker.exists(), "{}", ctx("prog ran without the lock"));
            // -N (default) and -nN (last wins) wait, then run prog once the holder is gone.
            let waiters: Vec<Proc> = [&["-N"][..], &["-nN"], &[]]
                .iter()
                .map(|opts| {
                    let mut c = sl(&tool, opts);
                    c.args([fs, "true"]).stdin(Stdio::null());
                    Proc::spawn(c)
                })
                .collect();
            let mut waiters = waiters;
            assert!(
                !wait_until(Duration::from_millis(300), || waiters
                    .iter_mut()
                    .any(|w| matches!(w.child.try_wait(), Ok(Some(_))))),
                "{}",
                ctx("-N did not wait")
            );
            drop(h);
            for mut w in waiters {
                let st = w.wait_timeout(T).expect("waiter hung after release");
                assert!(st.success(), "{}", ctx("-N after release"));
            }
        }
    }
}

#[test]
fn usage_errors_exit_100_with_one_line() {
    let d = TempDir::new("setlock-usage");
    let fs = d.join("lock");
    let fs = fs.to_str().unwrap();
    let cases: &[&[&str]] = &[
        &[],
        &[fs],
        &["-q", fs, "true"],
        &["--bogus", fs, "true"],
        &["-t", "x", fs, "true"],
        &["-t", "-1", fs, "true"],
        &["-t", "", fs, "true"],
        &["-t", "99999999999", fs, "true"],
        &["-t"],
        &["-d", "x", fs, "true"],
        &["-d", "-3", fs, "true"],
        &["-r", "-w", fs, "true"],
        &["-n", "-t", "5", fs, "true"],
        &["-t", "5", "-N", fs, "true"],
    ];
    for args in cases {
        let (code, out, err) = go(&ours(), args);
        assert_eq!(code, 100, "{args:?}: {err}");
        assert_eq!(out, "");
        one_line(&err);
        assert!(err.starts_with("setlock: usage: "), "{err}");
    }
    // prog's own options are not ours.
    let (code, out, _) = go(&ours(), &[fs, "echo", "-n", "-t", "x"]);
    assert_eq!((code, out.as_str()), (0, "-t x"));
    assert_eq!(go(&ours(), &["-h"]).0, 0);
    assert_eq!(go(&ours(), &["--version"]).0, 0);
}

#[test]
fn failures_exit_111_with_one_line() {
    let d = TempDir::new("setlock-fail");
    let dir = d.path().to_str().unwrap();
    let f = d.join("lock");
    let fs = f.to_str().unwrap();
    let check = |args: &[&str], want: &str| {
        let (code, out, err) = go(&ours(), args);
        assert_eq!(code, 111, "{args:?}: {err}");
        assert_eq!(out, "");
        one_line(&err);
        assert!(
            err.starts_with(&format!("setlock: fatal: unable to {want}")),
            "{err}"
        );
    };
    check(&[&format!("{dir}/no/such/lock"), "true"], "open");
    check(&[dir, "true"], "open"); // a directory as the lock file
    check(&["-r", dir, "true"], "open"); // O_RDONLY|O_CREAT on a directory: EISDIR too
    check(&[fs, "/no/such/prog"], "run /no/such/prog");
    check(
        &["-d", "2147483647", fs, "true"],
        "put the lock on descriptor",
    );
    // An unwritable directory: as nobody when we are root.
    let ro = d.join("ro");
    std::fs::create_dir(&ro).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let mut c = sl(&ours(), &[ro.join("lock").to_str().unwrap(), "true"]);
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::process::CommandExt;
        c.uid(65534).gid(65534);
    }
    let (code, _, err) = run(c, T);
    assert_eq!(code, 111, "{err}");
    one_line(&err);
    assert!(
        err.contains("unable to open") && err.contains("Permission denied"),
        "{err}"
    );
}

/// A FIFO, a directory, a socket or a device where the lock file should be: refused
/// at once with one line and 111, whatever -n/-N/-t/-x/-r say. Before, a FIFO
/// without a reader hung setlock in open(2) for ever, even under -n and -t.
#[test]
fn not_a_regular_file_is_refused_at_once() {
    let d = TempDir::new("setlock-kinds");
    let fifo = d.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let sock = d.join("sock");
    let _listening = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let dir = d.join("dir");
    std::fs::create_dir(&dir).unwrap();
    let marker = d.join("ran");
    let mark = format!("touch {}", marker.display());
    let kinds = [
        (fifo.to_str().unwrap(), "a FIFO"),
        (sock.to_str().unwrap(), "a socket"),
        (dir.to_str().unwrap(), "a directory"),
        ("/dev/null", "a character device"),
    ];
    let optsets: &[&[&str]] = &[
        &[],
        &["-n"],
        &["-N"],
        &["-t", "100"],
        &["-x", "-n"],
        &["-x"],
        &["-r"],
        &["-r", "-n"],
    ];
    for (file, kind) in kinds {
        for opts in optsets {
            let mut a: Vec<&str> = opts.to_vec();
            a.extend([file, "sh", "-c", &mark]);
            let (code, out, err) = run(sl(&ours(), &a), Duration::from_secs(10));
            assert_eq!(code, 111, "{a:?}: {err}");
            assert_eq!(out, "");
            one_line(&err);
            assert_eq!(
                err.trim_end(),
                format!("setlock: fatal: unable to open {file}: it is {kind}, not a regular file"),
                "{a:?}"
            );
            assert!(!marker.exists(), "{a:?}: prog ran");
        }
    }
    // A FIFO with a reader: open(2) succeeds at once, and the file is refused all the same.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .unwrap();
    let fs = fifo.to_str().unwrap();
    for opts in optsets {
        let mut a: Vec<&str> = opts.to_vec();
        a.extend([fs, "sh", "-c", &mark]);
        let (code, _, err) = run(sl(&ours(), &a), Duration::from_secs(10));
        assert_eq!(code, 111, "{a:?} with a reader: {err}");
        assert!(err.contains("it is a FIFO, not a regular file"), "{err}");
        assert!(!marker.exists(), "{a:?}: prog ran");
    }
    // Still nothing was created or changed: the FIFO is a FIFO, no file beside it.
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

/// The lock is opened with O_NONBLOCK so that a FIFO cannot hang the open, and the
/// flag is cleared again before prog gets the descriptor.
#[test]
fn prog_gets_a_blocking_lock_descriptor() {
    let d = TempDir::new("setlock-flags");
    let f = d.join("lock");
    for opts in [&["-d", "7"][..], &["-r", "-d", "7"]] {
        let mut a: Vec<&str> = opts.to_vec();
        a.extend([f.to_str().unwrap(), "cat", "/proc/self/fdinfo/7"]);
        let (code, out, err) = go(&ours(), &a);
        assert_eq!(code, 0, "{err}");
        let flags = out
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|v| u32::from_str_radix(v.trim(), 8).unwrap())
            .unwrap_or_else(|| panic!("no flags in {out}"));
        assert_eq!(
            flags & libc::O_NONBLOCK as u32,
            0,
            "{opts:?}: flags {flags:o}"
        );
        assert!(out.contains("FLOCK"), "{opts:?}: no flock on fd 7: {out}");
    }
}

/// --no-follow: a symlink where the lock file should be is refused (111, even
/// under -x), and a dangling one creates nothing at its target. Without it a
/// symlink is followed, as daemontools does.
#[test]
fn no_follow_refuses_a_symlink() {
    let d = TempDir::new("setlock-nofollow");
    let real = d.join("real");
    std::fs::write(&real, "").unwrap();
    let link = d.join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let dangling = d.join("dangling");
    let victim = d.join("victim");
    std::os::unix::fs::symlink(&victim, &dangling).unwrap();
    let marker = d.join("ran");
    let mark = format!("touch {}", marker.display());
    for file in [&link, &dangling] {
        let fs = file.to_str().unwrap();
        for opts in [
            &["--no-follow"][..],
            &["--no-follow", "-x"],
            &["--no-follow", "-n"],
            &["--no-follow", "-r"],
        ] {
            let mut a: Vec<&str> = opts.to_vec();
            a.extend([fs, "sh", "-c", &mark]);
            let (code, out, err) = go(&ours(), &a);
            assert_eq!(code, 111, "{a:?}: {err}");
            assert_eq!(out, "");
            one_line(&err);
            assert_eq!(
                err.trim_end(),
                format!("setlock: fatal: unable to open {fs}: it is a symbolic link (--no-follow), not a regular file"),
                "{a:?}"
            );
            assert!(!marker.exists(), "{a:?}: prog ran");
        }
    }
    assert!(
        !victim.exists(),
        "--no-follow created the target of a dangling symlink"
    );
    // A regular file under --no-follow is locked as usual.
    let rs = real.to_str().unwrap();
    assert_eq!(go(&ours(), &["--no-follow", rs, "sh", "-c", "exit 7"]).0, 7);
    // Without --no-follow the symlink is followed: the lock is on the real file.
    let h = holder(&ours(), &[], &link);
    assert_eq!(
        go(&ours(), &["-n", rs, "true"]).0,
        111,
        "the lock is not on the link's target"
    );
    drop(h);
    assert_eq!(
        go(&ours(), &["-n", dangling.to_str().unwrap(), "true"]).0,
        0
    );
    assert!(
        victim.is_file(),
        "without --no-follow a dangling link is followed (daemontools)"
    );
}
