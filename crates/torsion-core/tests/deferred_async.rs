//! async/await on the reactor: Deferreds as futures, `Deferred::from_future`,
//! cancellation both ways, wakers from other threads, and an `async fn`
//! protocol handler fed by a timer and by a real TCP read.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use torsion_core::deferred::AlreadyAwaitedError;
use torsion_core::{
    defer_later, factory_fn, CancelledError, Deferred, DeferredQueue, Failure, Protocol, Reactor,
    Transport,
};

type Slot<T> = Rc<RefCell<Option<Result<T, Failure>>>>;

fn result_of<T: 'static>(d: Deferred<T>) -> Slot<T> {
    let slot: Slot<T> = Rc::default();
    let s = slot.clone();
    d.finally(move |r| *s.borrow_mut() = Some(r));
    slot
}

/// Runs the reactor until `done` holds a value, for at most `limit`.
fn run_until<T>(reactor: &Reactor, done: &Slot<T>, limit: Duration) {
    let r = reactor.clone();
    let guard = reactor.call_later(limit, move || {
        let _ = r.stop();
    });
    for _ in 0..100_000 {
        if done.borrow().is_some() || !guard.active() {
            break;
        }
        reactor.iterate(Some(Duration::from_millis(50))).unwrap();
    }
    let _ = guard.cancel();
}

#[test]
fn a_fired_deferred_is_a_ready_future_without_any_reactor() {
    let v = futures::executor::block_on(Deferred::succeed(3u8).add_callback(|v| v + 1));
    assert_eq!(v.unwrap(), 4);
    let f = futures::executor::block_on(Deferred::<u8>::fail(Failure::msg("nope")));
    assert_eq!(f.unwrap_err().to_string(), "nope");
}

#[test]
fn awaiting_a_deferred_fed_by_a_timer() {
    let reactor = Reactor::new().unwrap();
    let r = reactor.clone();
    let d = Deferred::from_future(&reactor, async move {
        let a = defer_later(&r, Duration::from_millis(10), || Ok::<_, Failure>(20u32)).await?;
        let b = defer_later(&r, Duration::from_millis(10), || Ok::<_, Failure>(22u32)).await?;
        Ok::<_, Failure>(a + b)
    });
    let out = result_of(d);
    run_until(&reactor, &out, Duration::from_secs(5));
    assert_eq!(out.borrow_mut().take().unwrap().unwrap(), 42);
}

#[test]
fn a_failed_deferred_surfaces_as_err_and_a_panicking_future_as_failure() {
    let reactor = Reactor::new().unwrap();
    let failed = result_of(Deferred::from_future(&reactor, async {
        Deferred::<u8>::fail(Failure::msg("inner failure")).await
    }));
    let panicked = result_of(Deferred::from_future(&reactor, async {
        if true {
            panic!("future exploded");
        }
        Ok::<u8, Failure>(0)
    }));
    run_until(&reactor, &panicked, Duration::from_secs(5));
    run_until(&reactor, &failed, Duration::from_secs(5));
    assert_eq!(
        failed.borrow_mut().take().unwrap().unwrap_err().to_string(),
        "inner failure"
    );
    let p = panicked.borrow_mut().take().unwrap().unwrap_err();
    assert!(
        p.is_panic() && p.to_string().contains("future exploded"),
        "{p}"
    );
}

/// Drops flip a flag: tells whether a future was dropped.
struct DropFlag(Rc<Cell<bool>>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

#[test]
fn cancelling_the_deferred_drops_the_future_and_cancels_what_it_awaited() {
    let reactor = Reactor::new().unwrap();
    let dropped = Rc::new(Cell::new(false));
    let awaited_cancelled = Rc::new(Cell::new(false));
    let (df, ac) = (dropped.clone(), awaited_cancelled.clone());
    let awaited = Deferred::<u8>::with_canceller(move |_| ac.set(true));
    let d = Deferred::from_future(&reactor, async move {
        let _flag = DropFlag(df);
        awaited.await
    });
    let out = result_of(d.clone());
    // Let the task start and park on `awaited`.
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    assert!(!dropped.get());
    d.cancel();
    assert!(dropped.get(), "the future was dropped");
    assert!(
        awaited_cancelled.get(),
        "the Deferred it awaited was cancelled"
    );
    let f = out.borrow_mut().take().unwrap().unwrap_err();
    assert!(f.check::<CancelledError>());
}

#[test]
fn a_future_dropped_unfinished_fails_its_deferred_with_cancelled() {
    let reactor = Reactor::new().unwrap();
    let never = Deferred::<u8>::new();
    let n = never.clone();
    let out = result_of(Deferred::from_future(&reactor, n));
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    assert!(out.borrow().is_none());
    drop(reactor); // the executor, and the future in it, go away
    let f = out.borrow_mut().take().expect("fired on drop").unwrap_err();
    assert!(f.check::<CancelledError>());
    assert!(never.called(), "the awaited Deferred was cancelled too");
}

/// A one-shot channel completed from another thread: its waker is called
/// on that thread.
#[derive(Default)]
struct Shared {
    value: Option<u64>,
    waker: Option<Waker>,
}
struct Receiver(Arc<Mutex<Shared>>);
impl Future for Receiver {
    type Output = u64;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u64> {
        let mut s = self.0.lock().unwrap();
        match s.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[test]
fn a_future_completed_by_another_thread_wakes_the_reactor() {
    let reactor = Reactor::new().unwrap();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let rx = Receiver(shared.clone());
    let out = result_of(Deferred::from_future(&reactor, async move {
        Ok::<_, Failure>(rx.await + 1)
    }));
    let thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        let waker = {
            let mut s = shared.lock().unwrap();
            s.value = Some(41);
            s.waker.take()
        };
        waker.expect("the task registered a waker").wake();
    });
    // No timer is pending: only the cross-thread wake can end the poll early.
    let r = reactor.clone();
    let o = out.clone();
    reactor.call_soon(move || {
        fn check(r: Reactor, o: Slot<u64>) {
            if o.borrow().is_some() {
                let _ = r.stop();
            } else {
                let r2 = r.clone();
                r.call_later(Duration::from_millis(1), move || check(r2, o));
            }
        }
        check(r, o)
    });
    let r2 = reactor.clone();
    let limit = reactor.call_later(Duration::from_secs(10), move || {
        let _ = r2.stop();
    });
    reactor.run().unwrap();
    let _ = limit.cancel();
    thread.join().unwrap();
    assert_eq!(out.borrow_mut().take().unwrap().unwrap(), 42);
}

#[test]
fn wakeup_from_another_thread_ends_a_long_poll() {
    // The reactor blocks in poll with no timer due for 10 s; a wake from
    // another thread must end the wait long before that.
    let reactor = Reactor::new().unwrap();
    let shared = Arc::new(Mutex::new(Shared::default()));
    let rx = Receiver(shared.clone());
    let out = result_of(Deferred::from_future(&reactor, async move {
        Ok::<_, Failure>(rx.await)
    }));
    reactor.iterate(Some(Duration::ZERO)).unwrap(); // parks the task
    let thread = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(20));
        let waker = {
            let mut s = shared.lock().unwrap();
            s.value = Some(7);
            s.waker.take()
        };
        waker.expect("waker").wake();
    });
    let started = std::time::Instant::now();
    for _ in 0..10 {
        if out.borrow().is_some() {
            break;
        }
        reactor.iterate(Some(Duration::from_secs(10))).unwrap();
    }
    thread.join().unwrap();
    assert_eq!(out.borrow_mut().take().unwrap().unwrap(), 7);
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_deferred_can_be_awaited_by_only_one_task() {
    let reactor = Reactor::new().unwrap();
    let d = Deferred::<u8>::new();
    let (a, b) = (d.clone(), d.clone());
    let first = result_of(Deferred::from_future(&reactor, a));
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    let second = result_of(Deferred::from_future(&reactor, b));
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    let f = second.borrow_mut().take().unwrap().unwrap_err();
    assert!(f.check::<AlreadyAwaitedError>());
    d.callback(5).unwrap();
    run_until(&reactor, &first, Duration::from_secs(5));
    assert_eq!(first.borrow_mut().take().unwrap().unwrap(), 5);
}

// ---- an async fn protocol handler over real TCP ----

struct Conn {
    reactor: Reactor,
    reads: DeferredQueue<Vec<u8>>,
    done: Slot<String>,
}

async fn handle(
    reactor: Reactor,
    t: Transport,
    reads: DeferredQueue<Vec<u8>>,
) -> Result<String, Failure> {
    t.write(b"hello\n");
    // A Deferred fed by a timer ...
    let tick = defer_later(&reactor, Duration::from_millis(20), || {
        Ok::<_, Failure>("tick")
    })
    .await?;
    // ... and Deferreds fed by network reads, each with a timeout.
    let mut line = Vec::new();
    for _ in 0..1000 {
        if line.ends_with(b"\n") {
            break;
        }
        let chunk = reads
            .get()?
            .add_timeout(Duration::from_secs(5), &reactor)
            .await?;
        line.extend_from_slice(&chunk);
    }
    t.write(format!("{tick}: {}", String::from_utf8_lossy(&line)).as_bytes());
    t.lose_connection();
    Ok(String::from_utf8_lossy(&line).trim().to_string())
}

impl Protocol for Conn {
    fn connection_made(&mut self, t: Transport) {
        let d = Deferred::from_future(
            &self.reactor,
            handle(self.reactor.clone(), t, self.reads.clone()),
        );
        let done = self.done.clone();
        d.finally(move |r| *done.borrow_mut() = Some(r));
    }
    fn data_received(&mut self, data: &[u8]) {
        if self.reads.put(data.to_vec()).is_err() {
            tracing::warn!("read queue full");
        }
    }
}

#[test]
fn async_handler_awaits_a_timer_and_a_network_read() {
    let reactor = Reactor::new().unwrap();
    let done: Slot<String> = Rc::default();
    let (r, d) = (reactor.clone(), done.clone());
    let port = reactor
        .listen_tcp(
            "127.0.0.1:0".parse().unwrap(),
            factory_fn(move || Conn {
                reactor: r.clone(),
                reads: DeferredQueue::new(Some(64), Some(1)),
                done: d.clone(),
            }),
        )
        .unwrap();
    let addr = port.local_addr();
    let client = std::thread::spawn(move || -> std::io::Result<(String, String)> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::new(s.try_clone()?);
        let mut greeting = String::new();
        reader.read_line(&mut greeting)?;
        // Split the line over two writes: the handler must await twice.
        s.write_all(b"ping ")?;
        s.flush()?;
        std::thread::sleep(Duration::from_millis(10));
        s.write_all(b"pong\n")?;
        let mut reply = String::new();
        reader.read_line(&mut reply)?;
        Ok((greeting, reply))
    });
    run_until(&reactor, &done, Duration::from_secs(10));
    // Let the reply flush and the connection close.
    for _ in 0..5 {
        reactor.iterate(Some(Duration::from_millis(10))).unwrap();
    }
    let (greeting, reply) = client.join().unwrap().unwrap();
    assert_eq!(greeting, "hello\n");
    assert_eq!(reply, "tick: ping pong\n");
    assert_eq!(done.borrow_mut().take().unwrap().unwrap(), "ping pong");
}

#[test]
fn looping_call_and_cooperator_run_on_the_reactor() {
    use torsion_core::{Cooperator, LoopingCall};
    let reactor = Reactor::new().unwrap();
    let ticks = Rc::new(Cell::new(0u32));
    let t = ticks.clone();
    let lc_slot: Rc<RefCell<Option<LoopingCall>>> = Rc::default();
    let ls = lc_slot.clone();
    let lc = LoopingCall::new(reactor.clone(), move || {
        t.set(t.get() + 1);
        if t.get() == 3 {
            if let Some(lc) = ls.borrow().as_ref() {
                lc.stop().unwrap();
            }
        }
        Ok::<(), Failure>(())
    });
    *lc_slot.borrow_mut() = Some(lc.clone());
    let looped = result_of(lc.start(Duration::from_millis(5), true).unwrap());

    let coop = Cooperator::new(reactor.clone()).with_max_steps_per_tick(10);
    let sum = Rc::new(Cell::new(0u64));
    let s = sum.clone();
    let task = coop.cooperate((1..=1000u64).map(move |i| s.set(s.get() + i)));
    let worked = result_of(task.when_done());

    run_until(&reactor, &worked, Duration::from_secs(10));
    run_until(&reactor, &looped, Duration::from_secs(10));
    lc_slot.borrow_mut().take();
    assert_eq!(ticks.get(), 3);
    assert!(looped.borrow_mut().take().unwrap().is_ok());
    assert!(worked.borrow_mut().take().unwrap().is_ok());
    assert_eq!(sum.get(), 500_500);
}

#[test]
fn a_future_cancelling_its_own_deferred_is_dropped_cleanly() {
    let reactor = Reactor::new().unwrap();
    let me: Rc<RefCell<Option<Deferred<u8>>>> = Rc::default();
    let m = me.clone();
    let dropped = Rc::new(Cell::new(false));
    let df = dropped.clone();
    let d = Deferred::from_future(&reactor, async move {
        let _flag = DropFlag(df);
        let own = m.borrow_mut().take();
        if let Some(own) = own {
            own.cancel();
        }
        Deferred::<u8>::new().await
    });
    *me.borrow_mut() = Some(d.clone());
    let out = result_of(d);
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    let f = out.borrow_mut().take().expect("cancelled").unwrap_err();
    assert!(f.check::<CancelledError>());
    assert!(dropped.get(), "the future was dropped after its poll");
}

#[test]
fn awaiting_a_deferred_that_waits_on_another() {
    let reactor = Reactor::new().unwrap();
    let outer = Deferred::<u8>::new();
    let inner = Deferred::<u8>::new();
    let i2 = inner.clone();
    let chained = outer.clone().add_callback_deferred(move |_| i2);
    let out = result_of(Deferred::from_future(&reactor, chained));
    outer.callback(1).unwrap();
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    assert!(out.borrow().is_none());
    inner.callback(9).unwrap();
    run_until(&reactor, &out, Duration::from_secs(5));
    assert_eq!(out.borrow_mut().take().unwrap().unwrap(), 9);
}
