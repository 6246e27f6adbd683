//! Holds the host-loop benchmark (`benches/host_loops.rs`); no library code.
//! Run it with `cargo bench -p torsion-hostloop-bench`.
