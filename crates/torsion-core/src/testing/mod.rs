//! Tools for testing protocols without sockets or real time.
//!
//! - [`StringTransport`]: a transport that records what is written.
//! - [`Clock`]: manual time; `advance` runs what falls due.
//! - [`MemoryReactor`]: records `listen_tcp`/`connect_tcp` calls.
//! - [`LoopbackPump`]: connects a server and a client protocol in memory and
//!   moves bytes between them deterministically.
//! - [`AccumulatingProtocol`]: a protocol that records everything it sees.
//!
//! ```
//! use torsion_core::testing::{AccumulatingProtocol, LoopbackPump};
//! let (server, server_log) = AccumulatingProtocol::new();
//! let (client, client_log) = AccumulatingProtocol::new();
//! let pump = LoopbackPump::connect(Box::new(server), Box::new(client));
//! pump.client_transport().write(b"hi");
//! pump.pump();
//! assert_eq!(server_log.data(), b"hi");
//! # let _ = client_log;
//! ```

mod clock;
mod loopback;
mod memory_reactor;
mod string_transport;

pub use clock::Clock;
pub use loopback::LoopbackPump;
pub use memory_reactor::{MemoryReactor, TcpReactor};
pub use string_transport::StringTransport;

use std::cell::RefCell;
use std::rc::Rc;

use crate::failure::Failure;
use crate::protocol::Protocol;
use crate::transport::Transport;

/// What an [`AccumulatingProtocol`] saw.
#[derive(Default, Debug)]
pub struct Accumulated {
    /// Every byte received, in order.
    pub data: Vec<u8>,
    /// The transport, once connected.
    pub transport: Option<Transport>,
    /// True once `connection_made` ran.
    pub made: bool,
    /// The reason, once `connection_lost` ran.
    pub lost: Option<Failure>,
    /// True once `read_connection_lost` ran (half-close).
    pub read_closed: bool,
    /// True once `write_connection_lost` ran.
    pub write_closed: bool,
}

/// A shared view of what an [`AccumulatingProtocol`] saw.
#[derive(Clone, Default, Debug)]
pub struct AccumulatedLog(pub Rc<RefCell<Accumulated>>);

impl AccumulatedLog {
    /// The bytes received so far.
    pub fn data(&self) -> Vec<u8> {
        self.0.borrow().data.clone()
    }
    /// The transport, once connected.
    pub fn transport(&self) -> Option<Transport> {
        self.0.borrow().transport.clone()
    }
    /// True once connected.
    pub fn made(&self) -> bool {
        self.0.borrow().made
    }
    /// The reason, once the connection is lost.
    pub fn lost(&self) -> Option<Failure> {
        self.0.borrow().lost.clone()
    }
}

/// A protocol that records everything; optionally half-closeable.
pub struct AccumulatingProtocol {
    log: AccumulatedLog,
    half_close: bool,
}

impl AccumulatingProtocol {
    /// A new protocol and the log it writes to.
    pub fn new() -> (Self, AccumulatedLog) {
        let log = AccumulatedLog::default();
        (
            AccumulatingProtocol {
                log: log.clone(),
                half_close: false,
            },
            log,
        )
    }

    /// A half-closeable one.
    pub fn half_closeable() -> (Self, AccumulatedLog) {
        let (mut p, log) = Self::new();
        p.half_close = true;
        (p, log)
    }
}

impl Protocol for AccumulatingProtocol {
    fn connection_made(&mut self, transport: Transport) {
        let mut l = self.log.0.borrow_mut();
        l.made = true;
        l.transport = Some(transport);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.log.0.borrow_mut().data.extend_from_slice(data);
    }
    fn connection_lost(&mut self, reason: Failure) {
        self.log.0.borrow_mut().lost = Some(reason);
    }
    fn half_closeable(&self) -> bool {
        self.half_close
    }
    fn read_connection_lost(&mut self) {
        self.log.0.borrow_mut().read_closed = true;
    }
    fn write_connection_lost(&mut self) {
        self.log.0.borrow_mut().write_closed = true;
    }
}
