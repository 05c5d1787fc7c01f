#[hotexec::main(probation = "5s", max_probation = "2s")]
fn main() {}
