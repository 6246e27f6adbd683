//! The TLS forms of Twisted's endpoint strings, parsed into typed values.
//!
//! - server: `ssl:PORT:privateKey=key.pem[:certKey=cert.pem][:extraCertChain=chain.pem][:caCerts=ca.pem][:interface=ADDR][:backlog=N]`
//!   (`certKey` defaults to the `privateKey` file, as in Twisted; `caCerts`
//!   makes client certificates required and verified against that CA file)
//! - client: `tls:host=H:port=P[:trustRoots=DIR|FILE][:certificate=cert.pem][:privateKey=key.pem][:timeout=S][:bindAddress=ADDR]`
//!   (also `tls:H:P`; without `trustRoots` the platform verifier is used)
//!
//! `\:` escapes a colon inside a value. The functions work on a whole string
//! ([`TlsServerEndpoint::parse`]) or on parts already split by a generic
//! endpoint parser ([`TlsServerEndpoint::from_parts`]).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use torsion_core::{
    ClientFactory, ConnectOptions, Connector, Factory, ListeningPort, Reactor, TcpListenOptions,
};

use crate::config::{CertificateKey, TlsClientConfig, TlsServerConfig, TrustRoots};
use crate::error::TlsConfigError;
use crate::factory::TlsWrappingFactory;

/// What is wrong with a TLS endpoint string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TlsEndpointError {
    /// The string does not start with the expected scheme.
    #[error("expected an endpoint starting with {expected:?}, got {got:?}")]
    WrongScheme {
        /// Accepted schemes.
        expected: &'static str,
        /// What was found.
        got: String,
    },
    /// A required option is missing.
    #[error("missing option {0:?}")]
    Missing(&'static str),
    /// An option this endpoint does not know.
    #[error("unknown option {0:?}")]
    UnknownOption(String),
    /// An option was given twice.
    #[error("option {0:?} given twice")]
    Duplicate(String),
    /// Too many positional arguments.
    #[error("unexpected argument {0:?}")]
    UnexpectedArgument(String),
    /// A value that does not parse.
    #[error("invalid value {value:?} for {key}")]
    InvalidValue {
        /// The option.
        key: &'static str,
        /// The value given.
        value: String,
    },
    /// A trailing backslash.
    #[error("dangling escape at the end of the endpoint string")]
    DanglingEscape,
}

/// Splits `a:b\:c:k=v` into `["a", "b:c", "k=v"]`, honouring `\` escapes.
pub fn split_endpoint(s: &str) -> Result<Vec<String>, TlsEndpointError> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => parts.last_mut().map(|p| p.push(n)).unwrap_or(()),
                None => return Err(TlsEndpointError::DanglingEscape),
            },
            ':' => parts.push(String::new()),
            c => parts.last_mut().map(|p| p.push(c)).unwrap_or(()),
        }
    }
    Ok(parts)
}

/// Separates positional arguments from `key=value` options.
/// Splits an `ssl:`/`tls:` string into positional arguments and options.
/// Both schemes are accepted on either side, as in Twisted.
fn split_tls(s: &str, expected: &'static str) -> Result<Split, TlsEndpointError> {
    let parts = split_endpoint(s)?;
    let scheme = parts.first().cloned().unwrap_or_default();
    if scheme != "ssl" && scheme != "tls" {
        return Err(TlsEndpointError::WrongScheme {
            expected,
            got: scheme,
        });
    }
    Ok(classify(&parts[1..]))
}

/// A value given either as the next positional argument or as `key=value`
/// (giving both is an error).
fn positional_or_key<'a>(
    positional: &mut impl Iterator<Item = &'a String>,
    opts: &[(&'static str, String)],
    key: &'static str,
) -> Result<Option<String>, TlsEndpointError> {
    match (positional.next(), get(opts, key)) {
        (Some(_), Some(_)) => Err(TlsEndpointError::Duplicate(key.into())),
        (Some(p), None) => Ok(Some(p.clone())),
        (None, v) => Ok(v),
    }
}

/// Positional arguments and `key=value` options of an endpoint string.
type Split = (Vec<String>, Vec<(String, String)>);

fn classify(parts: &[String]) -> Split {
    let mut pos = Vec::new();
    let mut kw = Vec::new();
    for p in parts {
        match p.split_once('=') {
            Some((k, v)) => kw.push((k.to_string(), v.to_string())),
            None => pos.push(p.clone()),
        }
    }
    (pos, kw)
}

fn take_once(
    kw: &[(String, String)],
    known: &[&'static str],
) -> Result<Vec<(&'static str, String)>, TlsEndpointError> {
    let mut out: Vec<(&'static str, String)> = Vec::new();
    for (k, v) in kw {
        let Some(name) = known.iter().find(|n| **n == k.as_str()) else {
            return Err(TlsEndpointError::UnknownOption(k.clone()));
        };
        if out.iter().any(|(n, _)| n == name) {
            return Err(TlsEndpointError::Duplicate(k.clone()));
        }
        out.push((name, v.clone()));
    }
    Ok(out)
}

fn get(opts: &[(&'static str, String)], key: &str) -> Option<String> {
    opts.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
}

fn parse_port(key: &'static str, v: &str) -> Result<u16, TlsEndpointError> {
    v.parse().map_err(|_| TlsEndpointError::InvalidValue {
        key,
        value: v.to_string(),
    })
}

/// A parsed `ssl:` server endpoint.
///
/// ```
/// use torsion_tls::TlsServerEndpoint;
/// let e = TlsServerEndpoint::parse("ssl:8443:privateKey=key.pem:certKey=cert.pem:interface=127.0.0.1")?;
/// assert_eq!(e.port, 8443);
/// assert_eq!(e.cert_key.to_str(), Some("cert.pem"));
/// # Ok::<(), torsion_tls::TlsEndpointError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsServerEndpoint {
    /// The TCP port (0 picks one).
    pub port: u16,
    /// The address to bind (default 0.0.0.0).
    pub interface: IpAddr,
    /// Listen backlog.
    pub backlog: Option<i32>,
    /// PEM file with the private key.
    pub private_key: PathBuf,
    /// PEM file with the certificate (chain), leaf first; defaults to `private_key`.
    pub cert_key: PathBuf,
    /// PEM file with intermediate certificates appended to the chain.
    pub extra_cert_chain: Option<PathBuf>,
    /// PEM file of CAs: clients must present a certificate issued under one.
    pub ca_certs: Option<PathBuf>,
}

const SERVER_OPTIONS: &[&str] = &[
    "port",
    "privateKey",
    "certKey",
    "extraCertChain",
    "caCerts",
    "interface",
    "backlog",
    "sslmethod",
    "dhParameters",
];

impl TlsServerEndpoint {
    /// Parses `ssl:PORT:privateKey=…[:certKey=…]…`.
    pub fn parse(s: &str) -> Result<Self, TlsEndpointError> {
        let (pos, kw) = split_tls(s, "ssl:")?;
        Self::from_parts(&pos, &kw)
    }

    /// From positional arguments and `key=value` options (after the scheme).
    pub fn from_parts(
        positional: &[String],
        options: &[(String, String)],
    ) -> Result<Self, TlsEndpointError> {
        let opts = take_once(options, SERVER_OPTIONS)?;
        let mut pos = positional.iter();
        let port_s =
            positional_or_key(&mut pos, &opts, "port")?.ok_or(TlsEndpointError::Missing("port"))?;
        if let Some(extra) = pos.next() {
            return Err(TlsEndpointError::UnexpectedArgument(extra.clone()));
        }
        let port = parse_port("port", &port_s)?;
        let private_key = get(&opts, "privateKey")
            .map(PathBuf::from)
            .ok_or(TlsEndpointError::Missing("privateKey"))?;
        let cert_key = get(&opts, "certKey")
            .map(PathBuf::from)
            .unwrap_or_else(|| private_key.clone());
        let interface = match get(&opts, "interface") {
            Some(i) => i.parse().map_err(|_| TlsEndpointError::InvalidValue {
                key: "interface",
                value: i,
            })?,
            None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        };
        let backlog = match get(&opts, "backlog") {
            Some(b) => Some(b.parse().map_err(|_| TlsEndpointError::InvalidValue {
                key: "backlog",
                value: b,
            })?),
            None => None,
        };
        Ok(TlsServerEndpoint {
            port,
            interface,
            backlog,
            private_key,
            cert_key,
            extra_cert_chain: get(&opts, "extraCertChain").map(PathBuf::from),
            ca_certs: get(&opts, "caCerts").map(PathBuf::from),
        })
    }

    /// The socket address to bind.
    pub fn address(&self) -> SocketAddr {
        SocketAddr::new(self.interface, self.port)
    }

    /// Loads the files into a server configuration.
    pub fn server_config(&self) -> Result<TlsServerConfig, TlsConfigError> {
        let mut ck = CertificateKey::from_pem_files(&self.cert_key, &self.private_key)?;
        if let Some(extra) = &self.extra_cert_chain {
            let pem = std::fs::read(extra).map_err(|source| TlsConfigError::Io {
                path: extra.clone(),
                source,
            })?;
            ck = ck.with_extra_chain_pem(&pem)?;
        }
        let mut b = TlsServerConfig::builder().certificate(ck);
        if let Some(ca) = &self.ca_certs {
            b = b.require_client_certificates(TrustRoots::from_path(ca)?);
        }
        b.build()
    }

    /// Loads the configuration and listens.
    pub fn listen(
        &self,
        reactor: &Reactor,
        factory: Rc<dyn Factory>,
    ) -> Result<ListeningPort, TlsListenError> {
        let config = self.server_config()?;
        let tls = TlsWrappingFactory::server(factory, config).with_clock(reactor);
        let mut opts = TcpListenOptions::default();
        if let Some(b) = self.backlog {
            opts.backlog = b;
        }
        Ok(reactor.listen_tcp_with(self.address(), Rc::new(tls), opts)?)
    }
}

/// Why a TLS endpoint could not listen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsListenError {
    /// The certificate, key or CA files could not be loaded.
    #[error(transparent)]
    Config(#[from] TlsConfigError),
    /// Binding or listening failed.
    #[error("could not listen: {0}")]
    Io(#[from] std::io::Error),
}

/// Escapes `:`, `=` and `\` for an endpoint string.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ':' | '=' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The endpoint string again (round-trips through [`TlsServerEndpoint::parse`]).
impl std::fmt::Display for TlsServerEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ssl:{}:privateKey={}:certKey={}",
            self.port,
            esc(&self.private_key.to_string_lossy()),
            esc(&self.cert_key.to_string_lossy())
        )?;
        if let Some(x) = &self.extra_cert_chain {
            write!(f, ":extraCertChain={}", esc(&x.to_string_lossy()))?;
        }
        if let Some(x) = &self.ca_certs {
            write!(f, ":caCerts={}", esc(&x.to_string_lossy()))?;
        }
        if self.interface != IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
            write!(f, ":interface={}", esc(&self.interface.to_string()))?;
        }
        if let Some(b) = self.backlog {
            write!(f, ":backlog={b}")?;
        }
        Ok(())
    }
}

/// A parsed `tls:` client endpoint.
///
/// ```
/// use torsion_tls::TlsClientEndpoint;
/// let e = TlsClientEndpoint::parse("tls:host=example.org:port=443:trustRoots=/etc/ca")?;
/// assert_eq!((e.host.as_str(), e.port), ("example.org", 443));
/// # Ok::<(), torsion_tls::TlsEndpointError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsClientEndpoint {
    /// Host name (verified against the certificate, sent as SNI) or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// PEM file or directory of trusted roots; `None` uses the platform verifier.
    pub trust_roots: Option<PathBuf>,
    /// Client certificate (PEM).
    pub certificate: Option<PathBuf>,
    /// Client private key (PEM); defaults to the certificate file.
    pub private_key: Option<PathBuf>,
    /// Connection timeout (default 30 s).
    pub timeout: Duration,
    /// Local address to bind.
    pub bind_address: Option<IpAddr>,
}

const CLIENT_OPTIONS: &[&str] = &[
    "host",
    "port",
    "trustRoots",
    "certificate",
    "privateKey",
    "timeout",
    "bindAddress",
];

impl TlsClientEndpoint {
    /// Parses `tls:host=H:port=P…` (or `tls:H:P…`).
    pub fn parse(s: &str) -> Result<Self, TlsEndpointError> {
        let (pos, kw) = split_tls(s, "tls:")?;
        Self::from_parts(&pos, &kw)
    }

    /// From positional arguments and `key=value` options (after the scheme).
    pub fn from_parts(
        positional: &[String],
        options: &[(String, String)],
    ) -> Result<Self, TlsEndpointError> {
        let opts = take_once(options, CLIENT_OPTIONS)?;
        let mut pos = positional.iter();
        let host =
            positional_or_key(&mut pos, &opts, "host")?.ok_or(TlsEndpointError::Missing("host"))?;
        let port =
            positional_or_key(&mut pos, &opts, "port")?.ok_or(TlsEndpointError::Missing("port"))?;
        if let Some(extra) = pos.next() {
            return Err(TlsEndpointError::UnexpectedArgument(extra.clone()));
        }
        if host.is_empty() {
            return Err(TlsEndpointError::Missing("host"));
        }
        let port = parse_port("port", &port)?;
        let timeout = match get(&opts, "timeout") {
            Some(t) => {
                let secs: f64 = t
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0 && *s < 1e9)
                    .ok_or(TlsEndpointError::InvalidValue {
                        key: "timeout",
                        value: t,
                    })?;
                Duration::from_secs_f64(secs)
            }
            None => Duration::from_secs(30),
        };
        let bind_address = match get(&opts, "bindAddress") {
            Some(b) => Some(b.parse().map_err(|_| TlsEndpointError::InvalidValue {
                key: "bindAddress",
                value: b,
            })?),
            None => None,
        };
        let certificate = get(&opts, "certificate").map(PathBuf::from);
        let private_key = get(&opts, "privateKey").map(PathBuf::from);
        if private_key.is_some() && certificate.is_none() {
            return Err(TlsEndpointError::Missing("certificate"));
        }
        Ok(TlsClientEndpoint {
            host,
            port,
            trust_roots: get(&opts, "trustRoots").map(PathBuf::from),
            certificate,
            private_key,
            timeout,
            bind_address,
        })
    }

    /// Loads the files into a client configuration.
    pub fn client_config(&self) -> Result<TlsClientConfig, TlsConfigError> {
        let mut b = TlsClientConfig::builder();
        if let Some(r) = &self.trust_roots {
            b = b.trust_roots(TrustRoots::from_path(r)?);
        }
        if let Some(c) = &self.certificate {
            let key = self.private_key.as_ref().unwrap_or(c);
            b = b.client_certificate(CertificateKey::from_pem_files(c, key)?);
        }
        b.build()
    }

    /// Loads the configuration and connects.
    pub fn connect(
        &self,
        reactor: &Reactor,
        factory: Rc<dyn ClientFactory>,
    ) -> Result<Connector, TlsConfigError> {
        Ok(self.prepare()?.connect(reactor, factory))
    }

    /// Loads the files and checks the host name now, so that connecting
    /// later cannot fail synchronously (what an endpoint registry wants).
    pub fn prepare(&self) -> Result<PreparedTlsClientEndpoint, TlsConfigError> {
        let config = self.client_config()?;
        crate::config::server_name(&self.host)?;
        Ok(PreparedTlsClientEndpoint {
            endpoint: self.clone(),
            config,
        })
    }
}

/// A [`TlsClientEndpoint`] with its configuration loaded.
#[derive(Debug, Clone)]
pub struct PreparedTlsClientEndpoint {
    endpoint: TlsClientEndpoint,
    config: TlsClientConfig,
}

impl PreparedTlsClientEndpoint {
    /// The parsed endpoint.
    pub fn endpoint(&self) -> &TlsClientEndpoint {
        &self.endpoint
    }

    /// Connects; failures (TCP or TLS) reach the factory's `client_connection_failed`.
    pub fn connect(&self, reactor: &Reactor, factory: Rc<dyn ClientFactory>) -> Connector {
        let e = &self.endpoint;
        let opts = ConnectOptions {
            timeout: Some(e.timeout),
            bind_address: e.bind_address.map(|a| SocketAddr::new(a, 0)),
        };
        let tls = Rc::new(
            TlsWrappingFactory::client_unchecked(factory, self.config.clone(), &e.host)
                .with_clock(reactor),
        );
        match e.host.parse::<IpAddr>() {
            Ok(ip) => reactor.connect_tcp(SocketAddr::new(ip, e.port), tls, opts),
            Err(_) => reactor.connect_tcp_host(&e.host, e.port, tls, opts),
        }
    }
}

/// The endpoint string again (round-trips through [`TlsClientEndpoint::parse`]).
impl std::fmt::Display for TlsClientEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tls:host={}:port={}", esc(&self.host), self.port)?;
        if let Some(x) = &self.trust_roots {
            write!(f, ":trustRoots={}", esc(&x.to_string_lossy()))?;
        }
        if let Some(x) = &self.certificate {
            write!(f, ":certificate={}", esc(&x.to_string_lossy()))?;
        }
        if let Some(x) = &self.private_key {
            write!(f, ":privateKey={}", esc(&x.to_string_lossy()))?;
        }
        if self.timeout != Duration::from_secs(30) {
            write!(f, ":timeout={}", self.timeout.as_secs_f64())?;
        }
        if let Some(b) = self.bind_address {
            write!(f, ":bindAddress={}", esc(&b.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_endpoint_full_form() {
        let e = TlsServerEndpoint::parse(
            "ssl:8443:privateKey=/k\\:ey.pem:certKey=c.pem:extraCertChain=x.pem:caCerts=ca.pem:interface=127.0.0.1:backlog=10",
        )
        .unwrap();
        assert_eq!(e.port, 8443);
        assert_eq!(e.private_key, PathBuf::from("/k:ey.pem"));
        assert_eq!(e.cert_key, PathBuf::from("c.pem"));
        assert_eq!(e.extra_cert_chain, Some(PathBuf::from("x.pem")));
        assert_eq!(e.ca_certs, Some(PathBuf::from("ca.pem")));
        assert_eq!(e.address(), "127.0.0.1:8443".parse().unwrap());
        assert_eq!(e.backlog, Some(10));
    }

    #[test]
    fn server_endpoint_defaults_and_errors() {
        let e = TlsServerEndpoint::parse("ssl:port=443:privateKey=both.pem").unwrap();
        assert_eq!(e.cert_key, PathBuf::from("both.pem"));
        assert_eq!(e.interface, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(
            TlsServerEndpoint::parse("ssl:443"),
            Err(TlsEndpointError::Missing("privateKey"))
        );
        assert_eq!(
            TlsServerEndpoint::parse("ssl:privateKey=k"),
            Err(TlsEndpointError::Missing("port"))
        );
        assert!(matches!(
            TlsServerEndpoint::parse("ssl:99999:privateKey=k"),
            Err(TlsEndpointError::InvalidValue { key: "port", .. })
        ));
        assert!(matches!(
            TlsServerEndpoint::parse("tcp:443:privateKey=k"),
            Err(TlsEndpointError::WrongScheme { .. })
        ));
        assert_eq!(
            TlsServerEndpoint::parse("ssl:443:privateKey=k:bogus=1"),
            Err(TlsEndpointError::UnknownOption("bogus".into()))
        );
        assert_eq!(
            TlsServerEndpoint::parse("ssl:443:privateKey=k:privateKey=j"),
            Err(TlsEndpointError::Duplicate("privateKey".into()))
        );
        assert_eq!(
            TlsServerEndpoint::parse("ssl:443:privateKey=k\\"),
            Err(TlsEndpointError::DanglingEscape)
        );
        assert!(matches!(
            TlsServerEndpoint::parse("ssl:443:privateKey=k:interface=nope"),
            Err(TlsEndpointError::InvalidValue {
                key: "interface",
                ..
            })
        ));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "ssl:8443:privateKey=/a\\:b.pem:certKey=c.pem:extraCertChain=x.pem:caCerts=ca.pem:interface=\\:\\:1:backlog=5",
            "ssl:0:privateKey=k.pem:certKey=k.pem",
        ] {
            let e = TlsServerEndpoint::parse(s).unwrap();
            assert_eq!(TlsServerEndpoint::parse(&e.to_string()).unwrap(), e);
        }
        for s in [
            "tls:host=example.org:port=443:trustRoots=/etc/ca:certificate=c.pem:privateKey=k.pem:timeout=2.5:bindAddress=127.0.0.1",
            "tls:a:1",
        ] {
            let e = TlsClientEndpoint::parse(s).unwrap();
            assert_eq!(TlsClientEndpoint::parse(&e.to_string()).unwrap(), e);
        }
    }

    #[test]
    fn client_endpoint_forms() {
        let e = TlsClientEndpoint::parse(
            "tls:host=example.org:port=443:trustRoots=/etc/ca:certificate=c.pem:privateKey=k.pem:timeout=2.5:bindAddress=127.0.0.1",
        )
        .unwrap();
        assert_eq!(e.host, "example.org");
        assert_eq!(e.port, 443);
        assert_eq!(e.trust_roots, Some(PathBuf::from("/etc/ca")));
        assert_eq!(e.certificate, Some(PathBuf::from("c.pem")));
        assert_eq!(e.private_key, Some(PathBuf::from("k.pem")));
        assert_eq!(e.timeout, Duration::from_millis(2500));
        let p = TlsClientEndpoint::parse("tls:example.org:8443").unwrap();
        assert_eq!(
            (p.host.as_str(), p.port, p.timeout),
            ("example.org", 8443, Duration::from_secs(30))
        );
        assert_eq!(
            TlsClientEndpoint::parse("tls:host=a"),
            Err(TlsEndpointError::Missing("port"))
        );
        assert_eq!(
            TlsClientEndpoint::parse("tls:port=1"),
            Err(TlsEndpointError::Missing("host"))
        );
        assert_eq!(
            TlsClientEndpoint::parse("tls:a:1:privateKey=k"),
            Err(TlsEndpointError::Missing("certificate"))
        );
        assert!(matches!(
            TlsClientEndpoint::parse("tls:a:1:timeout=-1"),
            Err(TlsEndpointError::InvalidValue { key: "timeout", .. })
        ));
        assert_eq!(
            TlsClientEndpoint::parse("tls:a:1:2"),
            Err(TlsEndpointError::UnexpectedArgument("2".into()))
        );
    }
}
