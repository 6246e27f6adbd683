//! Policies around a factory: idle timeout, connection limits, throttling,
//! traffic logging. Driven in memory with a manual clock where time matters,
//! and over real TCP for the connection limits.

#[path = "transports_common/mod.rs"]
mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::{run_until, Echo};
use torsion_core::policies::*;
use torsion_core::testing::{AccumulatingProtocol, Clock, LoopbackPump};
use torsion_core::{
    factory_fn, Address, ConnectOptions, ConnectionError, Factory, Protocol, Reactor, Transport,
};

fn server_from(factory: &WrappingFactory) -> Box<dyn Protocol> {
    factory
        .build_protocol(&Address::Memory("client".into()))
        .expect("allowed")
}

#[test]
fn idle_timeout_resets_on_activity_then_aborts() {
    let clock = Rc::new(Clock::new());
    let policy = Rc::new(IdleTimeout::new(clock.clone(), Duration::from_secs(10)));
    let factory = WrappingFactory::new(factory_fn(Echo::default)).with(policy.clone());
    let (client, log) = AccumulatingProtocol::new();
    let pump = LoopbackPump::connect(server_from(&factory), Box::new(client));
    clock.advance(Duration::from_secs(8));
    pump.client_transport().write(b"still here");
    pump.pump();
    assert_eq!(log.data(), b"still here");
    clock.advance(Duration::from_secs(8)); // 16 s since start, 8 s since activity
    pump.pump();
    assert!(log.lost().is_none(), "activity must reset the timer");
    clock.advance(Duration::from_secs(3));
    pump.pump();
    let lost = log.lost().expect("timed out");
    assert!(
        matches!(
            lost.downcast_ref::<ConnectionError>(),
            Some(ConnectionError::Reset)
        ),
        "{lost}"
    );
    assert_eq!(policy.timed_out(), 1);
}

#[test]
fn throttling_reads_pauses_until_the_next_second() {
    let clock = Rc::new(Clock::new());
    let throttle = Rc::new(Throttle::new(clock.clone(), Some(10), None));
    let got = Rc::new(RefCell::new(Vec::new()));
    let g2 = got.clone();
    struct Sink(Rc<RefCell<Vec<u8>>>);
    impl Protocol for Sink {
        fn data_received(&mut self, d: &[u8]) {
            self.0.borrow_mut().extend_from_slice(d)
        }
    }
    let factory = WrappingFactory::new(factory_fn(move || Sink(g2.clone()))).with(throttle);
    let (client, _log) = AccumulatingProtocol::new();
    let pump = LoopbackPump::connect(server_from(&factory), Box::new(client));
    pump.client_transport().write(b"0123456789");
    pump.pump();
    assert_eq!(got.borrow().len(), 10);
    pump.client_transport().write(b"abcdefghij");
    pump.pump();
    assert_eq!(got.borrow().len(), 10, "budget spent: reading is paused");
    clock.advance(Duration::from_secs(1));
    pump.pump();
    assert_eq!(&got.borrow()[..], b"0123456789abcdefghij");
}

#[test]
fn throttling_writes_holds_bytes_over_the_budget() {
    let clock = Rc::new(Clock::new());
    let throttle = Rc::new(Throttle::new(clock.clone(), None, Some(10)));
    struct Chatty;
    impl Protocol for Chatty {
        fn connection_made(&mut self, t: Transport) {
            for chunk in [b"aaaaa", b"bbbbb", b"ccccc", b"ddddd", b"eeeee"] {
                t.write(chunk);
            }
        }
        fn data_received(&mut self, _: &[u8]) {}
    }
    let factory = WrappingFactory::new(factory_fn(|| Chatty)).with(throttle.clone());
    let (client, log) = AccumulatingProtocol::new();
    let pump = LoopbackPump::connect(server_from(&factory), Box::new(client));
    pump.pump();
    assert_eq!(log.data(), b"aaaaabbbbb");
    assert_eq!(throttle.held_bytes(0), 15);
    clock.advance(Duration::from_secs(1));
    pump.pump();
    assert_eq!(log.data(), b"aaaaabbbbbcccccddddd");
    clock.advance(Duration::from_secs(1));
    pump.pump();
    assert_eq!(log.data(), b"aaaaabbbbbcccccdddddeeeee");
    assert_eq!(throttle.held_bytes(0), 0);
}

#[test]
fn traffic_log_records_both_directions() {
    let (log_policy, events) = TrafficLog::recording();
    let factory = WrappingFactory::new(factory_fn(Echo::default)).with(Rc::new(log_policy));
    let (client, _log) = AccumulatingProtocol::new();
    let pump = LoopbackPump::connect(server_from(&factory), Box::new(client));
    pump.client_transport().write(b"hi");
    pump.pump();
    pump.client_transport().lose_connection();
    pump.pump();
    let ev = events.borrow();
    assert_eq!(
        ev[..3],
        [
            TrafficEvent::Open {
                id: 0,
                peer: Address::Memory("client".into())
            },
            TrafficEvent::In {
                id: 0,
                data: b"hi".to_vec()
            },
            TrafficEvent::Out {
                id: 0,
                data: b"hi".to_vec()
            },
        ]
    );
    assert!(matches!(&ev[3], TrafficEvent::Close { id: 0, .. }));
    assert_eq!(ev.len(), 4);
}

#[test]
fn connection_limits_close_excess_connections_at_once() {
    let reactor = Reactor::new().unwrap();
    let limit = Rc::new(LimitConnections::new(Some(3), Some(2)));
    let factory = WrappingFactory::new(factory_fn(Echo::default)).with(limit.clone());
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), Rc::new(factory))
        .unwrap();
    let mut logs = Vec::new();
    for _ in 0..3 {
        let (p, log) = AccumulatingProtocol::new();
        let p = RefCell::new(Some(p));
        reactor.connect_tcp(
            port.local_addr(),
            factory_fn(move || p.borrow_mut().take().unwrap()),
            ConnectOptions::default(),
        );
        logs.push(log);
    }
    // All three connect at the TCP level; the third is closed by the server
    // at once (per-peer limit 2: they all come from 127.0.0.1).
    assert!(run_until(&reactor, Duration::from_secs(10), || logs[2]
        .lost()
        .is_some()
        && limit.open() == 2));
    assert_eq!(limit.refused(), 1);
    for l in &logs[..2] {
        l.transport().unwrap().write(b"ok");
    }
    assert!(run_until(&reactor, Duration::from_secs(10), || logs[..2]
        .iter()
        .all(|l| l.data() == b"ok")));
    assert!(logs[0].lost().is_none() && logs[1].lost().is_none());
    // Closing one frees a slot.
    logs[0].transport().unwrap().lose_connection();
    assert!(run_until(&reactor, Duration::from_secs(10), || limit
        .open()
        == 1));
    let (p, log) = AccumulatingProtocol::new();
    let p = RefCell::new(Some(p));
    reactor.connect_tcp(
        port.local_addr(),
        factory_fn(move || p.borrow_mut().take().unwrap()),
        ConnectOptions::default(),
    );
    assert!(run_until(&reactor, Duration::from_secs(10), || limit
        .open()
        == 2));
    log.transport().unwrap().write(b"again");
    assert!(run_until(&reactor, Duration::from_secs(10), || log.data() == b"again"));
}
