#![deny(warnings)]

// Several listeners of every socket kind, with and without `backlog`, under both accepted paths
// (`listen` and `hotexec::listen`), with no `use` needed: `#[hotexec::main]` consumes them.
#[hotexec::main]
#[listen("127.0.0.1:0", name = "http", backlog = 1024)]
#[listen("tcp:127.0.0.1:0", name = "admin", backlog = 128)]
#[hotexec::listen("udp:127.0.0.1:0", name = "metrics")]
#[listen("127.0.0.1:0")]
fn main(listeners: hotexec::Listeners) {
    let _ = listeners;
}
