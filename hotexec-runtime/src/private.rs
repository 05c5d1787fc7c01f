//! The entry points that `#[hotexec::main]` generates calls to. Not a public API: the facade
//! re-exports it as `hotexec::__private`, and the macro crate is pinned to this exact version.
#![allow(missing_docs)]

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

pub struct Listeners;
pub struct Shutdown;

/// Options of one `#[listen]`.
pub struct ListenSpec {
    pub name: &'static str,
    pub addr: &'static str,
    pub backlog: Option<u32>,
}

impl ListenSpec {
    pub fn new(name: &'static str, addr: &'static str) -> Self {
        ListenSpec { name, addr, backlog: None }
    }
    pub fn backlog(mut self, n: u32) -> Self {
        self.backlog = Some(n);
        self
    }
}

#[derive(Default)]
pub struct Builder {}

impl Builder {
    pub fn new() -> Self {
        Builder::default()
    }
    pub fn drain_timeout_ms(self, _ms: u64) -> Self { self }
    pub fn ready_timeout_ms(self, _ms: u64) -> Self { self }
    pub fn upgrade_signal(self, _canonical: &'static str) -> Self { self }
    pub fn pid_file(self, _path: &'static str) -> Self { self }
    pub fn manual_ready(self) -> Self { self }
    pub fn listen(self, _spec: ListenSpec) -> Self { self }
    pub fn run<R>(self, f: impl FnOnce(Listeners, Shutdown) -> R) -> R {
        f(Listeners, Shutdown)
    }
}

/// Called by generated code once the user's main is running (sync: before the body; async:
/// after the first poll). Reports readiness unless the app asked for `ready = "manual"`.
pub fn main_started() {}

/// Wraps the user's async main: calls [`main_started`] after its first poll.
pub struct Started<F> {
    fut: Pin<Box<F>>,
    first: bool,
}

impl<F: Future> Started<F> {
    pub fn new(fut: F) -> Self {
        Started { fut: Box::pin(fut), first: true }
    }
}

impl<F: Future> Future for Started<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let r = self.fut.as_mut().poll(cx);
        if std::mem::take(&mut self.first) {
            main_started();
        }
        r
    }
}
