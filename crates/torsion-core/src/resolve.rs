//! Name resolution off the reactor thread.
//!
//! `getaddrinfo` blocks, so it runs on the reactor's thread pool and its
//! answer comes back through `call_from_thread`.

use std::net::{SocketAddr, ToSocketAddrs};

use crate::reactor::Reactor;
use crate::threads::Job;

impl Reactor {
    /// Resolves `host:port` on the reactor's thread pool and hands the result
    /// to `done` (on the pool thread; callers bounce it to the reactor with
    /// `call_from_thread`). If the pool stops before the lookup runs, `done`
    /// gets an error rather than never being called.
    pub(crate) fn resolve_in_background(
        &self,
        host: String,
        port: u16,
        done: impl FnOnce(Result<Vec<SocketAddr>, String>) + Send + 'static,
    ) {
        self.thread_pool()
            .submit(Job::new(move |stopped| match stopped {
                None => done(resolve_blocking(&host, port)),
                Some(failure) => done(Err(failure.to_string())),
            }));
    }
}

/// Resolves a name with the system resolver, blocking.
pub fn resolve_blocking(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    (host, port)
        .to_socket_addrs()
        .map(|it| it.collect())
        .map_err(|e| e.to_string())
}
