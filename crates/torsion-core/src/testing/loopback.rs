//! Two protocols connected in memory, with bytes moved by hand.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use crate::address::Address;
use crate::error::ConnectionError;
use crate::failure::Failure;
use crate::protocol::{Producer, Protocol};
use crate::stream::DEFAULT_HIGH_WATER;
use crate::transport::{ProducerError, Transport, TransportImpl};

struct End {
    name: &'static str,
    me: Weak<End>,
    out: RefCell<Vec<u8>>,
    protocol: RefCell<Option<Box<dyn Protocol>>>,
    lose: Cell<bool>,
    abort: Cell<bool>,
    write_shut_pending: Cell<bool>,
    write_shut: Cell<bool>,
    read_shut: Cell<bool>,
    paused: Cell<bool>,
    closed: Cell<bool>,
    producer: RefCell<Option<(Rc<dyn Producer>, bool)>>,
    producer_paused: Cell<bool>,
}

impl End {
    fn new(name: &'static str) -> Rc<End> {
        Rc::new_cyclic(|me| End {
            name,
            me: me.clone(),
            out: RefCell::default(),
            protocol: RefCell::new(None),
            lose: Cell::new(false),
            abort: Cell::new(false),
            write_shut_pending: Cell::new(false),
            write_shut: Cell::new(false),
            read_shut: Cell::new(false),
            paused: Cell::new(false),
            closed: Cell::new(false),
            producer: RefCell::new(None),
            producer_paused: Cell::new(false),
        })
    }

    fn with_protocol(&self, f: impl FnOnce(&mut dyn Protocol)) {
        let p = self.protocol.borrow_mut().take();
        if let Some(mut p) = p {
            f(&mut *p);
            let mut slot = self.protocol.borrow_mut();
            if slot.is_none() && !self.closed.get() {
                *slot = Some(p);
            }
        }
    }

    fn close(&self, reason: Failure) {
        if self.closed.replace(true) {
            return;
        }
        if let Some((p, _)) = self.producer.borrow_mut().take() {
            p.stop_producing();
        }
        let p = self.protocol.borrow_mut().take();
        if let Some(mut p) = p {
            p.connection_lost(reason);
        }
    }
}

impl TransportImpl for End {
    fn write(&self, data: &[u8]) {
        if self.closed.get() || self.write_shut.get() || self.write_shut_pending.get() {
            return;
        }
        self.out.borrow_mut().extend_from_slice(data);
        let len = self.out.borrow().len();
        if len > DEFAULT_HIGH_WATER && !self.producer_paused.get() {
            let p = self.producer.borrow().clone();
            if let Some((p, true)) = p {
                self.producer_paused.set(true);
                p.pause_producing();
            }
        }
    }
    fn lose_connection(&self) {
        self.lose.set(true);
    }
    fn abort_connection(&self) {
        self.abort.set(true);
    }
    fn lose_write_connection(&self) {
        self.write_shut_pending.set(true);
    }
    fn peer(&self) -> Address {
        Address::Memory(
            if self.name == "server" {
                "client"
            } else {
                "server"
            }
            .into(),
        )
    }
    fn host(&self) -> Address {
        Address::Memory(self.name.into())
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
        if self.closed.get() {
            return Err(ProducerError::Closed);
        }
        if self.producer.borrow().is_some() {
            return Err(ProducerError::AlreadyRegistered);
        }
        *self.producer.borrow_mut() = Some((producer.clone(), streaming));
        self.producer_paused.set(false);
        // As over a socket: a pull producer is asked for its first piece at
        // once; a push producer registered over a full buffer starts paused.
        if !streaming {
            producer.resume_producing();
        } else if self.out.borrow().len() > DEFAULT_HIGH_WATER {
            self.producer_paused.set(true);
            producer.pause_producing();
        }
        Ok(())
    }
    fn unregister_producer(&self) {
        self.producer.borrow_mut().take();
        self.producer_paused.set(false);
    }
    fn write_buffer_len(&self) -> usize {
        self.out.borrow().len()
    }
    fn is_connected(&self) -> bool {
        !self.closed.get()
    }
    fn kind(&self) -> &'static str {
        "memory loopback"
    }
}

/// A server and a client protocol connected in memory.
///
/// Nothing moves until [`LoopbackPump::pump`] (or `pump_once`) is called, so
/// tests decide exactly when bytes arrive. Closes, aborts, half-closes,
/// paused reading and producers behave as over a socket.
pub struct LoopbackPump {
    server: Rc<End>,
    client: Rc<End>,
}

impl LoopbackPump {
    /// Connects the two protocols (`connection_made` runs on both, server first).
    pub fn connect(server: Box<dyn Protocol>, client: Box<dyn Protocol>) -> LoopbackPump {
        let s = End::new("server");
        let c = End::new("client");
        *s.protocol.borrow_mut() = Some(server);
        *c.protocol.borrow_mut() = Some(client);
        for e in [&s, &c] {
            let t = Transport::new(e.me.upgrade().expect("alive") as Rc<dyn TransportImpl>);
            e.with_protocol(|p| p.connection_made(t));
        }
        LoopbackPump {
            server: s,
            client: c,
        }
    }

    /// The server's transport.
    pub fn server_transport(&self) -> Transport {
        Transport::new(self.server.clone())
    }

    /// The client's transport.
    pub fn client_transport(&self) -> Transport {
        Transport::new(self.client.clone())
    }

    /// Moves what is pending once in each direction; true if anything happened.
    pub fn pump_once(&self) -> bool {
        let a = Self::step(&self.client, &self.server);
        let b = Self::step(&self.server, &self.client);
        a || b
    }

    /// Pumps until nothing moves.
    pub fn pump(&self) {
        let mut rounds = 0u64;
        while self.pump_once() {
            rounds += 1;
            assert!(rounds < 10_000_000, "loopback pump does not settle");
        }
    }

    /// True once both ends are closed.
    pub fn closed(&self) -> bool {
        self.server.closed.get() && self.client.closed.get()
    }

    fn step(from: &Rc<End>, to: &Rc<End>) -> bool {
        if from.closed.get() {
            return false;
        }
        if from.abort.get() {
            from.close(Failure::new(ConnectionError::Aborted));
            to.close(Failure::new(ConnectionError::Reset));
            return true;
        }
        let mut moved = false;
        if !to.paused.get() && !to.closed.get() && !from.out.borrow().is_empty() {
            let data = std::mem::take(&mut *from.out.borrow_mut());
            to.with_protocol(|p| p.data_received(&data));
            moved = true;
            let producer = from.producer.borrow().clone();
            if let Some((p, streaming)) = producer {
                // Pull producers are asked for more after every delivery;
                // push producers only if the buffer had paused them.
                if !streaming || from.producer_paused.replace(false) {
                    p.resume_producing();
                }
            }
        }
        if from.out.borrow().is_empty() {
            if from.lose.get() {
                from.close(Failure::new(ConnectionError::Done));
                to.close(Failure::new(ConnectionError::Done));
                return true;
            }
            if from.write_shut_pending.replace(false) {
                from.write_shut.set(true);
                from.with_protocol(|p| p.write_connection_lost());
                let half = to
                    .protocol
                    .borrow()
                    .as_ref()
                    .is_some_and(|p| p.half_closeable());
                if half {
                    to.read_shut.set(true);
                    to.with_protocol(|p| p.read_connection_lost());
                    if to.write_shut.get() {
                        from.close(Failure::new(ConnectionError::Done));
                        to.close(Failure::new(ConnectionError::Done));
                    }
                } else {
                    from.close(Failure::new(ConnectionError::Done));
                    to.close(Failure::new(ConnectionError::Done));
                }
                return true;
            }
        }
        moved
    }
}
