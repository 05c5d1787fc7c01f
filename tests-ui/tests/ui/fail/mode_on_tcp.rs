#[hotexec::main]
#[listen("127.0.0.1:8080", mode = 0o660)]
fn main(listeners: hotexec::Listeners) {
    let _ = listeners;
}
