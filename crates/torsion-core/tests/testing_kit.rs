//! The public testing kit: StringTransport, MemoryReactor, LoopbackPump,
//! AccumulatingProtocol.

use std::cell::Cell;
use std::rc::Rc;

use torsion_core::testing::{
    AccumulatingProtocol, LoopbackPump, MemoryReactor, StringTransport, TcpReactor,
};
use torsion_core::{
    factory_fn, Address, ConnectOptions, ConnectionError, ConnectorState, Failure, Producer,
    Protocol, Transport, DEFAULT_HIGH_WATER,
};

fn reason(f: &Option<Failure>) -> String {
    f.as_ref()
        .and_then(|f| f.downcast_ref::<ConnectionError>())
        .map(|e| format!("{e:?}"))
        .unwrap_or_else(|| "none".into())
}

/// Answers "ping" with "pong", "quit" with a goodbye and a close.
#[derive(Default)]
struct PingPong(Option<Transport>);
impl Protocol for PingPong {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
    fn data_received(&mut self, d: &[u8]) {
        let t = self.0.as_ref().unwrap();
        match d {
            b"ping" => t.write(b"pong"),
            b"quit" => {
                t.write(b"bye");
                t.lose_connection();
            }
            b"abort" => t.abort_connection(),
            _ => t.write(b"?"),
        }
    }
}

#[test]
fn string_transport_records_writes_and_closes() {
    let st = StringTransport::with_addresses(
        Address::Tcp("10.0.0.1:5000".parse().unwrap()),
        Address::Tcp("127.0.0.1:80".parse().unwrap()),
    );
    let mut p = PingPong::default();
    p.connection_made(st.transport());
    p.data_received(b"ping");
    p.data_received(b"what");
    assert_eq!(st.written(), b"pong?");
    assert_eq!(st.take_written(), b"pong?");
    assert!(st.written().is_empty());
    assert_eq!(st.transport().write_buffer_len(), 0);
    p.data_received(b"quit");
    assert_eq!(st.written(), b"bye");
    assert!(st.disconnecting());
    assert!(!st.aborted());
    assert!(!st.transport().is_connected());
    let t = st.transport();
    assert_eq!(t.peer().to_string(), "tcp:10.0.0.1:5000");
    assert_eq!(t.host().to_string(), "tcp:127.0.0.1:80");
    t.pause_producing();
    assert!(st.reading_paused());
    t.resume_producing();
    assert!(!st.reading_paused());
    t.lose_write_connection();
    assert!(st.write_closed());
    st.clear();
    assert!(st.written().is_empty());

    let st2 = StringTransport::new();
    let mut p2 = PingPong::default();
    p2.connection_made(st2.transport());
    p2.data_received(b"abort");
    assert!(st2.aborted());
    assert!(st2.disconnecting());
}

struct NullProducer;
impl Producer for NullProducer {
    fn pause_producing(&self) {}
    fn resume_producing(&self) {}
    fn stop_producing(&self) {}
}

#[test]
fn string_transport_records_the_producer() {
    let st = StringTransport::new();
    let t = st.transport();
    assert!(st.producer().is_none());
    t.register_producer(Rc::new(NullProducer), true).unwrap();
    assert!(matches!(st.producer(), Some((_, true))));
    assert!(t.register_producer(Rc::new(NullProducer), false).is_err());
    t.unregister_producer();
    assert!(st.producer().is_none());
    assert!(t.unix_credentials().is_err());
    assert!(t.set_tcp_nodelay(true).is_err());
}

#[test]
fn memory_reactor_records_listens_and_connects() {
    let mr = MemoryReactor::new();
    let addr = "127.0.0.1:8080".parse().unwrap();
    assert_eq!(
        mr.listen_tcp(addr, factory_fn(PingPong::default)).unwrap(),
        addr
    );
    let c = mr.connect_tcp(
        "127.0.0.1:25".parse().unwrap(),
        factory_fn(PingPong::default),
        ConnectOptions::default(),
    );
    assert_eq!(mr.listens().len(), 1);
    assert_eq!(mr.listens()[0].addr, addr);
    assert_eq!(mr.connects().len(), 1);
    assert_eq!(mr.connects()[0].addr.port(), 25);
    assert_eq!(c.state(), ConnectorState::Connecting);
    assert_eq!(c.destination().to_string(), "tcp:127.0.0.1:25");
    // Drive the recorded server factory by hand with a StringTransport.
    let st = StringTransport::new();
    let factory = mr.listens()[0].factory.clone();
    let mut p = factory
        .build_protocol(&Address::Memory("peer".into()))
        .unwrap();
    p.connection_made(st.transport());
    p.data_received(b"ping");
    assert_eq!(st.written(), b"pong");
    c.stop_connecting();
}

#[test]
fn loopback_pump_moves_bytes_only_when_pumped() {
    let (client, log) = AccumulatingProtocol::new();
    let pump = LoopbackPump::connect(Box::new(PingPong::default()), Box::new(client));
    assert!(log.made());
    let ct = pump.client_transport();
    ct.write(b"ping");
    assert!(log.data().is_empty());
    assert!(pump.pump_once());
    assert_eq!(log.data(), b"pong");
    assert!(!pump.pump_once(), "nothing left to move");
    assert_eq!(ct.peer().to_string(), "memory:server");
    assert_eq!(pump.server_transport().peer().to_string(), "memory:client");
    ct.write(b"quit");
    pump.pump();
    assert_eq!(log.data(), b"pongbye");
    assert!(pump.closed());
    assert_eq!(reason(&log.lost()), "Done");
    // Closed: writes are dropped, pumping is a no-op.
    ct.write(b"ping");
    assert!(!pump.pump_once());
}

#[test]
fn loopback_abort_drops_unsent_data_and_resets_the_peer() {
    let (server, slog) = AccumulatingProtocol::new();
    let (client, clog) = AccumulatingProtocol::new();
    let pump = LoopbackPump::connect(Box::new(server), Box::new(client));
    pump.client_transport().write(b"never delivered");
    pump.client_transport().abort_connection();
    pump.pump();
    assert!(slog.data().is_empty());
    assert_eq!(reason(&clog.lost()), "Aborted");
    assert_eq!(reason(&slog.lost()), "Reset");
}

#[test]
fn loopback_half_close_both_ways() {
    let (server, slog) = AccumulatingProtocol::half_closeable();
    let (client, clog) = AccumulatingProtocol::half_closeable();
    let pump = LoopbackPump::connect(Box::new(server), Box::new(client));
    let (ct, sv) = (pump.client_transport(), pump.server_transport());
    ct.write(b"request");
    ct.lose_write_connection();
    ct.write(b"dropped");
    pump.pump();
    assert_eq!(slog.data(), b"request");
    assert!(slog.0.borrow().read_closed);
    assert!(clog.0.borrow().write_closed);
    assert!(!pump.closed());
    // The server may still answer, then close its side too.
    sv.write(b"response");
    sv.lose_write_connection();
    pump.pump();
    assert_eq!(clog.data(), b"response");
    assert!(clog.0.borrow().read_closed);
    assert!(pump.closed());
    assert_eq!(reason(&slog.lost()), "Done");
    assert_eq!(reason(&clog.lost()), "Done");
}

#[test]
fn loopback_half_close_to_a_plain_protocol_closes_it() {
    let (server, slog) = AccumulatingProtocol::new();
    let (client, clog) = AccumulatingProtocol::half_closeable();
    let pump = LoopbackPump::connect(Box::new(server), Box::new(client));
    pump.client_transport().write(b"x");
    pump.client_transport().lose_write_connection();
    pump.pump();
    assert_eq!(slog.data(), b"x");
    assert!(pump.closed());
    assert!(!slog.0.borrow().read_closed);
    assert_eq!(reason(&slog.lost()), "Done");
    assert!(clog.0.borrow().write_closed);
}

#[test]
fn loopback_pause_holds_data_until_resumed() {
    let (server, slog) = AccumulatingProtocol::new();
    let (client, _clog) = AccumulatingProtocol::new();
    let pump = LoopbackPump::connect(Box::new(server), Box::new(client));
    let sv = pump.server_transport();
    sv.pause_producing();
    pump.client_transport().write(b"held");
    pump.client_transport().lose_connection();
    pump.pump();
    assert!(slog.data().is_empty());
    assert!(!pump.closed(), "closed before the held data was delivered");
    sv.resume_producing();
    pump.pump();
    assert_eq!(slog.data(), b"held");
    assert!(pump.closed());
}

/// Push producer writing `n` chunks of 8 KiB while not paused.
struct Push {
    t: Transport,
    left: Cell<u32>,
    paused: Cell<bool>,
    pauses: Cell<u32>,
    stopped: Cell<bool>,
}
impl Push {
    fn go(&self) {
        while !self.paused.get() && self.left.get() > 0 {
            self.left.set(self.left.get() - 1);
            self.t.write(&[7u8; 8192]);
        }
    }
}
impl Producer for Push {
    fn pause_producing(&self) {
        self.paused.set(true);
        self.pauses.set(self.pauses.get() + 1);
    }
    fn resume_producing(&self) {
        self.paused.set(false);
        self.go();
    }
    fn stop_producing(&self) {
        self.stopped.set(true);
    }
}

#[test]
fn loopback_push_producer_is_paused_at_the_high_water_mark() {
    let (server, _s) = AccumulatingProtocol::new();
    let (client, clog) = AccumulatingProtocol::new();
    let pump = LoopbackPump::connect(Box::new(server), Box::new(client));
    let sv = pump.server_transport();
    let p = Rc::new(Push {
        t: sv.clone(),
        left: Cell::new(100),
        paused: Cell::new(false),
        pauses: Cell::new(0),
        stopped: Cell::new(false),
    });
    sv.register_producer(p.clone(), true).unwrap();
    p.go();
    assert!(p.paused.get());
    assert!(sv.write_buffer_len() <= DEFAULT_HIGH_WATER + 8192);
    pump.pump();
    assert_eq!(clog.data().len(), 100 * 8192);
    assert!(p.pauses.get() >= 10);
    sv.abort_connection();
    pump.pump();
    assert!(p.stopped.get(), "stop_producing on close");
}

#[test]
fn loopback_pull_producer_is_asked_at_registration_and_after_each_delivery() {
    struct Pull {
        t: Transport,
        asked: Cell<u32>,
    }
    impl Producer for Pull {
        fn pause_producing(&self) {}
        fn resume_producing(&self) {
            self.asked.set(self.asked.get() + 1);
            if self.asked.get() <= 3 {
                self.t
                    .write(format!("piece{};", self.asked.get()).as_bytes());
            } else {
                self.t.unregister_producer();
                self.t.lose_connection();
            }
        }
        fn stop_producing(&self) {}
    }
    let (server, _s) = AccumulatingProtocol::new();
    let (client, clog) = AccumulatingProtocol::new();
    let pump = LoopbackPump::connect(Box::new(server), Box::new(client));
    let sv = pump.server_transport();
    let p = Rc::new(Pull {
        t: sv.clone(),
        asked: Cell::new(0),
    });
    sv.register_producer(p.clone(), false).unwrap();
    assert_eq!(p.asked.get(), 1);
    pump.pump();
    assert_eq!(clog.data(), b"piece1;piece2;piece3;");
    assert_eq!(p.asked.get(), 4);
    assert!(pump.closed());
}

#[test]
fn accumulating_protocol_records_everything() {
    let (mut p, log) = AccumulatingProtocol::half_closeable();
    assert!(p.half_closeable());
    let st = StringTransport::new();
    p.connection_made(st.transport());
    p.data_received(b"a");
    p.data_received(b"b");
    p.read_connection_lost();
    p.write_connection_lost();
    p.connection_lost(Failure::new(ConnectionError::Done));
    let acc = log.0.borrow();
    assert!(acc.made && acc.read_closed && acc.write_closed);
    assert_eq!(acc.data, b"ab");
    assert!(acc.transport.is_some());
    assert_eq!(reason(&acc.lost), "Done");
    let (p2, _) = AccumulatingProtocol::new();
    assert!(!p2.half_closeable());
}
