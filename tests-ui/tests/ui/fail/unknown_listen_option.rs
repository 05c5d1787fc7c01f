#[hotexec::main]
#[listen("127.0.0.1:8080", reuse_port = true)]
fn main(listeners: hotexec::Listeners) {
    let _ = listeners;
}
