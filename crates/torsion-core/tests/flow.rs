//! Flow control over real sockets: push and pull producers, a slow reader, a
//! peer that never reads.

mod common;

use std::cell::{Cell, RefCell};
use std::io::Read;
use std::net::TcpStream as StdStream;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use torsion_core::{
    factory_fn, ConnectOptions, ConnectionError, Failure, Producer, Protocol, Reactor, Transport,
    DEFAULT_HIGH_WATER,
};

const CHUNK: usize = 16 * 1024;

/// Chunk `i` of the test stream: little-endian u64 word counters, so the
/// reader can check every byte's position cheaply.
fn chunk(i: u64) -> Vec<u8> {
    let words = CHUNK as u64 / 8;
    (0..words)
        .flat_map(|k| (i * words + k).to_le_bytes())
        .collect()
}

/// A push producer writing `total` bytes in CHUNK pieces while not paused.
struct Streamer {
    t: Transport,
    total: u64,
    sent: Cell<u64>,
    paused: Cell<bool>,
    stopped: Cell<bool>,
    pauses: Cell<u32>,
    max_buffer: Cell<usize>,
    finish_with_close: bool,
}

impl Streamer {
    fn produce(&self) {
        while !self.paused.get() && !self.stopped.get() && self.sent.get() < self.total {
            let i = self.sent.get() / CHUNK as u64;
            self.sent.set(self.sent.get() + CHUNK as u64);
            // Write may call pause_producing synchronously.
            self.t.write(&chunk(i));
            self.max_buffer
                .set(self.max_buffer.get().max(self.t.write_buffer_len()));
        }
        if self.sent.get() >= self.total && self.finish_with_close && !self.stopped.get() {
            self.stopped.set(true);
            self.t.unregister_producer();
            self.t.lose_connection();
        }
    }
}

impl Producer for Streamer {
    fn pause_producing(&self) {
        self.paused.set(true);
        self.pauses.set(self.pauses.get() + 1);
    }
    fn resume_producing(&self) {
        self.paused.set(false);
        self.produce();
    }
    fn stop_producing(&self) {
        self.stopped.set(true);
    }
}

/// Server protocol that registers a Streamer on connect.
struct StreamServer {
    total: u64,
    slot: Rc<RefCell<Option<Rc<Streamer>>>>,
    lost: Rc<RefCell<Option<Failure>>>,
    finish_with_close: bool,
}

impl Protocol for StreamServer {
    fn connection_made(&mut self, t: Transport) {
        let s = Rc::new(Streamer {
            t: t.clone(),
            total: self.total,
            sent: Cell::new(0),
            paused: Cell::new(false),
            stopped: Cell::new(false),
            pauses: Cell::new(0),
            max_buffer: Cell::new(0),
            finish_with_close: self.finish_with_close,
        });
        t.register_producer(s.clone(), true).unwrap();
        *self.slot.borrow_mut() = Some(s.clone());
        s.produce();
    }
    fn data_received(&mut self, _d: &[u8]) {}
    fn connection_lost(&mut self, r: Failure) {
        *self.lost.borrow_mut() = Some(r);
    }
}

/// Client that checks the word counters, pausing its reading every `pause_every` bytes.
struct SlowReader {
    t: Option<Transport>,
    carry: Vec<u8>,
    next_word: u64,
    received: Rc<Cell<u64>>,
    errors: Rc<Cell<u64>>,
    pause_every: u64,
    since_pause: u64,
    reactor: Reactor,
    done: Rc<RefCell<Option<Failure>>>,
    pauses: Rc<Cell<u32>>,
}

impl Protocol for SlowReader {
    fn connection_made(&mut self, t: Transport) {
        self.t = Some(t);
    }
    fn data_received(&mut self, d: &[u8]) {
        self.received.set(self.received.get() + d.len() as u64);
        self.carry.extend_from_slice(d);
        let whole = self.carry.len() / 8 * 8;
        for w in self.carry[..whole].chunks_exact(8) {
            if u64::from_le_bytes(w.try_into().unwrap()) != self.next_word {
                self.errors.set(self.errors.get() + 1);
            }
            self.next_word += 1;
        }
        self.carry.drain(..whole);
        self.since_pause += d.len() as u64;
        if self.since_pause >= self.pause_every {
            self.since_pause = 0;
            self.pauses.set(self.pauses.get() + 1);
            let t = self.t.clone().unwrap();
            t.pause_producing();
            self.reactor
                .call_later(Duration::from_millis(2), move || t.resume_producing());
        }
    }
    fn connection_lost(&mut self, r: Failure) {
        *self.done.borrow_mut() = Some(r);
        let _ = self.reactor.stop();
    }
}

#[test]
fn streaming_100_mib_to_a_slow_reader_keeps_the_write_buffer_bounded() {
    const TOTAL: u64 = 100 * 1024 * 1024;
    let reactor = Reactor::new().unwrap();
    let slot = Rc::new(RefCell::new(None));
    let server_lost = Rc::new(RefCell::new(None));
    let (s2, l2) = (slot.clone(), server_lost.clone());
    let addr = reactor
        .listen_tcp(
            any_local(),
            factory_fn(move || StreamServer {
                total: TOTAL,
                slot: s2.clone(),
                lost: l2.clone(),
                finish_with_close: true,
            }),
        )
        .unwrap()
        .local_addr();
    let received = Rc::new(Cell::new(0));
    let errors = Rc::new(Cell::new(0));
    let done = Rc::new(RefCell::new(None));
    let reader_pauses = Rc::new(Cell::new(0));
    let (rc, ec, dn, rp, r) = (
        received.clone(),
        errors.clone(),
        done.clone(),
        reader_pauses.clone(),
        reactor.clone(),
    );
    let made = RefCell::new(false);
    let client = factory_fn(move || {
        assert!(!made.replace(true));
        SlowReader {
            t: None,
            carry: Vec::new(),
            next_word: 0,
            received: rc.clone(),
            errors: ec.clone(),
            pause_every: 256 * 1024,
            since_pause: 0,
            reactor: r.clone(),
            done: dn.clone(),
            pauses: rp.clone(),
        }
    });
    reactor.connect_tcp(addr, client, ConnectOptions::default());
    let t0 = std::time::Instant::now();
    run_until_stopped(&reactor, Duration::from_secs(120), "100 MiB stream");
    eprintln!("100 MiB in {:?}", t0.elapsed());
    assert_eq!(received.get(), TOTAL, "client got every byte");
    assert_eq!(errors.get(), 0, "bytes out of order or corrupted");
    let f = done.borrow().clone().unwrap();
    assert!(matches!(conn_err(&f), ConnectionError::Done), "{f}");
    let s = slot.borrow().clone().unwrap();
    assert!(reader_pauses.get() > 100);
    assert!(s.pauses.get() > 0, "the producer was never paused");
    assert!(
        s.max_buffer.get() <= DEFAULT_HIGH_WATER + CHUNK,
        "write buffer reached {} bytes",
        s.max_buffer.get()
    );
}

/// A pull producer: writes one chunk each time it is asked.
struct Puller {
    t: Transport,
    left: Cell<u32>,
    next: Cell<u64>,
    asked: Cell<u32>,
    max_buffer: Cell<usize>,
}

impl Producer for Puller {
    fn pause_producing(&self) {
        panic!("a pull producer is never paused");
    }
    fn resume_producing(&self) {
        self.asked.set(self.asked.get() + 1);
        if self.left.get() == 0 {
            self.t.unregister_producer();
            self.t.lose_connection();
            return;
        }
        self.left.set(self.left.get() - 1);
        let i = self.next.get();
        self.next.set(i + 1);
        self.t.write(&chunk(i));
        self.max_buffer
            .set(self.max_buffer.get().max(self.t.write_buffer_len()));
    }
    fn stop_producing(&self) {}
}

#[test]
fn pull_producer_is_asked_for_one_piece_at_a_time() {
    const CHUNKS: u32 = 512; // 8 MiB
    let reactor = Reactor::new().unwrap();
    let puller: Rc<RefCell<Option<Rc<Puller>>>> = Rc::new(RefCell::new(None));
    let p2 = puller.clone();
    struct PullServer(Rc<RefCell<Option<Rc<Puller>>>>);
    impl Protocol for PullServer {
        fn connection_made(&mut self, t: Transport) {
            let p = Rc::new(Puller {
                t: t.clone(),
                left: Cell::new(CHUNKS),
                next: Cell::new(0),
                asked: Cell::new(0),
                max_buffer: Cell::new(0),
            });
            *self.0.borrow_mut() = Some(p.clone());
            t.register_producer(p, false).unwrap();
        }
        fn data_received(&mut self, _d: &[u8]) {}
    }
    let addr = reactor
        .listen_tcp(any_local(), factory_fn(move || PullServer(p2.clone())))
        .unwrap()
        .local_addr();
    let received = Rc::new(Cell::new(0));
    let errors = Rc::new(Cell::new(0));
    let done = Rc::new(RefCell::new(None));
    let (rc, ec, dn, r) = (
        received.clone(),
        errors.clone(),
        done.clone(),
        reactor.clone(),
    );
    reactor.connect_tcp(
        addr,
        factory_fn(move || SlowReader {
            t: None,
            carry: Vec::new(),
            next_word: 0,
            received: rc.clone(),
            errors: ec.clone(),
            pause_every: 1024 * 1024,
            since_pause: 0,
            reactor: r.clone(),
            done: dn.clone(),
            pauses: Rc::new(Cell::new(0)),
        }),
        ConnectOptions::default(),
    );
    run_until_stopped(&reactor, Duration::from_secs(60), "pull producer");
    assert_eq!(received.get(), u64::from(CHUNKS) * CHUNK as u64);
    assert_eq!(errors.get(), 0);
    let p = puller.borrow().clone().unwrap();
    // Asked once per chunk plus the final time that found nothing left.
    assert_eq!(p.asked.get(), CHUNKS + 1);
    assert!(p.max_buffer.get() <= CHUNK, "{}", p.max_buffer.get());
}

#[test]
fn a_peer_that_never_reads_pauses_the_producer_and_can_still_be_closed() {
    let reactor = Reactor::new().unwrap();
    let slot = Rc::new(RefCell::new(None));
    let lost = Rc::new(RefCell::new(None));
    let (s2, l2) = (slot.clone(), lost.clone());
    let addr = reactor
        .listen_tcp(
            any_local(),
            factory_fn(move || StreamServer {
                total: 1 << 30,
                slot: s2.clone(),
                lost: l2.clone(),
                finish_with_close: false,
            }),
        )
        .unwrap()
        .local_addr();
    // Connected, never read from (until the very end).
    let mut peer = StdStream::connect(addr).unwrap();
    // One run, in stages: wait for the producer to pause; check it stays
    // paused; lose_connection (which cannot finish); then abort.
    let sent_at_pause = Rc::new(Cell::new(0u64));
    let still_open = Rc::new(Cell::new(false));
    let (s3, sp, so, l3, r) = (
        slot.clone(),
        sent_at_pause.clone(),
        still_open.clone(),
        lost.clone(),
        reactor.clone(),
    );
    fn wait_paused(
        r: Reactor,
        s: Rc<RefCell<Option<Rc<Streamer>>>>,
        sp: Rc<Cell<u64>>,
        so: Rc<Cell<bool>>,
        lost: Rc<RefCell<Option<Failure>>>,
    ) {
        let st = s.borrow().clone();
        match st {
            Some(st) if st.paused.get() => {
                sp.set(st.sent.get());
                let r2 = r.clone();
                r.call_later(Duration::from_millis(200), move || {
                    // lose_connection waits for a flush this peer never allows.
                    st.t.lose_connection();
                    let r3 = r2.clone();
                    r2.call_later(Duration::from_millis(250), move || {
                        so.set(st.t.is_connected() && lost.borrow().is_none());
                        st.t.abort_connection();
                        let l = lost.clone();
                        stop_when(&r3, move || l.borrow().is_some());
                    });
                });
            }
            _ => {
                let r2 = r.clone();
                r.call_later(Duration::from_millis(2), move || {
                    wait_paused(r2, s, sp, so, lost)
                });
            }
        }
    }
    reactor.call_when_running(move || wait_paused(r, s3, sp, so, l3));
    run_until_stopped(&reactor, Duration::from_secs(20), "never-reading peer");
    let s = slot.borrow().clone().unwrap();
    let sent_at_pause = sent_at_pause.get();
    assert!(still_open.get(), "lose_connection closed before flushing");
    assert!(s.paused.get());
    // The kernel may take a little more after the first pause (buffer
    // autotuning), but only in bounded steps.
    assert!(s.sent.get() - sent_at_pause < 16 * 1024 * 1024);
    assert!(
        s.max_buffer.get() <= DEFAULT_HIGH_WATER + CHUNK,
        "{}",
        s.max_buffer.get()
    );
    // Memory bounded: kernel buffers plus our high-water mark, nowhere near the 1 GiB asked for.
    assert!(s.sent.get() < 64 * 1024 * 1024, "{}", s.sent.get());
    let f = lost.borrow().clone().expect("connection_lost after abort");
    assert!(matches!(conn_err(&f), ConnectionError::Aborted), "{f}");
    assert!(s.stopped.get(), "stop_producing was not called");
    // The peer sees what the kernel held, then the reset.
    peer.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = vec![0; 1 << 16];
    let mut got = 0u64;
    loop {
        match peer.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
                break;
            }
        }
    }
    assert!(got <= s.sent.get());
}
