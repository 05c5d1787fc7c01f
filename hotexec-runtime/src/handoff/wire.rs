//! The wire format of the hand-off channel, version [`VERSION`]: one `SOCK_SEQPACKET` message per
//! record, so a record is never split nor merged with the next.
//!
//! ```text
//! offset size  field
//!      0    4  magic        b"HXHO"
//!      4    2  version      u16 little-endian (1)
//!      6    1  kind         1 HELLO, 2 CONN, 3 ACK, 4 NAK
//!      7    1  reserved     0
//!      8    8  id           u64 LE: the connection (CONN, ACK, NAK); the sender's pid (HELLO)
//!     16    4  unread_len   u32 LE: bytes already read from the connection, not yet processed
//!     20    4  state_len    u32 LE: the application's state blob (NAK: the reason, UTF-8)
//!     24    …  unread bytes, then state bytes; nothing after them
//! ```
//!
//! A CONN record carries exactly one fd (`SCM_RIGHTS`); every other kind carries none. Anything
//! else — a wrong magic, an unknown version or kind, lengths over the limits or not matching the
//! record's size, a missing or extra fd — is refused by [`decode`] with an error naming the field.

use std::fmt;

/// First bytes of every record.
pub const MAGIC: [u8; 4] = *b"HXHO";
/// The version this build speaks. A peer speaking another one is not handed anything.
pub const VERSION: u16 = 1;
/// Size of the fixed header.
pub const HEADER: usize = 24;
/// Most bytes already read but not processed that one connection may carry.
pub const MAX_UNREAD: usize = 64 * 1024;
/// Largest application state blob of one connection.
pub const MAX_STATE: usize = 64 * 1024;
/// Largest record: what the channel's buffers are sized for.
pub const MAX_RECORD: usize = HEADER + MAX_UNREAD + MAX_STATE;

/// What a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// New → old, once, before the new generation reports ready: "I take hand-offs, version N".
    Hello,
    /// Old → new: one connection (its fd rides along), its unread bytes and its state.
    Conn,
    /// New → old: connection `id` is the new generation's now; the old one closes its copy.
    Ack,
    /// New → old: connection `id` was not taken (the reason rides in the state field); the old
    /// generation keeps it.
    Nak,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Hello => 1,
            Kind::Conn => 2,
            Kind::Ack => 3,
            Kind::Nak => 4,
        }
    }

    fn from_code(c: u8) -> Option<Kind> {
        Some(match c {
            1 => Kind::Hello,
            2 => Kind::Conn,
            3 => Kind::Ack,
            4 => Kind::Nak,
            _ => return None,
        })
    }
}

/// A decoded record (the fd of a CONN travels beside it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// What it is.
    pub kind: Kind,
    /// Connection id, or the sender's pid for HELLO.
    pub id: u64,
    /// Bytes read from the connection but not processed.
    pub unread: Vec<u8>,
    /// The application's state blob (NAK: the reason).
    pub state: Vec<u8>,
}

/// Why a record was refused. The message names the field at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError {
    /// The connection id, when the header was readable that far (so the sender can be told).
    pub id: Option<u64>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "hand-off record refused: {}", self.reason)
    }
}

impl std::error::Error for WireError {}

/// Encodes a record. Lengths over the limits are the caller's to refuse first (`check_sizes`).
pub fn encode(kind: Kind, id: u64, unread: &[u8], state: &[u8]) -> Vec<u8> {
    encode_as(VERSION, kind, id, unread, state)
}

/// [`encode`] in another protocol version's header: what a build speaking `version` would send
/// (for test fixtures that play such a build).
pub fn encode_as(version: u16, kind: Kind, id: u64, unread: &[u8], state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + unread.len() + state.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.push(kind.code());
    out.push(0);
    out.extend_from_slice(&id.to_le_bytes());
    out.extend_from_slice(&(unread.len() as u32).to_le_bytes());
    out.extend_from_slice(&(state.len() as u32).to_le_bytes());
    out.extend_from_slice(unread);
    out.extend_from_slice(state);
    out
}

/// Refuses an unread buffer or a state blob over the limits, naming which.
pub fn check_sizes(unread: usize, state: usize) -> Result<(), String> {
    if unread > MAX_UNREAD {
        return Err(format!(
            "{unread} unread bytes: at most {MAX_UNREAD} can be handed off with a connection"
        ));
    }
    if state > MAX_STATE {
        return Err(format!(
            "a state blob of {state} bytes: at most {MAX_STATE} can be handed off with a connection"
        ));
    }
    Ok(())
}

/// The connection id of `buf` if its header is readable as a CONN record of this version,
/// whatever else is wrong with it (truncated, its fd lost): enough to refuse that one
/// connection by name instead of giving up the channel.
pub fn conn_id(buf: &[u8]) -> Option<u64> {
    (buf.len() >= HEADER
        && buf[0..4] == MAGIC
        && u16::from_le_bytes([buf[4], buf[5]]) == VERSION
        && Kind::from_code(buf[6]) == Some(Kind::Conn))
    .then(|| u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes")))
}

/// Decodes one record of `buf` that arrived with `fds` fds. Pure, so it can be fuzzed.
pub fn decode(buf: &[u8], fds: usize) -> Result<Record, WireError> {
    let refuse = |id: Option<u64>, reason: String| WireError { id, reason };
    if buf.len() < HEADER {
        return Err(refuse(
            None,
            format!("{} bytes, shorter than the {HEADER}-byte header", buf.len()),
        ));
    }
    if buf[0..4] != MAGIC {
        return Err(refuse(
            None,
            format!(
                "magic {:02x?} is not {:?}: not a hotexec hand-off channel",
                &buf[0..4],
                std::str::from_utf8(&MAGIC).unwrap_or("HXHO")
            ),
        ));
    }
    let version = u16::from_le_bytes([buf[4], buf[5]]);
    if version != VERSION {
        return Err(refuse(
            None,
            format!("protocol version {version}; this build speaks version {VERSION}"),
        ));
    }
    let kind = Kind::from_code(buf[6])
        .ok_or_else(|| refuse(None, format!("unknown record kind {}", buf[6])))?;
    let id = u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes"));
    let at = |r: String| refuse(Some(id), r);
    if buf[7] != 0 {
        return Err(at(format!("reserved byte is {}, not 0", buf[7])));
    }
    let unread_len = u32::from_le_bytes(buf[16..20].try_into().expect("4 bytes")) as usize;
    let state_len = u32::from_le_bytes(buf[20..24].try_into().expect("4 bytes")) as usize;
    check_sizes(unread_len, state_len).map_err(at)?;
    if HEADER + unread_len + state_len != buf.len() {
        return Err(at(format!(
            "header announces {unread_len} unread and {state_len} state bytes, the record holds {} after the header",
            buf.len() - HEADER
        )));
    }
    let want_fds = usize::from(kind == Kind::Conn);
    if fds != want_fds {
        return Err(at(format!(
            "a {kind:?} record with {fds} fds attached (expected {want_fds})"
        )));
    }
    if kind != Kind::Conn && kind != Kind::Nak && (unread_len != 0 || state_len != 0) {
        return Err(at(format!("a {kind:?} record with a payload")));
    }
    let unread = buf[HEADER..HEADER + unread_len].to_vec();
    let state = buf[HEADER + unread_len..].to_vec();
    Ok(Record {
        kind,
        id,
        unread,
        state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let b = encode(Kind::Conn, 7, b"GET /", b"{\"n\":3}");
        assert_eq!(
            decode(&b, 1),
            Ok(Record {
                kind: Kind::Conn,
                id: 7,
                unread: b"GET /".to_vec(),
                state: b"{\"n\":3}".to_vec(),
            })
        );
        for kind in [Kind::Hello, Kind::Ack] {
            let r = decode(&encode(kind, 42, b"", b""), 0).unwrap();
            assert_eq!((r.kind, r.id), (kind, 42));
        }
        let nak = decode(&encode(Kind::Nak, 9, b"", b"no receiver"), 0).unwrap();
        assert_eq!(nak.state, b"no receiver");
    }

    #[test]
    fn garbage_is_refused_by_field() {
        let good = encode(Kind::Conn, 7, b"ab", b"cd");
        let mut cases: Vec<(Vec<u8>, usize, &str)> = vec![
            (b"hello".to_vec(), 1, "shorter than"),
            (vec![0; 64], 1, "magic"),
            (good.clone(), 0, "0 fds"),
            (good.clone(), 2, "2 fds"),
            (good[..good.len() - 1].to_vec(), 1, "the record holds"),
            ([good.as_slice(), b"x"].concat(), 1, "the record holds"),
            (encode(Kind::Hello, 1, b"", b""), 1, "1 fds"),
            (encode(Kind::Ack, 1, b"x", b""), 0, "payload"),
        ];
        let mut v = good.clone();
        v[4] = 9;
        cases.push((v, 1, "version 9"));
        let mut k = good.clone();
        k[6] = 77;
        cases.push((k, 1, "unknown record kind 77"));
        let mut big = good.clone();
        big[20..24].copy_from_slice(&(MAX_STATE as u32 + 1).to_le_bytes());
        cases.push((big, 1, "state blob"));
        let mut huge = good.clone();
        huge[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push((huge, 1, "unread bytes"));
        for (buf, fds, needle) in cases {
            let e = decode(&buf, fds).unwrap_err();
            assert!(e.to_string().contains(needle), "{needle:?} not in {e}");
        }
    }

    #[test]
    fn decode_never_panics_on_random_bytes() {
        use proptest::prelude::*;
        proptest!(|(buf in proptest::collection::vec(any::<u8>(), 0..200), fds in 0usize..3)| {
            let _ = decode(&buf, fds);
        });
    }
}
