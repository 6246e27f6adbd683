//! Server and client TLS configuration: certificates and keys from PEM,
//! trust roots, SNI, ALPN, client certificates, session resumption.
//!
//! The types wrap `rustls` configurations (reachable with `rustls()` /
//! `from_rustls` for anything not covered here). Defaults: TLS 1.3
//! preferred, TLS 1.2 minimum, the aws-lc-rs provider, session resumption on
//! (a session cache and TLS 1.3 tickets on the server, a session cache on the
//! client).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use crate::error::TlsConfigError;

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::Pem {
            what: what.to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::NoCertificates(what.to_string()));
    }
    Ok(certs)
}

/// A certificate chain with its private key (what a server presents, or a client certificate).
///
/// ```no_run
/// use torsion_tls::CertificateKey;
/// let ck = CertificateKey::from_pem_files("cert.pem", "key.pem")?;
/// # Ok::<(), torsion_tls::TlsConfigError>(())
/// ```
#[derive(Clone)]
pub struct CertificateKey {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) private: Arc<PrivateKeyDer<'static>>,
}

impl fmt::Debug for CertificateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertificateKey({} certificates)", self.chain.len())
    }
}

impl CertificateKey {
    /// From PEM text: the certificate chain (leaf first) and the private key
    /// (PKCS#8, PKCS#1 or SEC1). A key that does not match the leaf is refused.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsConfigError> {
        let chain = certs_from_pem(chain_pem, "certificate PEM")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                TlsConfigError::NoPrivateKey("private key PEM".into())
            }
            e => TlsConfigError::Pem {
                what: "private key PEM".into(),
                message: e.to_string(),
            },
        })?;
        Self::from_der(chain, key)
    }

    /// From PEM files. `key` may be the same file as `chain` (Twisted's `certKey` default).
    pub fn from_pem_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsConfigError> {
        let (chain, key) = (chain.as_ref(), key.as_ref());
        let chain_pem = read_file(chain)?;
        let key_pem = read_file(key)?;
        let certs = certs_from_pem(&chain_pem, &chain.display().to_string())?;
        let k = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|_| TlsConfigError::NoPrivateKey(key.display().to_string()))?;
        Self::from_der(certs, k)
    }

    /// From DER values.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsConfigError> {
        if chain.is_empty() {
            return Err(TlsConfigError::NoCertificates("certificate chain".into()));
        }
        let ck = CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider())
            .map_err(|e| TlsConfigError::Key(e.to_string()))?;
        Ok(CertificateKey {
            key: Arc::new(ck),
            chain,
            private: Arc::new(key),
        })
    }

    /// Appends intermediate certificates (Twisted's `extraCertChain`).
    pub fn with_extra_chain_pem(self, pem: &[u8]) -> Result<Self, TlsConfigError> {
        let mut chain = self.chain.clone();
        chain.extend(certs_from_pem(pem, "extra certificate chain")?);
        Self::from_der(chain, self.private.clone_key())
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
}

/// A set of trusted root certificates.
///
/// ```no_run
/// use torsion_tls::TrustRoots;
/// let roots = TrustRoots::from_pem_file("ca.pem")?;
/// # Ok::<(), torsion_tls::TlsConfigError>(())
/// ```
#[derive(Clone)]
pub struct TrustRoots {
    pub(crate) store: RootCertStore,
}

impl fmt::Debug for TrustRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustRoots({} roots)", self.store.len())
    }
}

impl Default for TrustRoots {
    fn default() -> Self {
        TrustRoots {
            store: RootCertStore::empty(),
        }
    }
}

impl TrustRoots {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every certificate in the PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<Self, TlsConfigError> {
        let mut r = Self::new();
        r.add_pem(pem, "trust roots PEM")?;
        Ok(r)
    }

    /// Every certificate in a PEM file.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self, TlsConfigError> {
        let path = path.as_ref();
        let pem = read_file(path)?;
        let mut r = Self::new();
        r.add_pem(&pem, &path.display().to_string())?;
        Ok(r)
    }

    /// A PEM file, or every `*.pem`/`*.crt` file of a directory (Twisted's `trustRoots=DIR`).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, TlsConfigError> {
        let path = path.as_ref();
        if !path.is_dir() {
            return Self::from_pem_file(path);
        }
        let mut r = Self::new();
        let entries = std::fs::read_dir(path).map_err(|source| TlsConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "pem" || x == "crt" || x == "cer")
            })
            .collect();
        files.sort();
        for f in files {
            let pem = read_file(&f)?;
            r.add_pem(&pem, &f.display().to_string())?;
        }
        if r.store.is_empty() {
            return Err(TlsConfigError::NoCertificates(path.display().to_string()));
        }
        Ok(r)
    }

    fn add_pem(&mut self, pem: &[u8], what: &str) -> Result<(), TlsConfigError> {
        for c in certs_from_pem(pem, what)? {
            self.add_der(c)?;
        }
        Ok(())
    }

    /// Adds one DER certificate.
    pub fn add_der(&mut self, cert: CertificateDer<'static>) -> Result<(), TlsConfigError> {
        self.store
            .add(cert)
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))
    }

    /// Number of roots.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }
}

/// Picks the certificate by the SNI name the client sent; the default otherwise.
#[derive(Debug)]
struct SniResolver {
    by_name: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            let name = name.to_ascii_lowercase();
            if let Some(k) = self.by_name.get(&name) {
                return Some(k.clone());
            }
            // One wildcard label: "*.example.org" serves "a.example.org".
            if let Some((_, rest)) = name.split_once('.') {
                if let Some(k) = self.by_name.get(&format!("*.{rest}")) {
                    return Some(k.clone());
                }
            }
        }
        self.default.clone()
    }
}

/// Client-certificate policy of a server.
#[derive(Debug, Clone, Default)]
enum ClientAuth {
    #[default]
    Off,
    Optional(TrustRoots),
    Required(TrustRoots),
}

/// A server-side TLS configuration.
///
/// ```no_run
/// use torsion_tls::TlsServerConfig;
/// let config = TlsServerConfig::from_pem_files("cert.pem", "key.pem")?;
/// # Ok::<(), torsion_tls::TlsConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct TlsServerConfig {
    pub(crate) inner: Arc<rustls::ServerConfig>,
}

impl TlsServerConfig {
    /// A builder for SNI, ALPN and client certificates.
    pub fn builder() -> TlsServerConfigBuilder {
        TlsServerConfigBuilder::default()
    }

    /// One certificate chain and key from PEM files.
    pub fn from_pem_files(
        chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsConfigError> {
        Self::builder()
            .certificate(CertificateKey::from_pem_files(chain, key)?)
            .build()
    }

    /// Wraps a rustls configuration built elsewhere.
    pub fn from_rustls(config: Arc<rustls::ServerConfig>) -> Self {
        TlsServerConfig { inner: config }
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<rustls::ServerConfig> {
        &self.inner
    }
}

/// Builds a [`TlsServerConfig`].
///
/// ```no_run
/// use torsion_tls::{CertificateKey, TlsServerConfig, TrustRoots};
/// let config = TlsServerConfig::builder()
///     .certificate(CertificateKey::from_pem_files("default.pem", "default.key")?)
///     .sni_certificate("mail.example.org", CertificateKey::from_pem_files("mail.pem", "mail.key")?)
///     .alpn(&[b"h2", b"http/1.1"])
///     .require_client_certificates(TrustRoots::from_pem_file("clients-ca.pem")?)
///     .build()?;
/// # Ok::<(), torsion_tls::TlsConfigError>(())
/// ```
#[derive(Default, Debug)]
pub struct TlsServerConfigBuilder {
    default: Option<CertificateKey>,
    sni: Vec<(String, CertificateKey)>,
    alpn: Vec<Vec<u8>>,
    client_auth: ClientAuth,
    no_resumption: bool,
}

impl TlsServerConfigBuilder {
    /// The certificate presented when no SNI name matches (or none is sent).
    pub fn certificate(mut self, ck: CertificateKey) -> Self {
        self.default = Some(ck);
        self
    }

    /// A certificate for one server name (`*.example.org` matches one label).
    pub fn sni_certificate(mut self, name: &str, ck: CertificateKey) -> Self {
        self.sni.push((name.to_ascii_lowercase(), ck));
        self
    }

    /// ALPN protocols in order of preference.
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Ask for a client certificate; verify it against `roots` if one is sent.
    pub fn request_client_certificates(mut self, roots: TrustRoots) -> Self {
        self.client_auth = ClientAuth::Optional(roots);
        self
    }

    /// Refuse clients without a certificate issued under `roots`.
    pub fn require_client_certificates(mut self, roots: TrustRoots) -> Self {
        self.client_auth = ClientAuth::Required(roots);
        self
    }

    /// Turns session resumption (cache and tickets) off.
    pub fn without_resumption(mut self) -> Self {
        self.no_resumption = true;
        self
    }

    /// Builds the configuration.
    pub fn build(self) -> Result<TlsServerConfig, TlsConfigError> {
        if self.default.is_none() && self.sni.is_empty() {
            return Err(TlsConfigError::NoCertificate);
        }
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
        let required = matches!(self.client_auth, ClientAuth::Required(_));
        let builder = match self.client_auth {
            ClientAuth::Off => builder.with_no_client_auth(),
            ClientAuth::Optional(roots) | ClientAuth::Required(roots) => {
                let mut v = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots.store),
                    provider.clone(),
                );
                if !required {
                    v = v.allow_unauthenticated();
                }
                let v = v
                    .build()
                    .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
                builder.with_client_cert_verifier(v)
            }
        };
        let resolver = SniResolver {
            by_name: self.sni.into_iter().map(|(n, ck)| (n, ck.key)).collect(),
            default: self.default.map(|ck| ck.key),
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = self.alpn;
        // The server's (strongest-first) suite order wins over the client's.
        config.ignore_client_order = true;
        if self.no_resumption {
            config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
            config.send_tls13_tickets = 0;
        } else {
            config.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
            config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
                .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
        }
        Ok(TlsServerConfig {
            inner: Arc::new(config),
        })
    }
}

/// A client-side TLS configuration.
///
/// ```no_run
/// use torsion_tls::TlsClientConfig;
/// // The operating system's trust roots and verifier:
/// let config = TlsClientConfig::platform()?;
/// # Ok::<(), torsion_tls::TlsConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct TlsClientConfig {
    pub(crate) inner: Arc<rustls::ClientConfig>,
}

impl TlsClientConfig {
    /// A builder for roots, client certificate and ALPN.
    pub fn builder() -> TlsClientConfigBuilder {
        TlsClientConfigBuilder::default()
    }

    /// Verifies servers with the platform's verifier and roots.
    pub fn platform() -> Result<Self, TlsConfigError> {
        Self::builder().build()
    }

    /// Verifies servers against `roots` only.
    pub fn with_roots(roots: TrustRoots) -> Result<Self, TlsConfigError> {
        Self::builder().trust_roots(roots).build()
    }

    /// Wraps a rustls configuration built elsewhere.
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> Self {
        TlsClientConfig { inner: config }
    }

    /// The rustls configuration.
    pub fn rustls(&self) -> &Arc<rustls::ClientConfig> {
        &self.inner
    }
}

/// Builds a [`TlsClientConfig`].
///
/// ```no_run
/// use torsion_tls::{CertificateKey, TlsClientConfig, TrustRoots};
/// let config = TlsClientConfig::builder()
///     .trust_roots(TrustRoots::from_pem_file("ca.pem")?)
///     .client_certificate(CertificateKey::from_pem_files("me.pem", "me.key")?)
///     .alpn(&[b"imap"])
///     .build()?;
/// # Ok::<(), torsion_tls::TlsConfigError>(())
/// ```
#[derive(Default, Debug)]
pub struct TlsClientConfigBuilder {
    roots: Option<TrustRoots>,
    cert: Option<CertificateKey>,
    alpn: Vec<Vec<u8>>,
}

impl TlsClientConfigBuilder {
    /// Trust only these roots (instead of the platform verifier).
    pub fn trust_roots(mut self, roots: TrustRoots) -> Self {
        self.roots = Some(roots);
        self
    }

    /// Present this certificate when the server asks for one.
    pub fn client_certificate(mut self, ck: CertificateKey) -> Self {
        self.cert = Some(ck);
        self
    }

    /// ALPN protocols in order of preference.
    pub fn alpn(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// Builds the configuration.
    pub fn build(self) -> Result<TlsClientConfig, TlsConfigError> {
        use rustls_platform_verifier::BuilderVerifierExt;
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
        let builder = match self.roots {
            Some(roots) => builder.with_root_certificates(roots.store),
            None => builder
                .with_platform_verifier()
                .map_err(|e| TlsConfigError::PlatformVerifier(e.to_string()))?,
        };
        let mut config = match self.cert {
            Some(ck) => builder
                .with_client_auth_cert(ck.chain.clone(), ck.private.clone_key())
                .map_err(|e| TlsConfigError::Key(e.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = self.alpn;
        Ok(TlsClientConfig {
            inner: Arc::new(config),
        })
    }
}

/// Parses a server name (DNS name or IP address) for SNI and verification.
pub(crate) fn server_name(name: &str) -> Result<ServerName<'static>, TlsConfigError> {
    ServerName::try_from(name.to_string())
        .map_err(|_| TlsConfigError::InvalidServerName(name.to_string()))
}
