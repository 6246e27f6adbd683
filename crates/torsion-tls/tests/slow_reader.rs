//! 100 MiB through TLS over TCP to a reader that keeps pausing: the sender
//! is paused by flow control, so neither side buffers more than a few
//! windows. (Its own test binary: it measures this process's peak memory.)

mod common;

use std::cell::{Cell, OnceCell};
use std::rc::Rc;
use std::time::Duration;

use common::*;
use torsion_core::{
    Address, ClientFactory, ConnectOptions, Factory, Failure, Producer, Protocol, Reactor,
    Transport,
};
use torsion_tls::*;

const TOTAL: usize = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

struct Sender {
    t: OnceCell<Transport>,
    paused: Cell<bool>,
    sent: Cell<usize>,
    max_buffered: Cell<usize>,
    chunk: Vec<u8>,
}

impl Sender {
    fn pump(&self) {
        let Some(t) = self.t.get() else { return };
        while !self.paused.get() && self.sent.get() < TOTAL {
            t.write(&self.chunk);
            self.sent.set(self.sent.get() + CHUNK);
            self.max_buffered
                .set(self.max_buffered.get().max(t.write_buffer_len()));
        }
        if self.sent.get() >= TOTAL {
            t.unregister_producer();
            t.lose_connection();
        }
    }
}

impl Producer for Sender {
    fn pause_producing(&self) {
        self.paused.set(true);
    }
    fn resume_producing(&self) {
        self.paused.set(false);
        self.pump();
    }
    fn stop_producing(&self) {
        self.paused.set(true);
    }
}

struct SenderProtocol(Rc<Sender>);

impl Protocol for SenderProtocol {
    fn connection_made(&mut self, t: Transport) {
        let _ = self.0.t.set(t.clone());
        t.register_producer(self.0.clone(), true).unwrap();
        self.0.pump();
    }
    fn data_received(&mut self, _data: &[u8]) {}
}

struct SenderFactory(Rc<Sender>);
impl Factory for SenderFactory {
    fn build_protocol(&self, _peer: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(SenderProtocol(self.0.clone())))
    }
}

struct SlowReader {
    reactor: Reactor,
    t: Option<Transport>,
    got: Rc<Cell<usize>>,
    calls: usize,
    lost: Rc<OnceCell<Failure>>,
}

impl Protocol for SlowReader {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.got.set(self.got.get() + data.len());
        self.calls += 1;
        let Some(t) = self.t.clone() else { return };
        // Stop reading after every delivery and come back later.
        t.pause_producing();
        let delay = if self.calls.is_multiple_of(8) {
            Duration::from_millis(1)
        } else {
            Duration::ZERO
        };
        self.reactor.call_later(delay, move || t.resume_producing());
    }
    fn connection_lost(&mut self, reason: Failure) {
        let _ = self.lost.set(reason);
    }
}

struct ReaderFactory {
    reactor: Reactor,
    got: Rc<Cell<usize>>,
    lost: Rc<OnceCell<Failure>>,
}
impl Factory for ReaderFactory {
    fn build_protocol(&self, _peer: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(SlowReader {
            reactor: self.reactor.clone(),
            t: None,
            got: self.got.clone(),
            calls: 0,
            lost: self.lost.clone(),
        }))
    }
}
impl ClientFactory for ReaderFactory {}

fn peak_rss_kib() -> usize {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn hundred_mib_to_a_slow_reader_keeps_memory_bounded() {
    init_logging();
    let pki = Pki::new("CA");
    let reactor = Reactor::new().unwrap();
    let sender = Rc::new(Sender {
        t: OnceCell::new(),
        paused: Cell::new(false),
        sent: Cell::new(0),
        max_buffered: Cell::new(0),
        chunk: vec![0x5a; CHUNK],
    });
    let port = listen_ssl(
        &reactor,
        "127.0.0.1:0".parse().unwrap(),
        Rc::new(SenderFactory(sender.clone())),
        pki.server_config(&["localhost"]),
    )
    .unwrap();
    let Address::Tcp(addr) = port.host() else {
        panic!()
    };
    let got = Rc::new(Cell::new(0));
    let lost = Rc::new(OnceCell::new());
    let before = peak_rss_kib();
    connect_ssl(
        &reactor,
        addr,
        Rc::new(ReaderFactory {
            reactor: reactor.clone(),
            got: got.clone(),
            lost: lost.clone(),
        }),
        pki.client_config(),
        "localhost",
        ConnectOptions::default(),
    )
    .unwrap();
    let l2 = lost.clone();
    assert!(
        run_until(&reactor, Duration::from_secs(240), move || l2
            .get()
            .is_some()),
        "transfer did not finish; got {} bytes",
        got.get()
    );
    assert_eq!(got.get(), TOTAL);
    let reason = lost.get().unwrap();
    assert!(
        matches!(
            reason.downcast_ref::<torsion_core::ConnectionError>(),
            Some(torsion_core::ConnectionError::Done)
        ),
        "{reason}"
    );
    let max = sender.max_buffered.get();
    assert!(
        max <= torsion_core::DEFAULT_HIGH_WATER + 2 * CHUNK + 4096,
        "sender buffered {max} bytes"
    );
    let grew = peak_rss_kib().saturating_sub(before);
    assert!(grew < 48 * 1024, "peak memory grew by {grew} KiB");
    eprintln!("max sender buffer {max} B, peak RSS growth {grew} KiB");
}
