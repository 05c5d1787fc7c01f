#![deny(warnings)]

// The health gate off, and a ratio written as an integer; the server starts and returns at once.
#[hotexec::main(health = false, max_error_ratio = 3, max_error_rate = "0.05")]
#[listen("127.0.0.1:0", name = "http")]
fn main(shutdown: hotexec::Shutdown) {
    // Counting works whatever the gate says.
    shutdown.health().record_response(200);
    assert_eq!(shutdown.health().counts().success, 1);
}
