#![deny(warnings)]

use std::sync::atomic::{AtomicBool, Ordering};

static INSTALLED: AtomicBool = AtomicBool::new(false);

mod telemetry {
    pub fn install() {
        super::INSTALLED.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

// `init` runs before anything else, so a tracing subscriber installed there sees hotexec's logs.
#[hotexec::main(init = telemetry::install, ready = "manual")]
async fn main() {
    assert!(
        INSTALLED.load(Ordering::SeqCst),
        "init did not run before main"
    );
}
