//! `Connector`: the handle of an outgoing connection attempt.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::rc::Rc;

use crate::address::Address;
use crate::protocol::{factory_in_use, factory_released, Factory};
use crate::transport::Transport;

/// Where a connector stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorState {
    /// Not trying (failed, lost, or stopped).
    Disconnected,
    /// An attempt is under way.
    Connecting,
    /// Connected; `transport()` is set.
    Connected,
}

/// What each kind of client connector implements.
pub trait ConnectorImpl: 'static {
    /// Starts a new attempt (used by reconnecting factories).
    fn connect(&self, me: &Connector);
    /// Abandons an attempt under way; the factory hears `client_connection_failed`
    /// with [`crate::ConnectionError::Cancelled`].
    fn stop_connecting(&self);
    /// Where it connects to.
    fn destination(&self) -> Address;
}

struct Shared {
    imp: Rc<dyn ConnectorImpl>,
    state: RefCell<(ConnectorState, Option<Transport>)>,
    // Whether this connector counts as a user of its factory (Twisted's
    // `factoryStarted`): set on connect, cleared when an attempt fails or a
    // connection ends and the factory did not reconnect from its callback.
    factory_started: Cell<bool>,
}

/// A connection attempt and, once it succeeds, the connection.
///
/// Cheap to clone; all clones refer to the same attempt.
#[derive(Clone)]
pub struct Connector(Rc<Shared>);

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Connector({} {:?})", self.destination(), self.state())
    }
}

impl Connector {
    /// Wraps an implementation.
    pub fn new(imp: Rc<dyn ConnectorImpl>) -> Self {
        Connector(Rc::new(Shared {
            imp,
            state: RefCell::new((ConnectorState::Disconnected, None)),
            factory_started: Cell::new(false),
        }))
    }

    /// Starts (or restarts) connecting.
    pub fn connect(&self) {
        self.0.imp.connect(self)
    }

    /// Abandons the attempt under way.
    pub fn stop_connecting(&self) {
        if self.state() == ConnectorState::Connecting {
            self.0.imp.stop_connecting()
        }
    }

    /// Closes the connection if connected, or stops connecting.
    pub fn disconnect(&self) {
        match self.state() {
            ConnectorState::Connecting => self.stop_connecting(),
            ConnectorState::Connected => {
                if let Some(t) = self.transport() {
                    t.lose_connection()
                }
            }
            ConnectorState::Disconnected => {}
        }
    }

    /// Where it connects to.
    pub fn destination(&self) -> Address {
        self.0.imp.destination()
    }

    /// The current state.
    pub fn state(&self) -> ConnectorState {
        self.0.state.borrow().0
    }

    /// The connection's transport, while connected.
    pub fn transport(&self) -> Option<Transport> {
        self.0.state.borrow().1.clone()
    }

    /// For connector implementations, when an attempt starts: the connector
    /// becomes a user of `factory` (the first user starts it).
    pub(crate) fn start_using(&self, factory: &dyn Factory) {
        if !self.0.factory_started.replace(true) {
            factory_in_use(factory);
        }
    }

    /// For connector implementations, after `client_connection_failed` or
    /// `client_connection_lost` returned: unless the factory reconnected
    /// from that callback, the connector stops using it.
    pub(crate) fn stop_using_if_idle(&self, factory: &dyn Factory) {
        if self.state() == ConnectorState::Disconnected && self.0.factory_started.replace(false) {
            factory_released(factory);
        }
    }

    /// For connector implementations: record a state change.
    pub fn set_state(&self, state: ConnectorState, transport: Option<Transport>) {
        *self.0.state.borrow_mut() = (state, transport);
    }
}
