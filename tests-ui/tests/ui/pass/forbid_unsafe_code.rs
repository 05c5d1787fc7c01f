#![forbid(unsafe_code)]
#![deny(warnings)]

// A crate that forbids unsafe code can still use the attribute: the ELF note it emits (a
// `#[link_section]` static) must not trip `unsafe_code` in the user's crate.
#[hotexec::main]
#[listen("127.0.0.1:0", name = "http")]
fn main(listeners: hotexec::Listeners) {
    let _ = listeners;
}
