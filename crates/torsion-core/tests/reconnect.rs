//! ReconnectingClientFactory: backoff with the manual clock, and a real
//! reconnect to a server that starts listening late.

mod common;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use torsion_core::testing::{self, MemoryReactor, TcpReactor};
use torsion_core::{
    factory_fn, ClientFactory, Clock, ConnectOptions, ConnectionError, ConnectorState, Factory,
    Failure, Protocol, Reactor, ReconnectingClientFactory, Transport,
};

struct Quiet;
impl Protocol for Quiet {
    fn data_received(&mut self, _: &[u8]) {}
}

fn refused() -> Failure {
    Failure::new(ConnectionError::Refused("test".into()))
}

/// Advances the clock in 1 ms steps until the connector is connecting again;
/// returns how long that took (None if it never does within `limit`).
fn wait_for_retry(
    clock: &testing::Clock,
    c: &torsion_core::Connector,
    limit: Duration,
) -> Option<Duration> {
    let start = clock.now();
    // Coarse steps first, then back up: keep the test fast for long delays.
    let step = Duration::from_millis(1);
    while clock.now() - start <= limit {
        if c.state() == ConnectorState::Connecting {
            return Some(clock.now() - start);
        }
        clock.advance(step);
    }
    None
}

#[test]
fn delays_grow_by_e_with_bounded_jitter_and_are_capped() {
    let mr = MemoryReactor::new();
    let clock = Rc::new(testing::Clock::new());
    let f = ReconnectingClientFactory::new(clock.clone(), || Quiet);
    f.max_delay.set(Duration::from_secs(20));
    let c = mr.connect_tcp(
        "127.0.0.1:1".parse().unwrap(),
        f.clone(),
        ConnectOptions::default(),
    );
    f.started_connecting(&c);
    let j = f.jitter.get();
    assert!((j - 0.1196).abs() < 0.001, "Twisted's default jitter");
    assert_eq!(f.delay(), Duration::from_secs(1));
    let mut expected = 1.0f64;
    let mut waits = Vec::new();
    for attempt in 1..=6 {
        c.set_state(ConnectorState::Disconnected, None);
        f.client_connection_failed(&c, refused());
        expected = (expected * std::f64::consts::E).min(20.0);
        assert!(
            (f.delay().as_secs_f64() - expected).abs() < 1e-6,
            "attempt {attempt}"
        );
        assert_eq!(f.retries(), attempt);
        let waited = wait_for_retry(&clock, &c, Duration::from_secs(30))
            .expect("retried")
            .as_secs_f64();
        let lo = expected * (1.0 - j) - 0.002;
        let hi = (expected * (1.0 + j)).min(20.0) + 0.002;
        assert!(
            waited >= lo && waited <= hi,
            "attempt {attempt}: waited {waited}, expected {lo}..{hi}"
        );
        waits.push(waited);
    }
    // e^3 > 20: from the fourth retry on, the delay is capped (jitter stays below the cap).
    assert!(waits[3..].iter().all(|w| *w <= 20.002));
}

#[test]
fn jitter_varies_and_zero_jitter_is_exact() {
    let mr = MemoryReactor::new();
    let clock = Rc::new(testing::Clock::new());
    let f = ReconnectingClientFactory::new(clock.clone(), || Quiet);
    f.initial_delay.set(Duration::from_millis(100));
    f.factor.set(1.0);
    f.reset_delay();
    let c = mr.connect_tcp(
        "127.0.0.1:1".parse().unwrap(),
        f.clone(),
        ConnectOptions::default(),
    );
    let mut waits = Vec::new();
    for _ in 0..10 {
        c.set_state(ConnectorState::Disconnected, None);
        f.client_connection_failed(&c, refused());
        waits.push(wait_for_retry(&clock, &c, Duration::from_secs(1)).unwrap());
    }
    waits.sort();
    waits.dedup();
    assert!(waits.len() > 1, "jitter never changed the delay: {waits:?}");
    f.jitter.set(0.0);
    for _ in 0..3 {
        c.set_state(ConnectorState::Disconnected, None);
        f.client_connection_failed(&c, refused());
        assert_eq!(
            wait_for_retry(&clock, &c, Duration::from_secs(1)),
            Some(Duration::from_millis(100))
        );
    }
}

#[test]
fn success_resets_the_delay_and_stop_trying_stops() {
    let mr = MemoryReactor::new();
    let clock = Rc::new(testing::Clock::new());
    let f = ReconnectingClientFactory::new(clock.clone(), || Quiet);
    let c = mr.connect_tcp(
        "127.0.0.1:1".parse().unwrap(),
        f.clone(),
        ConnectOptions::default(),
    );
    f.started_connecting(&c);
    for _ in 0..3 {
        c.set_state(ConnectorState::Disconnected, None);
        f.client_connection_failed(&c, refused());
        wait_for_retry(&clock, &c, Duration::from_secs(60)).unwrap();
    }
    assert_eq!(f.retries(), 3);
    assert!(f.delay() > Duration::from_secs(20));
    // A connection succeeds: the factory builds a protocol.
    assert!(f
        .build_protocol(&torsion_core::Address::Memory("x".into()))
        .is_some());
    assert_eq!(f.retries(), 0);
    assert_eq!(f.delay(), Duration::from_secs(1));
    // Lost again: retries from the initial delay.
    c.set_state(ConnectorState::Disconnected, None);
    f.client_connection_lost(&c, Failure::new(ConnectionError::Reset));
    let w = wait_for_retry(&clock, &c, Duration::from_secs(60)).unwrap();
    assert!(w.as_secs_f64() < std::f64::consts::E * 1.13);
    // Failed, retry scheduled; stop_trying cancels it.
    c.set_state(ConnectorState::Disconnected, None);
    f.client_connection_failed(&c, refused());
    assert_eq!(clock.pending_calls(), 1);
    f.stop_trying();
    assert_eq!(clock.pending_calls(), 0);
    assert_eq!(wait_for_retry(&clock, &c, Duration::from_secs(10)), None);
    f.client_connection_failed(&c, refused());
    assert_eq!(clock.pending_calls(), 0, "retried after stop_trying");
}

#[test]
fn max_retries_gives_up() {
    let mr = MemoryReactor::new();
    let clock = Rc::new(testing::Clock::new());
    let f = ReconnectingClientFactory::new(clock.clone(), || Quiet);
    f.max_retries.set(Some(2));
    let c = mr.connect_tcp(
        "127.0.0.1:1".parse().unwrap(),
        f.clone(),
        ConnectOptions::default(),
    );
    for _ in 0..2 {
        c.set_state(ConnectorState::Disconnected, None);
        f.client_connection_failed(&c, refused());
        assert!(wait_for_retry(&clock, &c, Duration::from_secs(60)).is_some());
    }
    c.set_state(ConnectorState::Disconnected, None);
    f.client_connection_failed(&c, refused());
    assert_eq!(clock.pending_calls(), 0);
}

/// Sends "hello" on connect and stops the reactor when it comes back.
struct Hello(Option<Transport>, Rc<Cell<u32>>);
impl Protocol for Hello {
    fn connection_made(&mut self, t: Transport) {
        self.1.set(self.1.get() + 1);
        t.write(b"hello");
        self.0 = Some(t);
    }
    fn data_received(&mut self, d: &[u8]) {
        if d == b"hello" {
            self.1.set(self.1.get() + 100);
        }
    }
}

#[test]
fn reconnects_to_a_server_that_starts_listening_later() {
    let reactor = Reactor::new().unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let made = Rc::new(Cell::new(0));
    let m = made.clone();
    let f =
        ReconnectingClientFactory::new(Rc::new(reactor.clone()), move || Hello(None, m.clone()));
    f.initial_delay.set(Duration::from_millis(20));
    f.factor.set(1.5);
    f.max_delay.set(Duration::from_millis(200));
    f.reset_delay();
    let connector = reactor.connect_tcp(addr, f.clone(), ConnectOptions::default());
    let failures_seen = Rc::new(Cell::new(0u32));
    let (r, fs, f2) = (reactor.clone(), failures_seen.clone(), f.clone());
    reactor.call_later(Duration::from_millis(300), move || {
        fs.set(f2.retries());
        r.listen_tcp(addr, factory_fn(Echo::default)).unwrap();
    });
    let retries_when_echoed = Rc::new(Cell::new(None));
    let (m, re, f3) = (made.clone(), retries_when_echoed.clone(), f.clone());
    stop_when(&reactor, move || {
        let done = m.get() == 101;
        if done {
            re.set(Some(f3.retries()));
        }
        done
    });
    run_until_stopped(&reactor, Duration::from_secs(20), "reconnect");
    assert!(
        failures_seen.get() >= 1,
        "no retry before the server listened"
    );
    assert_eq!(made.get(), 101, "connected once, echo received");
    assert_eq!(
        retries_when_echoed.get(),
        Some(0),
        "success resets the retry count"
    );
    // Shutdown closed the connection; a stopped factory does not try again.
    f.stop_trying();
    assert_eq!(connector.state(), ConnectorState::Disconnected);
}

#[test]
fn extreme_settings_do_not_panic() {
    let mr = MemoryReactor::new();
    let clock = Rc::new(testing::Clock::new());
    let f = ReconnectingClientFactory::new(clock.clone(), || Quiet);
    f.max_delay.set(Duration::MAX);
    f.factor.set(f64::INFINITY);
    let c = mr.connect_tcp(
        "127.0.0.1:1".parse().unwrap(),
        f.clone(),
        ConnectOptions::default(),
    );
    c.set_state(ConnectorState::Disconnected, None);
    f.client_connection_failed(&c, refused());
    assert_eq!(f.delay(), Duration::MAX);
    f.factor.set(f64::NAN);
    f.max_delay.set(Duration::from_secs(5));
    f.client_connection_failed(&c, refused());
    assert!(f.delay() <= Duration::from_secs(5));
    f.stop_trying();
}
