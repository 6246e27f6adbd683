//! Unix domain sockets: stream listeners and clients, datagram sockets,
//! peer credentials and descriptor passing.
//!
//! Unix stream connections run on the same connection code as TCP
//! (`stream::Connection`), so a protocol cannot tell them apart except through
//! [`Transport::kind`] and the Unix-only facts: [`Transport::unix_credentials`]
//! and the [`UnixFdPassing`] extension.
//!
//! ```no_run
//! use torsion_core::{factory_fn, Protocol, Reactor, Transport, unix::{UnixPath, UnixListenOptions}};
//! struct Echo(Option<Transport>);
//! impl Protocol for Echo {
//!     fn connection_made(&mut self, t: Transport) { self.0 = Some(t) }
//!     fn data_received(&mut self, d: &[u8]) { if let Some(t) = &self.0 { t.write(d) } }
//! }
//! let reactor = Reactor::new()?;
//! let port = reactor.listen_unix(UnixPath::from("/tmp/echo.sock"), factory_fn(|| Echo(None)),
//!     UnixListenOptions { mode: Some(0o660), ..Default::default() })?;
//! reactor.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::Duration;

use mio::net::{UnixListener, UnixStream};
use mio::Interest;
use socket2::{Domain, SockAddr, Socket, Type};

use crate::accept::{accept_some, AcceptState, Acceptor, Listening};
use crate::address::Address;
use crate::connector::{Connector, ConnectorImpl, ConnectorState};
use crate::deferred::Deferred;
use crate::error::{ConnectionError, NotSupportedError};
use crate::failure::{catch, Failure};
use crate::protocol::{ClientFactory, Factory};
use crate::reactor::{Inner, Reactor, Readiness, Source};
use crate::stream::{Connection, StreamSocket};
use crate::transport::{Transport, UnixCredentials};
use crate::udp::{DatagramProtocol, DatagramTransport, DEFAULT_MAX_PACKET_SIZE};

/// Where a Unix socket lives: a file path, or a name in Linux's abstract namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum UnixPath {
    /// A socket file.
    File(PathBuf),
    /// An abstract-namespace name (no file; gone when the last socket closes).
    Abstract(Vec<u8>),
}

impl From<&str> for UnixPath {
    fn from(s: &str) -> Self {
        UnixPath::File(PathBuf::from(s))
    }
}

impl From<PathBuf> for UnixPath {
    fn from(p: PathBuf) -> Self {
        UnixPath::File(p)
    }
}

impl From<&Path> for UnixPath {
    fn from(p: &Path) -> Self {
        UnixPath::File(p.to_path_buf())
    }
}

impl fmt::Display for UnixPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnixPath::File(p) => write!(f, "{}", p.display()),
            UnixPath::Abstract(n) => write!(f, "@{}", String::from_utf8_lossy(n)),
        }
    }
}

impl UnixPath {
    fn sockaddr(&self) -> Result<SockAddr, UnixError> {
        let len = match self {
            UnixPath::File(p) => p.as_os_str().len(),
            UnixPath::Abstract(n) => n.len() + 1,
        };
        if len > crate::sys::UNIX_PATH_MAX {
            return Err(UnixError::PathTooLong {
                path: self.to_string(),
                len,
                max: crate::sys::UNIX_PATH_MAX,
            });
        }
        if len == 0 {
            return Err(UnixError::EmptyPath);
        }
        match self {
            UnixPath::File(p) => SockAddr::unix(p).map_err(UnixError::Io),
            UnixPath::Abstract(n) => {
                let mut bytes = vec![0u8];
                bytes.extend_from_slice(n);
                SockAddr::unix(std::ffi::OsStr::from_bytes(&bytes)).map_err(UnixError::Io)
            }
        }
    }

    fn address(&self) -> Address {
        match self {
            UnixPath::File(p) => Address::Unix(Some(p.clone())),
            UnixPath::Abstract(n) => Address::UnixAbstract(n.clone()),
        }
    }
}

/// Why a Unix socket could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnixError {
    /// The path does not fit a `sockaddr_un`.
    #[error("Unix socket path '{path}' is {len} bytes long; the OS allows at most {max}")]
    PathTooLong {
        /// The path asked for.
        path: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// An empty path.
    #[error("Unix socket path is empty")]
    EmptyPath,
    /// Another process listens on the socket already.
    #[error("another process is listening on Unix socket {0}")]
    InUse(PathBuf),
    /// Something that is not a socket is at the path; it was left alone.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    /// Another OS error.
    #[error("Unix socket error: {0}")]
    Io(#[from] io::Error),
}

// ---- the stream socket ----

/// Descriptors waiting to go out with the byte at a given stream offset, and
/// descriptors received, shared between the socket and its [`UnixFdPassing`] handle.
#[derive(Default)]
struct FdState {
    received: RefCell<Vec<OwnedFd>>,
    outgoing: RefCell<VecDeque<(u64, Vec<OwnedFd>)>>,
    written: Cell<u64>,
}

/// A Unix stream socket: mio's `UnixStream` plus the bookkeeping that lets
/// descriptors travel in order with the byte stream.
pub(crate) struct UnixSock {
    io: UnixStream,
    fds: Rc<FdState>,
}

impl UnixSock {
    fn new(io: UnixStream) -> Self {
        UnixSock {
            io,
            fds: Rc::new(FdState::default()),
        }
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let written = self.fds.written.get();
        let mut outgoing = self.fds.outgoing.borrow_mut();
        let (limit, attach) = match outgoing.front() {
            None => (usize::MAX, false),
            Some((off, _)) if *off > written => ((*off - written) as usize, false),
            Some(_) => {
                // Descriptors ride with the first byte at their offset; stop the
                // message before the next attachment so each arrives with its data.
                let lim = outgoing
                    .get(1)
                    .map(|(o, _)| (*o - written) as usize)
                    .unwrap_or(usize::MAX);
                (lim, true)
            }
        };
        let mut capped: Vec<IoSlice<'_>> = Vec::with_capacity(bufs.len());
        let mut room = limit;
        for b in bufs {
            if room == 0 {
                break;
            }
            let take = b.len().min(room);
            capped.push(IoSlice::new(&b[..take]));
            room -= take;
        }
        let n = if attach {
            let raw: Vec<RawFd> = outgoing
                .front()
                .map(|(_, f)| f.iter().map(|f| f.as_raw_fd()).collect())
                .unwrap_or_default();
            let n = crate::sys::send_with_fds(self.io.as_raw_fd(), &capped, &raw)?;
            if n > 0 {
                outgoing.pop_front();
            }
            n
        } else {
            self.io.write_vectored(&capped)?
        };
        self.fds.written.set(written + n as u64);
        Ok(n)
    }
}

impl Read for UnixSock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = Vec::new();
        let n = crate::sys::recv_with_fds(self.io.as_raw_fd(), buf, &mut got)?;
        if !got.is_empty() {
            self.fds.received.borrow_mut().extend(got);
        }
        Ok(n)
    }
}

impl Write for UnixSock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.send(&[IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.send(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl mio::event::Source for UnixSock {
    fn register(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.io.register(registry, token, interests)
    }
    fn reregister(
        &mut self,
        registry: &mio::Registry,
        token: mio::Token,
        interests: Interest,
    ) -> io::Result<()> {
        self.io.reregister(registry, token, interests)
    }
    fn deregister(&mut self, registry: &mio::Registry) -> io::Result<()> {
        self.io.deregister(registry)
    }
}

impl StreamSocket for UnixSock {
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        self.io.shutdown(how)
    }
    fn write_vectored_io(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.send(bufs)
    }
    fn kind() -> &'static str {
        "Unix"
    }
    fn credentials(&self) -> Result<UnixCredentials, NotSupportedError> {
        crate::sys::peer_credentials(self.io.as_raw_fd())
            .map(|(pid, uid, gid)| UnixCredentials { pid, uid, gid })
            .map_err(|_| NotSupportedError {
                what: "Unix peer credentials (SO_PEERCRED failed)",
                transport: "Unix",
            })
    }
    fn sendfile_fd(&self) -> Option<RawFd> {
        Some(self.io.as_raw_fd())
    }
    fn extension(&self, type_id: TypeId) -> Option<Rc<dyn Any>> {
        if type_id == TypeId::of::<UnixFdPassing>() {
            Some(Rc::new(UnixFdPassing {
                state: self.fds.clone(),
            }))
        } else {
            None
        }
    }
}

/// Descriptor passing (`SCM_RIGHTS`) on a Unix stream transport.
///
/// Get it with `transport.extension::<UnixFdPassing>("descriptor passing")`;
/// other transports answer with a [`NotSupportedError`].
///
/// ```no_run
/// # use torsion_core::{Transport, unix::UnixFdPassing};
/// # fn f(transport: &Transport, file: std::fs::File) -> Result<(), Box<dyn std::error::Error>> {
/// let fds = transport.extension::<UnixFdPassing>("descriptor passing")?;
/// fds.send_fds(transport, b"F", vec![file.into()])?;
/// // in the peer's data_received: let got = fds.take_received_fds();
/// # Ok(()) }
/// ```
pub struct UnixFdPassing {
    state: Rc<FdState>,
}

impl fmt::Debug for UnixFdPassing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnixFdPassing")
    }
}

/// Descriptor passing refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FdPassingError {
    /// Descriptors must travel with at least one byte of data.
    #[error("descriptors must be sent with at least one byte of data")]
    NoData,
    /// More descriptors than one message carries.
    #[error("{0} descriptors in one message; at most {max} are allowed", max = crate::sys::MAX_FDS_PER_MESSAGE)]
    TooMany(usize),
    /// The transport is closed.
    #[error("the transport is closed")]
    Closed,
}

impl UnixFdPassing {
    /// Writes `data` on `transport` with `fds` attached to its first byte.
    /// The descriptors are closed on this side once sent.
    pub fn send_fds(
        &self,
        transport: &Transport,
        data: &[u8],
        fds: Vec<OwnedFd>,
    ) -> Result<(), FdPassingError> {
        if data.is_empty() {
            return Err(FdPassingError::NoData);
        }
        if fds.len() > crate::sys::MAX_FDS_PER_MESSAGE {
            return Err(FdPassingError::TooMany(fds.len()));
        }
        if !transport.is_connected() {
            return Err(FdPassingError::Closed);
        }
        let offset = self.state.written.get() + transport.write_buffer_len() as u64;
        if !fds.is_empty() {
            self.state.outgoing.borrow_mut().push_back((offset, fds));
        }
        transport.write(data);
        Ok(())
    }

    /// Descriptors received so far (they arrive with the data passed to
    /// `data_received`; take them there).
    pub fn take_received_fds(&self) -> Vec<OwnedFd> {
        std::mem::take(&mut *self.state.received.borrow_mut())
    }
}

// ---- listening ----

/// Options for [`Reactor::listen_unix`].
#[derive(Debug, Clone)]
pub struct UnixListenOptions {
    /// File mode of the socket (`0o660`); `None` keeps the umask's.
    pub mode: Option<u32>,
    /// Length of the accept queue.
    pub backlog: i32,
}

impl Default for UnixListenOptions {
    fn default() -> Self {
        UnixListenOptions {
            mode: None,
            backlog: 50,
        }
    }
}

/// A listening Unix stream socket.
#[derive(Clone)]
pub struct UnixPort {
    port: Rc<UnixPortInner>,
}

impl fmt::Debug for UnixPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UnixPort({})", self.port.path)
    }
}

impl UnixPort {
    /// Where it listens.
    pub fn path(&self) -> &UnixPath {
        &self.port.path
    }
    /// The address, as transports report it.
    pub fn host(&self) -> Address {
        self.port.path.address()
    }
    /// Stops listening and removes the socket file.
    pub fn stop_listening(&self) -> Deferred<()> {
        self.port.close();
        Deferred::succeed(())
    }
}

struct UnixPortInner {
    lis: Listening<UnixListener>,
    path: UnixPath,
    owns_file: bool,
}

impl UnixPortInner {
    fn close(&self) {
        self.lis.close(|| {
            if let (true, UnixPath::File(p)) = (self.owns_file, &self.path) {
                let _ = std::fs::remove_file(p);
            }
        });
    }
}

impl Acceptor for UnixPortInner {
    fn accept_one(self: &Rc<Self>, reactor: &Reactor) -> io::Result<bool> {
        let r = match self.lis.socket.borrow().as_ref() {
            Some(l) => l.accept(),
            None => return Ok(false),
        };
        let (stream, addr) = r?;
        let peer = match addr.as_pathname() {
            Some(p) => Address::Unix(Some(p.to_path_buf())),
            None => Address::Unix(None),
        };
        start_unix_connection(
            reactor,
            &self.lis.factory,
            stream,
            peer,
            self.path.address(),
            None,
        );
        Ok(true)
    }
    fn accept_state(&self) -> &AcceptState {
        &self.lis.accept
    }
    fn describe(&self) -> &dyn fmt::Display {
        &self.path
    }
}

fn start_unix_connection(
    reactor: &Reactor,
    factory: &Rc<dyn Factory>,
    stream: UnixStream,
    peer: Address,
    host: Address,
    client: Option<(Connector, Rc<dyn ClientFactory>)>,
) -> Option<Transport> {
    let protocol = match catch(|| factory.build_protocol(&peer)) {
        Ok(Some(p)) => p,
        Ok(None) => return None,
        Err(f) => {
            tracing::error!(peer = %peer, failure = %f, "build_protocol panicked; connection dropped");
            return None;
        }
    };
    let conn = Connection::new(reactor, UnixSock::new(stream), peer, host);
    if let Err(e) = conn.register(reactor) {
        tracing::warn!(error = %e, "could not register a Unix connection");
        return None;
    }
    if let Some((connector, cf)) = client {
        let c2 = connector.clone();
        conn.set_on_close(Box::new(move |reason| {
            c2.set_state(ConnectorState::Disconnected, None);
            if let Err(f) = catch(|| cf.client_connection_lost(&c2, reason.clone())) {
                tracing::error!(failure = %f, "client_connection_lost panicked");
            }
            c2.stop_using_if_idle(&*cf);
        }));
        connector.set_state(ConnectorState::Connected, Some(conn.transport()));
    }
    let t = conn.transport();
    conn.start(reactor, protocol);
    Some(t)
}

impl Source for UnixPortInner {
    fn ready(self: Rc<Self>, reactor: &Reactor, readiness: Readiness) {
        if readiness.readable && !self.lis.accept.waiting() {
            accept_some(&self, reactor);
        }
    }
    fn shutdown(self: Rc<Self>, _reactor: &Reactor) {
        self.close();
    }
}

/// Removes a socket file nobody listens on; refuses a live socket or a non-socket.
fn clear_stale(path: &Path) -> Result<(), UnixError> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(UnixError::Io(e)),
    };
    if !meta.file_type().is_socket() {
        return Err(UnixError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(UnixError::InUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "removing stale Unix socket");
            std::fs::remove_file(path).map_err(UnixError::Io)
        }
        Err(e) => Err(UnixError::Io(e)),
    }
}

fn bind_unix(path: &UnixPath, ty: Type) -> Result<(Socket, bool), UnixError> {
    let sa = path.sockaddr()?;
    if let UnixPath::File(p) = path {
        clear_stale(p)?;
    }
    let s = crate::sys::new_socket(Domain::UNIX, ty, None)?;
    match s.bind(&sa) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            return Err(match path {
                UnixPath::File(p) => UnixError::InUse(p.clone()),
                UnixPath::Abstract(_) => UnixError::Io(e),
            })
        }
        Err(e) => return Err(UnixError::Io(e)),
    }
    Ok((s, matches!(path, UnixPath::File(_))))
}

fn set_mode(path: &UnixPath, mode: Option<u32>) -> Result<(), UnixError> {
    if let (Some(mode), UnixPath::File(p)) = (mode, path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// A Unix client connection attempt.
struct UnixConnector {
    reactor: Weak<Inner>,
    path: UnixPath,
    factory: Rc<dyn ClientFactory>,
    /// The connector while an attempt is queued (taken by the attempt or by a cancel).
    pending: Rc<RefCell<Option<Connector>>>,
}

impl ConnectorImpl for UnixConnector {
    fn connect(&self, me: &Connector) {
        let Some(inner) = self.reactor.upgrade() else {
            return;
        };
        let reactor = Reactor::from_inner(inner);
        if me.state() != ConnectorState::Disconnected {
            return;
        }
        me.set_state(ConnectorState::Connecting, None);
        me.start_using(&*self.factory);
        if let Err(f) = catch(|| self.factory.started_connecting(me)) {
            tracing::error!(failure = %f, "started_connecting panicked");
        }
        *self.pending.borrow_mut() = Some(me.clone());
        let pending = self.pending.clone();
        let path = self.path.clone();
        let factory = self.factory.clone();
        let r2 = reactor.clone();
        // A local connect completes (or fails) at once; finish it on the next
        // turn so the caller gets its Connector before any callback runs.
        reactor.call_soon(move || {
            let Some(me2) = pending.borrow_mut().take() else {
                return; // cancelled
            };
            let fail = |reason: ConnectionError| {
                me2.set_state(ConnectorState::Disconnected, None);
                if let Err(p) =
                    catch(|| factory.client_connection_failed(&me2, Failure::new(reason)))
                {
                    tracing::error!(failure = %p, "client_connection_failed panicked");
                }
                me2.stop_using_if_idle(&*factory);
            };
            let stream = (|| -> Result<UnixStream, ConnectionError> {
                let sa = path
                    .sockaddr()
                    .map_err(|e| ConnectionError::ConnectFailed {
                        addr: path.to_string(),
                        source: io::Error::new(io::ErrorKind::InvalidInput, e.to_string()),
                    })?;
                let s = crate::sys::new_socket(Domain::UNIX, Type::STREAM, None)
                    .map_err(|e| ConnectionError::from_connect_io(&path, e))?;
                match s.connect(&sa) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // The listener's queue is full: a local socket says so at once.
                        return Err(ConnectionError::ConnectFailed {
                            addr: path.to_string(),
                            source: e,
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        return Err(ConnectionError::Refused(format!("{path} (no such socket)")))
                    }
                    Err(e) => return Err(ConnectionError::from_connect_io(&path, e)),
                }
                let std_stream: std::os::unix::net::UnixStream = s.into();
                Ok(UnixStream::from_std(std_stream))
            })();
            match stream {
                Ok(stream) => {
                    let f: Rc<dyn Factory> = factory.clone() as Rc<dyn Factory>;
                    let started = start_unix_connection(
                        &r2,
                        &f,
                        stream,
                        path.address(),
                        Address::Unix(None),
                        Some((me2.clone(), factory.clone())),
                    );
                    if started.is_none() {
                        me2.set_state(ConnectorState::Disconnected, None);
                    }
                }
                Err(reason) => fail(reason),
            }
        });
    }

    fn stop_connecting(&self) {
        let Some(me) = self.pending.borrow_mut().take() else {
            return;
        };
        me.set_state(ConnectorState::Disconnected, None);
        let f = Failure::new(ConnectionError::Cancelled);
        if let Err(p) = catch(|| self.factory.client_connection_failed(&me, f)) {
            tracing::error!(failure = %p, "client_connection_failed panicked");
        }
        me.stop_using_if_idle(&*self.factory);
    }

    fn destination(&self) -> Address {
        self.path.address()
    }
}

/// Options for [`Reactor::listen_unix_datagram`].
#[derive(Debug, Clone)]
pub struct UnixDatagramOptions {
    /// File mode of the socket.
    pub mode: Option<u32>,
    /// Largest datagram.
    pub max_packet_size: usize,
}

impl Default for UnixDatagramOptions {
    fn default() -> Self {
        UnixDatagramOptions {
            mode: None,
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
        }
    }
}

impl Reactor {
    /// Listens on a Unix stream socket.
    ///
    /// A socket file left behind by a dead process is removed; a socket
    /// someone still listens on gives [`UnixError::InUse`], and a path that
    /// is not a socket gives [`UnixError::NotASocket`] (nothing is deleted).
    pub fn listen_unix(
        &self,
        path: UnixPath,
        factory: Rc<dyn Factory>,
        opts: UnixListenOptions,
    ) -> Result<UnixPort, UnixError> {
        let (s, owns_file) = bind_unix(&path, Type::STREAM)?;
        set_mode(&path, opts.mode)?;
        s.listen(opts.backlog)?;
        let std_listener: std::os::unix::net::UnixListener = s.into();
        self.serve_unix_listener(
            UnixListener::from_std(std_listener),
            factory,
            path,
            owns_file,
        )
    }

    /// Serves an already bound, listening Unix socket (socket activation).
    pub fn adopt_unix_listener(
        &self,
        listener: std::os::unix::net::UnixListener,
        factory: Rc<dyn Factory>,
    ) -> Result<UnixPort, UnixError> {
        listener.set_nonblocking(true)?;
        let path = match listener.local_addr()?.as_pathname() {
            Some(p) => UnixPath::File(p.to_path_buf()),
            None => UnixPath::Abstract(Vec::new()),
        };
        self.serve_unix_listener(UnixListener::from_std(listener), factory, path, false)
    }

    /// Registers a listening socket and starts accepting on it.
    fn serve_unix_listener(
        &self,
        listener: UnixListener,
        factory: Rc<dyn Factory>,
        path: UnixPath,
        owns_file: bool,
    ) -> Result<UnixPort, UnixError> {
        let port = Rc::new(UnixPortInner {
            lis: Listening::new(self, factory),
            path: path.clone(),
            owns_file,
        });
        port.lis.open(self, &port, listener)?;
        tracing::info!(path = %path, "listening on unix:{}", path);
        Ok(UnixPort { port })
    }

    /// Connects to a Unix stream socket. Local connects finish at once, so
    /// `timeout` only matters for API parity with TCP; it is accepted and ignored.
    pub fn connect_unix(
        &self,
        path: UnixPath,
        factory: Rc<dyn ClientFactory>,
        timeout: Option<Duration>,
    ) -> Connector {
        let _ = timeout;
        let imp = Rc::new(UnixConnector {
            reactor: self.downgrade(),
            path,
            factory,
            pending: Rc::new(RefCell::new(None)),
        });
        let c = Connector::new(imp);
        c.connect();
        c
    }

    /// Opens a Unix datagram socket bound to `path` (stale files are handled
    /// as in `listen_unix`; the file is removed when the port closes).
    pub fn listen_unix_datagram(
        &self,
        path: UnixPath,
        protocol: Box<dyn DatagramProtocol>,
        opts: UnixDatagramOptions,
    ) -> Result<DatagramTransport, UnixError> {
        let (s, owns) = bind_unix(&path, Type::DGRAM)?;
        set_mode(&path, opts.mode)?;
        let std_sock: std::os::unix::net::UnixDatagram = s.into();
        let remove = match (&path, owns) {
            (UnixPath::File(p), true) => Some(p.clone()),
            _ => None,
        };
        Ok(self.open_datagram(
            mio::net::UnixDatagram::from_std(std_sock),
            protocol,
            opts.max_packet_size,
            remove,
        )?)
    }

    /// Opens an unbound Unix datagram socket connected to `path`: `write`
    /// sends there, and replies come back to `datagram_received`.
    ///
    /// Note that an unbound socket has no address a peer can reply to; use
    /// [`Reactor::listen_unix_datagram`] plus `connect` when replies are wanted.
    pub fn connect_unix_datagram(
        &self,
        path: UnixPath,
        protocol: Box<dyn DatagramProtocol>,
    ) -> Result<DatagramTransport, UnixError> {
        let sa = path.sockaddr()?;
        let s = crate::sys::new_socket(Domain::UNIX, Type::DGRAM, None)?;
        s.connect(&sa)?;
        let std_sock: std::os::unix::net::UnixDatagram = s.into();
        let t = self.open_datagram(
            mio::net::UnixDatagram::from_std(std_sock),
            protocol,
            DEFAULT_MAX_PACKET_SIZE,
            None,
        )?;
        // Record the peer so `write` works; the socket is connected already.
        t.connect(&path.address())
            .map_err(|e| UnixError::Io(io::Error::other(e.to_string())))?;
        Ok(t)
    }
}
