#[hotexec::main(drain_timeout = "30 seconds")]
fn main() {}
