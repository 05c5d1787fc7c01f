#![deny(warnings)]

mod telemetry {
    pub fn install() {}
}

// Every option at once. The attribute is on `serve`, not `main`, so that this file compiles the
// full expansion without starting a server (the options would write a pid file in /run).
/// Docs and lint attributes stay on the generated function.
#[hotexec::main(
    drain_timeout = "1m",
    ready_timeout = "500ms",
    upgrade_signal = "hup",
    pid_file = "/run/hotexec-ui-test.pid",
    ready = "manual",
    init = telemetry::install,
    flavor = "multi_thread",
    worker_threads = 2,
    keeper = true,
    health = true,
    probation = "3s",
    max_probation = "20s",
    max_error_rate = "0.5%",
    max_error_ratio = 1.5,
    min_sample = 500,
)]
#[listen("[::1]:0", name = "http", backlog = 64)]
#[listen("unix:/run/hotexec-ui-test.sock", name = "admin")]
pub async fn serve(
    listeners: ::hotexec::Listeners,
    shutdown: ::hotexec::Shutdown,
) -> std::io::Result<()> {
    let _ = (listeners, shutdown);
    Ok(())
}

fn main() {
    // The generated function takes nothing and returns what `serve` returned.
    let _: fn() -> std::io::Result<()> = serve;
}
