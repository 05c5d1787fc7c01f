#[hotexec::main(drain_timout = "30s")]
fn main() {}
