//! The results: a table for a person, or one JSON object for a script.

use std::fmt::Write;
use std::time::Duration;
use unixtool::json::string as jstr;

use crate::client::Usr1;
use crate::stats::Second;
use crate::Run;

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn rate(run: &Run) -> f64 {
    let secs = run.elapsed.as_secs_f64();
    if secs > 0.0 {
        run.stats.requests() as f64 / secs
    } else {
        0.0
    }
}

/// The worst second: most failures, then the highest max latency.
fn worst_second(run: &Run) -> Option<(usize, Second)> {
    run.stats
        .seconds
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, s)| s.requests > 0)
        .max_by_key(|(i, s)| (s.failed, s.max_us, std::cmp::Reverse(*i)))
}

/// The whole second (not the last, partial one) with the fewest requests.
fn fewest_second(run: &Run) -> Option<(usize, Second)> {
    let whole = run.elapsed.as_secs() as usize;
    run.stats
        .seconds
        .iter()
        .copied()
        .enumerate()
        .take(whole)
        .min_by_key(|(i, s)| (s.requests, *i))
}

fn release_counts(run: &Run) -> Vec<(String, u64, f64)> {
    run.releases
        .iter()
        .map(|(r, at)| {
            (
                String::from_utf8_lossy(r).into_owned(),
                run.stats.releases.get(r).copied().unwrap_or(0),
                at.as_secs_f64(),
            )
        })
        .collect()
}

pub fn table(run: &Run) -> String {
    let s = &run.stats;
    let mut t = String::new();
    let mut line = |k: &str, v: String| {
        let _ = writeln!(t, "{k:<13}{v}");
    };
    line("url", run.url.clone());
    line(
        "run",
        format!(
            "{:.2} s, {} client{}, {}",
            run.elapsed.as_secs_f64(),
            run.concurrency,
            if run.concurrency == 1 { "" } else { "s" },
            if run.keepalive {
                "keep-alive"
            } else {
                "a connection per request"
            }
        ),
    );
    line("requests", format!("{} ({:.0}/s)", s.requests(), rate(run)));
    line("ok", s.ok.to_string());
    line(
        "failed",
        format!(
            "{} (refused {}, reset {}, timeout {}, too large {}, eof {}, bad status {}, error {})",
            s.failed(),
            s.refused,
            s.reset,
            s.timeout,
            s.too_large,
            s.eof,
            s.bad_status,
            s.error
        ),
    );
    line(
        "retried",
        format!(
            "{} (failed before any response byte on a reused connection, then retried once)",
            s.retried
        ),
    );
    line(
        "mixed",
        format!(
            "{} (X-Release differs from the content's data-release)",
            s.mixed
        ),
    );
    let rels = release_counts(run);
    let list: Vec<String> = rels
        .iter()
        .map(|(r, n, at)| format!("{r} ({n}, first at {at:.3} s)"))
        .collect();
    let untracked = match s.untracked {
        0 => String::new(),
        n => format!(
            "; {n} more responses from releases past the first {}, not tracked",
            crate::client::MAX_RELEASES
        ),
    };
    line(
        "releases",
        if list.is_empty() {
            format!("0{untracked}")
        } else {
            format!("{}: {}{untracked}", list.len(), list.join(", "))
        },
    );
    if s.no_code_release > 0 || s.no_content_release > 0 {
        line(
            "unversioned",
            format!(
                "{} without X-Release, {} without data-release",
                s.no_code_release, s.no_content_release
            ),
        );
    }
    line(
        "flapping",
        format!(
            "{} (an older release after a newer one, same client)",
            s.flapping
        ),
    );
    let h = &s.latency;
    line(
        "latency",
        format!(
            "p50 {}, p99 {}, p99.9 {}, max {}",
            ms(h.quantile(0.50)),
            ms(h.quantile(0.99)),
            ms(h.quantile(0.999)),
            ms(h.max_us)
        ),
    );
    if run.usr1.count > 0 {
        let parts = s.parts();
        for (name, h) in [("unmarked", &parts.unmarked), ("marked", &parts.marked)] {
            line(
                name,
                format!(
                    "{} answered, p50 {}, p99 {}, max {}",
                    h.n,
                    ms(h.quantile(0.50)),
                    ms(h.quantile(0.99)),
                    ms(h.max_us)
                ),
            );
        }
        line("USR1 at", usr1_line(&run.usr1));
    }
    if let Some((i, w)) = worst_second(run) {
        line(
            "worst second",
            format!(
                "{i}-{} s: {} requests, {} failed, max {}",
                i + 1,
                w.requests,
                w.failed,
                ms(w.max_us)
            ),
        );
    }
    if let Some((i, f)) = fewest_second(run) {
        line(
            "fewest/s",
            format!("{} requests in {i}-{} s", f.requests, i + 1),
        );
    }
    match run.failure() {
        None => line("verdict", "OK: nothing failed, nothing mixed".to_string()),
        Some(why) => line("verdict", format!("FAILED: {why}")),
    }
    t
}

fn jms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

pub fn json(run: &Run) -> String {
    let s = &run.stats;
    let h = &s.latency;
    let rels: Vec<String> = release_counts(run)
        .iter()
        .map(|(r, n, at)| {
            format!(
                "{{\"id\":{},\"responses\":{n},\"first_seen_s\":{at:.3}}}",
                jstr(r)
            )
        })
        .collect();
    let worst = match worst_second(run) {
        Some((i, w)) => {
            format!(
                "{{\"at_s\":{i},\"requests\":{},\"failed\":{},\"max_ms\":{}}}",
                w.requests,
                w.failed,
                jms(w.max_us)
            )
        }
        None => "null".to_string(),
    };
    let fewest = match fewest_second(run) {
        Some((i, f)) => format!("{{\"at_s\":{i},\"requests\":{}}}", f.requests),
        None => "null".to_string(),
    };
    let parts = if run.usr1.count == 0 {
        "null".to_string()
    } else {
        let parts = s.parts();
        let part = |h: &crate::stats::Histogram| {
            format!(
                "{{\"answered\":{},\"p50\":{},\"p99\":{},\"max\":{}}}",
                h.n,
                jms(h.quantile(0.50)),
                jms(h.quantile(0.99)),
                jms(h.max_us)
            )
        };
        format!(
            "{{\"usr1\":{},\"usr1_at_s\":[{}],\"unmarked\":{},\"marked\":{}}}",
            run.usr1.count,
            seconds(&run.usr1.at, ","),
            part(&parts.unmarked),
            part(&parts.marked)
        )
    };
    let failure = run.failure();
    format!(
        concat!(
            "{{\"url\":{},\"elapsed_s\":{:.3},\"concurrency\":{},\"keepalive\":{},",
            "\"requests\":{},\"requests_per_s\":{:.1},\"ok\":{},\"failed\":{},",
            "\"refused\":{},\"reset\":{},\"timeout\":{},\"too_large\":{},\"eof\":{},\"bad_status\":{},\"error\":{},",
            "\"retried\":{},\"connects\":{},\"mixed\":{},\"flapping\":{},\"no_x_release\":{},\"no_data_release\":{},",
            "\"releases\":[{}],\"untracked\":{},",
            "\"latency_ms\":{{\"p50\":{},\"p99\":{},\"p99_9\":{},\"max\":{}}},",
            "\"parts\":{},\"worst_second\":{},\"fewest_second\":{},\"ok_verdict\":{},\"reason\":{}}}\n"
        ),
        jstr(&run.url),
        run.elapsed.as_secs_f64(),
        run.concurrency,
        run.keepalive,
        s.requests(),
        rate(run),
        s.ok,
        s.failed(),
        s.refused,
        s.reset,
        s.timeout,
        s.too_large,
        s.eof,
        s.bad_status,
        s.error,
        s.retried,
        s.connects,
        s.mixed,
        s.flapping,
        s.no_code_release,
        s.no_content_release,
        rels.join(","),
        s.untracked,
        jms(h.quantile(0.50)),
        jms(h.quantile(0.99)),
        jms(h.quantile(0.999)),
        jms(h.max_us),
        parts,
        worst,
        fewest,
        failure.is_none(),
        failure.as_deref().map_or("null".to_string(), jstr),
    )
}

/// Times in seconds, joined by `sep`.
fn seconds(at: &[Duration], sep: &str) -> String {
    let each: Vec<String> = at
        .iter()
        .map(|t| format!("{:.3}", t.as_secs_f64()))
        .collect();
    each.join(sep)
}

/// The table's `USR1 at` line: the first few times, and how many in all
/// when there were more.
fn usr1_line(u: &Usr1) -> String {
    const SHOWN: usize = 8;
    let shown = seconds(&u.at[..u.at.len().min(SHOWN)], ", ");
    if u.count > SHOWN as u64 {
        format!("{shown} s, ... ({} in all)", u.count)
    } else {
        format!("{shown} s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_usr1_keeps_the_results_bounded() {
        let mut u = Usr1::default();
        for i in 0..5000u64 {
            // odd ones start a marked part, even ones end it
            assert_eq!(u.add(Duration::from_millis(i)), i % 2 == 0);
        }
        assert_eq!((u.count, u.at.len()), (5000, Usr1::KEPT));
        assert_eq!(
            usr1_line(&u),
            "0.000, 0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007 s, ... (5000 in all)"
        );
        let mut few = Usr1::default();
        few.add(Duration::from_millis(1500));
        few.add(Duration::from_millis(2250));
        assert_eq!(usr1_line(&few), "1.500, 2.250 s");
        assert_eq!(seconds(&few.at, ","), "1.500,2.250");
    }
}
