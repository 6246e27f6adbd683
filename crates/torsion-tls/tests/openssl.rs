//! Interop with OpenSSL (installed by scripts/test.sh from scripts/apt.d/tls.txt):
//! `openssl s_client` against a Torsion TLS echo server, and Torsion's TLS
//! client against `openssl s_server` — with SNI, ALPN and client certificates.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use torsion_core::{Address, ConnectOptions, ConnectionError, Reactor};
use torsion_tls::*;

fn openssl() -> Command {
    let probe = Command::new("openssl").arg("version").output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "openssl is not installed: run scripts/test.sh (scripts/apt.d/tls.txt)"
    );
    Command::new("openssl")
}

/// Collects a child's output on a thread.
fn collect(r: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let o = out.clone();
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            o.lock().unwrap().push_str(&line);
            line.clear();
        }
    });
    out
}

struct Reaped(Child);
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Files {
    _dir: TempDir,
    ca: String,
    default_cert: String,
    default_key: String,
    b_cert: String,
    b_key: String,
    client_cert: String,
    client_key: String,
}

fn files(pki: &Pki, default: &Leaf, b: &Leaf, client: &Leaf) -> Files {
    let dir = TempDir::new();
    let p = |n: &str, c: &str| dir.write(n, c).display().to_string();
    Files {
        ca: p("ca.pem", &pki.ca_pem),
        default_cert: p("default.pem", &default.cert_pem),
        default_key: p("default.key", &default.key_pem),
        b_cert: p("b.pem", &b.cert_pem),
        b_key: p("b.key", &b.key_pem),
        client_cert: p("client.pem", &client.cert_pem),
        client_key: p("client.key", &client.key_pem),
        _dir: dir,
    }
}

fn s_client_against_torsion(extra: &[&str], then: Option<&[u8]>) -> (String, Log, Vec<u8>) {
    init_logging();
    let pki = Pki::new("Torsion Test CA");
    let (default, b, client) = (
        pki.server_leaf(&["localhost"]),
        pki.server_leaf(&["b.test"]),
        pki.client_leaf("alice"),
    );
    let f = files(&pki, &default, &b, &client);
    // The server loads its certificates from PEM files, as deployed.
    let config = TlsServerConfig::builder()
        .certificate(CertificateKey::from_pem_files(&f.default_cert, &f.default_key).unwrap())
        .sni_certificate(
            "b.test",
            CertificateKey::from_pem_files(&f.b_cert, &f.b_key).unwrap(),
        )
        .alpn(&[b"h2", b"http/1.1"])
        .require_client_certificates(TrustRoots::from_pem_file(&f.ca).unwrap())
        .build()
        .unwrap();
    let reactor = Reactor::new().unwrap();
    let sf = EchoFactory::new();
    let port = listen_ssl(&reactor, "127.0.0.1:0".parse().unwrap(), sf.clone(), config).unwrap();
    let Address::Tcp(addr) = port.host() else {
        panic!()
    };
    let mut child = openssl()
        .args(["s_client", "-connect", &addr.to_string()])
        .args(["-servername", "b.test", "-alpn", "h2"])
        .args(["-CAfile", &f.ca, "-verify_return_error"])
        .args(["-cert", &f.client_cert, "-key", &f.client_key])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let mut stdin = child.stdin.take().unwrap();
    let mut child = Reaped(child);
    stdin.write_all(b"hello torsion\n").unwrap();
    let o2 = out.clone();
    assert!(
        run_until(&reactor, Duration::from_secs(15), move || o2
            .lock()
            .unwrap()
            .contains("hello torsion")),
        "no echo; s_client said: {}{}",
        out.lock().unwrap(),
        err.lock().unwrap()
    );
    if let Some(more) = then {
        stdin.write_all(more).unwrap();
        let o3 = out.clone();
        let e3 = err.clone();
        run_until(&reactor, Duration::from_secs(5), move || {
            o3.lock().unwrap().contains("renegotiation")
                || e3.lock().unwrap().contains("renegotiation")
        });
    }
    drop(stdin); // EOF: s_client sends close_notify and exits
    let s2 = sf.clone();
    assert!(run_until(&reactor, Duration::from_secs(15), move || s2
        .log(0)
        .is_some_and(|l| l.borrow().lost.is_some())));
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.0.try_wait().unwrap().is_none() && Instant::now() < deadline {
        reactor.iterate(Some(Duration::from_millis(10))).unwrap();
    }
    let text = format!("{}{}", out.lock().unwrap(), err.lock().unwrap());
    (text, sf.log(0).unwrap(), client.der())
}

#[test]
fn openssl_s_client_talks_to_torsion_tls13_with_sni_alpn_client_cert() {
    let pki_check = |text: &str, log: &Log, client_der: &[u8]| {
        assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
        assert!(text.contains("ALPN protocol: h2"), "{text}");
        assert!(
            text.contains("CN = b.test"),
            "SNI certificate not served: {text}"
        );
        let l = log.borrow();
        assert_eq!(l.data, b"hello torsion\n");
        let t = l.transport.clone().unwrap();
        assert_eq!(
            t.negotiated_protocol().unwrap().as_deref(),
            Some(&b"h2"[..])
        );
        let info = t.handshake_info().unwrap().unwrap();
        assert_eq!(info.server_name.as_deref(), Some("b.test"));
        // s_client sends its chain (leaf first) as built from -CAfile.
        assert_eq!(
            info.peer_certificates.first().map(|c| c.as_ref()),
            Some(client_der),
            "client certificate not received"
        );
        let lost = l.lost.clone().unwrap();
        assert!(
            matches!(
                lost.downcast_ref::<ConnectionError>(),
                Some(ConnectionError::Done)
            ),
            "{lost}"
        );
        info
    };
    let (text, log, client_der) = s_client_against_torsion(&[], None);
    let info = pki_check(&text, &log, &client_der);
    assert!(text.contains("TLSv1.3"), "{text}");
    assert_eq!(info.version, Some(TlsVersion::Tls13));
}

#[test]
fn openssl_s_client_tls12() {
    let (text, log, client_der) = s_client_against_torsion(&["-tls1_2"], None);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("TLSv1.2"), "{text}");
    let l = log.borrow();
    assert_eq!(l.data, b"hello torsion\n");
    let t = l.transport.clone().unwrap();
    assert_eq!(t.tls_version().unwrap(), Some(TlsVersion::Tls12));
    assert!(t.cipher_suite().unwrap().unwrap().starts_with("TLS_ECDHE_"));
    assert_eq!(
        t.peer_certificate().unwrap().unwrap().as_ref(),
        &client_der[..]
    );
}

#[test]
fn openssl_renegotiation_attempt_is_refused() {
    // s_client's "R" command renegotiates a TLS 1.2 session; rustls refuses.
    let (text, log, _) = s_client_against_torsion(&["-tls1_2"], Some(b"R\n"));
    assert!(text.contains("no renegotiation"), "{text}");
    let l = log.borrow();
    assert_eq!(l.data, b"hello torsion\n");
    let lost = l.lost.clone().unwrap();
    assert!(!lost.is_panic());
    assert!(
        lost.check::<TlsError>() || lost.check::<ConnectionError>(),
        "untyped: {lost}"
    );
}

#[test]
fn openssl_tls11_is_refused() {
    init_logging();
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
    let child = openssl()
        .args(["s_client", "-connect", &addr.to_string(), "-tls1_1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _child = Reaped(child);
    let s2 = sf.clone();
    assert!(run_until(&reactor, Duration::from_secs(15), move || s2
        .log(0)
        .is_some_and(|l| l.borrow().lost.is_some())));
    let lost = sf.log(0).unwrap().borrow().lost.clone().unwrap();
    let e = lost.downcast_ref::<TlsError>().expect("typed error");
    assert!(
        matches!(
            e,
            TlsError::Incompatible(_) | TlsError::Protocol(_) | TlsError::ClosedDuringHandshake
        ),
        "{e}"
    );
}

#[test]
fn torsion_client_talks_to_openssl_s_server_with_sni_and_client_cert() {
    torsion_client_against_s_server("b.test");
}

#[test]
fn torsion_client_talks_to_openssl_s_server_with_alpn_and_client_cert() {
    // s_server only negotiates ALPN on its primary context (not after an SNI
    // switch to -cert2), so ALPN is checked with the default certificate.
    torsion_client_against_s_server("localhost");
}

fn torsion_client_against_s_server(name: &str) {
    init_logging();
    let pki = Pki::new("Torsion Test CA");
    let (default, b, client) = (
        pki.server_leaf(&["localhost"]),
        pki.server_leaf(&["b.test"]),
        pki.client_leaf("alice"),
    );
    let f = files(&pki, &default, &b, &client);
    let mut child = openssl()
        .args([
            "s_server",
            "-accept",
            "127.0.0.1:0",
            "-naccept",
            "1",
            "-rev",
        ])
        .args(["-cert", &f.default_cert, "-key", &f.default_key])
        .args([
            "-servername",
            "b.test",
            "-cert2",
            &f.b_cert,
            "-key2",
            &f.b_key,
        ])
        .args(["-alpn", "h2,http/1.1"])
        .args(["-Verify", "1", "-CAfile", &f.ca, "-verify_return_error"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = collect(child.stdout.take().unwrap());
    let err = collect(child.stderr.take().unwrap());
    let _child = Reaped(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let port = loop {
        let text = out.lock().unwrap().clone();
        if let Some(p) = text
            .lines()
            .find_map(|l| l.strip_prefix("ACCEPT 127.0.0.1:"))
            .and_then(|p| p.trim().parse::<u16>().ok())
        {
            break p;
        }
        assert!(Instant::now() < deadline, "s_server did not start: {text}");
        thread::sleep(Duration::from_millis(20));
    };
    let reactor = Reactor::new().unwrap();
    let client_cfg = TlsClientConfig::builder()
        .trust_roots(TrustRoots::from_pem_file(&f.ca).unwrap())
        .client_certificate(CertificateKey::from_pem_files(&f.client_cert, &f.client_key).unwrap())
        .alpn(&[b"http/1.1"])
        .build()
        .unwrap();
    let oc = OneClient::new(b"hello openssl\n", Some(14));
    connect_ssl(
        &reactor,
        format!("127.0.0.1:{port}").parse().unwrap(),
        oc.clone(),
        client_cfg,
        name,
        ConnectOptions::default(),
    )
    .unwrap();
    let o2 = oc.clone();
    assert!(
        run_until(&reactor, Duration::from_secs(15), move || o2
            .log
            .borrow()
            .lost
            .is_some()),
        "s_server said: {}{}",
        out.lock().unwrap(),
        err.lock().unwrap()
    );
    let l = oc.log.borrow();
    assert!(l.failed.is_none(), "{:?}", l.failed);
    assert_eq!(
        l.data, b"lssnepo olleh\n",
        "s_server -rev reverses the line"
    );
    let t = l.transport.clone().unwrap();
    assert_eq!(t.tls_version().unwrap(), Some(TlsVersion::Tls13));
    // s_server's output arrives through pipes: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let text = format!("{}{}", out.lock().unwrap(), err.lock().unwrap());
        if text.contains("CN = alice") || Instant::now() > deadline {
            break text;
        }
        thread::sleep(Duration::from_millis(20));
    };
    assert!(
        text.contains("CN = alice"),
        "client certificate not seen by s_server: {text}"
    );
    let expected = if name == "b.test" { &b } else { &default };
    assert_eq!(
        t.peer_certificate().unwrap().unwrap().as_ref(),
        &expected.der()[..],
        "SNI {name}: wrong certificate served"
    );
    if name == "localhost" {
        assert_eq!(
            t.negotiated_protocol().unwrap().as_deref(),
            Some(&b"http/1.1"[..])
        );
    }
}

#[test]
fn torsion_client_rejects_openssl_server_with_unknown_ca() {
    init_logging();
    let pki = Pki::new("Trusted CA");
    let rogue = Pki::new("Rogue CA");
    let leaf = rogue.server_leaf(&["localhost"]);
    let dir = TempDir::new();
    let cert = dir.write("c.pem", &leaf.cert_pem).display().to_string();
    let key = dir.write("k.pem", &leaf.key_pem).display().to_string();
    let mut child = openssl()
        .args([
            "s_server",
            "-accept",
            "127.0.0.1:0",
            "-naccept",
            "1",
            "-rev",
        ])
        .args(["-cert", &cert, "-key", &key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = collect(child.stdout.take().unwrap());
    let _child = Reaped(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let port = loop {
        let text = out.lock().unwrap().clone();
        if let Some(p) = text
            .lines()
            .find_map(|l| l.strip_prefix("ACCEPT 127.0.0.1:"))
            .and_then(|p| p.trim().parse::<u16>().ok())
        {
            break p;
        }
        assert!(Instant::now() < deadline, "s_server did not start: {text}");
        thread::sleep(Duration::from_millis(20));
    };
    let reactor = Reactor::new().unwrap();
    let oc = OneClient::new(b"x\n", None);
    connect_ssl(
        &reactor,
        format!("127.0.0.1:{port}").parse().unwrap(),
        oc.clone(),
        pki.client_config(),
        "localhost",
        ConnectOptions::default(),
    )
    .unwrap();
    let o2 = oc.clone();
    assert!(run_until(&reactor, Duration::from_secs(15), move || o2
        .log
        .borrow()
        .failed
        .is_some()));
    let failed = oc.log.borrow().failed.clone().unwrap();
    assert!(
        matches!(
            failed.downcast_ref::<TlsError>(),
            Some(TlsError::Certificate(CertificateError::UnknownIssuer))
        ),
        "{failed}"
    );
}
