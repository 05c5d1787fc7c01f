#[hotexec::main(max_error_rate = "5")]
fn main() {}
