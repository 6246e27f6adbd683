//! `Transport`: the handle a protocol writes to.
//!
//! Every kind of transport (TCP, Unix socket, TLS, pipes, in-memory test
//! transports) implements [`TransportImpl`]; protocols see only the
//! [`Transport`] handle, a cheap `Rc` clone they may keep and use from any
//! callback on the reactor thread. A handle whose connection has gone away
//! drops writes quietly; it never panics.

use std::any::{Any, TypeId};
use std::fmt;
use std::io::IoSlice;
use std::rc::Rc;

use crate::address::Address;
use crate::error::NotSupportedError;
use crate::protocol::Producer;

/// Peer credentials of a Unix-socket peer (`SO_PEERCRED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnixCredentials {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Producer registration refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProducerError {
    /// A producer is registered already.
    #[error("a producer is already registered with this transport")]
    AlreadyRegistered,
    /// The transport is closed.
    #[error("the transport is closed")]
    Closed,
}

/// What a concrete transport implements. Users implement it only to write a
/// new kind of transport; protocols use [`Transport`].
pub trait TransportImpl: 'static {
    /// Queues bytes for sending.
    fn write(&self, data: &[u8]);
    /// Queues several buffers, in order.
    fn write_vectored(&self, bufs: &[IoSlice<'_>]) {
        for b in bufs {
            self.write(b);
        }
    }
    /// Like [`write`](Self::write), but a transport with nothing queued
    /// may hand the bytes to the layer below at once (see
    /// [`Transport::write_through`]). The default queues them.
    fn write_through(&self, data: &[u8]) {
        self.write(data)
    }
    /// Closes after everything written so far is sent.
    fn lose_connection(&self);
    /// Closes now, dropping unsent data.
    fn abort_connection(&self);
    /// Shuts down the sending side after flushing; reading goes on.
    fn lose_write_connection(&self) {
        self.lose_connection()
    }
    /// The remote end.
    fn peer(&self) -> Address;
    /// The local end.
    fn host(&self) -> Address;
    /// Stops reading from the peer until `resume_producing`.
    fn pause_producing(&self);
    /// Reads again.
    fn resume_producing(&self);
    /// Stops reading for good (closes the connection).
    fn stop_producing(&self) {
        self.lose_connection()
    }
    /// Registers a producer that is paused when the write buffer is full.
    fn register_producer(
        &self,
        producer: Rc<dyn Producer>,
        streaming: bool,
    ) -> Result<(), ProducerError>;
    /// Removes the registered producer.
    fn unregister_producer(&self);
    /// Bytes written but not yet taken by the kernel (or the layer below).
    fn write_buffer_len(&self) -> usize {
        0
    }
    /// True until the connection is closed.
    fn is_connected(&self) -> bool;
    /// Sets TCP_NODELAY (on by default for TCP).
    fn set_tcp_nodelay(&self, on: bool) -> Result<(), NotSupportedError> {
        let _ = on;
        Err(self.unsupported("TCP_NODELAY"))
    }
    /// Turns TCP keepalive on or off.
    fn set_tcp_keepalive(&self, on: bool) -> Result<(), NotSupportedError> {
        let _ = on;
        Err(self.unsupported("TCP keepalive"))
    }
    /// Credentials of a Unix-socket peer.
    fn unix_credentials(&self) -> Result<UnixCredentials, NotSupportedError> {
        Err(self.unsupported("Unix peer credentials"))
    }
    /// A short name of the transport kind for messages ("TCP", "TLS", "memory").
    fn kind(&self) -> &'static str;
    /// Transport-specific facts by type (a TLS layer answers for its info type).
    fn extension(&self, type_id: TypeId) -> Option<Rc<dyn Any>> {
        let _ = type_id;
        None
    }
    /// Sends up to `len` bytes of `file` from `offset` straight from the
    /// kernel (`sendfile(2)`); see [`Transport::send_file`].
    fn send_file(
        &self,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Result<usize, SendFileError> {
        let _ = (file, offset, len);
        Err(SendFileError::NotSupported(self.unsupported("sendfile")))
    }
    /// The error for a query this transport cannot answer.
    fn unsupported(&self, what: &'static str) -> NotSupportedError {
        NotSupportedError {
            what,
            transport: self.kind(),
        }
    }
}

/// Why [`Transport::send_file`] sent nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendFileError {
    /// This transport cannot hand a file to the kernel (TLS, in-memory).
    #[error(transparent)]
    NotSupported(NotSupportedError),
    /// Bytes are still queued before it, or the connection is closing.
    #[error("the transport has queued data or is closing")]
    Busy,
    /// `sendfile(2)` failed.
    #[error("sendfile: {0}")]
    Io(std::io::Error),
}

/// The handle a protocol keeps to write to its connection.
///
/// ```
/// use torsion_core::{testing::StringTransport, Transport};
/// let st = StringTransport::new();
/// let t: Transport = st.transport();
/// t.write(b"hello");
/// assert_eq!(st.written(), b"hello");
/// assert!(t.unix_credentials().is_err()); // not a Unix socket
/// ```
#[derive(Clone)]
pub struct Transport(Rc<dyn TransportImpl>);

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Transport({} {} -> {})",
            self.0.kind(),
            self.0.host(),
            self.0.peer()
        )
    }
}

impl Transport {
    /// Wraps a transport implementation.
    pub fn new(imp: Rc<dyn TransportImpl>) -> Self {
        Transport(imp)
    }
    /// The implementation behind the handle.
    pub fn inner(&self) -> &Rc<dyn TransportImpl> {
        &self.0
    }
    /// Queues bytes for sending.
    pub fn write(&self, data: &[u8]) {
        self.0.write(data)
    }
    /// Queues several buffers in one go.
    pub fn write_vectored(&self, bufs: &[IoSlice<'_>]) {
        self.0.write_vectored(bufs)
    }
    /// Writes `data` now when nothing is queued before it: a socket
    /// transport makes the system call at once and queues only what the
    /// kernel did not take; otherwise (or on other transports) the same as
    /// [`write`](Self::write). For a protocol that has already gathered a
    /// whole batch of output into one buffer (an HTTP server answering a
    /// pipelined batch): the bytes are not copied into the transport's
    /// buffer first, and the caller keeps its allocation for the next
    /// batch. Order is kept: queued bytes are never overtaken.
    ///
    /// ```
    /// use torsion_core::testing::StringTransport;
    /// let t = StringTransport::new();
    /// t.transport().write_through(b"all at once");
    /// assert_eq!(t.take_written(), b"all at once");
    /// ```
    pub fn write_through(&self, data: &[u8]) {
        self.0.write_through(data)
    }
    /// Closes after flushing what was written.
    pub fn lose_connection(&self) {
        self.0.lose_connection()
    }
    /// Closes at once, dropping unsent data.
    pub fn abort_connection(&self) {
        self.0.abort_connection()
    }
    /// Half-close: stop sending (after flushing), keep reading.
    pub fn lose_write_connection(&self) {
        self.0.lose_write_connection()
    }
    /// The remote end.
    pub fn peer(&self) -> Address {
        self.0.peer()
    }
    /// The local end.
    pub fn host(&self) -> Address {
        self.0.host()
    }
    /// Stops delivering data to the protocol until `resume_producing`.
    pub fn pause_producing(&self) {
        self.0.pause_producing()
    }
    /// Delivers data again.
    pub fn resume_producing(&self) {
        self.0.resume_producing()
    }
    /// Stops for good.
    pub fn stop_producing(&self) {
        self.0.stop_producing()
    }
    /// Registers a producer for flow control (see [`Producer`]).
    pub fn register_producer(
        &self,
        producer: Rc<dyn Producer>,
        streaming: bool,
    ) -> Result<(), ProducerError> {
        self.0.register_producer(producer, streaming)
    }
    /// Removes the producer.
    pub fn unregister_producer(&self) {
        self.0.unregister_producer()
    }
    /// Bytes queued and not yet sent.
    pub fn write_buffer_len(&self) -> usize {
        self.0.write_buffer_len()
    }
    /// True until closed.
    pub fn is_connected(&self) -> bool {
        self.0.is_connected()
    }
    /// TCP_NODELAY.
    pub fn set_tcp_nodelay(&self, on: bool) -> Result<(), NotSupportedError> {
        self.0.set_tcp_nodelay(on)
    }
    /// TCP keepalive.
    pub fn set_tcp_keepalive(&self, on: bool) -> Result<(), NotSupportedError> {
        self.0.set_tcp_keepalive(on)
    }
    /// Unix peer credentials; a clear error on other transports.
    pub fn unix_credentials(&self) -> Result<UnixCredentials, NotSupportedError> {
        self.0.unix_credentials()
    }
    /// The transport kind ("TCP", "Unix", "TLS", "memory", ...).
    pub fn kind(&self) -> &'static str {
        self.0.kind()
    }
    /// Sends up to `len` bytes of `file`, starting at `offset`, from the
    /// kernel's page cache straight to the socket (`sendfile(2)`: no copy
    /// through user memory), and returns how many bytes the socket took —
    /// 0 when it is full. It only sends when nothing is queued before it,
    /// so bytes stay in order: with data still in the write buffer, or a
    /// close under way, it answers [`SendFileError::Busy`]; a transport
    /// that cannot (TLS, in-memory) answers
    /// [`SendFileError::NotSupported`]. Either way, write the bytes the
    /// ordinary way instead. An I/O error is returned as it is; the
    /// connection learns of a broken socket on its own next read or write.
    ///
    /// ```no_run
    /// # fn demo(t: &torsion_core::Transport, file: &std::fs::File) {
    /// use torsion_core::transport::SendFileError;
    /// match t.send_file(file, 0, 1 << 20) {
    ///     Ok(n) => println!("the kernel took {n} bytes"),
    ///     Err(SendFileError::Busy | SendFileError::NotSupported(_)) => { /* read and write() */ }
    ///     Err(e) => eprintln!("{e}"),
    /// }
    /// # }
    /// ```
    pub fn send_file(
        &self,
        file: &std::fs::File,
        offset: u64,
        len: usize,
    ) -> Result<usize, SendFileError> {
        self.0.send_file(file, offset, len)
    }
    /// A transport-specific fact of type `T`, or a clear error naming what was asked.
    pub fn extension<T: Any>(&self, what: &'static str) -> Result<Rc<T>, NotSupportedError> {
        self.0
            .extension(TypeId::of::<T>())
            .and_then(|a| a.downcast::<T>().ok())
            .ok_or_else(|| self.0.unsupported(what))
    }
}
