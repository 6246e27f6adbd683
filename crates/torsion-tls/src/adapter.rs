//! The one place that drives a rustls connection's I/O.
//!
//! rustls 0.24 replaces the `read_tls`/`process_new_packets`/`reader`/
//! `write_tls` API; everything else in this crate speaks to [`Session`], so
//! the upgrade touches only this file.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{AlertDescription, ClientConfig, Connection, ServerConfig};

use crate::error::{CertificateError, TlsError};
use crate::ext::TlsVersion;

/// Ciphertext taken per feeding step at most (about one TLS record).
const MAX_FEED: usize = 16 * 1024;

/// What one feeding step did.
pub(crate) enum Fed {
    /// This many ciphertext bytes were taken (more than zero).
    Took(usize),
    /// Nothing taken: the plaintext buffer is full and must be drained first.
    Full,
    /// Nothing taken: the peer closed the TLS stream (close_notify).
    Closed,
}

/// What reading plaintext gave.
pub(crate) enum Plain {
    /// This many bytes were copied out.
    Data(usize),
    /// Nothing buffered right now.
    Empty,
    /// The peer closed cleanly and everything was read.
    Eof,
}

/// One TLS session, client or server side.
pub(crate) struct Session {
    conn: Connection,
    saw_record: bool,
}

impl Session {
    pub(crate) fn client(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Self, TlsError> {
        let conn = rustls::ClientConnection::new(config, name).map_err(|e| map_error(e, false))?;
        Ok(Session {
            conn: conn.into(),
            saw_record: false,
        })
    }

    pub(crate) fn server(config: Arc<ServerConfig>) -> Result<Self, TlsError> {
        let conn = rustls::ServerConnection::new(config).map_err(|e| map_error(e, false))?;
        Ok(Session {
            conn: conn.into(),
            saw_record: false,
        })
    }

    /// Hands rustls ciphertext and processes the records it completes.
    pub(crate) fn feed(&mut self, input: &[u8]) -> Result<Fed, TlsError> {
        if !self.saw_record && !input.is_empty() {
            self.saw_record = true;
            if let Some(e) = not_tls(input) {
                return Err(e);
            }
        }
        let mut rd: &[u8] = input;
        // rustls takes at most 4 KiB per `read_tls`; take up to a record's
        // worth before processing, so records are decrypted in one pass.
        let mut n = 0;
        while !rd.is_empty() && n < MAX_FEED {
            match self.conn.read_tls(&mut rd as &mut dyn Read) {
                Ok(0) if n == 0 => return Ok(Fed::Closed),
                Ok(0) => break,
                Ok(k) => n += k,
                // Its buffer is full: process what it has first.
                Err(_) if n > 0 => break,
                // rustls' back-pressure signal: drain `reader()` first.
                Err(e) if e.kind() == io::ErrorKind::Other && !self.conn.is_handshaking() => {
                    return Ok(Fed::Full)
                }
                Err(e) => return Err(TlsError::Protocol(e.to_string())),
            }
        }
        self.conn
            .process_new_packets()
            .map_err(|e| map_error(e, self.conn.is_handshaking()))?;
        Ok(Fed::Took(n))
    }

    /// Copies decrypted bytes out.
    pub(crate) fn read_plaintext(&mut self, buf: &mut [u8]) -> Plain {
        match self.conn.reader().read(buf) {
            Ok(0) => Plain::Eof,
            Ok(n) => Plain::Data(n),
            Err(_) => Plain::Empty,
        }
    }

    /// Encrypts as much of `data` as rustls buffers; returns how much it took.
    pub(crate) fn write_plaintext(&mut self, data: &[u8]) -> usize {
        self.conn.writer().write(data).unwrap_or(0)
    }

    /// Hands every pending TLS record to `out` (record by record, no staging copy).
    pub(crate) fn take_tls(&mut self, out: &mut dyn Write) {
        while self.conn.wants_write() {
            match self.conn.write_tls(out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }

    pub(crate) fn send_close_notify(&mut self) {
        self.conn.send_close_notify();
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    pub(crate) fn peer_certificates(&self) -> Vec<CertificateDer<'static>> {
        self.conn
            .peer_certificates()
            .map(|c| c.to_vec())
            .unwrap_or_default()
    }

    pub(crate) fn alpn(&self) -> Option<Vec<u8>> {
        self.conn.alpn_protocol().map(|p| p.to_vec())
    }

    pub(crate) fn version(&self) -> Option<TlsVersion> {
        match self.conn.protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => Some(TlsVersion::Tls13),
            rustls::ProtocolVersion::TLSv1_2 => Some(TlsVersion::Tls12),
            _ => None,
        }
    }

    pub(crate) fn cipher_suite(&self) -> Option<String> {
        self.conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
    }

    pub(crate) fn server_name(&self) -> Option<String> {
        match &self.conn {
            Connection::Server(s) => s.server_name().map(str::to_string),
            Connection::Client(_) => None,
        }
    }

    pub(crate) fn resumed(&self) -> Option<bool> {
        self.conn
            .handshake_kind()
            .map(|k| k == rustls::HandshakeKind::Resumed)
    }
}

/// Recognises a plaintext request where a TLS record should start. A TLS
/// record begins with a content type byte 20..=24; letters mean text.
fn not_tls(input: &[u8]) -> Option<TlsError> {
    let head = &input[..input.len().min(16)];
    if head.len() >= 3 && head[..3].iter().all(|b| b.is_ascii_alphabetic()) {
        let shown: String = head
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        return Some(TlsError::NotTls(shown));
    }
    None
}

fn map_cert_error(e: rustls::CertificateError) -> CertificateError {
    use rustls::CertificateError as C;
    match e {
        C::NotValidForName => CertificateError::WrongHostname {
            expected: String::new(),
        },
        C::NotValidForNameContext { expected, .. } => CertificateError::WrongHostname {
            expected: expected.to_str().into_owned(),
        },
        C::Expired | C::ExpiredContext { .. } => CertificateError::Expired,
        C::NotValidYet | C::NotValidYetContext { .. } => CertificateError::NotYetValid,
        C::UnknownIssuer => CertificateError::UnknownIssuer,
        C::Revoked => CertificateError::Revoked,
        C::BadSignature => CertificateError::BadSignature,
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => CertificateError::WrongPurpose,
        other => CertificateError::Other(format!("{other:?}")),
    }
}

/// Maps a rustls error to ours.
pub(crate) fn map_error(e: rustls::Error, handshaking: bool) -> TlsError {
    use rustls::Error as E;
    match e {
        E::InvalidCertificate(c) => TlsError::Certificate(map_cert_error(c)),
        E::NoCertificatesPresented => {
            TlsError::Certificate(CertificateError::MissingClientCertificate)
        }
        E::AlertReceived(a) => match a {
            AlertDescription::CertificateRequired => {
                TlsError::PeerRejectedCertificate(CertificateError::MissingClientCertificate)
            }
            AlertDescription::UnknownCA => {
                TlsError::PeerRejectedCertificate(CertificateError::UnknownIssuer)
            }
            AlertDescription::CertificateExpired => {
                TlsError::PeerRejectedCertificate(CertificateError::Expired)
            }
            AlertDescription::BadCertificate => {
                TlsError::PeerRejectedCertificate(CertificateError::Other("bad certificate".into()))
            }
            other => TlsError::AlertReceived(format!("{other:?}")),
        },
        E::PeerIncompatible(p) => TlsError::Incompatible(format!("{p:?}")),
        E::NoApplicationProtocol => TlsError::Incompatible("no ALPN protocol in common".into()),
        E::InvalidMessage(m) => TlsError::Protocol(format!("invalid message: {m:?}")),
        E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            TlsError::Protocol(format!("{e}"))
        }
        E::PeerMisbehaved(m) => TlsError::Protocol(format!("peer misbehaved: {m:?}")),
        E::DecryptError => TlsError::Protocol("record failed to decrypt".into()),
        other if handshaking => TlsError::Other(format!("during handshake: {other}")),
        other => TlsError::Other(other.to_string()),
    }
}
