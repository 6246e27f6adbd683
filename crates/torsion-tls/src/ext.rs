//! TLS facts and `start_tls` on any [`Transport`].
//!
//! [`TlsTransportExt`] is implemented for `torsion_core::Transport`. On a TLS
//! transport the queries answer; on a plain one (TCP, Unix, memory, or a
//! [`crate::StartTlsProtocol`] that has not switched yet) they return a
//! [`NotSupportedError`] saying it is not a TLS transport.

use std::rc::Rc;

use rustls::pki_types::CertificateDer;
use torsion_core::{Deferred, NotSupportedError, Transport};

use crate::config::{TlsClientConfig, TlsServerConfig};
use crate::error::StartTlsError;
use crate::protocol::{TlsShared, TlsSide};

/// The negotiated protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    /// TLS 1.2.
    Tls12,
    /// TLS 1.3.
    Tls13,
}

/// What a completed handshake settled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HandshakeInfo {
    /// The protocol version.
    pub version: Option<TlsVersion>,
    /// The cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher_suite: Option<String>,
    /// The ALPN protocol agreed on, if any.
    pub alpn: Option<Vec<u8>>,
    /// The peer's certificate chain, leaf first (empty when it sent none).
    pub peer_certificates: Vec<CertificateDer<'static>>,
    /// Server side: the SNI name the client asked for.
    pub server_name: Option<String>,
    /// True when the session was resumed rather than fully negotiated.
    pub resumed: bool,
}

fn not_tls(what: &'static str, t: &Transport) -> NotSupportedError {
    NotSupportedError {
        what,
        transport: t.kind(),
    }
}

/// TLS queries and `start_tls` on a [`Transport`].
///
/// Values are `None` until the handshake has completed.
///
/// ```
/// use torsion_core::testing::StringTransport;
/// use torsion_tls::TlsTransportExt;
/// let plain = StringTransport::new().transport();
/// let err = plain.tls_version().unwrap_err();
/// assert!(err.to_string().contains("not a TLS transport"));
/// ```
pub trait TlsTransportExt {
    /// The peer's leaf certificate (DER), if it sent one.
    fn peer_certificate(&self) -> Result<Option<CertificateDer<'static>>, NotSupportedError>;
    /// The peer's whole certificate chain, leaf first.
    fn peer_certificate_chain(&self) -> Result<Vec<CertificateDer<'static>>, NotSupportedError>;
    /// The ALPN protocol agreed on.
    fn negotiated_protocol(&self) -> Result<Option<Vec<u8>>, NotSupportedError>;
    /// The protocol version.
    fn tls_version(&self) -> Result<Option<TlsVersion>, NotSupportedError>;
    /// The cipher suite's IANA name.
    fn cipher_suite(&self) -> Result<Option<String>, NotSupportedError>;
    /// Everything the handshake settled, once it completed.
    fn handshake_info(&self) -> Result<Option<HandshakeInfo>, NotSupportedError>;
    /// Fires with the handshake's outcome: [`HandshakeInfo`], or the
    /// [`crate::TlsError`] that ended it.
    fn when_handshake_done(&self) -> Result<Deferred<HandshakeInfo>, NotSupportedError>;
    /// Switches a [`crate::StartTlsProtocol`] connection to TLS as the server.
    /// `leftover`: bytes received after the switch point that the protocol
    /// has not processed (read as TLS, never as plaintext).
    fn start_tls_server(
        &self,
        config: TlsServerConfig,
        leftover: &[u8],
    ) -> Result<(), StartTlsError>;
    /// Switches to TLS as the client, verifying `server_name`.
    fn start_tls_client(
        &self,
        config: TlsClientConfig,
        server_name: &str,
        leftover: &[u8],
    ) -> Result<(), StartTlsError>;
}

trait Lookup {
    fn tls(&self, what: &'static str) -> Result<Rc<TlsShared>, NotSupportedError>;
    fn switchable(&self) -> Result<Rc<TlsShared>, StartTlsError>;
}

impl Lookup for Transport {
    fn tls(&self, what: &'static str) -> Result<Rc<TlsShared>, NotSupportedError> {
        match self.extension::<TlsShared>(what) {
            Ok(s) if s.is_tls() => Ok(s),
            _ => Err(not_tls(what, self)),
        }
    }
    fn switchable(&self) -> Result<Rc<TlsShared>, StartTlsError> {
        self.extension::<TlsShared>("start_tls")
            .map_err(|_| StartTlsError::NotSwitchable)
    }
}

impl TlsTransportExt for Transport {
    fn peer_certificate(&self) -> Result<Option<CertificateDer<'static>>, NotSupportedError> {
        let s = self.tls("TLS peer certificate (not a TLS transport)")?;
        Ok(s.handshake_info()
            .and_then(|i| i.peer_certificates.into_iter().next()))
    }

    fn peer_certificate_chain(&self) -> Result<Vec<CertificateDer<'static>>, NotSupportedError> {
        let s = self.tls("TLS peer certificate chain (not a TLS transport)")?;
        Ok(s.handshake_info()
            .map(|i| i.peer_certificates)
            .unwrap_or_default())
    }

    fn negotiated_protocol(&self) -> Result<Option<Vec<u8>>, NotSupportedError> {
        let s = self.tls("ALPN negotiated protocol (not a TLS transport)")?;
        Ok(s.handshake_info().and_then(|i| i.alpn))
    }

    fn tls_version(&self) -> Result<Option<TlsVersion>, NotSupportedError> {
        let s = self.tls("TLS version (not a TLS transport)")?;
        Ok(s.handshake_info().and_then(|i| i.version))
    }

    fn cipher_suite(&self) -> Result<Option<String>, NotSupportedError> {
        let s = self.tls("TLS cipher suite (not a TLS transport)")?;
        Ok(s.handshake_info().and_then(|i| i.cipher_suite))
    }

    fn handshake_info(&self) -> Result<Option<HandshakeInfo>, NotSupportedError> {
        let s = self.tls("TLS handshake information (not a TLS transport)")?;
        Ok(s.handshake_info())
    }

    fn when_handshake_done(&self) -> Result<Deferred<HandshakeInfo>, NotSupportedError> {
        let s = self.tls("TLS handshake (not a TLS transport)")?;
        Ok(s.when_handshake_done())
    }

    fn start_tls_server(
        &self,
        config: TlsServerConfig,
        leftover: &[u8],
    ) -> Result<(), StartTlsError> {
        self.switchable()?
            .start_tls(TlsSide::Server(config), leftover)
    }

    fn start_tls_client(
        &self,
        config: TlsClientConfig,
        server_name: &str,
        leftover: &[u8],
    ) -> Result<(), StartTlsError> {
        crate::config::server_name(server_name).map_err(|e| StartTlsError::Setup(e.to_string()))?;
        self.switchable()?
            .start_tls(TlsSide::client(config, server_name), leftover)
    }
}
