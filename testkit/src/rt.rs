//! The tokio runtime a test runs its clients on.

/// A multi-threaded runtime with 2 workers (the test machines have 2 cores, shared).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}
