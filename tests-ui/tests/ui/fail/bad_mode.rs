#[hotexec::main]
#[listen("unix:/run/app.sock", mode = 0o4770)]
fn main(listeners: hotexec::Listeners) {
    let _ = listeners;
}
