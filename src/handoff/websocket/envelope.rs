//! What a WebSocket session hands over as its state: the application's state, and the request
//! it was upgraded by (method, URI, headers), so that an axum handler resumed in the next
//! generation sees the request it was written for (its extractors, its authentication).
//!
//! ```text
//! b"HXWS" | version u8 = 1 | head length u32 LE | head | the application's state
//! head: method NUL uri NUL (name NUL value NUL)*
//! ```
//!
//! The two generations of a service run builds that may differ: a version other than 1, or
//! anything malformed, is refused by name and the session is closed (going away: its client
//! reconnects) rather than resumed from a misread state.

const MAGIC: &[u8; 4] = b"HXWS";
const VERSION: u8 = 1;

/// The request a WebSocket was upgraded by, as far as a resumed handler needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Head {
    pub method: String,
    pub uri: String,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Encodes `head` (if any) and the application's `state`.
pub(crate) fn encode(head: Option<&Head>, state: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    if let Some(head) = head {
        for part in [head.method.as_bytes(), head.uri.as_bytes()] {
            h.extend_from_slice(part);
            h.push(0);
        }
        for (name, value) in &head.headers {
            h.extend_from_slice(name.as_bytes());
            h.push(0);
            h.extend_from_slice(value);
            h.push(0);
        }
    }
    let mut out = Vec::with_capacity(9 + h.len() + state.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(state);
    out
}

/// Decodes what [`encode`] made: the head (`None` if none was given) and the application's
/// state. Pure, so it can be fuzzed.
pub(crate) fn decode(bytes: &[u8]) -> Result<(Option<Head>, Vec<u8>), String> {
    if bytes.len() < 9 || &bytes[..4] != MAGIC {
        return Err("not a hotexec WebSocket session state (no HXWS header)".into());
    }
    if bytes[4] != VERSION {
        return Err(format!(
            "WebSocket session state version {}; this build reads version {VERSION}",
            bytes[4]
        ));
    }
    let len = u32::from_le_bytes(bytes[5..9].try_into().expect("4 bytes")) as usize;
    let rest = &bytes[9..];
    if len > rest.len() {
        return Err(format!(
            "the request head is said to be {len} bytes, only {} follow",
            rest.len()
        ));
    }
    let (h, state) = rest.split_at(len);
    if h.is_empty() {
        return Ok((None, state.to_vec()));
    }
    if h.last() != Some(&0) {
        return Err("the request head does not end with its separator".into());
    }
    let mut parts = h[..h.len() - 1].split(|b| *b == 0);
    let text = |p: Option<&[u8]>, what: &str| -> Result<String, String> {
        let p = p.ok_or_else(|| format!("the request head has no {what}"))?;
        String::from_utf8(p.to_vec()).map_err(|_| format!("the request {what} is not UTF-8"))
    };
    let method = text(parts.next(), "method")?;
    let uri = text(parts.next(), "URI")?;
    let mut headers = Vec::new();
    while let Some(name) = parts.next() {
        let name = text(Some(name), "header name")?;
        let value = parts
            .next()
            .ok_or_else(|| format!("header {name:?} has no value"))?;
        headers.push((name, value.to_vec()));
    }
    Ok((
        Some(Head {
            method,
            uri,
            headers,
        }),
        state.to_vec(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_and_without_a_head() {
        let head = Head {
            method: "GET".into(),
            uri: "/ws?room=7".into(),
            headers: vec![
                ("authorization".into(), b"Bearer x".to_vec()),
                ("x-bin".into(), vec![0xff, 1, 2]),
                ("empty".into(), Vec::new()),
            ],
        };
        assert_eq!(
            decode(&encode(Some(&head), b"count=3")),
            Ok((Some(head), b"count=3".to_vec()))
        );
        assert_eq!(decode(&encode(None, b"")), Ok((None, Vec::new())));
    }

    #[test]
    fn garbage_is_refused_by_name() {
        let good = encode(
            Some(&Head {
                method: "GET".into(),
                uri: "/".into(),
                headers: vec![],
            }),
            b"s",
        );
        let mut v2 = good.clone();
        v2[4] = 2;
        let mut long = good.clone();
        long[5..9].copy_from_slice(&1000u32.to_le_bytes());
        for (bytes, needle) in [
            (b"".to_vec(), "no HXWS"),
            (b"count=3".to_vec(), "no HXWS"),
            (v2, "version 2"),
            (long, "only"),
        ] {
            let e = decode(&bytes).unwrap_err();
            assert!(e.contains(needle), "{needle:?}: {e}");
        }
    }

    #[test]
    fn decode_never_panics() {
        use proptest::prelude::*;
        proptest!(|(bytes in proptest::collection::vec(any::<u8>(), 0..64))| {
            let _ = decode(&bytes);
            let mut framed = encode(None, b"");
            framed.truncate(5);
            framed.extend_from_slice(&bytes);
            let _ = decode(&framed);
        });
    }
}
