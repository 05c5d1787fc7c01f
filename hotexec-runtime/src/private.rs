//! The entry points that `#[hotexec::main]` generates calls to. Not a public API: the facade
//! re-exports it as `hotexec::__private`, and the macro crate is pinned to this exact version.
#![allow(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::config::Declared;
use crate::socket::ListenOptions;
pub use crate::{Listeners, Shutdown};

/// Options of one `#[listen]`.
pub struct ListenSpec {
    name: &'static str,
    addr: &'static str,
    opts: ListenOptions,
}

impl ListenSpec {
    pub fn new(name: &'static str, addr: &'static str) -> Self {
        ListenSpec {
            name,
            addr,
            opts: ListenOptions::default(),
        }
    }
    pub fn backlog(mut self, n: u32) -> Self {
        self.opts.backlog = Some(n);
        self
    }
    pub fn v6only(mut self, on: bool) -> Self {
        self.opts.v6only = Some(on);
        self
    }
    pub fn reuseport(mut self, on: bool) -> Self {
        self.opts.reuseport = on;
        self
    }
    pub fn mode(mut self, bits: u32) -> Self {
        self.opts.mode = Some(bits);
        self
    }
}

/// What the attribute declared; `run` applies the environment over it and starts.
#[derive(Default)]
pub struct Builder {
    declared: Declared,
}

impl Builder {
    pub fn new() -> Self {
        Builder::default()
    }
    pub fn drain_timeout_ms(mut self, ms: u64) -> Self {
        self.declared.drain_timeout = Some(Duration::from_millis(ms));
        self
    }
    pub fn ready_timeout_ms(mut self, ms: u64) -> Self {
        self.declared.ready_timeout = Some(Duration::from_millis(ms));
        self
    }
    pub fn upgrade_signal(mut self, canonical: &'static str) -> Self {
        self.declared.upgrade_signal = Some(canonical);
        self
    }
    pub fn pid_file(mut self, path: &'static str) -> Self {
        self.declared.pid_file = Some(path);
        self
    }
    pub fn manual_ready(mut self) -> Self {
        self.declared.manual_ready = true;
        self
    }
    pub fn keeper(mut self) -> Self {
        self.declared.keeper = true;
        self
    }
    pub fn listen(mut self, spec: ListenSpec) -> Self {
        self.declared
            .listeners
            .push((spec.name, spec.addr, spec.opts));
        self
    }
    pub fn run<R>(self, f: impl FnOnce(Listeners, Shutdown) -> R) -> R {
        crate::start::run(self.declared, f)
    }
}

/// Called by generated code once the user's main is running (sync: before the body; async:
/// after the first poll). Reports readiness unless the app asked for `ready = "manual"`.
pub fn main_started() {
    crate::upgrade::main_started();
}

/// Wraps the user's async main: calls [`main_started`] after its first poll, i.e. once the
/// app has run up to its first `.await` (typically: its accept loop is waiting), unless that
/// first poll already ended `main` (an error at start: never reported ready).
pub struct Started<F> {
    fut: Pin<Box<F>>,
    first: bool,
}

impl<F: Future> Started<F> {
    pub fn new(fut: F) -> Self {
        Started {
            fut: Box::pin(fut),
            first: true,
        }
    }
}

impl<F: Future> Future for Started<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let r = self.fut.as_mut().poll(cx);
        // A main that returned on its first poll (typically an error at start: a certificate
        // that does not load) never served: it is not ready, so an upgrade to it fails and
        // the running generation serves on.
        if std::mem::take(&mut self.first) && r.is_pending() {
            main_started();
        }
        r
    }
}
