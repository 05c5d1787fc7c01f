// `:` separates names in LISTEN_FDNAMES, so it cannot be part of one.
#[hotexec::main]
#[listen("127.0.0.1:8080", name = "http:alt")]
fn main(listeners: hotexec::Listeners) {
    let _ = listeners;
}
