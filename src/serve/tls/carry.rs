//! The one place that talks to the runtime's generation link about session-ticket keys.
//!
//! The runtime carries bytes from one generation to the next over a private close-on-exec
//! channel (`Shutdown::carry` in the old generation, run just before the new one is spawned;
//! `Shutdown::inherited` in the new one). This file is the seam between that channel and
//! [`SessionTickets`](super::SessionTickets): nothing else in the TLS code knows how the
//! bytes travel.

use crate::Shutdown;
use zeroize::Zeroizing;

/// The key under which the session-ticket keys travel.
pub(super) const TICKET_KEYS: &str = "hotexec.tls.session-tickets";

/// The bytes the previous generation carried under `key`, if any (taken once).
pub(super) fn inherited(shutdown: &Shutdown, key: &str) -> Option<Zeroizing<Vec<u8>>> {
    // Until the runtime's generation link lands (`Shutdown::inherited`), nothing is carried:
    // every generation starts with keys of its own.
    let _ = (shutdown, key);
    None
}

/// Registers `export` to run in this generation at each upgrade, just before the next
/// generation is spawned; its bytes reach that generation under `key`. Returns whether the
/// runtime carries anything.
pub(super) fn carry(
    shutdown: &Shutdown,
    key: &'static str,
    export: impl Fn() -> Zeroizing<Vec<u8>> + Send + Sync + 'static,
) -> bool {
    let _ = (shutdown, key, export);
    false
}
