//! Endpoint strings: a table of good and bad strings with exact results and
//! errors, a Display/parse round-trip property, the extension registry,
//! socket activation, and the happy-eyeballs hostname endpoint.

#[path = "transports_common/mod.rs"]
mod common;

use std::cell::RefCell;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::{run_until, Echo};
use proptest::prelude::*;
use torsion_core::endpoint::*;
use torsion_core::resolve::Resolver;
use torsion_core::testing::AccumulatingProtocol;
use torsion_core::unix::UnixPath;
use torsion_core::{
    factory_fn, Address, ClientFactory, Connector, ConnectorState, Deferred, Factory, Failure,
    Protocol, Reactor,
};

fn tcp(port: u16, interface: Option<&str>, backlog: Option<i32>, ipv6: bool) -> ServerEndpoint {
    ServerEndpoint::Tcp {
        port,
        interface: interface.map(|i| i.parse().unwrap()),
        backlog,
        ipv6,
    }
}

#[test]
fn good_server_strings() {
    let table: Vec<(&str, ServerEndpoint, &str)> = vec![
        ("tcp:8080", tcp(8080, None, None, false), "tcp:8080"),
        ("tcp:port=8080", tcp(8080, None, None, false), "tcp:8080"),
        (
            "tcp:8080:interface=127.0.0.1",
            tcp(8080, Some("127.0.0.1"), None, false),
            "tcp:8080:interface=127.0.0.1",
        ),
        (
            "tcp:backlog=7:port=0:interface=127.0.0.1",
            tcp(0, Some("127.0.0.1"), Some(7), false),
            "tcp:0:interface=127.0.0.1:backlog=7",
        ),
        (
            "tcp6:443:interface=\\:\\:1",
            tcp(443, Some("::1"), None, true),
            "tcp6:443:interface=\\:\\:1",
        ),
        (
            "unix:/run/x.sock:mode=660",
            ServerEndpoint::Unix {
                path: UnixPath::from("/run/x.sock"),
                mode: Some(0o660),
                backlog: None,
            },
            "unix:/run/x.sock:mode=660",
        ),
        (
            "unix:address=/tmp/a\\:b.sock:backlog=5:lockfile=1",
            ServerEndpoint::Unix {
                path: UnixPath::from("/tmp/a:b.sock"),
                mode: None,
                backlog: Some(5),
            },
            "unix:/tmp/a\\:b.sock:backlog=5",
        ),
        (
            "unix:@abstract-name",
            ServerEndpoint::Unix {
                path: UnixPath::Abstract(b"abstract-name".to_vec()),
                mode: None,
                backlog: None,
            },
            "unix:@abstract-name",
        ),
        (
            "systemd:domain=INET:index=0",
            ServerEndpoint::Systemd {
                domain: SystemdDomain::Inet,
                index: 0,
            },
            "systemd:domain=INET:index=0",
        ),
        (
            "systemd:domain=UNIX:index=2",
            ServerEndpoint::Systemd {
                domain: SystemdDomain::Unix,
                index: 2,
            },
            "systemd:domain=UNIX:index=2",
        ),
        ("stdio:", ServerEndpoint::Stdio, "stdio:"),
        ("stdio", ServerEndpoint::Stdio, "stdio:"),
    ];
    for (s, want, printed) in table {
        let got = server_from_string(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(got, want, "{s}");
        assert_eq!(got.to_string(), printed, "{s}");
    }
}

#[test]
fn bad_server_strings() {
    let table: Vec<(&str, EndpointError, &str)> = vec![
        ("", EndpointError::Empty, "empty endpoint string"),
        (
            "tcp:port=abc",
            EndpointError::InvalidValue {
                key: "port".into(),
                expected: "a number from 0 to 65535",
                got: "abc".into(),
            },
            "port must be a number from 0 to 65535, got 'abc'",
        ),
        (
            "tcp:70000",
            EndpointError::InvalidValue {
                key: "port".into(),
                expected: "a number from 0 to 65535",
                got: "70000".into(),
            },
            "port must be a number from 0 to 65535, got '70000'",
        ),
        (
            "tcp:80:color=blue",
            EndpointError::UnknownKey {
                kind: "tcp".into(),
                key: "color".into(),
            },
            "unknown key 'color' for a tcp endpoint",
        ),
        (
            "tcp",
            EndpointError::Missing {
                kind: "tcp".into(),
                what: "a port",
            },
            "tcp endpoint needs a port",
        ),
        (
            "tcp:80:interface=::1",
            EndpointError::InvalidValue {
                key: "interface".into(),
                expected: "an IPv4 address",
                got: "".into(),
            },
            "interface must be an IPv4 address, got ''",
        ),
        (
            "tcp:80:1.2.3.4:50:extra",
            EndpointError::UnexpectedArgument {
                kind: "tcp".into(),
                arg: "extra".into(),
            },
            "unexpected argument 'extra' for a tcp endpoint",
        ),
        (
            "tcp:80:backlog=-1",
            EndpointError::InvalidValue {
                key: "backlog".into(),
                expected: "a positive number",
                got: "-1".into(),
            },
            "backlog must be a positive number, got '-1'",
        ),
        (
            "tcp:port=1:port=2",
            EndpointError::DuplicateKey {
                kind: "tcp".into(),
                key: "port".into(),
            },
            "duplicate key 'port' in a tcp endpoint",
        ),
        (
            "unix:/x:mode=999",
            EndpointError::InvalidValue {
                key: "mode".into(),
                expected: "an octal file mode such as 660",
                got: "999".into(),
            },
            "mode must be an octal file mode such as 660, got '999'",
        ),
        (
            "systemd:domain=IPX:index=0",
            EndpointError::InvalidValue {
                key: "domain".into(),
                expected: "INET, INET6 or UNIX",
                got: "IPX".into(),
            },
            "domain must be INET, INET6 or UNIX, got 'IPX'",
        ),
        (
            "systemd:domain=INET",
            EndpointError::Missing {
                kind: "systemd".into(),
                what: "an index",
            },
            "systemd endpoint needs an index",
        ),
        (
            "bogus:1",
            EndpointError::UnknownType("bogus".into()),
            "unknown endpoint type 'bogus'",
        ),
        (
            "tcp:80\\",
            EndpointError::DanglingEscape,
            "endpoint string ends with a lone backslash",
        ),
        (
            "stdio:x=1",
            EndpointError::UnknownKey {
                kind: "stdio".into(),
                key: "x".into(),
            },
            "unknown key 'x' for a stdio endpoint",
        ),
    ];
    for (s, want, msg) in table {
        let got = server_from_string(s).expect_err(s);
        // "tcp:80:interface=::1" splits at the unescaped colons: interface is ''.
        assert_eq!(got, want, "{s}");
        assert_eq!(got.to_string(), msg, "{s}");
    }
}

#[test]
fn good_and_bad_client_strings() {
    let good: Vec<(&str, ClientEndpoint, &str)> = vec![
        (
            "tcp:host=example.org:port=80",
            ClientEndpoint::Tcp {
                host: "example.org".into(),
                port: 80,
                timeout: None,
                bind_address: None,
            },
            "tcp:host=example.org:port=80",
        ),
        (
            "tcp:localhost:8080:timeout=2.5:bindAddress=127.0.0.1",
            ClientEndpoint::Tcp {
                host: "localhost".into(),
                port: 8080,
                timeout: Some(Duration::from_millis(2500)),
                bind_address: Some("127.0.0.1".parse().unwrap()),
            },
            "tcp:host=localhost:port=8080:timeout=2.5:bindAddress=127.0.0.1",
        ),
        (
            "unix:path=/run/app.sock:timeout=3",
            ClientEndpoint::Unix {
                path: UnixPath::from("/run/app.sock"),
                timeout: Some(Duration::from_secs(3)),
            },
            "unix:path=/run/app.sock:timeout=3",
        ),
    ];
    for (s, want, printed) in good {
        let got = client_from_string(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert_eq!(got, want, "{s}");
        assert_eq!(got.to_string(), printed);
    }
    let bad: Vec<(&str, &str)> = vec![
        (
            "tcp:host=h:port=abc",
            "port must be a number from 0 to 65535, got 'abc'",
        ),
        ("tcp:port=80", "tcp endpoint needs a host"),
        ("tcp:host=h", "tcp endpoint needs a port"),
        (
            "tcp:host=h:port=1:timeout=soon",
            "timeout must be a number of seconds, got 'soon'",
        ),
        (
            "tcp:host=h:port=1:timeout=1.",
            "timeout must be a number of seconds, got '1.'",
        ),
        (
            "tcp:host=h:port=1:bindAddress=nowhere",
            "bindAddress must be an IP address, got 'nowhere'",
        ),
        (
            "tcp:host=h:port=1:proxy=yes",
            "unknown key 'proxy' for a tcp endpoint",
        ),
        ("unix:path=", "path must be a non-empty path, got ''"),
        ("stdio:", "'stdio' endpoints cannot be used as clients"),
        ("ssl:host=h:port=1", "unknown endpoint type 'ssl'"),
    ];
    for (s, msg) in bad {
        assert_eq!(client_from_string(s).expect_err(s).to_string(), msg, "{s}");
    }
}

// ---- extension point ----

#[derive(Debug)]
struct Fake(String);
impl fmt::Display for Fake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fake:{}", self.0)
    }
}
impl CustomClientEndpoint for Fake {
    fn connect(&self, reactor: &Reactor, factory: Rc<dyn ClientFactory>) -> Connector {
        reactor.connect_tcp("127.0.0.1:1".parse().unwrap(), factory, Default::default())
    }
}
struct FakeParser;
impl EndpointParser for FakeParser {
    fn parse_client(
        &self,
        mut args: EndpointArgs,
    ) -> Result<Rc<dyn CustomClientEndpoint>, EndpointError> {
        let v = args.take_key("name").ok_or(EndpointError::Missing {
            kind: args.kind.clone(),
            what: "a name",
        })?;
        args.finish(0)?;
        Ok(Rc::new(Fake(format!("name={}", escape(&v)))))
    }
}

#[test]
fn registry_adds_prefixes_but_not_over_builtins() {
    let mut reg = EndpointRegistry::new();
    assert!(!reg.register("tcp", Rc::new(FakeParser)));
    assert!(reg.register("fake", Rc::new(FakeParser)));
    let e = reg.parse_client("fake:name=x\\:y").unwrap();
    assert_eq!(e.to_string(), "fake:name=x\\:y");
    assert_eq!(reg.parse_client(&e.to_string()).unwrap(), e);
    assert_eq!(
        reg.parse_server("fake:name=x").unwrap_err().to_string(),
        "'fake' endpoints cannot be used as servers"
    );
    assert_eq!(
        reg.parse_client("fake:name=x:other=1")
            .unwrap_err()
            .to_string(),
        "unknown key 'other' for a fake endpoint"
    );
    // The thread's default registry is separate until told.
    assert!(client_from_string("fake:name=x").is_err());
    assert!(register_parser("fake", Rc::new(FakeParser)));
    assert!(client_from_string("fake:name=x").is_ok());
}

// ---- round trip ----

fn arb_text() -> impl Strategy<Value = String> {
    // Includes the characters that need escaping.
    proptest::string::string_regex("[a-zA-Z0-9_./:=\\\\-]{1,20}").unwrap()
}

fn arb_server() -> impl Strategy<Value = ServerEndpoint> {
    prop_oneof![
        (
            any::<u16>(),
            proptest::option::of(any::<[u8; 4]>()),
            proptest::option::of(1..10000i32)
        )
            .prop_map(|(port, i, backlog)| ServerEndpoint::Tcp {
                port,
                interface: i.map(IpAddr::from),
                backlog,
                ipv6: false
            }),
        (any::<u16>(), proptest::option::of(any::<[u8; 16]>())).prop_map(|(port, i)| {
            ServerEndpoint::Tcp {
                port,
                interface: i.map(IpAddr::from),
                backlog: None,
                ipv6: true,
            }
        }),
        (
            arb_text(),
            proptest::option::of(0u32..0o7777),
            proptest::option::of(1..100i32)
        )
            .prop_map(|(p, mode, backlog)| ServerEndpoint::Unix {
                path: if let Some(rest) = p.strip_prefix('@') {
                    UnixPath::Abstract(rest.as_bytes().to_vec())
                } else {
                    UnixPath::from(p.as_str())
                },
                mode,
                backlog
            }),
        (
            0usize..1000,
            prop_oneof![
                Just(SystemdDomain::Inet),
                Just(SystemdDomain::Inet6),
                Just(SystemdDomain::Unix)
            ]
        )
            .prop_map(|(index, domain)| ServerEndpoint::Systemd { domain, index }),
        Just(ServerEndpoint::Stdio),
    ]
}

fn arb_client() -> impl Strategy<Value = ClientEndpoint> {
    let timeout = proptest::option::of(
        (0u64..100_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    );
    prop_oneof![
        (
            arb_text(),
            any::<u16>(),
            timeout.clone(),
            proptest::option::of(any::<[u8; 4]>())
        )
            .prop_map(|(host, port, timeout, b)| ClientEndpoint::Tcp {
                host,
                port,
                timeout,
                bind_address: b.map(IpAddr::from)
            }),
        (arb_text(), timeout).prop_map(|(p, timeout)| ClientEndpoint::Unix {
            path: if let Some(rest) = p.strip_prefix('@') {
                UnixPath::Abstract(rest.as_bytes().to_vec())
            } else {
                UnixPath::from(p.as_str())
            },
            timeout
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]
    #[test]
    fn server_display_parses_back(e in arb_server()) {
        let s = e.to_string();
        prop_assert_eq!(server_from_string(&s).map_err(|x| x.to_string()), Ok(e), "{}", s);
    }

    #[test]
    fn client_display_parses_back(e in arb_client()) {
        // An empty Unix path does not survive; arb_text never makes one.
        let s = e.to_string();
        prop_assert_eq!(client_from_string(&s).map_err(|x| x.to_string()), Ok(e), "{}", s);
    }

    #[test]
    fn parser_never_panics(s in "\\PC{0,40}") {
        let _ = server_from_string(&s);
        let _ = client_from_string(&s);
    }
}

// ---- listening and connecting through endpoints ----

#[test]
fn tcp_and_unix_endpoints_listen_and_connect() {
    let dir = common::TempDir::new("ep");
    let reactor = Reactor::new().unwrap();
    let l = server_from_string("tcp:0:interface=127.0.0.1")
        .unwrap()
        .listen(&reactor, factory_fn(Echo::default))
        .unwrap();
    let port = l.host().socket_addr().unwrap().port();
    let (proto, log) = AccumulatingProtocol::new();
    let proto = RefCell::new(Some(proto));
    client_from_string(&format!("tcp:host=127.0.0.1:port={port}:timeout=5"))
        .unwrap()
        .connect(
            &reactor,
            factory_fn(move || proto.borrow_mut().take().unwrap()),
        );
    assert!(run_until(&reactor, Duration::from_secs(10), || log
        .transport()
        .is_some()));
    log.transport().unwrap().write(b"via endpoints");
    assert!(run_until(&reactor, Duration::from_secs(10), || log.data()
        == b"via endpoints"));

    let sock = dir.path("ep.sock");
    let desc = format!("unix:{}:mode=600", escape(&sock.to_string_lossy()));
    let l2 = server_from_string(&desc)
        .unwrap()
        .listen(&reactor, factory_fn(Echo::default))
        .unwrap();
    let (proto, log) = AccumulatingProtocol::new();
    let proto = RefCell::new(Some(proto));
    client_from_string(&format!("unix:path={}", escape(&sock.to_string_lossy())))
        .unwrap()
        .connect(
            &reactor,
            factory_fn(move || proto.borrow_mut().take().unwrap()),
        );
    assert!(run_until(&reactor, Duration::from_secs(10), || log
        .transport()
        .is_some()));
    log.transport().unwrap().write(b"unix too");
    assert!(run_until(&reactor, Duration::from_secs(10), || log.data()
        == b"unix too"));
    l.stop_listening();
    l2.stop_listening();
}

#[test]
fn systemd_variables_and_adoption() {
    let me = std::process::id();
    assert_eq!(
        SystemdSockets::from_vars(Some(&me.to_string()), Some("2"), me),
        Ok(SystemdSockets { start: 3, count: 2 })
    );
    assert_eq!(
        SystemdSockets::from_vars(Some("1"), Some("2"), me),
        Err(SystemdError::NotActivated(me))
    );
    assert_eq!(
        SystemdSockets::from_vars(None, None, me),
        Err(SystemdError::NotActivated(me))
    );
    assert_eq!(
        SystemdSockets::from_vars(Some(&me.to_string()), Some("two"), me)
            .unwrap_err()
            .to_string(),
        "LISTEN_FDS must be a number, got 'two'"
    );
    // A listening socket placed as "passed descriptor 0" of a fake activation.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd: OwnedFd = listener.into();
    let sockets = SystemdSockets {
        start: fd.as_raw_fd(),
        count: 1,
    };
    let reactor = Reactor::new().unwrap();
    let err = sockets
        .listen(&reactor, 0, SystemdDomain::Unix, factory_fn(Echo::default))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "socket activation: passed socket 0 is not of domain UNIX"
    );
    let err = sockets
        .listen(&reactor, 1, SystemdDomain::Inet, factory_fn(Echo::default))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "socket activation: socket index 1 out of range: 1 sockets were passed"
    );
    let l = sockets
        .listen(&reactor, 0, SystemdDomain::Inet, factory_fn(Echo::default))
        .unwrap();
    assert_eq!(l.host(), Address::Tcp(addr));
    let peer = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"activated").unwrap();
        let mut buf = [0u8; 9];
        s.read_exact(&mut buf).unwrap();
        buf
    });
    assert!(run_until(&reactor, Duration::from_secs(10), || peer.is_finished()));
    assert_eq!(&peer.join().unwrap(), b"activated");
    drop(fd);
}

// ---- happy eyeballs ----

/// Answers with a fixed list, as a test double for DNS (the connections are real).
struct Fixed(Vec<SocketAddr>);
impl Resolver for Fixed {
    fn resolve(&self, _: &Reactor, _: &str, _: u16) -> Deferred<Vec<SocketAddr>> {
        Deferred::succeed(self.0.clone())
    }
}

struct Outcome {
    peer: RefCell<Option<Address>>,
    failed: RefCell<Option<Failure>>,
}
struct OutcomeFactory(Rc<Outcome>);
impl Factory for OutcomeFactory {
    fn build_protocol(&self, peer: &Address) -> Option<Box<dyn Protocol>> {
        *self.0.peer.borrow_mut() = Some(peer.clone());
        Some(Box::new(Echo::default()))
    }
}
impl ClientFactory for OutcomeFactory {
    fn client_connection_failed(&self, _: &Connector, reason: Failure) {
        *self.0.failed.borrow_mut() = Some(reason);
    }
}

/// A listener whose accept queue is full, so further connects hang (SYNs dropped).
fn black_hole() -> (socket2::Socket, Vec<std::net::TcpStream>, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut fill = Vec::new();
    for _ in 0..4 {
        let c = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        c.set_nonblocking(true).unwrap();
        let _ = c.connect(&addr.into());
        fill.push(std::net::TcpStream::from(c));
    }
    std::thread::sleep(Duration::from_millis(50));
    (s, fill, addr)
}

#[test]
fn happy_eyeballs_second_address_wins_after_the_stagger() {
    let reactor = Reactor::new().unwrap();
    let good = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), factory_fn(Echo::default))
        .unwrap();
    let (_hole, _fill, hole) = black_hole();
    let outcome = Rc::new(Outcome {
        peer: RefCell::new(None),
        failed: RefCell::new(None),
    });
    let ep = HostnameEndpoint {
        host: "service.test".into(),
        port: 0,
        options: Default::default(),
        resolver: Rc::new(Fixed(vec![hole, good.local_addr()])),
        stagger: HAPPY_EYEBALLS_STAGGER,
    };
    let start = Instant::now();
    let c = ep.connect(&reactor, Rc::new(OutcomeFactory(outcome.clone())));
    assert_eq!(c.state(), ConnectorState::Connecting);
    assert!(run_until(&reactor, Duration::from_secs(10), || outcome
        .peer
        .borrow()
        .is_some()));
    // Only a lower bound: the second attempt starts no earlier than the stagger.
    assert!(
        start.elapsed() >= Duration::from_millis(290),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        *outcome.peer.borrow(),
        Some(Address::Tcp(good.local_addr()))
    );
    assert!(run_until(&reactor, Duration::from_secs(5), || c.state()
        == ConnectorState::Connected));
    assert!(c.transport().is_some());
    assert!(
        outcome.failed.borrow().is_none(),
        "the cancelled loser is not reported"
    );
}

#[test]
fn happy_eyeballs_refused_address_moves_on_at_once_and_all_refused_fails() {
    let reactor = Reactor::new().unwrap();
    let good = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), factory_fn(Echo::default))
        .unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let outcome = Rc::new(Outcome {
        peer: RefCell::new(None),
        failed: RefCell::new(None),
    });
    let mut ep = HostnameEndpoint::new("service.test", 0);
    ep.resolver = Rc::new(Fixed(vec![dead, good.local_addr()]));
    ep.stagger = Duration::from_secs(30); // a refusal must not wait for it
    ep.connect(&reactor, Rc::new(OutcomeFactory(outcome.clone())));
    assert!(run_until(&reactor, Duration::from_secs(10), || outcome
        .peer
        .borrow()
        .is_some()));
    assert_eq!(
        *outcome.peer.borrow(),
        Some(Address::Tcp(good.local_addr()))
    );

    let outcome = Rc::new(Outcome {
        peer: RefCell::new(None),
        failed: RefCell::new(None),
    });
    ep.resolver = Rc::new(Fixed(vec![dead, dead]));
    ep.connect(&reactor, Rc::new(OutcomeFactory(outcome.clone())));
    assert!(run_until(&reactor, Duration::from_secs(10), || outcome
        .failed
        .borrow()
        .is_some()));
    let f = outcome.failed.borrow().clone().unwrap();
    assert!(
        matches!(
            f.downcast_ref::<torsion_core::ConnectionError>(),
            Some(torsion_core::ConnectionError::Refused(_))
        ),
        "{f}"
    );
}

#[test]
fn interleaving_alternates_families() {
    let a: Vec<SocketAddr> = vec![
        "[::1]:1".parse().unwrap(),
        "[::2]:1".parse().unwrap(),
        "127.0.0.1:1".parse().unwrap(),
        "[::3]:1".parse().unwrap(),
    ];
    let got = interleave_families(a);
    let fam: Vec<bool> = got.iter().map(|x| x.is_ipv6()).collect();
    assert_eq!(fam, vec![true, false, true, true]);
}

#[test]
fn localhost_name_resolves_and_connects_with_the_system_resolver() {
    // getaddrinfo("localhost") may give ::1 and 127.0.0.1; only the latter
    // listens, so an IPv6 attempt is refused and the race moves on.
    let reactor = Reactor::new().unwrap();
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), factory_fn(Echo::default))
        .unwrap();
    let outcome = Rc::new(Outcome {
        peer: RefCell::new(None),
        failed: RefCell::new(None),
    });
    client_from_string(&format!(
        "tcp:host=localhost:port={}",
        port.local_addr().port()
    ))
    .unwrap()
    .connect(&reactor, Rc::new(OutcomeFactory(outcome.clone())));
    assert!(run_until(&reactor, Duration::from_secs(10), || {
        outcome.peer.borrow().is_some() || outcome.failed.borrow().is_some()
    }));
    assert_eq!(
        *outcome.peer.borrow(),
        Some(Address::Tcp(port.local_addr())),
        "{:?}",
        outcome.failed.borrow()
    );
    // A name that cannot resolve is a DNS failure, not a hang.
    let outcome = Rc::new(Outcome {
        peer: RefCell::new(None),
        failed: RefCell::new(None),
    });
    client_from_string("tcp:host=no-such-host.invalid:port=80")
        .unwrap()
        .connect(&reactor, Rc::new(OutcomeFactory(outcome.clone())));
    assert!(run_until(&reactor, Duration::from_secs(20), || outcome
        .failed
        .borrow()
        .is_some()));
    let f = outcome.failed.borrow().clone().unwrap();
    assert!(
        matches!(
            f.downcast_ref::<torsion_core::ConnectionError>(),
            Some(torsion_core::ConnectionError::DnsLookup { .. })
        ),
        "{f}"
    );
}
