#[hotexec::main]
struct Server;

fn main() {}
