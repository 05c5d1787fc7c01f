// Host names are refused: the address must not depend on DNS at start.
#[hotexec::main]
#[listen("localhost:8080")]
fn main() {}
