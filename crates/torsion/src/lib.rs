//! # Torsion
//!
//! An event-driven networking framework in the spirit of Twisted: a reactor
//! per thread, protocols separate from transports, Deferreds that are also
//! futures. This facade re-exports the pieces users need; protocol crates
//! plug in behind features as they land.
//!
//! ```no_run
//! use torsion::prelude::*;
//!
//! #[derive(Default)]
//! struct Echo(Option<Transport>);
//! impl Protocol for Echo {
//!     fn connection_made(&mut self, t: Transport) { self.0 = Some(t); }
//!     fn data_received(&mut self, data: &[u8]) {
//!         if let Some(t) = &self.0 { t.write(data); }
//!     }
//! }
//!
//! let reactor = Reactor::new()?;
//! let port = reactor.listen_tcp("127.0.0.1:0".parse()?, factory_fn(Echo::default))?;
//! println!("echo on {}", port.host());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub use torsion_core::*;

/// TLS (feature `tls`, on by default).
#[cfg(feature = "tls")]
pub use torsion_tls as tls;

/// HTTP (feature `http`).
#[cfg(feature = "http")]
pub use torsion_http as http;

/// Database pool (feature `db`).
#[cfg(feature = "db")]
pub use torsion_db as db;

/// Endpoint strings with every form this build knows.
///
/// torsion-core parses `tcp:`, `tcp6:`, `unix:`, `systemd:` and `stdio:`;
/// these functions first register the forms of the enabled protocol crates
/// (`ssl:` and `tls:` with the `tls` feature) in the calling thread's
/// registry, so every program built on the facade accepts them without
/// extra code.
///
/// ```
/// let ep = torsion::endpoints::server_from_string("tcp:0:interface=127.0.0.1").unwrap();
/// assert_eq!(ep.to_string(), "tcp:0:interface=127.0.0.1");
/// #[cfg(feature = "tls")]
/// assert!(torsion::endpoints::server_from_string("ssl:8443:privateKey=k.pem:certKey=c.pem").is_ok());
/// ```
pub mod endpoints {
    use std::rc::Rc;

    pub use torsion_core::endpoint::{
        ClientEndpoint, EndpointError, ListenError, ListeningHandle, ServerEndpoint,
    };
    use torsion_core::{ClientFactory, Connector, Factory, Reactor};

    fn register_builtin_extensions() {
        thread_local! {
            static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        DONE.with(|done| {
            if !done.replace(true) {
                #[cfg(feature = "tls")]
                torsion_tls::register_endpoints();
            }
        });
    }

    /// Parses a server endpoint string (`tcp:8080`, `ssl:8443:privateKey=…:certKey=…`, …).
    pub fn server_from_string(s: &str) -> Result<ServerEndpoint, EndpointError> {
        register_builtin_extensions();
        torsion_core::endpoint::server_from_string(s)
    }

    /// Parses a client endpoint string (`tcp:host=H:port=P`, `tls:host=H:port=P`, …).
    pub fn client_from_string(s: &str) -> Result<ClientEndpoint, EndpointError> {
        register_builtin_extensions();
        torsion_core::endpoint::client_from_string(s)
    }

    /// Error of [`listen`]: a bad string or a failed listen.
    #[derive(Debug, thiserror::Error)]
    pub enum ListenStringError {
        /// The string did not parse.
        #[error(transparent)]
        Parse(#[from] EndpointError),
        /// Listening failed.
        #[error(transparent)]
        Listen(#[from] ListenError),
    }

    /// Parses `spec` and listens on it with `factory`.
    pub fn listen(
        reactor: &Reactor,
        spec: &str,
        factory: Rc<dyn Factory>,
    ) -> Result<Box<dyn ListeningHandle>, ListenStringError> {
        Ok(server_from_string(spec)?.listen(reactor, factory)?)
    }

    /// Parses `spec` and connects to it with `factory`.
    pub fn connect(
        reactor: &Reactor,
        spec: &str,
        factory: Rc<dyn ClientFactory>,
    ) -> Result<Connector, EndpointError> {
        Ok(client_from_string(spec)?.connect(reactor, factory))
    }
}

/// The names most programs need.
pub mod prelude {
    pub use torsion_core::{
        factory_fn, Address, ClientFactory, Clock, ConnectOptions, ConnectionError, Deferred,
        Factory, Failure, Protocol, Reactor, ReactorHandle, Transport,
    };
}
