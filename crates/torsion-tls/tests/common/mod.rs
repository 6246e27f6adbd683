//! Test support: certificates generated at test time with rcgen, a reactor
//! runner with bounded time, and small protocols.
#![allow(dead_code)]

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use torsion_core::{
    Address, ClientFactory, Connector, Factory, Failure, Protocol, Reactor, Transport,
};
use torsion_tls::{CertificateKey, TlsClientConfig, TlsServerConfig, TrustRoots};

/// A certificate authority for one test.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    pub fn key(&self) -> CertificateKey {
        CertificateKey::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes()).unwrap()
    }
    pub fn der(&self) -> Vec<u8> {
        self.key().chain()[0].to_vec()
    }
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA issued by this one (its `ca_pem` is the intermediate's certificate).
    pub fn intermediate(&self, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, names: &[&str], client: bool, expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("client"),
        );
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    pub fn server_leaf(&self, names: &[&str]) -> Leaf {
        self.issue(names, false, false)
    }
    pub fn expired_leaf(&self, names: &[&str]) -> Leaf {
        self.issue(names, false, true)
    }
    pub fn client_leaf(&self, name: &str) -> Leaf {
        self.issue(&[name], true, false)
    }
    pub fn roots(&self) -> TrustRoots {
        TrustRoots::from_pem(self.ca_pem.as_bytes()).unwrap()
    }
    pub fn server_config(&self, names: &[&str]) -> TlsServerConfig {
        TlsServerConfig::builder()
            .certificate(self.server_leaf(names).key())
            .build()
            .unwrap()
    }
    pub fn client_config(&self) -> TlsClientConfig {
        TlsClientConfig::with_roots(self.roots()).unwrap()
    }
}

/// A fresh directory under the system temp dir (removed by `Drop`).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "torsion-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Iterates the reactor until `done()` or `limit` passes; returns `done()`.
pub fn run_until(reactor: &Reactor, limit: Duration, done: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !done() {
        if start.elapsed() > limit {
            return false;
        }
        reactor.iterate(Some(Duration::from_millis(5))).unwrap();
    }
    true
}

/// Everything a test protocol saw.
#[derive(Default)]
pub struct Seen {
    pub data: Vec<u8>,
    pub transport: Option<Transport>,
    pub lost: Option<Failure>,
    pub failed: Option<Failure>,
}

pub type Log = Rc<RefCell<Seen>>;

/// Echoes everything back.
pub struct Echo {
    pub t: Option<Transport>,
    pub log: Log,
}

impl Protocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.log.borrow_mut().transport = Some(t.clone());
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.log.borrow_mut().data.extend_from_slice(data);
        if let Some(t) = &self.t {
            t.write(data);
        }
    }
    fn connection_lost(&mut self, reason: Failure) {
        self.log.borrow_mut().lost = Some(reason);
    }
}

/// Records; optionally sends something first and closes once `close_after` bytes arrived.
pub struct Recorder {
    pub log: Log,
    pub greeting: Vec<u8>,
    pub close_after: Option<usize>,
}

impl Protocol for Recorder {
    fn connection_made(&mut self, t: Transport) {
        if !self.greeting.is_empty() {
            t.write(&self.greeting);
        }
        self.log.borrow_mut().transport = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        let mut l = self.log.borrow_mut();
        l.data.extend_from_slice(data);
        if let Some(n) = self.close_after {
            if l.data.len() >= n {
                if let Some(t) = &l.transport {
                    t.lose_connection();
                }
            }
        }
    }
    fn connection_lost(&mut self, reason: Failure) {
        self.log.borrow_mut().lost = Some(reason);
    }
}

/// A factory of `Echo` servers; every connection's log is kept.
pub struct EchoFactory {
    pub logs: RefCell<Vec<Log>>,
}

impl EchoFactory {
    pub fn new() -> Rc<EchoFactory> {
        Rc::new(EchoFactory {
            logs: RefCell::new(Vec::new()),
        })
    }
    pub fn log(&self, i: usize) -> Option<Log> {
        self.logs.borrow().get(i).cloned()
    }
}

impl Factory for EchoFactory {
    fn build_protocol(&self, _peer: &Address) -> Option<Box<dyn Protocol>> {
        let log = Log::default();
        self.logs.borrow_mut().push(log.clone());
        Some(Box::new(Echo { t: None, log }))
    }
}

/// A client factory building one `Recorder`, recording how the attempt ended.
pub struct OneClient {
    pub log: Log,
    pub greeting: Vec<u8>,
    pub close_after: Option<usize>,
}

impl OneClient {
    pub fn new(greeting: &[u8], close_after: Option<usize>) -> Rc<OneClient> {
        Rc::new(OneClient {
            log: Log::default(),
            greeting: greeting.to_vec(),
            close_after,
        })
    }
}

impl Factory for OneClient {
    fn build_protocol(&self, _peer: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(Recorder {
            log: self.log.clone(),
            greeting: self.greeting.clone(),
            close_after: self.close_after,
        }))
    }
}

impl ClientFactory for OneClient {
    fn client_connection_failed(&self, _c: &Connector, reason: Failure) {
        self.log.borrow_mut().failed = Some(reason);
    }
}

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}
