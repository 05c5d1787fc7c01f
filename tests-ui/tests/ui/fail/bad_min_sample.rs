#[hotexec::main(min_sample = 0)]
fn main() {}
