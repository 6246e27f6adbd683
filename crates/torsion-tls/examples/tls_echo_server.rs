//! A TLS echo server.
//!
//! ```text
//! cargo run -p torsion-tls --example tls_echo_server -- ssl:8443:privateKey=key.pem:certKey=cert.pem
//! cargo run -p torsion-tls --example tls_echo_server            # ephemeral CA + "localhost"/127.0.0.1 cert, random port
//! ```
//! Prints `listening on 127.0.0.1:PORT` once ready; answers ALPN `h2` and
//! `http/1.1`. Without an endpoint it makes a throw-away CA and a 90-day
//! certificate signed by it; `TORSION_TLS_CA_OUT=ca.pem` writes that CA out
//! so clients (and `scripts/testssl.sh`) can verify the server.

use std::rc::Rc;

use torsion_core::{factory_fn, Address, Protocol, Reactor, Transport};
use torsion_tls::{CertificateKey, TlsServerConfig, TlsServerEndpoint, TlsWrappingFactory};

#[derive(Default)]
struct Echo(Option<Transport>);

impl Protocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.0 {
            t.write(data);
        }
    }
}

/// A throw-away CA and a server certificate for `localhost` and 127.0.0.1.
fn ephemeral_certificate() -> Result<(String, String, String), rcgen::Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let now = time::OffsetDateTime::now_utc();
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "Torsion example CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca.not_before = now - time::Duration::days(1);
    ca.not_after = now + time::Duration::days(365);
    let ca_key = KeyPair::generate()?;
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()])?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    leaf.distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf.not_before = now - time::Duration::days(1);
    leaf.not_after = now + time::Duration::days(90);
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    leaf.crl_distribution_points = vec![rcgen::CrlDistributionPoint {
        uris: vec!["http://127.0.0.1/torsion-example-ca.crl".to_string()],
    }];
    let key = KeyPair::generate()?;
    let cert = leaf.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem(), ca_pem))
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let reactor = Reactor::new()?;
    let port = match std::env::args().nth(1) {
        Some(ep) => {
            let ep = TlsServerEndpoint::parse(&ep)?;
            ep.listen(&reactor, factory_fn(Echo::default))?
        }
        None => {
            let (chain_pem, key_pem, ca_pem) = ephemeral_certificate()?;
            if let Ok(path) = std::env::var("TORSION_TLS_CA_OUT") {
                std::fs::write(path, ca_pem)?;
            }
            let ck = CertificateKey::from_pem(chain_pem.as_bytes(), key_pem.as_bytes())?;
            let config = TlsServerConfig::builder()
                .certificate(ck)
                .alpn(&[b"h2", b"http/1.1"])
                .build()?;
            let tls =
                TlsWrappingFactory::server(factory_fn(Echo::default), config).with_clock(&reactor);
            reactor.listen_tcp("127.0.0.1:0".parse()?, Rc::new(tls))?
        }
    };
    if let Address::Tcp(a) = port.host() {
        println!("listening on {a}");
    }
    reactor.install_signal_handlers()?;
    reactor.run()?;
    Ok(())
}
