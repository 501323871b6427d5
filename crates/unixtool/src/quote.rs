//! Text from outside (a check's stderr, a release directory's name, an HTTP
//! body) made safe for one line: of a message, of a status file's `key=value`,
//! of a terminal. Written once, used by every tool that prints or records such
//! text (docs/conventions.md, "Messages").
//!
//! - `\n`, `\r`, `\t` become those two-character escapes; every other
//!   control character (C0, DEL, and the C1 range U+0080..U+009F, which some
//!   terminals take as CSI and the like) becomes `\xNN` (`\u{NNNN}` for C1);
//!   so the text holds no line break, no escape sequence, no bell;
//! - a backslash stays as it is, so that quoting is idempotent: text goes
//!   through several layers (a check's reason, the status file, a message)
//!   and is quoted once whatever the number of layers;
//! - text longer than `max` bytes is cut at a character boundary and ends with
//!   `...[cut: N bytes in all]`.

use std::fmt::Write as _;

/// How much of a piece of outside text a message or a status value keeps.
pub const MAX_TEXT: usize = 512;

/// The longest message line: one write(2) of at most PIPE_BUF bytes is atomic
/// on a pipe, so lines of processes sharing stderr never interleave.
pub const MAX_LINE: usize = 4000;

/// `text` quoted for one line, cut at about `max` bytes (the escapes count).
pub fn line(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max) + 16);
    for c in text.chars() {
        if out.len() >= max {
            cut(&mut out, text.len());
            return out;
        }
        push(&mut out, c);
    }
    out
}

fn cut(out: &mut String, all: usize) {
    let _ = write!(out, "...[cut: {all} bytes in all]");
}

/// Whether `text` holds anything [`line`] would change (a control character).
pub fn needs_quoting(text: &str) -> bool {
    text.chars().any(char::is_control)
}

fn push(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x20 || c == '\x7f' => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if c.is_control() => {
            let _ = write!(out, "\\u{{{:04x}}}", c as u32);
        }
        c => out.push(c),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_bytes_become_escapes_once() {
        let hostile = "red \x1b[31mX\x07\r\nready=9\t\\ \u{9b}2J \x7f end";
        let q = line(hostile, 1000);
        assert_eq!(
            q,
            "red \\x1b[31mX\\x07\\r\\nready=9\\t\\ \\u{009b}2J \\x7f end"
        );
        assert!(!q.chars().any(char::is_control), "{q}");
        // idempotent: a second layer changes nothing
        assert_eq!(line(&q, 1000), q);
        assert!(needs_quoting(hostile));
        assert!(!needs_quoting("releases/r1 ü \\n"));
        assert_eq!(line("releases/r1 ü", 100), "releases/r1 ü");
    }

    #[test]
    fn long_text_is_cut_at_a_character() {
        let long = "é".repeat(30_000);
        let q = line(&long, 100);
        assert!(q.len() < 140, "{}", q.len());
        assert!(q.ends_with("...[cut: 60000 bytes in all]"), "{q}");
    }
}
