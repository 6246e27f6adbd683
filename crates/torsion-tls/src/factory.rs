//! Factories that wrap every protocol they build in TLS, and the
//! `listen_ssl` / `connect_ssl` entry points.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use torsion_core::{
    Address, ClientFactory, Clock, ConnectOptions, Connector, Factory, Failure, ListeningPort,
    Protocol, Reactor,
};

use crate::config::{server_name, TlsClientConfig, TlsServerConfig};
use crate::error::TlsConfigError;
use crate::protocol::{OutcomeSink, TlsOptions, TlsProtocol, TlsSide};

/// Wraps the protocols of another factory in TLS (server or client side).
///
/// Put it on any listener or connector that carries a byte stream:
///
/// ```no_run
/// use std::rc::Rc;
/// use torsion_core::{factory_fn, Protocol, Reactor};
/// use torsion_tls::{TlsServerConfig, TlsWrappingFactory};
/// # struct Echo; impl Protocol for Echo { fn data_received(&mut self, _: &[u8]) {} }
/// let reactor = Reactor::new()?;
/// let config = TlsServerConfig::from_pem_files("cert.pem", "key.pem")?;
/// let tls = TlsWrappingFactory::server(factory_fn(|| Echo), config).with_clock(&reactor);
/// reactor.listen_tcp("127.0.0.1:0".parse()?, Rc::new(tls))?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TlsWrappingFactory<F: ?Sized> {
    inner: Rc<F>,
    side: TlsSide,
    options: TlsOptions,
    last: RefCell<Option<OutcomeSink>>,
}

impl<F: Factory + ?Sized> TlsWrappingFactory<F> {
    /// Server side: every connection is TLS with `config`.
    pub fn server(inner: Rc<F>, config: TlsServerConfig) -> Self {
        TlsWrappingFactory {
            inner,
            side: TlsSide::Server(config),
            options: TlsOptions::default(),
            last: RefCell::new(None),
        }
    }

    /// Client side: verifies the server as `server_name` (also sent as SNI).
    pub fn client(
        inner: Rc<F>,
        config: TlsClientConfig,
        server_name_: &str,
    ) -> Result<Self, TlsConfigError> {
        server_name(server_name_)?;
        Ok(TlsWrappingFactory {
            inner,
            side: TlsSide::client(config, server_name_),
            options: TlsOptions::default(),
            last: RefCell::new(None),
        })
    }

    /// Like [`Self::client`] for a name already checked.
    pub(crate) fn client_unchecked(inner: Rc<F>, config: TlsClientConfig, name: &str) -> Self {
        TlsWrappingFactory {
            inner,
            side: TlsSide::client(config, name),
            options: TlsOptions::default(),
            last: RefCell::new(None),
        }
    }

    /// Runs the handshake timeout on `clock` (normally the reactor).
    pub fn with_clock(mut self, clock: &(impl Clock + Clone + 'static)) -> Self {
        self.options.clock = Some(Rc::new(clock.clone()));
        self
    }

    /// Replaces the options (handshake timeout).
    pub fn with_options(mut self, options: TlsOptions) -> Self {
        self.options = options;
        self
    }
}

impl<F: Factory + ?Sized> Factory for TlsWrappingFactory<F> {
    fn build_protocol(&self, peer: &Address) -> Option<Box<dyn Protocol>> {
        let inner = self.inner.build_protocol(peer)?;
        let p = TlsProtocol::new(inner, self.side.clone(), self.options.clone());
        let sink: OutcomeSink = Rc::new(RefCell::new(None));
        p.set_outcome_sink(sink.clone());
        *self.last.borrow_mut() = Some(sink);
        Some(Box::new(p))
    }
    fn start_factory(&self) {
        torsion_core::protocol::factory_in_use(&*self.inner)
    }
    fn stop_factory(&self) {
        torsion_core::protocol::factory_released(&*self.inner)
    }
}

/// A client connection whose TLS handshake fails is reported to
/// `client_connection_failed` with the [`crate::TlsError`] (after the inner
/// protocol's `connection_lost` saw the same error); once the handshake has
/// completed, the end of the connection goes to `client_connection_lost`.
impl<F: ClientFactory + ?Sized> ClientFactory for TlsWrappingFactory<F> {
    fn started_connecting(&self, connector: &Connector) {
        self.inner.started_connecting(connector)
    }
    fn client_connection_failed(&self, connector: &Connector, reason: Failure) {
        self.inner.client_connection_failed(connector, reason)
    }
    fn client_connection_lost(&self, connector: &Connector, reason: Failure) {
        let outcome = self.last.borrow_mut().take();
        let outcome = outcome.and_then(|s| s.borrow_mut().take());
        match outcome {
            Some(Err(tls_failure)) => self.inner.client_connection_failed(connector, tls_failure),
            _ => self.inner.client_connection_lost(connector, reason),
        }
    }
}

/// Listens for TLS connections on `addr` (Twisted's `listenSSL`).
///
/// ```no_run
/// use torsion_core::{factory_fn, Protocol, Reactor};
/// use torsion_tls::{listen_ssl, TlsServerConfig};
/// # struct Echo; impl Protocol for Echo { fn data_received(&mut self, _: &[u8]) {} }
/// let reactor = Reactor::new()?;
/// let config = TlsServerConfig::from_pem_files("cert.pem", "key.pem")?;
/// let port = listen_ssl(&reactor, "127.0.0.1:8443".parse()?, factory_fn(|| Echo), config)?;
/// reactor.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn listen_ssl(
    reactor: &Reactor,
    addr: SocketAddr,
    factory: Rc<dyn Factory>,
    config: TlsServerConfig,
) -> std::io::Result<ListeningPort> {
    let tls = TlsWrappingFactory::server(factory, config).with_clock(reactor);
    reactor.listen_tcp(addr, Rc::new(tls))
}

/// Connects over TLS to `addr`, verifying the server as `server_name`
/// (Twisted's `connectSSL`). Certificate and handshake failures reach
/// `client_connection_failed` as a [`crate::TlsError`].
///
/// ```no_run
/// use torsion_core::{factory_fn, ConnectOptions, Protocol, Reactor};
/// use torsion_tls::{connect_ssl, TlsClientConfig};
/// # struct Hello; impl Protocol for Hello { fn data_received(&mut self, _: &[u8]) {} }
/// let reactor = Reactor::new()?;
/// let config = TlsClientConfig::platform()?;
/// let connector = connect_ssl(&reactor, "127.0.0.1:8443".parse()?, factory_fn(|| Hello),
///                             config, "example.org", ConnectOptions::default())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn connect_ssl(
    reactor: &Reactor,
    addr: SocketAddr,
    factory: Rc<dyn ClientFactory>,
    config: TlsClientConfig,
    server_name: &str,
    options: ConnectOptions,
) -> Result<Connector, TlsConfigError> {
    let tls = TlsWrappingFactory::client(factory, config, server_name)?.with_clock(reactor);
    Ok(reactor.connect_tcp(addr, Rc::new(tls), options))
}

/// Connects over TLS to `host:port`, resolving `host` and verifying the server as `host`.
pub fn connect_ssl_host(
    reactor: &Reactor,
    host: &str,
    port: u16,
    factory: Rc<dyn ClientFactory>,
    config: TlsClientConfig,
    options: ConnectOptions,
) -> Result<Connector, TlsConfigError> {
    let tls = TlsWrappingFactory::client(factory, config, host)?.with_clock(reactor);
    Ok(reactor.connect_tcp_host(host, port, Rc::new(tls), options))
}
