//! What the example benchmarks (`bench`, `bench_memory`) and the demo drive: servers started
//! and upgraded in several ways ([`targets`]), in roles of the benchmark's own binary
//! ([`roles`]), under a load generator on tokio ([`load`]).

pub mod load;
pub mod roles;
pub mod targets;
