//! The harness of hotexec's integration tests (`tests/`) and example benchmarks (`bench`,
//! `bench_memory`, `bench_handoff`, `demo`): each helper once.
//!
//! Everything here runs real processes and real sockets on 127.0.0.1. Every wait has a
//! deadline ([`wait`]); the test process is a child subreaper and every process a test starts
//! is killed and reaped on drop, also when the test fails ([`reap`], [`app`], [`spawn`],
//! [`crafted`]).
//!
//! | module | what |
//! |---|---|
//! | [`wait`] | polling with a deadline |
//! | [`scratch`], [`net`], [`limits`] | scratch dirs, free ports, `RLIMIT_NOFILE` |
//! | [`procfs`] | `/proc` readers: stat, children, descendants, fds, status fields, pending signals |
//! | [`reap`] | subreaper, kill-and-reap, the keeper's only child |
//! | [`spawn`] | built examples, copies without ETXTBSY, [`spawn::Started`] |
//! | [`app`] | [`app::App`]: an example server under test, upgraded by signal |
//! | [`crafted`] | a process started with a hand-made hand-over |
//! | [`handoff`] | a line-protocol client; who holds each connection, from `/proc` |
//! | [`outcome`] | how a request ended ([`outcome::Outcome`], [`outcome::Class`]) |
//! | [`client`] | a blocking HTTP/1.1 client |
//! | [`load`] | the tests' load (client threads) and the verdicts over it |
//! | [`cli`] | the `hotexec` command run under a time limit |
//! | [`rt`] | the tokio runtime of a test's clients |
//! | [`logfile`] | a process's captured output: read, without colour codes, shown on failure |
//! | [`notify`], [`pty`], [`tools`] | an sd_notify socket, a pseudo-terminal, outside tools (systemd's; wrk, h2load, openssl run as children of a test) |
//! | [`mod@bench`] | the benchmarks' targets (hotexec, naive restart, nginx…) and tokio load generator |
//!
//! Tests take the whole kit with `use hotexec_testkit::prelude::*;`.

pub mod app;
pub mod bench;
pub mod cli;
pub mod client;
pub mod crafted;
pub mod handoff;
pub mod limits;
pub mod load;
pub mod logfile;
pub mod net;
pub mod notify;
pub mod outcome;
pub mod procfs;
pub mod pty;
pub mod reap;
pub mod rt;
pub mod scratch;
pub mod spawn;
pub mod tools;
pub mod wait;

/// What the integration tests use, in one import.
pub mod prelude {
    pub use crate::app::{App, extra_listeners};
    pub use crate::cli::{CliRun, hotexec_cli};
    pub use crate::client::{
        answered_by, get, get_keepalive, get_text, post, read_response, request_on,
    };
    pub use crate::crafted::{Crafted, ListenPid};
    pub use crate::limits::raise_nofile;
    pub use crate::load::{
        COMPARE_PLAIN_VAR, KeepAliveLoad, Load, assert_no_failures, by_class, compare_plain,
        failures, verdict,
    };
    pub use crate::logfile::strip_ansi;
    pub use crate::net::{free_addr, free_port};
    pub use crate::notify::NotifySocket;
    pub use crate::outcome::{Class, Outcome, classify};
    pub use crate::procfs::{
        alive, children_of, descendants, fd_targets, running_from, stat, status_field, status_text,
        wait_signal_handled,
    };
    pub use crate::pty::openpty;
    pub use crate::reap::{kill_and_reap, subreaper, wait_only_child};
    pub use crate::rt::{block_within, runtime};
    pub use crate::scratch::Scratch;
    pub use crate::spawn::{Started, copy_exe, example, script, spawn_retrying};
    pub use crate::tools::tool;
    pub use crate::wait::wait_for;
}
