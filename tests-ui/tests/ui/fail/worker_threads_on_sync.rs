#[hotexec::main(worker_threads = 4)]
fn main() {}
