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

/// The names most programs need.
pub mod prelude {
    pub use torsion_core::{
        factory_fn, Address, ClientFactory, Clock, ConnectOptions, ConnectionError, Deferred,
        Factory, Failure, Protocol, Reactor, ReactorHandle, Transport,
    };
}
