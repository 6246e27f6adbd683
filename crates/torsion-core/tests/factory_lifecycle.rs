//! `start_factory` / `stop_factory` follow Twisted's doStart/doStop: once for
//! the first user of a factory and once when the last one lets go, over real
//! TCP and Unix ports and connectors.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use common::*;
use torsion_core::unix::{UnixListenOptions, UnixPath};
use torsion_core::{
    Address, ClientFactory, ConnectOptions, Connector, Factory, Failure, Protocol, Reactor,
    Transport,
};

/// Records every lifecycle call in order.
#[derive(Default)]
struct Lifecycle {
    events: RefCell<Vec<&'static str>>,
    /// How many failed attempts to answer with a reconnect from inside
    /// `client_connection_failed`.
    reconnects: Cell<u32>,
    /// Stops the reactor when the factory is stopped.
    stop_reactor: RefCell<Option<Reactor>>,
}

impl Lifecycle {
    fn events(&self) -> Vec<&'static str> {
        self.events.borrow().clone()
    }
    fn count(&self, what: &str) -> usize {
        self.events.borrow().iter().filter(|e| **e == what).count()
    }
}

/// Closes the connection as soon as it is made.
struct Hangup;
impl Protocol for Hangup {
    fn connection_made(&mut self, t: Transport) {
        t.lose_connection();
    }
    fn data_received(&mut self, _: &[u8]) {}
}

impl Factory for Lifecycle {
    fn build_protocol(&self, _peer: &Address) -> Option<Box<dyn Protocol>> {
        self.events.borrow_mut().push("build");
        Some(Box::new(Hangup))
    }
    fn start_factory(&self) {
        self.events.borrow_mut().push("start");
    }
    fn stop_factory(&self) {
        self.events.borrow_mut().push("stop");
        if let Some(r) = self.stop_reactor.borrow_mut().take() {
            let _ = r.stop();
        }
    }
}

impl ClientFactory for Lifecycle {
    fn client_connection_failed(&self, connector: &Connector, _reason: Failure) {
        self.events.borrow_mut().push("failed");
        if self.reconnects.get() > 0 {
            self.reconnects.set(self.reconnects.get() - 1);
            connector.connect();
        }
    }
    fn client_connection_lost(&self, _connector: &Connector, _reason: Failure) {
        self.events.borrow_mut().push("lost");
    }
}

/// Turns the reactor until `cond` holds (at most 10 s). Stopping the
/// reactor instead would close the listening ports too.
fn turn_until(reactor: &Reactor, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() && std::time::Instant::now() < deadline {
        reactor.iterate(Some(Duration::from_millis(10))).unwrap();
    }
    assert!(cond(), "condition not reached within 10 s");
}

/// A port on 127.0.0.1 that is certainly closed: bound, then released.
fn closed_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

#[test]
fn two_ports_share_one_start_and_one_stop() {
    let reactor = Reactor::new().unwrap();
    let f = Rc::new(Lifecycle::default());
    let a = reactor.listen_tcp(any_local(), f.clone()).unwrap();
    let b = reactor.listen_tcp(any_local(), f.clone()).unwrap();
    assert_eq!(f.events(), ["start"], "started once for two ports");
    drop(a.stop_listening());
    assert_eq!(f.events(), ["start"], "one port still listens");
    drop(a.stop_listening());
    assert_eq!(f.events(), ["start"], "closing twice counts once");
    drop(b.stop_listening());
    assert_eq!(f.events(), ["start", "stop"]);
    // It can be started again by a new port.
    let c = reactor.listen_tcp(any_local(), f.clone()).unwrap();
    assert_eq!(f.events(), ["start", "stop", "start"]);
    drop(c.stop_listening());
    assert_eq!(f.count("stop"), 2);
}

#[test]
fn a_client_factory_stops_after_its_connection_is_lost() {
    let reactor = Reactor::new().unwrap();
    let server = echo_server(&reactor);
    let f = Rc::new(Lifecycle::default());
    *f.stop_reactor.borrow_mut() = Some(reactor.clone());
    let c = reactor.connect_tcp(server.local_addr(), f.clone(), ConnectOptions::default());
    assert_eq!(f.events(), ["start"]);
    run_until_stopped(&reactor, Duration::from_secs(10), "connection lost");
    assert_eq!(f.events(), ["start", "build", "lost", "stop"]);
    assert_eq!(c.state(), torsion_core::ConnectorState::Disconnected);
}

#[test]
fn a_refused_connection_stops_the_factory_unless_it_reconnects_from_the_callback() {
    let reactor = Reactor::new().unwrap();
    let f = Rc::new(Lifecycle::default());
    f.reconnects.set(2);
    *f.stop_reactor.borrow_mut() = Some(reactor.clone());
    let _c = reactor.connect_tcp(closed_port(), f.clone(), ConnectOptions::default());
    run_until_stopped(&reactor, Duration::from_secs(10), "three refusals");
    // Two reconnects from inside the callback keep the factory in use:
    // one start, three failures, one stop.
    assert_eq!(f.events(), ["start", "failed", "failed", "failed", "stop"]);
}

#[test]
fn a_factory_used_by_a_port_and_a_connector_stops_when_both_are_done() {
    let reactor = Reactor::new().unwrap();
    let f = Rc::new(Lifecycle::default());
    let port = reactor.listen_tcp(any_local(), f.clone()).unwrap();
    // The same factory connects to its own port: the server side hangs up
    // at once and the client side sees the connection lost. (Stopping the
    // reactor would close the port too, so turn it by hand.)
    let _c = reactor.connect_tcp(port.local_addr(), f.clone(), ConnectOptions::default());
    turn_until(&reactor, || f.count("lost") == 1);
    assert_eq!(f.count("start"), 1);
    assert_eq!(
        f.count("stop"),
        0,
        "the port still uses it: {:?}",
        f.events()
    );
    drop(port.stop_listening());
    assert_eq!(f.count("stop"), 1, "{:?}", f.events());
}

#[test]
fn unix_ports_and_connectors_count_users_too() {
    let dir = TempDir::new("lifecycle");
    let path = dir.path("s");
    let reactor = Reactor::new().unwrap();
    let server_f = Rc::new(Lifecycle::default());
    let port = reactor
        .listen_unix(
            UnixPath::from(path.as_path()),
            server_f.clone(),
            UnixListenOptions::default(),
        )
        .unwrap();
    let port2 = reactor
        .listen_unix(
            UnixPath::from(dir.path("t").as_path()),
            server_f.clone(),
            UnixListenOptions::default(),
        )
        .unwrap();
    assert_eq!(server_f.events(), ["start"]);

    let client_f = Rc::new(Lifecycle::default());
    let _c = reactor.connect_unix(UnixPath::from(path.as_path()), client_f.clone(), None);
    turn_until(&reactor, || client_f.count("stop") == 1);
    assert_eq!(client_f.events(), ["start", "build", "lost", "stop"]);

    // A refused Unix connection (no such socket) also ends its use.
    let refused_f = Rc::new(Lifecycle::default());
    let _c = reactor.connect_unix(
        UnixPath::from(dir.path("missing").as_path()),
        refused_f.clone(),
        None,
    );
    turn_until(&reactor, || refused_f.count("stop") == 1);
    assert_eq!(refused_f.events(), ["start", "failed", "stop"]);

    drop(port.stop_listening());
    assert_eq!(server_f.count("stop"), 0);
    drop(port2.stop_listening());
    assert_eq!(server_f.count("stop"), 1);
}

#[test]
fn wrapping_factories_start_the_inner_factory_once() {
    use torsion_core::policies::WrappingFactory;
    let reactor = Reactor::new().unwrap();
    let inner = Rc::new(Lifecycle::default());
    let wrapped = Rc::new(WrappingFactory::new(inner.clone()));
    let a = reactor.listen_tcp(any_local(), wrapped).unwrap();
    let b = reactor.listen_tcp(any_local(), inner.clone()).unwrap();
    assert_eq!(
        inner.events(),
        ["start"],
        "wrapper and port share one start"
    );
    drop(a.stop_listening());
    assert_eq!(inner.count("stop"), 0);
    drop(b.stop_listening());
    assert_eq!(inner.events(), ["start", "stop"]);
}
