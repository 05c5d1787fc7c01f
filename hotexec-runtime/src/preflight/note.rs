//! The ELF note `#[hotexec::main]` puts in every hotexec binary, readable without running it:
//! which hotexec built it, which hand-over protocol versions it can be started by, its
//! connection hand-off wire version, and which app and build it is.
//!
//! The note is a `#[used]` static in section `.note.hotexec` (type `SHT_NOTE`, allocated, so it
//! survives `strip`), emitted by the macro into the app's own crate — a static of this crate
//! would not be linked into the binary unless something referenced it:
//!
//! ```text
//! namesz = 8, descsz = 128, type = 1 (NT_HOTEXEC_VERSIONS), name = "hotexec\0"
//! desc (little endian):
//!   0   u8        format of this desc (1)
//!   1   u8        0
//!   2   u16       lowest hand-over protocol version it can be started by
//!   4   u16       highest
//!   6   u16       connection hand-off wire version
//!   8   [u8; 24]  hotexec version, NUL padded
//!   32  [u8; 48]  the app: "<package name> <package version>" at build time, NUL padded
//!   80  [u8; 48]  HOTEXEC_BUILD_ID at build time (a commit, a CI run), NUL padded, or empty
//! ```

use std::fmt;
use std::ops::RangeInclusive;

pub use crate::handover::{HANDOVER_MIN, HANDOVER_VERSION};
/// The owner name of the note.
pub(crate) const OWNER: &[u8] = b"hotexec";
/// The note's type.
pub(crate) const NT_HOTEXEC_VERSIONS: u32 = 1;
/// The desc's format.
const FORMAT: u8 = 1;
const DESC_LEN: usize = 128;
const VERSION_AT: usize = 8;
const APP_AT: usize = 32;
const BUILD_AT: usize = 80;
const FIELD_END: [usize; 3] = [APP_AT, BUILD_AT, DESC_LEN];

/// The note as it lies in the binary. Built at compile time by the code `#[hotexec::main]`
/// generates (`hotexec::__private::ElfNote::new(..)`); not an API.
#[doc(hidden)]
#[repr(C, align(4))]
pub struct ElfNote {
    namesz: u32,
    descsz: u32,
    n_type: u32,
    name: [u8; 8],
    desc: [u8; DESC_LEN],
}

/// Copies `s` into `out[at..end]`, cut to fit (at a byte: the field is only read back as
/// lossy UTF-8).
const fn put(mut out: [u8; DESC_LEN], at: usize, end: usize, s: &str) -> [u8; DESC_LEN] {
    let b = s.as_bytes();
    let mut i = 0;
    // One byte of the field stays NUL, so a full field still ends.
    while i < b.len() && at + i < end - 1 {
        out[at + i] = b[i];
        i += 1;
    }
    out
}

impl ElfNote {
    /// The note of an app (`name`, `version`: its package's) and a build label.
    pub const fn new(name: &str, version: &str, build: &str) -> ElfNote {
        let mut desc = [0u8; DESC_LEN];
        desc[0] = FORMAT;
        let min = HANDOVER_MIN.to_le_bytes();
        let max = HANDOVER_VERSION.to_le_bytes();
        let wire = crate::handoff::VERSION.to_le_bytes();
        desc[2] = min[0];
        desc[3] = min[1];
        desc[4] = max[0];
        desc[5] = max[1];
        desc[6] = wire[0];
        desc[7] = wire[1];
        desc = put(desc, VERSION_AT, APP_AT, env!("CARGO_PKG_VERSION"));
        desc = put(desc, APP_AT, BUILD_AT, name);
        // "name version": the version after the name and one space, as far as it fits.
        let mut n = 0;
        while n < name.len() && APP_AT + n < BUILD_AT - 1 {
            n += 1;
        }
        if n == 0 {
            desc = put(desc, APP_AT, BUILD_AT, version);
        } else if !version.is_empty() && APP_AT + n < BUILD_AT - 2 {
            desc[APP_AT + n] = b' ';
            desc = put(desc, APP_AT + n + 1, BUILD_AT, version);
        }
        desc = put(desc, BUILD_AT, DESC_LEN, build);
        ElfNote {
            namesz: OWNER.len() as u32 + 1,
            descsz: DESC_LEN as u32,
            n_type: NT_HOTEXEC_VERSIONS,
            name: *b"hotexec\0",
            desc,
        }
    }

    /// The note's bytes as a linker lays them out (for tests).
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&self.namesz.to_ne_bytes());
        out.extend_from_slice(&self.descsz.to_ne_bytes());
        out.extend_from_slice(&self.n_type.to_ne_bytes());
        out.extend_from_slice(&self.name);
        out.extend_from_slice(&self.desc);
        out
    }
}

/// What a binary's hotexec note says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// The hotexec version that built it.
    pub hotexec: String,
    /// The hand-over protocol versions it can be started by.
    pub handover: RangeInclusive<u16>,
    /// Its connection hand-off wire version.
    pub handoff_wire: u16,
    /// `<package> <version>` of the app.
    pub app: String,
    /// `HOTEXEC_BUILD_ID` when it was built, or empty.
    pub build: String,
}

impl Note {
    /// Reads the desc of a hotexec note.
    pub(crate) fn parse(desc: &[u8]) -> Result<Note, String> {
        if desc.len() < DESC_LEN {
            return Err(format!(
                "its hotexec note is {} bytes, shorter than the {DESC_LEN} of format {FORMAT}",
                desc.len()
            ));
        }
        if desc[0] != FORMAT {
            return Err(format!(
                "its hotexec note is in format {}; this build reads format {FORMAT} (a newer hotexec built it)",
                desc[0]
            ));
        }
        let u16_at = |i: usize| u16::from_le_bytes([desc[i], desc[i + 1]]);
        let (min, max) = (u16_at(2), u16_at(4));
        if min > max {
            return Err(format!(
                "its hotexec note says hand-over protocol {min} to {max}: an empty range"
            ));
        }
        let text = |at: usize, end: usize| {
            let field = &desc[at..end];
            let len = field.iter().position(|b| *b == 0).unwrap_or(field.len());
            String::from_utf8_lossy(&field[..len]).into_owned()
        };
        Ok(Note {
            hotexec: text(VERSION_AT, FIELD_END[0]),
            handover: min..=max,
            handoff_wire: u16_at(6),
            app: text(APP_AT, FIELD_END[1]),
            build: text(BUILD_AT, FIELD_END[2]),
        })
    }

    /// Whether a generation speaking `version` can start this binary.
    pub fn accepts(&self, version: u16) -> bool {
        self.handover.contains(&version)
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hotexec {}", self.hotexec)?;
        if !self.app.is_empty() {
            write!(f, ", app {}", self.app)?;
        }
        if !self.build.is_empty() {
            write!(f, ", build {}", self.build)?;
        }
        let (a, b) = (self.handover.start(), self.handover.end());
        if a == b {
            write!(f, ", hand-over protocol {a}")?;
        } else {
            write!(f, ", hand-over protocol {a}-{b}")?;
        }
        write!(f, ", hand-off wire {}", self.handoff_wire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_reads_back() {
        let note = ElfNote::new("http", "1.2.3", "abc123");
        let bytes = note.bytes();
        assert_eq!(bytes.len(), 12 + 8 + DESC_LEN);
        assert_eq!(&bytes[12..20], b"hotexec\0");
        let n = Note::parse(&bytes[20..]).unwrap();
        assert_eq!(n.hotexec, env!("CARGO_PKG_VERSION"));
        assert_eq!(n.app, "http 1.2.3");
        assert_eq!(n.build, "abc123");
        assert_eq!(n.handover, HANDOVER_MIN..=HANDOVER_VERSION);
        assert!(n.accepts(HANDOVER_VERSION));
        assert!(!n.accepts(HANDOVER_VERSION + 1));
        assert_eq!(
            n.to_string(),
            format!(
                "hotexec {}, app http 1.2.3, build abc123, hand-over protocol 1, hand-off wire 1",
                env!("CARGO_PKG_VERSION")
            )
        );
    }

    #[test]
    fn long_names_are_cut_and_fields_stay_apart() {
        let long = "x".repeat(200);
        let n = Note::parse(&ElfNote::new(&long, "9.9.9", &long).bytes()[20..]).unwrap();
        assert_eq!(n.app.len(), BUILD_AT - APP_AT - 1);
        assert_eq!(n.build.len(), DESC_LEN - BUILD_AT - 1);
        assert!(n.app.chars().all(|c| c == 'x'));
        let empty = Note::parse(&ElfNote::new("", "", "").bytes()[20..]).unwrap();
        assert_eq!((empty.app.as_str(), empty.build.as_str()), ("", ""));
    }

    #[test]
    fn bad_descs_are_refused() {
        let good = ElfNote::new("a", "1", "").bytes()[20..].to_vec();
        assert!(Note::parse(&good[..10]).unwrap_err().contains("shorter"));
        let mut newer = good.clone();
        newer[0] = 2;
        assert!(Note::parse(&newer).unwrap_err().contains("format 2"));
        let mut empty_range = good;
        empty_range[2] = 5;
        assert!(
            Note::parse(&empty_range)
                .unwrap_err()
                .contains("empty range")
        );
    }
}
