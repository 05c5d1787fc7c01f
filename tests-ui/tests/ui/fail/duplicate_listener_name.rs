#[hotexec::main]
#[listen("127.0.0.1:8080", name = "http")]
#[listen("127.0.0.1:8081", name = "http")]
fn main(listeners: hotexec::Listeners) {
    let _ = listeners;
}
