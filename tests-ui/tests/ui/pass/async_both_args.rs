#![deny(warnings)]

// An async `main` taking both values runs on the multi-thread tokio runtime by default.
#[hotexec::main(drain_timeout = "30s")]
#[listen("127.0.0.1:0", name = "http")]
async fn main(listeners: hotexec::Listeners, shutdown: hotexec::Shutdown) -> std::io::Result<()> {
    let _ = (listeners, shutdown);
    assert_eq!(
        tokio::runtime::Handle::current().runtime_flavor(),
        tokio::runtime::RuntimeFlavor::MultiThread
    );
    tokio::task::yield_now().await;
    Ok(())
}
