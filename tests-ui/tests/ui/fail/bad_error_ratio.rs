#[hotexec::main(max_error_ratio = 0.5)]
fn main() {}
