//! Session-ticket keys that hotexec manages: made in memory, rotated on a schedule, the previous
//! key kept for decryption, exported to the next generation and imported there.
//!
//! rustls's own ticketers (`rustls::crypto::aws_lc_rs::Ticketer`) keep their keys inside and cannot
//! hand them on, so every new generation would make new keys and every returning client would
//! pay a full handshake right after each upgrade. [`SessionTickets`] is a
//! [`ProducesTickets`] of our own whose keys can be [exported](SessionTickets::export) and
//! [imported](SessionTickets::import).
//!
//! # Rotation
//!
//! With a rotation period `P`, each key *encrypts* for `P` from its creation and *decrypts* for
//! `2P`; tickets are announced with a lifetime of `P`. So a ticket is accepted for its whole
//! announced lifetime whenever it was issued, and never longer than `2P` after its key was made
//! (which bounds what a stolen key can decrypt: forward secrecy is the reason for rotating at
//! all). A key is rotated out lazily, before the first ticket operation past its encrypting
//! window, and the times are wall-clock (Unix) times, so the schedule goes on unchanged in the
//! next generation. rustls's `TicketRotator` does the same with its own keys (and announces
//! `2P`, so some of its tickets are refused within their announced lifetime).
//!
//! # Tickets
//!
//! `key id (16) | nonce (24) | XChaCha20-Poly1305(plain) + tag (16)`, the key id as associated
//! data. Nonces are drawn at random for every ticket: XChaCha's 192-bit nonces make a
//! collision negligible whatever the number of tickets.
//!
//! # The exported form (version 1)
//!
//! `"HXTK" | version: u8 = 1 | period_ms: u64 | count: u8 (1 or 2) | count × (id: [u8; 16] |
//! created_unix_ms: u64 | key: [u8; 32])`, integers big-endian, newest key first. An import
//! that is not exactly this (another version, a wrong length, a count out of range, a key made
//! in the future, twice the same id) is refused whole, with the reason.

use std::fmt;
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rustls::crypto::SecureRandom;
use rustls::server::ProducesTickets;
use zeroize::Zeroizing;

/// The default rotation period: a new key every 6 hours, each accepted for 12 (rustls's own
/// ticketer rotates every 6 hours too).
pub const DEFAULT_ROTATION: Duration = Duration::from_secs(6 * 60 * 60);

/// The shortest rotation period (tickets announce their lifetime in whole seconds).
pub const MIN_ROTATION: Duration = Duration::from_secs(1);

/// The longest rotation period: TLS 1.3 caps a ticket's lifetime at 7 days (RFC 8446 §4.6.1).
pub const MAX_ROTATION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

const MAGIC: &[u8; 4] = b"HXTK";
const VERSION: u8 = 1;
const ID_LEN: usize = 16;
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 4 + 1 + 8 + 1;
const RECORD_LEN: usize = ID_LEN + 8 + KEY_LEN;
/// How far in the future an imported key's creation time may be (clocks of two processes on
/// one machine agree; this only absorbs a wall-clock step between export and import).
const FUTURE_SLACK_MS: u64 = 60_000;

/// One ticket key.
struct Key {
    id: [u8; ID_LEN],
    created_ms: u64,
    secret: Zeroizing<[u8; KEY_LEN]>,
}

impl Key {
    fn fresh(random: &dyn SecureRandom, now_ms: u64) -> Option<Key> {
        let mut key = Key {
            id: [0; ID_LEN],
            created_ms: now_ms,
            secret: Zeroizing::new([0; KEY_LEN]),
        };
        random.fill(&mut key.id).ok()?;
        random.fill(&mut key.secret[..]).ok()?;
        Some(key)
    }

    /// The cipher, made for one operation and wiped when dropped (`XChaCha20Poly1305` zeroizes
    /// its key on drop): the secret has one long-lived copy, in `secret`.
    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.secret).into())
    }

    fn encrypts_at(&self, now_ms: u64, period_ms: u64) -> bool {
        now_ms < self.created_ms.saturating_add(period_ms)
    }

    fn decrypts_at(&self, now_ms: u64, period_ms: u64) -> bool {
        now_ms < self.created_ms.saturating_add(period_ms.saturating_mul(2))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("Key")
            .field("id", &hex(&self.id[..4]))
            .field("created_ms", &self.created_ms)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Keys {
    current: Key,
    previous: Option<Key>,
}

/// Session-ticket keys managed in memory, rotated on a schedule and carried to the next
/// generation; a [`ProducesTickets`] for rustls's `ServerConfig::ticketer`.
///
/// [`TlsConfig`](super::TlsConfig) installs one and carries its keys across upgrades; an app
/// that builds its own `rustls::ServerConfig` can set `config.ticketer` to an
/// `Arc<SessionTickets>` and pass the config to
/// [`TlsConfig::from_server_config`](super::TlsConfig::from_server_config), which finds and
/// carries it.
pub struct SessionTickets {
    period_ms: u64,
    random: &'static dyn SecureRandom,
    keys: RwLock<Keys>,
}

impl fmt::Debug for SessionTickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionTickets")
            .field("rotation", &Duration::from_millis(self.period_ms))
            .field("keys", &*self.read())
            .finish()
    }
}

/// Why carried keys were refused (see [`SessionTickets::import`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError(String);

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ImportError {}

fn refuse(why: impl Into<String>) -> ImportError {
    ImportError(why.into())
}

/// Why a `SessionTickets` could not be made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketError {
    /// The rotation period is outside [`MIN_ROTATION`]..=[`MAX_ROTATION`].
    Rotation(Duration),
    /// The system's random source failed.
    Random,
}

impl fmt::Display for TicketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TicketError::Rotation(p) => write!(
                f,
                "session-ticket key rotation period {p:?} is out of range ({MIN_ROTATION:?} to {MAX_ROTATION:?})"
            ),
            TicketError::Random => f.write_str("the random source failed to make a ticket key"),
        }
    }
}

impl std::error::Error for TicketError {}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

fn random() -> &'static dyn SecureRandom {
    rustls::crypto::aws_lc_rs::default_provider().secure_random
}

impl SessionTickets {
    /// New keys, rotated every `rotation` ([`DEFAULT_ROTATION`]: 6 hours).
    pub fn new(rotation: Duration) -> Result<SessionTickets, TicketError> {
        SessionTickets::new_at(rotation, now_ms())
    }

    fn check_rotation(rotation: Duration) -> Result<u64, TicketError> {
        if !(MIN_ROTATION..=MAX_ROTATION).contains(&rotation) {
            return Err(TicketError::Rotation(rotation));
        }
        Ok(rotation.as_millis() as u64)
    }

    fn new_at(rotation: Duration, now_ms: u64) -> Result<SessionTickets, TicketError> {
        let period_ms = SessionTickets::check_rotation(rotation)?;
        let random = random();
        let current = Key::fresh(random, now_ms).ok_or(TicketError::Random)?;
        Ok(SessionTickets {
            period_ms,
            random,
            keys: RwLock::new(Keys {
                current,
                previous: None,
            }),
        })
    }

    /// Keys imported from `carried` (what [`export`](SessionTickets::export) gave in the
    /// previous generation), judged by this generation's `rotation`: a key past its decrypting
    /// window is dropped, a current key past its encrypting window is rotated out at once.
    ///
    /// Refused whole, with the reason, when `carried` is not a well-formed export of a version
    /// this build reads; the caller then makes new keys ([`SessionTickets::new`]).
    pub fn import(carried: &[u8], rotation: Duration) -> Result<SessionTickets, ImportError> {
        SessionTickets::import_at(carried, rotation, now_ms())
    }

    fn import_at(
        carried: &[u8],
        rotation: Duration,
        now_ms: u64,
    ) -> Result<SessionTickets, ImportError> {
        let period_ms =
            SessionTickets::check_rotation(rotation).map_err(|e| refuse(e.to_string()))?;
        let (carried_period_ms, mut keys) = decode(carried, now_ms)?;
        if carried_period_ms != period_ms {
            tracing::info!(
                was = ?Duration::from_millis(carried_period_ms),
                now = ?rotation,
                "session-ticket key rotation period changed: carried keys are judged by the new one"
            );
        }
        let random = random();
        // Newest first (checked by `decode`).
        let newest = keys.remove(0);
        let older = keys.pop();
        let keys = if newest.encrypts_at(now_ms, period_ms) {
            Keys {
                current: newest,
                previous: older.filter(|k| k.decrypts_at(now_ms, period_ms)),
            }
        } else {
            Keys {
                current: Key::fresh(random, now_ms)
                    .ok_or_else(|| refuse("the random source failed to make a ticket key"))?,
                previous: Some(newest).filter(|k| k.decrypts_at(now_ms, period_ms)),
            }
        };
        Ok(SessionTickets {
            period_ms,
            random,
            keys: RwLock::new(keys),
        })
    }

    /// Replaces these keys with the ones `carried` (see [`import`](SessionTickets::import)),
    /// judged by this rotation period. On error, the keys in use stay.
    pub(super) fn adopt(&self, carried: &[u8]) -> Result<(), ImportError> {
        let next = SessionTickets::import(carried, self.rotation())?;
        let keys = next.keys.into_inner().unwrap_or_else(|p| p.into_inner());
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = keys;
        Ok(())
    }

    /// The keys still in use (current, and previous while it decrypts), in the exported form
    /// described in the module docs; zeroized when dropped. For the next generation only.
    pub fn export(&self) -> Zeroizing<Vec<u8>> {
        self.export_at(now_ms())
    }

    fn export_at(&self, now_ms: u64) -> Zeroizing<Vec<u8>> {
        let keys = self.rotated(now_ms);
        let live: Vec<&Key> = std::iter::once(&keys.current)
            .chain(keys.previous.iter())
            .filter(|k| k.decrypts_at(now_ms, self.period_ms))
            .collect();
        let mut out = Zeroizing::new(Vec::with_capacity(HEADER_LEN + 2 * RECORD_LEN));
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.period_ms.to_be_bytes());
        out.push(live.len() as u8);
        for k in live {
            out.extend_from_slice(&k.id);
            out.extend_from_slice(&k.created_ms.to_be_bytes());
            out.extend_from_slice(&k.secret[..]);
        }
        out
    }

    /// The rotation period.
    pub fn rotation(&self) -> Duration {
        Duration::from_millis(self.period_ms)
    }

    /// A short description of the keys for logs: ids (first bytes) and ages, never secrets.
    pub fn describe(&self) -> String {
        let now = now_ms();
        let keys = self.read();
        let age = |k: &Key| Duration::from_secs(now.saturating_sub(k.created_ms) / 1000);
        let mut s = format!(
            "current {} (age {:?})",
            hex(&keys.current.id[..4]),
            age(&keys.current)
        );
        if let Some(p) = &keys.previous {
            s.push_str(&format!(
                ", previous {} (age {:?})",
                hex(&p.id[..4]),
                age(p)
            ));
        }
        s
    }

    fn read(&self) -> RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The keys, rotated first if the current one is past its encrypting window.
    fn rotated(&self, now_ms: u64) -> RwLockReadGuard<'_, Keys> {
        {
            let keys = self.read();
            if keys.current.encrypts_at(now_ms, self.period_ms) {
                return keys;
            }
        }
        {
            let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
            // Another thread may have rotated meanwhile.
            if !keys.current.encrypts_at(now_ms, self.period_ms) {
                if let Some(fresh) = Key::fresh(self.random, now_ms) {
                    let old = std::mem::replace(&mut keys.current, fresh);
                    // The old previous key is dropped (and wiped) here.
                    keys.previous = Some(old).filter(|k| k.decrypts_at(now_ms, self.period_ms));
                    tracing::debug!(
                        id = %hex(&keys.current.id[..4]),
                        "session-ticket key rotated"
                    );
                } else {
                    tracing::warn!("session-ticket key rotation: the random source failed");
                }
            }
        }
        self.read()
    }

    fn encrypt_at(&self, plain: &[u8], now_ms: u64) -> Option<Vec<u8>> {
        let keys = self.rotated(now_ms);
        let key = &keys.current;
        if !key.encrypts_at(now_ms, self.period_ms) {
            // Rotation failed (no randomness): better no ticket than one past the schedule.
            return None;
        }
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).ok()?;
        let sealed = key
            .cipher()
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &key.id,
                },
            )
            .ok()?;
        let mut ticket = Vec::with_capacity(ID_LEN + NONCE_LEN + sealed.len());
        ticket.extend_from_slice(&key.id);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(&sealed);
        Some(ticket)
    }

    fn decrypt_at(&self, ticket: &[u8], now_ms: u64) -> Option<Vec<u8>> {
        if ticket.len() < ID_LEN + NONCE_LEN + TAG_LEN {
            return None;
        }
        let (id, rest) = ticket.split_at(ID_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let keys = self.rotated(now_ms);
        let key = std::iter::once(&keys.current)
            .chain(keys.previous.iter())
            .find(|k| k.id == id && k.decrypts_at(now_ms, self.period_ms))?;
        key.cipher()
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: id,
                },
            )
            .ok()
    }
}

impl ProducesTickets for SessionTickets {
    fn enabled(&self) -> bool {
        true
    }

    /// The rotation period, in seconds: a ticket is decryptable for at least that long after
    /// it was issued, whenever that was.
    fn lifetime(&self) -> u32 {
        (self.period_ms / 1000) as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.encrypt_at(plain, now_ms())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.decrypt_at(cipher, now_ms())
    }
}

/// Parses the exported form: (period_ms, keys newest first).
fn decode(b: &[u8], now_ms: u64) -> Result<(u64, Vec<Key>), ImportError> {
    if b.len() < HEADER_LEN {
        return Err(refuse(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            b.len()
        )));
    }
    if &b[..4] != MAGIC {
        return Err(refuse("not session-ticket keys (no HXTK tag)"));
    }
    if b[4] != VERSION {
        return Err(refuse(format!(
            "format version {} (this build reads version {VERSION})",
            b[4]
        )));
    }
    let period_ms = u64::from_be_bytes(b[5..13].try_into().unwrap());
    let count = b[13] as usize;
    if !(1..=2).contains(&count) {
        return Err(refuse(format!("{count} keys (1 or 2 expected)")));
    }
    let want = HEADER_LEN + count * RECORD_LEN;
    if b.len() != want {
        return Err(refuse(format!(
            "{} bytes for {count} keys ({want} expected: truncated or padded)",
            b.len()
        )));
    }
    let mut keys: Vec<Key> = Vec::with_capacity(count);
    for rec in b[HEADER_LEN..].chunks_exact(RECORD_LEN) {
        let mut key = Key {
            id: rec[..ID_LEN].try_into().unwrap(),
            created_ms: u64::from_be_bytes(rec[ID_LEN..ID_LEN + 8].try_into().unwrap()),
            secret: Zeroizing::new([0; KEY_LEN]),
        };
        key.secret.copy_from_slice(&rec[ID_LEN + 8..]);
        if key.created_ms > now_ms.saturating_add(FUTURE_SLACK_MS) {
            return Err(refuse(format!(
                "a key made {} s in the future",
                (key.created_ms - now_ms) / 1000
            )));
        }
        if keys.iter().any(|k| k.id == key.id) {
            return Err(refuse("the same key id twice"));
        }
        if let Some(prev) = keys.last() {
            if prev.created_ms < key.created_ms {
                return Err(refuse("keys not newest first"));
            }
        }
        keys.push(key);
    }
    Ok((period_ms, keys))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Duration = Duration::from_secs(10);
    const T0: u64 = 1_800_000_000_000;
    const S: u64 = 1000;

    fn tickets() -> SessionTickets {
        SessionTickets::new_at(P, T0).unwrap()
    }

    #[test]
    fn a_ticket_decrypts_and_a_tampered_one_does_not() {
        let t = tickets();
        let ticket = t.encrypt_at(b"session state", T0).unwrap();
        assert_eq!(
            ticket.len(),
            ID_LEN + NONCE_LEN + b"session state".len() + TAG_LEN
        );
        assert_eq!(t.decrypt_at(&ticket, T0).unwrap(), b"session state");
        for i in [0, ID_LEN, ID_LEN + NONCE_LEN, ticket.len() - 1] {
            let mut bad = ticket.clone();
            bad[i] ^= 1;
            assert_eq!(t.decrypt_at(&bad, T0), None, "flipped byte {i}");
        }
        assert_eq!(t.decrypt_at(&ticket[..ticket.len() - 1], T0), None);
        assert_eq!(t.decrypt_at(&[], T0), None);
        assert_eq!(t.decrypt_at(&[0; 200], T0), None);
        // Two tickets of the same plaintext differ (random nonces).
        assert_ne!(ticket, t.encrypt_at(b"session state", T0).unwrap());
    }

    #[test]
    fn keys_rotate_on_schedule_and_the_previous_one_decrypts_until_its_window_ends() {
        let t = tickets();
        assert_eq!(t.lifetime(), 10);
        // Issued at the very end of the first key's encrypting window.
        let late = t.encrypt_at(b"a", T0 + 10 * S - 1).unwrap();
        let first_id = t.read().current.id;
        // Rotation: a new current key, the first one kept.
        let b = t.encrypt_at(b"b", T0 + 10 * S).unwrap();
        assert_ne!(t.read().current.id, first_id);
        assert_eq!(t.read().previous.as_ref().unwrap().id, first_id);
        // `late` is accepted for its whole announced lifetime (10 s)...
        assert_eq!(t.decrypt_at(&late, T0 + 20 * S - 1).unwrap(), b"a");
        // ... and not after its key's decrypting window.
        assert_eq!(t.decrypt_at(&late, T0 + 20 * S), None);
        assert_eq!(t.decrypt_at(&b, T0 + 20 * S).unwrap(), b"b");
        // Next rotation: the first key is gone (wiped), the second is previous.
        t.encrypt_at(b"c", T0 + 21 * S).unwrap();
        let keys = t.read();
        assert!(keys.previous.as_ref().unwrap().id != first_id);
        assert!(keys.current.id != first_id);
    }

    #[test]
    fn after_a_long_idle_time_no_stale_key_is_kept() {
        let t = tickets();
        let old = t.encrypt_at(b"a", T0).unwrap();
        t.encrypt_at(b"b", T0 + 25 * S).unwrap();
        assert!(t.read().previous.is_none(), "a key 25 s old with P = 10 s");
        assert_eq!(t.decrypt_at(&old, T0 + 25 * S), None);
    }

    #[test]
    fn exported_keys_decrypt_in_the_next_generation_and_rotation_goes_on() {
        let t = tickets();
        let a = t.encrypt_at(b"a", T0 + 9 * S).unwrap();
        let b = t.encrypt_at(b"b", T0 + 12 * S).unwrap(); // after a rotation
        let blob = t.export_at(T0 + 13 * S);
        assert_eq!(blob.len(), HEADER_LEN + 2 * RECORD_LEN);
        let next = SessionTickets::import_at(&blob, P, T0 + 14 * S).unwrap();
        assert_eq!(next.decrypt_at(&a, T0 + 14 * S).unwrap(), b"a");
        assert_eq!(next.decrypt_at(&b, T0 + 14 * S).unwrap(), b"b");
        // Same current key: tickets of either generation decrypt in the other.
        let c = next.encrypt_at(b"c", T0 + 15 * S).unwrap();
        assert_eq!(t.decrypt_at(&c, T0 + 15 * S).unwrap(), b"c");
        // The schedule carried on: the current key (made at T0+12) rotates at T0+22, not
        // 10 s after the import.
        let current = next.read().current.id;
        next.encrypt_at(b"d", T0 + 21 * S).unwrap();
        assert_eq!(next.read().current.id, current);
        next.encrypt_at(b"e", T0 + 22 * S).unwrap();
        assert_ne!(next.read().current.id, current);
        // And across a third generation.
        let third =
            SessionTickets::import_at(&next.export_at(T0 + 23 * S), P, T0 + 23 * S).unwrap();
        assert_eq!(third.decrypt_at(&c, T0 + 23 * S).unwrap(), b"c");
        assert_eq!(
            third.decrypt_at(&a, T0 + 23 * S),
            None,
            "a's key is 23 s old"
        );
    }

    #[test]
    fn an_import_judges_keys_by_their_age() {
        let t = tickets();
        let a = t.encrypt_at(b"a", T0).unwrap();
        let blob = t.export_at(T0);
        // Imported 15 s later: the key no longer encrypts (new current), still decrypts.
        let next = SessionTickets::import_at(&blob, P, T0 + 15 * S).unwrap();
        assert_eq!(next.decrypt_at(&a, T0 + 15 * S).unwrap(), b"a");
        assert_ne!(next.read().current.id, t.read().current.id);
        // 20 s later: nothing of it is kept.
        let later = SessionTickets::import_at(&blob, P, T0 + 20 * S).unwrap();
        assert_eq!(later.decrypt_at(&a, T0 + 20 * S), None);
        assert!(later.read().previous.is_none());
    }

    #[test]
    fn garbage_and_truncated_exports_are_refused_with_the_reason() {
        let t = tickets();
        t.encrypt_at(b"x", T0 + 11 * S).unwrap();
        let blob = t.export_at(T0 + 11 * S).to_vec();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "shorter than"),
            (b"garbage garbage garbage".to_vec(), "no HXTK tag"),
            (blob[..blob.len() - 1].to_vec(), "truncated or padded"),
            ([&blob[..], b"x"].concat(), "truncated or padded"),
            (
                {
                    let mut b = blob.clone();
                    b[4] = 2;
                    b
                },
                "format version 2",
            ),
            (
                {
                    let mut b = blob.clone();
                    b[13] = 3;
                    b
                },
                "3 keys",
            ),
            (
                {
                    let mut b = blob.clone();
                    b[13] = 0;
                    b
                },
                "0 keys",
            ),
            (
                {
                    // Both records the same key.
                    let mut b = blob[..HEADER_LEN + RECORD_LEN].to_vec();
                    b.extend_from_slice(&blob[HEADER_LEN..HEADER_LEN + RECORD_LEN]);
                    b
                },
                "same key id twice",
            ),
            (
                {
                    // Oldest first.
                    let mut b = blob[..HEADER_LEN].to_vec();
                    b.extend_from_slice(&blob[HEADER_LEN + RECORD_LEN..]);
                    b.extend_from_slice(&blob[HEADER_LEN..HEADER_LEN + RECORD_LEN]);
                    b
                },
                "newest first",
            ),
        ];
        for (bad, why) in cases {
            let err = SessionTickets::import_at(&bad, P, T0 + 12 * S).unwrap_err();
            assert!(err.to_string().contains(why), "{err} (expected {why:?})");
        }
        let err = SessionTickets::import_at(&blob, P, T0 - 120 * S).unwrap_err();
        assert!(err.to_string().contains("in the future"), "{err}");
    }

    #[test]
    fn adopting_refused_keys_keeps_the_keys_in_use_and_adopting_good_ones_replaces_them() {
        let t = SessionTickets::new(P).unwrap();
        let mine = t.encrypt(b"mine").unwrap();
        assert!(t.adopt(b"HXTK\x01 truncated").is_err());
        assert_eq!(t.decrypt(&mine).unwrap(), b"mine");
        let other = SessionTickets::new(P).unwrap();
        let theirs = other.encrypt(b"theirs").unwrap();
        t.adopt(&other.export()).unwrap();
        assert_eq!(t.decrypt(&theirs).unwrap(), b"theirs");
        assert_eq!(t.decrypt(&mine), None, "the replaced keys are gone");
    }

    #[test]
    fn rotation_periods_out_of_range_are_refused() {
        assert_eq!(
            SessionTickets::new(Duration::from_millis(500)).unwrap_err(),
            TicketError::Rotation(Duration::from_millis(500))
        );
        assert!(SessionTickets::new(MAX_ROTATION + Duration::from_secs(1)).is_err());
        assert!(SessionTickets::new(DEFAULT_ROTATION).is_ok());
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let t = tickets();
        let secret = hex(&t.read().current.secret[..]);
        let shown = format!("{t:?} {}", t.describe());
        assert!(!shown.contains(&secret[..8]), "{shown}");
    }
}
