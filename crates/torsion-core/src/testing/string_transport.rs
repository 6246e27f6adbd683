//! A transport that records writes instead of sending them.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use crate::address::Address;
use crate::protocol::Producer;
use crate::transport::{ProducerError, Transport, TransportImpl};

#[derive(Default)]
struct State {
    written: Vec<u8>,
    producer: Option<(Rc<dyn Producer>, bool)>,
}

/// Records what a protocol writes; fakes the peer and host addresses.
///
/// ```
/// use torsion_core::{testing::StringTransport, Protocol};
/// let st = StringTransport::new();
/// let t = st.transport();
/// t.write(b"a");
/// t.write(b"b");
/// t.lose_connection();
/// assert_eq!(st.take_written(), b"ab");
/// assert!(st.disconnecting());
/// ```
pub struct StringTransport {
    state: RefCell<State>,
    peer: RefCell<Address>,
    host: RefCell<Address>,
    disconnecting: Cell<bool>,
    aborted: Cell<bool>,
    write_closed: Cell<bool>,
    paused: Cell<bool>,
    me: std::rc::Weak<StringTransport>,
}

impl StringTransport {
    /// A new transport with memory addresses "peer" and "host".
    pub fn new() -> Rc<Self> {
        Self::with_addresses(
            Address::Memory("peer".into()),
            Address::Memory("host".into()),
        )
    }

    /// A new transport claiming the given addresses.
    pub fn with_addresses(peer: Address, host: Address) -> Rc<Self> {
        Rc::new_cyclic(|me| StringTransport {
            state: RefCell::default(),
            peer: RefCell::new(peer),
            host: RefCell::new(host),
            disconnecting: Cell::new(false),
            aborted: Cell::new(false),
            write_closed: Cell::new(false),
            paused: Cell::new(false),
            me: me.clone(),
        })
    }

    /// The handle to give a protocol's `connection_made`.
    pub fn transport(&self) -> Transport {
        Transport::new(
            self.me
                .upgrade()
                .expect("StringTransport is alive while borrowed"),
        )
    }

    /// Everything written so far.
    pub fn written(&self) -> Vec<u8> {
        self.state.borrow().written.clone()
    }

    /// Everything written so far, clearing the record.
    pub fn take_written(&self) -> Vec<u8> {
        std::mem::take(&mut self.state.borrow_mut().written)
    }

    /// Forgets what was written.
    pub fn clear(&self) {
        self.state.borrow_mut().written.clear();
    }

    /// True once `lose_connection` was called.
    pub fn disconnecting(&self) -> bool {
        self.disconnecting.get()
    }

    /// True once `abort_connection` was called.
    pub fn aborted(&self) -> bool {
        self.aborted.get()
    }

    /// True once `lose_write_connection` was called.
    pub fn write_closed(&self) -> bool {
        self.write_closed.get()
    }

    /// True while the protocol has paused reading.
    pub fn reading_paused(&self) -> bool {
        self.paused.get()
    }

    /// The registered producer and whether it streams.
    pub fn producer(&self) -> Option<(Rc<dyn Producer>, bool)> {
        self.state.borrow().producer.clone()
    }
}

impl TransportImpl for StringTransport {
    fn write(&self, data: &[u8]) {
        self.state.borrow_mut().written.extend_from_slice(data);
    }
    fn lose_connection(&self) {
        self.disconnecting.set(true);
    }
    fn abort_connection(&self) {
        self.aborted.set(true);
        self.disconnecting.set(true);
    }
    fn lose_write_connection(&self) {
        self.write_closed.set(true);
    }
    fn peer(&self) -> Address {
        self.peer.borrow().clone()
    }
    fn host(&self) -> Address {
        self.host.borrow().clone()
    }
    fn pause_producing(&self) {
        self.paused.set(true);
    }
    fn resume_producing(&self) {
        self.paused.set(false);
    }
    fn register_producer(
        &self,
        producer: Rc<dyn Producer>,
        streaming: bool,
    ) -> Result<(), ProducerError> {
        let mut st = self.state.borrow_mut();
        if st.producer.is_some() {
            return Err(ProducerError::AlreadyRegistered);
        }
        st.producer = Some((producer, streaming));
        Ok(())
    }
    fn unregister_producer(&self) {
        self.state.borrow_mut().producer = None;
    }
    fn write_buffer_len(&self) -> usize {
        self.state.borrow().written.len()
    }
    fn is_connected(&self) -> bool {
        !self.disconnecting.get()
    }
    fn kind(&self) -> &'static str {
        "string (test)"
    }
}
