//! Typed errors: what a TLS connection fails with, and what building a
//! configuration fails with.
//!
//! A failed connection hands its protocol a [`torsion_core::Failure`] holding
//! a [`TlsError`]; test for the kind with `failure.downcast_ref::<TlsError>()`.

use std::path::PathBuf;
use std::time::Duration;

/// Why a certificate was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertificateError {
    /// The certificate does not name the host we connected to.
    #[error("the certificate is not valid for the name {expected:?}")]
    WrongHostname {
        /// The name we expected (empty when rustls did not say).
        expected: String,
    },
    /// The certificate's validity period has ended.
    #[error("the certificate has expired")]
    Expired,
    /// The certificate's validity period has not begun.
    #[error("the certificate is not valid yet")]
    NotYetValid,
    /// The chain does not lead to a trusted root.
    #[error("the certificate was issued by an unknown certificate authority")]
    UnknownIssuer,
    /// The certificate was revoked.
    #[error("the certificate was revoked")]
    Revoked,
    /// A signature in the chain does not verify.
    #[error("a certificate signature is invalid")]
    BadSignature,
    /// The certificate may not be used for this purpose (server vs client auth).
    #[error("the certificate may not be used for this purpose")]
    WrongPurpose,
    /// The server requires a client certificate and none was presented.
    #[error("a client certificate is required and none was presented")]
    MissingClientCertificate,
    /// Another reason, as rustls describes it.
    #[error("the certificate is invalid: {0}")]
    Other(String),
}

/// Why a TLS connection failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// We rejected the peer's certificate (or the lack of one).
    #[error("certificate verification failed: {0}")]
    Certificate(CertificateError),
    /// The peer rejected our certificate (or its absence) with an alert.
    #[error("the peer rejected our certificate: {0}")]
    PeerRejectedCertificate(CertificateError),
    /// The peer sent a fatal TLS alert.
    #[error("the peer sent a TLS alert: {0}")]
    AlertReceived(String),
    /// The handshake did not complete in time.
    #[error("the TLS handshake did not complete within {0:?}")]
    HandshakeTimeout(Duration),
    /// The peer sent something that is not TLS before the handshake finished
    /// (for example a plaintext HTTP request on a TLS port).
    #[error("the peer did not speak TLS (first bytes: {0:?})")]
    NotTls(String),
    /// The peer broke the TLS protocol: garbage, bad or truncated records, unexpected messages.
    #[error("TLS protocol error: {0}")]
    Protocol(String),
    /// No protocol version, cipher suite or ALPN protocol in common.
    #[error("TLS negotiation failed: {0}")]
    Incompatible(String),
    /// The connection closed before the handshake completed.
    #[error("the connection closed during the TLS handshake")]
    ClosedDuringHandshake,
    /// The connection closed without a TLS close_notify: the data may be truncated.
    #[error("the connection closed without a TLS close_notify (possible truncation)")]
    Truncated,
    /// Another rustls error.
    #[error("TLS error: {0}")]
    Other(String),
}

/// Why `start_tls` was refused.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StartTlsError {
    /// TLS is already running on this connection.
    #[error("TLS was already started on this connection")]
    AlreadyStarted,
    /// The transport is not a [`crate::StartTlsProtocol`] wrapper (or is closed).
    #[error("this transport cannot switch to TLS (wrap the protocol in StartTlsProtocol)")]
    NotSwitchable,
    /// The connection is closed or closing.
    #[error("the connection is closed")]
    Closed,
    /// The TLS session could not be created.
    #[error("could not start TLS: {0}")]
    Setup(String),
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConfigError {
    /// A file could not be read.
    #[error("could not read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM input held no certificate.
    #[error("no certificate found in {0}")]
    NoCertificates(String),
    /// A PEM input held no private key.
    #[error("no private key found in {0}")]
    NoPrivateKey(String),
    /// The PEM text is malformed.
    #[error("malformed PEM in {what}: {message}")]
    Pem {
        /// Where.
        what: String,
        /// What is wrong.
        message: String,
    },
    /// The private key cannot be used (unsupported type, or does not match the certificate).
    #[error("unusable private key: {0}")]
    Key(String),
    /// The server has no certificate to present.
    #[error("no server certificate configured")]
    NoCertificate,
    /// A server name is not a valid DNS name or IP address.
    #[error("invalid server name {0:?}")]
    InvalidServerName(String),
    /// The platform certificate verifier could not be set up.
    #[error("platform certificate verifier unavailable: {0}")]
    PlatformVerifier(String),
    /// rustls refused the configuration.
    #[error("invalid TLS configuration: {0}")]
    Rustls(String),
}
