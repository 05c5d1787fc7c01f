#[hotexec::main]
#[listen("unix:/run/app.sock", reuseport = true)]
fn main(listeners: hotexec::Listeners) {
    let _ = listeners;
}
