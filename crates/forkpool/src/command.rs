//! The control FIFO's lines (`-C`): a line in, a [`Command`] out, and the
//! wall clock a `commit UNIX_TIME` is read against. Pure functions at the
//! bottom of forkpool's layers; the FIFO itself is control.rs, what each
//! command does is the rule's (policy/prepare.rs).
//!
//! - `prepare`: resolve the pin, start a new generation, hold it ready;
//! - `commit [UNIX_TIME]`: switch to the prepared generation as a cutover
//!   does, now or at that wall-clock instant;
//! - `abort`: stop the prepared generation; nothing changes;
//! - `confirm`, `revert` (`--confirm-timeout`): retire the parked generation,
//!   or bring it back at once and stop the new one (policy/verify.rs).

use std::time::{Duration, Instant};

/// One control command.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    Prepare,
    /// `at`: the wall-clock instant (seconds since the epoch) to switch at.
    Commit {
        at: Option<f64>,
    },
    Abort,
    Confirm,
    Revert,
}

/// One line of the FIFO (without its newline): a command, nothing (a blank
/// line), or why it is not one.
pub fn parse(line: &str) -> Result<Option<Command>, String> {
    let words: Vec<&str> = line.split_ascii_whitespace().collect();
    match words[..] {
        [] => Ok(None),
        ["prepare"] => Ok(Some(Command::Prepare)),
        ["abort"] => Ok(Some(Command::Abort)),
        ["confirm"] => Ok(Some(Command::Confirm)),
        ["revert"] => Ok(Some(Command::Revert)),
        ["commit"] => Ok(Some(Command::Commit { at: None })),
        ["commit", t] => match unix_time(t) {
            Some(at) => Ok(Some(Command::Commit { at: Some(at) })),
            None => Err(format!(
                "commit wants a time in seconds since the epoch such as 1764245000.250, not {t:?}"
            )),
        },
        [w @ ("prepare" | "abort" | "confirm" | "revert"), ..] => {
            Err(format!("{w} takes no argument: {line:?}"))
        }
        ["commit", ..] => Err(format!("commit takes at most one argument: {line:?}")),
        _ => Err(format!(
            "unknown control command {:?} (prepare, commit [UNIX_TIME], abort, confirm, revert)",
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
pub use unixtool::wall_now;

/// The monotonic instant at which the wall clock reads `at`, given that it
/// reads `wall` at `now` (a time already past: `now`).
pub fn instant_of(at: f64, now: Instant, wall: f64) -> Instant {
    if at <= wall {
        return now;
    }
    now + Duration::try_from_secs_f64(at - wall).unwrap_or(Duration::MAX / 4)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(parse("confirm"), Ok(Some(Command::Confirm)));
        assert_eq!(parse(" revert"), Ok(Some(Command::Revert)));
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
            "confirm 2",
            "revert now",
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
}
