//! # torsion-http
//!
//! HTTP/1.1 for Torsion, in two layers: [`h1::ServerConn`], a sans-I/O
//! server machine (bytes in → events out, responses in → bytes out), and
//! an adapter that runs it as a [`torsion_core::Protocol`] over any transport.

#![warn(missing_docs)]

pub mod chunked;
pub mod config;
pub mod h1;

pub use config::ServerConfig;
