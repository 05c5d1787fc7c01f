#[hotexec::main(drain_timeout = "30s", ready_timeout = "5s", drain_timeout = "10s")]
fn main() {}
