//! The Agent over HTTPS (torsion-tls) against the Torsion server and Python's
//! http.server wrapped in TLS, hostname verification with typed errors, and
//! CONNECT tunnelling through a proxy written as a Torsion protocol.
#![cfg(feature = "tls")]

mod common;

use std::cell::RefCell;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer};
use rcgen::{KeyPair, KeyUsagePurpose};
use torsion_core::{factory_fn, ConnectOptions, Deferred, Failure, Protocol, Reactor, Transport};
use torsion_http::client::{AgentConfig, ClientError, Proxy};
use torsion_http::{handler_fn, Agent, HttpServer, Resource, Response, ServerConfig, Site, Tree};
use torsion_tls::{
    listen_ssl, CertificateError, CertificateKey, TlsClientConfig, TlsError, TlsServerConfig,
    TrustRoots,
};

/// A throw-away CA and leaves it issues (generated per test).
struct Pki {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "torsion-http test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for `names`.
    fn leaf(&self, names: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn server_config(&self, names: &[&str]) -> TlsServerConfig {
        let (c, k) = self.leaf(names);
        TlsServerConfig::builder()
            .certificate(CertificateKey::from_pem(c.as_bytes(), k.as_bytes()).unwrap())
            .build()
            .unwrap()
    }

    fn client_config(&self) -> TlsClientConfig {
        TlsClientConfig::with_roots(TrustRoots::from_pem(self.ca_pem.as_bytes()).unwrap()).unwrap()
    }
}

fn site() -> Site {
    let root = Tree::new();
    common::add_fast_and_echo(&root);
    root.put_child(
        "big",
        Rc::new(handler_fn(|_| async {
            Ok(
                Response::new(http::StatusCode::OK).with_body(torsion_http::Body::Bytes(
                    (0..3_000_000u32).map(|i| (i % 251) as u8).collect(),
                )),
            )
        })),
    );
    Site::new(Rc::new(root))
}

/// Runs `body` on a fresh reactor (bounded to 30 s); returns its result.
fn run<F, Fut>(body: F) -> Result<(), Failure>
where
    F: FnOnce(Reactor) -> Fut,
    Fut: Future<Output = Result<(), Failure>> + 'static,
{
    let reactor = Reactor::new().unwrap();
    let result: Rc<RefCell<Option<Result<(), Failure>>>> = Rc::default();
    let r2 = result.clone();
    let rr = reactor.clone();
    Deferred::from_future(&reactor, body(reactor.clone())).finally(move |r| {
        *r2.borrow_mut() = Some(r);
        let _ = rr.stop();
    });
    let rr = reactor.clone();
    reactor.call_later(Duration::from_secs(30), move || {
        let _ = rr.stop();
    });
    reactor.set_shutdown_grace(Duration::from_millis(100));
    reactor.run().unwrap();
    let r = result.borrow_mut().take();
    r.unwrap_or_else(|| Err(Failure::msg("timed out")))
}

/// Listens with HTTPS on 127.0.0.1 port 0 with a certificate for `names`.
fn https_server(reactor: &Reactor, pki: &Pki, names: &[&str]) -> u16 {
    let server = HttpServer::new(reactor, site(), ServerConfig::default());
    let port = listen_ssl(
        reactor,
        "127.0.0.1:0".parse().unwrap(),
        server.factory(),
        pki.server_config(names),
    )
    .unwrap();
    port.local_addr().port()
}

use common::text;

fn tls_agent(reactor: &Reactor, pki: &Pki, proxy: Option<Proxy>) -> Agent {
    Agent::with_config(
        reactor,
        AgentConfig {
            tls: Some(pki.client_config()),
            proxy,
            connect_timeout: Duration::from_secs(5),
            ..AgentConfig::default()
        },
    )
}

fn cert_error(f: &Failure) -> Option<CertificateError> {
    match f.downcast_ref::<TlsError>() {
        Some(TlsError::Certificate(c)) => Some(c.clone()),
        _ => None,
    }
}

#[test]
fn agent_https_against_torsion_verifies_hostname() {
    run(|reactor| async move {
        let pki = Pki::new();
        let good = https_server(&reactor, &pki, &["localhost", "127.0.0.1"]);
        let wrong = https_server(&reactor, &pki, &["other.example"]);
        let agent = tls_agent(&reactor, &pki, None);
        let base = format!("https://127.0.0.1:{good}");
        assert_eq!(
            text(agent.get(&format!("{base}/fast"))).await?,
            (200, "fast".into())
        );
        let (s, b) = text(agent.post(&format!("{base}/echo"), b"over tls".to_vec())).await?;
        assert_eq!((s, b.as_str()), (200, "POST over tls"));
        let r = agent.get(&format!("{base}/big")).await?;
        let body = r.bytes(8 << 20).await?;
        assert_eq!(body.len(), 3_000_000);
        assert!(body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        // All three went over one pooled TLS connection.
        assert_eq!(agent.open_connections("127.0.0.1", good), 1);

        // The certificate does not name 127.0.0.1: a typed WrongHostname.
        let f = agent
            .get(&format!("https://127.0.0.1:{wrong}/fast"))
            .await
            .expect_err("wrong hostname must fail");
        assert!(
            matches!(cert_error(&f), Some(CertificateError::WrongHostname { .. })),
            "{f:?}"
        );
        assert_eq!(agent.open_connections("127.0.0.1", wrong), 0);

        // The default (platform roots) does not trust the test CA.
        let platform = Agent::new(&reactor);
        let f = platform
            .get(&format!("{base}/fast"))
            .await
            .expect_err("an untrusted CA must fail");
        assert!(cert_error(&f).is_some(), "{f:?}");

        // Plain HTTP to the TLS port fails, it does not hang.
        let plain = Agent::with_config(
            &reactor,
            AgentConfig {
                response_timeout: Duration::from_secs(5),
                ..AgentConfig::default()
            },
        );
        assert!(plain
            .get(&format!("http://127.0.0.1:{good}/fast"))
            .await
            .is_err());
        Ok(())
    })
    .unwrap();
}

const PY_TLS_SERVER: &str = r#"
import functools, http.server, ssl, sys
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), h)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[2], sys.argv[3])
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

#[test]
fn agent_https_against_python_tls_server() {
    let pki = Pki::new();
    let dir = std::env::temp_dir().join(format!("torsion-agent-pytls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("www/sub")).unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("www/data.bin"), &data).unwrap();
    std::fs::write(dir.join("www/sub/f.txt"), "in sub").unwrap();
    let (cert, key) = pki.leaf(&["localhost", "127.0.0.1"]);
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(PY_TLS_SERVER)
        .arg(dir.join("www"))
        .arg(dir.join("cert.pem"))
        .arg(dir.join("key.pem"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 must be installed");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().expect("python printed its port");
    let result = run(move |reactor| async move {
        let agent = tls_agent(&reactor, &pki, None);
        let base = format!("https://127.0.0.1:{port}");
        common::browse_python_server(&agent, &base, &data).await
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap();
}

// ---------------------------------------------------------------------------
// A CONNECT proxy as a Torsion protocol
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Pipe {
    front: Option<Transport>,
    back: Option<Transport>,
    /// Client bytes that arrived before the upstream connection stood.
    pending: Vec<u8>,
}

struct ProxyFront {
    reactor: Reactor,
    log: Rc<RefCell<Vec<String>>>,
    buf: Vec<u8>,
    pipe: Rc<RefCell<Pipe>>,
    tunnel: bool,
}

struct ProxyBack(Rc<RefCell<Pipe>>);

impl Protocol for ProxyBack {
    fn connection_made(&mut self, t: Transport) {
        let mut p = self.0.borrow_mut();
        if let Some(f) = &p.front {
            f.write(b"HTTP/1.1 200 Connection established\r\n\r\n");
        }
        let pending = std::mem::take(&mut p.pending);
        t.write(&pending);
        p.back = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        if let Some(f) = &self.0.borrow().front {
            f.write(data);
        }
    }
    fn connection_lost(&mut self, _reason: Failure) {
        if let Some(f) = &self.0.borrow().front {
            f.lose_connection();
        }
    }
}

impl Protocol for ProxyFront {
    fn connection_made(&mut self, t: Transport) {
        self.pipe.borrow_mut().front = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        if self.tunnel {
            let mut p = self.pipe.borrow_mut();
            match &p.back {
                Some(b) => b.write(data),
                None => p.pending.extend_from_slice(data),
            }
            return;
        }
        self.buf.extend_from_slice(data);
        let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return;
        };
        let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        let rest = self.buf.split_off(end + 4);
        let first = head.lines().next().unwrap_or("").to_string();
        self.log.borrow_mut().push(first.clone());
        let front = self.pipe.borrow().front.clone();
        let Some(front) = front else { return };
        let target = first
            .strip_prefix("CONNECT ")
            .and_then(|r| r.strip_suffix(" HTTP/1.1"))
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let Some(target) = target.filter(|a| a.port() != 9) else {
            front.write(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n");
            front.lose_connection();
            return;
        };
        self.tunnel = true;
        self.pipe.borrow_mut().pending = rest;
        let pipe = self.pipe.clone();
        self.reactor.connect_tcp(
            target,
            factory_fn(move || ProxyBack(pipe.clone())),
            ConnectOptions::default(),
        );
    }
    fn connection_lost(&mut self, _reason: Failure) {
        if let Some(b) = &self.pipe.borrow().back {
            b.lose_connection();
        }
    }
}

/// Starts the proxy on 127.0.0.1 port 0; returns its port and the request lines it saw.
fn connect_proxy(reactor: &Reactor) -> (u16, Rc<RefCell<Vec<String>>>) {
    let log: Rc<RefCell<Vec<String>>> = Rc::default();
    let (r, l) = (reactor.clone(), log.clone());
    let port = reactor
        .listen_tcp(
            "127.0.0.1:0".parse().unwrap(),
            factory_fn(move || ProxyFront {
                reactor: r.clone(),
                log: l.clone(),
                buf: Vec::new(),
                pipe: Rc::default(),
                tunnel: false,
            }),
        )
        .unwrap();
    (port.local_addr().port(), log)
}

#[test]
fn agent_tunnels_http_and_https_through_connect_proxy() {
    run(|reactor| async move {
        let pki = Pki::new();
        let tls_port = https_server(&reactor, &pki, &["127.0.0.1"]);
        let wrong = https_server(&reactor, &pki, &["other.example"]);
        let plain = HttpServer::new(&reactor, site(), ServerConfig::default());
        let plain_port = plain
            .listen_tcp("127.0.0.1:0".parse().unwrap())
            .unwrap()
            .local_addr()
            .port();
        let (proxy_port, log) = connect_proxy(&reactor);
        let agent = tls_agent(&reactor, &pki, Some(Proxy::new("127.0.0.1", proxy_port)));

        let (s, b) = text(agent.post(
            &format!("https://127.0.0.1:{tls_port}/echo"),
            b"tunnelled".to_vec(),
        ))
        .await?;
        assert_eq!((s, b.as_str()), (200, "POST tunnelled"));
        let r = agent
            .get(&format!("https://127.0.0.1:{tls_port}/big"))
            .await?;
        assert_eq!(r.bytes(8 << 20).await?.len(), 3_000_000);
        assert_eq!(
            text(agent.get(&format!("http://127.0.0.1:{plain_port}/fast"))).await?,
            (200, "fast".into())
        );
        // The https requests shared one tunnel; the http one opened another.
        assert_eq!(
            *log.borrow(),
            vec![
                format!("CONNECT 127.0.0.1:{tls_port} HTTP/1.1"),
                format!("CONNECT 127.0.0.1:{plain_port} HTTP/1.1"),
            ]
        );

        // Hostname verification is end to end, through the tunnel.
        let f = agent
            .get(&format!("https://127.0.0.1:{wrong}/fast"))
            .await
            .expect_err("wrong hostname through the tunnel must fail");
        assert!(
            matches!(cert_error(&f), Some(CertificateError::WrongHostname { .. })),
            "{f:?}"
        );

        // The proxy refuses port 9: a typed ProxyRefused(403).
        let f = agent
            .get("http://127.0.0.1:9/")
            .await
            .expect_err("refused CONNECT must fail");
        assert!(
            matches!(
                f.downcast_ref::<ClientError>(),
                Some(ClientError::ProxyRefused(s)) if s.as_u16() == 403
            ),
            "{f:?}"
        );
        Ok(())
    })
    .unwrap();
}

/// A "proxy" that answers every connection with `reply` and closes.
struct BadProxy(&'static [u8]);

impl Protocol for BadProxy {
    fn connection_made(&mut self, t: Transport) {
        if !self.0.is_empty() {
            t.write(self.0);
        }
        t.lose_connection();
    }
    fn data_received(&mut self, _data: &[u8]) {}
}

#[test]
fn agent_reports_bad_proxies_as_typed_errors() {
    run(|reactor| async move {
        for (reply, want) in [
            (&b"garbage\r\n\r\n"[..], "malformed response"),
            (&b""[..], "the proxy closed before answering CONNECT"),
            (
                &b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n"[..],
                "407",
            ),
        ] {
            let port = reactor
                .listen_tcp(
                    "127.0.0.1:0".parse().unwrap(),
                    factory_fn(move || BadProxy(reply)),
                )
                .unwrap()
                .local_addr()
                .port();
            let agent = Agent::with_config(
                &reactor,
                AgentConfig {
                    proxy: Some(Proxy::new("127.0.0.1", port)),
                    ..AgentConfig::default()
                },
            );
            let f = agent
                .get("http://127.0.0.1:9/")
                .await
                .expect_err("a bad proxy must fail the request");
            let e = f.downcast_ref::<ClientError>();
            let ok = match e {
                Some(ClientError::BadProxyResponse(r)) => *r == want,
                Some(ClientError::ProxyRefused(s)) => s.as_str() == want,
                _ => false,
            };
            assert!(ok, "{want}: {f:?}");
            assert_eq!(agent.open_connections("127.0.0.1", 9), 0);
        }
        Ok(())
    })
    .unwrap();
}
