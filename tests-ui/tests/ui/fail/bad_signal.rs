// SIGTERM stops the server; it cannot be the upgrade signal.
#[hotexec::main(upgrade_signal = "SIGTERM")]
fn main() {}
