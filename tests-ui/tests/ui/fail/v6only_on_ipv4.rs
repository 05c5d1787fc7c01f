#[hotexec::main]
#[listen("0.0.0.0:8080", v6only = false)]
fn main(listeners: hotexec::Listeners) {
    let _ = listeners;
}
