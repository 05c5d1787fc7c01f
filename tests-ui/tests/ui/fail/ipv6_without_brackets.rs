#[hotexec::main]
#[listen("::1:8080")]
fn main() {}
