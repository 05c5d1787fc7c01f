#[hotexec::main(max_error_ratio = "2")]
fn main() {}
