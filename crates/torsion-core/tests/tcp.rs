//! TCP over real sockets on 127.0.0.1: echo at scale, typed connection
//! errors, resets, half-close, stop_listening, fd leaks, shutdown.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::rc::Rc;
use std::time::Duration;

use common::*;
use torsion_core::testing::AccumulatingProtocol;
use torsion_core::{
    factory_fn, ConnectOptions, ConnectionError, ConnectorState, Failure, Protocol, Reactor,
    Transport,
};

const LIMIT: Duration = Duration::from_secs(30);

/// A client that sends `payload`, expects it back exactly, then closes.
struct EchoCheck {
    payload: Vec<u8>,
    got: Vec<u8>,
    t: Option<Transport>,
    ok: Rc<Cell<usize>>,
    bad: Rc<Cell<usize>>,
    lost: Rc<Cell<usize>>,
    total: usize,
    reactor: Reactor,
}

impl Protocol for EchoCheck {
    fn connection_made(&mut self, t: Transport) {
        // Several writes per connection (plain or vectored, by payload
        // length): all must come back in order.
        let (a, b) = (self.payload.len() / 3, 2 * self.payload.len() / 3);
        if self.payload.len().is_multiple_of(2) {
            t.write(&self.payload[..a]);
            t.write(&self.payload[a..]);
        } else {
            t.write_vectored(&[
                std::io::IoSlice::new(&self.payload[..a]),
                std::io::IoSlice::new(&self.payload[a..b]),
                std::io::IoSlice::new(&self.payload[b..]),
            ]);
        }
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.got.extend_from_slice(data);
        if self.got.len() >= self.payload.len() {
            if self.got == self.payload {
                self.ok.set(self.ok.get() + 1);
            } else {
                self.bad.set(self.bad.get() + 1);
            }
            if let Some(t) = &self.t {
                t.lose_connection();
            }
        }
    }
    fn connection_lost(&mut self, _reason: Failure) {
        self.lost.set(self.lost.get() + 1);
        if self.lost.get() == self.total {
            let _ = self.reactor.stop();
        }
    }
}

fn payload_for(i: usize) -> Vec<u8> {
    (0..(100 + i * 37 % 3000))
        .map(|k| (k as u8).wrapping_add(i as u8))
        .collect()
}

#[test]
fn thousand_concurrent_echo_connections_with_torsion_clients() {
    raise_fd_limit(4096);
    let reactor = Reactor::new().unwrap();
    let port = echo_server(&reactor);
    let addr = port.local_addr();
    let (ok, bad, lost) = (
        Rc::new(Cell::new(0)),
        Rc::new(Cell::new(0)),
        Rc::new(Cell::new(0)),
    );
    const N: usize = 1000;
    let failures = Rc::new(Cell::new(0));
    for i in 0..N {
        let (ok, bad, lost, r) = (ok.clone(), bad.clone(), lost.clone(), reactor.clone());
        let (f, outcome) = recording(
            move || EchoCheck {
                payload: payload_for(i),
                got: Vec::new(),
                t: None,
                ok: ok.clone(),
                bad: bad.clone(),
                lost: lost.clone(),
                total: N,
                reactor: r.clone(),
            },
            None,
        );
        reactor.connect_tcp(addr, f, ConnectOptions::default());
        // Keep the outcome alive only to count failures after the run.
        let failures = failures.clone();
        reactor.add_system_event_trigger(
            torsion_core::Phase::Before,
            torsion_core::SystemEvent::Shutdown,
            move || {
                if outcome.failed.borrow().is_some() {
                    failures.set(failures.get() + 1);
                }
                None
            },
        );
    }
    run_until_stopped(&reactor, LIMIT, "1000 echo connections");
    assert_eq!(failures.get(), 0, "connection attempts failed");
    assert_eq!(bad.get(), 0, "connections got wrong bytes back");
    assert_eq!(ok.get(), N);
}

#[test]
fn echo_with_std_clients_on_threads() {
    let reactor = Reactor::new().unwrap();
    let addr = echo_server(&reactor).local_addr();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || -> Result<usize, String> {
                let mut n = 0;
                for c in 0..25 {
                    let mut s = StdStream::connect(addr).map_err(|e| e.to_string())?;
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let msg: Vec<u8> = (0..(5000 + t * 100 + c)).map(|k| (k * 7) as u8).collect();
                    s.write_all(&msg).map_err(|e| e.to_string())?;
                    let mut back = vec![0; msg.len()];
                    s.read_exact(&mut back).map_err(|e| e.to_string())?;
                    if back != msg {
                        return Err(format!("thread {t} conn {c}: bytes differ"));
                    }
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let watcher = std::thread::spawn(move || {
        threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect::<Vec<_>>()
    });
    let results = wait_thread(&reactor, watcher);
    assert_eq!(results.len(), 8);
    for r in results {
        assert_eq!(r, Ok(25));
    }
}

#[test]
fn connection_refused_is_a_typed_error_delivered_later() {
    let reactor = Reactor::new().unwrap();
    let addr = {
        let l = StdListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (f, outcome) = recording(Echo::default, Some(reactor.clone()));
    let c = reactor.connect_tcp(addr, f, ConnectOptions::default());
    // Never reported from inside connect_tcp itself: callers may still be
    // setting up state the factory touches.
    assert!(outcome.failed.borrow().is_none());
    assert_eq!(outcome.started.get(), 1);
    run_until_stopped(&reactor, LIMIT, "refused");
    let f = outcome.failed.borrow().clone().expect("failed");
    assert!(
        matches!(conn_err(&f), ConnectionError::Refused(a) if a.contains(&addr.port().to_string())),
        "{f}"
    );
    assert_eq!(c.state(), ConnectorState::Disconnected);
}

/// A listener whose accept queue is full: further SYNs are dropped, so a
/// connect to it stays pending — on loopback, without any outside address.
fn full_backlog_listener() -> (socket2::Socket, Vec<StdStream>, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&any_local().into()).unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    // One connection fills a backlog of 0.
    let fill = vec![StdStream::connect(addr).unwrap()];
    (s, fill, addr)
}

#[test]
fn connect_timeout_is_a_typed_error() {
    let reactor = Reactor::new().unwrap();
    let (_l, _fill, addr) = full_backlog_listener();
    let (f, outcome) = recording(Echo::default, Some(reactor.clone()));
    let opts = ConnectOptions {
        timeout: Some(Duration::from_millis(300)),
        bind_address: None,
    };
    let t0 = std::time::Instant::now();
    reactor.connect_tcp(addr, f, opts);
    run_until_stopped(&reactor, LIMIT, "timeout");
    let f = outcome.failed.borrow().clone().expect("failed");
    assert!(matches!(conn_err(&f), ConnectionError::Timeout(_)), "{f}");
    assert!(t0.elapsed() >= Duration::from_millis(290));
}

#[test]
fn stop_connecting_reports_cancelled_and_factory_may_reconnect_from_the_callback() {
    let reactor = Reactor::new().unwrap();
    let (_l, _fill, addr) = full_backlog_listener();
    struct Again {
        reasons: RefCell<Vec<String>>,
        reactor: Reactor,
    }
    impl torsion_core::Factory for Again {
        fn build_protocol(&self, _: &torsion_core::Address) -> Option<Box<dyn Protocol>> {
            Some(Box::new(Echo::default()))
        }
    }
    impl torsion_core::ClientFactory for Again {
        fn client_connection_failed(&self, c: &torsion_core::Connector, reason: Failure) {
            let first = self.reasons.borrow().is_empty();
            self.reasons.borrow_mut().push(reason.to_string());
            assert!(matches!(conn_err(&reason), ConnectionError::Cancelled));
            if first {
                // Reconnecting from inside the failure callback must not trip a borrow.
                c.connect();
                assert_eq!(c.state(), ConnectorState::Connecting);
                c.stop_connecting();
            } else {
                let _ = self.reactor.stop();
            }
        }
    }
    let f = Rc::new(Again {
        reasons: RefCell::new(Vec::new()),
        reactor: reactor.clone(),
    });
    let c = reactor.connect_tcp(addr, f.clone(), ConnectOptions::default());
    let c2 = c.clone();
    reactor.call_later(Duration::from_millis(20), move || c2.stop_connecting());
    run_until_stopped(&reactor, LIMIT, "stop_connecting");
    assert_eq!(f.reasons.borrow().len(), 2, "{:?}", f.reasons.borrow());
    assert_eq!(c.state(), ConnectorState::Disconnected);
}

#[test]
fn dns_failure_is_a_typed_error_and_does_not_hang() {
    let reactor = Reactor::new().unwrap();
    let (f, outcome) = recording(Echo::default, Some(reactor.clone()));
    let opts = ConnectOptions {
        timeout: Some(Duration::from_secs(60)),
        bind_address: None,
    };
    reactor.connect_tcp_host("nonexistent.invalid", 80, f, opts);
    run_until_stopped(&reactor, Duration::from_secs(40), "dns");
    let f = outcome.failed.borrow().clone().expect("failed");
    assert!(
        matches!(conn_err(&f), ConnectionError::DnsLookup { host, .. } if host == "nonexistent.invalid"),
        "{f}"
    );
}

#[test]
fn connect_by_name_reaches_the_server() {
    let reactor = Reactor::new().unwrap();
    let port = echo_server(&reactor).local_addr().port();
    let (p, log) = AccumulatingProtocol::new();
    let slot = RefCell::new(Some(p));
    let (f, outcome) = recording(move || slot.borrow_mut().take().unwrap(), None);
    reactor.connect_tcp_host("localhost", port, f, ConnectOptions::default());
    let r = reactor.clone();
    let l2 = log.clone();
    reactor.call_when_running(move || {
        fn wait(r: Reactor, l: torsion_core::testing::AccumulatedLog) {
            if let Some(t) = l.transport() {
                if l.data().is_empty() && l.0.borrow().lost.is_none() {
                    t.write(b"ping");
                }
            }
            if l.data() == b"ping" {
                let _ = r.stop();
                return;
            }
            let r2 = r.clone();
            r.call_later(Duration::from_millis(5), move || wait(r2, l));
        }
        wait(r, l2)
    });
    run_until_stopped(&reactor, LIMIT, "connect by name");
    assert!(
        outcome.failed.borrow().is_none(),
        "{:?}",
        outcome.failed_error()
    );
    assert_eq!(log.data(), b"ping");
}

#[test]
fn bind_address_and_addresses_are_reported() {
    let reactor = Reactor::new().unwrap();
    let port = echo_server(&reactor);
    let server_addr = port.local_addr();
    assert_eq!(port.host(), torsion_core::Address::Tcp(server_addr));
    let local = {
        let l = StdListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (p, log) = AccumulatingProtocol::new();
    let slot = RefCell::new(Some(p));
    let r = reactor.clone();
    let (f, _o) = recording(move || slot.borrow_mut().take().unwrap(), None);
    let c = reactor.connect_tcp(
        server_addr,
        f,
        ConnectOptions {
            timeout: Some(Duration::from_secs(5)),
            bind_address: Some(local),
        },
    );
    let c2 = c.clone();
    let connected = Rc::new(Cell::new(false));
    let cn = connected.clone();
    stop_when(&reactor, move || {
        cn.set(c2.state() == ConnectorState::Connected && c2.transport().is_some());
        cn.get()
    });
    drop(r);
    run_until_stopped(&reactor, LIMIT, "connect with bind_address");
    assert!(connected.get());
    // Shutdown closed it.
    assert_eq!(c.state(), ConnectorState::Disconnected);
    let t = log.transport().expect("connected");
    assert_eq!(t.host(), torsion_core::Address::Tcp(local));
    assert_eq!(t.peer(), torsion_core::Address::Tcp(server_addr));
    assert_eq!(t.kind(), "TCP");
    assert!(t.set_tcp_keepalive(true).is_ok());
    assert!(t.set_tcp_nodelay(false).is_ok());
    assert!(t.unix_credentials().is_err());
}

#[test]
fn ipv6_loopback_echo() {
    let reactor = Reactor::new().unwrap();
    let port = match reactor.listen_tcp("[::1]:0".parse().unwrap(), factory_fn(Echo::default)) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("no IPv6 loopback here ({e}); skipping");
            return;
        }
    };
    let addr = port.local_addr();
    assert!(addr.is_ipv6());
    let t = std::thread::spawn(move || {
        let mut s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"six").unwrap();
        let mut b = [0; 3];
        s.read_exact(&mut b).unwrap();
        b
    });
    let r = reactor.clone();
    let t = Rc::new(RefCell::new(Some(t)));
    let t2 = t.clone();
    fn poll(r: Reactor, t: Rc<RefCell<Option<std::thread::JoinHandle<[u8; 3]>>>>) {
        if t.borrow().as_ref().unwrap().is_finished() {
            let _ = r.stop();
        } else {
            let r2 = r.clone();
            r.call_later(Duration::from_millis(5), move || poll(r2, t));
        }
    }
    poll(r, t2);
    run_until_stopped(&reactor, LIMIT, "ipv6");
    assert_eq!(&t.borrow_mut().take().unwrap().join().unwrap(), b"six");
}

/// Records how the connection ended; stops the reactor then.
struct LostRecorder {
    lost: Rc<RefCell<Option<Failure>>>,
    reactor: Reactor,
    received: Rc<Cell<usize>>,
}

impl Protocol for LostRecorder {
    fn data_received(&mut self, d: &[u8]) {
        self.received.set(self.received.get() + d.len());
    }
    fn connection_lost(&mut self, reason: Failure) {
        *self.lost.borrow_mut() = Some(reason);
        let _ = self.reactor.stop();
    }
}

fn reset_socket(s: &StdStream) {
    socket2::SockRef::from(s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

#[test]
fn peer_reset_is_delivered_as_connection_lost() {
    let reactor = Reactor::new().unwrap();
    let lost = Rc::new(RefCell::new(None));
    let (l, r) = (lost.clone(), reactor.clone());
    let port = reactor
        .listen_tcp(
            any_local(),
            factory_fn(move || LostRecorder {
                lost: l.clone(),
                reactor: r.clone(),
                received: Rc::new(Cell::new(0)),
            }),
        )
        .unwrap();
    let addr = port.local_addr();
    let peer = std::thread::spawn(move || {
        let mut s = StdStream::connect(addr).unwrap();
        s.write_all(b"some bytes first").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        reset_socket(&s);
        drop(s);
    });
    run_until_stopped(&reactor, LIMIT, "reset");
    peer.join().unwrap();
    let f = lost.borrow().clone().expect("lost");
    assert!(
        matches!(
            conn_err(&f),
            ConnectionError::Reset | ConnectionError::Lost(_)
        ),
        "{f}"
    );
}

/// Streams data to a peer that reads a little and then resets mid-write.
struct Firehose {
    t: Option<Transport>,
    lost: Rc<RefCell<Option<Failure>>>,
    reactor: Reactor,
}

impl Protocol for Firehose {
    fn connection_made(&mut self, t: Transport) {
        // Far more than the socket buffers hold: the write is still in progress
        // when the peer resets.
        let chunk = vec![0x5a; 1 << 20];
        for _ in 0..16 {
            t.write(&chunk);
        }
        self.t = Some(t);
    }
    fn data_received(&mut self, _d: &[u8]) {}
    fn connection_lost(&mut self, reason: Failure) {
        *self.lost.borrow_mut() = Some(reason);
        let _ = self.reactor.stop();
    }
}

#[test]
fn peer_resetting_mid_write_ends_the_connection_and_the_reactor_goes_on() {
    let reactor = Reactor::new().unwrap();
    let lost = Rc::new(RefCell::new(None));
    let (l, r) = (lost.clone(), reactor.clone());
    let port = reactor
        .listen_tcp(
            any_local(),
            factory_fn(move || Firehose {
                t: None,
                lost: l.clone(),
                reactor: r.clone(),
            }),
        )
        .unwrap();
    let addr = port.local_addr();
    let peer = std::thread::spawn(move || {
        let mut s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0; 64 * 1024];
        let mut got = 0;
        while got < 256 * 1024 {
            got += s.read(&mut buf).unwrap();
        }
        reset_socket(&s);
        drop(s);
        got
    });
    run_until_stopped(&reactor, LIMIT, "reset mid-write");
    assert!(peer.join().unwrap() >= 256 * 1024);
    let f = lost.borrow().clone().expect("lost");
    assert!(
        matches!(
            conn_err(&f),
            ConnectionError::Reset | ConnectionError::Lost(_)
        ),
        "{f}"
    );
    // The reactor still serves: a plain echo round trip on a new port.
    let echo = echo_server(&reactor).local_addr();
    let c = std::thread::spawn(move || {
        let mut s = StdStream::connect(echo).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"still here").unwrap();
        let mut b = [0; 10];
        s.read_exact(&mut b).unwrap();
        b
    });
    let r = reactor.clone();
    fn poll(r: Reactor, c: Rc<RefCell<Option<std::thread::JoinHandle<[u8; 10]>>>>) {
        if c.borrow().as_ref().unwrap().is_finished() {
            let _ = r.stop();
        } else {
            let r2 = r.clone();
            r.call_later(Duration::from_millis(5), move || poll(r2, c));
        }
    }
    let c = Rc::new(RefCell::new(Some(c)));
    poll(r, c.clone());
    run_until_stopped(&reactor, LIMIT, "echo after reset");
    assert_eq!(
        &c.borrow_mut().take().unwrap().join().unwrap(),
        b"still here"
    );
}

/// Half-closeable server: collects input; when the peer stops sending it
/// answers with the input reversed plus a trailer, then closes.
struct Reverser {
    t: Option<Transport>,
    got: Vec<u8>,
    events: Rc<RefCell<Vec<String>>>,
}

impl Protocol for Reverser {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
    fn data_received(&mut self, d: &[u8]) {
        self.got.extend_from_slice(d);
    }
    fn half_closeable(&self) -> bool {
        true
    }
    fn read_connection_lost(&mut self) {
        self.events.borrow_mut().push("read_connection_lost".into());
        let t = self.t.as_ref().unwrap();
        let mut r = self.got.clone();
        r.reverse();
        t.write(&r);
        t.write(b"|done");
        t.lose_connection();
    }
    fn connection_lost(&mut self, reason: Failure) {
        self.events.borrow_mut().push(format!("lost: {reason}"));
    }
}

/// Starts a [`Reverser`] server on 127.0.0.1:0; returns its address and the
/// events its connections record.
fn reverser_server(reactor: &Reactor) -> (std::net::SocketAddr, Rc<RefCell<Vec<String>>>) {
    let events = Rc::new(RefCell::new(Vec::new()));
    let ev = events.clone();
    let addr = reactor
        .listen_tcp(
            any_local(),
            factory_fn(move || Reverser {
                t: None,
                got: Vec::new(),
                events: ev.clone(),
            }),
        )
        .unwrap()
        .local_addr();
    (addr, events)
}

#[test]
fn half_close_from_a_torsion_client() {
    let reactor = Reactor::new().unwrap();
    let (addr, events) = reverser_server(&reactor);
    let (p, log) = AccumulatingProtocol::half_closeable();
    let slot = RefCell::new(Some(p));
    let (f, outcome) = recording(
        move || slot.borrow_mut().take().unwrap(),
        Some(reactor.clone()),
    );
    reactor.connect_tcp(addr, f, ConnectOptions::default());
    let l2 = log.clone();
    fn when_connected(r: Reactor, l: torsion_core::testing::AccumulatedLog) {
        match l.transport() {
            Some(t) => {
                t.write(b"abc");
                t.write(b"def");
                t.lose_write_connection();
                // Writes after the half-close are dropped, not sent.
                t.write(b"ignored");
            }
            None => {
                let r2 = r.clone();
                r.call_later(Duration::from_millis(2), move || when_connected(r2, l));
            }
        }
    }
    when_connected(reactor.clone(), l2);
    run_until_stopped(&reactor, LIMIT, "half-close client");
    let acc = log.0.borrow();
    assert!(acc.write_closed, "write_connection_lost not called");
    assert_eq!(acc.data, b"fedcba|done");
    // The server closing after our half-close ends the connection cleanly.
    let lost = outcome
        .lost
        .borrow()
        .clone()
        .expect("client_connection_lost");
    assert!(matches!(conn_err(&lost), ConnectionError::Done), "{lost}");
    assert!(matches!(
        conn_err(acc.lost.as_ref().unwrap()),
        ConnectionError::Done
    ));
    assert_eq!(events.borrow()[0], "read_connection_lost");
}

/// Runs python3 with `script` (argv[1] = port); returns stdout, or None when
/// python3 is missing.
fn python(script: &str, port: u16) -> std::thread::JoinHandle<Option<(bool, String, String)>> {
    let script = script.to_string();
    std::thread::spawn(move || {
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(&script)
            .arg(port.to_string())
            .output()
            .ok()?;
        Some((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    })
}

fn wait_thread<T: 'static>(reactor: &Reactor, h: std::thread::JoinHandle<T>) -> T {
    let h = Rc::new(RefCell::new(Some(h)));
    fn poll<T: 'static>(r: Reactor, h: Rc<RefCell<Option<std::thread::JoinHandle<T>>>>) {
        if h.borrow().as_ref().unwrap().is_finished() {
            let _ = r.stop();
        } else {
            let r2 = r.clone();
            r.call_later(Duration::from_millis(5), move || poll(r2, h));
        }
    }
    poll(reactor.clone(), h.clone());
    run_until_stopped(reactor, LIMIT, "waiting for a peer thread");
    let h = h.borrow_mut().take().unwrap();
    h.join().unwrap()
}

const PY_HALF_CLOSE: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.sendall(b"hello world")
s.shutdown(socket.SHUT_WR)
data = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
print(data.decode())
"#;

#[test]
fn half_close_from_a_python_peer() {
    let reactor = Reactor::new().unwrap();
    let (addr, events) = reverser_server(&reactor);
    let port = addr.port();
    let Some((ok, out, err)) = wait_thread(&reactor, python(PY_HALF_CLOSE, port)) else {
        panic!("python3 is required (scripts/apt.d/core.txt)");
    };
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "dlrow olleh|done");
    let ev = events.borrow();
    assert_eq!(ev[0], "read_connection_lost");
}

/// The peer's data and its FIN arrive before the server first looks at the
/// socket: a plain (not half-closeable) echo server must still echo all of it
/// back, then close.
#[test]
fn data_and_fin_arriving_together_are_both_seen() {
    let reactor = Reactor::new().unwrap();
    let lost = Rc::new(RefCell::new(None));
    let l = lost.clone();
    struct EchoThenLost(Option<Transport>, Rc<RefCell<Option<Failure>>>);
    impl Protocol for EchoThenLost {
        fn connection_made(&mut self, t: Transport) {
            self.0 = Some(t);
        }
        fn data_received(&mut self, d: &[u8]) {
            self.0.as_ref().unwrap().write(d);
        }
        fn connection_lost(&mut self, r: Failure) {
            *self.1.borrow_mut() = Some(r);
        }
    }
    let addr = reactor
        .listen_tcp(
            any_local(),
            factory_fn(move || EchoThenLost(None, l.clone())),
        )
        .unwrap()
        .local_addr();
    // The peer connects, sends and half-closes before the reactor ever runs.
    let mut s = StdStream::connect(addr).unwrap();
    s.write_all(b"short message").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let peer = std::thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v).map(|_| v).map_err(|e| e.to_string())
    });
    let got = wait_thread(&reactor, peer);
    assert_eq!(got.as_deref(), Ok(&b"short message"[..]));
    let f = lost.borrow().clone().expect("connection_lost");
    assert!(matches!(conn_err(&f), ConnectionError::Done), "{f}");
}

const PY_READ_THEN_SEND: &str = r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
data = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
s.sendall(b"reply to " + data)
s.close()
print(data.decode())
"#;

/// Server side half-close: the server stops sending, the peer sees EOF, and
/// the server still receives what the peer sends afterwards.
#[test]
fn half_close_from_the_server_with_a_python_peer() {
    let reactor = Reactor::new().unwrap();
    struct Greeter(Option<Transport>, Rc<RefCell<Vec<String>>>, Vec<u8>);
    impl Protocol for Greeter {
        fn connection_made(&mut self, t: Transport) {
            t.write(b"greeting");
            t.lose_write_connection();
            self.0 = Some(t);
        }
        fn data_received(&mut self, d: &[u8]) {
            self.2.extend_from_slice(d);
        }
        fn half_closeable(&self) -> bool {
            true
        }
        fn write_connection_lost(&mut self) {
            self.1.borrow_mut().push("write_connection_lost".into());
        }
        fn read_connection_lost(&mut self) {
            self.1.borrow_mut().push(format!(
                "read_connection_lost {}",
                String::from_utf8_lossy(&self.2)
            ));
        }
        fn connection_lost(&mut self, r: Failure) {
            self.1.borrow_mut().push(format!("lost {r}"));
        }
    }
    let events = Rc::new(RefCell::new(Vec::new()));
    let ev = events.clone();
    let port = reactor
        .listen_tcp(
            any_local(),
            factory_fn(move || Greeter(None, ev.clone(), Vec::new())),
        )
        .unwrap()
        .local_addr()
        .port();
    let (ok, out, err) = wait_thread(&reactor, python(PY_READ_THEN_SEND, port)).expect("python3");
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "greeting");
    // The server saw the peer's reply and close before the peer exited and
    // wait_thread returned, or sees it now.
    let ev2 = events.clone();
    stop_when(&reactor, move || {
        ev2.borrow().iter().any(|e| e.starts_with("lost"))
    });
    run_until_stopped(&reactor, LIMIT, "server half-close");
    let ev = events.borrow();
    assert_eq!(
        *ev,
        vec![
            "write_connection_lost".to_string(),
            "read_connection_lost reply to greeting".to_string(),
            format!("lost {}", ConnectionError::Done),
        ]
    );
}

#[test]
fn stop_listening_frees_the_port() {
    let reactor = Reactor::new().unwrap();
    let port = echo_server(&reactor);
    let addr = port.local_addr();
    // The port is busy while listening.
    assert!(StdListener::bind(addr).is_err());
    let rebound = Rc::new(RefCell::new(None));
    let rb = rebound.clone();
    let r = reactor.clone();
    reactor.call_when_running(move || {
        port.stop_listening().add_callback(move |()| {
            *rb.borrow_mut() = Some(StdListener::bind(addr).map_err(|e| e.to_string()));
            let _ = r.stop();
        });
    });
    run_until_stopped(&reactor, LIMIT, "stop_listening");
    let rebound = rebound.borrow_mut().take().expect("deferred fired");
    let l = rebound.expect("port is free after stop_listening");
    assert_eq!(l.local_addr().unwrap(), addr);
    // And nothing of ours answers there any more: the only listener is the std one.
    drop(l);
    assert!(StdStream::connect(addr).is_err());
}

#[test]
fn stop_listening_keeps_established_connections_and_the_port_can_be_reused() {
    let reactor = Reactor::new().unwrap();
    let port = echo_server(&reactor);
    let addr = port.local_addr();
    let mut old = StdStream::connect(addr).unwrap();
    old.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let relisten = Rc::new(RefCell::new(None));
    let rl = relisten.clone();
    let r = reactor.clone();
    reactor.call_later(Duration::from_millis(20), move || {
        port.stop_listening().add_callback(move |()| {
            *rl.borrow_mut() = Some(r.listen_tcp(addr, factory_fn(Echo::default)).is_ok());
        });
    });
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let rl = relisten.clone();
    let r = reactor.clone();
    fn poll(r: Reactor, rl: Rc<RefCell<Option<bool>>>, go: std::sync::mpsc::Sender<()>) {
        if rl.borrow().is_some() {
            let _ = go.send(());
        } else {
            let r2 = r.clone();
            r.call_later(Duration::from_millis(2), move || poll(r2, rl, go));
        }
    }
    poll(r, rl, go_tx);
    let t = std::thread::spawn(move || {
        go_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        old.write_all(b"old").unwrap();
        let mut b = [0; 3];
        old.read_exact(&mut b).unwrap();
        let mut new = StdStream::connect(addr).unwrap();
        new.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        new.write_all(b"new").unwrap();
        let mut c = [0; 3];
        new.read_exact(&mut c).unwrap();
        (b, c)
    });
    let (b, c) = wait_thread(&reactor, t);
    assert_eq!(*relisten.borrow(), Some(true));
    assert_eq!((&b, &c), (b"old", b"new"));
}

/// Opens a connection, echoes one byte, closes; counts both ends' losses.
struct OneShot {
    t: Option<Transport>,
    lost: Rc<Cell<usize>>,
    on_lost: Rc<dyn Fn()>,
}

impl Protocol for OneShot {
    fn connection_made(&mut self, t: Transport) {
        t.write(b"x");
        self.t = Some(t);
    }
    fn data_received(&mut self, _d: &[u8]) {
        self.t.as_ref().unwrap().lose_connection();
    }
    fn connection_lost(&mut self, _r: Failure) {
        self.lost.set(self.lost.get() + 1);
        (self.on_lost)();
    }
}

#[test]
fn no_fd_leak_after_ten_thousand_connections() {
    raise_fd_limit(4096);
    let reactor = Reactor::new().unwrap();
    let server_lost = Rc::new(Cell::new(0usize));
    struct CountingEcho(Option<Transport>, Rc<Cell<usize>>);
    impl Protocol for CountingEcho {
        fn connection_made(&mut self, t: Transport) {
            self.0 = Some(t);
        }
        fn data_received(&mut self, d: &[u8]) {
            self.0.as_ref().unwrap().write(d);
        }
        fn connection_lost(&mut self, _: Failure) {
            self.1.set(self.1.get() + 1);
        }
    }
    let sl = server_lost.clone();
    // The poller and its waker exist already; everything else is counted.
    let before = torsion_core::open_fd_count().unwrap();
    let port = reactor
        .listen_tcp(
            any_local(),
            factory_fn(move || CountingEcho(None, sl.clone())),
        )
        .unwrap();
    let addr = port.local_addr();
    const BATCHES: usize = 100;
    const PER: usize = 100;
    let client_lost = Rc::new(Cell::new(0usize));
    let failed = Rc::new(Cell::new(0usize));
    let batch_done = Rc::new(Cell::new(0usize));
    fn start_batch(
        r: Reactor,
        addr: SocketAddr,
        batch: usize,
        client_lost: Rc<Cell<usize>>,
        batch_done: Rc<Cell<usize>>,
        failed: Rc<Cell<usize>>,
    ) {
        if batch == BATCHES {
            let _ = r.stop();
            return;
        }
        batch_done.set(0);
        let next: Rc<dyn Fn()> = {
            let (r, cl, bd, fl) = (
                r.clone(),
                client_lost.clone(),
                batch_done.clone(),
                failed.clone(),
            );
            Rc::new(move || {
                bd.set(bd.get() + 1);
                if bd.get() == PER {
                    let (r2, cl, bd, fl) = (r.clone(), cl.clone(), bd.clone(), fl.clone());
                    r.call_soon(move || start_batch(r2, addr, batch + 1, cl, bd, fl));
                }
            })
        };
        for _ in 0..PER {
            let (cl, n) = (client_lost.clone(), next.clone());
            let (f, outcome) = recording(
                move || OneShot {
                    t: None,
                    lost: cl.clone(),
                    on_lost: n.clone(),
                },
                None,
            );
            let fl = failed.clone();
            let n2 = next.clone();
            // A failed attempt also counts towards the batch, so a failure is
            // reported by the assertion below rather than as a hang.
            let _ = outcome;
            let failing = Rc::new(FailCount {
                inner: f,
                failed: fl,
                next: n2,
            });
            r.connect_tcp(addr, failing, ConnectOptions::default());
        }
    }
    struct FailCount<F> {
        inner: Rc<F>,
        failed: Rc<Cell<usize>>,
        next: Rc<dyn Fn()>,
    }
    impl<F: torsion_core::Factory> torsion_core::Factory for FailCount<F> {
        fn build_protocol(&self, p: &torsion_core::Address) -> Option<Box<dyn Protocol>> {
            self.inner.build_protocol(p)
        }
    }
    impl<F: torsion_core::Factory> torsion_core::ClientFactory for FailCount<F> {
        fn client_connection_failed(&self, _c: &torsion_core::Connector, _r: Failure) {
            self.failed.set(self.failed.get() + 1);
            (self.next)();
        }
    }
    start_batch(
        reactor.clone(),
        addr,
        0,
        client_lost.clone(),
        batch_done.clone(),
        failed.clone(),
    );
    let t0 = std::time::Instant::now();
    run_until_stopped(&reactor, Duration::from_secs(120), "10,000 connections");
    eprintln!("10,000 connections in {:?}", t0.elapsed());
    assert_eq!(failed.get(), 0);
    assert_eq!(client_lost.get(), BATCHES * PER);
    // The server side may see the last few closes a turn later.
    let sl = server_lost.clone();
    stop_when(&reactor, move || sl.get() == BATCHES * PER);
    run_until_stopped(&reactor, LIMIT, "server side closes");
    assert_eq!(server_lost.get(), BATCHES * PER);
    let after = torsion_core::open_fd_count().unwrap();
    // Shutdown closed the listening port too: back to where we started.
    assert_eq!(before, after, "file descriptors leaked");
    assert_eq!(reactor.source_count(), 0);
}

/// The server sends a banner the moment it accepts; the client's reactor is
/// busy and first looks when both "connected" and "readable" are already
/// reported in one event. The banner must still reach the protocol.
#[test]
fn data_arriving_with_the_connect_completion_is_delivered() {
    let reactor = Reactor::new().unwrap();
    let l = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.write_all(b"220 banner\r\n").unwrap();
        // Keep the connection open (no FIN to raise a second edge) until the test ends.
        let _ = done_rx.recv_timeout(Duration::from_secs(20));
    });
    let (p, log) = AccumulatingProtocol::new();
    let slot = RefCell::new(Some(p));
    let (f, _o) = recording(move || slot.borrow_mut().take().unwrap(), None);
    reactor.connect_tcp(addr, f, ConnectOptions::default());
    std::thread::sleep(Duration::from_millis(200));
    let r = reactor.clone();
    let l2 = log.clone();
    fn poll(r: Reactor, l: torsion_core::testing::AccumulatedLog) {
        if l.data() == b"220 banner\r\n" {
            let _ = r.stop();
        } else {
            let r2 = r.clone();
            r.call_later(Duration::from_millis(2), move || poll(r2, l));
        }
    }
    poll(r, l2);
    let finished = run_bounded(&reactor, Duration::from_secs(5));
    done_tx.send(()).unwrap();
    server.join().unwrap();
    assert!(finished, "banner never delivered: got {:?}", log.data());
}

#[test]
fn reactor_shutdown_closes_connections_gracefully() {
    let reactor = Reactor::new().unwrap();
    let server_lost = Rc::new(RefCell::new(Vec::<String>::new()));
    let sl = server_lost.clone();
    struct Farewell(Option<Transport>, Rc<RefCell<Vec<String>>>);
    impl Protocol for Farewell {
        fn connection_made(&mut self, t: Transport) {
            self.0 = Some(t);
        }
        fn data_received(&mut self, _d: &[u8]) {
            self.0.as_ref().unwrap().write(b"last words");
            self.1.borrow_mut().push("served".into());
        }
        fn connection_lost(&mut self, r: Failure) {
            self.1.borrow_mut().push(format!("{r}"));
        }
    }
    let addr = reactor
        .listen_tcp(any_local(), factory_fn(move || Farewell(None, sl.clone())))
        .unwrap()
        .local_addr();
    let peers: Vec<_> = (0..3)
        .map(|_| {
            let s = StdStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    let mut ps = peers;
    for p in &mut ps {
        p.write_all(b"hi").unwrap();
    }
    let readers = std::thread::spawn(move || {
        ps.into_iter()
            .map(|mut p| {
                let mut v = Vec::new();
                p.read_to_end(&mut v).map(|_| v).map_err(|e| e.to_string())
            })
            .collect::<Vec<_>>()
    });
    // Stop while the three connections are open: shutdown must close each
    // cleanly (connection_lost with Done, the peer sees EOF, not a reset).
    let sl = server_lost.clone();
    stop_when(&reactor, move || sl.borrow().len() == 3);
    run_until_stopped(&reactor, LIMIT, "shutdown");
    let mut expected = vec!["served".to_string(); 3];
    expected.extend(vec![ConnectionError::Done.to_string(); 3]);
    assert_eq!(*server_lost.borrow(), expected);
    for got in readers.join().unwrap() {
        assert_eq!(got.as_deref(), Ok(&b"last words"[..]));
    }
    assert_eq!(reactor.source_count(), 0);
}

#[test]
fn shutdown_aborts_connections_that_cannot_flush_within_the_grace_period() {
    let reactor = Reactor::new().unwrap();
    reactor.set_shutdown_grace(Duration::from_millis(300));
    let lost = Rc::new(RefCell::new(None));
    let (l, r) = (lost.clone(), reactor.clone());
    let addr = reactor
        .listen_tcp(
            any_local(),
            factory_fn(move || Firehose {
                t: None,
                lost: l.clone(),
                reactor: r.clone(),
            }),
        )
        .unwrap()
        .local_addr();
    // A peer that never reads.
    let peer = StdStream::connect(addr).unwrap();
    let r = reactor.clone();
    reactor.call_later(Duration::from_millis(100), move || r.stop().unwrap());
    let t0 = std::time::Instant::now();
    run_until_stopped(&reactor, LIMIT, "shutdown with stuck peer");
    assert!(t0.elapsed() < Duration::from_secs(10));
    let f = lost
        .borrow()
        .clone()
        .expect("connection_lost must run even when aborted");
    assert!(matches!(conn_err(&f), ConnectionError::Aborted), "{f}");
    assert_eq!(reactor.source_count(), 0);
    drop(peer);
}

#[test]
fn handles_to_closed_connections_fail_softly() {
    let reactor = Reactor::new().unwrap();
    let addr = echo_server(&reactor).local_addr();
    let (p, log) = AccumulatingProtocol::new();
    let slot = RefCell::new(Some(p));
    let (f, _o) = recording(
        move || slot.borrow_mut().take().unwrap(),
        Some(reactor.clone()),
    );
    reactor.connect_tcp(addr, f, ConnectOptions::default());
    let l2 = log.clone();
    fn when_connected(r: Reactor, l: torsion_core::testing::AccumulatedLog) {
        match l.transport() {
            Some(t) => t.abort_connection(),
            None => {
                let r2 = r.clone();
                r.call_later(Duration::from_millis(2), move || when_connected(r2, l));
            }
        }
    }
    when_connected(reactor.clone(), l2);
    run_until_stopped(&reactor, LIMIT, "abort");
    let t = log.transport().unwrap();
    assert!(!t.is_connected());
    assert!(matches!(
        conn_err(&log.lost().unwrap()),
        ConnectionError::Aborted
    ));
    // None of these may panic on a closed handle.
    t.write(b"late");
    t.write_vectored(&[std::io::IoSlice::new(b"a"), std::io::IoSlice::new(b"b")]);
    t.lose_connection();
    t.abort_connection();
    t.lose_write_connection();
    t.pause_producing();
    t.resume_producing();
    assert_eq!(t.write_buffer_len(), 0);
    let _ = t.set_tcp_nodelay(true);
    let _ = t.peer();
    assert!(t.register_producer(Rc::new(NullProducer), true).is_err());
    let _ = reactor.iterate(Some(Duration::ZERO));
}

struct NullProducer;
impl torsion_core::Producer for NullProducer {
    fn pause_producing(&self) {}
    fn resume_producing(&self) {}
    fn stop_producing(&self) {}
}

/// A client factory whose drop is observable.
struct DropFlag(Rc<Cell<bool>>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.set(true);
    }
}
impl torsion_core::Factory for DropFlag {
    fn build_protocol(&self, _: &torsion_core::Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(Echo::default()))
    }
}
impl torsion_core::ClientFactory for DropFlag {}

#[test]
fn finished_connection_attempts_release_their_factory() {
    let reactor = Reactor::new().unwrap();
    let addr = echo_server(&reactor).local_addr();
    let refused_addr = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let ok_dropped = Rc::new(Cell::new(false));
    let failed_dropped = Rc::new(Cell::new(false));
    let c1 = reactor.connect_tcp(
        addr,
        Rc::new(DropFlag(ok_dropped.clone())),
        ConnectOptions::default(),
    );
    let c2 = reactor.connect_tcp(
        refused_addr,
        Rc::new(DropFlag(failed_dropped.clone())),
        ConnectOptions::default(),
    );
    let r = reactor.clone();
    reactor.call_later(Duration::from_millis(100), move || r.stop().unwrap());
    run_until_stopped(&reactor, LIMIT, "attempts");
    assert!(
        !ok_dropped.get() && !failed_dropped.get(),
        "still referenced by the connectors"
    );
    drop((c1, c2));
    assert!(ok_dropped.get(), "a connected attempt leaked its factory");
    assert!(failed_dropped.get(), "a failed attempt leaked its factory");
}

#[test]
fn dropping_a_reactor_that_never_shut_down_closes_its_sockets() {
    let before = torsion_core::open_fd_count().unwrap();
    {
        let reactor = Reactor::new().unwrap();
        // Echo keeps its transport: a cycle through the connection.
        let addr = echo_server(&reactor).local_addr();
        let peer = StdStream::connect(addr).unwrap();
        for _ in 0..20 {
            reactor.iterate(Some(Duration::from_millis(10))).unwrap();
            if reactor.source_count() == 2 {
                break;
            }
        }
        assert_eq!(reactor.source_count(), 2);
        drop(reactor);
        drop(peer);
    }
    assert_eq!(torsion_core::open_fd_count().unwrap(), before);
}

/// Reading is paused while the peer's data and FIN arrive; on resume both are seen.
#[test]
fn eof_while_reading_is_paused_is_delivered_on_resume() {
    // Small: data and FIN both arrive during the pause (one edge, already consumed).
    paused_eof(100);
    // Large: the peer blocks on full buffers until reading resumes.
    paused_eof(3_000_000);
}

fn paused_eof(size: u32) {
    let reactor = Reactor::new().unwrap();
    let (p, log) = AccumulatingProtocol::new();
    let slot = RefCell::new(Some(p));
    struct PauseAtStart(AccumulatingProtocol);
    impl Protocol for PauseAtStart {
        fn connection_made(&mut self, t: Transport) {
            t.pause_producing();
            self.0.connection_made(t);
        }
        fn data_received(&mut self, d: &[u8]) {
            self.0.data_received(d)
        }
        fn connection_lost(&mut self, r: Failure) {
            self.0.connection_lost(r)
        }
    }
    let addr = reactor
        .listen_tcp(
            any_local(),
            factory_fn(move || PauseAtStart(slot.borrow_mut().take().unwrap())),
        )
        .unwrap()
        .local_addr();
    let mut peer = StdStream::connect(addr).unwrap();
    let big: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    let writer = {
        let big = big.clone();
        // Blocks once the kernel buffers are full, until the server reads again.
        std::thread::spawn(move || {
            peer.write_all(&big).unwrap();
            peer.shutdown(std::net::Shutdown::Write).unwrap();
            peer
        })
    };
    let at_resume = Rc::new(Cell::new(usize::MAX));
    let (l2, ar) = (log.clone(), at_resume.clone());
    reactor.call_later(Duration::from_millis(200), move || {
        ar.set(l2.data().len());
        l2.transport().unwrap().resume_producing();
    });
    let done = log.clone();
    stop_when(&reactor, move || done.lost().is_some());
    run_until_stopped(&reactor, LIMIT, "paused EOF");
    drop(writer.join().unwrap());
    assert_eq!(at_resume.get(), 0, "data delivered while paused");
    assert!(
        log.data() == big,
        "got {} of {} bytes",
        log.data().len(),
        big.len()
    );
    let f = log.lost().unwrap();
    assert!(matches!(conn_err(&f), ConnectionError::Done), "{f}");
}

/// A large upload followed at once by the peer's FIN: the half-closeable
/// server sees every byte and then read_connection_lost.
#[test]
fn large_upload_then_half_close_is_fully_read() {
    let reactor = Reactor::new().unwrap();
    let (addr, events) = reverser_server(&reactor);
    let big: Vec<u8> = (0..8_000_000u32).map(|i| (i % 251) as u8).collect();
    let expected: Vec<u8> = big.iter().rev().copied().chain(*b"|done").collect();
    let peer = std::thread::spawn(move || {
        let mut s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let reader = {
            let mut s = s.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut v = Vec::new();
                s.read_to_end(&mut v).map(|_| v).map_err(|e| e.to_string())
            })
        };
        s.write_all(&big).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        reader.join().unwrap()
    });
    let got = wait_thread(&reactor, peer).expect("read");
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "reply differs");
    assert_eq!(events.borrow()[0], "read_connection_lost");
}

/// After lose_connection the protocol hears no more data; the connection
/// still flushes everything and ends with a clean EOF for the peer.
#[test]
fn no_data_after_lose_connection_and_the_reply_still_arrives_whole() {
    let reactor = Reactor::new().unwrap();
    let calls = Rc::new(RefCell::new(Vec::<Vec<u8>>::new()));
    struct ReplyAndClose(Option<Transport>, Rc<RefCell<Vec<Vec<u8>>>>);
    impl Protocol for ReplyAndClose {
        fn connection_made(&mut self, t: Transport) {
            self.0 = Some(t);
        }
        fn data_received(&mut self, d: &[u8]) {
            self.1.borrow_mut().push(d.to_vec());
            let t = self.0.as_ref().unwrap();
            // Far more than the socket buffers: still flushing when "second" arrives.
            t.write(&vec![b'r'; 8 << 20]);
            t.lose_connection();
        }
    }
    let c = calls.clone();
    let addr = reactor
        .listen_tcp(
            any_local(),
            factory_fn(move || ReplyAndClose(None, c.clone())),
        )
        .unwrap()
        .local_addr();
    let peer = std::thread::spawn(move || {
        let mut s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(b"first").unwrap();
        std::thread::sleep(Duration::from_millis(150));
        s.write_all(b"second").unwrap();
        let mut v = Vec::new();
        s.read_to_end(&mut v)
            .map(|_| v.len())
            .map_err(|e| e.to_string())
    });
    let got = wait_thread(&reactor, peer);
    assert_eq!(got, Ok(8 << 20), "the reply was cut short");
    assert_eq!(*calls.borrow(), vec![b"first".to_vec()]);
}

#[test]
fn listening_on_a_busy_port_is_an_error_not_a_panic() {
    let reactor = Reactor::new().unwrap();
    let addr = echo_server(&reactor).local_addr();
    let e = reactor
        .listen_tcp(addr, factory_fn(Echo::default))
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
    // Backlog and SO_REUSEPORT options: two listeners may share a port.
    let opts = torsion_core::TcpListenOptions {
        backlog: 16,
        reuse_port: true,
        ipv6_only: true,
    };
    let a = reactor
        .listen_tcp_with(any_local(), factory_fn(Echo::default), opts.clone())
        .unwrap();
    let b = reactor
        .listen_tcp_with(a.local_addr(), factory_fn(Echo::default), opts)
        .unwrap();
    assert_eq!(a.local_addr(), b.local_addr());
}

#[test]
fn connector_disconnect_closes_an_established_connection() {
    let reactor = Reactor::new().unwrap();
    let addr = echo_server(&reactor).local_addr();
    let (p, log) = AccumulatingProtocol::new();
    let slot = RefCell::new(Some(p));
    let (f, outcome) = recording(
        move || slot.borrow_mut().take().unwrap(),
        Some(reactor.clone()),
    );
    let c = reactor.connect_tcp(addr, f, ConnectOptions::default());
    let c2 = c.clone();
    let l2 = log.clone();
    stop_when(&reactor, move || {
        if c2.state() == ConnectorState::Connected {
            // Not connecting any more: a no-op.
            c2.stop_connecting();
            c2.disconnect();
        }
        false
    });
    run_until_stopped(&reactor, LIMIT, "disconnect");
    let lost = outcome
        .lost
        .borrow()
        .clone()
        .expect("client_connection_lost");
    assert!(matches!(conn_err(&lost), ConnectionError::Done), "{lost}");
    assert!(outcome.failed.borrow().is_none());
    assert!(matches!(
        conn_err(&l2.lost().unwrap()),
        ConnectionError::Done
    ));
    assert_eq!(c.state(), ConnectorState::Disconnected);
    assert!(c.transport().is_none());
}

#[test]
fn server_abort_reaches_a_torsion_client_as_reset() {
    let reactor = Reactor::new().unwrap();
    struct AbortOnData(Option<Transport>);
    impl Protocol for AbortOnData {
        fn connection_made(&mut self, t: Transport) {
            self.0 = Some(t);
        }
        fn data_received(&mut self, _: &[u8]) {
            let t = self.0.as_ref().unwrap();
            t.write(b"never sent");
            t.abort_connection();
        }
    }
    let addr = reactor
        .listen_tcp(any_local(), factory_fn(|| AbortOnData(None)))
        .unwrap()
        .local_addr();
    let (p, log) = AccumulatingProtocol::new();
    let slot = RefCell::new(Some(p));
    let (f, outcome) = recording(
        move || slot.borrow_mut().take().unwrap(),
        Some(reactor.clone()),
    );
    reactor.connect_tcp(addr, f, ConnectOptions::default());
    let l2 = log.clone();
    let sent = Cell::new(false);
    stop_when(&reactor, move || {
        if let Some(t) = l2.transport() {
            if !sent.replace(true) {
                t.write(b"hello");
            }
        }
        false
    });
    run_until_stopped(&reactor, LIMIT, "server abort");
    let lost = outcome
        .lost
        .borrow()
        .clone()
        .expect("client_connection_lost");
    assert!(
        matches!(
            conn_err(&lost),
            ConnectionError::Reset | ConnectionError::Lost(_)
        ),
        "{lost}"
    );
    assert!(
        log.data().is_empty(),
        "data written before the abort was sent"
    );
}

/// One peer floods the server while another plays ping-pong: the flood's
/// reads yield after a bounded number per turn, so the other keeps going.
#[test]
fn a_flooding_connection_does_not_starve_others() {
    let reactor = Reactor::new().unwrap();
    struct Sink;
    impl Protocol for Sink {
        fn data_received(&mut self, _: &[u8]) {}
    }
    let sink = reactor
        .listen_tcp(any_local(), factory_fn(|| Sink))
        .unwrap()
        .local_addr();
    let echo = echo_server(&reactor).local_addr();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let st = stop.clone();
    let flood = std::thread::spawn(move || {
        let mut s = StdStream::connect(sink).unwrap();
        let chunk = vec![0u8; 1 << 16];
        let mut sent = 0u64;
        while !st.load(std::sync::atomic::Ordering::Relaxed) && sent < (4u64 << 30) {
            if s.write_all(&chunk).is_err() {
                break;
            }
            sent += chunk.len() as u64;
        }
        sent
    });
    let st = stop.clone();
    let pinger = std::thread::spawn(move || {
        // Give the flood a head start.
        std::thread::sleep(Duration::from_millis(100));
        let mut s = StdStream::connect(echo).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 4];
        let mut n = 0;
        for i in 0..200u32 {
            s.write_all(&i.to_le_bytes()).unwrap();
            s.read_exact(&mut b).unwrap();
            assert_eq!(u32::from_le_bytes(b), i);
            n += 1;
        }
        st.store(true, std::sync::atomic::Ordering::Relaxed);
        n
    });
    let rounds = wait_thread(&reactor, pinger);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(rounds, 200);
    let sent = flood.join().unwrap();
    assert!(sent > 1 << 20, "the flood barely ran ({sent} bytes)");
}

/// `send_file` hands a file to the kernel in order with ordinary writes:
/// refused (`Busy`) while earlier bytes are queued, then the whole file,
/// then the bytes written after it; a transport that cannot answers
/// `NotSupported`.
#[test]
fn send_file_keeps_order_with_writes_and_is_refused_while_bytes_are_queued() {
    use torsion_core::SendFileError;
    let dir = std::env::temp_dir().join(format!("torsion-sendfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("data.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();

    struct Sender {
        file: Rc<std::fs::File>,
        len: u64,
        reactor: Reactor,
        busy_seen: Rc<Cell<bool>>,
    }
    fn pump(t: Transport, file: Rc<std::fs::File>, off: u64, len: u64, r: Reactor) {
        let mut off = off;
        while off < len {
            match t.send_file(&file, off, (len - off) as usize) {
                Ok(0) => break, // the socket is full: try again shortly
                Ok(n) => off += n as u64,
                Err(e) => panic!("send_file failed: {e}"),
            }
        }
        if off < len {
            let r2 = r.clone();
            r.call_later(Duration::from_millis(1), move || {
                pump(t, file, off, len, r2)
            });
            return;
        }
        t.write(b"|tail");
        t.lose_connection();
    }
    impl Protocol for Sender {
        fn connection_made(&mut self, t: Transport) {
            t.write(b"head|");
            // The head is still queued: the file must not overtake it.
            self.busy_seen.set(matches!(
                t.send_file(&self.file, 0, 10),
                Err(SendFileError::Busy)
            ));
            let (file, len, r) = (self.file.clone(), self.len, self.reactor.clone());
            // Next turn: the head has been flushed.
            self.reactor.call_soon(move || pump(t, file, 0, len, r));
        }
        fn data_received(&mut self, _: &[u8]) {}
    }

    let reactor = Reactor::new().unwrap();
    let file = Rc::new(std::fs::File::open(&path).unwrap());
    let busy_seen = Rc::new(Cell::new(false));
    let (r, f, b) = (reactor.clone(), file.clone(), busy_seen.clone());
    let len = data.len() as u64;
    let addr = reactor
        .listen_tcp(
            any_local(),
            factory_fn(move || Sender {
                file: f.clone(),
                len,
                reactor: r.clone(),
                busy_seen: b.clone(),
            }),
        )
        .unwrap()
        .local_addr();
    let client = std::thread::spawn(move || {
        let mut s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // Read slowly at first so the socket fills and send_file returns 0.
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..20 {
            std::thread::sleep(Duration::from_millis(5));
            let n = s.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        s.read_to_end(&mut got).unwrap();
        got
    });
    // Turn the reactor until the client thread has read everything.
    let client = Rc::new(RefCell::new(Some(client)));
    let out: Rc<RefCell<Option<Vec<u8>>>> = Rc::new(RefCell::new(None));
    let (c, o) = (client.clone(), out.clone());
    stop_when(&reactor, move || {
        if c.borrow().as_ref().is_some_and(|h| h.is_finished()) {
            let h = c.borrow_mut().take().unwrap();
            *o.borrow_mut() = Some(h.join().unwrap());
        }
        o.borrow().is_some()
    });
    run_until_stopped(&reactor, LIMIT, "file sent");
    let got = out.borrow_mut().take().unwrap();
    assert!(
        busy_seen.get(),
        "send_file with bytes queued must be refused"
    );
    let mut want = b"head|".to_vec();
    want.extend_from_slice(&data);
    want.extend_from_slice(b"|tail");
    assert_eq!(got.len(), want.len());
    assert!(got == want, "bytes out of order or altered");
    let _ = std::fs::remove_dir_all(&dir);

    // A transport with no socket cannot.
    let st = torsion_core::testing::StringTransport::new();
    let t = Transport::new(st);
    assert!(matches!(
        t.send_file(&file, 0, 1),
        Err(SendFileError::NotSupported(_))
    ));
}

/// `write_through` sends at once only with nothing queued: bytes written
/// through after a backlog built up (the kernel's buffer full) wait their
/// turn, and the reader sees every byte in the order written.
#[test]
fn write_through_keeps_order_behind_a_backlog() {
    struct Writer(Rc<Cell<usize>>);
    impl Protocol for Writer {
        fn connection_made(&mut self, t: Transport) {
            t.write_through(b"first;");
            // Far more than a loopback socket buffers: most of it queues.
            t.write_through(&vec![b'x'; 8 << 20]);
            self.0.set(t.write_buffer_len());
            t.write_through(b";through");
            t.write(b";queued");
            t.lose_connection();
        }
        fn data_received(&mut self, _data: &[u8]) {}
    }
    let reactor = Reactor::new().unwrap();
    let backlog = Rc::new(Cell::new(0));
    let b = backlog.clone();
    let addr = reactor
        .listen_tcp(any_local(), factory_fn(move || Writer(b.clone())))
        .unwrap()
        .local_addr();
    let reader = std::thread::spawn(move || {
        let mut s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all
    });
    let all = wait_thread(&reactor, reader);
    assert!(backlog.get() > 0, "the kernel took 8 MiB at once");
    let mut want = b"first;".to_vec();
    want.extend(std::iter::repeat_n(b'x', 8 << 20));
    want.extend_from_slice(b";through;queued");
    assert_eq!(all.len(), want.len());
    assert!(all == want, "bytes out of order");
}
