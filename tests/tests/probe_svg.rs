//! uptime-probe --svg draws the run (issue 20): the picture is well-formed XML
//! (python3's xml.etree reads it), its 100 ms bins add up to the probe's own
//! counts, a failed request, a mixed response and flapping show as the bins and
//! marks the test counts, --marks adds its labelled marks, and rsvg-convert
//! renders it to a PNG that is not blank.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::{cmd, json_count, require_peer, run, TempDir};

/// Reads the SVG with xml.etree (fails on malformed XML) and prints, one
/// `key value` a line: the sums of every bin's data-* counts, the number of
/// bins, of failed / mixed / retried / flapping marks drawn, of release and
/// user marks (and their labels), of release slices per release, and the
/// figures text.
const CHECK_SVG: &str = r#"
import sys, xml.etree.ElementTree as ET
NS = '{http://www.w3.org/2000/svg}'
root = ET.parse(sys.argv[1]).getroot()
assert root.tag == NS + 'svg', root.tag
sums = {}
bins = 0
drawn = {'fail': 0, 'mixed': 0, 'retried': 0, 'flap': 0}
with_fail = with_mixed = with_retried = with_flap = 0
slices = {}
for g in root.iter(NS + 'g'):
    cls = g.get('class', '').split()
    if 'bin' in cls:
        bins += 1
        for k, v in g.attrib.items():
            if k.startswith('data-') and k not in ('data-releases', 'data-t', 'data-bin', 'data-p50-ms', 'data-p99-ms'):
                sums[k[5:]] = sums.get(k[5:], 0) + int(v)
        for pair in g.get('data-releases').split():
            r, n = pair.split(':')
            sums['release' + r] = sums.get('release' + r, 0) + int(n)
        fails = sum(int(g.get('data-' + k)) for k in ('refused', 'reset', 'timeout', 'too-large', 'eof', 'bad-status', 'error'))
        with_fail += fails > 0
        with_mixed += int(g.get('data-mixed')) > 0
        with_retried += int(g.get('data-retried')) > 0
        with_flap += int(g.get('data-flapping')) > 0
        # the latency line's values: both there when the bin answered anything
        p50, p99 = g.get('data-p50-ms'), g.get('data-p99-ms')
        if int(g.get('data-ok')) + int(g.get('data-bad-status')) > 0:
            assert 0 < float(p50) <= float(p99), (p50, p99)
        else:
            assert p50 == '' and p99 == '', (p50, p99)
        for r in g.iter(NS + 'rect'):
            c = r.get('class', '').split()
            for k in drawn:
                if k in c:
                    drawn[k] += 1
            if 'release' in c:
                slices[r.get('fill')] = slices.get(r.get('fill'), 0) + 1
for k, v in sorted(sums.items()):
    print('sum_' + k, v)
print('bins', bins)
for k, v in drawn.items():
    print('drawn_' + k, v)
print('bins_with_fail', with_fail)
print('bins_with_mixed', with_mixed)
print('bins_with_retried', with_retried)
print('bins_with_flap', with_flap)
print('release_colours', len(slices))
marks = [g for g in root.iter(NS + 'g') if g.get('class') in ('mark release', 'mark user')]
print('marks_release', sum(1 for g in marks if g.get('class') == 'mark release'))
print('marks_user', sum(1 for g in marks if g.get('class') == 'mark user'))
for g in marks:
    if g.get('class') == 'mark user':
        print('label', g.find(NS + 'text').text)
lines = sum(1 for p in root.iter(NS + 'path') if 'latency' in p.get('class', '') and p.get('d'))
print('latency_lines', lines)
for t in root.iter(NS + 'text'):
    if t.get('class') == 'figures':
        print('figures', t.text)
"#;

/// Decodes a PNG (8-bit RGB or RGBA, zlib and the five filters) and prints
/// `width height colours non_white_permille`.
const CHECK_PNG: &str = r#"
import sys, zlib, struct
data = open(sys.argv[1], 'rb').read()
assert data[:8] == b'\x89PNG\r\n\x1a\n'
pos, idat = 8, b''
while pos < len(data):
    n, kind = struct.unpack('>I4s', data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if kind == b'IHDR':
        w, h, depth, ctype = struct.unpack('>IIBB', body[:10])
    elif kind == b'IDAT':
        idat += body
    pos += 12 + n
assert depth == 8 and ctype in (2, 6), (depth, ctype)
bpp = 4 if ctype == 6 else 3
raw = zlib.decompress(idat)
stride = w * bpp
prev = bytearray(stride)
colours, non_white = set(), 0
for y in range(h):
    f = raw[y * (stride + 1)]
    line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
        a = line[i - bpp] if i >= bpp else 0
        b = prev[i]
        c = prev[i - bpp] if i >= bpp else 0
        if f == 1: line[i] = (line[i] + a) & 255
        elif f == 2: line[i] = (line[i] + b) & 255
        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            pr = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            line[i] = (line[i] + pr) & 255
    for x in range(0, stride, bpp):
        px = bytes(line[x:x + 3])
        colours.add(px)
        non_white += px != b'\xff\xff\xff'
    prev = line
print(w, h, len(colours), non_white * 1000 // (w * h))
"#;

fn python(script: &str, file: &Path) -> String {
    let mut c = Command::new("python3");
    c.arg("-c").arg(script).arg(file);
    let (code, out, err) = run(c, Duration::from_secs(120));
    assert_eq!(code, 0, "python3 check of {}: {err}", file.display());
    out
}

/// The value of `key` in the checker's `key value` lines (0 when absent).
fn num(out: &str, key: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// A keep-alive server: response n (counted across connections) is made by
/// `answer(n)`: (status, release of code, release of content), or None to close
/// the connection without answering. A 2 ms pause per response spreads a run
/// over a few bins.
fn server(answer: fn(u64) -> Option<(u16, &'static str, &'static str)>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let n = n.clone();
            std::thread::spawn(move || serve(s, &n, answer));
        }
    });
    port
}

fn serve(
    mut s: TcpStream,
    n: &AtomicU64,
    answer: fn(u64) -> Option<(u16, &'static str, &'static str)>,
) {
    loop {
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut b) {
                Ok(1) => head.push(b[0]),
                _ => return,
            }
        }
        std::thread::sleep(Duration::from_millis(2));
        let Some((status, code, content)) = answer(n.fetch_add(1, Ordering::SeqCst)) else {
            return;
        };
        let body = format!("<body data-release=\"{content}\">x</body>");
        let resp = format!(
            "HTTP/1.1 {status} X\r\nX-Release: {code}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// Run the probe with --json --svg (and ARGS); (exit code, JSON, the checker's lines).
fn probe_svg(t: &TempDir, args: &[&str], port: u16) -> (i32, String, String) {
    let svg = t.join("run.svg");
    let mut c = cmd("uptime-probe");
    c.args(["--json", "-q", "--svg"])
        .arg(&svg)
        .args(args)
        .arg(format!("http://127.0.0.1:{port}/"));
    let (code, out, err) = run(c, Duration::from_secs(60));
    assert!(err.is_empty(), "{err}");
    let checked = python(CHECK_SVG, &svg);
    eprintln!("{out}{checked}");
    (code, out, checked)
}

/// The bins add up to the probe's counts, every one of them.
fn assert_bins_add_up(json: &str, svg: &str) {
    for key in [
        "requests", "ok", "refused", "reset", "timeout", "eof", "error", "retried", "mixed",
        "flapping",
    ] {
        assert_eq!(
            num(svg, &format!("sum_{key}")),
            json_count(json, key),
            "{key}"
        );
    }
    assert_eq!(num(svg, "sum_too-large"), json_count(json, "too_large"));
    assert_eq!(num(svg, "sum_bad-status"), json_count(json, "bad_status"));
    assert!(num(svg, "bins") >= 1);
    assert!(
        svg.contains(&format!(
            "figures requests {} ",
            json_count(json, "requests")
        )),
        "{svg}"
    );
}

#[test]
fn a_failed_request_and_a_mixed_response_show() {
    // Response 150 is a 500, response 300 is mixed, response 450 is never
    // answered (the connection closes: eof, after a retry on a fresh connection
    // that works, unless it was the connection's first).
    let port = server(|n| match n {
        150 => Some((500, "r1", "r1")),
        300 => Some((200, "r1", "r2")),
        450 => None,
        _ => Some((200, "r1", "r1")),
    });
    let t = TempDir::new("probe-svg-fail");
    let (code, json, svg) = probe_svg(&t, &["-c", "2", "-n", "600"], port);
    assert_eq!(code, 1, "{json}");
    assert_bins_add_up(&json, &svg);
    assert_eq!(json_count(&json, "failed"), 1, "{json}");
    assert_eq!(json_count(&json, "mixed"), 1, "{json}");
    assert_eq!(num(&svg, "bins_with_fail"), 1);
    assert_eq!(num(&svg, "drawn_fail"), 1, "the failed bin is drawn");
    assert_eq!(num(&svg, "drawn_mixed"), 1, "the mixed bin is drawn");
    assert_eq!(num(&svg, "drawn_retried"), num(&svg, "bins_with_retried"));
    assert_eq!(num(&svg, "drawn_flap"), 0);
    assert_eq!(num(&svg, "marks_release"), 1, "one release, one mark");
    assert_eq!(num(&svg, "latency_lines"), 2, "p50 and p99");
}

#[test]
fn flapping_shows_as_speckle_and_each_release_has_a_mark() {
    // r1 for the first 100 responses, then r2 and r1 alternate: the client
    // that saw r2 flaps back to r1. One client: with two, the server's
    // count alternating between their connections in step gave one only r1
    // and the other only r2 after the first 100, and no flapping at all
    // (failed once in a suite run on a loaded machine).
    let port = server(|n| {
        let r = if n < 100 || n % 2 == 0 { "r1" } else { "r2" };
        Some((200, r, r))
    });
    let t = TempDir::new("probe-svg-flap");
    let (code, json, svg) = probe_svg(&t, &["-c", "1", "-n", "500"], port);
    assert_eq!(code, 0, "flapping alone does not fail: {json}");
    assert_bins_add_up(&json, &svg);
    assert!(json_count(&json, "flapping") > 0, "{json}");
    assert_eq!(num(&svg, "sum_release0"), 300, "r1 answered 300: {svg}");
    assert_eq!(num(&svg, "sum_release1"), 200, "r2 answered 200");
    assert!(num(&svg, "bins_with_flap") >= 1);
    assert_eq!(num(&svg, "drawn_flap"), num(&svg, "bins_with_flap"));
    assert_eq!(num(&svg, "release_colours"), 2, "a colour per release");
    assert_eq!(
        num(&svg, "marks_release"),
        2,
        "a mark where each release appeared"
    );
    assert_eq!(num(&svg, "drawn_fail"), 0);
}

#[test]
fn marks_file_adds_labelled_marks() {
    let port = server(|_| Some((200, "r1", "r1")));
    let t = TempDir::new("probe-svg-marks");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let marks = t.join("marks");
    // two inside the run (it lasts 2 s), one long before it (not drawn), a comment
    std::fs::write(
        &marks,
        format!(
            "# deploys\n{:.3} deploy r2 <fast>\n{:.3} deploy r3\n{:.3} last year\n",
            now + 0.5,
            now + 1.0,
            now - 3e7
        ),
    )
    .unwrap();
    let svg = t.join("run.svg");
    let mut c = cmd("uptime-probe");
    c.args(["--json", "-q", "-c", "1", "-d", "2", "--svg"])
        .arg(&svg)
        .arg("--marks")
        .arg(&marks)
        .arg(format!("http://127.0.0.1:{port}/"));
    let (code, json, err) = run(c, Duration::from_secs(60));
    assert_eq!(code, 0, "{json}{err}");
    let checked = python(CHECK_SVG, &svg);
    assert_bins_add_up(&json, &checked);
    assert_eq!(num(&checked, "marks_user"), 2, "{checked}");
    assert!(checked.contains("\nlabel deploy r2 <fast>\n"), "{checked}");
    assert!(checked.contains("\nlabel deploy r3\n"), "{checked}");
    assert!(num(&checked, "bins") >= 5, "2 s of 100 ms bins: {checked}");
}

#[test]
fn marks_need_svg() {
    let mut c = cmd("uptime-probe");
    c.args(["--marks", "x", "http://127.0.0.1:1/"]);
    let (code, _, err) = run(c, Duration::from_secs(10));
    assert_eq!(code, 100, "{err}");
    assert!(
        err.starts_with("uptime-probe: usage: --marks without --svg"),
        "{err}"
    );
}

#[test]
fn an_unwritable_svg_is_a_fatal_error() {
    let port = server(|_| Some((200, "r1", "r1")));
    let mut c = cmd("uptime-probe");
    c.args([
        "--json",
        "-q",
        "-n",
        "3",
        "--svg",
        "/nonexistent/dir/run.svg",
    ])
    .arg(format!("http://127.0.0.1:{port}/"));
    let (code, out, err) = run(c, Duration::from_secs(30));
    assert_eq!(code, 111, "{err}");
    assert_eq!(
        json_count(&out, "requests"),
        3,
        "the results are printed first"
    );
    assert_eq!(
        err,
        "uptime-probe: fatal: unable to write /nonexistent/dir/run.svg: No such file or directory\n"
    );
}

#[test]
fn rsvg_convert_renders_a_picture_that_is_not_blank() {
    if !require_peer("rsvg-convert") {
        return;
    }
    let port = server(|n| match n {
        200 => Some((503, "r1", "r1")),
        _ => {
            let r = if n < 300 { "r1" } else { "r2" };
            Some((200, r, r))
        }
    });
    let t = TempDir::new("probe-svg-png");
    let (_, _, _) = probe_svg(&t, &["-c", "2", "-n", "500"], port);
    let png = t.join("run.png");
    let mut c = Command::new("rsvg-convert");
    c.arg("-o").arg(&png).arg(t.join("run.svg"));
    let (code, _, err) = run(c, Duration::from_secs(60));
    assert_eq!(code, 0, "rsvg-convert: {err}");
    if let Some(keep) = std::env::var_os("PROBE_SVG_KEEP") {
        let _ = std::fs::copy(t.join("run.svg"), Path::new(&keep).with_extension("svg"));
        let _ = std::fs::copy(&png, Path::new(&keep).with_extension("png"));
    }
    let out = python(CHECK_PNG, &png);
    let f: Vec<u64> = out.split_whitespace().map(|v| v.parse().unwrap()).collect();
    assert_eq!((f[0], f[1]), (1200, 580), "{out}");
    assert!(
        f[2] >= 8,
        "at least 8 colours (outcomes, releases, text): {out}"
    );
    assert!(f[3] >= 20, "at least 2% of the pixels are not white: {out}");
}

#[test]
fn an_unreadable_marks_file_is_a_warning() {
    let port = server(|_| Some((200, "r1", "r1")));
    let t = TempDir::new("probe-svg-nomarks");
    let svg = t.join("run.svg");
    let mut c = cmd("uptime-probe");
    c.args(["--json", "-q", "-n", "20", "--svg"])
        .arg(&svg)
        .args(["--marks", "/nonexistent/marks"])
        .arg(format!("http://127.0.0.1:{port}/"));
    let (code, json, err) = run(c, Duration::from_secs(60));
    assert_eq!(code, 0, "{json}{err}");
    assert_eq!(
        err,
        "uptime-probe: warning: unable to read marks /nonexistent/marks: No such file or directory\n"
    );
    let checked = python(CHECK_SVG, &svg);
    assert_bins_add_up(&json, &checked);
    assert_eq!(num(&checked, "marks_user"), 0);
}
