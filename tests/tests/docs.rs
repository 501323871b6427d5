//! The documentation stays true to the binaries: every tool answers --help and
//! --version, every option its --help names is on its page, the page has the
//! sections every page has, the man page generated from the page carries the
//! options, and scripts/install puts binaries and man pages in a prefix (and
//! --uninstall takes them away); a binary copied alone runs with an empty
//! environment and needs nothing but the C library.

use std::process::Command;
use std::time::Duration;

use integration_tests::{bin, repo, run, TempDir};

const TOOLS: &[(&str, &str)] = &[
    ("setlock", "crates/setlock/README.md"),
    ("atomic-symlink", "crates/atomic-symlink/README.md"),
    ("tcplisten", "crates/tcplisten/README.md"),
    ("loop-forever", "crates/loop-forever/README.md"),
    ("forkpool", "crates/forkpool/README.md"),
    ("uptime-probe", "crates/uptime-probe/README.md"),
    ("poolctl", "crates/poolctl/README.md"),
    ("deploy-release", "crates/deploy-release/README.md"),
    ("pool-health", "crates/pool-health/README.md"),
    ("app", "demo/app/README.md"),
];

/// How long a tool may take to print its help or page: a hang detector, not a
/// speed (`setlock -V` missed 10 s at load 60 on a shared machine; issue 25).
const RUN: Duration = Duration::from_secs(60);

/// Run `tool arg`: (exit code, stdout, stderr).
fn run_tool(tool: &str, arg: &str) -> (i32, String, String) {
    let mut c = Command::new(bin(tool));
    c.arg(arg);
    run(c, RUN)
}

/// The options a --help text names: `-x` and `--long` at the start of its lines.
fn options_in_help(help: &str) -> Vec<String> {
    let mut opts = Vec::new();
    for line in help.lines() {
        let l = line.trim_start();
        if !l.starts_with('-') {
            continue;
        }
        for word in l
            .split([' ', ','])
            .take_while(|w| w.starts_with('-') || w.is_empty())
        {
            if word.len() >= 2 {
                opts.push(word.to_string());
            }
        }
    }
    opts
}

#[test]
fn help_version_and_page_agree() {
    for (tool, page) in TOOLS {
        let (code, help, err) = run_tool(tool, "--help");
        assert_eq!(code, 0, "{tool} --help: {err}");
        assert!(
            help.starts_with(&format!("usage: {tool}")),
            "{tool} --help starts with its synopsis:\n{help}"
        );
        let (code, version, _) = run_tool(tool, "-V");
        assert_eq!(code, 0);
        assert!(
            version.starts_with(&format!("{tool} ")),
            "{tool} -V: {version}"
        );

        let text =
            std::fs::read_to_string(repo().join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        let opts = options_in_help(&help);
        assert!(opts.len() >= 2, "{tool}: no options found in --help");
        for opt in &opts {
            assert!(
                text.contains(opt.as_str()),
                "{tool}: option {opt} of --help is not on {page}"
            );
        }
        let lower = text.to_lowercase();
        for section in [
            "## interface",
            "## options",
            "## exit codes",
            "## environment",
            "## signals",
            "## notes",
        ] {
            assert!(lower.contains(section), "{page} has no '{section}' section");
        }
    }
}

#[test]
fn man_pages_are_generated_from_the_pages() {
    for (tool, page) in TOOLS {
        let mut c = Command::new(repo().join("scripts/mkman"));
        c.arg(repo().join(page)).arg(tool);
        let (code, roff, err) = run(c, RUN);
        assert_eq!(code, 0, "mkman {page}: {err}");
        assert!(
            roff.starts_with(&format!(".TH {}", tool.to_uppercase())),
            "{tool}: {roff:.80}"
        );
        assert!(
            roff.contains(".SH NAME")
                && roff.contains(".SH OPTIONS")
                && roff.contains(".SH EXIT CODES")
        );
        let (_, help, _) = run_tool(tool, "--help");
        for opt in options_in_help(&help)
            .iter()
            .filter(|o| o.starts_with("--"))
        {
            let escaped = opt.replace('-', "\\-");
            assert!(roff.contains(&escaped), "{tool}: man page lacks {opt}");
        }
    }
}

#[test]
fn install_and_uninstall_into_a_prefix() {
    let prefix = TempDir::new("install");
    let bindir = bin("setlock").parent().expect("bin dir").to_path_buf();
    let mut c = Command::new(repo().join("scripts/install"));
    c.arg(prefix.path()).env("BIN", &bindir);
    let (code, _, err) = run(c, Duration::from_secs(60));
    assert_eq!(code, 0, "install: {err}");
    for tool in [
        "setlock",
        "atomic-symlink",
        "tcplisten",
        "loop-forever",
        "forkpool",
        "uptime-probe",
    ] {
        let b = prefix.join("bin").join(tool);
        assert!(b.is_file(), "{} not installed", b.display());
        assert!(
            prefix.join(format!("share/man/man1/{tool}.1")).is_file(),
            "{tool}.1 not installed"
        );
        // a binary alone, with an empty environment, runs
        let mut c = Command::new(&b);
        c.arg("--version").env_clear();
        let (code, out, err) = run(c, RUN);
        assert_eq!(code, 0, "{tool} --version with no environment: {err}");
        assert!(out.starts_with(tool));
        // it needs nothing but the C library (and the C runtime's own helpers)
        if integration_tests::have("readelf") {
            let mut c = Command::new("readelf");
            c.arg("-d").arg(&b);
            let (_, dynamic, _) = run(c, RUN);
            for line in dynamic.lines().filter(|l| l.contains("(NEEDED)")) {
                let ok = ["libc.so", "libgcc_s.so", "libm.so", "ld-linux"]
                    .iter()
                    .any(|l| line.contains(l));
                assert!(ok, "{tool} needs more than libc: {line}");
            }
        }
    }
    let mut c = Command::new(repo().join("scripts/install"));
    c.arg("--uninstall").arg(prefix.path());
    let (code, _, err) = run(c, Duration::from_secs(30));
    assert_eq!(code, 0, "uninstall: {err}");
    for tool in ["setlock", "forkpool"] {
        assert!(
            !prefix.join("bin").join(tool).exists(),
            "{tool} still installed after --uninstall"
        );
        assert!(!prefix.join(format!("share/man/man1/{tool}.1")).exists());
    }
}

/// The conventions live in the repository: docs/conventions.md has the sections a
/// newcomer looks for, the pages that send readers there find it, and nothing in
/// the repository points at the design notes that lived outside it.
#[test]
fn conventions_page_is_in_the_repository_and_referenced() {
    let page =
        std::fs::read_to_string(repo().join("docs/conventions.md")).expect("docs/conventions.md");
    let lower = page.to_lowercase();
    for section in [
        "## the chain",
        "## exit codes",
        "## messages",
        "## signals",
        "## readiness",
        "## environment",
        "## a tool's page",
        "## tests",
    ] {
        assert!(
            lower.contains(section),
            "docs/conventions.md has no '{section}'"
        );
    }
    for doc in ["README.md", "DEVELOPERS.md"] {
        let text = std::fs::read_to_string(repo().join(doc)).expect(doc);
        assert!(
            text.contains("(docs/conventions.md)"),
            "{doc} does not link docs/conventions.md"
        );
    }
    let mut stale = Vec::new();
    let mut dirs = vec![repo()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir").flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if ![".git", "target", ".venv", "state"].contains(&name.to_str().unwrap_or("")) {
                    dirs.push(path);
                }
            } else if kind.is_file() {
                let Ok(text) = std::fs::read_to_string(&path) else {
                    continue; // not text
                };
                for (n, line) in text.lines().enumerate() {
                    if line.contains(&["design", ".md"].concat()) {
                        stale.push(format!("{}:{}", path.display(), n + 1));
                    }
                }
            }
        }
    }
    assert!(
        stale.is_empty(),
        "references to the design notes outside the repository (point them at docs/conventions.md): {stale:#?}"
    );
}

/// `demo/serve --help` prints the script's whole leading comment block (without
/// the `#`), however long it is, and none of its code: a line added to the comment
/// shows up, where a hard-coded line range (`sed -n 2,19p`) would cut it off.
#[test]
fn demo_serve_help_is_its_leading_comment() {
    let serve = std::fs::read_to_string(repo().join("demo/serve")).expect("demo/serve");
    let comment: Vec<&str> = serve
        .lines()
        .skip(1) // #!/bin/sh
        .take_while(|l| l.starts_with('#'))
        .collect();
    assert!(comment.len() > 5, "demo/serve has no leading comment");
    // A copy with two more comment lines, beside the real lib.sh it sources.
    let d = TempDir::new("serve-help");
    std::fs::create_dir(d.join("demo")).unwrap();
    std::os::unix::fs::symlink(repo().join("demo/lib.sh"), d.join("demo/lib.sh")).unwrap();
    let mut longer: Vec<String> = serve.lines().map(str::to_string).collect();
    longer.insert(3, "# An added line of help.".to_string());
    longer.insert(4, "#".to_string());
    let copy = d.join("demo/serve");
    std::fs::write(&copy, longer.join("\n") + "\n").unwrap();
    for (script, extra) in [(repo().join("demo/serve"), false), (copy, true)] {
        for arg in ["--help", "-h"] {
            let mut c = Command::new("sh");
            c.arg(&script).arg(arg);
            let (code, out, err) = run(c, RUN);
            assert_eq!(code, 0, "{} {arg}: {err}", script.display());
            let lines: Vec<&str> = out.lines().collect();
            let last = comment.last().unwrap().trim_start_matches('#').trim_start();
            assert_eq!(
                lines.first().copied(),
                Some(comment[0].trim_start_matches("# "))
            );
            assert_eq!(
                lines.last().copied(),
                Some(last),
                "{arg}: the help is cut off"
            );
            assert_eq!(lines.len(), comment.len() + 2 * extra as usize, "{out}");
            assert_eq!(out.contains("An added line of help."), extra, "{out}");
            assert!(
                !lines.iter().any(|l| l.starts_with('#')) && !out.contains("set -eu"),
                "{out}"
            );
        }
    }
}

/// --help and --version into a pipe nobody reads (the reader gone, as after
/// `| head -0`): one fatal line and 111, never a panic (found: setlock --help
/// panicked with "failed printing to stdout").
#[test]
fn help_and_version_into_a_closed_pipe_fail_in_one_line() {
    use std::process::Stdio;
    for (tool, _) in TOOLS {
        for arg in ["--help", "--version"] {
            let (read, write) = nix::unistd::pipe().unwrap();
            drop(read);
            let out = Command::new(bin(tool))
                .arg(arg)
                .stdout(Stdio::from(write))
                .stderr(Stdio::piped())
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(111), "{tool} {arg}: {err}");
            assert_eq!(err.lines().count(), 1, "{tool} {arg}: {err}");
            assert!(
                err.starts_with(&format!(
                    "{tool}: fatal: unable to write to standard output"
                )),
                "{tool} {arg}: {err}"
            );
        }
    }
}
