//! Compile-time behaviour of `#[hotexec::main]` and `#[listen]`.
//!
//! `pass/`: each file must compile without a warning (`#![deny(warnings)]`) and its binary must
//! exit 0; the bodies assert what they can observe (which runtime they run on, that `init` ran
//! first, that `?` and `return` work). Addresses are `127.0.0.1:0` so that a real runtime binding
//! them can never collide with anything on the machine.
//!
//! `fail/`: one mistake per file (except `many_errors_at_once.rs`), with the expected diagnostic
//! checked in next to it. Regenerate with `TRYBUILD=overwrite cargo test -p hotexec-ui-tests` and read the
//! diff: each message must say what is wrong and what is expected, on the token at fault.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
