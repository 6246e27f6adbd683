//! A Torsion reactor driven by Qt's event loop under a headless
//! QCoreApplication, with real peers. Qt wants one application object per
//! process, created on the main thread, so this test binary has its own
//! small harness (`harness = false`) that speaks enough of libtest's
//! command line for `cargo test` and `cargo nextest`.

#[path = "../../torsion-tokio/tests/common/mod.rs"]
mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use torsion_core::hostloop::HostLoopError;
use torsion_core::{open_fd_count, Reactor};

type Check = fn() -> Result<(), String>;

fn ensure(cond: bool, what: impl Into<String>) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what.into())
    }
}

/// Bounded: a Qt-side timer stops the reactor after 30 s whatever happens.
fn bound(reactor: &Reactor) -> torsion_core::DelayedCall {
    let r = reactor.clone();
    reactor.call_later(Duration::from_secs(30), move || {
        let _ = r.stop();
    })
}

fn echo_and_http_served_while_qt_runs() -> Result<(), String> {
    let reactor = Reactor::new().map_err(|e| e.to_string())?;
    let _host = torsion_qt::attach(&reactor).map_err(|e| e.to_string())?;
    set_current(Some(&reactor));
    let guard = bound(&reactor);
    let log = Rc::new(RefCell::new(Log::default()));
    let echo = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), echo_factory(log.clone()))
        .map_err(|e| e.to_string())?;
    let http = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), http_factory(&reactor))
        .map_err(|e| e.to_string())?;
    let (ea, ha) = (echo.local_addr(), http.local_addr());
    let handle = reactor.handle();
    let client = std::thread::spawn(move || {
        let out = (echo_roundtrip(ea, b"hello over qt"), python_http_get(ha));
        stop_from_thread(&handle);
        out
    });
    reactor.run().map_err(|e| e.to_string())?;
    set_current(None);
    let (echoed, got) = client.join().map_err(|_| "client panicked")?;
    ensure(guard.active(), "stopped by the client, not the 30 s bound")?;
    ensure(
        echoed.map_err(|e| e.to_string())? == b"hello over qt",
        "echo",
    )?;
    ensure(got? == format!("200\n{HTTP_BODY}"), "http body")?;
    let me = std::thread::current().id();
    let all_here = log.borrow().threads.iter().all(|t| *t == me);
    ensure(all_here, "served on the Qt thread")
}

fn timers_fire_close_to_their_deadline() -> Result<(), String> {
    let reactor = Reactor::new().map_err(|e| e.to_string())?;
    let _host = torsion_qt::attach(&reactor).map_err(|e| e.to_string())?;
    let _guard = bound(&reactor);
    let lateness = Rc::new(RefCell::new(Vec::new()));
    let start = Instant::now();
    for ms in [5u64, 20, 45, 70] {
        let l = lateness.clone();
        let r = reactor.clone();
        reactor.call_later(Duration::from_millis(ms), move || {
            l.borrow_mut()
                .push(start.elapsed().as_secs_f64() * 1000.0 - ms as f64);
            if l.borrow().len() == 4 {
                r.stop().unwrap();
            }
        });
    }
    reactor.run().map_err(|e| e.to_string())?;
    let lateness = lateness.borrow();
    ensure(lateness.len() == 4, format!("{lateness:?}"))?;
    ensure(
        lateness.iter().all(|l| *l >= 0.0 && *l < 50.0),
        format!("lateness out of [0, 50) ms: {lateness:?}"),
    )
}

fn call_from_thread_runs_on_the_qt_thread() -> Result<(), String> {
    let reactor = Reactor::new().map_err(|e| e.to_string())?;
    let _host = torsion_qt::attach(&reactor).map_err(|e| e.to_string())?;
    set_current(Some(&reactor));
    let _guard = bound(&reactor);
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
    reactor.run().map_err(|e| e.to_string())?;
    set_current(None);
    t.join().map_err(|_| "thread panicked")?;
    let got = *ran_on.lock().unwrap();
    ensure(
        got == Some(std::thread::current().id()),
        format!("ran on {got:?}"),
    )
}

fn stop_closes_connections_and_leaks_no_fds() -> Result<(), String> {
    let cycle = || -> Result<usize, String> {
        let reactor = Reactor::new().map_err(|e| e.to_string())?;
        reactor.set_shutdown_grace(Duration::from_secs(2));
        let host = torsion_qt::attach(&reactor).map_err(|e| e.to_string())?;
        // No 30 s `bound` here: its pending closure would keep the reactor
        // alive past the cycle; the 20 ms stop below is the bound.
        let log = Rc::new(RefCell::new(Log::default()));
        let port = reactor
            .listen_tcp("127.0.0.1:0".parse().unwrap(), echo_factory(log.clone()))
            .map_err(|e| e.to_string())?;
        let addr = port.local_addr();
        let a = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
        let b = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
        let r = reactor.clone();
        reactor.call_later(Duration::from_millis(20), move || r.stop().unwrap());
        reactor.run().map_err(|e| e.to_string())?;
        drop((a, b, host, port));
        let lost = log.borrow().lost.len();
        Ok(lost)
    };
    ensure(cycle()? == 2, "open connections saw connection_lost")?;
    let before = open_fd_count().map_err(|e| e.to_string())?;
    for _ in 0..3 {
        cycle()?;
    }
    let after = open_fd_count().map_err(|e| e.to_string())?;
    ensure(before == after, format!("fds {before} -> {after}"))
}

fn a_stalled_qt_thread_delays_but_never_loses_io() -> Result<(), String> {
    let reactor = Reactor::new().map_err(|e| e.to_string())?;
    let _host = torsion_qt::attach(&reactor).map_err(|e| e.to_string())?;
    set_current(Some(&reactor));
    let guard = bound(&reactor);
    let log = Rc::new(RefCell::new(Log::default()));
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), echo_factory(log.clone()))
        .map_err(|e| e.to_string())?;
    let addr = port.local_addr();
    // A long handler blocks the thread while clients connect and send.
    reactor.call_later(Duration::from_millis(5), || {
        std::thread::sleep(Duration::from_millis(300))
    });
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
        let out: Vec<_> = ts.into_iter().map(|t| t.join()).collect();
        stop_from_thread(&handle);
        out
    });
    reactor.run().map_err(|e| e.to_string())?;
    set_current(None);
    let results = client.join().map_err(|_| "client panicked")?;
    ensure(guard.active(), "stopped by the clients, not the bound")?;
    let _ = guard.cancel();
    ensure(results.len() == 8, "8 clients")?;
    for r in results {
        let r = r.map_err(|_| "client thread panicked")?;
        ensure(r.map_err(|e| e.to_string())?, "every byte echoed intact")?;
    }
    let made = log.borrow().made;
    ensure(made == 8, format!("{made} connections"))
}

fn attaching_two_host_loops_is_an_error() -> Result<(), String> {
    let reactor = Reactor::new().map_err(|e| e.to_string())?;
    let first = torsion_qt::attach(&reactor).map_err(|e| e.to_string())?;
    let second = torsion_qt::attach(&reactor);
    ensure(
        matches!(second, Err(HostLoopError::AlreadyAttached)),
        "second attach refused",
    )?;
    drop(first);
    ensure(torsion_qt::attach(&reactor).is_ok(), "attach after detach")
}

const CHECKS: &[(&str, Check)] = &[
    (
        "echo_and_http_served_while_qt_runs",
        echo_and_http_served_while_qt_runs,
    ),
    (
        "timers_fire_close_to_their_deadline",
        timers_fire_close_to_their_deadline,
    ),
    (
        "call_from_thread_runs_on_the_qt_thread",
        call_from_thread_runs_on_the_qt_thread,
    ),
    (
        "stop_closes_connections_and_leaks_no_fds",
        stop_closes_connections_and_leaks_no_fds,
    ),
    (
        "a_stalled_qt_thread_delays_but_never_loses_io",
        a_stalled_qt_thread_delays_but_never_loses_io,
    ),
    (
        "attaching_two_host_loops_is_an_error",
        attaching_two_host_loops_is_an_error,
    ),
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exact = args.iter().any(|a| a == "--exact");
    // Positional args are name filters; skip the values of libtest flags.
    let mut filters: Vec<&String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if matches!(
            a.as_str(),
            "--format" | "--color" | "--test-threads" | "--skip" | "--logfile" | "-Z"
        ) {
            it.next();
        } else if !a.starts_with('-') {
            filters.push(a);
        }
    }
    let selected: Vec<&(&str, Check)> = CHECKS
        .iter()
        .filter(|(name, _)| {
            filters.is_empty()
                || filters.iter().any(|f| {
                    if exact {
                        *name == f.as_str()
                    } else {
                        name.contains(f.as_str())
                    }
                })
        })
        .collect();
    if args.iter().any(|a| a == "--list") {
        if !args.iter().any(|a| a == "--ignored") {
            for (name, _) in &selected {
                println!("{name}: test");
            }
        }
        return;
    }
    if args.iter().any(|a| a == "--ignored") {
        return;
    }
    // Before any check: a no-application attach is a clear error.
    let early = Reactor::new().ok().map(|r| torsion_qt::attach(&r).is_err());
    let _app = torsion_qt::CoreApplication::new().expect("first QCoreApplication");
    let mut failed = 0;
    if early != Some(true) {
        println!("attach without a QCoreApplication ... FAILED (not refused)");
        failed += 1;
    }
    for (name, check) in &selected {
        match check() {
            Ok(()) => println!("test {name} ... ok"),
            Err(e) => {
                println!("test {name} ... FAILED: {e}");
                failed += 1;
            }
        }
    }
    println!(
        "test result: {}. {} passed; {failed} failed",
        if failed == 0 { "ok" } else { "FAILED" },
        selected.len() + 1 - failed
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
