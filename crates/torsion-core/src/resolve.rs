//! Name resolution off the reactor thread.
//!
//! `getaddrinfo` blocks, so it runs on another thread and its answer comes
//! back through `call_from_thread`.

use std::net::{SocketAddr, ToSocketAddrs};

/// Resolves `host:port` on a background thread and hands the result to `done`
/// (on that thread; callers bounce it to the reactor with `call_from_thread`).
pub(crate) fn resolve_in_background(
    host: String,
    port: u16,
    done: impl FnOnce(Result<Vec<SocketAddr>, String>) + Send + 'static,
) {
    let spawned = std::thread::Builder::new()
        .name("torsion-resolver".into())
        .spawn(move || done(resolve_blocking(&host, port)));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start a resolver thread");
    }
}

/// Resolves a name with the system resolver, blocking.
pub fn resolve_blocking(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    (host, port)
        .to_socket_addrs()
        .map(|it| it.collect())
        .map_err(|e| e.to_string())
}
