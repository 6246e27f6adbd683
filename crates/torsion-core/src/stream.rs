//! A connected stream socket (TCP or Unix) driving a protocol.
//!
//! The connection owns the socket, its write buffer and the boxed protocol;
//! protocols reach it through a [`Transport`] handle (an `Rc` to this
//! struct). The socket is registered once for read and write readiness,
//! edge-triggered, so nothing is re-armed per event.
//!
//! Closing happens only at safe points: `lose_connection`, `abort_connection`
//! and write errors set a flag and queue the connection on the reactor's dirty
//! list; `settle` runs after the current callback returned and does the
//! close, so `connection_lost` never runs while the protocol is borrowed.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::rc::{Rc, Weak};

use crate::address::Address;
use crate::error::{ConnectionError, NotSupportedError};
use crate::failure::{catch, Failure};
use crate::protocol::{Producer, Protocol};
use crate::reactor::{log_callback_failure, Inner, Reactor, Readiness, Source};
use crate::transport::{ProducerError, Transport, TransportImpl, UnixCredentials};

/// Reads per readiness event before yielding to other sources.
const MAX_READS_PER_TURN: usize = 16;
/// Default write-buffer marks for producer flow control.
pub const DEFAULT_HIGH_WATER: usize = 64 * 1024;
/// Default low-water mark.
pub const DEFAULT_LOW_WATER: usize = 16 * 1024;
/// Chunks at most this long are appended to; larger writes get their own chunk.
const COALESCE_LIMIT: usize = 16 * 1024;
/// A drained buffer keeps its allocation only up to this size (idle connections stay small).
const KEEP_CAPACITY: usize = 1024;

/// What the stream connection needs from a socket type.
pub(crate) trait StreamSocket: Read + Write + mio::event::Source + 'static {
    fn shutdown(&self, how: Shutdown) -> io::Result<()>;
    fn write_vectored_io(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    fn kind() -> &'static str;
    fn set_nodelay(&self, _on: bool) -> Result<(), NotSupportedError> {
        Err(NotSupportedError {
            what: "TCP_NODELAY",
            transport: Self::kind(),
        })
    }
    fn set_keepalive(&self, _on: bool) -> Result<(), NotSupportedError> {
        Err(NotSupportedError {
            what: "TCP keepalive",
            transport: Self::kind(),
        })
    }
    /// Makes the coming close reset the connection (TCP: `SO_LINGER` 0), so
    /// the peer can tell an abort from a complete, clean close.
    fn reset_on_close(&self) {}
    fn credentials(&self) -> Result<UnixCredentials, NotSupportedError> {
        Err(NotSupportedError {
            what: "Unix peer credentials",
            transport: Self::kind(),
        })
    }
    /// Socket-specific extensions (Unix descriptor passing), by type.
    fn extension(&self, _type_id: std::any::TypeId) -> Option<Rc<dyn std::any::Any>> {
        None
    }
    /// The descriptor `sendfile(2)` writes to, for sockets that allow it.
    fn sendfile_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// Most buffers one `writev` takes from the queue.
const MAX_IOV: usize = 64;

/// Bytes written but not yet taken by the kernel.
///
/// The common case is one chunk (`first`), kept allocated between writes
/// when small so steady small writes do not allocate; `more` holds later
/// chunks only while a large backlog waits, and is freed once drained, so an
/// idle connection holds at most one small chunk.
#[derive(Default)]
struct WriteBuffer {
    first: Vec<u8>,
    more: VecDeque<Vec<u8>>,
    /// Bytes of `first` already sent.
    head: usize,
    len: usize,
}

impl WriteBuffer {
    fn push(&mut self, data: &[u8]) {
        self.len += data.len();
        if self.more.is_empty() && self.first.len() == self.head {
            // Nothing pending: reuse the first chunk from its start.
            self.first.clear();
            self.head = 0;
            self.first.extend_from_slice(data);
            return;
        }
        let last = self.more.back_mut().unwrap_or(&mut self.first);
        if last.len() + data.len() <= COALESCE_LIMIT.max(last.capacity())
            && last.len() < COALESCE_LIMIT
        {
            last.extend_from_slice(data);
            return;
        }
        self.more.push_back(data.to_vec());
    }

    /// Fills `iov` with the pending chunks, in order; returns how many.
    fn fill_iov<'a>(&'a self, iov: &mut [IoSlice<'a>; MAX_IOV]) -> usize {
        iov[0] = IoSlice::new(&self.first[self.head..]);
        let mut n = 1;
        for c in self.more.iter().take(MAX_IOV - 1) {
            iov[n] = IoSlice::new(c);
            n += 1;
        }
        n
    }

    /// Writes as much as `sock` takes: a plain write for one chunk, else one
    /// writev (the slices live on the stack: no allocation per flush).
    fn write_to<S: StreamSocket>(&self, sock: &mut S) -> io::Result<usize> {
        if self.more.is_empty() {
            return sock.write(&self.first[self.head..]);
        }
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = self.fill_iov(&mut iov);
        sock.write_vectored_io(&iov[..n])
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let avail = self.first.len() - self.head;
            if n < avail {
                self.head += n;
                break;
            }
            n -= avail;
            self.head = 0;
            match self.more.pop_front() {
                Some(next) => self.first = next,
                None => {
                    self.first.clear();
                    break;
                }
            }
        }
        if self.len == 0 {
            self.first.clear();
            self.head = 0;
            // Keep a small chunk for the next write; give big ones back.
            if self.first.capacity() > KEEP_CAPACITY {
                self.first = Vec::new();
            }
            if self.more.capacity() > 0 {
                self.more = VecDeque::new();
            }
        }
    }

    fn clear(&mut self) {
        self.first = Vec::new();
        self.more = VecDeque::new();
        self.head = 0;
        self.len = 0;
    }
}

mod flag {
    pub const DISCONNECTING: u16 = 1;
    pub const ABORTING: u16 = 1 << 1;
    pub const WRITE_SHUT_PENDING: u16 = 1 << 2;
    pub const WRITE_SHUT: u16 = 1 << 3;
    pub const READ_PAUSED: u16 = 1 << 4;
    pub const READ_PENDING: u16 = 1 << 5;
    pub const CLOSED: u16 = 1 << 6;
    pub const DIRTY: u16 = 1 << 7;
    pub const READ_SHUT: u16 = 1 << 8;
    pub const STARTED: u16 = 1 << 9;
    /// The poller reported the peer's sending side closed: read to EOF.
    pub const PEER_HUP: u16 = 1 << 10;
    /// This side aborted (or its protocol panicked): close with a reset.
    pub const RESET: u16 = 1 << 11;
}

type CloseHook = Box<dyn FnOnce(&Failure)>;

pub(crate) struct Connection<S: StreamSocket> {
    reactor: Weak<Inner>,
    me: Weak<Connection<S>>,
    token: Cell<usize>,
    sock: RefCell<Option<S>>,
    protocol: RefCell<Option<Box<dyn Protocol>>>,
    wbuf: RefCell<WriteBuffer>,
    flags: Cell<u16>,
    error: RefCell<Option<Failure>>,
    producer: RefCell<Option<Rc<dyn Producer>>>,
    streaming: Cell<bool>,
    producer_paused: Cell<bool>,
    peer: Address,
    host: Address,
    high_water: Cell<usize>,
    low_water: Cell<usize>,
    on_close: RefCell<Option<CloseHook>>,
}

impl<S: StreamSocket> Connection<S> {
    pub(crate) fn new(reactor: &Reactor, sock: S, peer: Address, host: Address) -> Rc<Self> {
        Rc::new_cyclic(|me| Connection {
            reactor: reactor.downgrade(),
            me: me.clone(),
            token: Cell::new(usize::MAX),
            sock: RefCell::new(Some(sock)),
            protocol: RefCell::new(None),
            wbuf: RefCell::new(WriteBuffer::default()),
            flags: Cell::new(0),
            error: RefCell::new(None),
            producer: RefCell::new(None),
            streaming: Cell::new(false),
            producer_paused: Cell::new(false),
            peer,
            host,
            high_water: Cell::new(DEFAULT_HIGH_WATER),
            low_water: Cell::new(DEFAULT_LOW_WATER),
            on_close: RefCell::new(None),
        })
    }

    /// Registers the socket with the poller under a new token.
    pub(crate) fn register(self: &Rc<Self>, reactor: &Reactor) -> io::Result<()> {
        let me = self.clone();
        let mut sock = self.sock.borrow_mut();
        let sock = sock
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))?;
        let key = reactor.register_source(
            sock,
            mio::Interest::READABLE | mio::Interest::WRITABLE,
            move |_| me,
        )?;
        self.token.set(key);
        Ok(())
    }

    /// Takes over an already registered token (a connecting socket that just connected).
    pub(crate) fn adopt_token(self: &Rc<Self>, reactor: &Reactor, key: usize) {
        self.token.set(key);
        reactor.replace_source(key, self.clone());
    }

    pub(crate) fn set_on_close(&self, hook: CloseHook) {
        *self.on_close.borrow_mut() = Some(hook);
    }

    /// Attaches the protocol and calls `connection_made`.
    pub(crate) fn start(self: &Rc<Self>, reactor: &Reactor, mut protocol: Box<dyn Protocol>) {
        self.set(flag::STARTED);
        let transport = self.transport();
        let r = catch(|| protocol.connection_made(transport));
        *self.protocol.borrow_mut() = Some(protocol);
        if let Err(f) = r {
            self.on_panic("connection_made", f);
        }
        self.mark_dirty_now(reactor);
    }

    pub(crate) fn transport(self: &Rc<Self>) -> Transport {
        Transport::new(self.clone())
    }

    fn has(&self, f: u16) -> bool {
        self.flags.get() & f != 0
    }
    fn set(&self, f: u16) {
        self.flags.set(self.flags.get() | f)
    }
    fn clear_flag(&self, f: u16) {
        self.flags.set(self.flags.get() & !f)
    }

    fn reactor(&self) -> Option<Reactor> {
        self.reactor.upgrade().map(Reactor::from_inner)
    }

    fn mark_dirty(&self) {
        if self.has(flag::DIRTY | flag::CLOSED) {
            return;
        }
        if let (Some(r), Some(me)) = (self.reactor(), self.me.upgrade()) {
            self.set(flag::DIRTY);
            r.mark_dirty(me);
        }
    }

    fn mark_dirty_now(self: &Rc<Self>, _reactor: &Reactor) {
        self.mark_dirty();
    }

    fn on_panic(&self, what: &str, f: Failure) {
        log_callback_failure(what, &self.peer, &f);
        let reason = Failure::new(ConnectionError::ProtocolPanicked(f.to_string()));
        self.fail_later(reason);
        self.set(flag::ABORTING | flag::RESET);
    }

    fn fail_later(&self, f: Failure) {
        let mut e = self.error.borrow_mut();
        if e.is_none() {
            *e = Some(f);
        }
        drop(e);
        self.mark_dirty();
    }

    /// Reads until the socket is drained, the protocol pauses us, or our turn is up.
    fn do_read(self: &Rc<Self>, reactor: &Reactor) {
        if self.has(flag::CLOSED | flag::READ_SHUT) || self.error.borrow().is_some() {
            return;
        }
        if reactor.event_read_closed() {
            // Sticky: the EOF may only be reached on a later turn (paused
            // reading, or MAX_READS_PER_TURN used up), and no new edge will come.
            self.set(flag::PEER_HUP);
        }
        if self.has(flag::READ_PAUSED) {
            self.set(flag::READ_PENDING);
            return;
        }
        reactor.with_read_buffer(|buf| {
            for _ in 0..MAX_READS_PER_TURN {
                let r = {
                    let mut sock = self.sock.borrow_mut();
                    let Some(sock) = sock.as_mut() else { return };
                    sock.read(buf)
                };
                match r {
                    Ok(0) => {
                        self.read_eof();
                        return;
                    }
                    Ok(n) => {
                        // As in Twisted, a protocol that called lose_connection
                        // hears no more data. The socket is still drained, so
                        // the close sends a FIN rather than a reset that could
                        // destroy the reply the peer has not read yet.
                        let deliver = !self.has(flag::DISCONNECTING);
                        let res = {
                            let mut p = self.protocol.borrow_mut();
                            match p.as_mut() {
                                Some(p) if deliver => catch(|| p.data_received(&buf[..n])),
                                _ => Ok(()),
                            }
                        };
                        if let Err(f) = res {
                            self.on_panic("data_received", f);
                            return;
                        }
                        if self.has(flag::CLOSED | flag::ABORTING | flag::READ_SHUT) {
                            return;
                        }
                        if self.has(flag::READ_PAUSED) {
                            // Data may remain in the socket; deliver it on resume.
                            self.set(flag::READ_PENDING);
                            return;
                        }
                        // A short read drained the socket, unless the peer also
                        // closed: its FIN raised no edge of its own, so read on to EOF.
                        if n < buf.len() && !self.has(flag::PEER_HUP) {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.io_failed(e);
                        return;
                    }
                }
            }
            // Turn used up with data still coming: come back after others had theirs.
            reactor.want_read_turn(self.clone());
        });
    }

    fn read_eof(self: &Rc<Self>) {
        let half = self
            .protocol
            .borrow()
            .as_ref()
            .map(|p| p.half_closeable())
            .unwrap_or(false);
        self.set(flag::READ_SHUT);
        if half {
            let r = {
                let mut p = self.protocol.borrow_mut();
                match p.as_mut() {
                    Some(p) => catch(|| p.read_connection_lost()),
                    None => Ok(()),
                }
            };
            if let Err(f) = r {
                self.on_panic("read_connection_lost", f);
            }
            if self.has(flag::WRITE_SHUT) {
                self.fail_later(Failure::without_backtrace(ConnectionError::Done));
                self.set(flag::ABORTING);
            }
        } else {
            // The peer stopped sending; it may still read. Flush what the
            // protocol wrote (an echo of the last bytes, say), then close.
            self.set(flag::DISCONNECTING);
            self.mark_dirty();
        }
    }

    /// Whether a write of `data` is dropped: nothing to write, or the
    /// connection closed or closing for writing.
    fn drops_write(&self, data: &[u8]) -> bool {
        data.is_empty()
            || self.has(flag::CLOSED | flag::WRITE_SHUT | flag::WRITE_SHUT_PENDING | flag::ABORTING)
    }

    /// A read or write failed: the connection is aborted with that error
    /// when it next settles.
    fn io_failed(&self, e: io::Error) {
        self.fail_later(Failure::without_backtrace(ConnectionError::from_io(e)));
        self.set(flag::ABORTING);
    }

    /// Writes as much of the buffer as the kernel takes.
    fn flush(&self) {
        loop {
            // A producer callback run from after_drain may have panicked.
            if self.has(flag::ABORTING) {
                return;
            }
            let mut wbuf = self.wbuf.borrow_mut();
            if wbuf.len == 0 {
                return;
            }
            let r = {
                let mut sock = self.sock.borrow_mut();
                let Some(sock) = sock.as_mut() else { return };
                wbuf.write_to(sock)
            };
            match r {
                Ok(0) => return,
                Ok(n) => {
                    wbuf.consume(n);
                    let len = wbuf.len;
                    drop(wbuf);
                    self.after_drain(len);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    wbuf.clear();
                    drop(wbuf);
                    self.io_failed(e);
                    return;
                }
            }
        }
    }

    fn after_drain(&self, len: usize) {
        if !self.producer_paused.get() && self.streaming.get() {
            return;
        }
        let producer = self.producer.borrow().clone();
        let Some(p) = producer else { return };
        if self.streaming.get() {
            if len <= self.low_water.get() {
                self.producer_paused.set(false);
                if let Err(f) = catch(|| p.resume_producing()) {
                    self.on_panic("resume_producing", f);
                }
            }
        } else if len == 0 && !self.has(flag::DISCONNECTING) {
            if let Err(f) = catch(|| p.resume_producing()) {
                self.on_panic("resume_producing", f);
            }
        }
    }

    fn close_now(self: &Rc<Self>, reason: Failure) {
        if self.has(flag::CLOSED) {
            return;
        }
        self.set(flag::CLOSED);
        self.wbuf.borrow_mut().clear();
        if let Some(sock) = self.sock.borrow_mut().take() {
            if let Some(r) = self.reactor() {
                r.retire_source(self.token.get());
            }
            // No explicit deregister: the socket owns its fd (never dup'ed), and
            // closing the last fd of a socket removes it from the epoll set, which
            // saves an epoll_ctl per connection. A stale event that slips through
            // (a fork holding the fd for an instant) is at worst a spurious
            // readiness, which every source tolerates.
            if self.has(flag::RESET) {
                sock.reset_on_close();
            }
            drop(sock);
        }
        if let Some(p) = self.producer.borrow_mut().take() {
            if let Err(f) = catch(|| p.stop_producing()) {
                tracing::error!(failure = %f, "stop_producing panicked");
            }
        }
        let protocol = self.protocol.borrow_mut().take();
        if let Some(mut p) = protocol {
            let reason2 = reason.clone();
            if let Err(f) = catch(move || p.connection_lost(reason2)) {
                log_callback_failure("connection_lost", &self.peer, &f);
            }
        }
        if let Some(hook) = self.on_close.borrow_mut().take() {
            if let Err(f) = catch(|| hook(&reason)) {
                tracing::error!(failure = %f, "client_connection_lost panicked");
            }
        }
    }
}

impl<S: StreamSocket> Source for Connection<S> {
    fn ready(self: Rc<Self>, reactor: &Reactor, readiness: Readiness) {
        if self.has(flag::CLOSED) {
            return;
        }
        if readiness.writable && self.wbuf.borrow().len > 0 {
            self.flush();
        }
        if readiness.readable {
            self.do_read(reactor);
        }
        // Queued already (a callback wrote or asked to close): the reactor
        // settles dirty sources right after this returns; settle only once.
        if !self.has(flag::DIRTY) {
            self.settle(reactor);
        }
    }

    fn settle(self: Rc<Self>, _reactor: &Reactor) {
        self.clear_flag(flag::DIRTY);
        if self.has(flag::CLOSED) {
            return;
        }
        if self.has(flag::ABORTING) {
            let reason = self
                .error
                .borrow_mut()
                .take()
                .unwrap_or_else(|| Failure::new(ConnectionError::Aborted));
            self.close_now(reason);
            return;
        }
        self.flush();
        if self.has(flag::ABORTING) {
            let reason = self
                .error
                .borrow_mut()
                .take()
                .unwrap_or_else(|| Failure::new(ConnectionError::Aborted));
            self.close_now(reason);
            return;
        }
        let empty = self.wbuf.borrow().len == 0;
        if empty && self.has(flag::DISCONNECTING) {
            self.close_now(Failure::without_backtrace(ConnectionError::Done));
            return;
        }
        if empty && self.has(flag::WRITE_SHUT_PENDING) && !self.has(flag::WRITE_SHUT) {
            self.clear_flag(flag::WRITE_SHUT_PENDING);
            self.set(flag::WRITE_SHUT);
            if let Some(s) = self.sock.borrow().as_ref() {
                let _ = s.shutdown(Shutdown::Write);
            }
            let r = {
                let mut p = self.protocol.borrow_mut();
                match p.as_mut() {
                    Some(p) => catch(|| p.write_connection_lost()),
                    None => Ok(()),
                }
            };
            if let Err(f) = r {
                self.on_panic("write_connection_lost", f);
                return;
            }
            if self.has(flag::READ_SHUT) {
                self.close_now(Failure::without_backtrace(ConnectionError::Done));
            }
        }
    }

    fn shutdown(self: Rc<Self>, _reactor: &Reactor) {
        self.lose_connection();
    }

    fn force_close(self: Rc<Self>, reactor: &Reactor) {
        self.abort_connection();
        self.settle(reactor);
    }

    fn reactor_dropped(self: Rc<Self>) {
        self.close_now(Failure::new(ConnectionError::ReactorShutdown));
    }

    fn is_connection(&self) -> bool {
        true
    }
}

impl<S: StreamSocket> TransportImpl for Connection<S> {
    fn write(&self, data: &[u8]) {
        if self.drops_write(data) {
            return;
        }
        let len = {
            let mut w = self.wbuf.borrow_mut();
            w.push(data);
            w.len
        };
        self.mark_dirty();
        if len > self.high_water.get() && self.streaming.get() && !self.producer_paused.get() {
            let p = self.producer.borrow().clone();
            if let Some(p) = p {
                self.producer_paused.set(true);
                if let Err(f) = catch(|| p.pause_producing()) {
                    self.on_panic("pause_producing", f);
                }
            }
        }
    }

    fn write_vectored(&self, bufs: &[IoSlice<'_>]) {
        for b in bufs {
            self.write(b);
        }
    }

    fn write_through(&self, mut data: &[u8]) {
        if self.drops_write(data) {
            return;
        }
        // Only with nothing queued: queued bytes must go first.
        if self.wbuf.borrow().len == 0 {
            let r = match self.sock.try_borrow_mut() {
                Ok(mut sock) => match sock.as_mut() {
                    Some(sock) => sock.write(data),
                    None => return,
                },
                // (In use further up the stack: queue instead.)
                Err(_) => Err(io::ErrorKind::WouldBlock.into()),
            };
            match r {
                Ok(n) if n == data.len() => return,
                Ok(n) => data = &data[n..],
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    // As a failed flush: the connection closes when it settles.
                    self.io_failed(e);
                    self.mark_dirty();
                    return;
                }
            }
        }
        self.write(data);
    }

    fn lose_connection(&self) {
        if self.has(flag::CLOSED) {
            return;
        }
        self.set(flag::DISCONNECTING);
        self.mark_dirty();
    }

    fn abort_connection(&self) {
        if self.has(flag::CLOSED) {
            return;
        }
        self.set(flag::ABORTING | flag::RESET);
        self.mark_dirty();
    }

    fn lose_write_connection(&self) {
        if self.has(flag::CLOSED | flag::WRITE_SHUT) {
            return;
        }
        self.set(flag::WRITE_SHUT_PENDING);
        self.mark_dirty();
    }

    fn peer(&self) -> Address {
        self.peer.clone()
    }

    fn host(&self) -> Address {
        self.host.clone()
    }

    fn pause_producing(&self) {
        self.set(flag::READ_PAUSED);
    }

    fn resume_producing(&self) {
        if !self.has(flag::READ_PAUSED) {
            return;
        }
        self.clear_flag(flag::READ_PAUSED);
        if self.has(flag::READ_PENDING) {
            self.clear_flag(flag::READ_PENDING);
        }
        // Edge-triggered: data that arrived while paused raises no new event,
        // so ask for a read turn.
        if let (Some(r), Some(me)) = (self.reactor(), self.me.upgrade()) {
            r.want_read_turn(me);
        }
    }

    fn stop_producing(&self) {
        self.lose_connection();
    }

    fn register_producer(
        &self,
        producer: Rc<dyn Producer>,
        streaming: bool,
    ) -> Result<(), ProducerError> {
        if self.has(flag::CLOSED) {
            return Err(ProducerError::Closed);
        }
        if self.producer.borrow().is_some() {
            return Err(ProducerError::AlreadyRegistered);
        }
        *self.producer.borrow_mut() = Some(producer.clone());
        self.streaming.set(streaming);
        self.producer_paused.set(false);
        if !streaming {
            // A pull producer is asked for its first piece at once.
            if let Err(f) = catch(|| producer.resume_producing()) {
                self.on_panic("resume_producing", f);
            }
        } else if self.wbuf.borrow().len > self.high_water.get() {
            self.producer_paused.set(true);
            if let Err(f) = catch(|| producer.pause_producing()) {
                self.on_panic("pause_producing", f);
            }
        }
        Ok(())
    }

    fn unregister_producer(&self) {
        self.producer.borrow_mut().take();
        self.producer_paused.set(false);
    }

    fn write_buffer_len(&self) -> usize {
        self.wbuf.borrow().len
    }

    fn is_connected(&self) -> bool {
        !self.has(flag::CLOSED)
    }

    fn set_tcp_nodelay(&self, on: bool) -> Result<(), NotSupportedError> {
        match self.sock.borrow().as_ref() {
            Some(s) => s.set_nodelay(on),
            None => Ok(()),
        }
    }

    fn set_tcp_keepalive(&self, on: bool) -> Result<(), NotSupportedError> {
        match self.sock.borrow().as_ref() {
            Some(s) => s.set_keepalive(on),
            None => Ok(()),
        }
    }

    fn unix_credentials(&self) -> Result<UnixCredentials, NotSupportedError> {
        match self.sock.borrow().as_ref() {
            Some(s) => s.credentials(),
            None => Err(self.unsupported("Unix peer credentials (connection closed)")),
        }
    }

    fn kind(&self) -> &'static str {
        S::kind()
    }

    fn extension(&self, type_id: std::any::TypeId) -> Option<Rc<dyn std::any::Any>> {
        self.sock
            .borrow()
            .as_ref()
            .and_then(|s| s.extension(type_id))
    }

    fn send_file(
        &self,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Result<usize, crate::transport::SendFileError> {
        use crate::transport::SendFileError;
        if self.has(
            flag::CLOSED
                | flag::DISCONNECTING
                | flag::WRITE_SHUT
                | flag::WRITE_SHUT_PENDING
                | flag::ABORTING,
        ) || self.wbuf.borrow().len > 0
        {
            return Err(SendFileError::Busy);
        }
        // Borrowed only for the call: the descriptor cannot outlive the socket.
        let sock = self.sock.try_borrow().map_err(|_| SendFileError::Busy)?;
        let Some(fd) = sock.as_ref().and_then(|s| s.sendfile_fd()) else {
            return Err(SendFileError::NotSupported(self.unsupported("sendfile")));
        };
        crate::sys::sendfile(fd, file, offset, len).map_err(|e| {
            if e.kind() == std::io::ErrorKind::Unsupported {
                SendFileError::NotSupported(self.unsupported("sendfile"))
            } else {
                SendFileError::Io(e)
            }
        })
    }
}

impl<S: StreamSocket> Connection<S> {
    /// Sets the flow-control marks (bytes).
    #[allow(dead_code)]
    pub(crate) fn set_water_marks(&self, high: usize, low: usize) {
        self.high_water.set(high);
        self.low_water.set(low.min(high));
    }
}

#[cfg(test)]
mod write_buffer_tests {
    use super::*;

    /// A tiny deterministic generator, so the test needs no extra crates.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((self.0 >> 33) as usize) % n.max(1)
        }
    }

    /// Takes up to `limit` bytes the way a short writev would.
    fn take(w: &mut WriteBuffer, limit: usize, out: &mut Vec<u8>) {
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        let n = w.fill_iov(&mut iov);
        let mut taken = 0;
        for s in &iov[..n] {
            let k = s.len().min(limit - taken);
            out.extend_from_slice(&s[..k]);
            taken += k;
        }
        w.consume(taken);
    }

    #[test]
    fn bytes_leave_in_order_through_short_writes() {
        let mut rng = Lcg(7);
        let mut w = WriteBuffer::default();
        let (mut sent, mut got) = (Vec::new(), Vec::new());
        let mut next = 0u8;
        for _ in 0..600 {
            let size = [1, 64, 1000, 20_000, 70_000][rng.below(5)];
            let data: Vec<u8> = (0..size)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            w.push(&data);
            sent.extend_from_slice(&data);
            if rng.below(3) == 0 {
                take(&mut w, rng.below(100_000) + 1, &mut got);
            }
            assert_eq!(w.len, sent.len() - got.len());
        }
        while w.len > 0 {
            take(&mut w, rng.below(50_000) + 1, &mut got);
        }
        assert!(sent == got, "bytes lost or reordered");
    }

    #[test]
    fn drained_buffer_keeps_at_most_a_small_chunk() {
        let mut w = WriteBuffer::default();
        let mut out = Vec::new();
        for _ in 0..10 {
            w.push(&[1; 20_000]);
        }
        take(&mut w, usize::MAX, &mut out);
        while w.len > 0 {
            take(&mut w, usize::MAX, &mut out);
        }
        assert_eq!(out.len(), 200_000);
        assert_eq!(w.more.capacity(), 0);
        assert!(w.first.capacity() <= KEEP_CAPACITY);
        // Small writes reuse the kept chunk.
        w.push(b"abc");
        take(&mut w, usize::MAX, &mut out);
        w.push(b"de");
        let cap = w.first.capacity();
        take(&mut w, 1, &mut out);
        assert_eq!(&out[out.len() - 4..], b"abcd");
        assert_eq!(w.len, 1);
        take(&mut w, usize::MAX, &mut out);
        assert_eq!(w.first.capacity(), cap);
        assert_eq!(&out[out.len() - 5..], b"abcde");
    }
}
