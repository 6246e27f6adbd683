//! Protocols, factories and producers: the user's side of a connection.
//!
//! A [`Protocol`] is a state machine that receives bytes and writes to the
//! [`Transport`] it was given in `connection_made`. It never owns a socket, so
//! the same value runs over TCP, a Unix socket, TLS, a pipe, or the in-memory
//! transports of [`crate::testing`].

use std::fmt;
use std::rc::Rc;

use crate::address::Address;
use crate::connector::Connector;
use crate::failure::Failure;
use crate::transport::Transport;

/// A stream protocol: bytes in, writes out through its transport.
///
/// ```
/// use torsion_core::{Protocol, Transport};
/// /// Sends back whatever it receives.
/// #[derive(Default)]
/// struct Echo(Option<Transport>);
/// impl Protocol for Echo {
///     fn connection_made(&mut self, t: Transport) { self.0 = Some(t); }
///     fn data_received(&mut self, data: &[u8]) {
///         if let Some(t) = &self.0 { t.write(data); }
///     }
/// }
/// ```
pub trait Protocol: 'static {
    /// The connection is up; keep the transport to write to it later.
    fn connection_made(&mut self, transport: Transport) {
        let _ = transport;
    }
    /// Bytes arrived. The slice borrows the reactor's read buffer: copy what you keep.
    fn data_received(&mut self, data: &[u8]);
    /// The connection is gone. A clean close carries [`crate::ConnectionError::Done`].
    fn connection_lost(&mut self, reason: Failure) {
        let _ = reason;
    }
    /// Return `true` to be told of half-closes instead of having the
    /// connection closed when the peer stops sending.
    fn half_closeable(&self) -> bool {
        false
    }
    /// The peer shut down its sending side (only when `half_closeable`); we may still write.
    fn read_connection_lost(&mut self) {}
    /// Our sending side was shut down by `lose_write_connection`; we may still read.
    fn write_connection_lost(&mut self) {}
}

/// Builds a protocol for each new connection.
///
/// Methods take `&self`: factories are shared between a port and its
/// connections; keep mutable state in `Cell`/`RefCell`.
pub trait Factory: 'static {
    /// A protocol for a connection with `peer`, or `None` to refuse it (the connection is closed).
    fn build_protocol(&self, peer: &Address) -> Option<Box<dyn Protocol>>;
    /// Called when the first port or connector starts using this factory
    /// (once, however many ports share it).
    fn start_factory(&self) {}
    /// Called when the last port or connector stops using it: every port
    /// has stopped listening and every connector has ended (failed, or its
    /// connection was lost, without reconnecting from the callback). It may
    /// be started again later.
    fn stop_factory(&self) {}
}

thread_local! {
    // How many ports and connectors use each factory, by its address. A
    // factory is !Send and so is the reactor: a per-thread count suffices.
    static FACTORY_USERS: std::cell::RefCell<std::collections::HashMap<usize, usize>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

fn factory_key<F: Factory + ?Sized>(f: &F) -> usize {
    (f as *const F).cast::<()>() as usize
}

/// A port, connector or wrapping factory starts using `f`: the first user
/// calls its `start_factory` (Twisted's `doStart`). Ports and connectors do
/// this themselves; a factory that wraps another calls it from its own
/// `start_factory`, so the inner factory is started once however many
/// wrappers and ports share it.
///
/// ```
/// use torsion_core::protocol::{factory_in_use, factory_released, Factory};
/// use torsion_core::{Address, Protocol};
/// use std::cell::Cell;
///
/// #[derive(Default)]
/// struct Counting(Cell<u32>, Cell<u32>);
/// impl Factory for Counting {
///     fn build_protocol(&self, _: &Address) -> Option<Box<dyn Protocol>> { None }
///     fn start_factory(&self) { self.0.set(self.0.get() + 1) }
///     fn stop_factory(&self) { self.1.set(self.1.get() + 1) }
/// }
/// let f = Counting::default();
/// factory_in_use(&f);
/// factory_in_use(&f); // a second user: no second start
/// factory_released(&f);
/// assert_eq!((f.0.get(), f.1.get()), (1, 0));
/// factory_released(&f); // the last user: stopped
/// assert_eq!((f.0.get(), f.1.get()), (1, 1));
/// ```
pub fn factory_in_use<F: Factory + ?Sized>(f: &F) {
    let first = FACTORY_USERS.with(|m| {
        let mut m = m.borrow_mut();
        let n = m.entry(factory_key(f)).or_insert(0);
        *n += 1;
        *n == 1
    });
    if first {
        if let Err(p) = crate::failure::catch(|| f.start_factory()) {
            tracing::error!(failure = %p, "start_factory panicked");
        }
    }
}

/// A port, connector or wrapping factory stops using `f`: the last user
/// calls its `stop_factory` (Twisted's `doStop`). Unbalanced calls are
/// ignored. See [`factory_in_use`].
pub fn factory_released<F: Factory + ?Sized>(f: &F) {
    let last = FACTORY_USERS.with(|m| {
        let mut m = m.borrow_mut();
        let key = factory_key(f);
        match m.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                m.remove(&key);
                true
            }
            None => false,
        }
    });
    if last {
        if let Err(p) = crate::failure::catch(|| f.stop_factory()) {
            tracing::error!(failure = %p, "stop_factory panicked");
        }
    }
}

/// A factory used by servers. Every [`Factory`] is one.
pub trait ServerFactory: Factory {}
impl<F: Factory + ?Sized> ServerFactory for F {}

/// A factory used by clients: it also hears how connection attempts end.
pub trait ClientFactory: Factory {
    /// A connection attempt starts.
    fn started_connecting(&self, connector: &Connector) {
        let _ = connector;
    }
    /// The attempt failed: refused, timed out, DNS failure, cancelled.
    fn client_connection_failed(&self, connector: &Connector, reason: Failure) {
        let _ = (connector, reason);
    }
    /// An established connection ended.
    fn client_connection_lost(&self, connector: &Connector, reason: Failure) {
        let _ = (connector, reason);
    }
}

/// A factory made from a closure returning a fresh protocol.
pub struct FnFactory<F>(F);

impl<F> fmt::Debug for FnFactory<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnFactory")
    }
}

impl<F, P> Factory for FnFactory<F>
where
    F: Fn() -> P + 'static,
    P: Protocol,
{
    fn build_protocol(&self, _peer: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new((self.0)()))
    }
}

impl<F, P> ClientFactory for FnFactory<F>
where
    F: Fn() -> P + 'static,
    P: Protocol,
{
}

/// A factory that builds `P` with `f` for every connection.
///
/// ```
/// use torsion_core::{factory_fn, Protocol};
/// struct Discard;
/// impl Protocol for Discard { fn data_received(&mut self, _: &[u8]) {} }
/// let factory = factory_fn(|| Discard);
/// ```
pub fn factory_fn<F, P>(f: F) -> Rc<FnFactory<F>>
where
    F: Fn() -> P + 'static,
    P: Protocol,
{
    Rc::new(FnFactory(f))
}

/// Something that produces data for a consumer (a transport) and can be told to pause.
///
/// A *streaming* (push) producer writes on its own and is paused when the
/// transport's buffer passes its high-water mark, resumed when it drains
/// below the low-water mark. A non-streaming (pull) producer writes only when
/// `resume_producing` asks it to, once each time the buffer empties.
///
/// Methods are called synchronously from inside `Transport::write`, so an
/// implementation must not hold a `RefCell` borrow of its own state while it
/// writes.
pub trait Producer: 'static {
    /// Stop producing for now.
    fn pause_producing(&self);
    /// Produce again (push), or produce one more piece (pull).
    fn resume_producing(&self);
    /// The consumer is gone: stop for good.
    fn stop_producing(&self);
}
