// Attributes expand from the top down: this `#[listen]` is never seen by `#[hotexec::main]`.
#[hotexec::listen("127.0.0.1:8080")]
#[hotexec::main]
fn main() {}
