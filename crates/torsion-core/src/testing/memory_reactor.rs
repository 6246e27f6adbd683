//! A reactor stand-in that records what code asked of it.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::address::Address;
use crate::connector::{Connector, ConnectorImpl, ConnectorState};
use crate::protocol::{ClientFactory, Factory};
use crate::reactor::Reactor;
use crate::tcp::ConnectOptions;
use crate::time::{self, DelayedCall};

use super::Clock;

/// The TCP operations code under test may need; implemented by the real
/// [`Reactor`] and by [`MemoryReactor`], so code written against this trait
/// can be tested without sockets.
pub trait TcpReactor {
    /// Starts listening; returns the bound address.
    fn listen_tcp(&self, addr: SocketAddr, factory: Rc<dyn Factory>) -> io::Result<SocketAddr>;
    /// Starts connecting.
    fn connect_tcp(
        &self,
        addr: SocketAddr,
        factory: Rc<dyn ClientFactory>,
        opts: ConnectOptions,
    ) -> Connector;
}

impl TcpReactor for Reactor {
    fn listen_tcp(&self, addr: SocketAddr, factory: Rc<dyn Factory>) -> io::Result<SocketAddr> {
        Reactor::listen_tcp(self, addr, factory).map(|p| p.local_addr())
    }
    fn connect_tcp(
        &self,
        addr: SocketAddr,
        factory: Rc<dyn ClientFactory>,
        opts: ConnectOptions,
    ) -> Connector {
        Reactor::connect_tcp(self, addr, factory, opts)
    }
}

/// A recorded `listen_tcp`.
pub struct RecordedListen {
    /// The address asked for.
    pub addr: SocketAddr,
    /// The factory given.
    pub factory: Rc<dyn Factory>,
}

/// A recorded `connect_tcp`.
pub struct RecordedConnect {
    /// Where to.
    pub addr: SocketAddr,
    /// The factory given.
    pub factory: Rc<dyn ClientFactory>,
    /// The options given.
    pub opts: ConnectOptions,
    /// The connector handed back.
    pub connector: Connector,
}

/// Records listens and connects; its clock is manual (Twisted's `MemoryReactorClock`).
///
/// ```
/// use torsion_core::{factory_fn, testing::{MemoryReactor, TcpReactor}, Protocol};
/// struct P;
/// impl Protocol for P { fn data_received(&mut self, _: &[u8]) {} }
/// let r = MemoryReactor::new();
/// r.listen_tcp("127.0.0.1:80".parse().unwrap(), factory_fn(|| P)).unwrap();
/// assert_eq!(r.listens().len(), 1);
/// ```
#[derive(Default)]
pub struct MemoryReactor {
    listens: RefCell<Vec<RecordedListen>>,
    connects: RefCell<Vec<RecordedConnect>>,
    clock: Clock,
}

struct FakeConnector(SocketAddr);

impl ConnectorImpl for FakeConnector {
    fn connect(&self, me: &Connector) {
        me.set_state(ConnectorState::Connecting, None);
    }
    fn stop_connecting(&self) {}
    fn destination(&self) -> Address {
        Address::Tcp(self.0)
    }
}

impl MemoryReactor {
    /// A new, empty recorder.
    pub fn new() -> Self {
        Self::default()
    }
    /// The listens recorded so far.
    pub fn listens(&self) -> std::cell::Ref<'_, Vec<RecordedListen>> {
        self.listens.borrow()
    }
    /// The connects recorded so far.
    pub fn connects(&self) -> std::cell::Ref<'_, Vec<RecordedConnect>> {
        self.connects.borrow()
    }
    /// The manual clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }
    /// Advances the manual clock.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by)
    }
}

impl TcpReactor for MemoryReactor {
    fn listen_tcp(&self, addr: SocketAddr, factory: Rc<dyn Factory>) -> io::Result<SocketAddr> {
        self.listens
            .borrow_mut()
            .push(RecordedListen { addr, factory });
        Ok(addr)
    }
    fn connect_tcp(
        &self,
        addr: SocketAddr,
        factory: Rc<dyn ClientFactory>,
        opts: ConnectOptions,
    ) -> Connector {
        let connector = Connector::new(Rc::new(FakeConnector(addr)));
        connector.connect();
        self.connects.borrow_mut().push(RecordedConnect {
            addr,
            factory,
            opts,
            connector: connector.clone(),
        });
        connector
    }
}

impl time::Clock for MemoryReactor {
    fn now(&self) -> Duration {
        time::Clock::now(&self.clock)
    }
    fn call_later(&self, delay: Duration, f: Box<dyn FnOnce()>) -> DelayedCall {
        time::Clock::call_later(&self.clock, delay, f)
    }
}
