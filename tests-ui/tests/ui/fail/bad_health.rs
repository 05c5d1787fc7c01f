#[hotexec::main(health = "off")]
fn main() {}
