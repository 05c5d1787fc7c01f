#[hotexec::main(ready = "later")]
fn main() {}
