//! The one place that talks to the runtime's generation link about session-ticket keys.
//!
//! The runtime carries bytes from one generation to the next over a private close-on-exec
//! channel ([`Shutdown::carry`] in the old generation, run just before the new one is spawned;
//! [`Shutdown::inherited`] in the new one). This file is the seam between that channel and
//! [`SessionTickets`](super::SessionTickets): nothing else in the TLS code knows how the
//! bytes travel.

use crate::{Carried, Shutdown};
use zeroize::Zeroizing;

/// The key under which the session-ticket keys of the configuration named `name` travel
/// (`hotexec.tls.session-tickets`, `/name` appended when there is one).
pub(super) fn ticket_keys(name: &str) -> String {
    if name.is_empty() {
        "hotexec.tls.session-tickets".to_string()
    } else {
        format!("hotexec.tls.session-tickets/{name}")
    }
}

/// The bytes the previous generation carried over under `key`, if any (taken once; zeroed
/// when dropped).
pub(super) fn inherited(shutdown: &Shutdown, key: &str) -> Option<Carried> {
    shutdown.inherited(key)
}

/// Registers `export` to run in this generation at each upgrade, just before the next
/// generation is spawned; its bytes reach that generation under `key`.
pub(super) fn carry(
    shutdown: &Shutdown,
    key: &str,
    export: impl Fn() -> Zeroizing<Vec<u8>> + Send + Sync + 'static,
) {
    // The runtime takes a plain `Vec`: moved out of the `Zeroizing` wrapper, so no copy is
    // left behind here; the runtime wipes it once sent.
    shutdown.carry(key, move || std::mem::take(&mut *export()));
}
