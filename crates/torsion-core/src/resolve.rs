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

// ---- a replaceable resolver ----

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

use crate::deferred::Deferred;
use crate::error::ConnectionError;

/// Turns a host name into addresses. The reactor's connectors and the
/// hostname endpoint use one; replace it to use a thread pool, a DNS client
/// of your own, or a fixed table in tests.
///
/// ```
/// use std::net::SocketAddr;
/// use torsion_core::{Deferred, Reactor, resolve::Resolver};
/// /// Answers every name with localhost.
/// struct Fixed;
/// impl Resolver for Fixed {
///     fn resolve(&self, _: &Reactor, _host: &str, port: u16) -> Deferred<Vec<SocketAddr>> {
///         Deferred::succeed(vec![SocketAddr::from(([127, 0, 0, 1], port))])
///     }
/// }
/// ```
pub trait Resolver: 'static {
    /// The addresses of `host` with `port`, in the resolver's preference
    /// order. Fails with [`ConnectionError::DnsLookup`] when there are none.
    fn resolve(&self, reactor: &Reactor, host: &str, port: u16) -> Deferred<Vec<SocketAddr>>;
}

thread_local! {
    static THREAD_RESOLVER: RefCell<Option<Rc<dyn Resolver>>> = const { RefCell::new(None) };
}

/// Installs the resolver this thread's reactor uses for [`Reactor::resolve`]
/// and for client endpoints (one reactor per thread, so per thread is per
/// reactor). A thread-pool resolver is installed this way.
pub fn set_thread_resolver(resolver: Rc<dyn Resolver>) {
    THREAD_RESOLVER.with(|r| *r.borrow_mut() = Some(resolver));
}

/// The resolver installed with [`set_thread_resolver`], or [`ThreadResolver`].
pub fn thread_resolver() -> Rc<dyn Resolver> {
    THREAD_RESOLVER.with(|r| {
        r.borrow()
            .clone()
            .unwrap_or_else(|| Rc::new(ThreadResolver))
    })
}

impl Reactor {
    /// Resolves `host` with this thread's resolver (see [`set_thread_resolver`]).
    ///
    /// ```
    /// use torsion_core::Reactor;
    /// let reactor = Reactor::new().unwrap();
    /// let d = reactor.resolve("127.0.0.1", 80); // a literal answers at once
    /// assert!(d.called());
    /// ```
    pub fn resolve(&self, host: &str, port: u16) -> Deferred<Vec<SocketAddr>> {
        thread_resolver().resolve(self, host, port)
    }
}

/// The default resolver: the system's `getaddrinfo` (it blocks), run on the
/// reactor's thread pool. IP literals are answered at once.
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadResolver;

/// Lookups in flight on this thread: (last id, id → Deferred).
type Waiting = (u64, HashMap<u64, Deferred<Vec<SocketAddr>>>);

thread_local! {
    static WAITING: RefCell<Waiting> = RefCell::new((0, HashMap::new()));
}

impl Resolver for ThreadResolver {
    fn resolve(&self, reactor: &Reactor, host: &str, port: u16) -> Deferred<Vec<SocketAddr>> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return Deferred::succeed(vec![SocketAddr::new(ip, port)]);
        }
        let d = Deferred::new();
        // The Deferred is !Send: park it here, keyed by an id the thread hands back.
        let id = WAITING.with(|w| {
            let mut w = w.borrow_mut();
            w.0 += 1;
            let id = w.0;
            w.1.insert(id, d.clone());
            id
        });
        let handle = reactor.handle();
        let name = host.to_string();
        reactor.resolve_in_background(name.clone(), port, move |result| {
            handle.call_from_thread(move || {
                let Some(d) = WAITING.with(|w| w.borrow_mut().1.remove(&id)) else {
                    return;
                };
                let r = match result {
                    Ok(v) if !v.is_empty() => Ok(v),
                    Ok(_) => Err(crate::Failure::new(ConnectionError::DnsLookup {
                        host: name,
                        message: "no addresses".into(),
                    })),
                    Err(message) => Err(crate::Failure::new(ConnectionError::DnsLookup {
                        host: name,
                        message,
                    })),
                };
                let _ = d.fire(r);
            });
        });
        d
    }
}
