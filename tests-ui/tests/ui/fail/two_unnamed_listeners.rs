#[hotexec::main]
#[listen("127.0.0.1:8080")]
#[listen("127.0.0.1:8081")]
fn main(listeners: hotexec::Listeners) {
    let _ = listeners;
}
