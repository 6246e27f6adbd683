//! Datagram transports: UDP (with multicast) and, through the same port
//! type, Unix datagram sockets (see [`crate::unix`]).
//!
//! A [`DatagramProtocol`] gets `datagram_received(data, from)` for every
//! datagram and writes through the [`DatagramTransport`] handed to
//! `start_protocol`. A port may be *connected* to one peer; then ICMP
//! "port unreachable" replies reach the protocol as `connection_refused`.
//!
//! Datagrams longer than the port's maximum packet size are detected (the
//! kernel reports their true length) and handed to `datagram_too_large`
//! instead of being delivered cut short.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};

use mio::Interest;
use socket2::{Domain, Protocol as SockProtocol, SockAddr, SockRef, Type};

use crate::address::Address;
use crate::failure::catch;
use crate::reactor::{Inner, Reactor, Readiness, Source};

// Note: on Linux every UDP socket is opened with `IP_MULTICAST_ALL` off, so
// it receives only the multicast groups it joined itself (not those other
// sockets on the host joined), which is what `join_group` promises.

/// Twisted's default maximum packet size.
pub const DEFAULT_MAX_PACKET_SIZE: usize = 8192;
/// Datagrams read per readiness event before yielding to other sources.
const READS_PER_TURN: usize = 64;

/// A protocol for datagram sockets.
///
/// ```
/// use torsion_core::{Address, udp::{DatagramProtocol, DatagramTransport}};
/// struct Echo(Option<DatagramTransport>);
/// impl DatagramProtocol for Echo {
///     fn start_protocol(&mut self, t: DatagramTransport) { self.0 = Some(t) }
///     fn datagram_received(&mut self, data: &[u8], from: Address) {
///         if let Some(t) = &self.0 { let _ = t.write_to(data, &from); }
///     }
/// }
/// ```
pub trait DatagramProtocol: 'static {
    /// The port is open; keep the transport to send.
    fn start_protocol(&mut self, transport: DatagramTransport) {
        let _ = transport;
    }
    /// A datagram arrived. The slice borrows the reactor's buffer.
    fn datagram_received(&mut self, data: &[u8], from: Address);
    /// A connected port's peer answered with ICMP "port unreachable".
    fn connection_refused(&mut self) {}
    /// A datagram longer than the maximum packet size arrived and was dropped.
    fn datagram_too_large(&mut self, size: usize, from: Address) {
        tracing::warn!(size, from = %from, "dropped a datagram larger than the maximum packet size");
    }
    /// The port was closed.
    fn stop_protocol(&mut self) {}
}

/// Why a datagram operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// The datagram is larger than the port's maximum packet size.
    #[error("datagram of {size} bytes exceeds the maximum packet size of {max} bytes")]
    TooLarge {
        /// Length of the datagram.
        size: usize,
        /// The port's limit.
        max: usize,
    },
    /// `write` without a destination on a port that is not connected.
    #[error("the port is not connected: use write_to with a destination")]
    NotConnected,
    /// The port is closed.
    #[error("the port is closed")]
    Closed,
    /// The kernel's send buffer is full; the datagram was dropped (datagrams are not queued).
    #[error("the send buffer is full; the datagram was dropped")]
    WouldBlock,
    /// The connected peer refused (ICMP port unreachable).
    #[error("connection refused by the peer")]
    Refused,
    /// The address is of the wrong kind for this socket (a UDP address on a Unix socket ...).
    #[error("address {0} does not suit this socket")]
    WrongAddress(String),
    /// Another OS error.
    #[error("datagram I/O failed: {0}")]
    Io(#[from] io::Error),
}

pub(crate) enum DgramSock {
    Udp(mio::net::UdpSocket),
    Unix(mio::net::UnixDatagram),
}

impl DgramSock {
    fn raw(&self) -> RawFd {
        match self {
            DgramSock::Udp(s) => s.as_raw_fd(),
            DgramSock::Unix(s) => s.as_raw_fd(),
        }
    }
    fn sockref(&self) -> SockRef<'_> {
        match self {
            DgramSock::Udp(s) => SockRef::from(s),
            DgramSock::Unix(s) => SockRef::from(s),
        }
    }
}

/// Converts a socket2 address into ours.
pub(crate) fn address_of(sa: &SockAddr, udp: bool) -> Address {
    if let Some(s) = sa.as_socket() {
        return if udp {
            Address::Udp(s)
        } else {
            Address::Tcp(s)
        };
    }
    if let Some(p) = sa.as_pathname() {
        return Address::Unix(Some(p.to_path_buf()));
    }
    if let Some(n) = sa.as_abstract_namespace() {
        return Address::UnixAbstract(n.to_vec());
    }
    Address::Unix(None)
}

/// Converts our address into a socket2 address.
pub(crate) fn sockaddr_of(a: &Address) -> Result<SockAddr, DatagramError> {
    match a {
        Address::Udp(s) | Address::Tcp(s) => Ok(SockAddr::from(*s)),
        Address::Unix(Some(p)) => SockAddr::unix(p).map_err(DatagramError::Io),
        Address::UnixAbstract(n) => {
            let mut bytes = vec![0u8];
            bytes.extend_from_slice(n);
            let os: &std::ffi::OsStr = std::os::unix::ffi::OsStrExt::from_bytes(&bytes);
            SockAddr::unix(os).map_err(DatagramError::Io)
        }
        other => Err(DatagramError::WrongAddress(other.to_string())),
    }
}

pub(crate) struct DatagramPort {
    reactor: Weak<Inner>,
    token: Cell<usize>,
    sock: RefCell<Option<DgramSock>>,
    protocol: RefCell<Option<Box<dyn DatagramProtocol>>>,
    max_packet: Cell<usize>,
    connected: RefCell<Option<Address>>,
    host: Address,
    udp: bool,
    path_to_remove: RefCell<Option<std::path::PathBuf>>,
}

impl DatagramPort {
    pub(crate) fn open(
        reactor: &Reactor,
        sock: DgramSock,
        protocol: Box<dyn DatagramProtocol>,
        max_packet: usize,
        remove_on_close: Option<std::path::PathBuf>,
    ) -> io::Result<DatagramTransport> {
        let udp = matches!(sock, DgramSock::Udp(_));
        let host = match sock.sockref().local_addr() {
            Ok(a) => address_of(&a, udp),
            Err(_) => Address::Unix(None),
        };
        let slot: Rc<RefCell<Option<Rc<DatagramPort>>>> = Rc::new(RefCell::new(None));
        let slot2 = slot.clone();
        let weak = reactor.downgrade();
        let raw = sock.raw();
        let key = reactor.register_source(
            &mut mio::unix::SourceFd(&raw),
            Interest::READABLE,
            move |key| {
                let p = Rc::new(DatagramPort {
                    reactor: weak,
                    token: Cell::new(key),
                    sock: RefCell::new(None),
                    protocol: RefCell::new(None),
                    max_packet: Cell::new(max_packet.max(1)),
                    connected: RefCell::new(None),
                    host,
                    udp,
                    path_to_remove: RefCell::new(remove_on_close),
                });
                *slot2.borrow_mut() = Some(p.clone());
                p
            },
        )?;
        let port = slot
            .borrow_mut()
            .take()
            .ok_or_else(|| io::Error::other("port not created"))?;
        debug_assert_eq!(port.token.get(), key);
        *port.sock.borrow_mut() = Some(sock);
        let transport = DatagramTransport(port.clone());
        let mut protocol = protocol;
        let t2 = transport.clone();
        if let Err(f) = catch(|| protocol.start_protocol(t2)) {
            tracing::error!(failure = %f, "start_protocol panicked");
        }
        *port.protocol.borrow_mut() = Some(protocol);
        Ok(transport)
    }

    fn with_protocol(&self, what: &str, f: impl FnOnce(&mut dyn DatagramProtocol)) {
        let mut p = self.protocol.borrow_mut();
        if let Some(p) = p.as_mut() {
            if let Err(e) = catch(|| f(&mut **p)) {
                tracing::error!(failure = %e, host = %self.host, "{what} panicked");
            }
        }
    }

    fn read_some(self: &Rc<Self>, reactor: &Reactor) {
        let max = self.max_packet.get();
        let mut big: Vec<u8> = Vec::new();
        reactor.with_read_buffer(|shared| {
            let buf: &mut [u8] = if max <= shared.len() {
                &mut shared[..max]
            } else {
                big.resize(max, 0);
                &mut big[..]
            };
            for _ in 0..READS_PER_TURN {
                let fd = match self.sock.borrow().as_ref() {
                    Some(s) => s.raw(),
                    None => return,
                };
                match crate::sys::recv_from_trunc(fd, buf) {
                    Ok((n, from)) => {
                        let from = address_of(&from, self.udp);
                        if n > buf.len() {
                            self.with_protocol("datagram_too_large", |p| {
                                p.datagram_too_large(n, from)
                            });
                        } else {
                            self.with_protocol("datagram_received", |p| {
                                p.datagram_received(&buf[..n], from)
                            });
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        self.with_protocol("connection_refused", |p| p.connection_refused());
                    }
                    Err(e) => {
                        // Other ICMP-reported errors (host unreachable ...) are per
                        // datagram and do not close the port.
                        tracing::debug!(error = %e, host = %self.host, "datagram receive error");
                    }
                }
            }
            reactor.want_read_turn(self.clone());
        });
    }

    fn close(&self) {
        let Some(s) = self.sock.borrow_mut().take() else {
            return;
        };
        if let Some(inner) = self.reactor.upgrade() {
            let r = Reactor::from_inner(inner);
            let raw = s.raw();
            let _ = r.registry().deregister(&mut mio::unix::SourceFd(&raw));
            r.retire_source(self.token.get());
        }
        drop(s);
        if let Some(p) = self.path_to_remove.borrow_mut().take() {
            let _ = std::fs::remove_file(p);
        }
        let p = self.protocol.borrow_mut().take();
        if let Some(mut p) = p {
            if let Err(f) = catch(move || p.stop_protocol()) {
                tracing::error!(failure = %f, "stop_protocol panicked");
            }
        }
    }

    fn send(&self, data: &[u8], to: Option<&Address>) -> Result<(), DatagramError> {
        let max = self.max_packet.get();
        if data.len() > max {
            return Err(DatagramError::TooLarge {
                size: data.len(),
                max,
            });
        }
        let sock = self.sock.borrow();
        let s = sock.as_ref().ok_or(DatagramError::Closed)?;
        let r = match to {
            Some(a) => s.sockref().send_to(data, &sockaddr_of(a)?),
            None => {
                if self.connected.borrow().is_none() {
                    return Err(DatagramError::NotConnected);
                }
                s.sockref().send(data)
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(DatagramError::WouldBlock),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                drop(sock);
                self.with_protocol("connection_refused", |p| p.connection_refused());
                Err(DatagramError::Refused)
            }
            Err(e) => Err(DatagramError::Io(e)),
        }
    }
}

impl Source for DatagramPort {
    fn ready(self: Rc<Self>, reactor: &Reactor, readiness: Readiness) {
        if readiness.readable {
            self.read_some(reactor);
        }
    }
    fn shutdown(self: Rc<Self>, _reactor: &Reactor) {
        self.close();
    }
}

/// The handle a [`DatagramProtocol`] sends through. Cheap to clone.
#[derive(Clone)]
pub struct DatagramTransport(Rc<DatagramPort>);

impl fmt::Debug for DatagramTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatagramTransport({})", self.0.host)
    }
}

impl DatagramTransport {
    /// Sends one datagram to `to`. Datagrams are never queued: a full send
    /// buffer gives [`DatagramError::WouldBlock`] and the datagram is dropped.
    pub fn write_to(&self, data: &[u8], to: &Address) -> Result<(), DatagramError> {
        self.0.send(data, Some(to))
    }

    /// Sends one datagram to a UDP address.
    pub fn write_to_addr(&self, data: &[u8], to: SocketAddr) -> Result<(), DatagramError> {
        self.0.send(data, Some(&Address::Udp(to)))
    }

    /// Sends one datagram to the connected peer.
    pub fn write(&self, data: &[u8]) -> Result<(), DatagramError> {
        self.0.send(data, None)
    }

    /// Connects the port to one peer: only its datagrams are received, `write`
    /// sends to it, and ICMP refusals reach `connection_refused`.
    pub fn connect(&self, to: &Address) -> Result<(), DatagramError> {
        let sa = sockaddr_of(to)?;
        let sock = self.0.sock.borrow();
        let s = sock.as_ref().ok_or(DatagramError::Closed)?;
        s.sockref().connect(&sa)?;
        *self.0.connected.borrow_mut() = Some(to.clone());
        Ok(())
    }

    /// The connected peer, if any.
    pub fn peer(&self) -> Option<Address> {
        self.0.connected.borrow().clone()
    }

    /// The local address.
    pub fn host(&self) -> Address {
        self.0.host.clone()
    }

    /// The local UDP address (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.0.host.socket_addr()
    }

    /// Largest datagram sent or received; larger incoming ones go to `datagram_too_large`.
    pub fn max_packet_size(&self) -> usize {
        self.0.max_packet.get()
    }

    /// Changes the maximum packet size.
    pub fn set_max_packet_size(&self, size: usize) {
        self.0.max_packet.set(size.max(1));
    }

    fn sock_op<T>(&self, f: impl FnOnce(SockRef<'_>) -> io::Result<T>) -> Result<T, DatagramError> {
        let sock = self.0.sock.borrow();
        let s = sock.as_ref().ok_or(DatagramError::Closed)?;
        f(s.sockref()).map_err(DatagramError::Io)
    }

    /// Allows or forbids sending to broadcast addresses (`SO_BROADCAST`).
    pub fn set_broadcast_allowed(&self, on: bool) -> Result<(), DatagramError> {
        self.sock_op(|s| s.set_broadcast(on))
    }

    /// Whether broadcast is allowed.
    pub fn broadcast_allowed(&self) -> Result<bool, DatagramError> {
        self.sock_op(|s| s.broadcast())
    }

    /// Joins a multicast group. For IPv4 `interface` is the address of the
    /// interface (`None`: any); for IPv6 pass `interface_index` instead.
    pub fn join_group(
        &self,
        group: IpAddr,
        interface: Option<Ipv4Addr>,
    ) -> Result<(), DatagramError> {
        self.membership(group, interface, 0, true)
    }

    /// Leaves a multicast group joined with `join_group`.
    pub fn leave_group(
        &self,
        group: IpAddr,
        interface: Option<Ipv4Addr>,
    ) -> Result<(), DatagramError> {
        self.membership(group, interface, 0, false)
    }

    /// Joins an IPv6 multicast group on the interface with this index (0: default).
    pub fn join_group_v6(
        &self,
        group: std::net::Ipv6Addr,
        interface_index: u32,
    ) -> Result<(), DatagramError> {
        self.membership(IpAddr::V6(group), None, interface_index, true)
    }

    /// Leaves an IPv6 multicast group.
    pub fn leave_group_v6(
        &self,
        group: std::net::Ipv6Addr,
        interface_index: u32,
    ) -> Result<(), DatagramError> {
        self.membership(IpAddr::V6(group), None, interface_index, false)
    }

    fn membership(
        &self,
        group: IpAddr,
        interface: Option<Ipv4Addr>,
        index: u32,
        join: bool,
    ) -> Result<(), DatagramError> {
        self.sock_op(|s| match group {
            IpAddr::V4(g) => {
                let i = interface.unwrap_or(Ipv4Addr::UNSPECIFIED);
                if join {
                    s.join_multicast_v4(&g, &i)
                } else {
                    s.leave_multicast_v4(&g, &i)
                }
            }
            IpAddr::V6(g) => {
                if join {
                    s.join_multicast_v6(&g, index)
                } else {
                    s.leave_multicast_v6(&g, index)
                }
            }
        })
    }

    fn is_v6(&self) -> bool {
        matches!(self.0.host.socket_addr(), Some(SocketAddr::V6(_)))
    }

    /// Time-to-live (hop limit) of outgoing multicast datagrams.
    pub fn set_multicast_ttl(&self, ttl: u32) -> Result<(), DatagramError> {
        let v6 = self.is_v6();
        self.sock_op(|s| {
            if v6 {
                s.set_multicast_hops_v6(ttl)
            } else {
                s.set_multicast_ttl_v4(ttl)
            }
        })
    }

    /// The multicast TTL.
    pub fn multicast_ttl(&self) -> Result<u32, DatagramError> {
        let v6 = self.is_v6();
        self.sock_op(|s| {
            if v6 {
                s.multicast_hops_v6()
            } else {
                s.multicast_ttl_v4()
            }
        })
    }

    /// Whether this host's own multicast datagrams are looped back to it.
    pub fn set_multicast_loopback(&self, on: bool) -> Result<(), DatagramError> {
        let v6 = self.is_v6();
        self.sock_op(|s| {
            if v6 {
                s.set_multicast_loop_v6(on)
            } else {
                s.set_multicast_loop_v4(on)
            }
        })
    }

    /// The multicast loopback mode.
    pub fn multicast_loopback(&self) -> Result<bool, DatagramError> {
        let v6 = self.is_v6();
        self.sock_op(|s| {
            if v6 {
                s.multicast_loop_v6()
            } else {
                s.multicast_loop_v4()
            }
        })
    }

    /// The interface outgoing IPv4 multicast leaves by.
    pub fn set_outgoing_interface(&self, interface: Ipv4Addr) -> Result<(), DatagramError> {
        self.sock_op(|s| s.set_multicast_if_v4(&interface))
    }

    /// The interface (by index) outgoing IPv6 multicast leaves by.
    pub fn set_outgoing_interface_v6(&self, index: u32) -> Result<(), DatagramError> {
        self.sock_op(|s| s.set_multicast_if_v6(index))
    }

    /// The IPv4 outgoing multicast interface.
    pub fn outgoing_interface(&self) -> Result<Ipv4Addr, DatagramError> {
        self.sock_op(|s| s.multicast_if_v4())
    }

    /// Closes the port; the protocol hears `stop_protocol`.
    pub fn stop_listening(&self) {
        self.0.close();
    }

    /// True until closed.
    pub fn is_open(&self) -> bool {
        self.0.sock.borrow().is_some()
    }
}

/// Options for [`Reactor::listen_udp_with`].
#[derive(Debug, Clone)]
pub struct UdpOptions {
    /// Largest datagram received and sent.
    pub max_packet_size: usize,
    /// `SO_REUSEADDR` + `SO_REUSEPORT`: several sockets (in this or other
    /// processes) share the address; each receives multicast to it.
    pub reuse: bool,
    /// `SO_BROADCAST`.
    pub broadcast: bool,
    /// For IPv6 addresses: IPv6 only.
    pub ipv6_only: bool,
}

impl Default for UdpOptions {
    fn default() -> Self {
        UdpOptions {
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            reuse: false,
            broadcast: false,
            ipv6_only: true,
        }
    }
}

fn udp_socket(addr: SocketAddr, opts: &UdpOptions) -> io::Result<mio::net::UdpSocket> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = crate::sys::new_socket(domain, Type::DGRAM, Some(SockProtocol::UDP))?;
    if opts.reuse {
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
    }
    if opts.broadcast {
        s.set_broadcast(true)?;
    }
    if addr.is_ipv6() {
        s.set_only_v6(opts.ipv6_only)?;
    }
    if let Err(e) = crate::sys::set_multicast_all(s.as_raw_fd(), addr.is_ipv6(), false) {
        tracing::debug!(error = %e, "could not turn off IP_MULTICAST_ALL");
    }
    s.bind(&addr.into())?;
    let std_sock: std::net::UdpSocket = s.into();
    Ok(mio::net::UdpSocket::from_std(std_sock))
}

impl Reactor {
    /// Opens a UDP port on `addr` (port 0 picks a free one).
    ///
    /// ```
    /// use torsion_core::{Address, Reactor, udp::DatagramProtocol};
    /// struct Sink;
    /// impl DatagramProtocol for Sink {
    ///     fn datagram_received(&mut self, _: &[u8], _: Address) {}
    /// }
    /// let reactor = Reactor::new().unwrap();
    /// let port = reactor.listen_udp("127.0.0.1:0".parse().unwrap(), Box::new(Sink)).unwrap();
    /// assert!(port.local_addr().unwrap().port() != 0);
    /// port.stop_listening();
    /// ```
    pub fn listen_udp(
        &self,
        addr: SocketAddr,
        protocol: Box<dyn DatagramProtocol>,
    ) -> io::Result<DatagramTransport> {
        self.listen_udp_with(addr, protocol, UdpOptions::default())
    }

    /// `listen_udp` with options (maximum packet size, address reuse, broadcast).
    pub fn listen_udp_with(
        &self,
        addr: SocketAddr,
        protocol: Box<dyn DatagramProtocol>,
        opts: UdpOptions,
    ) -> io::Result<DatagramTransport> {
        let sock = udp_socket(addr, &opts)?;
        DatagramPort::open(
            self,
            DgramSock::Udp(sock),
            protocol,
            opts.max_packet_size,
            None,
        )
    }

    /// Opens a UDP port that shares its address with other sockets
    /// (`SO_REUSEADDR` + `SO_REUSEPORT`), as multicast listeners on one host
    /// need. Twisted's `listenMultiple`.
    pub fn listen_multiple(
        &self,
        addr: SocketAddr,
        protocol: Box<dyn DatagramProtocol>,
    ) -> io::Result<DatagramTransport> {
        self.listen_udp_with(
            addr,
            protocol,
            UdpOptions {
                reuse: true,
                ..UdpOptions::default()
            },
        )
    }

    /// Opens a Unix datagram socket (see [`crate::unix`]).
    pub(crate) fn open_datagram(
        &self,
        sock: mio::net::UnixDatagram,
        protocol: Box<dyn DatagramProtocol>,
        max_packet: usize,
        remove_on_close: Option<std::path::PathBuf>,
    ) -> io::Result<DatagramTransport> {
        DatagramPort::open(
            self,
            DgramSock::Unix(sock),
            protocol,
            max_packet,
            remove_on_close,
        )
    }
}
