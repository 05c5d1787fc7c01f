#[hotexec::main]
fn main(listeners: hotexec::Listeners, port: u16) {
    let _ = (listeners, port);
}
