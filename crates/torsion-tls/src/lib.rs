//! # torsion-tls
//!
//! TLS for Torsion on rustls (aws-lc-rs provider), built the way Twisted
//! builds it: TLS is a *protocol wrapper*. [`TlsProtocol`] sits on any stream
//! transport (TCP, Unix socket, pipe, in-memory loopback) and gives the
//! protocol it wraps a transport whose writes are encrypted. On top of it:
//! [`listen_ssl`] / [`connect_ssl`], [`TlsWrappingFactory`],
//! [`StartTlsProtocol`] for STARTTLS, SNI, ALPN, client certificates, and TLS
//! facts on any transport through [`TlsTransportExt`].
//!
//! ```no_run
//! use torsion_core::{factory_fn, Protocol, Reactor, Transport};
//! use torsion_tls::{listen_ssl, TlsServerConfig, TlsTransportExt};
//!
//! #[derive(Default)]
//! struct Echo(Option<Transport>);
//! impl Protocol for Echo {
//!     fn connection_made(&mut self, t: Transport) { self.0 = Some(t); }
//!     fn data_received(&mut self, data: &[u8]) {
//!         if let Some(t) = &self.0 {
//!             // Some(Tls13) once the handshake is done
//!             let _version = t.tls_version();
//!             t.write(data);
//!         }
//!     }
//! }
//!
//! let reactor = Reactor::new()?;
//! let config = TlsServerConfig::from_pem_files("cert.pem", "key.pem")?;
//! listen_ssl(&reactor, "127.0.0.1:8443".parse()?, factory_fn(Echo::default), config)?;
//! reactor.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod adapter;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod ext;
pub mod factory;
pub mod plugin;
pub mod protocol;

pub use config::{
    CertificateKey, TlsClientConfig, TlsClientConfigBuilder, TlsServerConfig,
    TlsServerConfigBuilder, TrustRoots,
};
pub use endpoint::{
    PreparedTlsClientEndpoint, TlsClientEndpoint, TlsEndpointError, TlsListenError,
    TlsServerEndpoint,
};
pub use error::{CertificateError, StartTlsError, TlsConfigError, TlsError};
pub use ext::{HandshakeInfo, TlsTransportExt, TlsVersion};
pub use factory::{connect_ssl, connect_ssl_host, listen_ssl, TlsWrappingFactory};
pub use plugin::{register_endpoints, TlsEndpointParser};
pub use protocol::{StartTlsProtocol, TlsOptions, TlsProtocol, TlsSide, DEFAULT_HANDSHAKE_TIMEOUT};
/// The certificate type of queries and configuration (from `rustls-pki-types`).
pub use rustls::pki_types::CertificateDer;
