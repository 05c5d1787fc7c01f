#[hotexec::main]
#[listen("127.0.0.1:8080", backlog = 70000)]
fn main(listeners: hotexec::Listeners) {
    let _ = listeners;
}
