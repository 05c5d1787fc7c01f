// A bare number is the wrong kind of literal; the message shows the string to write.
#[hotexec::main(ready_timeout = 10)]
fn main() {}
