//! Property tests: arbitrary bytes (and mutated ClientHellos) fed to the TLS
//! wrapper as a server never panic, never reach the inner protocol as
//! plaintext, and every failure closes the connection with a typed error.
//! (`fuzz/fuzz_targets/tls_server.rs` is the cargo-fuzz twin.)

mod common;

use std::sync::OnceLock;

use common::*;
use proptest::prelude::*;
use torsion_core::testing::StringTransport;
use torsion_core::{ConnectionError, Failure, Protocol};
use torsion_tls::*;

fn server_config() -> &'static (TlsServerConfig, Vec<u8>) {
    static CFG: OnceLock<(TlsServerConfig, Vec<u8>)> = OnceLock::new();
    CFG.get_or_init(|| {
        let pki = Pki::new("Fuzz CA");
        let cfg = pki.server_config(&["localhost"]);
        // A genuine ClientHello to mutate.
        let client = pki.client_config();
        let mut conn =
            rustls::ClientConnection::new(client.rustls().clone(), "localhost".try_into().unwrap())
                .unwrap();
        let mut hello = Vec::new();
        conn.write_tls(&mut hello).unwrap();
        (cfg, hello)
    })
}

/// Feeds `chunks` to a server wrapper; returns (plaintext seen, reason, closed?).
fn feed(chunks: &[Vec<u8>]) -> (Vec<u8>, Option<Failure>, bool) {
    let log = Log::default();
    let mut server = TlsProtocol::server(
        Box::new(Echo {
            t: None,
            log: log.clone(),
        }),
        server_config().0.clone(),
    );
    let st = StringTransport::new();
    server.connection_made(st.transport());
    for c in chunks {
        server.data_received(c);
    }
    let closing = st.disconnecting() || st.aborted();
    server.connection_lost(Failure::new(ConnectionError::Done));
    let l = log.borrow();
    (l.data.clone(), l.lost.clone(), closing)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..600), 0..6)) {
        let (data, lost, _closing) = feed(&chunks);
        prop_assert!(data.is_empty());
        let lost = lost.expect("connection_lost reached the inner protocol");
        prop_assert!(lost.check::<TlsError>(), "untyped reason: {}", lost);
    }

    #[test]
    fn mutated_client_hello(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                            cut in any::<prop::sample::Index>(),
                            split in any::<prop::sample::Index>()) {
        let mut hello = server_config().1.clone();
        for (i, b) in flips {
            let at = i.index(hello.len());
            hello[at] ^= b | 1;
        }
        let len = cut.index(hello.len()) + 1;
        hello.truncate(len);
        let at = split.index(hello.len());
        let (a, b) = hello.split_at(at);
        let (data, lost, closing) = feed(&[a.to_vec(), b.to_vec()]);
        prop_assert!(data.is_empty());
        let lost = lost.expect("connection_lost reached the inner protocol");
        prop_assert!(lost.check::<TlsError>(), "untyped reason: {}", lost);
        let e = lost.downcast_ref::<TlsError>().unwrap();
        // Either rejected (the wrapper asked to close) or still waiting for more handshake bytes.
        prop_assert!(closing || matches!(e, TlsError::ClosedDuringHandshake), "{} closing={}", e, closing);
    }
}

#[test]
fn genuine_hello_is_answered() {
    let log = Log::default();
    let mut server = TlsProtocol::server(
        Box::new(Echo {
            t: None,
            log: log.clone(),
        }),
        server_config().0.clone(),
    );
    let st = StringTransport::new();
    server.connection_made(st.transport());
    server.data_received(&server_config().1);
    let reply = st.take_written();
    assert_eq!(reply.first(), Some(&0x16), "a ServerHello record");
    assert!(!st.disconnecting());
}
