//! The tokio runtime a test runs its clients on.

/// A multi-threaded runtime with 2 workers (the test machines have 2 cores, shared).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// Runs `fut` on `rt` to its end, failing the test (naming `what`) if it takes longer than
/// `limit`: a server under test that never returns fails instead of hanging the run.
pub fn block_within<F: std::future::Future>(
    rt: &tokio::runtime::Runtime,
    limit: std::time::Duration,
    what: &str,
    fut: F,
) -> F::Output {
    // The timer is made inside the runtime: outside it there is none to register with.
    rt.block_on(async { tokio::time::timeout(limit, fut).await })
        .unwrap_or_else(|_| panic!("{what} did not finish within {limit:?}"))
}
