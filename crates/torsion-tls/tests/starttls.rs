//! STARTTLS: a line protocol switches to TLS mid-stream on both sides.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use torsion_core::testing::{LoopbackPump, StringTransport};
use torsion_core::{factory_fn, ConnectOptions, Failure, Protocol, Reactor, Transport};
use torsion_tls::*;

#[derive(Default)]
struct Lines {
    lines: Vec<String>,
    tls_at: Vec<Option<TlsVersion>>,
    lost: Option<Failure>,
    start_error: Option<StartTlsError>,
}

/// Server: echoes lines; on `STARTTLS` says `READY` (unless silent) and switches.
struct LineServer {
    t: Option<Transport>,
    buf: Vec<u8>,
    config: TlsServerConfig,
    announce: bool,
    log: Rc<RefCell<Lines>>,
}

impl Protocol for LineServer {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let Some(t) = self.t.clone() else { return };
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
            let rest = self.buf.split_off(pos + 1);
            self.buf.clear();
            {
                let mut l = self.log.borrow_mut();
                l.lines.push(line.clone());
                l.tls_at.push(t.tls_version().ok().flatten());
            }
            if line == "STARTTLS" {
                if self.announce {
                    t.write(b"READY\n");
                }
                // Whatever followed the command is TLS: hand it back.
                if let Err(e) = t.start_tls_server(self.config.clone(), &rest) {
                    self.log.borrow_mut().start_error = Some(e);
                }
                return;
            }
            t.write(format!("echo: {line}\n").as_bytes());
            self.buf = rest;
        }
    }
    fn connection_lost(&mut self, reason: Failure) {
        self.log.borrow_mut().lost = Some(reason);
    }
}

/// Client: says `PLAIN`, asks for `STARTTLS`, switches on `READY` (or at
/// once when `eager`), then says `SECRET` over TLS.
struct LineClient {
    t: Option<Transport>,
    buf: Vec<u8>,
    config: TlsClientConfig,
    eager: bool,
    log: Rc<RefCell<Lines>>,
}

impl Protocol for LineClient {
    fn connection_made(&mut self, t: Transport) {
        if self.eager {
            t.write(b"STARTTLS\n");
            t.start_tls_client(self.config.clone(), "localhost", &[])
                .unwrap();
            t.write(b"SECRET\n");
        } else {
            t.write(b"PLAIN\nSTARTTLS\n");
        }
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        let Some(t) = self.t.clone() else { return };
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
            let rest = self.buf.split_off(pos + 1);
            self.buf = rest;
            {
                let mut l = self.log.borrow_mut();
                l.lines.push(line.clone());
                l.tls_at.push(t.tls_version().ok().flatten());
            }
            if line == "READY" {
                let rest = std::mem::take(&mut self.buf);
                t.start_tls_client(self.config.clone(), "localhost", &rest)
                    .unwrap();
                assert_eq!(
                    t.start_tls_client(self.config.clone(), "localhost", &[])
                        .unwrap_err()
                        .to_string(),
                    StartTlsError::AlreadyStarted.to_string()
                );
                t.write(b"SECRET\n");
                return;
            }
            if line == "echo: SECRET" {
                t.lose_connection();
            }
        }
    }
    fn connection_lost(&mut self, reason: Failure) {
        self.log.borrow_mut().lost = Some(reason);
    }
}

fn pair(
    pki: &Pki,
    announce: bool,
    eager: bool,
) -> (
    StartTlsProtocol,
    StartTlsProtocol,
    Rc<RefCell<Lines>>,
    Rc<RefCell<Lines>>,
) {
    let slog = Rc::new(RefCell::new(Lines::default()));
    let clog = Rc::new(RefCell::new(Lines::default()));
    let server = StartTlsProtocol::new(Box::new(LineServer {
        t: None,
        buf: Vec::new(),
        config: pki.server_config(&["localhost"]),
        announce,
        log: slog.clone(),
    }));
    let client = StartTlsProtocol::new(Box::new(LineClient {
        t: None,
        buf: Vec::new(),
        config: pki.client_config(),
        eager,
        log: clog.clone(),
    }));
    (server, client, slog, clog)
}

#[test]
fn starttls_mid_stream_both_sides_over_loopback() {
    let pki = Pki::new("CA");
    let (server, client, slog, clog) = pair(&pki, true, false);
    let pump = LoopbackPump::connect(Box::new(server), Box::new(client));
    pump.pump();
    let s = slog.borrow();
    assert_eq!(s.lines, ["PLAIN", "STARTTLS", "SECRET"]);
    assert_eq!(s.tls_at, [None, None, Some(TlsVersion::Tls13)]);
    let c = clog.borrow();
    assert_eq!(c.lines, ["echo: PLAIN", "READY", "echo: SECRET"]);
    assert_eq!(c.tls_at, [None, None, Some(TlsVersion::Tls13)]);
    assert!(c.lost.is_some(), "client closed after the TLS echo");
}

#[test]
fn client_hello_pipelined_after_the_command_is_read_as_tls() {
    // The client sends STARTTLS and its ClientHello without waiting: the
    // server gets both in one chunk and must hand the hello to TLS.
    let pki = Pki::new("CA");
    let (server, client, slog, clog) = pair(&pki, false, true);
    let pump = LoopbackPump::connect(Box::new(server), Box::new(client));
    pump.pump();
    let s = slog.borrow();
    assert_eq!(s.lines, ["STARTTLS", "SECRET"]);
    assert_eq!(s.tls_at, [None, Some(TlsVersion::Tls13)]);
    assert_eq!(clog.borrow().lines, ["echo: SECRET"]);
}

#[test]
fn plaintext_injected_after_starttls_is_never_processed() {
    let pki = Pki::new("CA");
    let slog = Rc::new(RefCell::new(Lines::default()));
    let server = StartTlsProtocol::new(Box::new(LineServer {
        t: None,
        buf: Vec::new(),
        config: pki.server_config(&["localhost"]),
        announce: true,
        log: slog.clone(),
    }));
    let (attacker, alog) = torsion_core::testing::AccumulatingProtocol::new();
    let pump = LoopbackPump::connect(Box::new(server), Box::new(attacker));
    pump.client_transport()
        .write(b"STARTTLS\nINJECTED COMMAND\n");
    pump.pump();
    let s = slog.borrow();
    assert_eq!(s.lines, ["STARTTLS"], "injected line was processed");
    let lost = s.lost.clone().expect("connection closed");
    assert!(
        matches!(lost.downcast_ref::<TlsError>(), Some(TlsError::NotTls(_))),
        "{lost}"
    );
    assert!(alog.data().starts_with(b"READY\n"));
}

#[test]
fn starttls_over_tcp() {
    init_logging();
    let pki = Pki::new("CA");
    let reactor = Reactor::new().unwrap();
    let slog = Rc::new(RefCell::new(Lines::default()));
    let clog = Rc::new(RefCell::new(Lines::default()));
    let (s2, cfg) = (slog.clone(), pki.server_config(&["localhost"]));
    let port = reactor
        .listen_tcp(
            "127.0.0.1:0".parse().unwrap(),
            factory_fn(move || {
                StartTlsProtocol::new(Box::new(LineServer {
                    t: None,
                    buf: Vec::new(),
                    config: cfg.clone(),
                    announce: true,
                    log: s2.clone(),
                }))
            }),
        )
        .unwrap();
    let addr = match port.host() {
        torsion_core::Address::Tcp(a) => a,
        other => panic!("{other:?}"),
    };
    let (c2, ccfg) = (clog.clone(), pki.client_config());
    reactor.connect_tcp(
        addr,
        factory_fn(move || {
            StartTlsProtocol::new(Box::new(LineClient {
                t: None,
                buf: Vec::new(),
                config: ccfg.clone(),
                eager: false,
                log: c2.clone(),
            }))
        }),
        ConnectOptions::default(),
    );
    let (s3, c3) = (slog.clone(), clog.clone());
    assert!(run_until(&reactor, Duration::from_secs(10), move || {
        s3.borrow().lost.is_some() && c3.borrow().lost.is_some()
    }));
    assert_eq!(slog.borrow().lines, ["PLAIN", "STARTTLS", "SECRET"]);
    assert_eq!(
        clog.borrow().lines,
        ["echo: PLAIN", "READY", "echo: SECRET"]
    );
}

#[test]
fn start_tls_needs_a_switchable_transport() {
    let pki = Pki::new("CA");
    let plain = StringTransport::new().transport();
    let err = plain
        .start_tls_server(pki.server_config(&["localhost"]), &[])
        .unwrap_err();
    assert!(matches!(err, StartTlsError::NotSwitchable));
}
