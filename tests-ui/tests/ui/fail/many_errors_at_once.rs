// Every mistake is reported in one build, each on its own token.
#[hotexec::main(drain_timeout = "forever", flavour = "current_thread")]
#[listen("127.0.0.1:80", name = "web")]
#[listen("127.0.0.1:81", name = "web", backlog = 0)]
async fn main(listeners: hotexec::Listeners, port: u16) {
    let _ = (listeners, port);
}
