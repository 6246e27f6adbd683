//! Arbitrary bytes to the TLS wrapper acting as a server.
//! Run: `cargo +nightly fuzz run tls_server -- -max_total_time=60`
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use torsion_core::testing::StringTransport;
use torsion_core::{ConnectionError, Failure, Protocol, Transport};
use torsion_tls::{CertificateKey, TlsError, TlsProtocol, TlsServerConfig};

fn config() -> &'static TlsServerConfig {
    static CFG: OnceLock<TlsServerConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let ck = CertificateKey::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())
            .expect("certificate key");
        TlsServerConfig::builder()
            .certificate(ck)
            .build()
            .expect("config")
    })
}

struct Sink(Option<Transport>);
impl Protocol for Sink {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
    fn data_received(&mut self, _data: &[u8]) {
        panic!("plaintext without a handshake");
    }
    fn connection_lost(&mut self, reason: Failure) {
        assert!(reason.check::<TlsError>(), "untyped: {reason}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut server = TlsProtocol::server(Box::new(Sink(None)), config().clone());
    let st = StringTransport::new();
    server.connection_made(st.transport());
    // The first byte picks where the input is split in two deliveries.
    let (split, rest) = match data.split_first() {
        Some((s, r)) => (*s as usize, r),
        None => (0, data),
    };
    let at = split.min(rest.len());
    server.data_received(&rest[..at]);
    server.data_received(&rest[at..]);
    server.connection_lost(Failure::new(ConnectionError::Done));
});
