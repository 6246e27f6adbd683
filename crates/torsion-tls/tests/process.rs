//! TLS over a process pipe: Torsion's TLS client speaks through `socat`'s
//! stdin/stdout, which relays to a Torsion TLS server over TCP.

mod common;

use std::time::Duration;

use common::*;
use torsion_core::process::ProcessOptions;
use torsion_core::{Address, Reactor};
use torsion_tls::*;

#[test]
fn tls_client_over_a_process_pipe() {
    init_logging();
    assert!(
        std::process::Command::new("socat")
            .arg("-V")
            .output()
            .is_ok(),
        "socat is not installed: run scripts/test.sh (scripts/apt.d/tls.txt)"
    );
    let pki = Pki::new("CA");
    let reactor = Reactor::new().unwrap();
    let sf = EchoFactory::new();
    let port = listen_ssl(
        &reactor,
        "127.0.0.1:0".parse().unwrap(),
        sf.clone(),
        pki.server_config(&["localhost"]),
    )
    .unwrap();
    let Address::Tcp(addr) = port.host() else {
        panic!()
    };
    let log = Log::default();
    let client = TlsProtocol::client(
        Box::new(Recorder {
            log: log.clone(),
            greeting: b"through a pipe".to_vec(),
            close_after: Some(14),
        }),
        pki.client_config(),
        "localhost",
    );
    let _proc = reactor
        .spawn_process_stream(
            Box::new(client),
            ProcessOptions::new("socat", ["STDIO".to_string(), format!("TCP:{addr}")]),
        )
        .unwrap();
    let l2 = log.clone();
    assert!(run_until(&reactor, Duration::from_secs(15), move || l2
        .borrow()
        .lost
        .is_some()));
    let l = log.borrow();
    assert_eq!(l.data, b"through a pipe");
    let t = l.transport.clone().unwrap();
    assert_eq!(t.tls_version().unwrap(), Some(TlsVersion::Tls13));
    assert_eq!(sf.log(0).unwrap().borrow().data, b"through a pipe");
    let lost = l.lost.clone().unwrap();
    assert!(!lost.check::<TlsError>(), "{lost}");
}
