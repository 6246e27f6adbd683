//! Thread pool and Deferreds from threads, against a real running reactor.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use torsion_core::threads::{
    blocking_call_from_thread, call_in_thread, defer_to_thread, defer_to_thread_pool, ThreadPool,
    ThreadPoolError,
};
use torsion_core::{Deferred, Failure, PanicError, Reactor};

/// Stops the reactor after `limit` whatever happens, so no test can hang.
fn watchdog(reactor: &Reactor, limit: Duration) {
    let r = reactor.clone();
    reactor.call_later(limit, move || {
        let _ = r.stop();
        panic!("watchdog: test did not finish in {limit:?}");
    });
}

#[test]
fn results_arrive_on_the_reactor_thread() {
    let reactor = Reactor::new().unwrap();
    watchdog(&reactor, Duration::from_secs(20));
    let reactor_thread = std::thread::current().id();
    let seen = Rc::new(RefCell::new(None));
    let s = seen.clone();
    let r = reactor.clone();
    defer_to_thread(&reactor, move || {
        let t = std::thread::current();
        (t.id(), t.name().map(String::from))
    })
    .finally(move |res| {
        *s.borrow_mut() = Some((res.unwrap(), std::thread::current().id()));
        r.stop().unwrap();
    });
    reactor.run().unwrap();
    let ((worker_id, worker_name), callback_thread) = seen.borrow_mut().take().unwrap();
    assert_ne!(
        worker_id, reactor_thread,
        "work must run off the reactor thread"
    );
    assert!(worker_name.unwrap().starts_with("torsion-pool-"));
    assert_eq!(callback_thread, reactor_thread);
}

#[test]
fn ten_thousand_calls_all_complete() {
    let reactor = Reactor::new().unwrap();
    watchdog(&reactor, Duration::from_secs(60));
    let n = 10_000u64;
    let done = Rc::new(Cell::new(0u64));
    let sum = Rc::new(Cell::new(0u64));
    let me = std::thread::current().id();
    for i in 0..n {
        let (done, sum, r) = (done.clone(), sum.clone(), reactor.clone());
        defer_to_thread(&reactor, move || i * 2).finally(move |res| {
            assert_eq!(std::thread::current().id(), me);
            sum.set(sum.get() + res.unwrap());
            done.set(done.get() + 1);
            if done.get() == n {
                r.stop().unwrap();
            }
        });
    }
    reactor.run().unwrap();
    assert_eq!(done.get(), n);
    assert_eq!(sum.get(), n * (n - 1));
    assert!(reactor.thread_pool().size().1 >= reactor.thread_pool().thread_count());
}

#[test]
fn a_panicking_job_errbacks_with_the_panic_message() {
    let reactor = Reactor::new().unwrap();
    watchdog(&reactor, Duration::from_secs(20));
    let out = Rc::new(RefCell::new(None));
    let o = out.clone();
    let r = reactor.clone();
    defer_to_thread(&reactor, || -> u8 { panic!("disk on fire: {}", 451) }).finally(move |res| {
        *o.borrow_mut() = Some(res);
        r.stop().unwrap();
    });
    reactor.run().unwrap();
    let failure = out.borrow_mut().take().unwrap().unwrap_err();
    let panic = failure.downcast_ref::<PanicError>().expect("a PanicError");
    assert_eq!(panic.message, "disk on fire: 451");
    // The pool survived the panic: it still runs work.
    let reactor2 = reactor.clone();
    let got = Rc::new(Cell::new(0));
    let g = got.clone();
    reactor.call_when_running(move || {
        let r = reactor2.clone();
        defer_to_thread(&reactor2, || 7).finally(move |v| {
            g.set(v.unwrap());
            r.stop().unwrap();
        });
    });
    reactor.run().unwrap();
    assert_eq!(got.get(), 7);
}

#[test]
fn shutdown_waits_for_running_work_and_fails_queued_work() {
    let reactor = Reactor::new().unwrap();
    watchdog(&reactor, Duration::from_secs(20));
    let pool = ThreadPool::new(&reactor, "slow", 1, 1);
    let finished = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(Barrier::new(2));
    type Outcomes = Vec<(usize, Result<usize, Failure>)>;
    let outcomes: Rc<RefCell<Outcomes>> = Rc::default();
    for i in 0..5 {
        let (f, s, o) = (finished.clone(), started.clone(), outcomes.clone());
        defer_to_thread_pool(&pool, move || {
            if i == 0 {
                s.wait();
                std::thread::sleep(Duration::from_millis(200));
            }
            f.fetch_add(1, Ordering::SeqCst);
            i
        })
        .finally(move |r| o.borrow_mut().push((i, r)));
    }
    // Stop once the first job runs; the other four are still queued.
    let r = reactor.clone();
    reactor.call_when_running(move || {
        started.wait();
        r.stop().unwrap();
    });
    reactor.run().unwrap();
    let mut outcomes = outcomes.borrow_mut();
    assert_eq!(outcomes.len(), 5, "every Deferred fired");
    outcomes.sort_by_key(|(i, _)| *i);
    assert_eq!(
        *outcomes[0].1.as_ref().unwrap(),
        0,
        "running work completed"
    );
    for (_, o) in &outcomes[1..] {
        let f = o.as_ref().unwrap_err();
        assert_eq!(f.downcast_ref(), Some(&ThreadPoolError::Stopped));
    }
    assert_eq!(finished.load(Ordering::SeqCst), 1);
    assert_eq!(pool.thread_count(), 0, "threads exited");
    // After shutdown new work fails at once instead of hanging.
    let late = defer_to_thread_pool(&pool, || 1);
    let seen = Rc::new(RefCell::new(None));
    let s = seen.clone();
    late.finally(move |r| *s.borrow_mut() = Some(r.is_err()));
    assert_eq!(*seen.borrow(), Some(true));
}

#[test]
fn min_and_max_threads_are_respected() {
    let reactor = Reactor::new().unwrap();
    watchdog(&reactor, Duration::from_secs(20));
    let pool = ThreadPool::new(&reactor, "bounded", 2, 3);
    pool.start();
    assert_eq!(pool.thread_count(), 2, "min threads start with the pool");
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let names = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let done = Rc::new(Cell::new(0));
    for _ in 0..30 {
        let (running, peak, names) = (running.clone(), peak.clone(), names.clone());
        let (done, r) = (done.clone(), reactor.clone());
        defer_to_thread_pool(&pool, move || {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            names
                .lock()
                .unwrap()
                .insert(std::thread::current().name().unwrap().to_string());
            std::thread::sleep(Duration::from_millis(5));
            running.fetch_sub(1, Ordering::SeqCst);
        })
        .finally(move |res| {
            res.unwrap();
            done.set(done.get() + 1);
            if done.get() == 30 {
                r.stop().unwrap();
            }
        });
    }
    assert!(pool.thread_count() <= 3);
    reactor.run().unwrap();
    assert_eq!(done.get(), 30);
    assert!(
        peak.load(Ordering::SeqCst) <= 3,
        "never more than max at once"
    );
    let names = names.lock().unwrap();
    assert!(names.len() <= 3 && !names.is_empty(), "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("bounded-")), "{names:?}");
}

#[test]
fn suggest_thread_pool_size_bounds_the_default_pool() {
    let reactor = Reactor::new().unwrap();
    watchdog(&reactor, Duration::from_secs(20));
    reactor.suggest_thread_pool_size(2);
    let peak = Arc::new(AtomicUsize::new(0));
    let running = Arc::new(AtomicUsize::new(0));
    let done = Rc::new(Cell::new(0));
    for _ in 0..12 {
        let (peak, running, done, r) =
            (peak.clone(), running.clone(), done.clone(), reactor.clone());
        defer_to_thread(&reactor, move || {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            running.fetch_sub(1, Ordering::SeqCst);
        })
        .finally(move |_| {
            done.set(done.get() + 1);
            if done.get() == 12 {
                r.stop().unwrap();
            }
        });
    }
    assert!(reactor.thread_pool().thread_count() <= 2);
    reactor.run().unwrap();
    assert!(peak.load(Ordering::SeqCst) <= 2);
}

#[test]
fn blocking_call_from_a_pool_thread_waits_for_the_reactor() {
    let reactor = Reactor::new().unwrap();
    watchdog(&reactor, Duration::from_secs(20));
    let handle = reactor.handle();
    let reactor_thread = std::thread::current().id();
    let out = Rc::new(RefCell::new(None));
    let o = out.clone();
    let r = reactor.clone();
    defer_to_thread(&reactor, move || {
        // A Deferred that the reactor fires later, from a timer: the pool
        // thread must wait for it, not just for the call.
        let ok = blocking_call_from_thread(&handle, move || {
            assert_eq!(std::thread::current().id(), reactor_thread);
            Deferred::succeed(41u32).add_callback(|v| v + 1)
        });
        let failed = blocking_call_from_thread(&handle, || -> Result<u32, Failure> {
            Err(Failure::msg("reactor said no"))
        });
        (ok.unwrap(), failed.unwrap_err().to_string())
    })
    .finally(move |res| {
        *o.borrow_mut() = Some(res.unwrap());
        r.stop().unwrap();
    });
    reactor.run().unwrap();
    let (ok, failed) = out.borrow_mut().take().unwrap();
    assert_eq!(ok, 42);
    assert_eq!(failed, "reactor said no");
}

#[test]
fn blocking_call_waits_for_a_deferred_fired_later_by_a_timer() {
    let reactor = Reactor::new().unwrap();
    watchdog(&reactor, Duration::from_secs(20));
    let handle = reactor.handle();
    let out = Rc::new(Cell::new(0));
    let o = out.clone();
    let r = reactor.clone();
    // The reactor-side function needs the reactor: reach it through a
    // thread-local set up on the reactor thread.
    thread_local!(static REACTOR: RefCell<Option<Reactor>> = const { RefCell::new(None) });
    REACTOR.with(|x| *x.borrow_mut() = Some(reactor.clone()));
    defer_to_thread(&reactor, move || {
        blocking_call_from_thread(&handle, || {
            let d = Deferred::<u32>::new();
            let fire = d.clone();
            REACTOR.with(|x| {
                x.borrow()
                    .as_ref()
                    .unwrap()
                    .call_later(Duration::from_millis(30), move || {
                        let _ = fire.callback(9);
                    });
            });
            d
        })
    })
    .finally(move |res| {
        o.set(res.unwrap().unwrap());
        r.stop().unwrap();
    });
    reactor.run().unwrap();
    REACTOR.with(|x| x.borrow_mut().take());
    assert_eq!(out.get(), 9);
}

#[test]
fn blocking_call_on_the_reactor_thread_is_an_error_not_a_deadlock() {
    let reactor = Reactor::new().unwrap();
    let handle = reactor.handle();
    let err = blocking_call_from_thread(&handle, || Ok::<u8, Failure>(1)).unwrap_err();
    assert_eq!(
        err.downcast_ref::<ThreadPoolError>(),
        Some(&ThreadPoolError::OnReactorThread)
    );
}

#[test]
fn defer_to_thread_pool_off_the_reactor_thread_fails_cleanly() {
    let reactor = Reactor::new().unwrap();
    let pool = ThreadPool::new(&reactor, "elsewhere", 0, 1);
    let outcome = std::thread::spawn(move || {
        let d = defer_to_thread_pool(&pool, || 1);
        let out = Rc::new(RefCell::new(None));
        let o = out.clone();
        d.finally(move |r| *o.borrow_mut() = Some(r.map_err(|f| f.to_string())));
        let v = out.borrow_mut().take();
        v
    })
    .join()
    .unwrap();
    let err = outcome.unwrap().unwrap_err();
    assert!(err.contains("reactor's thread"), "{err}");
}

#[test]
fn call_in_thread_runs_and_survives_panics() {
    let reactor = Reactor::new().unwrap();
    watchdog(&reactor, Duration::from_secs(20));
    reactor.suggest_thread_pool_size(1);
    let hits = Arc::new(AtomicUsize::new(0));
    call_in_thread(&reactor, || panic!("fire and forget"));
    let h = hits.clone();
    let handle = reactor.handle();
    let r = reactor.clone();
    thread_local!(static STOP: RefCell<Option<Reactor>> = const { RefCell::new(None) });
    STOP.with(|s| *s.borrow_mut() = Some(r));
    call_in_thread(&reactor, move || {
        h.fetch_add(1, Ordering::SeqCst);
        handle.call_from_thread(|| STOP.with(|s| s.borrow().as_ref().unwrap().stop().unwrap()));
    });
    reactor.run().unwrap();
    STOP.with(|s| s.borrow_mut().take());
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the second job ran on the one thread after the panic"
    );
}

#[test]
fn the_pool_restarts_with_the_reactor() {
    let reactor = Reactor::new().unwrap();
    watchdog(&reactor, Duration::from_secs(20));
    for round in 0..2u32 {
        let out = Rc::new(Cell::new(0));
        let (o, r) = (out.clone(), reactor.clone());
        let r2 = reactor.clone();
        reactor.call_when_running(move || {
            defer_to_thread(&r2, move || round + 10).finally(move |v| {
                o.set(v.unwrap());
                r.stop().unwrap();
            });
        });
        reactor.run().unwrap();
        assert_eq!(out.get(), round + 10);
        assert_eq!(reactor.thread_pool().thread_count(), 0);
    }
}

struct StopOnConnect(Reactor);
impl torsion_core::Protocol for StopOnConnect {
    fn connection_made(&mut self, t: torsion_core::Transport) {
        t.lose_connection();
        let _ = self.0.stop();
    }
    fn data_received(&mut self, _data: &[u8]) {}
}

#[test]
fn hostname_connects_resolve_on_the_pool() {
    let reactor = Reactor::new().unwrap();
    watchdog(&reactor, Duration::from_secs(20));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let r = reactor.clone();
    let factory = torsion_core::factory_fn(move || StopOnConnect(r.clone()));
    assert_eq!(reactor.thread_pool().thread_count(), 0);
    let _c = reactor.connect_tcp_host("localhost", port, factory, Default::default());
    assert_eq!(
        reactor.thread_pool().thread_count(),
        1,
        "the lookup runs on the reactor's pool"
    );
    reactor.run().unwrap();
    let (_peer, addr) = listener.accept().unwrap();
    assert!(addr.ip().is_loopback());
}

#[test]
fn submissions_from_many_threads_while_resizing_all_run() {
    let reactor = Reactor::new().unwrap();
    watchdog(&reactor, Duration::from_secs(30));
    let pool = ThreadPool::new(&reactor, "stress", 1, 4);
    let ran = Arc::new(AtomicUsize::new(0));
    let submitters: Vec<_> = (0..4)
        .map(|k| {
            let (pool, ran) = (pool.clone(), ran.clone());
            std::thread::spawn(move || {
                for i in 0..2_500 {
                    let ran = ran.clone();
                    pool.call_in_thread(move || {
                        ran.fetch_add(1, Ordering::SeqCst);
                    });
                    if k == 0 && i % 500 == 0 {
                        // Shrink and grow while work flows.
                        pool.adjust_size(0, 1 + (i / 500) % 4);
                    }
                }
            })
        })
        .collect();
    for s in submitters {
        s.join().unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while ran.load(Ordering::SeqCst) < 10_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} ran",
            ran.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(pool.thread_count() <= 4);
    // Shutdown joins whatever threads are left.
    let r = reactor.clone();
    reactor.call_when_running(move || r.stop().unwrap());
    reactor.run().unwrap();
    assert_eq!(pool.thread_count(), 0);
    assert_eq!(ran.load(Ordering::SeqCst), 10_000);
}

#[test]
fn idle_workers_wake_for_single_calls_and_bursts_alike() {
    // All four threads start at once and go idle between rounds, so every
    // round depends on sleeping workers being signalled (a lost wake-up
    // would stall a round until the watchdog fires).
    let reactor = Reactor::new().unwrap();
    watchdog(&reactor, Duration::from_secs(30));
    let pool = ThreadPool::new(&reactor, "rounds", 4, 4);
    pool.start();
    fn round(pool: ThreadPool, r: Reactor, left: u32, total: Rc<Cell<u64>>) {
        if left == 0 {
            r.stop().unwrap();
            return;
        }
        // Odd rounds: one call; even rounds: a burst of 40.
        let n = if left % 2 == 1 { 1 } else { 40 };
        let pending = Rc::new(Cell::new(n));
        for i in 0..n {
            let (pool2, r2, total, pending) =
                (pool.clone(), r.clone(), total.clone(), pending.clone());
            defer_to_thread_pool(&pool, move || i).finally(move |v| {
                total.set(total.get() + v.unwrap() + 1);
                pending.set(pending.get() - 1);
                if pending.get() == 0 {
                    // Let the workers go back to sleep before the next round.
                    let (p, rr) = (pool2.clone(), r2.clone());
                    r2.call_later(Duration::from_millis(1), move || {
                        round(p, rr, left - 1, total)
                    });
                }
            });
        }
    }
    let total = Rc::new(Cell::new(0u64));
    let (p, r, t) = (pool.clone(), reactor.clone(), total.clone());
    reactor.call_when_running(move || round(p, r, 200, t));
    reactor.run().unwrap();
    // 100 single calls (value 0, counted as 1) and 100 bursts of 0..40.
    assert_eq!(total.get(), 100 + 100 * (40 * 41 / 2));
    assert_eq!(pool.thread_count(), 0);
}

#[test]
fn a_blocked_job_does_not_hold_back_queued_work() {
    // Job A waits for job B; with two threads B must run on the other one
    // (a worker that took several jobs at a time could deadlock here).
    let reactor = Reactor::new().unwrap();
    watchdog(&reactor, Duration::from_secs(20));
    let pool = ThreadPool::new(&reactor, "pair", 2, 2);
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let rx = Mutex::new(rx);
    let a = defer_to_thread_pool(&pool, move || {
        rx.lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10))
            .is_ok()
    });
    let b = defer_to_thread_pool(&pool, move || tx.send(()).is_ok());
    let got = Rc::new(RefCell::new(Vec::new()));
    for d in [a, b] {
        let (got, r) = (got.clone(), reactor.clone());
        d.finally(move |v| {
            got.borrow_mut().push(v.unwrap());
            if got.borrow().len() == 2 {
                r.stop().unwrap();
            }
        });
    }
    reactor.run().unwrap();
    assert_eq!(*got.borrow(), vec![true, true]);
}
