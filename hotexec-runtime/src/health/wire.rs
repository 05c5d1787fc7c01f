//! The encoding of a [`Report`], version [`VERSION`]: how a new generation's counts travel to
//! the old one over the generation link. The other side may be a broken or hostile build, so
//! every record is checked, and anything that is not exactly a record decodes to an error,
//! never to a panic or to numbers read from garbage.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "HXHR"
//! 4       1     version (1)
//! 5       2     body length, little endian (at most MAX_BODY)
//! 7       n     body:
//!                 uptime in ms                      varint
//!                 flags (bit 0: counting)           varint, other bits 0
//!                 9 counts (Slot order)             varint each
//!                 veto length, 0 when none          varint (at most MAX_VETO)
//!                 veto, UTF-8                       bytes
//!                 fields of a later version 1       ignored
//! 7+n     4     FNV-1a 32 of bytes 0..7+n, little endian
//! ```
//!
//! Varints are LEB128 (7 bits a byte, low first, at most 10 bytes for a u64). A later build
//! may append fields to the body without a new version; a reader ignores what follows the
//! fields it knows. The checksum catches a torn or mixed-up record, not a forged one: the old
//! generation judges whatever the new one says, and a new generation that lies about its
//! health is beyond what any gate can catch.

use std::fmt;
use std::time::Duration;

use super::counters::SLOTS;
use super::{Counts, Report};

/// First bytes of a report.
pub(crate) const MAGIC: [u8; 4] = *b"HXHR";
/// The version this build writes and reads.
pub(crate) const VERSION: u8 = 1;
/// Longest body accepted.
pub(crate) const MAX_BODY: usize = 2048;
/// Longest veto reason carried (longer ones are clipped by [`clip`]).
pub(crate) const MAX_VETO: usize = 1024;
const HEADER: usize = 7;
const TRAILER: usize = 4;

/// Why bytes are not a report. The message names what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DecodeError(String);

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "health report refused: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

/// `reason` cut to [`MAX_VETO`] bytes, at a character boundary.
pub(crate) fn clip(mut reason: String) -> String {
    if reason.len() > MAX_VETO {
        let mut end = MAX_VETO - '…'.len_utf8();
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
        reason.push('…');
    }
    reason
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// FNV-1a, 32 bits: a few lines, no table, and enough to tell a torn record from a whole one.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

impl Report {
    /// The record of this report (see the module docs).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(64);
        put_varint(
            &mut body,
            u64::try_from(self.uptime.as_millis()).unwrap_or(u64::MAX),
        );
        put_varint(&mut body, u64::from(self.counting));
        for n in self.counts.to_array() {
            put_varint(&mut body, n);
        }
        let veto = self.veto.clone().map(clip).unwrap_or_default();
        put_varint(&mut body, veto.len() as u64);
        body.extend_from_slice(veto.as_bytes());
        let mut out = Vec::with_capacity(HEADER + body.len() + TRAILER);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        // At most 2 + 10 * 11 + MAX_VETO bytes: within MAX_BODY and a u16.
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
        out.extend_from_slice(&body);
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Decodes exactly one record: `buf` must hold it and nothing else.
    pub(crate) fn decode(buf: &[u8]) -> Result<Report, DecodeError> {
        let err = |why: String| Err(DecodeError(why));
        if buf.len() < HEADER + TRAILER {
            return err(format!(
                "{} bytes, shorter than the {} of an empty record",
                buf.len(),
                HEADER + TRAILER
            ));
        }
        if buf[0..4] != MAGIC {
            return err(format!(
                "magic {:02x?}, expected {:02x?} (\"HXHR\")",
                &buf[0..4],
                MAGIC
            ));
        }
        if buf[4] != VERSION {
            return err(format!(
                "version {}; this build reads version {VERSION}",
                buf[4]
            ));
        }
        let body_len = usize::from(u16::from_le_bytes([buf[5], buf[6]]));
        if body_len > MAX_BODY {
            return err(format!("a body of {body_len} bytes, more than {MAX_BODY}"));
        }
        let whole = HEADER + body_len + TRAILER;
        if buf.len() != whole {
            return err(format!(
                "{} bytes where the header announces {whole} ({})",
                buf.len(),
                if buf.len() < whole {
                    "truncated"
                } else {
                    "bytes after the record"
                }
            ));
        }
        let (signed, trailer) = buf.split_at(HEADER + body_len);
        let sum = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        if fnv1a(signed) != sum {
            return err("checksum mismatch: the record is torn or garbled".into());
        }
        let mut body = Body {
            buf: &signed[HEADER..],
            at: 0,
        };
        let uptime = Duration::from_millis(body.varint("uptime")?);
        let counting = match body.varint("flags")? {
            0 => false,
            1 => true,
            other => {
                return err(format!(
                    "flags {other:#x}: only bit 0 (counting) is defined"
                ));
            }
        };
        let mut counts = [0u64; SLOTS];
        for (i, c) in counts.iter_mut().enumerate() {
            *c = body.varint(COUNT_NAMES[i])?;
        }
        let veto_len = body.varint("veto length")?;
        let veto_len = usize::try_from(veto_len).unwrap_or(usize::MAX);
        if veto_len > MAX_VETO {
            return err(format!("a veto of {veto_len} bytes, more than {MAX_VETO}"));
        }
        let veto_bytes = body.bytes(veto_len, "veto")?;
        let veto = match std::str::from_utf8(veto_bytes) {
            Ok("") => None,
            Ok(s) => Some(s.to_owned()),
            Err(e) => return err(format!("veto: not UTF-8 ({e})")),
        };
        // What follows is a later version-1 field this build does not know: ignored.
        Ok(Report {
            counts: Counts::from_array(counts),
            uptime,
            counting,
            veto,
        })
    }
}

/// Names of the counts in the body, for messages (in `Slot` order).
const COUNT_NAMES: [&str; SLOTS] = [
    "1xx count",
    "2xx count",
    "3xx count",
    "4xx count",
    "5xx count",
    "panic count",
    "error count",
    "connection count",
    "failed connection count",
];

struct Body<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Body<'_> {
    fn varint(&mut self, field: &str) -> Result<u64, DecodeError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.at) else {
                return Err(DecodeError(format!(
                    "{field}: the body ends inside it (truncated)"
                )));
            };
            self.at += 1;
            let bits = u64::from(b & 0x7f);
            // The 10th byte may only carry the top bit of a u64.
            if i == 9 && (b & 0x7e) != 0 {
                return Err(DecodeError(format!("{field}: more than 64 bits")));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError(format!("{field}: more than 10 varint bytes")))
    }

    fn bytes(&mut self, n: usize, field: &str) -> Result<&[u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(DecodeError(format!(
                "{field}: {n} bytes announced, {} left in the body (truncated)",
                self.buf.len() - self.at
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Report {
        Report {
            counts: Counts {
                informational: 1,
                success: 123_456,
                redirection: 3,
                client_error: 44,
                server_error: 5_000,
                panics: 6,
                errors: 7,
                connections: 8_000,
                connections_failed: u64::MAX,
            },
            uptime: Duration::from_millis(1_234),
            counting: true,
            veto: Some("check \"db\" failed: no answer — timeout".into()),
        }
    }

    #[test]
    fn round_trip_and_compact() {
        let r = sample();
        let bytes = r.encode();
        assert_eq!(Report::decode(&bytes).unwrap(), r);
        let quiet = Report::default();
        let b = quiet.encode();
        assert_eq!(Report::decode(&b).unwrap(), quiet);
        // Header, 12 one-byte varints, checksum.
        assert_eq!(b.len(), 7 + 12 + 4);
    }

    #[test]
    fn every_truncation_and_every_extension_is_refused() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            let e = Report::decode(&bytes[..n]).unwrap_err();
            assert!(!e.to_string().is_empty());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        let e = Report::decode(&longer).unwrap_err().to_string();
        assert!(e.contains("bytes after the record"), "{e}");
    }

    #[test]
    fn each_header_fault_is_named() {
        let bytes = sample().encode();
        let with = |i: usize, v: u8| {
            let mut b = bytes.clone();
            b[i] = v;
            Report::decode(&b).unwrap_err().to_string()
        };
        assert!(with(0, b'X').contains("magic"));
        assert!(with(4, 2).contains("version 2; this build reads version 1"));
        assert!(with(6, 0xff).contains("more than 2048"));
        let last = bytes.len() - 1;
        assert!(with(last, bytes[last] ^ 1).contains("checksum"));
        // A flipped body byte is caught by the checksum before it is read as a number.
        assert!(with(9, bytes[9] ^ 0x40).contains("checksum"));
    }

    /// A body that is well framed (right length, right checksum) but wrong inside.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
        out.extend_from_slice(body);
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    #[test]
    fn well_framed_garbage_is_refused_by_field() {
        let e = |body: &[u8]| Report::decode(&framed(body)).unwrap_err().to_string();
        assert!(e(&[]).contains("uptime"));
        assert!(e(&[0, 2]).contains("flags 0x2"));
        assert!(e(&[0, 1, 5, 5]).contains("3xx count"));
        let mut overlong = vec![0, 1];
        overlong.extend([0xff; 10]);
        assert!(e(&overlong).contains("1xx count: more than 64 bits"));
        let mut body = vec![0, 0];
        body.extend([0; SLOTS]);
        let mut too_long_veto = body.clone();
        put_varint(&mut too_long_veto, MAX_VETO as u64 + 1);
        assert!(e(&too_long_veto).contains("veto of 1025 bytes"));
        let mut short_veto = body.clone();
        short_veto.extend([3, b'a']);
        assert!(e(&short_veto).contains("veto: 3 bytes announced, 1 left"));
        let mut bad_utf8 = body.clone();
        bad_utf8.extend([2, 0xc3, 0x28]);
        assert!(e(&bad_utf8).contains("not UTF-8"));
        // A later field of version 1 is ignored.
        let mut later = body.clone();
        later.extend([0, 42, 42]);
        assert_eq!(Report::decode(&framed(&later)).unwrap(), Report::default());
        // The largest u64 in ten bytes is fine.
        let mut max = vec![0, 0];
        max.extend([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
        max.extend([0; SLOTS]);
        let r = Report::decode(&framed(&max)).unwrap();
        assert_eq!(r.counts.informational, u64::MAX);
    }

    #[test]
    fn a_long_veto_is_clipped_at_a_character() {
        let r = Report {
            veto: Some("é".repeat(MAX_VETO)),
            ..Report::default()
        };
        let back = Report::decode(&r.encode()).unwrap();
        let veto = back.veto.unwrap();
        assert!(
            veto.len() <= MAX_VETO && veto.ends_with('…'),
            "{}",
            veto.len()
        );
    }

    fn report() -> impl Strategy<Value = Report> {
        (
            proptest::array::uniform9(any::<u64>()),
            any::<u64>(),
            any::<bool>(),
            proptest::option::of(".{0,40}"),
        )
            .prop_map(|(c, ms, counting, veto)| Report {
                counts: Counts::from_array(c),
                uptime: Duration::from_millis(ms),
                counting,
                veto: veto.filter(|v| !v.is_empty()),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn any_report_round_trips(r in report()) {
            prop_assert_eq!(Report::decode(&r.encode()).unwrap(), r);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Report::decode(&bytes);
        }

        #[test]
        fn a_corrupted_record_is_refused(r in report(), i in any::<prop::sample::Index>(), flip in 1u8..) {
            let mut bytes = r.encode();
            let at = i.index(bytes.len());
            bytes[at] ^= flip;
            // One changed byte: refused (FNV-1a catches every single-byte change).
            prop_assert!(Report::decode(&bytes).is_err());
        }

        #[test]
        fn well_framed_random_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..120)) {
            let _ = Report::decode(&framed(&body));
        }
    }
}
