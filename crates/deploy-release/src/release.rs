//! Releases as LINK names them, and the history of the ones that served and
//! were verified (one link target a line, oldest first).

use std::io;
use std::path::{Path, PathBuf};

/// A release directory: the target LINK gets, its canonical path, its id.
#[derive(Debug, Clone, PartialEq)]
pub struct Release {
    /// As written into LINK: relative to LINK's directory when the release
    /// lies under it (a state directory can move), absolute otherwise.
    pub target: PathBuf,
    /// Canonical path (what forkpool's `release=` and a worker's cwd say).
    pub dir: PathBuf,
    /// RELEASE_DIR/RELEASE's first line (or --id), if any.
    pub id: Option<String>,
}

impl Release {
    /// The release at `dir` for a LINK in `link_dir` (canonical).
    pub fn at(dir: &Path, link_dir: &Path) -> io::Result<Release> {
        let dir = std::fs::canonicalize(dir)?;
        if !dir.is_dir() {
            return Err(io::Error::from_raw_os_error(libc::ENOTDIR));
        }
        let target = match dir.strip_prefix(link_dir) {
            Ok(rel) if !rel.as_os_str().is_empty() => rel.to_path_buf(),
            _ => dir.clone(),
        };
        let id = std::fs::read_to_string(dir.join("RELEASE"))
            .ok()
            .and_then(|t| t.lines().next().map(|l| l.trim().to_string()))
            .filter(|l| !l.is_empty());
        Ok(Release { target, dir, id })
    }

    /// What LINK names now (None: no link, or it names nothing that exists).
    pub fn of_link(link: &Path, link_dir: &Path) -> Option<Release> {
        let t = std::fs::read_link(link).ok()?;
        Release::at(&link_dir.join(t), link_dir).ok()
    }

    pub fn name(&self) -> String {
        self.target.display().to_string()
    }
}

/// The history file's lines.
pub fn read_history(path: &Path) -> io::Result<Vec<String>> {
    match unixtool::statusfile::read_small(path, unixtool::statusfile::MAX_READ) {
        Ok(t) => Ok(t
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

pub fn write_history(path: &Path, lines: &[String]) -> io::Result<()> {
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    unixtool::statusfile::replace(path, &text)
}

/// The entry --rollback goes back to from `serving`: the newest entry before
/// the last one naming `serving` (all of them when none does) that names
/// another release that still exists. Returns (its index, its line).
pub fn rollback_target(
    history: &[String],
    serving: &Path,
    link_dir: &Path,
) -> Option<(usize, Release)> {
    let dir_of = |l: &String| std::fs::canonicalize(link_dir.join(l)).ok();
    let last = history
        .iter()
        .rposition(|l| dir_of(l).as_deref() == Some(serving))
        .unwrap_or(history.len());
    (0..last).rev().find_map(|i| {
        let d = dir_of(&history[i])?;
        if d == serving {
            return None;
        }
        Release::at(&d, link_dir).ok().map(|r| (i, r))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rollback_goes_to_the_newest_other_existing_entry() {
        let base = std::env::temp_dir().join(format!("release-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        for r in ["r1", "r2", "r4"] {
            std::fs::create_dir_all(base.join("releases").join(r)).unwrap();
        }
        let base = std::fs::canonicalize(&base).unwrap();
        let h: Vec<String> = ["releases/r1", "releases/r2", "releases/r3", "releases/r4"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let r4 = base.join("releases/r4");
        // from r4: r3 is gone, so r2
        let (i, r) = rollback_target(&h, &r4, &base).unwrap();
        assert_eq!((i, r.name()), (1, "releases/r2".to_string()));
        // from r2 (history cut back there): r1
        let (i, _) = rollback_target(&h[..2], &base.join("releases/r2"), &base).unwrap();
        assert_eq!(i, 0);
        // from r1: nothing earlier
        assert!(rollback_target(&h[..1], &base.join("releases/r1"), &base).is_none());
        // serving something not in the history: the newest other entry
        let (i, _) = rollback_target(&h, &base.join("releases/r9"), &base).unwrap();
        assert_eq!(i, 3);
        let _ = std::fs::remove_dir_all(&base);
    }
}
