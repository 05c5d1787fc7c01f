//! The runtime behind `#[hotexec::main]`. Users depend on the `hotexec` facade, not on this crate.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod syntax;
#[cfg(feature = "process")]
#[doc(hidden)]
pub mod private;
