//! # torsion-bench
//!
//! The echo benchmark of Torsion against a tokio current-thread server and a
//! minimal raw epoll loop: see the `echo_bench` binary and this crate's README.
//! Not published; nothing here is asserted in the test suite.

pub mod load;
pub mod servers;
pub mod sys;
