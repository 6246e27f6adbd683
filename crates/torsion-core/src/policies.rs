//! Policies wrapped around any factory: idle timeouts, connection limits,
//! throttling, traffic logging.
//!
//! A [`WrappingFactory`] builds the inner factory's protocols and slips a
//! thin layer between each one and its transport. The layer calls the
//! [`ConnectionPolicy`] hooks on every connection, read and write, so a
//! policy sees the traffic without the protocol knowing. Policies take a
//! [`Clock`], so tests drive them with [`crate::testing::Clock`].
//!
//! ```
//! use std::rc::Rc;
//! use std::time::Duration;
//! use torsion_core::{factory_fn, Protocol, Reactor};
//! use torsion_core::policies::{IdleTimeout, LimitConnections, WrappingFactory};
//! struct Quiet;
//! impl Protocol for Quiet { fn data_received(&mut self, _: &[u8]) {} }
//! let reactor = Reactor::new().unwrap();
//! let clock: Rc<dyn torsion_core::Clock> = Rc::new(reactor.clone());
//! let factory = WrappingFactory::new(factory_fn(|| Quiet))
//!     .with(Rc::new(IdleTimeout::new(clock, Duration::from_secs(60))))
//!     .with(Rc::new(LimitConnections::new(Some(100), Some(5))));
//! reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), Rc::new(factory)).unwrap();
//! ```

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use crate::address::Address;
use crate::failure::Failure;
use crate::protocol::{ClientFactory, Factory, Producer, Protocol};
use crate::time::{Clock, DelayedCall};
use crate::transport::{ProducerError, Transport, TransportImpl, UnixCredentials};
use crate::NotSupportedError;

/// One wrapped connection, as policies see it.
#[derive(Clone, Debug)]
pub struct PolicyConnection {
    /// Unique per factory.
    pub id: u64,
    /// The peer.
    pub peer: Address,
    /// The real transport underneath (writes here bypass the policies).
    pub transport: Transport,
}

/// What a policy decides about a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteAction {
    /// Send it on.
    Pass,
    /// The policy took the bytes and will send them later itself.
    Held,
}

/// Hooks a [`WrappingFactory`] calls. All default to doing nothing.
pub trait ConnectionPolicy: 'static {
    /// Whether to accept a connection from `peer`; `false` closes it at once.
    fn allow(&self, peer: &Address) -> bool {
        let _ = peer;
        true
    }
    /// A connection was accepted and wrapped.
    fn connection_made(&self, conn: &PolicyConnection) {
        let _ = conn;
    }
    /// Bytes arrived (before the protocol sees them).
    fn data_received(&self, conn: &PolicyConnection, data: &[u8]) {
        let _ = (conn, data);
    }
    /// The protocol writes (before the transport sees it).
    fn write(&self, conn: &PolicyConnection, data: &[u8]) -> WriteAction {
        let _ = (conn, data);
        WriteAction::Pass
    }
    /// The connection ended.
    fn connection_lost(&self, conn: &PolicyConnection, reason: &Failure) {
        let _ = (conn, reason);
    }
}

/// A factory that wraps every protocol of `inner` with policies.
pub struct WrappingFactory {
    inner: Rc<dyn Factory>,
    client: Option<Rc<dyn ClientFactory>>,
    policies: Rc<Vec<Rc<dyn ConnectionPolicy>>>,
    next_id: Cell<u64>,
}

impl fmt::Debug for WrappingFactory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WrappingFactory({} policies)", self.policies.len())
    }
}

impl WrappingFactory {
    /// Wraps a server factory.
    pub fn new(inner: Rc<dyn Factory>) -> Self {
        WrappingFactory {
            inner,
            client: None,
            policies: Rc::new(Vec::new()),
            next_id: Cell::new(0),
        }
    }

    /// Wraps a client factory (its connection-failed/lost hooks are forwarded).
    pub fn new_client<F: ClientFactory>(inner: Rc<F>) -> Self {
        WrappingFactory {
            inner: inner.clone(),
            client: Some(inner),
            policies: Rc::new(Vec::new()),
            next_id: Cell::new(0),
        }
    }

    /// Adds a policy (applied in the order added).
    pub fn with(mut self, policy: Rc<dyn ConnectionPolicy>) -> Self {
        Rc::make_mut(&mut self.policies).push(policy);
        self
    }
}

impl Factory for WrappingFactory {
    fn build_protocol(&self, peer: &Address) -> Option<Box<dyn Protocol>> {
        if !self.policies.iter().all(|p| p.allow(peer)) {
            tracing::info!(peer = %peer, "connection refused by policy");
            return None;
        }
        let inner = self.inner.build_protocol(peer)?;
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        Some(Box::new(WrappedProtocol {
            inner,
            policies: self.policies.clone(),
            id,
            peer: peer.clone(),
            conn: None,
        }))
    }
    fn start_factory(&self) {
        crate::protocol::factory_in_use(&*self.inner)
    }
    fn stop_factory(&self) {
        crate::protocol::factory_released(&*self.inner)
    }
}

impl ClientFactory for WrappingFactory {
    fn started_connecting(&self, connector: &crate::Connector) {
        if let Some(c) = &self.client {
            c.started_connecting(connector)
        }
    }
    fn client_connection_failed(&self, connector: &crate::Connector, reason: Failure) {
        if let Some(c) = &self.client {
            c.client_connection_failed(connector, reason)
        }
    }
    fn client_connection_lost(&self, connector: &crate::Connector, reason: Failure) {
        if let Some(c) = &self.client {
            c.client_connection_lost(connector, reason)
        }
    }
}

struct WrappedProtocol {
    inner: Box<dyn Protocol>,
    policies: Rc<Vec<Rc<dyn ConnectionPolicy>>>,
    id: u64,
    peer: Address,
    conn: Option<PolicyConnection>,
}

impl Protocol for WrappedProtocol {
    fn connection_made(&mut self, transport: Transport) {
        let conn = PolicyConnection {
            id: self.id,
            peer: self.peer.clone(),
            transport: transport.clone(),
        };
        for p in self.policies.iter() {
            p.connection_made(&conn);
        }
        let wrapped = Transport::new(Rc::new(WrappedTransport {
            conn: conn.clone(),
            policies: self.policies.clone(),
        }));
        self.conn = Some(conn);
        self.inner.connection_made(wrapped);
    }
    fn data_received(&mut self, data: &[u8]) {
        if let Some(c) = &self.conn {
            for p in self.policies.iter() {
                p.data_received(c, data);
            }
        }
        self.inner.data_received(data);
    }
    fn connection_lost(&mut self, reason: Failure) {
        if let Some(c) = &self.conn {
            for p in self.policies.iter() {
                p.connection_lost(c, &reason);
            }
        }
        self.inner.connection_lost(reason);
    }
    fn half_closeable(&self) -> bool {
        self.inner.half_closeable()
    }
    fn read_connection_lost(&mut self) {
        self.inner.read_connection_lost()
    }
    fn write_connection_lost(&mut self) {
        self.inner.write_connection_lost()
    }
}

struct WrappedTransport {
    conn: PolicyConnection,
    policies: Rc<Vec<Rc<dyn ConnectionPolicy>>>,
}

impl TransportImpl for WrappedTransport {
    fn write(&self, data: &[u8]) {
        for p in self.policies.iter() {
            if p.write(&self.conn, data) == WriteAction::Held {
                return;
            }
        }
        self.conn.transport.write(data)
    }
    fn lose_connection(&self) {
        self.conn.transport.lose_connection()
    }
    fn abort_connection(&self) {
        self.conn.transport.abort_connection()
    }
    fn lose_write_connection(&self) {
        self.conn.transport.lose_write_connection()
    }
    fn peer(&self) -> Address {
        self.conn.transport.peer()
    }
    fn host(&self) -> Address {
        self.conn.transport.host()
    }
    fn pause_producing(&self) {
        self.conn.transport.pause_producing()
    }
    fn resume_producing(&self) {
        self.conn.transport.resume_producing()
    }
    fn stop_producing(&self) {
        self.conn.transport.stop_producing()
    }
    fn register_producer(
        &self,
        producer: Rc<dyn Producer>,
        streaming: bool,
    ) -> Result<(), ProducerError> {
        self.conn.transport.register_producer(producer, streaming)
    }
    fn unregister_producer(&self) {
        self.conn.transport.unregister_producer()
    }
    fn write_buffer_len(&self) -> usize {
        self.conn.transport.write_buffer_len()
    }
    fn is_connected(&self) -> bool {
        self.conn.transport.is_connected()
    }
    fn set_tcp_nodelay(&self, on: bool) -> Result<(), NotSupportedError> {
        self.conn.transport.set_tcp_nodelay(on)
    }
    fn set_tcp_keepalive(&self, on: bool) -> Result<(), NotSupportedError> {
        self.conn.transport.set_tcp_keepalive(on)
    }
    fn unix_credentials(&self) -> Result<UnixCredentials, NotSupportedError> {
        self.conn.transport.unix_credentials()
    }
    fn kind(&self) -> &'static str {
        self.conn.transport.kind()
    }
    fn extension(&self, type_id: std::any::TypeId) -> Option<Rc<dyn std::any::Any>> {
        self.conn.transport.inner().extension(type_id)
    }
}

// ---- idle timeout ----

/// A connection's timer and whether it fired.
type IdleTimer = (DelayedCall, Rc<Cell<bool>>);

/// Aborts a connection idle (no bytes in or out) for `timeout`. Aborting
/// rather than closing gracefully: an idle peer may also have stopped
/// reading, and a graceful close would wait on it forever.
pub struct IdleTimeout {
    clock: Rc<dyn Clock>,
    timeout: Duration,
    timers: RefCell<HashMap<u64, IdleTimer>>,
    fired: Cell<u64>,
}

impl fmt::Debug for IdleTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdleTimeout({:?})", self.timeout)
    }
}

impl IdleTimeout {
    /// Times connections out after `timeout` without traffic.
    pub fn new(clock: Rc<dyn Clock>, timeout: Duration) -> Self {
        IdleTimeout {
            clock,
            timeout,
            timers: RefCell::new(HashMap::new()),
            fired: Cell::new(0),
        }
    }

    /// How many connections were timed out.
    pub fn timed_out(&self) -> u64 {
        self.fired.get()
    }

    fn reset(&self, conn: &PolicyConnection) {
        if let Some((c, _)) = self.timers.borrow().get(&conn.id) {
            let _ = c.reset(self.timeout);
        }
    }
}

impl ConnectionPolicy for IdleTimeout {
    fn connection_made(&self, conn: &PolicyConnection) {
        let t = conn.transport.clone();
        let id = conn.id;
        let fired = Rc::new(Cell::new(false));
        let f2 = fired.clone();
        let timeout = self.timeout;
        let call = self.clock.call_later(
            self.timeout,
            Box::new(move || {
                f2.set(true);
                tracing::info!(conn = id, ?timeout, peer = %t.peer(), "idle timeout; aborting connection");
                t.abort_connection();
            }),
        );
        // The counter is updated when the connection is lost after firing.
        self.timers.borrow_mut().insert(conn.id, (call, fired));
    }
    fn data_received(&self, conn: &PolicyConnection, _data: &[u8]) {
        self.reset(conn);
    }
    fn write(&self, conn: &PolicyConnection, _data: &[u8]) -> WriteAction {
        self.reset(conn);
        WriteAction::Pass
    }
    fn connection_lost(&self, conn: &PolicyConnection, _reason: &Failure) {
        let entry = self.timers.borrow_mut().remove(&conn.id);
        if let Some((c, fired)) = entry {
            let _ = c.cancel();
            if fired.get() {
                self.fired.set(self.fired.get() + 1);
            }
        }
    }
}

// ---- connection limits ----

/// Limits connections in total and per peer address (IP for TCP; the whole
/// address otherwise). Connections over a limit are closed at once.
#[derive(Debug)]
pub struct LimitConnections {
    max_total: Option<usize>,
    max_per_peer: Option<usize>,
    total: Cell<usize>,
    per_peer: RefCell<HashMap<String, usize>>,
    refused: Cell<u64>,
}

fn peer_key(peer: &Address) -> String {
    match peer.socket_addr() {
        Some(sa) => sa.ip().to_string(),
        None => peer.to_string(),
    }
}

impl LimitConnections {
    /// `None` means no limit.
    pub fn new(max_total: Option<usize>, max_per_peer: Option<usize>) -> Self {
        LimitConnections {
            max_total,
            max_per_peer,
            total: Cell::new(0),
            per_peer: RefCell::new(HashMap::new()),
            refused: Cell::new(0),
        }
    }
    /// Open connections now.
    pub fn open(&self) -> usize {
        self.total.get()
    }
    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.get()
    }
}

impl ConnectionPolicy for LimitConnections {
    fn allow(&self, peer: &Address) -> bool {
        let over_total = self.max_total.is_some_and(|m| self.total.get() >= m);
        let over_peer = self.max_per_peer.is_some_and(|m| {
            self.per_peer
                .borrow()
                .get(&peer_key(peer))
                .copied()
                .unwrap_or(0)
                >= m
        });
        if over_total || over_peer {
            self.refused.set(self.refused.get() + 1);
            return false;
        }
        true
    }
    fn connection_made(&self, conn: &PolicyConnection) {
        self.total.set(self.total.get() + 1);
        *self
            .per_peer
            .borrow_mut()
            .entry(peer_key(&conn.peer))
            .or_insert(0) += 1;
    }
    fn connection_lost(&self, conn: &PolicyConnection, _reason: &Failure) {
        self.total.set(self.total.get().saturating_sub(1));
        let key = peer_key(&conn.peer);
        let mut m = self.per_peer.borrow_mut();
        if let Some(n) = m.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&key);
            }
        }
    }
}

// ---- throttling ----

#[derive(Default)]
struct ThrottleState {
    read: usize,
    written: usize,
    read_paused: bool,
    held: VecDeque<Vec<u8>>,
    window: Option<DelayedCall>,
}

/// Limits bytes per second read from and written to each connection.
///
/// Reading: once a second's budget is spent, the transport is paused until
/// the next second. Writing: bytes past the budget are held (in order) and
/// sent as later seconds' budgets allow. A single chunk may overshoot the
/// budget by its own size, as in Twisted.
pub struct Throttle {
    clock: Rc<dyn Clock>,
    read_limit: Option<usize>,
    write_limit: Option<usize>,
    state: Rc<RefCell<HashMap<u64, ThrottleState>>>,
}

impl fmt::Debug for Throttle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Throttle(read {:?}/s, write {:?}/s)",
            self.read_limit, self.write_limit
        )
    }
}

const WINDOW: Duration = Duration::from_secs(1);

impl Throttle {
    /// Bytes per second; `None` means unlimited.
    pub fn new(
        clock: Rc<dyn Clock>,
        read_limit: Option<usize>,
        write_limit: Option<usize>,
    ) -> Self {
        Throttle {
            clock,
            read_limit,
            write_limit,
            state: Rc::new(RefCell::new(HashMap::new())),
        }
    }

    /// Bytes held back for connection `id`.
    pub fn held_bytes(&self, id: u64) -> usize {
        self.state
            .borrow()
            .get(&id)
            .map(|s| s.held.iter().map(Vec::len).sum())
            .unwrap_or(0)
    }

    fn ensure_window(&self, conn: &PolicyConnection) {
        let mut st = self.state.borrow_mut();
        let Some(s) = st.get_mut(&conn.id) else {
            return;
        };
        if s.window.as_ref().is_some_and(|w| w.active()) {
            return;
        }
        let state = Rc::downgrade(&self.state);
        let id = conn.id;
        let t = conn.transport.clone();
        let write_limit = self.write_limit;
        let clock = self.clock.clone();
        s.window = Some(self.clock.call_later(
            WINDOW,
            Box::new(move || new_window(state, id, t, write_limit, clock)),
        ));
    }
}

fn new_window(
    state: std::rc::Weak<RefCell<HashMap<u64, ThrottleState>>>,
    id: u64,
    t: Transport,
    write_limit: Option<usize>,
    clock: Rc<dyn Clock>,
) {
    let Some(st) = state.upgrade() else { return };
    let (resume, to_send, more) = {
        let mut map = st.borrow_mut();
        let Some(s) = map.get_mut(&id) else { return };
        s.read = 0;
        s.written = 0;
        s.window = None;
        let resume = std::mem::take(&mut s.read_paused);
        let mut to_send = Vec::new();
        while let Some(front) = s.held.front() {
            let limit = write_limit.unwrap_or(usize::MAX);
            if s.written >= limit {
                break;
            }
            s.written += front.len();
            if let Some(chunk) = s.held.pop_front() {
                to_send.push(chunk);
            }
        }
        (resume, to_send, !s.held.is_empty())
    };
    for c in to_send {
        t.write(&c);
    }
    if resume {
        t.resume_producing();
    }
    if more {
        let weak = Rc::downgrade(&st);
        let t2 = t.clone();
        let c2 = clock.clone();
        let call = clock.call_later(
            WINDOW,
            Box::new(move || new_window(weak, id, t2, write_limit, c2)),
        );
        if let Some(s) = st.borrow_mut().get_mut(&id) {
            s.window = Some(call);
        }
    }
}

impl ConnectionPolicy for Throttle {
    fn connection_made(&self, conn: &PolicyConnection) {
        self.state
            .borrow_mut()
            .insert(conn.id, ThrottleState::default());
    }
    fn data_received(&self, conn: &PolicyConnection, data: &[u8]) {
        let Some(limit) = self.read_limit else { return };
        let pause = {
            let mut st = self.state.borrow_mut();
            let Some(s) = st.get_mut(&conn.id) else {
                return;
            };
            s.read += data.len();
            if s.read >= limit && !s.read_paused {
                s.read_paused = true;
                true
            } else {
                false
            }
        };
        self.ensure_window(conn);
        if pause {
            conn.transport.pause_producing();
        }
    }
    fn write(&self, conn: &PolicyConnection, data: &[u8]) -> WriteAction {
        let Some(limit) = self.write_limit else {
            return WriteAction::Pass;
        };
        let action = {
            let mut st = self.state.borrow_mut();
            let Some(s) = st.get_mut(&conn.id) else {
                return WriteAction::Pass;
            };
            if s.written >= limit || !s.held.is_empty() {
                s.held.push_back(data.to_vec());
                WriteAction::Held
            } else {
                s.written += data.len();
                WriteAction::Pass
            }
        };
        self.ensure_window(conn);
        action
    }
    fn connection_lost(&self, conn: &PolicyConnection, _reason: &Failure) {
        if let Some(s) = self.state.borrow_mut().remove(&conn.id) {
            if let Some(w) = s.window {
                let _ = w.cancel();
            }
        }
    }
}

// ---- traffic logging ----

/// What happened on a logged connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrafficEvent {
    /// Connected.
    Open {
        /// Connection id.
        id: u64,
        /// The peer.
        peer: Address,
    },
    /// Bytes received.
    In {
        /// Connection id.
        id: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Bytes written by the protocol.
    Out {
        /// Connection id.
        id: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// Disconnected.
    Close {
        /// Connection id.
        id: u64,
        /// The reason, as text.
        reason: String,
    },
}

/// Logs every connection's traffic to `tracing` (debug level) and to a sink.
pub struct TrafficLog {
    sink: Box<dyn Fn(TrafficEvent)>,
}

impl fmt::Debug for TrafficLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TrafficLog")
    }
}

impl TrafficLog {
    /// Sends each event to `sink` as well as to `tracing`.
    pub fn new(sink: impl Fn(TrafficEvent) + 'static) -> Self {
        TrafficLog {
            sink: Box::new(sink),
        }
    }

    /// A log that keeps events in memory, and the shared list it fills.
    pub fn recording() -> (Self, Rc<RefCell<Vec<TrafficEvent>>>) {
        let events = Rc::new(RefCell::new(Vec::new()));
        let e2 = events.clone();
        (TrafficLog::new(move |ev| e2.borrow_mut().push(ev)), events)
    }
}

impl ConnectionPolicy for TrafficLog {
    fn connection_made(&self, conn: &PolicyConnection) {
        tracing::debug!(conn = conn.id, peer = %conn.peer, "traffic: open");
        (self.sink)(TrafficEvent::Open {
            id: conn.id,
            peer: conn.peer.clone(),
        });
    }
    fn data_received(&self, conn: &PolicyConnection, data: &[u8]) {
        tracing::debug!(conn = conn.id, len = data.len(), data = ?String::from_utf8_lossy(data), "traffic: in");
        (self.sink)(TrafficEvent::In {
            id: conn.id,
            data: data.to_vec(),
        });
    }
    fn write(&self, conn: &PolicyConnection, data: &[u8]) -> WriteAction {
        tracing::debug!(conn = conn.id, len = data.len(), data = ?String::from_utf8_lossy(data), "traffic: out");
        (self.sink)(TrafficEvent::Out {
            id: conn.id,
            data: data.to_vec(),
        });
        WriteAction::Pass
    }
    fn connection_lost(&self, conn: &PolicyConnection, reason: &Failure) {
        tracing::debug!(conn = conn.id, reason = %reason, "traffic: close");
        (self.sink)(TrafficEvent::Close {
            id: conn.id,
            reason: reason.to_string(),
        });
    }
}
