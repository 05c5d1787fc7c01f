//! hotexec: zero-downtime binary upgrades for Rust servers.
#![deny(unsafe_op_in_unsafe_fn)]

pub use hotexec_macros::{listen, main};

// TEMPORARY (macros branch): drop when the runtime side re-exports its own API at the root.
pub use __private::{Listeners, Shutdown};

#[doc(hidden)]
pub mod __private {
    //! What `#[hotexec::main]` expands to calls only these paths. Not a public API.
    pub use hotexec_runtime::private::*;
    #[cfg(feature = "tokio")]
    pub use tokio;
}
