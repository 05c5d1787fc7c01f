//! Compile-time tests of the hotexec macros: see `tests/ui.rs`.
