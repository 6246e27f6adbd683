//! Hostile and broken peers against a TLS echo server over TCP: each is
//! closed with a typed error, nothing panics, and a well-behaved client
//! connected at the same time is unaffected.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::thread;
use std::time::Duration;

use common::*;
use torsion_core::{Address, ConnectOptions, Failure, Reactor};
use torsion_tls::*;

/// Runs `peer` on a thread against a fresh TLS echo server (handshake
/// timeout `timeout`) while a good client echoes; returns the server-side
/// reason of the bad connection.
fn against_server(
    timeout: Duration,
    peer: impl FnOnce(SocketAddr) -> Vec<u8> + Send + 'static,
) -> Failure {
    init_logging();
    let pki = Pki::new("CA");
    let reactor = Reactor::new().unwrap();
    let sf = EchoFactory::new();
    let tls = TlsWrappingFactory::server(sf.clone(), pki.server_config(&["localhost"]))
        .with_options(TlsOptions {
            handshake_timeout: Some(timeout),
            clock: Some(Rc::new(reactor.clone())),
        });
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), Rc::new(tls))
        .unwrap();
    let Address::Tcp(addr) = port.host() else {
        panic!()
    };
    let bad = thread::spawn(move || peer(addr));
    // Wait until the bad peer is connected, then run a good client alongside.
    let s2 = sf.clone();
    assert!(run_until(&reactor, Duration::from_secs(10), move || s2
        .log(0)
        .is_some()));
    let good = OneClient::new(b"still fine", Some(10));
    connect_ssl(
        &reactor,
        addr,
        good.clone(),
        pki.client_config(),
        "localhost",
        ConnectOptions::default(),
    )
    .unwrap();
    let (s3, g3) = (sf.clone(), good.clone());
    assert!(run_until(&reactor, Duration::from_secs(15), move || {
        s3.log(0).is_some_and(|l| l.borrow().lost.is_some())
            && g3.log.borrow().lost.is_some()
            && bad.is_finished()
    }));
    assert_eq!(good.log.borrow().data, b"still fine");
    assert!(good.log.borrow().failed.is_none());
    let reason = sf.log(0).unwrap().borrow().lost.clone().unwrap();
    assert!(
        sf.log(0).unwrap().borrow().data.is_empty(),
        "bad peer's bytes reached the protocol"
    );
    reason
}

fn read_all(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..1000 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

fn tls_error(f: &Failure) -> TlsError {
    f.downcast_ref::<TlsError>()
        .unwrap_or_else(|| panic!("not a TlsError: {f}"))
        .clone()
}

#[test]
fn plaintext_http_on_the_tls_port() {
    let reason = against_server(Duration::from_secs(30), |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        read_all(&mut s)
    });
    assert!(
        matches!(tls_error(&reason), TlsError::NotTls(ref s) if s.starts_with("GET / ")),
        "{reason}"
    );
}

#[test]
fn garbage_before_the_handshake() {
    let reason = against_server(Duration::from_secs(30), |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        // A handshake record header followed by nonsense.
        s.write_all(&[
            0x16, 0x03, 0x01, 0x00, 0x08, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4,
        ])
        .unwrap();
        read_all(&mut s)
    });
    assert!(
        matches!(tls_error(&reason), TlsError::Protocol(_)),
        "{reason}"
    );
}

#[test]
fn binary_garbage_before_the_handshake() {
    let reason = against_server(Duration::from_secs(30), |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        let junk: Vec<u8> = (0..2000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 0x80)
            .collect();
        let _ = s.write_all(&junk);
        read_all(&mut s)
    });
    assert!(
        matches!(
            tls_error(&reason),
            TlsError::Protocol(_) | TlsError::NotTls(_)
        ),
        "{reason}"
    );
}

/// A real ClientHello from rustls, then something else.
fn client_hello(pki_roots: TrustRoots) -> (rustls::ClientConnection, Vec<u8>) {
    let cfg = TlsClientConfig::with_roots(pki_roots).unwrap();
    let mut conn =
        rustls::ClientConnection::new(cfg.rustls().clone(), "localhost".try_into().unwrap())
            .unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    (conn, hello)
}

#[test]
fn garbage_during_the_handshake() {
    let roots = Pki::new("Unrelated").roots();
    let reason = against_server(Duration::from_secs(30), move |addr| {
        let (_conn, hello) = client_hello(roots);
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&hello).unwrap();
        // Wait for the server's flight, then send a bogus encrypted record.
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 8192];
        let _ = s.read(&mut buf);
        let _ = s.write_all(&[0x17, 0x03, 0x03, 0x00, 0x20]);
        let _ = s.write_all(&[0x41; 0x20]);
        read_all(&mut s)
    });
    assert!(
        matches!(tls_error(&reason), TlsError::Protocol(_)),
        "{reason}"
    );
}

#[test]
fn truncated_record_then_close() {
    let roots = Pki::new("Unrelated").roots();
    let reason = against_server(Duration::from_secs(30), move |addr| {
        let (_conn, hello) = client_hello(roots);
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&hello[..hello.len() / 2]).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        read_all(&mut s)
    });
    assert!(
        matches!(tls_error(&reason), TlsError::ClosedDuringHandshake),
        "{reason}"
    );
}

#[test]
fn stalled_handshake_is_cut_off() {
    let roots = Pki::new("Unrelated").roots();
    let reason = against_server(Duration::from_millis(300), move |addr| {
        let (_conn, hello) = client_hello(roots);
        let mut s = TcpStream::connect(addr).unwrap();
        // Half a hello, then silence: only the timeout can end this.
        s.write_all(&hello[..10]).unwrap();
        read_all(&mut s)
    });
    assert!(
        matches!(tls_error(&reason), TlsError::HandshakeTimeout(d) if d == Duration::from_millis(300)),
        "{reason}"
    );
}

#[test]
fn client_that_rejects_us_mid_handshake() {
    // The peer's verifier does not know our CA: it sends an alert.
    let roots = Pki::new("Unrelated").roots();
    let reason = against_server(Duration::from_secs(30), move |addr| {
        let (mut conn, hello) = client_hello(roots);
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&hello).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        for _ in 0..100 {
            let mut buf = [0u8; 8192];
            let n = match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut rd = &buf[..n];
            let _ = conn.read_tls(&mut rd);
            let failed = conn.process_new_packets().is_err();
            let mut out = Vec::new();
            while conn.wants_write() {
                if conn.write_tls(&mut out).is_err() {
                    break;
                }
            }
            let _ = s.write_all(&out);
            if failed {
                break;
            }
        }
        read_all(&mut s)
    });
    assert!(
        matches!(
            tls_error(&reason),
            TlsError::PeerRejectedCertificate(CertificateError::UnknownIssuer)
        ),
        "{reason}"
    );
}
