//! A Torsion reactor driven by a tokio current-thread runtime, with real peers.

mod common;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use torsion_core::hostloop::HostLoopError;
use torsion_core::{Failure, Reactor};

fn local<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

const BOUND: Duration = Duration::from_secs(30);

/// A reactor attached to tokio (2 s shutdown grace) with a logging echo
/// server on 127.0.0.1.
fn echo_under_tokio() -> (
    Reactor,
    Rc<torsion_tokio::TokioHost>,
    Rc<RefCell<Log>>,
    torsion_core::ListeningPort,
) {
    let reactor = Reactor::new().unwrap();
    reactor.set_shutdown_grace(Duration::from_secs(2));
    let host = Rc::new(torsion_tokio::attach(&reactor).unwrap());
    let log = Rc::new(RefCell::new(Log::default()));
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), echo_factory(log.clone()))
        .unwrap();
    (reactor, host, log, port)
}

/// The peer reads end-of-stream within 5 s.
async fn assert_peer_sees_close(s: &mut tokio::net::TcpStream) {
    let mut b = [0u8; 8];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .expect("the close arrives in time")
        .unwrap();
    assert_eq!(n, 0, "the peer sees the close");
}

#[test]
fn echo_and_http_served_while_tokio_runs() {
    local(async {
        let reactor = Reactor::new().unwrap();
        let host = torsion_tokio::attach(&reactor).unwrap();
        let log = Rc::new(RefCell::new(Log::default()));
        let echo = reactor
            .listen_tcp("127.0.0.1:0".parse().unwrap(), echo_factory(log.clone()))
            .unwrap();
        let http = reactor
            .listen_tcp("127.0.0.1:0".parse().unwrap(), http_factory(&reactor))
            .unwrap();
        let (ea, ha) = (echo.local_addr(), http.local_addr());
        // A plain tokio task keeps ticking on the same thread meanwhile.
        let ticks = Rc::new(Cell::new(0u32));
        let t = ticks.clone();
        let ticker = tokio::task::spawn_local(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(2));
            loop {
                iv.tick().await;
                t.set(t.get() + 1);
            }
        });
        let r = reactor.clone();
        let client = tokio::task::spawn_local(async move {
            let out = tokio::task::spawn_blocking(move || {
                (echo_roundtrip(ea, b"hello over tokio"), python_http_get(ha))
            })
            .await;
            r.stop().unwrap();
            out
        });
        tokio::time::timeout(BOUND, host.run())
            .await
            .expect("host loop stops")
            .unwrap();
        ticker.abort();
        let (echoed, got) = client.await.unwrap().unwrap();
        assert_eq!(echoed.unwrap(), b"hello over tokio");
        assert_eq!(got.unwrap(), format!("200\n{HTTP_BODY}"));
        assert!(ticks.get() > 1, "tokio tasks ran beside the reactor");
        assert_eq!(log.borrow().made, 1);
    });
}

#[test]
fn tokio_client_and_torsion_server_share_the_thread() {
    local(async {
        let reactor = Reactor::new().unwrap();
        let host = torsion_tokio::attach(&reactor).unwrap();
        let log = Rc::new(RefCell::new(Log::default()));
        let port = reactor
            .listen_tcp("127.0.0.1:0".parse().unwrap(), echo_factory(log.clone()))
            .unwrap();
        let addr = port.local_addr();
        let r = reactor.clone();
        let client = tokio::task::spawn_local(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            let mut total = Vec::new();
            for i in 0..20u32 {
                let msg = format!("ping {i};");
                s.write_all(msg.as_bytes()).await?;
                let mut back = vec![0; msg.len()];
                s.read_exact(&mut back).await?;
                total.extend_from_slice(&back);
            }
            r.stop().unwrap();
            Ok::<_, std::io::Error>((total, std::thread::current().id()))
        });
        tokio::time::timeout(BOUND, host.run())
            .await
            .expect("host loop stops")
            .unwrap();
        let (total, client_thread) = client.await.unwrap().unwrap();
        let expected: String = (0..20).map(|i| format!("ping {i};")).collect();
        assert_eq!(String::from_utf8(total).unwrap(), expected);
        let me = std::thread::current().id();
        assert_eq!(client_thread, me);
        let log = log.borrow();
        assert!(!log.threads.is_empty());
        assert!(log.threads.iter().all(|t| *t == me), "server ran here too");
        // The client closed its stream when its task ended; or shutdown closed it.
        assert_eq!(log.lost.len(), 1);
    });
}

#[test]
fn timers_fire_close_to_their_deadline() {
    local(async {
        let reactor = Reactor::new().unwrap();
        let host = torsion_tokio::attach(&reactor).unwrap();
        let lateness = Rc::new(RefCell::new(Vec::new()));
        let start = Instant::now();
        for ms in [5u64, 20, 45, 70] {
            let l = lateness.clone();
            let r = reactor.clone();
            reactor.call_later(Duration::from_millis(ms), move || {
                l.borrow_mut()
                    .push(start.elapsed().as_secs_f64() * 1000.0 - ms as f64);
                if l.borrow().len() == 5 {
                    r.stop().unwrap();
                }
            });
        }
        // Scheduled from a tokio task while the loop is idle: must still be armed.
        let r = reactor.clone();
        let l = lateness.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let at = Instant::now();
            let r2 = r.clone();
            r.call_later(Duration::from_millis(30), move || {
                l.borrow_mut()
                    .push(at.elapsed().as_secs_f64() * 1000.0 - 30.0);
                if l.borrow().len() == 5 {
                    r2.stop().unwrap();
                }
            });
        });
        tokio::time::timeout(BOUND, host.run())
            .await
            .expect("host loop stops")
            .unwrap();
        let lateness = lateness.borrow();
        assert_eq!(lateness.len(), 5, "{lateness:?}");
        for l in lateness.iter() {
            assert!(*l >= 0.0, "fired early: {lateness:?}");
            assert!(*l < 50.0, "fired too late: {lateness:?}");
        }
    });
}

#[test]
fn call_from_thread_runs_on_the_host_loop_thread() {
    local(async {
        let reactor = Reactor::new().unwrap();
        let host = torsion_tokio::attach(&reactor).unwrap();
        let handle = reactor.handle();
        let ran_on = Arc::new(std::sync::Mutex::new(None));
        let ro = ran_on.clone();
        let r = reactor.clone();
        // call_from_thread closures are Send: the stop goes through a flag
        // polled by a reactor timer.
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        fn poll_flag(r: Reactor, f: Arc<AtomicBool>) {
            if f.load(Ordering::SeqCst) {
                r.stop().unwrap();
            } else {
                let r2 = r.clone();
                r.call_later(Duration::from_millis(2), move || poll_flag(r2, f));
            }
        }
        poll_flag(r, f);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            handle.call_from_thread(move || {
                *ro.lock().unwrap() = Some(std::thread::current().id());
                flag.store(true, Ordering::SeqCst);
            });
        });
        tokio::time::timeout(BOUND, host.run())
            .await
            .expect("host loop stops")
            .unwrap();
        t.join().unwrap();
        assert_eq!(*ran_on.lock().unwrap(), Some(std::thread::current().id()));
    });
}

#[test]
fn a_stalled_host_loop_delays_but_never_loses_io() {
    local(async {
        let reactor = Reactor::new().unwrap();
        let host = torsion_tokio::attach(&reactor).unwrap();
        let log = Rc::new(RefCell::new(Log::default()));
        let port = reactor
            .listen_tcp("127.0.0.1:0".parse().unwrap(), echo_factory(log.clone()))
            .unwrap();
        let addr = port.local_addr();
        // A long blocking task stalls the whole thread while clients send.
        tokio::task::spawn_local(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            std::thread::sleep(Duration::from_millis(300));
        });
        let r = reactor.clone();
        let client = tokio::task::spawn_local(async move {
            let out = tokio::task::spawn_blocking(move || {
                let ts: Vec<_> = (0..8)
                    .map(|i| {
                        std::thread::spawn(move || {
                            let msg = format!("client {i} says hello").repeat(100);
                            echo_roundtrip(addr, msg.as_bytes()).map(|b| b == msg.as_bytes())
                        })
                    })
                    .collect();
                ts.into_iter()
                    .map(|t| t.join().unwrap())
                    .collect::<Vec<_>>()
            })
            .await;
            r.stop().unwrap();
            out
        });
        tokio::time::timeout(BOUND, host.run())
            .await
            .expect("host loop stops")
            .unwrap();
        let results = client.await.unwrap().unwrap();
        assert_eq!(results.len(), 8);
        for r in results {
            assert!(r.unwrap(), "every byte echoed intact");
        }
        assert_eq!(log.borrow().made, 8);
    });
}

#[test]
fn quitting_the_host_loop_closes_open_connections() {
    local(async {
        let (reactor, host, log, port) = echo_under_tokio();
        let addr = port.local_addr();
        let h = host.clone();
        let client = tokio::task::spawn_local(async move {
            let mut conns = Vec::new();
            for _ in 0..3 {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.write_all(b"x").await.unwrap();
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await.unwrap();
                conns.push(s);
            }
            // Quit the host loop itself (not Reactor::stop) with connections open.
            h.quit();
            conns
        });
        tokio::time::timeout(BOUND, host.run())
            .await
            .expect("host loop stops")
            .unwrap();
        let mut conns = client.await.unwrap();
        let (made, lost) = (log.borrow().made, log.borrow().lost.len());
        assert_eq!(made, 3);
        assert_eq!(lost, 3, "every open connection saw connection_lost");
        assert!(!reactor.is_running());
        // The peers see the close.
        for s in &mut conns {
            assert_peer_sees_close(s).await;
        }
    });
}

#[test]
fn attaching_two_host_loops_is_an_error() {
    let reactor = Reactor::new().unwrap();
    let first = torsion_tokio::attach(&reactor).unwrap();
    let err = torsion_tokio::attach(&reactor).unwrap_err();
    assert!(matches!(err, HostLoopError::AlreadyAttached), "{err}");
    assert!(err.to_string().contains("already attached"));
    drop(first);
    assert!(torsion_tokio::attach(&reactor).is_ok());
}

#[test]
fn reactor_run_outside_a_runtime_uses_tokio() {
    let reactor = Reactor::new().unwrap();
    let _host = torsion_tokio::attach(&reactor).unwrap();
    let in_tokio = Rc::new(Cell::new(false));
    let seen = in_tokio.clone();
    let r = reactor.clone();
    reactor.call_later(Duration::from_millis(5), move || {
        seen.set(tokio::runtime::Handle::try_current().is_ok());
        r.stop().unwrap();
    });
    reactor.run().unwrap();
    assert!(in_tokio.get(), "Reactor::run drove the reactor from tokio");
}

#[test]
fn reactor_run_inside_a_runtime_is_a_clear_error() {
    local(async {
        let reactor = Reactor::new().unwrap();
        let host = torsion_tokio::attach(&reactor).unwrap();
        let err = reactor.run().unwrap_err();
        assert!(err.to_string().contains("TokioHost::run"), "{err}");
        // The refusal left the reactor startable the right way.
        assert!(!reactor.is_running());
        let r = reactor.clone();
        reactor.call_later(Duration::from_millis(5), move || r.stop().unwrap());
        tokio::time::timeout(BOUND, host.run())
            .await
            .expect("host loop stops")
            .unwrap();
    });
}

#[test]
fn deferreds_and_tokio_futures_convert_both_ways() {
    local(async {
        let reactor = Reactor::new().unwrap();
        let host = torsion_tokio::attach(&reactor).unwrap();
        let d = torsion_core::Deferred::new();
        let fired_by_reactor = d.clone();
        reactor.call_later(Duration::from_millis(5), move || {
            fired_by_reactor.callback(11u32).unwrap();
        });
        let r = reactor.clone();
        let checks = tokio::task::spawn_local(async move {
            let a = torsion_tokio::deferred_to_future(d).await.unwrap();
            let b = torsion_tokio::future_to_deferred(async {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Ok::<_, Failure>(31u32)
            });
            let b = b.add_callback(|v| v + 1).await.unwrap();
            // Cancelling the Deferred aborts the tokio task.
            let finished = Rc::new(Cell::new(false));
            let f = finished.clone();
            let slow = torsion_tokio::future_to_deferred(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                f.set(true);
                Ok::<_, Failure>(())
            });
            slow.cancel();
            let cancelled = slow.await.unwrap_err();
            tokio::time::sleep(Duration::from_millis(80)).await;
            r.stop().unwrap();
            (
                a,
                b,
                cancelled
                    .downcast_ref::<torsion_core::CancelledError>()
                    .is_some(),
                finished.get(),
            )
        });
        tokio::time::timeout(BOUND, host.run())
            .await
            .expect("host loop stops")
            .unwrap();
        assert_eq!(checks.await.unwrap(), (11, 32, true, false));
    });
}

#[test]
fn reactor_work_queued_from_tokio_tasks_is_picked_up_promptly() {
    struct Keep(Rc<RefCell<Option<torsion_core::Transport>>>);
    impl torsion_core::Protocol for Keep {
        fn connection_made(&mut self, t: torsion_core::Transport) {
            *self.0.borrow_mut() = Some(t);
        }
        fn data_received(&mut self, _d: &[u8]) {}
    }
    local(async {
        let reactor = Reactor::new().unwrap();
        let host = torsion_tokio::attach(&reactor).unwrap();
        // Only a far timer is armed: nothing else would wake the reactor.
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
        let r = reactor.clone();
        let task = tokio::task::spawn_local(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            while slot.borrow().is_none() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            // A write from a tokio task (outside any reactor turn).
            let t0 = Instant::now();
            slot.borrow().as_ref().unwrap().write(b"pushed");
            let mut b = [0u8; 6];
            c.read_exact(&mut b).await.unwrap();
            let write_delay = t0.elapsed();
            // A short timer scheduled from a tokio task.
            let t1 = Instant::now();
            let (tx, rx) = tokio::sync::oneshot::channel();
            r.call_later(Duration::from_millis(5), move || {
                let _ = tx.send(t1.elapsed());
            });
            let timer_delay = rx.await.unwrap();
            r.stop().unwrap();
            (b, write_delay, timer_delay)
        });
        tokio::time::timeout(BOUND, host.run())
            .await
            .expect("host loop stops")
            .unwrap();
        let (b, write_delay, timer_delay) = task.await.unwrap();
        assert_eq!(&b, b"pushed");
        assert!(write_delay < Duration::from_secs(2), "{write_delay:?}");
        assert!(
            timer_delay >= Duration::from_millis(5) && timer_delay < Duration::from_millis(500),
            "{timer_delay:?}"
        );
    });
}

#[test]
fn a_reactor_task_woken_by_a_tokio_task_runs_promptly() {
    local(async {
        let reactor = Reactor::new().unwrap();
        let host = torsion_tokio::attach(&reactor).unwrap();
        // Only a far timer is armed: nothing else would wake the reactor.
        let _far = reactor.call_later(Duration::from_secs(3600), || ());
        let gate = torsion_core::Deferred::<u32>::new();
        let done_at = Rc::new(Cell::new(None));
        // A task on the reactor's own executor waits for the gate ...
        let g = gate.clone();
        let d = done_at.clone();
        let r = reactor.clone();
        reactor.spawn_local(async move {
            let v = g.await.unwrap();
            d.set(Some((v, Instant::now())));
            r.stop().unwrap();
        });
        // ... which a tokio task opens, outside any reactor turn.
        let opened_at = Rc::new(Cell::new(None));
        let o = opened_at.clone();
        tokio::task::spawn_local(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            o.set(Some(Instant::now()));
            gate.callback(9).unwrap();
        });
        tokio::time::timeout(BOUND, host.run())
            .await
            .expect("host loop stops")
            .unwrap();
        let (v, done) = done_at.get().expect("the reactor task ran");
        assert_eq!(v, 9);
        let lag = done - opened_at.get().unwrap();
        assert!(lag < Duration::from_secs(2), "{lag:?}");
    });
}

#[test]
fn dropping_the_run_future_shuts_the_reactor_down() {
    local(async {
        let (reactor, host, log, port) = echo_under_tokio();
        let addr = port.local_addr();
        let client = tokio::task::spawn_local(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            s
        });
        // Give up on run() once the client has its echo: the future is dropped.
        let gave_up = tokio::select! {
            r = host.run() => panic!("run ended by itself: {r:?}"),
            s = client => s.unwrap(),
        };
        assert!(!reactor.is_running(), "the reactor is no longer running");
        assert_eq!(log.borrow().made, 1);
        assert_eq!(
            log.borrow().lost.len(),
            1,
            "the open connection saw connection_lost"
        );
        let mut s = gave_up;
        assert_peer_sees_close(&mut s).await;
        // The reactor can run again under the same host.
        let h = host.clone();
        tokio::task::spawn_local(async move { h.quit() });
        tokio::time::timeout(BOUND, host.run())
            .await
            .expect("second run stops")
            .unwrap();
    });
}

#[test]
fn a_timer_moved_earlier_from_a_tokio_task_fires_at_its_new_time() {
    local(async {
        let reactor = Reactor::new().unwrap();
        let host = Rc::new(torsion_tokio::attach(&reactor).unwrap());
        let fired = Rc::new(Cell::new(None::<Duration>));
        let f = fired.clone();
        let t0 = Instant::now();
        let call = reactor.call_later(Duration::from_secs(60), move || f.set(Some(t0.elapsed())));
        let (h, seen) = (host.clone(), fired.clone());
        tokio::task::spawn_local(async move {
            // Let the host arm its timer for the 60 s deadline first.
            tokio::time::sleep(Duration::from_millis(50)).await;
            // A tokio task is outside any reactor turn: the reset alone must
            // get the host to re-arm.
            call.reset(Duration::from_millis(50)).unwrap();
            for _ in 0..500 {
                if seen.get().is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            h.quit();
        });
        tokio::time::timeout(BOUND, host.serve())
            .await
            .expect("host loop quits")
            .unwrap();
        let took = fired.get().expect("the moved timer fired");
        assert!(took < Duration::from_secs(3), "fired late: {took:?}");
    });
}
