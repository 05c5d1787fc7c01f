#[hotexec::main]
#[listen("udp:0.0.0.0:5353", reuseport = "yes")]
fn main(listeners: hotexec::Listeners) {
    let _ = listeners;
}
