//! `--marks FILE`'s JSON lines: deploy-release's deploy log (`deploys.jsonl`,
//! one object a line). A mark per deploy at its `start`, labelled with its
//! kind, its target's id (or name) and its verdict: `deploy r2: ok`. Only the
//! top-level keys are read; nested values are skipped whole.

/// A top-level value: a string (decoded), or the text of anything else.
#[derive(Debug, PartialEq)]
enum Value {
    Str(String),
    Other(String),
}

/// The mark of one deploy-log line: (unix time, label); None if the line is
/// not a JSON object with a numeric `start`.
pub fn deploy_mark(line: &str) -> Option<(f64, String)> {
    let fields = object(line)?;
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v);
    let text = |k: &str| match get(k) {
        Some(Value::Str(s)) => Some(s.as_str()),
        _ => None,
    };
    let start: f64 = match get("start")? {
        Value::Other(n) => n.parse().ok().filter(|t: &f64| t.is_finite())?,
        Value::Str(_) => return None,
    };
    let what = text("target_id")
        .or_else(|| text("target").map(|t| t.rsplit('/').next().unwrap_or(t)))
        .unwrap_or("?");
    let label = format!(
        "{} {what}: {}",
        text("kind").unwrap_or("deploy"),
        text("verdict").unwrap_or("?")
    );
    Some((start, label))
}

/// The top-level `key: value` pairs of one JSON object.
fn object(text: &str) -> Option<Vec<(String, Value)>> {
    let mut p = Scan {
        s: text.trim().as_bytes(),
        i: 0,
    };
    p.eat(b'{')?;
    let mut out = Vec::new();
    p.ws();
    if p.peek() == Some(b'}') {
        p.i += 1;
        return p.at_end().then_some(out);
    }
    loop {
        p.ws();
        let key = p.string()?;
        p.ws();
        p.eat(b':')?;
        p.ws();
        let value = match p.peek()? {
            b'"' => Value::Str(p.string()?),
            b'{' | b'[' => {
                p.nested()?;
                Value::Other(String::new())
            }
            _ => Value::Other(p.token()?),
        };
        out.push((key, value));
        p.ws();
        match p.next()? {
            b',' => continue,
            b'}' => return p.at_end().then_some(out),
            _ => return None,
        }
    }
}

struct Scan<'a> {
    s: &'a [u8],
    i: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.next()? == c).then_some(())
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.i += 1;
        }
    }

    fn at_end(&mut self) -> bool {
        self.ws();
        self.i == self.s.len()
    }

    /// A number, true, false or null: up to the next `,`, `}` or `]`.
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while !matches!(self.peek()?, b',' | b'}' | b']') {
            self.i += 1;
        }
        let t = std::str::from_utf8(&self.s[start..self.i]).ok()?.trim();
        (!t.is_empty()).then(|| t.to_string())
    }

    /// A nested object or array, skipped (strings in it included).
    fn nested(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match self.peek()? {
                b'"' => {
                    self.string()?;
                    continue;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Some(());
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
    }

    /// A string, its escapes decoded (a lone surrogate becomes U+FFFD).
    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.next()? {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => {
                    let c = match self.next()? {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode()?,
                        _ => return None,
                    };
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                c if c < 0x20 => return None,
                c => out.push(c),
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.s.get(self.i..self.i + 4)?;
        self.i += 4;
        u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
    }

    fn unicode(&mut self) -> Option<char> {
        let hi = self.hex4()?;
        if (0xd800..0xdc00).contains(&hi) && self.s.get(self.i..self.i + 2) == Some(b"\\u") {
            self.i += 2;
            let lo = self.hex4()?;
            if (0xdc00..0xe000).contains(&lo) {
                return char::from_u32(0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00));
            }
            return Some('\u{fffd}');
        }
        Some(char::from_u32(hi).unwrap_or('\u{fffd}'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deploys_log_line_is_a_mark() {
        let line = r#"{"start":1000.25,"pid":7,"kind":"deploy","before":"releases/r1","target":"releases/r2","target_id":"r2","after":null,"verdict":"rolled-back","exit":1,"reason":"a \"quoted\" {reason} \u00e9\ud83d\ude00","steps":[{"step":"lock","s":0.000100,"ok":true},{"step":"x]}","s":1,"ok":false}]}"#;
        assert_eq!(
            deploy_mark(line),
            Some((1000.25, "deploy r2: rolled-back".to_string()))
        );
        let fields = object(line).unwrap();
        assert_eq!(
            fields.iter().find(|(k, _)| k == "reason").map(|(_, v)| v),
            Some(&Value::Str("a \"quoted\" {reason} é😀".to_string()))
        );
        let no_id = r#"{"start":5,"kind":"rollback","target":"releases/r1","verdict":"ok"}"#;
        assert_eq!(
            deploy_mark(no_id),
            Some((5.0, "rollback r1: ok".to_string()))
        );
    }

    #[test]
    fn what_is_not_a_whole_object_with_a_start_is_no_mark() {
        for bad in [
            "",
            "{",
            r#"{"start":"soon"}"#,
            r#"{"verdict":"ok"}"#,
            r#"{"start":1,"kind":"deploy""#,
            r#"{"start":1} trailing"#,
            r#"{"start":1,"reason":"cut"#,
            r#"{"start":nan}"#,
        ] {
            assert_eq!(deploy_mark(bad), None, "{bad}");
        }
    }
}
