//! The run as one self-contained SVG picture (--svg): time on the x axis in
//! 100 ms bins; which release answered (a colour each), the responses by outcome,
//! failed / mixed / retried / flapping bins, p50 and p99 latency, a mark where
//! each release first appeared and one per line of the --marks file; a legend and
//! the run's figures as text. Each bin's counts are in `data-*` attributes of
//! its `<g class="bin">`, so a script can check them against the totals.

use std::fmt::Write;

use crate::stats::{Bin, BIN, FAILED_KINDS};
use crate::Run;

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 1170.0;
const BAND: (f64, f64) = (84.0, 112.0);
const FLAP: (f64, f64) = (114.0, 120.0);
const BARS: (f64, f64) = (136.0, 276.0);
const ROWS: f64 = 282.0;
const ROW_H: f64 = 11.0;
const LAT: (f64, f64) = (340.0, 480.0);
const HEIGHT: f64 = 580.0;

/// A colour per release, by order of first appearance (cycling).
const RELEASE_COLOURS: [&str; 8] = [
    "#4e79a7", "#59a14f", "#edc948", "#b07aa1", "#76b7b2", "#9c755f", "#f28e2b", "#bab0ac",
];
const OK: &str = "#9ccf9c";
const FAILED_COLOURS: [&str; 7] = [
    "#d62728", "#8c1c13", "#ff7f0e", "#7b3294", "#e377c2", "#bcbd22", "#17becf",
];
const MIXED: &str = "#e6007e";
const RETRIED: &str = "#6baed6";
const FLAPPING: &str = "#222222";
const P50: &str = "#08519c";
const P99: &str = "#d62728";

fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            // Not characters of XML 1.0: C0 controls but tab and newline,
            // U+FFFE and U+FFFF (a picture holding one is not well-formed).
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => o.push('?'),
            '\u{fffe}' | '\u{ffff}' => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

/// A labelled vertical mark, at seconds since the run's start.
pub struct Mark {
    pub at_s: f64,
    pub label: String,
}

/// Parse a marks file: `unix-time label` lines (the time in seconds, a fraction
/// allowed) or deploy-release's JSON lines (a mark at each deploy's start); blank lines and lines starting with `#` are skipped, and so is a
/// line whose time is not a number. Times are made relative to `start_unix`.
pub fn parse_marks(text: &str, start_unix: f64) -> Vec<Mark> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('{') {
                // deploy-release's deploy log (marks.rs)
                let (t, label) = crate::marks::deploy_mark(l)?;
                return Some(Mark {
                    at_s: t - start_unix,
                    label,
                });
            }
            let (t, label) = l.split_once(char::is_whitespace).unwrap_or((l, ""));
            let t: f64 = t.parse().ok().filter(|t: &f64| t.is_finite())?;
            Some(Mark {
                at_s: t - start_unix,
                label: label.trim().to_string(),
            })
        })
        .collect()
}

pub fn picture(run: &Run, bins: &[Bin], marks: &[Mark]) -> String {
    let span = run.elapsed.as_secs_f64().max(BIN.as_secs_f64());
    let x = |t: f64| LEFT + (RIGHT - LEFT) * (t / span).clamp(0.0, 1.0);
    let bw = ((RIGHT - LEFT) * BIN.as_secs_f64() / span).max(0.5);
    let mut o = String::new();
    let _ = write!(
        o,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <title>uptime-probe: {}</title>\n\
         <rect class=\"background\" width=\"{WIDTH}\" height=\"{HEIGHT}\" fill=\"#ffffff\"/>\n",
        esc(&run.url)
    );
    figures(&mut o, run);
    axes(&mut o, span, &x);
    let max_requests = bins.iter().map(Bin::requests).max().unwrap_or(0).max(1);
    let (lo, hi) = latency_range(bins);
    let ly = |ms: f64| {
        let f = (ms.max(lo).ln() - lo.ln()) / (hi.ln() - lo.ln());
        LAT.1 - (LAT.1 - LAT.0) * f.clamp(0.0, 1.0)
    };
    latency_grid(&mut o, lo, hi, &ly);
    o.push_str("<g class=\"bins\">\n");
    for (i, b) in bins.iter().enumerate() {
        if b.requests() == 0 {
            continue;
        }
        let bx = x(i as f64 * BIN.as_secs_f64());
        // the last bin may be partial: never past the plot's right edge
        let w = bw.min(RIGHT - bx).max(0.5);
        bin(&mut o, i, b, bx, w, max_requests);
    }
    o.push_str("</g>\n");
    for (q, colour, class) in [(0.5, P50, "p50"), (0.99, P99, "p99")] {
        // one path per quantile, broken where a bin had no answer
        let mut d = String::new();
        let mut pen_down = false;
        for (i, b) in bins.iter().enumerate() {
            match b.quantile_ms(q) {
                Some(v) => {
                    let cmd = if pen_down { 'L' } else { 'M' };
                    let bx = x((i as f64 + 0.5) * BIN.as_secs_f64());
                    let _ = write!(d, "{cmd}{bx:.1},{:.1} ", ly(v));
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        let _ = writeln!(
            o,
            "<path class=\"latency {class}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.2\" d=\"{}\"/>",
            d.trim_end()
        );
    }
    for (i, (rel, at)) in run.releases.iter().enumerate() {
        let name = String::from_utf8_lossy(rel);
        mark(
            &mut o,
            "mark release",
            x(at.as_secs_f64()),
            RELEASE_COLOURS[i % 8],
            "4 3",
            &name,
            13.0,
        );
    }
    for m in marks.iter().filter(|m| (0.0..=span).contains(&m.at_s)) {
        mark(&mut o, "mark user", x(m.at_s), "#333333", "", &m.label, 3.0);
    }
    legend(&mut o, run);
    o.push_str("</svg>\n");
    o
}

/// The run's figures, as the table says them, on two lines at the top.
fn figures(o: &mut String, run: &Run) {
    let s = &run.stats;
    let kinds: Vec<String> = FAILED_KINDS
        .iter()
        .map(|(k, name)| (crate::stats::count_of(s, *k), name))
        .filter(|(n, _)| *n > 0)
        .map(|(n, name)| format!("{} {n}", name.replace('_', " ")))
        .collect();
    let failed = if kinds.is_empty() {
        "0".to_string()
    } else {
        format!("{} ({})", s.failed(), kinds.join(", "))
    };
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1000.0);
    let verdict = match run.failure() {
        None => "OK: nothing failed, nothing mixed".to_string(),
        Some(why) => format!("FAILED: {why}"),
    };
    let _ = write!(
        o,
        "<text class=\"heading\" x=\"{LEFT}\" y=\"22\" font-size=\"15\" font-weight=\"bold\">uptime-probe {} \u{2014} {}</text>\n\
         <text class=\"figures\" x=\"{LEFT}\" y=\"42\">requests {} \u{b7} failed {} \u{b7} mixed {} \u{b7} flapping {} \u{b7} retried {} \u{b7} p50 {} \u{b7} p99 {} \u{b7} max {}</text>\n\
         <text class=\"figures\" x=\"{LEFT}\" y=\"58\">{:.2} s, {} clients, {} \u{b7} releases {} \u{b7} one column per 100 ms</text>\n",
        esc(&run.url),
        esc(&verdict),
        s.requests(),
        esc(&failed),
        s.mixed,
        s.flapping,
        s.retried,
        ms(s.latency.quantile(0.5)),
        ms(s.latency.quantile(0.99)),
        ms(s.latency.max_us),
        run.elapsed.as_secs_f64(),
        run.concurrency,
        if run.keepalive { "keep-alive" } else { "a connection per request" },
        run.releases.len(),
    );
}

/// Panel titles, the time axis and its grid.
fn axes(o: &mut String, span: f64, x: &impl Fn(f64) -> f64) {
    for (y, label) in [
        (BAND.0 + 18.0, "release"),
        (BARS.0 + 10.0, "responses"),
        (ROWS + 9.0, "failed"),
        (ROWS + ROW_H + 9.0, "mixed"),
        (ROWS + 2.0 * ROW_H + 9.0, "retried"),
    ] {
        let _ = writeln!(
            o,
            "<text class=\"panel\" x=\"{:.1}\" y=\"{y:.1}\" text-anchor=\"end\">{label}</text>",
            LEFT - 6.0
        );
    }
    let _ = writeln!(
        o,
        "<text class=\"panel\" x=\"{LEFT}\" y=\"{:.1}\">latency per 100 ms: p50 and p99 (log scale)</text>",
        LAT.0 - 12.0
    );
    let step = [
        0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    ]
    .into_iter()
    .find(|s| span / s <= 12.0)
    .unwrap_or(7200.0);
    let mut t = 0.0;
    while t <= span + 1e-9 {
        let _ = writeln!(
            o,
            "<line class=\"grid\" x1=\"{0:.1}\" y1=\"{1}\" x2=\"{0:.1}\" y2=\"{2}\" stroke=\"#e4e4e4\"/>\
             <text class=\"tick\" x=\"{0:.1}\" y=\"{3}\" text-anchor=\"middle\">{4} s</text>",
            x(t),
            BAND.0,
            LAT.1,
            LAT.1 + 14.0,
            (t * 10.0).round() / 10.0
        );
        t += step;
    }
    let _ = writeln!(
        o,
        "<line class=\"axis\" x1=\"{LEFT}\" y1=\"{0}\" x2=\"{RIGHT}\" y2=\"{0}\" stroke=\"#888888\"/>",
        BARS.1
    );
}

/// The latency axis: from the lowest p50 to the highest p99 of any bin (log).
fn latency_range(bins: &[Bin]) -> (f64, f64) {
    let p50 = bins.iter().filter_map(|b| b.quantile_ms(0.5));
    let p99 = bins.iter().filter_map(|b| b.quantile_ms(0.99));
    let lo = p50.fold(f64::INFINITY, f64::min);
    let hi = p99.fold(0.0, f64::max);
    if !lo.is_finite() || hi <= 0.0 {
        return (0.01, 10.0);
    }
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

fn latency_grid(o: &mut String, lo: f64, hi: f64, ly: &impl Fn(f64) -> f64) {
    let mut v = lo;
    while v <= hi * 1.0001 {
        let label = if v >= 1.0 {
            format!("{v:.0} ms")
        } else {
            format!("{v} ms")
        };
        let _ = writeln!(
            o,
            "<line class=\"grid\" x1=\"{LEFT}\" y1=\"{0:.1}\" x2=\"{RIGHT}\" y2=\"{0:.1}\" stroke=\"#e4e4e4\"/>\
             <text class=\"tick\" x=\"{1:.1}\" y=\"{2:.1}\" text-anchor=\"end\">{label}</text>",
            ly(v),
            LEFT - 6.0,
            ly(v) + 4.0
        );
        v *= 10.0;
    }
}

/// One bin: its counts as data-* attributes; the release band (a slice per
/// release answering in it), the stacked bar of outcomes, the failed / mixed /
/// retried rows and the flapping speckle.
fn bin(o: &mut String, i: usize, b: &Bin, x: f64, w: f64, max_requests: u64) {
    let releases: Vec<String> = b
        .releases
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(r, n)| format!("{r}:{n}"))
        .collect();
    let _ = write!(
        o,
        "<g class=\"bin\" data-bin=\"{i}\" data-t=\"{:.1}\" data-requests=\"{}\" data-ok=\"{}\"",
        i as f64 * BIN.as_secs_f64(),
        b.requests(),
        b.ok
    );
    for ((_, name), n) in FAILED_KINDS.iter().zip(&b.failed) {
        let _ = write!(o, " data-{}=\"{n}\"", name.replace('_', "-"));
    }
    let q = |q| {
        b.quantile_ms(q)
            .map_or(String::new(), |v| format!("{v:.3}"))
    };
    let _ = writeln!(
        o,
        " data-retried=\"{}\" data-mixed=\"{}\" data-flapping=\"{}\" data-releases=\"{}\" data-p50-ms=\"{}\" data-p99-ms=\"{}\">",
        b.retried,
        b.mixed,
        b.flapping,
        releases.join(" "),
        q(0.5),
        q(0.99)
    );
    let rect = |o: &mut String, class: &str, y: f64, h: f64, fill: &str| {
        let _ = writeln!(
            o,
            "<rect class=\"{class}\" x=\"{x:.2}\" y=\"{y:.2}\" width=\"{w:.2}\" height=\"{h:.2}\" fill=\"{fill}\"/>"
        );
    };
    let answered: u64 = b.releases.iter().sum();
    let mut y = BAND.0;
    for (r, n) in b.releases.iter().enumerate().filter(|(_, n)| **n > 0) {
        let h = (BAND.1 - BAND.0) * *n as f64 / answered as f64;
        rect(o, "release", y, h, RELEASE_COLOURS[r % 8]);
        y += h;
    }
    if b.flapping > 0 {
        rect(o, "flap", FLAP.0, FLAP.1 - FLAP.0, FLAPPING);
    }
    let scale = (BARS.1 - BARS.0 - 14.0) / max_requests as f64;
    let mut y = BARS.1;
    let parts = std::iter::once(("ok", b.ok, OK)).chain(
        FAILED_KINDS
            .iter()
            .zip(&b.failed)
            .zip(FAILED_COLOURS)
            .map(|(((_, name), n), c)| (*name, *n, c)),
    );
    for (name, n, colour) in parts.filter(|p| p.1 > 0) {
        let h = (n as f64 * scale).max(1.0);
        y -= h;
        rect(o, &format!("bar {name}"), y, h, colour);
    }
    if let Some(k) = (0..FAILED_KINDS.len())
        .filter(|&k| b.failed[k] > 0)
        .max_by_key(|&k| b.failed[k])
    {
        rect(
            o,
            &format!("fail {}", FAILED_KINDS[k].1),
            ROWS,
            ROW_H - 1.0,
            FAILED_COLOURS[k],
        );
    }
    if b.mixed > 0 {
        rect(o, "mixed", ROWS + ROW_H, ROW_H - 1.0, MIXED);
    }
    if b.retried > 0 {
        rect(o, "retried", ROWS + 2.0 * ROW_H, ROW_H - 1.0, RETRIED);
    }
    o.push_str("</g>\n");
}

/// A vertical mark through every panel, its label `above` px over the band.
fn mark(o: &mut String, class: &str, x: f64, colour: &str, dash: &str, label: &str, above: f64) {
    let dash = if dash.is_empty() {
        String::new()
    } else {
        format!(" stroke-dasharray=\"{dash}\"")
    };
    let _ = writeln!(
        o,
        "<g class=\"{class}\"><line x1=\"{x:.1}\" y1=\"{}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"{colour}\" stroke-width=\"1.2\"{dash}/>\
         <text x=\"{:.1}\" y=\"{}\" fill=\"{colour}\" font-size=\"10\">{}</text></g>",
        BAND.0 - above - 9.0,
        LAT.1,
        x + 2.0,
        BAND.0 - above,
        esc(label)
    );
}

fn legend(o: &mut String, run: &Run) {
    let mut items: Vec<(String, &str)> = vec![("ok".into(), OK)];
    for ((_, name), c) in FAILED_KINDS.iter().zip(FAILED_COLOURS) {
        items.push((format!("failed: {}", name.replace('_', " ")), c));
    }
    items.push(("mixed".into(), MIXED));
    items.push(("retried".into(), RETRIED));
    items.push(("flapping".into(), FLAPPING));
    items.push(("p50".into(), P50));
    items.push(("p99".into(), P99));
    for (i, (rel, _)) in run.releases.iter().enumerate().take(16) {
        items.push((
            format!("release {}", String::from_utf8_lossy(rel)),
            RELEASE_COLOURS[i % 8],
        ));
    }
    o.push_str("<g class=\"legend\">\n");
    let (mut lx, mut y) = (LEFT, LAT.1 + 40.0);
    for (label, colour) in items {
        let w = 22.0 + 6.5 * label.chars().count() as f64;
        if lx + w > RIGHT {
            lx = LEFT;
            y += 18.0;
        }
        let _ = writeln!(
            o,
            "<rect x=\"{lx:.1}\" y=\"{:.1}\" width=\"12\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{y:.1}\">{}</text>",
            y - 9.0,
            lx + 16.0,
            esc(&label)
        );
        lx += w + 10.0;
    }
    let _ = writeln!(
        o,
        "<text x=\"{LEFT}\" y=\"{:.1}\" fill=\"#555555\">Dashed marks: a release first seen. Solid marks: the --marks file. Black speckles: flapping (an older release after a newer one, same client).</text>",
        y + 22.0
    );
    o.push_str("</g>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_file() {
        let m = parse_marks(
            "# deploys\n1000.5 deploy r2\n\nbad line\n1002 r3\n1003\n{\"start\":1004,\"kind\":\"deploy\",\"target_id\":\"r4\",\"verdict\":\"ok\"}\n{\"start\":\n",
            1000.0,
        );
        let got: Vec<(f64, &str)> = m.iter().map(|m| (m.at_s, m.label.as_str())).collect();
        assert_eq!(
            got,
            vec![
                (0.5, "deploy r2"),
                (2.0, "r3"),
                (3.0, ""),
                (4.0, "deploy r4: ok")
            ]
        );
    }

    #[test]
    fn escapes() {
        assert_eq!(esc("a<b&\"c'>"), "a&lt;b&amp;&quot;c&apos;&gt;");
    }
}
