//! The deploy log (issue 29): one JSON line per deploy in `deploys.jsonl`
//! beside `history`, appended when the deploy ends, whatever its verdict:
//! when it started, what served before and after, each step's time, the
//! verdict and why. Written with O_APPEND and one write(2) per line, so lines
//! of deploys never interleave; a line is at most [`MAX_LINE`] bytes; at
//! [`ROTATE_AT`] bytes the file becomes `deploys.jsonl.1` (the one before is
//! dropped). A log that cannot be written is a warning, never a verdict.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use unixtool::json::string as jstr;

/// The file's name, beside `history`.
pub const FILE: &str = "deploys.jsonl";
/// Longest line written (names and reasons are cut to fit).
pub const MAX_LINE: usize = 4096;
/// Size at which the log is rotated before a line is appended.
pub const ROTATE_AT: u64 = 1 << 20;
/// Longest release name (escaped, quoted) kept in a line; a reason: twice.
const MAX_NAME: usize = 500;

/// One deploy as it goes.
pub struct Entry {
    started: Instant,
    start_unix: f64,
    /// `deploy` or `rollback` (-r).
    pub kind: &'static str,
    pub before: Option<String>,
    pub target: Option<String>,
    /// The id the check wants of the target.
    pub target_id: Option<String>,
    /// `rollback-` while the rollback runs: its steps are named so.
    pub prefix: &'static str,
    /// A switch of LINK to the target happened (then exit 1 is a rollback).
    pub switched: bool,
    steps: Vec<(String, f64, bool)>,
    /// The last reload said yes (so a check follows).
    pub reload_ok: bool,
    last: Instant,
    reasons: Vec<String>,
}

impl Entry {
    /// A deploy that started at `started` (the process's start).
    pub fn new(started: Instant, kind: &'static str) -> Entry {
        let ago = started.elapsed().as_secs_f64();
        let start_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() - ago)
            .unwrap_or(0.0);
        Entry {
            started,
            start_unix,
            kind,
            before: None,
            target: None,
            target_id: None,
            prefix: "",
            switched: false,
            steps: Vec::new(),
            reload_ok: false,
            last: started,
            reasons: Vec::new(),
        }
    }

    /// The step `name` ended now, well or not: its time is from the end of
    /// the one before.
    pub fn step(&mut self, name: &str, ok: bool) {
        let now = Instant::now();
        self.steps.push((
            format!("{}{name}", self.prefix),
            now.saturating_duration_since(self.last).as_secs_f64(),
            ok,
        ));
        self.last = now;
    }

    /// Why it went as it did (kept in order; the line joins them with `; `).
    pub fn reason(&mut self, why: impl std::fmt::Display) {
        self.reasons.push(why.to_string());
    }

    /// The line for exit `code`: `after` is what serves verified at the end
    /// (None: nothing verified), `link` what LINK names.
    pub fn line(&self, code: i32, after: Option<&str>, link: Option<&str>) -> String {
        let verdict = match code {
            0 => "ok",
            1 if self.switched => "rolled-back",
            1 => "nothing-changed",
            2 => "rollback-failed",
            3 => "not-running",
            _ => "error",
        };
        let text = |s: Option<&str>| s.map_or("null".to_string(), |s| quoted(s, MAX_NAME));
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(n, s, ok)| format!("{{\"step\":{},\"s\":{s:.6},\"ok\":{ok}}}", jstr(n)))
            .collect();
        let head = format!(
            "{{\"start\":{:.6},\"pid\":{},\"kind\":\"{}\",\"before\":{},\"target\":{},\"target_id\":{},\"after\":{},\"link\":{},\"verdict\":\"{verdict}\",\"exit\":{code},\"seconds\":{:.6},\"reason\":",
            self.start_unix,
            std::process::id(),
            self.kind,
            text(self.before.as_deref()),
            text(self.target.as_deref()),
            text(self.target_id.as_deref()),
            text(after),
            text(link),
            self.started.elapsed().as_secs_f64(),
        );
        let reason = quoted(&self.reasons.join("; "), 2 * MAX_NAME);
        let tail = format!(",\"steps\":[{}]}}\n", steps.join(","));
        if head.len() + reason.len() + tail.len() <= MAX_LINE {
            return format!("{head}{reason}{tail}");
        }
        // too many steps to tell (they are few: never in practice)
        format!("{head}{reason},\"steps\":[]}}\n")
    }
}

/// `s` as a JSON string of at most `max` bytes: the longest start of `s`
/// that fits, cut between characters.
fn quoted(s: &str, max: usize) -> String {
    let whole = jstr(s);
    if whole.len() <= max {
        return whole;
    }
    let mut len = 2;
    let mut end = 0;
    for (i, c) in s.char_indices() {
        len += jstr(c.encode_utf8(&mut [0; 4])).len() - 2;
        if len > max {
            break;
        }
        end = i + c.len_utf8();
    }
    jstr(&s[..end])
}

/// Append `line` to `dir/deploys.jsonl` (rotated first when it is large):
/// O_APPEND|O_CREAT|O_NOFOLLOW|O_CLOEXEC, 0644, one write.
pub fn append(dir: &Path, line: &str) -> std::io::Result<()> {
    let path = dir.join(FILE);
    if std::fs::symlink_metadata(&path).is_ok_and(|m| m.len() >= ROTATE_AT) {
        // under deploy.lock: no other deploy appends meanwhile
        std::fs::rename(&path, dir.join(format!("{FILE}.1")))?;
    }
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)?;
    let n = f.write(line.as_bytes())?;
    if n != line.len() {
        // a full disk: a cut line is no line (readers skip what is not JSON)
        return Err(std::io::Error::from_raw_os_error(libc::ENOSPC));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_bounded_json_object() {
        let mut e = Entry::new(Instant::now(), "deploy");
        e.before = Some("releases/r1".into());
        e.target = Some("releases/\"r2\"\n".into());
        e.step("lock", true);
        e.switched = true;
        e.reason("x".repeat(5000));
        let l = e.line(1, Some("releases/r1"), None);
        assert!(l.ends_with("}\n") && l.len() <= MAX_LINE, "{l}");
        assert_eq!(l.matches('\n').count(), 1);
        assert!(
            l.contains("\"target\":\"releases/\\\"r2\\\"\\u000a\""),
            "{l}"
        );
        assert!(l.contains("\"verdict\":\"rolled-back\",\"exit\":1"), "{l}");
        assert!(l.contains("\"link\":null"), "{l}");
        assert!(l.contains("\"steps\":[{\"step\":\"lock\",\"s\":"), "{l}");
        assert_eq!(quoted(&"é".repeat(600), 12), "\"ééééé\"");
        assert_eq!(quoted(&"\n".repeat(600), 14), "\"\\u000a\\u000a\"");
        // the longest names and reasons still fit
        e.before = Some("\u{1}".repeat(5000));
        e.target = e.before.clone();
        let b = e.before.clone();
        let l = e.line(2, b.as_deref(), b.as_deref());
        assert!(l.len() <= MAX_LINE && l.ends_with("}\n"), "{}", l.len());
    }
}
