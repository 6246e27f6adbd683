//! The reactor's own API: run/stop/iterate, foreign-loop hooks, system event
//! triggers, call_from_thread, signals.

mod common;

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream as StdStream;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use torsion_core::{
    factory_fn, Deferred, Failure, Phase, Protocol, Reactor, ReactorError, SystemEvent, Transport,
};

const LIMIT: Duration = Duration::from_secs(30);

#[test]
fn stop_from_a_timer_scheduled_before_run_and_stop_before_run_is_an_error() {
    let reactor = Reactor::new().unwrap();
    assert!(matches!(reactor.stop(), Err(ReactorError::NotRunning)));
    assert!(!reactor.is_running());
    let r = reactor.clone();
    let was_running = Rc::new(Cell::new(false));
    let w = was_running.clone();
    reactor.call_later(Duration::ZERO, move || {
        w.set(r.is_running());
        r.stop().unwrap();
    });
    run_until_stopped(&reactor, LIMIT, "stop from timer");
    assert!(was_running.get());
    assert!(!reactor.is_running());
    // A stopped reactor can run again.
    let r = reactor.clone();
    reactor.call_later(Duration::from_millis(5), move || r.stop().unwrap());
    run_until_stopped(&reactor, LIMIT, "second run");
}

#[test]
fn iterate_and_next_timeout_drive_the_loop_by_hand() {
    let reactor = Reactor::new().unwrap();
    assert_eq!(reactor.next_timeout(), None);
    reactor.call_soon(|| {});
    assert_eq!(reactor.next_timeout(), Some(Duration::ZERO));
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    assert_eq!(reactor.next_timeout(), None);

    let fired = Rc::new(Cell::new(false));
    let f = fired.clone();
    let call = reactor.call_later(Duration::from_millis(30), move || f.set(true));
    let nt = reactor.next_timeout().unwrap();
    assert!(nt <= Duration::from_millis(30), "{nt:?}");
    let t0 = Instant::now();
    for _ in 0..100 {
        if fired.get() {
            break;
        }
        reactor.iterate(Some(Duration::from_millis(100))).unwrap();
    }
    assert!(fired.get());
    assert!(t0.elapsed() >= Duration::from_millis(25));
    assert!(!call.active());
    assert_eq!(reactor.next_timeout(), None);
    // A cancelled timer does not count.
    let c = reactor.call_later(Duration::from_secs(100), || {});
    assert!(reactor.next_timeout().unwrap() > Duration::from_secs(99));
    c.cancel().unwrap();
    assert_eq!(reactor.next_timeout(), None);
}

/// A foreign loop watches `as_raw_fd()` and calls `iterate(ZERO)` when it is readable.
#[test]
fn as_raw_fd_becomes_readable_when_there_is_io() {
    let reactor = Reactor::new().unwrap();
    let made = Rc::new(Cell::new(0));
    let m = made.clone();
    struct Note(Rc<Cell<u32>>, Option<Transport>);
    impl Protocol for Note {
        fn connection_made(&mut self, t: Transport) {
            self.0.set(self.0.get() + 1);
            self.1 = Some(t);
        }
        fn data_received(&mut self, d: &[u8]) {
            self.1.as_ref().unwrap().write(d);
        }
    }
    let addr = reactor
        .listen_tcp(any_local(), factory_fn(move || Note(m.clone(), None)))
        .unwrap()
        .local_addr();
    let fd = reactor.as_raw_fd();
    let poll_fd = |ms: i32| -> i32 {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        unsafe { libc::poll(&mut p, 1, ms) }
    };
    assert_eq!(poll_fd(0), 0, "idle reactor fd is readable");
    let mut client = StdStream::connect(addr).unwrap();
    assert_eq!(poll_fd(5000), 1, "connection did not make the fd readable");
    for _ in 0..10 {
        reactor.iterate(Some(Duration::ZERO)).unwrap();
        if made.get() == 1 {
            break;
        }
    }
    assert_eq!(made.get(), 1);
    client.write_all(b"ping").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let mut got = [0u8; 4];
    let mut n = 0;
    for _ in 0..200 {
        if poll_fd(50) == 1 {
            reactor.iterate(Some(Duration::ZERO)).unwrap();
        }
        match client.read(&mut got[n..]) {
            Ok(k) => n += k,
            Err(_) => continue,
        }
        if n == 4 {
            break;
        }
    }
    assert_eq!(&got[..n], b"ping");
    // A cross-thread call wakes the fd too.
    reactor.handle().call_from_thread(|| {});
    assert_eq!(poll_fd(5000), 1);
    reactor.iterate(Some(Duration::ZERO)).unwrap();
}

#[test]
fn call_when_running_runs_after_startup_and_at_once_when_running() {
    let reactor = Reactor::new().unwrap();
    let order = Rc::new(RefCell::new(Vec::new()));
    let (o, r) = (order.clone(), reactor.clone());
    reactor.call_when_running(move || {
        o.borrow_mut()
            .push(format!("first running={}", r.is_running()));
        let (o2, r2) = (o.clone(), r.clone());
        r.call_when_running(move || {
            o2.borrow_mut().push("nested".into());
            r2.stop().unwrap();
        });
    });
    let o = order.clone();
    reactor.add_system_event_trigger(Phase::During, SystemEvent::Startup, move || {
        o.borrow_mut().push("startup trigger".into());
        None
    });
    assert!(order.borrow().is_empty());
    run_until_stopped(&reactor, LIMIT, "call_when_running");
    assert_eq!(
        *order.borrow(),
        vec!["startup trigger", "first running=true", "nested"]
    );
}

#[test]
fn shutdown_triggers_run_in_order_and_the_loop_waits_for_their_deferreds() {
    let reactor = Reactor::new().unwrap();
    let order = Rc::new(RefCell::new(Vec::<String>::new()));
    let t0 = Instant::now();
    let add = |phase: Phase, name: &'static str| {
        let o = order.clone();
        reactor.add_system_event_trigger(phase, SystemEvent::Shutdown, move || {
            o.borrow_mut().push(name.into());
            None
        })
    };
    add(Phase::After, "after");
    add(Phase::During, "during");
    let removed = add(Phase::Before, "removed");
    assert!(reactor.remove_system_event_trigger(removed));
    assert!(!reactor.remove_system_event_trigger(removed));
    // A Before trigger whose work finishes later, on a timer.
    let (o, r) = (order.clone(), reactor.clone());
    reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, move || {
        o.borrow_mut().push("before (started)".into());
        let d = Deferred::new();
        let (d2, o2) = (d.clone(), o.clone());
        r.call_later(Duration::from_millis(150), move || {
            o2.borrow_mut().push("before (finished)".into());
            d2.callback(()).unwrap();
        });
        Some(d)
    });
    // A Before trigger may still use connections: its write is flushed
    // before shutdown closes them.
    let transports = Rc::new(RefCell::new(Vec::<Transport>::new()));
    let tr = transports.clone();
    struct Keep(Rc<RefCell<Vec<Transport>>>);
    impl Protocol for Keep {
        fn connection_made(&mut self, t: Transport) {
            self.0.borrow_mut().push(t);
        }
        fn data_received(&mut self, _: &[u8]) {}
    }
    let addr = reactor
        .listen_tcp(any_local(), factory_fn(move || Keep(tr.clone())))
        .unwrap()
        .local_addr();
    let tr = transports.clone();
    reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, move || {
        for t in tr.borrow().iter() {
            t.write(b"goodbye");
        }
        None
    });
    let mut client = StdStream::connect(addr).unwrap();
    let tr = transports.clone();
    let r = reactor.clone();
    stop_when(&reactor, move || !tr.borrow().is_empty());
    let _ = r;
    run_until_stopped(&reactor, LIMIT, "shutdown triggers");
    assert!(t0.elapsed() >= Duration::from_millis(140));
    assert_eq!(
        *order.borrow(),
        vec!["before (started)", "before (finished)", "during", "after"]
    );
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"goodbye");
}

#[test]
fn a_failing_or_panicking_trigger_does_not_block_shutdown() {
    let (logs, _g) = capture_logs();
    let reactor = Reactor::new().unwrap();
    reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, || {
        panic!("trigger exploded")
    });
    reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, || {
        Some(Deferred::fail(Failure::msg("flush failed")))
    });
    let after = Rc::new(Cell::new(false));
    let a = after.clone();
    reactor.add_system_event_trigger(Phase::After, SystemEvent::Shutdown, move || {
        a.set(true);
        None
    });
    let r = reactor.clone();
    reactor.call_later(Duration::ZERO, move || r.stop().unwrap());
    run_until_stopped(&reactor, LIMIT, "failing triggers");
    assert!(after.get());
    let text = logs.text();
    assert!(text.contains("trigger exploded"), "{text}");
    assert!(text.contains("flush failed"), "{text}");
}

#[test]
fn call_from_thread_from_eight_threads_runs_everything_on_the_reactor_thread() {
    let reactor = Reactor::new().unwrap();
    let handle = reactor.handle();
    assert!(handle.is_reactor_thread());
    let ran = Arc::new(AtomicUsize::new(0));
    let wrong_thread = Arc::new(AtomicUsize::new(0));
    let me = std::thread::current().id();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (h, ran, wrong) = (handle.clone(), ran.clone(), wrong_thread.clone());
            std::thread::spawn(move || {
                assert!(!h.is_reactor_thread());
                for _ in 0..1000 {
                    let (ran, wrong) = (ran.clone(), wrong.clone());
                    h.call_from_thread(move || {
                        if std::thread::current().id() != me {
                            wrong.fetch_add(1, Ordering::SeqCst);
                        }
                        ran.fetch_add(1, Ordering::SeqCst);
                    });
                }
            })
        })
        .collect();
    let r2 = ran.clone();
    stop_when(&reactor, move || r2.load(Ordering::SeqCst) == 8000);
    run_until_stopped(&reactor, LIMIT, "call_from_thread");
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(ran.load(Ordering::SeqCst), 8000);
    assert_eq!(wrong_thread.load(Ordering::SeqCst), 0);
}

#[test]
fn call_from_thread_wakes_a_sleeping_reactor() {
    let reactor = Reactor::new().unwrap();
    let handle = reactor.handle();
    let got = Rc::new(Cell::new(false));
    // Nothing else to do: the reactor blocks in the poller until woken.
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        handle.call_from_thread(|| {});
    });
    let t0 = Instant::now();
    reactor.iterate(Some(Duration::from_secs(20))).unwrap();
    got.set(true);
    assert!(t0.elapsed() < Duration::from_secs(10));
    t.join().unwrap();
    assert!(got.get());
}

/// Entry point of the signal child: an echo server with signal handlers.
#[test]
#[ignore = "helper: run as a child process by signals_stop_the_reactor_gracefully"]
fn signal_child() {
    if std::env::var("TORSION_SIGNAL_CHILD").is_err() {
        return;
    }
    let reactor = Reactor::new().unwrap();
    let addr = echo_server(&reactor).local_addr();
    reactor.install_signal_handlers().unwrap();
    reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, || {
        println!("SHUTDOWN-TRIGGER");
        None
    });
    println!("READY {}", addr.port());
    std::io::stdout().flush().unwrap();
    // Bounded: a child that never gets its signal ends by itself.
    let r = reactor.clone();
    reactor.call_later(Duration::from_secs(30), move || {
        println!("NO-SIGNAL");
        let _ = r.stop();
    });
    reactor.run().unwrap();
    println!("CLEAN-EXIT");
}

fn signal_run(sig: libc::c_int) {
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args(["--ignored", "--exact", "signal_child", "--nocapture"])
        .env("TORSION_SIGNAL_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut port = None;
    let mut line = String::new();
    for _ in 0..50 {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(p) = line.trim().strip_prefix("READY ") {
            port = Some(p.parse::<u16>().unwrap());
            break;
        }
    }
    let port = port.expect("child never became ready");
    let mut client = StdStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    client.write_all(b"hi").unwrap();
    let mut b = [0; 2];
    client.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hi");
    unsafe {
        libc::kill(child.id() as i32, sig);
    }
    // The open connection is closed gracefully: EOF, not a reset.
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    let mut tail = String::new();
    out.read_to_string(&mut tail).unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "child exited with {status:?}; output:\n{tail}"
    );
    assert!(tail.contains("SHUTDOWN-TRIGGER"), "{tail}");
    assert!(tail.contains("CLEAN-EXIT"), "{tail}");
    assert!(!tail.contains("NO-SIGNAL"), "{tail}");
}

#[test]
fn sigterm_stops_the_reactor_gracefully() {
    signal_run(libc::SIGTERM);
}

#[test]
fn sigint_stops_the_reactor_gracefully() {
    signal_run(libc::SIGINT);
}

#[test]
fn the_trigger_timeout_bounds_a_trigger_that_never_fires_and_none_waits_for_a_slow_one() {
    // Bounded: a trigger whose Deferred never fires is given up on.
    let reactor = Reactor::new().unwrap();
    reactor.set_shutdown_trigger_timeout(Some(Duration::from_millis(200)));
    let after_ran = Rc::new(Cell::new(false));
    let a = after_ran.clone();
    reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, || {
        Some(Deferred::<()>::new())
    });
    reactor.add_system_event_trigger(Phase::After, SystemEvent::Shutdown, move || {
        a.set(true);
        None
    });
    let r = reactor.clone();
    reactor.call_soon(move || drop(r.stop()));
    let t0 = Instant::now();
    reactor.run().unwrap();
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(200),
        "gave up early: {took:?}"
    );
    assert!(took < LIMIT, "did not give up: {took:?}");
    assert!(after_ran.get(), "later phases still run after the give-up");

    // Unbounded: run() returns only once the slow trigger's Deferred has
    // fired (1.2 s later, from a timer).
    let reactor = Reactor::new().unwrap();
    reactor.set_shutdown_trigger_timeout(None);
    let done = Rc::new(Cell::new(false));
    let (r, dn) = (reactor.clone(), done.clone());
    reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, move || {
        let d = Deferred::new();
        let d2 = d.clone();
        r.call_later(Duration::from_millis(1200), move || {
            dn.set(true);
            d2.callback(()).unwrap();
        });
        Some(d)
    });
    let r = reactor.clone();
    reactor.call_soon(move || drop(r.stop()));
    reactor.run().unwrap();
    assert!(
        done.get(),
        "run() returned before the trigger's Deferred fired"
    );
}
