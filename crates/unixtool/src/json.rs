//! JSON written by hand (uptime-probe --json, deploy-release's deploy log):
//! a string quoted and escaped as RFC 8259 asks, nothing else.

use std::fmt::Write as _;

/// `s` as a JSON string: quotes, `"` and `\` escaped, control characters
/// as `\u00XX`.
pub fn string(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_quotes_backslashes_and_controls() {
        assert_eq!(
            super::string("a\"b\\c\nd\u{1}é"),
            "\"a\\\"b\\\\c\\u000ad\\u0001é\""
        );
    }
}
