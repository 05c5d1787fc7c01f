#[hotexec::main]
#[listen("127.0.0.1")]
fn main() {}
