//! User callbacks that panic, and callbacks that re-enter the reactor.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::TcpStream as StdStream;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use torsion_core::{
    factory_fn, ConnectOptions, Failure, Protocol, Reactor, ReactorError, Transport,
};

const LIMIT: Duration = Duration::from_secs(30);

/// Echoes, but panics on "boom" (in data_received) and, when asked, in connection_made.
struct Fragile {
    t: Option<Transport>,
    panic_on_made: bool,
    lost: Rc<RefCell<Vec<String>>>,
}

impl Protocol for Fragile {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
        if self.panic_on_made {
            panic!("connection_made exploded");
        }
    }
    fn data_received(&mut self, d: &[u8]) {
        if d.windows(4).any(|w| w == b"boom") {
            panic!("data_received exploded");
        }
        self.t.as_ref().unwrap().write(d);
    }
    fn connection_lost(&mut self, r: Failure) {
        self.lost.borrow_mut().push(r.to_string());
    }
}

fn roundtrip(s: &mut StdStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    s.write_all(msg)?;
    let mut b = vec![0; msg.len()];
    s.read_exact(&mut b)?;
    Ok(b)
}

/// Reads until EOF or error; true if the connection ended.
fn ends(s: &mut StdStream) -> bool {
    let mut b = [0; 64];
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
}

#[test]
fn panic_in_data_received_is_logged_with_the_peer_and_aborts_only_that_connection() {
    let (logs, _guard) = capture_logs();
    let reactor = Reactor::new().unwrap();
    let lost = Rc::new(RefCell::new(Vec::new()));
    let l = lost.clone();
    let addr = reactor
        .listen_tcp(
            any_local(),
            factory_fn(move || Fragile {
                t: None,
                panic_on_made: false,
                lost: l.clone(),
            }),
        )
        .unwrap()
        .local_addr();
    let peers = std::thread::spawn(move || {
        let mut good = StdStream::connect(addr).unwrap();
        let mut bad = StdStream::connect(addr).unwrap();
        for s in [&good, &bad] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        }
        let bad_addr = bad.local_addr().unwrap();
        let before = roundtrip(&mut good, b"before").unwrap();
        bad.write_all(b"boom").unwrap();
        let bad_ended = ends(&mut bad);
        let after = roundtrip(&mut good, b"after").unwrap();
        (bad_addr, before, after, bad_ended)
    });
    let (bad_addr, before, after, bad_ended) = wait_thread(&reactor, peers);
    assert_eq!(before, b"before");
    assert_eq!(after, b"after");
    assert!(bad_ended, "the panicking connection was not closed");
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("panicked"))
        .unwrap_or_else(|| panic!("no panic logged:\n{text}"));
    assert!(line.contains("data_received"), "{line}");
    assert!(line.contains(&bad_addr.to_string()), "peer missing: {line}");
    assert!(line.contains("data_received exploded"), "{line}");
    // The aborted connection heard why; the good one closed cleanly at shutdown.
    let lost = lost.borrow();
    assert!(
        lost.iter()
            .any(|r| r.contains("protocol callback panicked") && r.contains("exploded")),
        "{lost:?}"
    );
}

#[test]
fn panic_in_connection_made_is_logged_and_the_next_connection_works() {
    let (logs, _guard) = capture_logs();
    let reactor = Reactor::new().unwrap();
    let first = Cell::new(true);
    let lost = Rc::new(RefCell::new(Vec::new()));
    let l = lost.clone();
    let addr = reactor
        .listen_tcp(
            any_local(),
            factory_fn(move || Fragile {
                t: None,
                panic_on_made: first.replace(false),
                lost: l.clone(),
            }),
        )
        .unwrap()
        .local_addr();
    let peers = std::thread::spawn(move || {
        let mut bad = StdStream::connect(addr).unwrap();
        bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let bad_addr = bad.local_addr().unwrap();
        let bad_ended = ends(&mut bad);
        let mut good = StdStream::connect(addr).unwrap();
        good.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        (bad_addr, bad_ended, roundtrip(&mut good, b"fine").unwrap())
    });
    let (bad_addr, bad_ended, echoed) = wait_thread(&reactor, peers);
    assert!(bad_ended);
    assert_eq!(echoed, b"fine");
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("connection_made panicked"))
        .unwrap_or_else(|| panic!("no panic logged:\n{text}"));
    assert!(line.contains(&bad_addr.to_string()), "{line}");
}

#[test]
fn panics_in_timers_soon_calls_thread_calls_and_connection_lost_keep_the_reactor_running() {
    let (logs, _guard) = capture_logs();
    let reactor = Reactor::new().unwrap();
    reactor.call_later(Duration::from_millis(1), || panic!("timer exploded"));
    reactor.call_soon(|| panic!("soon exploded"));
    reactor
        .handle()
        .call_from_thread(|| panic!("thread call exploded"));
    // A connection whose connection_lost panics.
    struct BadLost;
    impl Protocol for BadLost {
        fn data_received(&mut self, _: &[u8]) {}
        fn connection_lost(&mut self, _: Failure) {
            panic!("connection_lost exploded");
        }
    }
    let addr = reactor
        .listen_tcp(any_local(), factory_fn(|| BadLost))
        .unwrap()
        .local_addr();
    let peer = StdStream::connect(addr).unwrap();
    let ran_after = Rc::new(Cell::new(false));
    let (ra, r) = (ran_after.clone(), reactor.clone());
    reactor.call_later(Duration::from_millis(100), move || {
        drop(peer);
        let r2 = r.clone();
        r.call_later(Duration::from_millis(100), move || {
            ra.set(true);
            r2.stop().unwrap();
        });
    });
    run_until_stopped(&reactor, LIMIT, "panicking callbacks");
    assert!(ran_after.get());
    let text = logs.text();
    for needle in [
        "timed call panicked",
        "timer exploded",
        "call_soon callback panicked",
        "soon exploded",
        "call_from_thread callback panicked",
        "thread call exploded",
        "connection_lost panicked",
        "connection_lost exploded",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
}

#[test]
fn panic_in_client_callbacks_is_contained() {
    let (logs, _guard) = capture_logs();
    let reactor = Reactor::new().unwrap();
    struct BadFactory;
    impl torsion_core::Factory for BadFactory {
        fn build_protocol(&self, _: &torsion_core::Address) -> Option<Box<dyn Protocol>> {
            panic!("build_protocol exploded")
        }
    }
    impl torsion_core::ClientFactory for BadFactory {
        fn client_connection_failed(&self, _: &torsion_core::Connector, _: Failure) {
            panic!("client_connection_failed exploded")
        }
    }
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    reactor.connect_tcp(closed, Rc::new(BadFactory), ConnectOptions::default());
    let server = echo_server(&reactor).local_addr();
    let c = reactor.connect_tcp(server, Rc::new(BadFactory), ConnectOptions::default());
    let l = logs.clone();
    stop_when(&reactor, move || {
        let t = l.text();
        t.contains("client_connection_failed panicked") && t.contains("build_protocol panicked")
    });
    run_until_stopped(&reactor, LIMIT, "client panics");
    assert_eq!(c.state(), torsion_core::ConnectorState::Disconnected);
    let text = logs.text();
    assert!(text.contains("client_connection_failed panicked"), "{text}");
    assert!(text.contains("build_protocol panicked"), "{text}");
}

/// From inside a data_received: listen, connect, cancel and reset timers,
/// schedule calls, and finally stop the reactor — all without a RefCell
/// double borrow. Running the reactor from inside itself is a typed error.
#[test]
fn callbacks_may_listen_connect_cancel_timers_and_stop() {
    let reactor = Reactor::new().unwrap();
    let log = Rc::new(RefCell::new(Vec::<String>::new()));
    let doomed = Rc::new(RefCell::new(None));
    let moved = Rc::new(RefCell::new(None));
    {
        let l = log.clone();
        *doomed.borrow_mut() = Some(reactor.call_later(Duration::from_secs(5), move || {
            l.borrow_mut().push("doomed timer ran".into())
        }));
        let l = log.clone();
        *moved.borrow_mut() = Some(reactor.call_later(Duration::from_secs(60), move || {
            l.borrow_mut().push("moved timer ran".into())
        }));
    }

    struct Busy {
        t: Option<Transport>,
        reactor: Reactor,
        log: Rc<RefCell<Vec<String>>>,
        doomed: Rc<RefCell<Option<torsion_core::DelayedCall>>>,
        moved: Rc<RefCell<Option<torsion_core::DelayedCall>>>,
    }
    /// The second-level server: replies, and its client stops the reactor.
    struct Inner(Option<Transport>);
    impl Protocol for Inner {
        fn connection_made(&mut self, t: Transport) {
            t.write(b"inner hello");
            self.0 = Some(t);
        }
        fn data_received(&mut self, _: &[u8]) {}
    }
    struct InnerClient(Reactor, Rc<RefCell<Vec<String>>>);
    impl Protocol for InnerClient {
        fn data_received(&mut self, d: &[u8]) {
            self.1
                .borrow_mut()
                .push(format!("inner client got {}", String::from_utf8_lossy(d)));
            // Nested: iterating or running the reactor from a callback is refused.
            assert!(matches!(
                self.0.iterate(Some(Duration::ZERO)),
                Err(ReactorError::Reentrant)
            ));
            assert!(self.0.run().is_err());
            self.0.stop().unwrap();
            // A second stop while stopping is a typed error, not a panic.
            assert!(self.0.stop().is_err());
        }
    }
    impl Protocol for Busy {
        fn connection_made(&mut self, t: Transport) {
            self.t = Some(t);
        }
        fn data_received(&mut self, _d: &[u8]) {
            let r = &self.reactor;
            self.doomed.borrow().as_ref().unwrap().cancel().unwrap();
            self.moved
                .borrow()
                .as_ref()
                .unwrap()
                .reset(Duration::ZERO)
                .unwrap();
            let port = r
                .listen_tcp(any_local(), factory_fn(|| Inner(None)))
                .unwrap();
            let (r2, l2) = (r.clone(), self.log.clone());
            r.connect_tcp(
                port.local_addr(),
                factory_fn(move || InnerClient(r2.clone(), l2.clone())),
                ConnectOptions::default(),
            );
            let l = self.log.clone();
            r.call_soon(move || l.borrow_mut().push("soon from data_received".into()));
            self.t.as_ref().unwrap().write(b"ack");
            self.log.borrow_mut().push("outer data".into());
        }
    }
    let (r, l, d, m) = (reactor.clone(), log.clone(), doomed.clone(), moved.clone());
    let addr = reactor
        .listen_tcp(
            any_local(),
            factory_fn(move || Busy {
                t: None,
                reactor: r.clone(),
                log: l.clone(),
                doomed: d.clone(),
                moved: m.clone(),
            }),
        )
        .unwrap()
        .local_addr();
    let mut peer = StdStream::connect(addr).unwrap();
    peer.write_all(b"go").unwrap();
    run_until_stopped(&reactor, LIMIT, "re-entrant callbacks");
    let log = log.borrow();
    assert!(log.contains(&"outer data".to_string()), "{log:?}");
    assert!(
        log.contains(&"soon from data_received".to_string()),
        "{log:?}"
    );
    assert!(log.contains(&"moved timer ran".to_string()), "{log:?}");
    assert!(
        log.contains(&"inner client got inner hello".to_string()),
        "{log:?}"
    );
    assert!(!log.contains(&"doomed timer ran".to_string()), "{log:?}");
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let _ = peer.read_to_end(&mut got);
    assert_eq!(got, b"ack");
}

/// Runs the reactor until the peer thread is done.
fn wait_thread<T: 'static>(reactor: &Reactor, h: std::thread::JoinHandle<T>) -> T {
    let h = Rc::new(RefCell::new(Some(h)));
    let h2 = h.clone();
    stop_when(reactor, move || {
        h2.borrow().as_ref().is_some_and(|h| h.is_finished())
    });
    run_until_stopped(reactor, LIMIT, "waiting for a peer thread");
    let h = h.borrow_mut().take().unwrap();
    h.join().unwrap()
}

/// A producer whose pause_producing panics: logged with the peer, the
/// connection is aborted, the producer told to stop.
#[test]
fn panic_in_a_producer_aborts_its_connection() {
    let (logs, _guard) = capture_logs();
    let reactor = Reactor::new().unwrap();
    struct BadProducer(Rc<Cell<bool>>);
    impl torsion_core::Producer for BadProducer {
        fn pause_producing(&self) {
            panic!("pause_producing exploded");
        }
        fn resume_producing(&self) {}
        fn stop_producing(&self) {
            self.0.set(true);
        }
    }
    struct Flood(Rc<Cell<bool>>, Rc<RefCell<Option<Failure>>>);
    impl Protocol for Flood {
        fn connection_made(&mut self, t: Transport) {
            t.register_producer(Rc::new(BadProducer(self.0.clone())), true)
                .unwrap();
            // Past the high-water mark at once: the transport pauses the producer.
            t.write(&vec![0u8; 4 << 20]);
        }
        fn data_received(&mut self, _: &[u8]) {}
        fn connection_lost(&mut self, r: Failure) {
            *self.1.borrow_mut() = Some(r);
        }
    }
    let stopped = Rc::new(Cell::new(false));
    let lost = Rc::new(RefCell::new(None));
    let (s, l) = (stopped.clone(), lost.clone());
    let addr = reactor
        .listen_tcp(any_local(), factory_fn(move || Flood(s.clone(), l.clone())))
        .unwrap()
        .local_addr();
    let peer = StdStream::connect(addr).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let l = lost.clone();
    stop_when(&reactor, move || l.borrow().is_some());
    run_until_stopped(&reactor, LIMIT, "producer panic");
    let f = lost.borrow().clone().unwrap();
    assert!(f.to_string().contains("pause_producing exploded"), "{f}");
    assert!(stopped.get());
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("pause_producing panicked"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains(&peer_addr.to_string()), "{line}");
}
