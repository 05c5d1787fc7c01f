#[hotexec::main(keeper = "yes")]
fn main() {}
