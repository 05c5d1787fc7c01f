#[hotexec::main]
async fn main(a: hotexec::Shutdown, b: hotexec::Shutdown) {
    let _ = (a, b);
}
