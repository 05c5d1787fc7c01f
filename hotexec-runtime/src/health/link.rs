//! What the health gate says over the generation link (`link.rs`): the new generation's
//! [`Report`]s to the old one during its probation, and the old one's verdict back.
//!
//! | kind | from | payload |
//! |---|---|---|
//! | [`REPORT`] | new → old | a [`Report`] in its own checked encoding (`wire.rs`) |
//! | [`VERDICT`] | old → new | `0`: committed; `1`, the old generation's pid (u32 LE), the reason (UTF-8): rejected |
//!
//! A new generation reports from just before it says READY (so the old one knows, when it reads
//! READY, whether the new one counts what it serves) every [`REPORT_INTERVAL`] until it hears
//! the verdict. Rejected, it drains and stops without a word to anyone else: the old generation
//! never stopped serving, and the pid file, the keeper and the service manager still name it.

use std::time::Duration;

use super::Report;
use crate::link::{FIRST_OTHER, Record};

/// A health report (new → old).
pub(crate) const REPORT: u16 = FIRST_OTHER;
/// The verdict (old → new).
pub(crate) const VERDICT: u16 = FIRST_OTHER + 1;
/// How often a new generation on probation reports.
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_millis(100);
/// Longest reason carried in a verdict.
const MAX_REASON: usize = 2048;

/// The old generation's decision, as the new one hears it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Committed: it serves alone from now on.
    Committed,
    /// Not committed: `by` (the old generation) serves on; the new one drains and stops.
    Rejected { by: u32, reason: String },
}

/// A health record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HealthRecord {
    Report(Report),
    Verdict(Verdict),
}

impl HealthRecord {
    pub(crate) fn to_record(&self) -> Record {
        match self {
            HealthRecord::Report(r) => Record::Other {
                kind: REPORT,
                bytes: r.encode(),
            },
            HealthRecord::Verdict(Verdict::Committed) => Record::Other {
                kind: VERDICT,
                bytes: vec![0],
            },
            HealthRecord::Verdict(Verdict::Rejected { by, reason }) => {
                let mut bytes = vec![1];
                bytes.extend_from_slice(&by.to_le_bytes());
                let mut end = reason.len().min(MAX_REASON);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                bytes.extend_from_slice(&reason.as_bytes()[..end]);
                Record::Other {
                    kind: VERDICT,
                    bytes,
                }
            }
        }
    }

    /// The health record in `record`: `None` if it is not one of ours, `Some(Err)` if it is
    /// one but malformed (the message names what is wrong).
    pub(crate) fn from_record(record: &Record) -> Option<Result<HealthRecord, String>> {
        let Record::Other { kind, bytes } = record else {
            return None;
        };
        match *kind {
            REPORT => Some(
                Report::decode(bytes)
                    .map(HealthRecord::Report)
                    .map_err(|e| e.to_string()),
            ),
            VERDICT => Some(match bytes.split_first() {
                Some((0, [])) => Ok(HealthRecord::Verdict(Verdict::Committed)),
                Some((1, rest)) if rest.len() >= 4 && rest.len() - 4 <= MAX_REASON => {
                    let by = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                    match std::str::from_utf8(&rest[4..]) {
                        Ok(reason) => Ok(HealthRecord::Verdict(Verdict::Rejected {
                            by,
                            reason: reason.to_owned(),
                        })),
                        Err(_) => Err("a health verdict whose reason is not UTF-8".into()),
                    }
                }
                _ => Err(format!(
                    "a health verdict of {} malformed bytes",
                    bytes.len()
                )),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Counts;

    #[test]
    fn records_round_trip_through_the_link_encoding() {
        let report = Report {
            counts: Counts {
                success: 10,
                server_error: 1,
                ..Counts::default()
            },
            uptime: Duration::from_millis(300),
            counting: true,
            veto: None,
        };
        for r in [
            HealthRecord::Report(report),
            HealthRecord::Verdict(Verdict::Committed),
            HealthRecord::Verdict(Verdict::Rejected {
                by: 4242,
                reason: "5.0% of its requests got a bad answer".into(),
            }),
        ] {
            let record = r.to_record();
            let bytes = match &record {
                Record::Other { bytes, .. } => bytes.clone(),
                other => panic!("{other:?}"),
            };
            assert!(!bytes.is_empty());
            assert_eq!(HealthRecord::from_record(&record), Some(Ok(r)));
        }
    }

    #[test]
    fn garbage_is_refused_and_other_kinds_are_not_ours() {
        let other = Record::Other {
            kind: VERDICT + 1,
            bytes: vec![1, 2],
        };
        assert_eq!(HealthRecord::from_record(&other), None);
        assert_eq!(HealthRecord::from_record(&Record::Stop), None);
        for bytes in [
            vec![],
            vec![0, 0],
            vec![1, 1, 2],
            vec![2],
            vec![1, 0, 0, 0, 0, 0xff],
        ] {
            let r = Record::Other {
                kind: VERDICT,
                bytes,
            };
            assert!(
                matches!(HealthRecord::from_record(&r), Some(Err(_))),
                "{r:?}"
            );
        }
        let torn = Record::Other {
            kind: REPORT,
            bytes: b"HXHR".to_vec(),
        };
        let e = HealthRecord::from_record(&torn).unwrap().unwrap_err();
        assert!(e.contains("health report refused"), "{e}");
    }
}
