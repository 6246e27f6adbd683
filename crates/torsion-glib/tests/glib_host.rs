//! A Torsion reactor driven by a plain glib::MainLoop, with real peers.

#[path = "../../torsion-tokio/tests/common/mod.rs"]
mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use glib::{ControlFlow, MainContext, MainLoop};
use torsion_core::hostloop::HostLoopError;
use torsion_core::Reactor;

fn setup() -> (MainLoop, Reactor, torsion_glib::GlibHost) {
    let ml = MainLoop::new(Some(&MainContext::new()), false);
    let reactor = Reactor::new().unwrap();
    let host = torsion_glib::attach(&reactor, &ml).unwrap();
    set_current(Some(&reactor));
    // A safety net: no test may hang (a quit loop lets run() return).
    let ml2 = glib::thread_guard::ThreadGuard::new(ml.clone());
    let bound = glib::timeout_source_new(
        Duration::from_secs(30),
        None,
        glib::Priority::DEFAULT,
        move || {
            ml2.get_ref().quit();
            ControlFlow::Break
        },
    );
    bound.attach(Some(&ml.context()));
    (ml, reactor, host)
}

#[test]
fn echo_and_http_served_while_glib_runs() {
    let (ml, reactor, _host) = setup();
    let log = Rc::new(RefCell::new(Log::default()));
    let echo = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), echo_factory(log.clone()))
        .unwrap();
    let http = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), http_factory(&reactor))
        .unwrap();
    let (ea, ha) = (echo.local_addr(), http.local_addr());
    // A glib source of the program's own keeps running meanwhile.
    let ticks = Arc::new(Mutex::new(0u32));
    let t = ticks.clone();
    glib::timeout_source_new(
        Duration::from_millis(2),
        None,
        glib::Priority::DEFAULT,
        move || {
            *t.lock().unwrap() += 1;
            ControlFlow::Continue
        },
    )
    .attach(Some(&ml.context()));
    let handle = reactor.handle();
    let client = std::thread::spawn(move || {
        let out = (echo_roundtrip(ea, b"hello over glib"), python_http_get(ha));
        stop_from_thread(&handle);
        out
    });
    let t0 = Instant::now();
    reactor.run().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(29),
        "stopped by the client"
    );
    let (echoed, got) = client.join().unwrap();
    assert_eq!(echoed.unwrap(), b"hello over glib");
    assert_eq!(got.unwrap(), format!("200\n{HTTP_BODY}"));
    assert!(
        *ticks.lock().unwrap() > 1,
        "glib sources ran beside the reactor"
    );
    assert!(!ml.is_running());
    set_current(None);
}

#[test]
fn timers_fire_close_to_their_deadline() {
    let (ml, reactor, _host) = setup();
    let lateness = Rc::new(RefCell::new(Vec::new()));
    let start = Instant::now();
    let record = {
        let lateness = lateness.clone();
        let r = reactor.clone();
        Rc::new(move |late: f64| {
            lateness.borrow_mut().push(late);
            if lateness.borrow().len() == 5 {
                r.stop().unwrap();
            }
        })
    };
    for ms in [5u64, 20, 45, 70] {
        let rec = record.clone();
        reactor.call_later(Duration::from_millis(ms), move || {
            rec(start.elapsed().as_secs_f64() * 1000.0 - ms as f64)
        });
    }
    // Scheduled from a glib callback, outside any reactor turn.
    let r = reactor.clone();
    let rec = glib::thread_guard::ThreadGuard::new(record.clone());
    let r = glib::thread_guard::ThreadGuard::new(r);
    glib::timeout_source_new(
        Duration::from_millis(10),
        None,
        glib::Priority::DEFAULT,
        move || {
            let at = Instant::now();
            let rec = rec.get_ref().clone();
            r.get_ref().call_later(Duration::from_millis(30), move || {
                rec(at.elapsed().as_secs_f64() * 1000.0 - 30.0)
            });
            ControlFlow::Break
        },
    )
    .attach(Some(&ml.context()));
    reactor.run().unwrap();
    let lateness = lateness.borrow();
    assert_eq!(lateness.len(), 5, "{lateness:?}");
    for l in lateness.iter() {
        assert!(*l >= 0.0, "fired early: {lateness:?}");
        assert!(*l < 50.0, "fired too late: {lateness:?}");
    }
    set_current(None);
}

#[test]
fn call_from_thread_runs_on_the_glib_thread() {
    let (_ml, reactor, _host) = setup();
    let handle = reactor.handle();
    let ran_on = Arc::new(Mutex::new(None));
    let ro = ran_on.clone();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        handle.call_from_thread(move || {
            *ro.lock().unwrap() = Some(std::thread::current().id());
        });
        stop_from_thread(&handle);
    });
    reactor.run().unwrap();
    t.join().unwrap();
    assert_eq!(*ran_on.lock().unwrap(), Some(std::thread::current().id()));
    set_current(None);
}

#[test]
fn a_stalled_glib_loop_delays_but_never_loses_io() {
    let (ml, reactor, _host) = setup();
    let log = Rc::new(RefCell::new(Log::default()));
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), echo_factory(log.clone()))
        .unwrap();
    let addr = port.local_addr();
    // A long GUI handler blocks the loop while clients send.
    glib::timeout_source_new(Duration::from_millis(5), None, glib::Priority::HIGH, || {
        std::thread::sleep(Duration::from_millis(300));
        ControlFlow::Break
    })
    .attach(Some(&ml.context()));
    let handle = reactor.handle();
    let client = std::thread::spawn(move || {
        let ts: Vec<_> = (0..8)
            .map(|i| {
                std::thread::spawn(move || {
                    let msg = format!("client {i} says hello").repeat(100);
                    echo_roundtrip(addr, msg.as_bytes()).map(|b| b == msg.as_bytes())
                })
            })
            .collect();
        let out: Vec<_> = ts.into_iter().map(|t| t.join().unwrap()).collect();
        stop_from_thread(&handle);
        out
    });
    reactor.run().unwrap();
    let results = client.join().unwrap();
    assert_eq!(results.len(), 8);
    for r in results {
        assert!(r.unwrap(), "every byte echoed intact");
    }
    assert_eq!(log.borrow().made, 8);
    set_current(None);
}

#[test]
fn quitting_the_main_loop_closes_open_connections() {
    let (ml, reactor, _host) = setup();
    reactor.set_shutdown_grace(Duration::from_secs(2));
    let log = Rc::new(RefCell::new(Log::default()));
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), echo_factory(log.clone()))
        .unwrap();
    let addr = port.local_addr();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let client = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut conns = Vec::new();
        for _ in 0..3 {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"x").unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).unwrap();
            conns.push(s);
        }
        tx.send(()).unwrap();
        // Each peer sees the close once the loop has quit.
        conns
            .iter_mut()
            .map(|s| {
                let mut b = [0u8; 8];
                s.read(&mut b).map_err(|e| e.to_string())
            })
            .collect::<Vec<_>>()
    });
    // Quit the glib loop itself (as closing a GUI would), not Reactor::stop.
    let ml2 = glib::thread_guard::ThreadGuard::new(ml.clone());
    let rx = glib::thread_guard::ThreadGuard::new(rx);
    glib::timeout_source_new(
        Duration::from_millis(2),
        None,
        glib::Priority::DEFAULT,
        move || {
            if rx.get_ref().try_recv().is_ok() {
                ml2.get_ref().quit();
                return ControlFlow::Break;
            }
            ControlFlow::Continue
        },
    )
    .attach(Some(&ml.context()));
    reactor.run().unwrap();
    assert_eq!(log.borrow().made, 3);
    assert_eq!(
        log.borrow().lost.len(),
        3,
        "each open connection saw connection_lost"
    );
    assert!(!reactor.is_running());
    let reads = client.join().unwrap();
    assert_eq!(reads, vec![Ok(0), Ok(0), Ok(0)]);
    set_current(None);
}

#[test]
fn attaching_two_host_loops_is_an_error() {
    let ml = MainLoop::new(Some(&MainContext::new()), false);
    let other = MainLoop::new(Some(&MainContext::new()), false);
    let reactor = Reactor::new().unwrap();
    let first = torsion_glib::attach(&reactor, &ml).unwrap();
    let err = torsion_glib::attach(&reactor, &other).unwrap_err();
    assert!(matches!(err, HostLoopError::AlreadyAttached), "{err}");
    drop(first);
    assert!(torsion_glib::attach(&reactor, &other).is_ok());
}

#[test]
fn writes_from_glib_callbacks_are_flushed_promptly() {
    struct Keep(Rc<RefCell<Option<torsion_core::Transport>>>);
    impl torsion_core::Protocol for Keep {
        fn connection_made(&mut self, t: torsion_core::Transport) {
            *self.0.borrow_mut() = Some(t);
        }
        fn data_received(&mut self, _d: &[u8]) {}
    }
    let (ml, reactor, _host) = setup();
    let _far = reactor.call_later(Duration::from_secs(3600), || ());
    let slot: Rc<RefCell<Option<torsion_core::Transport>>> = Rc::default();
    let s = slot.clone();
    let port = reactor
        .listen_tcp(
            "127.0.0.1:0".parse().unwrap(),
            torsion_core::factory_fn(move || Keep(s.clone())),
        )
        .unwrap();
    let addr = port.local_addr();
    let handle = reactor.handle();
    let client = std::thread::spawn(move || {
        use std::io::Read;
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 6];
        let r = c.read_exact(&mut b).map(|_| b);
        stop_from_thread(&handle);
        r
    });
    // A glib source (not a reactor callback) writes once the connection is up.
    let written = Rc::new(Cell::new(false));
    let w = glib::thread_guard::ThreadGuard::new((slot, written.clone()));
    glib::timeout_source_new(
        Duration::from_millis(1),
        None,
        glib::Priority::DEFAULT,
        move || {
            let (slot, written) = w.get_ref();
            if let Some(t) = slot.borrow().as_ref() {
                t.write(b"pushed");
                written.set(true);
                return ControlFlow::Break;
            }
            ControlFlow::Continue
        },
    )
    .attach(Some(&ml.context()));
    let t0 = Instant::now();
    reactor.run().unwrap();
    assert!(written.get());
    assert_eq!(&client.join().unwrap().unwrap(), b"pushed");
    assert!(t0.elapsed() < Duration::from_secs(10));
    set_current(None);
}
