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
    /// Called when the first port or connector starts using this factory.
    fn start_factory(&self) {}
    /// Called when the last port or connector stops using it.
    fn stop_factory(&self) {}
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
