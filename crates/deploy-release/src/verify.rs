//! The check after a reload (`-c URL`, more than once; `--verify-window`,
//! `--good`): rounds of `GET` on every URL, at most 50 ms apart, until `good`
//! consecutive rounds in which every URL answered 2xx with the release's id
//! (verified), or the first definite bad answer (a non-2xx status, another
//! id), or a window without a good round, or the deadline (not verified).
//! The rule is a pure loop over an `ask` function and a clock, so the unit
//! tests drive it without a network.

use std::time::{Duration, Instant};

use unixtool::httpget::{Answer, Url};

/// How far apart rounds are at most.
pub const ROUND: Duration = Duration::from_millis(50);

/// How long one try may take at most (connect, request, answer).
pub const TRY: Duration = Duration::from_secs(2);

/// What the rounds want.
pub struct Rule<'a> {
    pub urls: &'a [Url],
    /// The new release's id (None: any 2xx answer is good).
    pub want: Option<&'a str>,
    /// An id that counts as "not yet" rather than bad: the release that served
    /// before, when nothing is parked (forkpool's rolling mode lets the last
    /// old worker take a connection in the moment after `reload=ok`).
    pub not_yet: Option<&'a str>,
    /// A good round must come within this much of the start and of the last
    /// good round.
    pub window: Duration,
    /// Consecutive good rounds wanted.
    pub good: u32,
    /// The deploy's own deadline (-t).
    pub deadline: Instant,
}

/// Why the release is not verified.
#[derive(Debug, Clone, PartialEq)]
pub enum Bad {
    /// A definite bad answer: the reason (`GET URL answered 500`).
    Answered(String),
    /// No good round within the window (or before the deadline).
    Silent(String),
    /// `stop()` said stop (INT, TERM or HUP came).
    Interrupted,
}

impl Bad {
    pub fn reason(&self) -> String {
        match self {
            Bad::Answered(r) | Bad::Silent(r) => r.clone(),
            Bad::Interrupted => "interrupted".to_string(),
        }
    }
}

/// How a URL answered in one try.
enum Try {
    Good,
    NotYet(String),
    Bad(String),
}

fn judge(rule: &Rule, url: &Url, a: Option<Answer>) -> Try {
    let Some(a) = a else {
        return Try::NotYet("nothing".to_string());
    };
    let shown = format!("{} {}", a.status, a.release);
    if !(200..300).contains(&a.status) {
        return Try::Bad(format!("GET {url} answered {}", a.status));
    }
    match rule.want {
        Some(w) if w != a.release => {
            if rule.not_yet == Some(a.release.as_str()) {
                Try::NotYet(shown)
            } else {
                Try::Bad(format!("GET {url} answered {shown}, not {w}"))
            }
        }
        _ => Try::Good,
    }
}

/// Run the rounds. `ask(url, until)` tries once, by `until`; `stop()` is asked
/// before every try and between rounds; `now()` and `sleep()` are the clock.
/// Ok: the rounds it took.
pub fn rounds(
    rule: &Rule,
    ask: &mut dyn FnMut(&Url, Instant) -> Option<Answer>,
    stop: &mut dyn FnMut() -> bool,
    now: &mut dyn FnMut() -> Instant,
    sleep: &mut dyn FnMut(Duration),
) -> Result<u32, Bad> {
    let start = now();
    let mut last_good = start;
    let mut consecutive = 0;
    let mut count = 0;
    // the last "not yet" of a try that had time to answer
    let mut why = String::from("no try");
    loop {
        let round_start = now();
        let window_end = (last_good + rule.window).min(rule.deadline);
        let mut all_good = true;
        for url in rule.urls {
            if stop() {
                return Err(Bad::Interrupted);
            }
            let until = (now() + TRY).min(window_end);
            if until <= now() {
                all_good = false;
                break;
            }
            match judge(rule, url, ask(url, until)) {
                Try::Good => {}
                Try::Bad(r) => return Err(Bad::Answered(r)),
                Try::NotYet(shown) => {
                    all_good = false;
                    why = format!("GET {url} answered {shown}");
                    break;
                }
            }
        }
        count += 1;
        let t = now();
        if all_good {
            consecutive += 1;
            last_good = t;
            if consecutive >= rule.good {
                return Ok(count);
            }
        } else {
            consecutive = 0;
            if t >= window_end {
                let ms = rule.window.as_millis();
                let within = if t >= rule.deadline {
                    "before the deadline (-t)".to_string()
                } else {
                    format!("within {ms} ms (--verify-window)")
                };
                return Err(Bad::Silent(format!("no good round {within}: {why}")));
            }
        }
        if stop() {
            return Err(Bad::Interrupted);
        }
        sleep(ROUND.saturating_sub(t.saturating_duration_since(round_start)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn url(p: &str) -> Url {
        Url::parse(&format!("http://127.0.0.1:1{p}")).unwrap()
    }

    fn answer(status: u16, release: &str) -> Option<Answer> {
        Some(Answer {
            status,
            release: release.to_string(),
        })
    }

    /// Runs the rule on a simulated clock: each try takes `cost`; `script`
    /// gives the answer of the n-th try (by its index and the time).
    fn sim(
        urls: &[Url],
        window_ms: u64,
        good: u32,
        not_yet: Option<&str>,
        cost: Duration,
        mut script: impl FnMut(usize, Duration) -> Option<Answer>,
    ) -> (Result<u32, Bad>, usize, Duration) {
        let t0 = Instant::now();
        let clock = Cell::new(t0);
        let tries = Cell::new(0);
        let rule = Rule {
            urls,
            want: Some("r2"),
            not_yet,
            window: Duration::from_millis(window_ms),
            good,
            deadline: t0 + Duration::from_secs(60),
        };
        let r = rounds(
            &rule,
            &mut |_, until| {
                let n = tries.get();
                tries.set(n + 1);
                let at = clock.get() + cost;
                if at > until {
                    clock.set(until);
                    return None;
                }
                clock.set(at);
                script(n, at - t0)
            },
            &mut || false,
            &mut || clock.get(),
            &mut |d| clock.set(clock.get() + d),
        );
        (r, tries.get(), clock.get() - t0)
    }

    #[test]
    fn good_rounds_of_every_url_verify() {
        let urls = [url("/release"), url("/health")];
        let (r, tries, _) = sim(&urls, 1000, 3, None, Duration::from_millis(1), |_, _| {
            answer(200, "r2")
        });
        assert_eq!(r, Ok(3));
        assert_eq!(tries, 6);
    }

    #[test]
    fn the_first_bad_answer_ends_the_check() {
        let urls = [url("/release"), url("/health")];
        // the second URL answers 500 on the first round
        let (r, tries, at) = sim(&urls, 1000, 3, None, Duration::from_millis(2), |n, _| {
            if n == 1 {
                answer(500, "r2")
            } else {
                answer(200, "r2")
            }
        });
        assert_eq!(
            r,
            Err(Bad::Answered(
                "GET http://127.0.0.1:1/health answered 500".into()
            ))
        );
        assert_eq!(tries, 2);
        assert!(at < Duration::from_millis(10), "{at:?}");
        // another id, after two good rounds
        let (r, _, _) = sim(&urls, 1000, 3, None, Duration::from_millis(1), |n, _| {
            answer(200, if n == 4 { "r1" } else { "r2" })
        });
        assert!(
            matches!(&r, Err(Bad::Answered(w)) if w.ends_with("answered 200 r1, not r2")),
            "{r:?}"
        );
    }

    #[test]
    fn silence_for_the_window_is_not_verified() {
        let urls = [url("/release")];
        let (r, _, at) = sim(&urls, 1000, 3, None, Duration::from_millis(1), |_, _| None);
        assert!(
            matches!(&r, Err(Bad::Silent(w)) if w.contains("within 1000 ms")),
            "{r:?}"
        );
        assert!(at >= Duration::from_millis(1000) && at < Duration::from_millis(1100));
        // a try that hangs is cut at the window's end
        let (r, tries, at) = sim(&urls, 300, 3, None, Duration::from_secs(5), |_, _| {
            answer(200, "r2")
        });
        assert!(matches!(r, Err(Bad::Silent(_))), "{r:?}");
        assert_eq!((tries, at), (1, Duration::from_millis(300)));
    }

    #[test]
    fn a_late_start_within_the_window_verifies_and_silence_resets_the_count() {
        let urls = [url("/release")];
        // nothing for 400 ms, then good
        let (r, _, _) = sim(&urls, 1000, 3, None, Duration::from_millis(1), |_, t| {
            (t > Duration::from_millis(400))
                .then(|| answer(200, "r2"))
                .flatten()
        });
        assert!(r.is_ok(), "{r:?}");
        // good, silent, good, good: the silent round breaks the run
        let (r, tries, _) = sim(&urls, 1000, 3, None, Duration::from_millis(1), |n, _| {
            (n != 1).then(|| answer(200, "r2")).flatten()
        });
        assert_eq!((r, tries), (Ok(5), 5));
    }

    #[test]
    fn the_old_release_is_not_yet_only_when_nothing_is_parked() {
        let urls = [url("/release")];
        let script = |n: usize, _| answer(200, if n < 2 { "r1" } else { "r2" });
        let (r, _, _) = sim(&urls, 1000, 3, Some("r1"), Duration::from_millis(1), script);
        assert!(r.is_ok(), "{r:?}");
        let (r, _, _) = sim(&urls, 1000, 3, None, Duration::from_millis(1), script);
        assert!(matches!(r, Err(Bad::Answered(_))), "{r:?}");
    }

    #[test]
    fn rounds_are_at_most_50_ms_apart() {
        let urls = [url("/release")];
        let (r, _, at) = sim(&urls, 1000, 5, None, Duration::from_millis(1), |_, _| {
            answer(200, "r2")
        });
        assert_eq!(r, Ok(5));
        // four gaps of 50 ms and the last try
        assert!(at <= Duration::from_millis(4 * 50 + 1), "{at:?}");
    }
}
