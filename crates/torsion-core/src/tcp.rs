//! TCP: listening ports, outgoing connections, and the TCP socket glue.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::rc::{Rc, Weak};
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::Interest;
use socket2::{Domain, Protocol as SockProtocol, SockRef, Socket};

use crate::accept::{accept_some, AcceptState, Acceptor, Listening};
use crate::address::Address;
use crate::connector::{Connector, ConnectorImpl, ConnectorState};
use crate::deferred::Deferred;
use crate::error::{ConnectionError, NotSupportedError};
use crate::failure::{catch, Failure};
use crate::protocol::{ClientFactory, Factory};
use crate::reactor::{Inner, Reactor, Readiness, Source};
use crate::stream::{Connection, StreamSocket};
use crate::time::DelayedCall;

impl StreamSocket for TcpStream {
    fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        TcpStream::shutdown(self, how)
    }
    fn write_vectored_io(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        io::Write::write_vectored(self, bufs)
    }
    fn kind() -> &'static str {
        "TCP"
    }
    fn set_nodelay(&self, on: bool) -> Result<(), NotSupportedError> {
        TcpStream::set_nodelay(self, on).map_err(|_| NotSupportedError {
            what: "TCP_NODELAY",
            transport: "TCP (closed)",
        })
    }
    fn reset_on_close(&self) {
        let _ = SockRef::from(self).set_linger(Some(Duration::ZERO));
    }
    fn set_keepalive(&self, on: bool) -> Result<(), NotSupportedError> {
        SockRef::from(self)
            .set_keepalive(on)
            .map_err(|_| NotSupportedError {
                what: "TCP keepalive",
                transport: "TCP (closed)",
            })
    }
    fn sendfile_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(std::os::fd::AsRawFd::as_raw_fd(self))
    }
}

/// Options for `listen_tcp_with`.
#[derive(Debug, Clone)]
pub struct TcpListenOptions {
    /// Length of the accept queue.
    pub backlog: i32,
    /// `SO_REUSEPORT`, so several reactors (or processes) share one port.
    pub reuse_port: bool,
    /// For IPv6 addresses: accept IPv6 only (`IPV6_V6ONLY`).
    pub ipv6_only: bool,
}

impl Default for TcpListenOptions {
    fn default() -> Self {
        TcpListenOptions {
            backlog: 1024,
            reuse_port: false,
            ipv6_only: true,
        }
    }
}

/// A listening TCP port. Dropping the handle does not close it: call `stop_listening`.
#[derive(Clone)]
pub struct ListeningPort {
    port: Rc<TcpPort>,
}

impl fmt::Debug for ListeningPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ListeningPort({})", self.port.host)
    }
}

impl ListeningPort {
    /// The address actually bound (with the real port when port 0 was asked for).
    pub fn host(&self) -> Address {
        Address::Tcp(self.port.host)
    }

    /// The bound socket address.
    pub fn local_addr(&self) -> SocketAddr {
        self.port.host
    }

    /// Closes the listening socket; the Deferred fires once the port is free.
    /// Established connections are not affected.
    pub fn stop_listening(&self) -> Deferred<()> {
        self.port.close();
        Deferred::succeed(())
    }
}

struct TcpPort {
    lis: Listening<TcpListener>,
    host: SocketAddr,
}

impl TcpPort {
    fn close(&self) {
        if self.lis.close(|| {}) {
            tracing::info!(addr = %self.host, "stopped listening");
        }
    }

    fn start_connection(&self, reactor: &Reactor, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        // A port bound to one address accepts only on that address: skip the
        // getsockname(2) unless it listens on a wildcard address.
        let host = if self.host.ip().is_unspecified() {
            stream.local_addr().unwrap_or(self.host)
        } else {
            self.host
        };
        let peer_addr = Address::Tcp(peer);
        let protocol = match catch(|| self.lis.factory.build_protocol(&peer_addr)) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(f) => {
                tracing::error!(peer = %peer_addr, failure = %f, "build_protocol panicked; connection dropped");
                return;
            }
        };
        let conn = Connection::new(reactor, stream, peer_addr, Address::Tcp(host));
        if let Err(e) = conn.register(reactor) {
            tracing::warn!(error = %e, "could not register an accepted connection");
            return;
        }
        conn.start(reactor, protocol);
    }
}

impl Acceptor for TcpPort {
    fn accept_one(self: &Rc<Self>, reactor: &Reactor) -> io::Result<bool> {
        let r = match self.lis.socket.borrow().as_ref() {
            Some(l) => l.accept(),
            None => return Ok(false),
        };
        let (stream, peer) = r?;
        self.start_connection(reactor, stream, peer);
        Ok(true)
    }
    fn accept_state(&self) -> &AcceptState {
        &self.lis.accept
    }
    fn describe(&self) -> &dyn fmt::Display {
        &self.host
    }
}

impl Source for TcpPort {
    fn ready(self: Rc<Self>, reactor: &Reactor, readiness: Readiness) {
        if readiness.readable && !self.lis.accept.waiting() {
            accept_some(&self, reactor);
        }
    }

    fn shutdown(self: Rc<Self>, _reactor: &Reactor) {
        self.close();
    }
}

fn new_socket(addr: SocketAddr) -> io::Result<Socket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    crate::sys::new_stream_socket(domain, Some(SockProtocol::TCP))
}

impl Reactor {
    /// Listens for TCP connections on `addr` (IPv4 or IPv6; port 0 picks a free one).
    ///
    /// ```no_run
    /// use torsion_core::{factory_fn, Protocol, Reactor, Transport};
    /// struct Echo(Option<Transport>);
    /// impl Protocol for Echo {
    ///     fn connection_made(&mut self, t: Transport) { self.0 = Some(t) }
    ///     fn data_received(&mut self, d: &[u8]) { self.0.as_ref().unwrap().write(d) }
    /// }
    /// let reactor = Reactor::new()?;
    /// let port = reactor.listen_tcp("127.0.0.1:0".parse().unwrap(), factory_fn(|| Echo(None)))?;
    /// println!("listening on {}", port.host());
    /// reactor.run()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn listen_tcp(
        &self,
        addr: SocketAddr,
        factory: Rc<dyn Factory>,
    ) -> io::Result<ListeningPort> {
        self.listen_tcp_with(addr, factory, TcpListenOptions::default())
    }

    /// `listen_tcp` with a backlog and socket options.
    pub fn listen_tcp_with(
        &self,
        addr: SocketAddr,
        factory: Rc<dyn Factory>,
        opts: TcpListenOptions,
    ) -> io::Result<ListeningPort> {
        let s = new_socket(addr)?;
        s.set_reuse_address(true)?;
        if opts.reuse_port {
            s.set_reuse_port(true)?;
        }
        if addr.is_ipv6() {
            s.set_only_v6(opts.ipv6_only)?;
        }
        s.bind(&addr.into())?;
        s.listen(opts.backlog)?;
        let std_listener: std::net::TcpListener = s.into();
        self.adopt_tcp_listener(std_listener, factory)
    }

    /// Serves an already bound and listening socket (systemd socket activation, inherited fds).
    pub fn adopt_tcp_listener(
        &self,
        listener: std::net::TcpListener,
        factory: Rc<dyn Factory>,
    ) -> io::Result<ListeningPort> {
        listener.set_nonblocking(true)?;
        let host = listener.local_addr()?;
        let listener = TcpListener::from_std(listener);
        let port = Rc::new(TcpPort {
            lis: Listening::new(self, factory),
            host,
        });
        port.lis.open(self, &port, listener)?;
        tracing::info!(addr = %host, "listening on tcp:{}", host);
        Ok(ListeningPort { port })
    }

    /// Connects to `addr` over TCP; the factory hears the outcome.
    ///
    /// Refusal, timeout and other failures reach
    /// `ClientFactory::client_connection_failed` as a [`ConnectionError`].
    pub fn connect_tcp(
        &self,
        addr: SocketAddr,
        factory: Rc<dyn ClientFactory>,
        opts: ConnectOptions,
    ) -> Connector {
        let imp = Rc::new_cyclic(|me| TcpConnector {
            me: me.clone(),
            reactor: self.downgrade(),
            target: Target::Addr(addr),
            factory,
            opts,
            attempt: RefCell::new(None),
        });
        let c = Connector::new(imp);
        c.connect();
        c
    }

    /// Connects to `host:port`, resolving the name off the reactor thread first.
    /// A name that does not resolve gives [`ConnectionError::DnsLookup`].
    pub fn connect_tcp_host(
        &self,
        host: &str,
        port: u16,
        factory: Rc<dyn ClientFactory>,
        opts: ConnectOptions,
    ) -> Connector {
        let imp = Rc::new_cyclic(|me| TcpConnector {
            me: me.clone(),
            reactor: self.downgrade(),
            target: Target::Name(host.to_string(), port),
            factory,
            opts,
            attempt: RefCell::new(None),
        });
        let c = Connector::new(imp);
        c.connect();
        c
    }
}

/// Options for outgoing TCP connections.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Give up after this long (Twisted's default: 30 s).
    pub timeout: Option<Duration>,
    /// Bind the local end to this address first.
    pub bind_address: Option<SocketAddr>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            timeout: Some(Duration::from_secs(30)),
            bind_address: None,
        }
    }
}

#[derive(Clone)]
enum Target {
    Addr(SocketAddr),
    Name(String, u16),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Addr(a) => write!(f, "{a}"),
            Target::Name(h, p) => write!(f, "{h}:{p}"),
        }
    }
}

struct TcpConnector {
    me: Weak<TcpConnector>,
    reactor: Weak<Inner>,
    target: Target,
    factory: Rc<dyn ClientFactory>,
    opts: ConnectOptions,
    attempt: RefCell<Option<Rc<Attempt>>>,
}

/// One connection attempt; the source registered while connecting.
struct Attempt {
    /// The connector's implementation, which holds this attempt while it
    /// runs; the attempt lets go of it when done (the two would otherwise
    /// keep each other, and the factory, alive forever).
    owner: Weak<TcpConnector>,
    connector: Connector,
    factory: Rc<dyn ClientFactory>,
    reactor: Weak<Inner>,
    token: Cell<usize>,
    sock: RefCell<Option<TcpStream>>,
    addr: Cell<Option<SocketAddr>>,
    /// Further addresses a name resolved to, tried in order when one fails.
    rest: RefCell<Vec<SocketAddr>>,
    bind: Cell<Option<SocketAddr>>,
    target: String,
    timeout: RefCell<Option<DelayedCall>>,
    done: Cell<bool>,
}

impl Attempt {
    fn release(&self) {
        if let Some(owner) = self.owner.upgrade() {
            let mine = owner
                .attempt
                .borrow()
                .as_ref()
                .is_some_and(|a| std::ptr::eq(Rc::as_ptr(a), self));
            if mine {
                let me = owner.attempt.borrow_mut().take();
                drop(me);
            }
        }
    }

    fn fail(&self, reason: ConnectionError) {
        if self.done.replace(true) {
            return;
        }
        self.release();
        if let Some(c) = self.timeout.borrow_mut().take() {
            let _ = c.cancel();
        }
        if let Some(mut s) = self.sock.borrow_mut().take() {
            if let Some(inner) = self.reactor.upgrade() {
                let r = Reactor::from_inner(inner);
                let _ = r.registry().deregister(&mut s);
                r.retire_source(self.token.get());
            }
        }
        self.connector.set_state(ConnectorState::Disconnected, None);
        let f = Failure::new(reason);
        if let Err(p) = catch(|| self.factory.client_connection_failed(&self.connector, f)) {
            tracing::error!(failure = %p, "client_connection_failed panicked");
        }
        self.connector.stop_using_if_idle(&*self.factory);
    }

    /// A failure found while starting: reported on the next turn, never from
    /// inside `connect_tcp` itself, where the caller may still be setting up.
    fn fail_soon(self: &Rc<Self>, reactor: &Reactor, reason: ConnectionError) {
        let me = self.clone();
        let weak_r = reactor.downgrade();
        reactor.call_soon(move || {
            if let Some(inner) = weak_r.upgrade() {
                me.try_next_or_fail(&Reactor::from_inner(inner), reason);
            }
        });
    }

    /// Moves on to the next resolved address, or reports the failure.
    fn try_next_or_fail(self: &Rc<Self>, reactor: &Reactor, reason: ConnectionError) {
        if self.done.get() {
            return;
        }
        let next = {
            let mut rest = self.rest.borrow_mut();
            (!rest.is_empty()).then(|| rest.remove(0))
        };
        match next {
            Some(addr) => {
                tracing::debug!(failure = %reason, next = %addr, "trying the next address");
                if let Some(mut s) = self.sock.borrow_mut().take() {
                    let _ = reactor.registry().deregister(&mut s);
                    reactor.retire_source(self.token.get());
                }
                self.start_socket(reactor, addr, self.bind.get());
            }
            None => self.fail(reason),
        }
    }

    fn start_socket(
        self: &Rc<Self>,
        reactor: &Reactor,
        addr: SocketAddr,
        bind: Option<SocketAddr>,
    ) {
        self.addr.set(Some(addr));
        let sock = (|| -> io::Result<TcpStream> {
            let s = new_socket(addr)?;
            if let Some(b) = bind {
                s.bind(&b.into())?;
            }
            match s.connect(&addr.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            let std_stream: std::net::TcpStream = s.into();
            Ok(TcpStream::from_std(std_stream))
        })();
        let mut sock = match sock {
            Ok(s) => s,
            Err(e) => return self.fail_soon(reactor, ConnectionError::from_connect_io(addr, e)),
        };
        let me = self.clone();
        match reactor.register_source(
            &mut sock,
            Interest::READABLE | Interest::WRITABLE,
            move |_| me,
        ) {
            Ok(key) => {
                self.token.set(key);
                *self.sock.borrow_mut() = Some(sock);
            }
            Err(e) => self.fail_soon(reactor, ConnectionError::from_connect_io(addr, e)),
        }
    }

    /// Completes the attempt once the socket is connected; returns the new
    /// connection, which took over the attempt's poller token.
    fn finish(self: &Rc<Self>, reactor: &Reactor) -> Option<Rc<Connection<TcpStream>>> {
        let addr = self.addr.get()?;
        let err = {
            let sock = self.sock.borrow();
            let s = sock.as_ref()?;
            match s.take_error() {
                Ok(Some(e)) | Err(e) => Some(e),
                Ok(None) => match s.peer_addr() {
                    Ok(_) => None,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => return None, // not yet
                    Err(e) => Some(e),
                },
            }
        };
        if let Some(e) = err {
            self.try_next_or_fail(reactor, ConnectionError::from_connect_io(addr, e));
            return None;
        }
        if self.done.replace(true) {
            return None;
        }
        self.release();
        if let Some(c) = self.timeout.borrow_mut().take() {
            let _ = c.cancel();
        }
        let stream = self.sock.borrow_mut().take()?;
        let _ = stream.set_nodelay(true);
        let host = stream
            .local_addr()
            .map(Address::Tcp)
            .unwrap_or(Address::Tcp(addr));
        let peer = Address::Tcp(addr);
        let protocol = match catch(|| self.factory.build_protocol(&peer)) {
            Ok(Some(p)) => p,
            refused => {
                if let Err(f) = refused {
                    tracing::error!(peer = %peer, failure = %f, "build_protocol panicked; connection dropped");
                }
                reactor.retire_source(self.token.get());
                let mut s = stream;
                let _ = reactor.registry().deregister(&mut s);
                self.connector.set_state(ConnectorState::Disconnected, None);
                return None;
            }
        };
        let conn = Connection::new(reactor, stream, peer, host);
        conn.adopt_token(reactor, self.token.get());
        let connector = self.connector.clone();
        let factory = self.factory.clone();
        conn.set_on_close(Box::new(move |reason| {
            connector.set_state(ConnectorState::Disconnected, None);
            if let Err(f) = catch(|| factory.client_connection_lost(&connector, reason.clone())) {
                tracing::error!(failure = %f, "client_connection_lost panicked");
            }
            connector.stop_using_if_idle(&*factory);
        }));
        self.connector
            .set_state(ConnectorState::Connected, Some(conn.transport()));
        conn.start(reactor, protocol);
        Some(conn)
    }
}

impl Source for Attempt {
    fn ready(self: Rc<Self>, reactor: &Reactor, readiness: Readiness) {
        if !self.done.get() {
            if let Some(conn) = self.finish(reactor) {
                // Edge-triggered: data that arrived with the connect completion
                // raised its edge already, in this very event. Hand the event on.
                if readiness.readable {
                    conn.ready(reactor, readiness);
                }
            }
        }
    }
    fn shutdown(self: Rc<Self>, _reactor: &Reactor) {
        self.fail(ConnectionError::ReactorShutdown);
    }
    fn reactor_dropped(self: Rc<Self>) {
        self.fail(ConnectionError::ReactorShutdown);
    }
}

impl ConnectorImpl for TcpConnector {
    fn connect(&self, me: &Connector) {
        let Some(inner) = self.reactor.upgrade() else {
            return;
        };
        let reactor = Reactor::from_inner(inner);
        if me.state() != ConnectorState::Disconnected {
            return;
        }
        me.set_state(ConnectorState::Connecting, None);
        let attempt = Rc::new(Attempt {
            owner: self.me.clone(),
            connector: me.clone(),
            factory: self.factory.clone(),
            reactor: self.reactor.clone(),
            token: Cell::new(usize::MAX),
            sock: RefCell::new(None),
            addr: Cell::new(None),
            rest: RefCell::new(Vec::new()),
            bind: Cell::new(self.opts.bind_address),
            target: self.target.to_string(),
            timeout: RefCell::new(None),
            done: Cell::new(false),
        });
        *self.attempt.borrow_mut() = Some(attempt.clone());
        me.start_using(&*self.factory);
        if let Err(f) = catch(|| self.factory.started_connecting(me)) {
            tracing::error!(failure = %f, "started_connecting panicked");
        }
        if let Some(t) = self.opts.timeout {
            let weak = Rc::downgrade(&attempt);
            let call = reactor.call_later(t, move || {
                if let Some(a) = weak.upgrade() {
                    let target = a.target.clone();
                    a.fail(ConnectionError::Timeout(target));
                }
            });
            *attempt.timeout.borrow_mut() = Some(call);
        }
        match &self.target {
            Target::Addr(addr) => attempt.start_socket(&reactor, *addr, self.opts.bind_address),
            Target::Name(host, port) => {
                let (host, port) = (host.clone(), *port);
                let handle = reactor.handle();
                let bind = self.opts.bind_address;
                // The attempt is !Send: park it in a thread-local table keyed by
                // an id that the resolver thread hands back.
                let id = pending::park(attempt.clone());
                reactor.resolve_in_background(host.clone(), port, move |result| {
                    handle.call_from_thread(move || {
                        let Some(attempt) = pending::take(id) else {
                            return;
                        };
                        let Some(inner) = attempt.reactor.upgrade() else {
                            return;
                        };
                        let reactor = Reactor::from_inner(inner);
                        if attempt.done.get() {
                            return;
                        }
                        match result {
                            Ok(addrs) => match addrs.first() {
                                Some(a) => {
                                    *attempt.rest.borrow_mut() = addrs[1..].to_vec();
                                    attempt.start_socket(&reactor, *a, bind)
                                }
                                None => attempt.fail(ConnectionError::DnsLookup {
                                    host,
                                    message: "no addresses".into(),
                                }),
                            },
                            Err(message) => {
                                attempt.fail(ConnectionError::DnsLookup { host, message })
                            }
                        }
                    });
                });
            }
        }
    }

    fn stop_connecting(&self) {
        // Release the borrow first: the factory may reconnect from its callback.
        let attempt = self.attempt.borrow_mut().take();
        if let Some(a) = attempt {
            a.fail(ConnectionError::Cancelled);
        }
    }

    fn destination(&self) -> Address {
        match &self.target {
            Target::Addr(a) => Address::Tcp(*a),
            Target::Name(h, p) => Address::Memory(format!("{h}:{p}")),
        }
    }
}

/// Attempts waiting for name resolution, per thread.
mod pending {
    use super::Attempt;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    thread_local! {
        static TABLE: RefCell<(u64, HashMap<u64, Rc<Attempt>>)> = RefCell::new((0, HashMap::new()));
    }

    pub(super) fn park(a: Rc<Attempt>) -> u64 {
        TABLE.with(|t| {
            let mut t = t.borrow_mut();
            t.0 += 1;
            let id = t.0;
            t.1.insert(id, a);
            id
        })
    }

    pub(super) fn take(id: u64) -> Option<Rc<Attempt>> {
        TABLE.with(|t| t.borrow_mut().1.remove(&id))
    }
}
