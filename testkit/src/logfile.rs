//! The captured output of a process under test: read as text, without the terminal colour
//! codes tracing may put around fields, and shown when the test fails.

use std::path::Path;

/// The text of the log at `path` (empty while it does not exist).
pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// When the current thread is panicking (a failing test), prints the log at `path` under
/// `title`: a failed test shows what the server said.
pub fn show_if_failing(title: &str, path: &Path) {
    if std::thread::panicking() {
        eprintln!("---- {title} ({}) ----\n{}", path.display(), read_log(path));
    }
}

/// `text` without the terminal colour codes (CSI sequences) tracing puts around fields.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters… final byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn strips_sgr_sequences_only() {
        let coloured = "\u{1b}[2m2025\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m listening \u{1b}[3mlistener\u{1b}[0m\u{1b}[2m=\u{1b}[0mhttp";
        assert_eq!(
            super::strip_ansi(coloured),
            "2025  INFO listening listener=http"
        );
        assert_eq!(super::strip_ansi("plain [x] m"), "plain [x] m");
    }
}
