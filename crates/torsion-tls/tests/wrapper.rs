//! TLS as a wrapper over the in-memory loopback and over TCP: echo, queries,
//! close_notify, verification errors, SNI, ALPN, client certificates,
//! resumption, handshake timeout.

mod common;

use std::rc::Rc;
use std::time::Duration;

use common::*;
use torsion_core::testing::{self, AccumulatingProtocol, LoopbackPump, StringTransport};
use torsion_core::{ConnectOptions, ConnectionError, Reactor, Transport};
use torsion_tls::*;

/// A fresh CA and an echo server and client connected over TLS in memory
/// for the name "localhost".
fn localhost_loopback() -> (LoopbackPump, Log, testing::AccumulatedLog) {
    let pki = Pki::new("CA");
    let (pump, slog, clog) = loopback(
        pki.server_config(&["localhost"]),
        pki.client_config(),
        "localhost",
    );
    (pump, slog, clog)
}

fn loopback(
    server_cfg: TlsServerConfig,
    client_cfg: TlsClientConfig,
    name: &str,
) -> (LoopbackPump, Log, testing::AccumulatedLog) {
    let log = Log::default();
    let server = TlsProtocol::server(
        Box::new(Echo {
            t: None,
            log: log.clone(),
        }),
        server_cfg,
    );
    let (client, clog) = AccumulatingProtocol::new();
    let client = TlsProtocol::client(Box::new(client), client_cfg, name);
    let pump = LoopbackPump::connect(Box::new(server), Box::new(client));
    (pump, log, clog)
}

#[test]
fn echo_over_memory_loopback_with_queries() {
    let pki = Pki::new("CA");
    let leaf = pki.server_leaf(&["localhost"]);
    let server_cfg = TlsServerConfig::builder()
        .certificate(leaf.key())
        .build()
        .unwrap();
    let (pump, slog, clog) = loopback(server_cfg, pki.client_config(), "localhost");
    let ct = clog.transport().unwrap();
    // Written before the handshake: buffered, sent encrypted afterwards.
    ct.write(b"hello over tls");
    assert_eq!(ct.tls_version().unwrap(), None);
    pump.pump();
    assert_eq!(clog.data(), b"hello over tls");
    assert_eq!(slog.borrow().data, b"hello over tls");
    assert_eq!(ct.kind(), "TLS");
    assert_eq!(ct.tls_version().unwrap(), Some(TlsVersion::Tls13));
    assert!(ct.cipher_suite().unwrap().unwrap().starts_with("TLS13_"));
    assert_eq!(
        ct.peer_certificate().unwrap().unwrap().as_ref(),
        &leaf.der()[..]
    );
    assert_eq!(ct.negotiated_protocol().unwrap(), None);
    let st = slog.borrow().transport.clone().unwrap();
    assert_eq!(st.peer_certificate().unwrap(), None);
    assert_eq!(
        st.handshake_info().unwrap().unwrap().server_name.as_deref(),
        Some("localhost")
    );
    // The underlying memory transport is not TLS: a clear error.
    let raw = pump.client_transport();
    let err = raw.peer_certificate().unwrap_err();
    assert!(err.to_string().contains("not a TLS transport"), "{err}");
    assert_eq!(err.transport, "memory loopback");
    let plain = StringTransport::new().transport();
    assert!(plain.negotiated_protocol().is_err());
    assert!(plain.cipher_suite().is_err());
    assert!(plain.when_handshake_done().is_err());

    // lose_connection sends close_notify: both sides end cleanly.
    ct.lose_connection();
    pump.pump();
    let lost = clog.lost().expect("client lost");
    assert!(matches!(
        lost.downcast_ref::<ConnectionError>(),
        Some(ConnectionError::Done)
    ));
    let slost = slog.borrow().lost.clone().expect("server lost");
    assert!(
        matches!(
            slost.downcast_ref::<ConnectionError>(),
            Some(ConnectionError::Done)
        ),
        "{slost}"
    );
}

#[test]
fn large_writes_roundtrip_over_loopback() {
    let (pump, _slog, clog) = localhost_loopback();
    let ct = clog.transport().unwrap();
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    ct.write(&payload);
    pump.pump();
    assert_eq!(clog.data().len(), payload.len());
    assert!(clog.data() == payload);
}

#[test]
fn when_handshake_done_fires_with_info() {
    let (pump, _slog, clog) = localhost_loopback();
    let ct = clog.transport().unwrap();
    let got = Rc::new(std::cell::RefCell::new(None));
    let g = got.clone();
    ct.when_handshake_done()
        .unwrap()
        .add_callback(move |info| *g.borrow_mut() = Some(info));
    assert!(got.borrow().is_none());
    pump.pump();
    let info = got.borrow().clone().expect("handshake callback ran");
    assert_eq!(info.version, Some(TlsVersion::Tls13));
    assert_eq!(info.peer_certificates.len(), 1);
}

fn tls_error(f: &torsion_core::Failure) -> TlsError {
    f.downcast_ref::<TlsError>()
        .unwrap_or_else(|| panic!("not a TlsError: {f}"))
        .clone()
}

/// Connects a TLS client over TCP and returns how it ended.
fn tcp_attempt(
    server_cfg: TlsServerConfig,
    client_cfg: TlsClientConfig,
    name: &str,
) -> (Rc<OneClient>, Rc<EchoFactory>) {
    let reactor = Reactor::new().unwrap();
    let sf = EchoFactory::new();
    let port = listen_ssl(
        &reactor,
        "127.0.0.1:0".parse().unwrap(),
        sf.clone(),
        server_cfg,
    )
    .unwrap();
    let addr = match port.host() {
        torsion_core::Address::Tcp(a) => a,
        other => panic!("{other:?}"),
    };
    let client = OneClient::new(b"ping", Some(4));
    connect_ssl(
        &reactor,
        addr,
        client.clone(),
        client_cfg,
        name,
        ConnectOptions::default(),
    )
    .unwrap();
    let c = client.clone();
    let s = sf.clone();
    let ok = run_until(&reactor, Duration::from_secs(10), move || {
        let done_c = c.log.borrow().lost.is_some() || c.log.borrow().failed.is_some();
        let done_s = s.log(0).is_some_and(|l| l.borrow().lost.is_some());
        done_c && done_s
    });
    assert!(ok, "connection did not finish");
    (client, sf)
}

#[test]
fn echo_over_tcp_and_clean_close() {
    init_logging();
    let pki = Pki::new("CA");
    let (client, sf) = tcp_attempt(
        pki.server_config(&["localhost"]),
        pki.client_config(),
        "localhost",
    );
    let l = client.log.borrow();
    assert_eq!(l.data, b"ping");
    assert!(l.failed.is_none());
    let lost = l.lost.clone().unwrap();
    assert!(
        matches!(
            lost.downcast_ref::<ConnectionError>(),
            Some(ConnectionError::Done)
        ),
        "{lost}"
    );
    let sl = sf.log(0).unwrap();
    let slost = sl.borrow().lost.clone().unwrap();
    assert!(
        matches!(
            slost.downcast_ref::<ConnectionError>(),
            Some(ConnectionError::Done)
        ),
        "{slost}"
    );
}

#[test]
fn wrong_hostname_is_a_typed_error() {
    init_logging();
    let pki = Pki::new("CA");
    let (client, sf) = tcp_attempt(
        pki.server_config(&["localhost"]),
        pki.client_config(),
        "other.example",
    );
    let l = client.log.borrow();
    let failed = l.failed.clone().expect("client_connection_failed");
    assert!(matches!(
        tls_error(&failed),
        TlsError::Certificate(CertificateError::WrongHostname { ref expected }) if expected == "other.example"
    ));
    assert!(matches!(
        tls_error(l.lost.as_ref().expect("connection_lost")),
        TlsError::Certificate(CertificateError::WrongHostname { .. })
    ));
    assert!(l.data.is_empty());
    // The server saw the client's alert.
    let slost = sf.log(0).unwrap().borrow().lost.clone().unwrap();
    assert!(slost.check::<TlsError>(), "{slost}");
    assert!(sf.log(0).unwrap().borrow().data.is_empty());
}

#[test]
fn expired_certificate_is_a_typed_error() {
    let pki = Pki::new("CA");
    let cfg = TlsServerConfig::builder()
        .certificate(pki.expired_leaf(&["localhost"]).key())
        .build()
        .unwrap();
    let (client, _sf) = tcp_attempt(cfg, pki.client_config(), "localhost");
    let failed = client.log.borrow().failed.clone().unwrap();
    assert!(matches!(
        tls_error(&failed),
        TlsError::Certificate(CertificateError::Expired)
    ));
}

#[test]
fn unknown_ca_is_a_typed_error() {
    let pki = Pki::new("CA");
    let other = Pki::new("Other CA");
    let (client, _sf) = tcp_attempt(
        pki.server_config(&["localhost"]),
        other.client_config(),
        "localhost",
    );
    let failed = client.log.borrow().failed.clone().unwrap();
    assert!(matches!(
        tls_error(&failed),
        TlsError::Certificate(CertificateError::UnknownIssuer)
    ));
}

#[test]
fn missing_client_certificate_is_a_typed_error_on_both_sides() {
    let pki = Pki::new("CA");
    let cfg = TlsServerConfig::builder()
        .certificate(pki.server_leaf(&["localhost"]).key())
        .require_client_certificates(pki.roots())
        .build()
        .unwrap();
    let (client, sf) = tcp_attempt(cfg, pki.client_config(), "localhost");
    let slost = sf.log(0).unwrap().borrow().lost.clone().unwrap();
    assert!(matches!(
        tls_error(&slost),
        TlsError::Certificate(CertificateError::MissingClientCertificate)
    ));
    let l = client.log.borrow();
    // TLS 1.3: the client finished its side first, then hears the server's alert.
    let reason = l.failed.clone().or(l.lost.clone()).unwrap();
    assert!(
        matches!(
            tls_error(&reason),
            TlsError::PeerRejectedCertificate(CertificateError::MissingClientCertificate)
        ),
        "{reason}"
    );
    assert!(l.data.is_empty());
}

#[test]
fn client_certificate_sni_and_alpn() {
    let pki = Pki::new("CA");
    let a = pki.server_leaf(&["a.test"]);
    let b = pki.server_leaf(&["b.test"]);
    let wild = pki.server_leaf(&["*.wild.test"]);
    let default = pki.server_leaf(&["default.test"]);
    let client_leaf = pki.client_leaf("alice");
    let server_cfg = TlsServerConfig::builder()
        .certificate(default.key())
        .sni_certificate("a.test", a.key())
        .sni_certificate("b.test", b.key())
        .sni_certificate("*.wild.test", wild.key())
        .alpn(&[b"h2", b"http/1.1"])
        .require_client_certificates(pki.roots())
        .build()
        .unwrap();
    let client_cfg = TlsClientConfig::builder()
        .trust_roots(pki.roots())
        .client_certificate(client_leaf.key())
        .alpn(&[b"http/1.1"])
        .build()
        .unwrap();
    for (name, leaf) in [("b.test", &b), ("a.test", &a), ("x.wild.test", &wild)] {
        let (pump, slog, clog) = loopback(server_cfg.clone(), client_cfg.clone(), name);
        pump.pump();
        let ct = clog.transport().unwrap();
        assert_eq!(
            ct.peer_certificate().unwrap().unwrap().as_ref(),
            &leaf.der()[..],
            "{name}"
        );
        assert_eq!(
            ct.negotiated_protocol().unwrap().as_deref(),
            Some(&b"http/1.1"[..])
        );
        let st = slog.borrow().transport.clone().unwrap();
        assert_eq!(
            st.negotiated_protocol().unwrap().as_deref(),
            Some(&b"http/1.1"[..])
        );
        assert_eq!(
            st.peer_certificate().unwrap().unwrap().as_ref(),
            &client_leaf.der()[..]
        );
        assert_eq!(
            st.handshake_info().unwrap().unwrap().server_name.as_deref(),
            Some(name)
        );
    }
    // An IP address sends no SNI: the default certificate is served (and fails verification for the IP).
    let (pump, _slog, clog) = loopback(server_cfg.clone(), client_cfg.clone(), "127.0.0.1");
    pump.pump();
    let lost = clog.lost().expect("client failed");
    assert!(matches!(
        tls_error(&lost),
        TlsError::Certificate(CertificateError::WrongHostname { .. })
    ));
}

#[test]
fn no_common_alpn_protocol_fails_typed() {
    let pki = Pki::new("CA");
    let server_cfg = TlsServerConfig::builder()
        .certificate(pki.server_leaf(&["localhost"]).key())
        .alpn(&[b"h2"])
        .build()
        .unwrap();
    let client_cfg = TlsClientConfig::builder()
        .trust_roots(pki.roots())
        .alpn(&[b"imap"])
        .build()
        .unwrap();
    let (pump, slog, _clog) = loopback(server_cfg, client_cfg, "localhost");
    pump.pump();
    let slost = slog.borrow().lost.clone().unwrap();
    assert!(
        matches!(tls_error(&slost), TlsError::Incompatible(_)),
        "{slost}"
    );
}

#[test]
fn sessions_are_resumed() {
    let pki = Pki::new("CA");
    let server_cfg = pki.server_config(&["localhost"]);
    let client_cfg = pki.client_config();
    let mut resumed = Vec::new();
    for _ in 0..2 {
        let (pump, slog, clog) = loopback(server_cfg.clone(), client_cfg.clone(), "localhost");
        clog.transport().unwrap().write(b"x");
        pump.pump();
        let st = slog.borrow().transport.clone().unwrap();
        resumed.push(st.handshake_info().unwrap().unwrap().resumed);
    }
    assert_eq!(resumed, vec![false, true]);
}

#[test]
fn stalled_handshake_times_out() {
    init_logging();
    let pki = Pki::new("CA");
    let clock = Rc::new(testing::Clock::new());
    let log = Log::default();
    let server = TlsProtocol::new(
        Box::new(Echo {
            t: None,
            log: log.clone(),
        }),
        TlsSide::Server(pki.server_config(&["localhost"])),
        TlsOptions::with_clock(clock.clone()),
    );
    // The "client" says nothing at all.
    let (silent, slog) = AccumulatingProtocol::new();
    let pump = LoopbackPump::connect(Box::new(server), Box::new(silent));
    pump.pump();
    clock.advance(Duration::from_secs(29));
    pump.pump();
    assert!(log.borrow().lost.is_none());
    clock.advance(Duration::from_secs(2));
    pump.pump();
    let lost = log.borrow().lost.clone().expect("timed out");
    assert!(matches!(
        tls_error(&lost),
        TlsError::HandshakeTimeout(d) if d == DEFAULT_HANDSHAKE_TIMEOUT
    ));
    assert!(slog.lost().is_some());
}

#[test]
fn paused_reader_holds_data_back_and_resumes() {
    let (pump, slog, clog) = localhost_loopback();
    pump.pump();
    let st: Transport = slog.borrow().transport.clone().unwrap();
    let ct = clog.transport().unwrap();
    ct.pause_producing();
    st.write(&vec![b'z'; 200_000]);
    pump.pump();
    assert!(clog.data().is_empty(), "paused protocol got data");
    ct.resume_producing();
    pump.pump();
    assert_eq!(clog.data().len(), 200_000);
}

#[test]
fn tls_over_tls_over_loopback() {
    // The wrapper is itself a transport: nest it.
    let outer = Pki::new("Outer CA");
    let inner = Pki::new("Inner CA");
    let log = Log::default();
    let server = TlsProtocol::server(
        Box::new(TlsProtocol::server(
            Box::new(Echo {
                t: None,
                log: log.clone(),
            }),
            inner.server_config(&["inner.test"]),
        )),
        outer.server_config(&["outer.test"]),
    );
    let (client, clog) = AccumulatingProtocol::new();
    let client = TlsProtocol::client(
        Box::new(TlsProtocol::client(
            Box::new(client),
            inner.client_config(),
            "inner.test",
        )),
        outer.client_config(),
        "outer.test",
    );
    let pump = LoopbackPump::connect(Box::new(server), Box::new(client));
    let ct = clog.transport().unwrap();
    ct.write(b"nested");
    pump.pump();
    assert_eq!(clog.data(), b"nested");
    let info = ct.handshake_info().unwrap().unwrap();
    // The innermost TLS layer answers for the transport the protocol holds.
    assert_eq!(info.peer_certificates.len(), 1);
    let leaf_cn_inner = info.peer_certificates[0]
        .as_ref()
        .windows(10)
        .any(|w| w == b"inner.test");
    assert!(leaf_cn_inner);
    ct.lose_connection();
    pump.pump();
    assert!(matches!(
        clog.lost().unwrap().downcast_ref::<ConnectionError>(),
        Some(ConnectionError::Done)
    ));
}

#[test]
fn lose_connection_before_the_handshake_still_delivers_early_writes() {
    let (pump, slog, clog) = localhost_loopback();
    let ct = clog.transport().unwrap();
    ct.write(b"last words");
    ct.lose_connection();
    ct.write(b" (dropped: written after lose_connection)");
    pump.pump();
    assert_eq!(slog.borrow().data, b"last words");
    assert!(matches!(
        slog.borrow()
            .lost
            .clone()
            .unwrap()
            .downcast_ref::<ConnectionError>(),
        Some(ConnectionError::Done)
    ));
}

#[test]
fn peer_closing_without_close_notify_is_truncation() {
    let (pump, slog, clog) = localhost_loopback();
    clog.transport().unwrap().write(b"x");
    pump.pump();
    // Close the raw transport under the client's TLS layer: no close_notify is sent.
    pump.client_transport().lose_connection();
    pump.pump();
    let slost = slog.borrow().lost.clone().unwrap();
    assert!(matches!(tls_error(&slost), TlsError::Truncated), "{slost}");
}

struct Panicky(Log);
impl torsion_core::Protocol for Panicky {
    fn data_received(&mut self, _data: &[u8]) {
        panic!("bug in the inner protocol");
    }
    fn connection_lost(&mut self, reason: torsion_core::Failure) {
        self.0.borrow_mut().lost = Some(reason);
    }
}

#[test]
fn a_panicking_inner_protocol_aborts_only_its_connection() {
    let pki = Pki::new("CA");
    let plog = Log::default();
    let server = TlsProtocol::server(
        Box::new(Panicky(plog.clone())),
        pki.server_config(&["localhost"]),
    );
    let (client, clog) = AccumulatingProtocol::new();
    let client = TlsProtocol::client(Box::new(client), pki.client_config(), "localhost");
    let pump = LoopbackPump::connect(Box::new(server), Box::new(client));
    clog.transport().unwrap().write(b"boom");
    pump.pump();
    assert!(pump.closed());
    let lost = clog.lost().expect("client saw the abort");
    assert!(!lost.is_panic());
    let plost = plog
        .borrow()
        .lost
        .clone()
        .expect("the panicked protocol is told");
    assert!(
        matches!(
            plost.downcast_ref::<ConnectionError>(),
            Some(ConnectionError::ProtocolPanicked(m)) if m.contains("bug in the inner protocol")
        ),
        "{plost}"
    );
    // A second connection with the same configuration works.
    let (pump2, _slog, clog2) = loopback(
        pki.server_config(&["localhost"]),
        pki.client_config(),
        "localhost",
    );
    clog2.transport().unwrap().write(b"fine");
    pump2.pump();
    assert_eq!(clog2.data(), b"fine");
}

/// A pull (non-streaming) producer: writes one piece each time it is asked.
struct Pull {
    t: std::cell::OnceCell<Transport>,
    left: std::cell::Cell<usize>,
}
impl torsion_core::Producer for Pull {
    fn pause_producing(&self) {}
    fn resume_producing(&self) {
        let Some(t) = self.t.get() else { return };
        let left = self.left.get();
        if left == 0 {
            t.unregister_producer();
            t.lose_connection();
            return;
        }
        self.left.set(left - 1);
        t.write(&[b'p'; 32 * 1024]);
    }
    fn stop_producing(&self) {}
}

struct PullServer(Rc<Pull>);
impl torsion_core::Protocol for PullServer {
    fn connection_made(&mut self, t: Transport) {
        let _ = self.0.t.set(t.clone());
        t.register_producer(self.0.clone(), false).unwrap();
    }
    fn data_received(&mut self, _data: &[u8]) {}
}

#[test]
fn pull_producer_through_tls_over_tcp() {
    let pki = Pki::new("CA");
    let reactor = Reactor::new().unwrap();
    let pull = Rc::new(Pull {
        t: std::cell::OnceCell::new(),
        left: std::cell::Cell::new(64),
    });
    let p2 = pull.clone();
    let port = listen_ssl(
        &reactor,
        "127.0.0.1:0".parse().unwrap(),
        torsion_core::factory_fn(move || PullServer(p2.clone())),
        pki.server_config(&["localhost"]),
    )
    .unwrap();
    let torsion_core::Address::Tcp(addr) = port.host() else {
        panic!()
    };
    let client = OneClient::new(b"", None);
    connect_ssl(
        &reactor,
        addr,
        client.clone(),
        pki.client_config(),
        "localhost",
        ConnectOptions::default(),
    )
    .unwrap();
    let c = client.clone();
    assert!(run_until(&reactor, Duration::from_secs(15), move || c
        .log
        .borrow()
        .lost
        .is_some()));
    assert_eq!(client.log.borrow().data.len(), 64 * 32 * 1024);
    assert!(matches!(
        client
            .log
            .borrow()
            .lost
            .clone()
            .unwrap()
            .downcast_ref::<ConnectionError>(),
        Some(ConnectionError::Done)
    ));
}

#[test]
fn platform_verifier_rejects_a_private_ca() {
    // The operating system does not trust our throw-away CA.
    let pki = Pki::new("CA");
    let (client, _sf) = tcp_attempt(
        pki.server_config(&["localhost"]),
        TlsClientConfig::platform().expect("platform verifier"),
        "localhost",
    );
    let failed = client.log.borrow().failed.clone().expect("rejected");
    assert!(
        matches!(
            tls_error(&failed),
            TlsError::Certificate(CertificateError::UnknownIssuer)
        ),
        "{failed}"
    );
}

/// Replies once the peer has finished sending (half-close).
struct ReplyAtEnd {
    t: Option<Transport>,
    got: Vec<u8>,
    log: Log,
}
impl torsion_core::Protocol for ReplyAtEnd {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.got.extend_from_slice(data);
    }
    fn half_closeable(&self) -> bool {
        true
    }
    fn read_connection_lost(&mut self) {
        let t = self.t.clone().unwrap();
        t.write(format!("got {} bytes", self.got.len()).as_bytes());
        t.lose_connection();
    }
    fn connection_lost(&mut self, reason: torsion_core::Failure) {
        self.log.borrow_mut().lost = Some(reason);
    }
}

#[test]
fn half_close_through_tls() {
    let pki = Pki::new("CA");
    let slog = Log::default();
    let server = TlsProtocol::server(
        Box::new(ReplyAtEnd {
            t: None,
            got: Vec::new(),
            log: slog.clone(),
        }),
        pki.server_config(&["localhost"]),
    );
    let (client, clog) = AccumulatingProtocol::half_closeable();
    let client = TlsProtocol::client(Box::new(client), pki.client_config(), "localhost");
    let pump = LoopbackPump::connect(Box::new(server), Box::new(client));
    let ct = clog.transport().unwrap();
    ct.write(b"12345");
    pump.pump();
    // close_notify in our direction only; we keep reading.
    ct.lose_write_connection();
    pump.pump();
    assert_eq!(clog.data(), b"got 5 bytes");
    assert!(
        clog.0.borrow().read_closed,
        "the server's close_notify ended our reading side"
    );
    assert!(slog.borrow().lost.is_some());
}
