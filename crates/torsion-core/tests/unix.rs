//! Unix domain sockets: stale-socket handling, modes, abstract names, peer
//! credentials, descriptor passing, datagrams (with socat as the peer), and
//! bad input (too-long paths).

#[path = "transports_common/mod.rs"]
mod common;

use std::cell::RefCell;
use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::rc::Rc;
use std::time::Duration;

use common::{run_until, Echo, TempDir};
use torsion_core::testing::AccumulatingProtocol;
use torsion_core::udp::DatagramProtocol;
use torsion_core::unix::{
    FdPassingError, UnixDatagramOptions, UnixError, UnixFdPassing, UnixListenOptions, UnixPath,
};
use torsion_core::{
    factory_fn, Address, ConnectOptions, ConnectionError, Protocol, Reactor, Transport,
};

const LIMIT: Duration = Duration::from_secs(10);

#[test]
fn stale_socket_is_replaced_live_one_is_refused() {
    let dir = TempDir::new("stale");
    let path = dir.path("s.sock");
    // A socket file nobody listens on: bind and drop a std listener.
    {
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(l);
    }
    assert!(path.exists());
    let reactor = Reactor::new().unwrap();
    let port = reactor
        .listen_unix(
            UnixPath::from(path.as_path()),
            factory_fn(Echo::default),
            UnixListenOptions::default(),
        )
        .expect("a stale socket is removed and replaced");
    // Now it is live: a second listener must not clobber it.
    let err = reactor
        .listen_unix(
            UnixPath::from(path.as_path()),
            factory_fn(Echo::default),
            UnixListenOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(&err, UnixError::InUse(p) if *p == path), "{err}");
    assert!(err.to_string().contains("another process is listening"));
    let _ = port.stop_listening();
}

#[test]
fn a_regular_file_is_never_deleted() {
    let dir = TempDir::new("notsock");
    let path = dir.path("data.txt");
    std::fs::write(&path, b"precious").unwrap();
    let reactor = Reactor::new().unwrap();
    let err = reactor
        .listen_unix(
            UnixPath::from(path.as_path()),
            factory_fn(Echo::default),
            UnixListenOptions::default(),
        )
        .unwrap_err();
    assert!(matches!(err, UnixError::NotASocket(_)), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[test]
fn too_long_path_is_a_typed_error() {
    let long = format!("/tmp/{}", "x".repeat(200));
    let reactor = Reactor::new().unwrap();
    let err = reactor
        .listen_unix(
            UnixPath::from(long.as_str()),
            factory_fn(Echo::default),
            UnixListenOptions::default(),
        )
        .unwrap_err();
    match err {
        UnixError::PathTooLong { len, max, .. } => {
            assert_eq!(len, 205);
            assert_eq!(max, 107);
        }
        other => panic!("unexpected {other}"),
    }
    // The client side reports it as a failed connection, not a panic.
    let failed = Rc::new(RefCell::new(None));
    struct F(Rc<RefCell<Option<String>>>);
    impl torsion_core::Factory for F {
        fn build_protocol(&self, _: &Address) -> Option<Box<dyn Protocol>> {
            Some(Box::new(Echo::default()))
        }
    }
    impl torsion_core::ClientFactory for F {
        fn client_connection_failed(&self, _: &torsion_core::Connector, r: torsion_core::Failure) {
            *self.0.borrow_mut() = Some(r.to_string());
        }
    }
    reactor.connect_unix(
        UnixPath::from(long.as_str()),
        Rc::new(F(failed.clone())),
        None,
    );
    assert!(run_until(&reactor, LIMIT, || failed.borrow().is_some()));
    assert!(
        failed.borrow().as_ref().unwrap().contains("107"),
        "{:?}",
        failed.borrow()
    );
}

#[test]
fn connecting_to_a_missing_socket_is_refused() {
    let dir = TempDir::new("missing");
    let reactor = Reactor::new().unwrap();
    let failed = Rc::new(RefCell::new(None));
    struct F(Rc<RefCell<Option<torsion_core::Failure>>>);
    impl torsion_core::Factory for F {
        fn build_protocol(&self, _: &Address) -> Option<Box<dyn Protocol>> {
            Some(Box::new(Echo::default()))
        }
    }
    impl torsion_core::ClientFactory for F {
        fn client_connection_failed(&self, _: &torsion_core::Connector, r: torsion_core::Failure) {
            *self.0.borrow_mut() = Some(r);
        }
    }
    reactor.connect_unix(
        UnixPath::from(dir.path("nobody").as_path()),
        Rc::new(F(failed.clone())),
        None,
    );
    assert!(run_until(&reactor, LIMIT, || failed.borrow().is_some()));
    let f = failed.borrow().clone().unwrap();
    assert!(
        matches!(
            f.downcast_ref::<ConnectionError>(),
            Some(ConnectionError::Refused(_))
        ),
        "{f}"
    );
}

#[test]
fn mode_is_applied() {
    let dir = TempDir::new("mode");
    let path = dir.path("m.sock");
    let reactor = Reactor::new().unwrap();
    reactor
        .listen_unix(
            UnixPath::from(path.as_path()),
            factory_fn(Echo::default),
            UnixListenOptions {
                mode: Some(0o600),
                backlog: 5,
            },
        )
        .unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn abstract_namespace_echo_and_peer_credentials() {
    let name = format!("torsion-test-{}", std::process::id());
    let reactor = Reactor::new().unwrap();
    let server_t: Rc<RefCell<Option<Transport>>> = Rc::default();
    let st = server_t.clone();
    struct Keep(Rc<RefCell<Option<Transport>>>, Echo);
    impl Protocol for Keep {
        fn connection_made(&mut self, t: Transport) {
            *self.0.borrow_mut() = Some(t.clone());
            self.1.connection_made(t)
        }
        fn data_received(&mut self, d: &[u8]) {
            self.1.data_received(d)
        }
    }
    reactor
        .listen_unix(
            UnixPath::Abstract(name.clone().into_bytes()),
            factory_fn(move || Keep(st.clone(), Echo::default())),
            UnixListenOptions::default(),
        )
        .unwrap();
    let (proto, log) = AccumulatingProtocol::new();
    let proto = RefCell::new(Some(proto));
    reactor.connect_unix(
        UnixPath::Abstract(name.clone().into_bytes()),
        factory_fn(move || proto.borrow_mut().take().unwrap()),
        None,
    );
    assert!(run_until(&reactor, LIMIT, || log.transport().is_some()));
    log.transport().unwrap().write(b"abstract");
    assert!(run_until(&reactor, LIMIT, || log.data() == b"abstract"));
    // SO_PEERCRED on both ends: the peer is this very process.
    let creds = server_t
        .borrow()
        .as_ref()
        .unwrap()
        .unix_credentials()
        .unwrap();
    assert_eq!(creds.pid as u32, std::process::id());
    assert_eq!(creds.uid, unsafe { libc::getuid() });
    assert_eq!(creds.gid, unsafe { libc::getgid() });
    assert_eq!(log.transport().unwrap().unix_credentials().unwrap(), creds);
    assert_eq!(
        server_t.borrow().as_ref().unwrap().host(),
        Address::UnixAbstract(name.into_bytes())
    );
}

#[test]
fn tcp_transport_has_no_credentials_or_fd_passing() {
    let reactor = Reactor::new().unwrap();
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), factory_fn(Echo::default))
        .unwrap();
    let (proto, log) = AccumulatingProtocol::new();
    let proto = RefCell::new(Some(proto));
    reactor.connect_tcp(
        port.local_addr(),
        factory_fn(move || proto.borrow_mut().take().unwrap()),
        ConnectOptions::default(),
    );
    assert!(run_until(&reactor, LIMIT, || log.transport().is_some()));
    let t = log.transport().unwrap();
    let e = t.unix_credentials().unwrap_err();
    assert_eq!(
        e.to_string(),
        "Unix peer credentials is not supported by this transport (TCP)"
    );
    let e = t
        .extension::<UnixFdPassing>("descriptor passing")
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "descriptor passing is not supported by this transport (TCP)"
    );
}

/// Receives descriptors: collects them and the bytes they came with.
struct FdReceiver {
    t: Option<Transport>,
    got: Rc<RefCell<(Vec<u8>, Vec<OwnedFd>)>>,
}

impl Protocol for FdReceiver {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        let fds = self
            .t
            .as_ref()
            .unwrap()
            .extension::<UnixFdPassing>("descriptor passing")
            .unwrap()
            .take_received_fds();
        let mut g = self.got.borrow_mut();
        g.0.extend_from_slice(data);
        g.1.extend(fds);
    }
}

#[test]
fn file_descriptors_travel_with_the_stream() {
    let dir = TempDir::new("fds");
    let path = dir.path("fd.sock");
    let reactor = Reactor::new().unwrap();
    let got = Rc::new(RefCell::new((Vec::new(), Vec::new())));
    let g2 = got.clone();
    reactor
        .listen_unix(
            UnixPath::from(path.as_path()),
            factory_fn(move || FdReceiver {
                t: None,
                got: g2.clone(),
            }),
            UnixListenOptions::default(),
        )
        .unwrap();
    let (proto, log) = AccumulatingProtocol::new();
    let proto = RefCell::new(Some(proto));
    reactor.connect_unix(
        UnixPath::from(path.as_path()),
        factory_fn(move || proto.borrow_mut().take().unwrap()),
        None,
    );
    assert!(run_until(&reactor, LIMIT, || log.transport().is_some()));
    let t = log.transport().unwrap();
    let passing = t.extension::<UnixFdPassing>("descriptor passing").unwrap();
    // A file with known content, sent after some plain bytes.
    let mut file = std::fs::File::create(dir.path("payload")).unwrap();
    file.write_all(b"contents via SCM_RIGHTS").unwrap();
    let file = std::fs::File::open(dir.path("payload")).unwrap();
    t.write(b"before-");
    passing
        .send_fds(&t, b"F", vec![OwnedFd::from(file)])
        .unwrap();
    t.write(b"-after");
    assert!(matches!(
        passing.send_fds(&t, b"", vec![]),
        Err(FdPassingError::NoData)
    ));
    assert!(run_until(&reactor, LIMIT, || got.borrow().0
        == b"before-F-after"
        && got.borrow().1.len() == 1));
    let fd = got.borrow_mut().1.pop().unwrap();
    let mut f = std::fs::File::from(fd);
    f.rewind().unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, "contents via SCM_RIGHTS");
}

#[derive(Default)]
struct DgramLog {
    got: Vec<(Vec<u8>, Address)>,
    too_large: Vec<usize>,
    t: Option<torsion_core::udp::DatagramTransport>,
}

struct DgramEcho(Rc<RefCell<DgramLog>>);

impl DatagramProtocol for DgramEcho {
    fn start_protocol(&mut self, t: torsion_core::udp::DatagramTransport) {
        self.0.borrow_mut().t = Some(t);
    }
    fn datagram_received(&mut self, data: &[u8], from: Address) {
        let mut l = self.0.borrow_mut();
        l.got.push((data.to_vec(), from.clone()));
        if let Some(t) = &l.t {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(data);
            let _ = t.write_to(&reply, &from);
        }
    }
    fn datagram_too_large(&mut self, size: usize, _from: Address) {
        self.0.borrow_mut().too_large.push(size);
    }
}

#[test]
fn unix_datagram_with_socat_peer_and_oversized_datagram() {
    let dir = TempDir::new("udg");
    let server = dir.path("server.sock");
    let client = dir.path("client.sock");
    let reactor = Reactor::new().unwrap();
    let log = Rc::new(RefCell::new(DgramLog::default()));
    let port = reactor
        .listen_unix_datagram(
            UnixPath::from(server.as_path()),
            Box::new(DgramEcho(log.clone())),
            UnixDatagramOptions {
                mode: None,
                max_packet_size: 64,
            },
        )
        .unwrap();
    let (s2, c2) = (server.clone(), client.clone());
    let peer = std::thread::spawn(move || {
        common::run_peer(
            Command::new("socat").args([
                "-t",
                "1",
                "-",
                &format!("UNIX-SENDTO:{},bind={}", s2.display(), c2.display()),
            ]),
            b"ping",
            Duration::from_secs(10),
        )
    });
    assert!(run_until(&reactor, LIMIT, || peer.is_finished()));
    assert_eq!(peer.join().unwrap(), b"echo:ping");
    assert_eq!(log.borrow().got[0].0, b"ping");
    assert_eq!(log.borrow().got[0].1, Address::Unix(Some(client.clone())));

    // Bad input: a datagram larger than the port's maximum is reported, not cut short.
    let big = std::os::unix::net::UnixDatagram::unbound().unwrap();
    big.send_to(&[b'x'; 200], &server).unwrap();
    assert!(run_until(&reactor, LIMIT, || !log
        .borrow()
        .too_large
        .is_empty()));
    assert_eq!(log.borrow().too_large, vec![200]);
    assert_eq!(log.borrow().got.len(), 1);
    // Sending too much is refused with a typed error.
    let t = port.clone();
    let err = t
        .write_to(&[0u8; 65], &Address::Unix(Some(client)))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "datagram of 65 bytes exceeds the maximum packet size of 64 bytes"
    );
    port.stop_listening();
    assert!(!server.exists());
}

#[test]
fn connect_unix_datagram_sends_to_a_socat_listener() {
    let dir = TempDir::new("udg2");
    let server = dir.path("recv.sock");
    let s2 = server.clone();
    let peer = std::thread::spawn(move || {
        common::run_peer(
            Command::new("socat").args(["-u", &format!("UNIX-RECV:{}", s2.display()), "-"]),
            b"",
            Duration::from_millis(1500),
        )
    });
    // Wait (bounded) for socat to create its socket.
    let mut tries = 0;
    while !server.exists() && tries < 300 {
        std::thread::sleep(Duration::from_millis(10));
        tries += 1;
    }
    let reactor = Reactor::new().unwrap();
    let t = reactor
        .connect_unix_datagram(
            UnixPath::from(server.as_path()),
            Box::new(DgramEcho(Rc::default())),
        )
        .unwrap();
    t.write(b"to socat\n").unwrap();
    let out = peer.join().unwrap();
    assert_eq!(out, b"to socat\n");
}

#[test]
fn data_and_close_arriving_together_are_both_seen() {
    // The peer writes and closes before the server's first read: the data
    // and the end-of-file share one readiness edge.
    let dir = TempDir::new("eof");
    let path = dir.path("eof.sock");
    let reactor = Reactor::new().unwrap();
    let (proto, log) = AccumulatingProtocol::new();
    let proto = RefCell::new(Some(proto));
    reactor
        .listen_unix(
            UnixPath::from(path.as_path()),
            factory_fn(move || proto.borrow_mut().take().unwrap()),
            UnixListenOptions::default(),
        )
        .unwrap();
    {
        let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        c.write_all(b"last words").unwrap();
    }
    assert!(
        run_until(&reactor, LIMIT, || log.lost().is_some()),
        "end of file never seen; got {:?}",
        log.data()
    );
    assert_eq!(log.data(), b"last words");
}
