//! The encoding of a report or a status on the control socket: one line of `key=value` fields
//! separated by spaces, after a word that says what it is (`report …`, `status …`).
//!
//! Why not JSON on the socket: the runtime must encode it whatever features the app enabled,
//! and `serde` is optional for apps (it is what `hotexec upgrade --json` prints, with the `cli`
//! feature). A flat record needs no dependency and keeps the properties that matter between two
//! builds of different ages: self-describing (a name on every value), unknown keys are skipped
//! (a newer server's extra fields reach an older command harmlessly), a missing key is a
//! missing value, never a zero.
//!
//! Values are percent-encoded: every byte outside `!`..=`~`, and `%` itself, is written `%XX`,
//! so a value never holds a space or a newline (paths with spaces, reasons with newlines).
//! Nested values use dotted keys (`health.error_rate=0`, `listener.0.name=http`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Fields of one record, in the order written.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Record {
    fields: Vec<(String, String)>,
}

impl Record {
    pub(crate) fn new() -> Record {
        Record::default()
    }

    /// Adds `key=value`. Keys are the crate's own identifiers (no space, no `=`).
    pub(crate) fn put(&mut self, key: impl Into<String>, value: impl ToString) {
        let key = key.into();
        debug_assert!(
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic() && b != b'='),
            "bad key {key:?}"
        );
        self.fields.push((key, value.to_string()));
    }

    /// Adds `key=value` if there is a value: a missing key is how "unknown" is said.
    pub(crate) fn put_opt(&mut self, key: impl Into<String>, value: Option<impl ToString>) {
        if let Some(v) = value {
            self.put(key, v);
        }
    }

    /// The fields whose key starts with `prefix.`, the prefix removed.
    pub(crate) fn sub(&self, prefix: &str) -> Record {
        let p = format!("{prefix}.");
        Record {
            fields: self
                .fields
                .iter()
                .filter_map(|(k, v)| Some((k.strip_prefix(&p)?.to_owned(), v.clone())))
                .collect(),
        }
    }

    /// Adds every field of `other` under `prefix.`.
    pub(crate) fn put_sub(&mut self, prefix: &str, other: Record) {
        for (k, v) in other.fields {
            self.fields.push((format!("{prefix}.{k}"), v));
        }
    }

    /// The value of `key` (the last one, if given twice).
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `key` parsed; absent or malformed is `None` (a value from another build that this one
    /// cannot read is unknown, not an error that loses the rest of the record).
    pub(crate) fn parse<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.get(key)?.parse().ok()
    }

    /// Every field, in order.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether the record has any field.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The distinct first components of the keys under `prefix.` that are numbers, in order:
    /// the indices of a list written as `prefix.0.…`, `prefix.1.…`.
    pub(crate) fn indices(&self, prefix: &str) -> Vec<usize> {
        let mut seen: Vec<usize> = self
            .sub(prefix)
            .fields
            .iter()
            .filter_map(|(k, _)| k.split('.').next()?.parse().ok())
            .collect();
        seen.sort_unstable();
        seen.dedup();
        seen
    }

    /// The fields as a map of numbers (for `health.*`); fields that are not numbers are left
    /// out.
    pub(crate) fn numbers(&self) -> BTreeMap<String, f64> {
        self.fields
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.parse().ok()?)))
            .collect()
    }

    /// The encoded fields, space-separated (no leading word, no newline).
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.fields {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(k);
            out.push('=');
            escape_into(&mut out, v);
        }
        out
    }

    /// Decodes fields written by [`Record::encode`]. A field without `=` or with a broken
    /// escape is skipped, not fatal: the rest of the record still counts.
    pub(crate) fn decode(line: &str) -> Record {
        let mut r = Record::new();
        for field in line.split(' ').filter(|f| !f.is_empty()) {
            let Some((k, v)) = field.split_once('=') else {
                continue;
            };
            if let Some(v) = unescape(v) {
                r.fields.push((k.to_owned(), v));
            }
        }
        r
    }
}

fn escape_into(out: &mut String, v: &str) {
    for b in v.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn unescape(v: &str) -> Option<String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn values_with_spaces_newlines_and_percent_survive() {
        let mut r = Record::new();
        r.put("reason", "could not execute /srv/my app: 100% gone\nreally");
        r.put("pid", 42);
        r.put_opt("missing", None::<u32>);
        let line = r.encode();
        assert!(!line.contains('\n'));
        assert_eq!(line.split(' ').count(), 2, "{line}");
        let back = Record::decode(&line);
        assert_eq!(back, r);
        assert_eq!(back.parse::<u32>("pid"), Some(42));
        assert_eq!(back.get("missing"), None);
    }

    #[test]
    fn garbage_is_skipped_not_fatal() {
        let r = Record::decode("a=1 junk b=%zz c=%4 d=%41 =x  e=");
        assert_eq!(r.get("a"), Some("1"));
        assert_eq!(r.get("b"), None);
        assert_eq!(r.get("c"), None);
        assert_eq!(r.get("d"), Some("A"));
        assert_eq!(r.get("e"), Some(""));
        assert_eq!(r.parse::<u32>("e"), None);
        // Invalid UTF-8 once unescaped.
        assert_eq!(Record::decode("x=%FF").get("x"), None);
    }

    #[test]
    fn nested_keys_and_lists() {
        let mut inner = Record::new();
        inner.put("error_rate", 0.5);
        inner.put("requests", 10);
        let mut r = Record::new();
        r.put_sub("health", inner);
        for (i, n) in ["http", "admin"].iter().enumerate() {
            let mut l = Record::new();
            l.put("name", n);
            r.put_sub(&format!("listener.{i}"), l);
        }
        let back = Record::decode(&r.encode());
        let health = back.sub("health").numbers();
        assert_eq!(health.get("error_rate"), Some(&0.5));
        assert_eq!(health.len(), 2);
        assert_eq!(back.indices("listener"), vec![0, 1]);
        assert_eq!(back.sub("listener.1").get("name"), Some("admin"));
        assert!(back.sub("nothing").is_empty());
    }

    proptest! {
        #[test]
        fn any_string_round_trips(v in any::<String>(), k in "[a-z_.0-9]{1,12}") {
            let mut r = Record::new();
            r.put(k.clone(), &v);
            let line = r.encode();
            prop_assert!(!line.contains('\n') && !line.contains('\r'));
            let back = Record::decode(&line);
            prop_assert_eq!(back.get(&k), Some(v.as_str()));
        }
    }
}
