//! DeferredList, gather_results, race, timeouts, lock/semaphore/queue,
//! defer_later, LoopingCall and the Cooperator — driven by a manual clock.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use torsion_core::testing::Clock;
use torsion_core::{
    defer_later, gather_results, race, CancelledError, Cooperator, Deferred, DeferredList,
    DeferredLock, DeferredQueue, DeferredSemaphore, Failure, FailureGroup, FirstError, ListOutcome,
    LoopingCall, LoopingCallError, NotAcquiredError, QueueOverflow, QueueUnderflow, TaskError,
    TimeoutError, Yield,
};

type Slot<T> = Rc<RefCell<Option<Result<T, Failure>>>>;

fn result_of<T: 'static>(d: Deferred<T>) -> Slot<T> {
    let slot: Slot<T> = Rc::default();
    let s = slot.clone();
    d.finally(move |r| *s.borrow_mut() = Some(r));
    slot
}

fn taken<T>(slot: &Slot<T>) -> Result<T, Failure> {
    slot.borrow_mut()
        .take()
        .expect("the Deferred has not fired")
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

#[derive(Debug, thiserror::Error)]
#[error("boom {0}")]
struct Boom(u32);

// ---- DeferredList ----

#[test]
fn deferred_list_waits_for_all_and_keeps_order() {
    let ds: Vec<Deferred<u32>> = (0..3).map(|_| Deferred::new()).collect();
    let out = result_of(DeferredList::new(ds.clone()).consume_errors(true).build());
    ds[2].callback(2).unwrap();
    ds[0].callback(0).unwrap();
    assert!(out.borrow().is_none());
    ds[1].errback(Boom(1)).unwrap();
    let all = taken(&out).unwrap().into_all().unwrap();
    assert_eq!(all.len(), 3);
    assert!(all[0].0 && *all[0].1.as_ref().unwrap() == 0);
    assert!(!all[1].0 && all[1].1.as_ref().unwrap_err().check::<Boom>());
    assert!(all[2].0 && *all[2].1.as_ref().unwrap() == 2);
}

#[test]
fn empty_deferred_list_fires_at_once() {
    let out = result_of(DeferredList::<u8>::new(Vec::new()).build());
    assert!(taken(&out).unwrap().into_all().unwrap().is_empty());
}

#[test]
fn deferred_list_fire_on_one_callback() {
    let ds: Vec<Deferred<u32>> = (0..3).map(|_| Deferred::new()).collect();
    let out = result_of(
        DeferredList::new(ds.clone())
            .fire_on_one_callback(true)
            .build(),
    );
    ds[1].callback(11).unwrap();
    match taken(&out).unwrap() {
        ListOutcome::First { index, value } => assert_eq!((index, value), (1, 11)),
        other => panic!("unexpected {other:?}"),
    }
    // Later members may still fire; the list has already answered.
    ds[0].callback(0).unwrap();
    ds[2].callback(0).unwrap();
}

#[test]
fn deferred_list_fire_on_one_errback_names_the_index() {
    let ds: Vec<Deferred<u32>> = (0..3).map(|_| Deferred::new()).collect();
    let out = result_of(
        DeferredList::new(ds.clone())
            .fire_on_one_errback(true)
            .consume_errors(true)
            .build(),
    );
    ds[0].callback(0).unwrap();
    ds[2].errback(Boom(2)).unwrap();
    let f = taken(&out).unwrap_err();
    let first = f.downcast_ref::<FirstError>().unwrap();
    assert_eq!(first.index, 2);
    assert!(first.failure.check::<Boom>());
    assert!(f.to_string().contains("boom 2"), "{f}");
}

#[test]
fn cancelling_a_deferred_list_cancels_its_members() {
    let ds: Vec<Deferred<u32>> = (0..2).map(|_| Deferred::new()).collect();
    let list = DeferredList::new(ds.clone()).consume_errors(true).build();
    let out = result_of(list.clone());
    list.cancel();
    assert!(ds.iter().all(|d| d.called()));
    let all = taken(&out).unwrap().into_all().unwrap();
    assert!(all
        .iter()
        .all(|(ok, r)| !ok && r.as_ref().unwrap_err().check::<CancelledError>()));
}

#[test]
fn gather_results_success_failure_cancel() {
    let ok = result_of(gather_results(
        vec![
            Deferred::succeed(1),
            Deferred::succeed(2),
            Deferred::succeed(3),
        ],
        false,
    ));
    assert_eq!(taken(&ok).unwrap(), vec![1, 2, 3]);

    let a = Deferred::<u32>::new();
    let b = Deferred::<u32>::new();
    let failed = result_of(gather_results(vec![a.clone(), b.clone()], true));
    b.errback(Boom(7)).unwrap();
    let f = taken(&failed).unwrap_err();
    assert_eq!(f.downcast_ref::<FirstError>().unwrap().index, 1);
    a.callback(1).unwrap();

    let c = Deferred::<u32>::new();
    let g = gather_results(vec![c.clone()], true);
    let cancelled = result_of(g.clone());
    g.cancel();
    let f = taken(&cancelled).unwrap_err();
    assert!(f
        .downcast_ref::<FirstError>()
        .unwrap()
        .failure
        .check::<CancelledError>());
}

#[test]
fn race_first_success_wins_and_losers_are_cancelled() {
    let cancelled = Rc::new(Cell::new(0));
    let ds: Vec<Deferred<u32>> = (0..3)
        .map(|_| {
            let c = cancelled.clone();
            Deferred::with_canceller(move |_| c.set(c.get() + 1))
        })
        .collect();
    let out = result_of(race(ds.clone()));
    ds[0].errback(Boom(0)).unwrap(); // a failure does not win
    assert!(out.borrow().is_none());
    ds[2].callback(22).unwrap();
    assert_eq!(taken(&out).unwrap(), (2, 22));
    assert_eq!(
        cancelled.get(),
        1,
        "only the one still running is cancelled"
    );
    assert!(ds[1].called());
}

#[test]
fn race_all_failing_gives_a_failure_group() {
    let ds: Vec<Deferred<u32>> = (0..2).map(|_| Deferred::new()).collect();
    let out = result_of(race(ds.clone()));
    ds[1].errback(Boom(1)).unwrap();
    ds[0].errback(Boom(0)).unwrap();
    let f = taken(&out).unwrap_err();
    let g = f.downcast_ref::<FailureGroup>().unwrap();
    assert_eq!(g.failures.len(), 2);
    assert_eq!(g.failures[0].downcast_ref::<Boom>().unwrap().0, 0);
}

#[test]
fn cancelling_a_race_cancels_everyone() {
    let ds: Vec<Deferred<u32>> = (0..2).map(|_| Deferred::new()).collect();
    let r = race(ds.clone());
    let out = result_of(r.clone());
    r.cancel();
    assert!(ds.iter().all(|d| d.called()));
    let f = taken(&out).unwrap_err();
    assert!(f.check::<FailureGroup>() || f.check::<CancelledError>());
}

// ---- timeouts ----

#[test]
fn timeout_turns_cancellation_into_timeout_error() {
    let clock = Clock::new();
    let d = Deferred::<u32>::new();
    let out = result_of(d.clone().add_timeout(secs(10), &clock));
    clock.advance(secs(9));
    assert!(out.borrow().is_none());
    clock.advance(secs(1));
    assert!(taken(&out).unwrap_err().check::<TimeoutError>());
    // The producer's late result is ignored, as after any cancel.
    assert_eq!(d.callback(1), Ok(()));
}

#[test]
fn result_in_time_cancels_the_timer() {
    let clock = Clock::new();
    let d = Deferred::<u32>::new();
    let out = result_of(d.clone().add_timeout(secs(10), &clock));
    assert_eq!(clock.pending_calls(), 1);
    d.callback(5).unwrap();
    assert_eq!(clock.pending_calls(), 0);
    clock.advance(secs(20));
    assert_eq!(taken(&out).unwrap(), 5);
}

#[test]
fn timeout_with_a_canceller_that_fires_and_an_on_timeout_hook() {
    let clock = Clock::new();
    let d = Deferred::<u32>::with_canceller(|d| d.errback(Boom(5)).unwrap());
    let out = result_of(d.add_timeout_with(secs(1), &clock, |r, after| {
        assert_eq!(after, secs(1));
        assert!(r.as_ref().unwrap_err().check::<Boom>());
        Ok(123)
    }));
    clock.advance(secs(1));
    assert_eq!(taken(&out).unwrap(), 123);
}

#[test]
fn explicit_cancel_is_not_a_timeout() {
    let clock = Clock::new();
    let d = Deferred::<u32>::new().add_timeout(secs(1), &clock);
    let out = result_of(d.clone());
    d.cancel();
    assert!(taken(&out).unwrap_err().check::<CancelledError>());
}

// ---- lock, semaphore, queue ----

#[test]
fn lock_is_fifo_and_release_hands_over() {
    let lock = DeferredLock::new();
    let order = Rc::new(RefCell::new(Vec::new()));
    let waiters: Vec<Deferred<()>> = (0..4).map(|_| lock.acquire()).collect();
    for (i, w) in waiters.iter().enumerate() {
        let o = order.clone();
        w.clone().add_callback(move |()| o.borrow_mut().push(i));
    }
    assert_eq!(*order.borrow(), [0]);
    for expect in 1..4 {
        lock.release().unwrap();
        assert_eq!(order.borrow().last(), Some(&expect));
        assert!(lock.locked());
    }
    lock.release().unwrap();
    assert!(!lock.locked());
    assert_eq!(lock.release(), Err(NotAcquiredError));
}

#[test]
fn cancelled_lock_waiter_leaves_the_line() {
    let lock = DeferredLock::new();
    let _held = lock.acquire();
    let a = lock.acquire();
    let b = lock.acquire();
    let a_out = result_of(a.clone());
    a.cancel();
    assert!(taken(&a_out).unwrap_err().check::<CancelledError>());
    lock.release().unwrap();
    assert!(b.called(), "b is next once a left");
}

#[test]
fn lock_run_releases_on_success_failure_and_panic() {
    let lock = DeferredLock::new();
    let ok = result_of(lock.run(|| Ok::<u32, Failure>(1)));
    assert_eq!(taken(&ok).unwrap(), 1);
    assert!(!lock.locked());
    let bad = result_of(lock.run(|| Err::<u32, Failure>(Failure::new(Boom(1)))));
    assert!(taken(&bad).unwrap_err().check::<Boom>());
    assert!(!lock.locked());
    let panicked = result_of(lock.run(|| -> Result<u32, Failure> { panic!("in run") }));
    assert!(taken(&panicked).unwrap_err().is_panic());
    assert!(!lock.locked());
}

#[test]
fn semaphore_limits_concurrency_in_fifo_order() {
    let sem = DeferredSemaphore::new(2);
    let running = Rc::new(Cell::new(0));
    let max_seen = Rc::new(Cell::new(0));
    let started = Rc::new(RefCell::new(Vec::new()));
    let gates: Vec<Deferred<u32>> = (0..5).map(|_| Deferred::new()).collect();
    let outs: Vec<_> = gates
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let (r, m, s, g) = (
                running.clone(),
                max_seen.clone(),
                started.clone(),
                g.clone(),
            );
            let r2 = running.clone();
            result_of(sem.run(move || {
                r.set(r.get() + 1);
                m.set(m.get().max(r.get()));
                s.borrow_mut().push(i);
                g.add_callback(move |v| {
                    r2.set(r2.get() - 1);
                    v
                })
            }))
        })
        .collect();
    assert_eq!(*started.borrow(), [0, 1]);
    assert_eq!(sem.waiting(), 3);
    gates[1].callback(1).unwrap();
    assert_eq!(*started.borrow(), [0, 1, 2]);
    gates[0].callback(0).unwrap();
    gates[2].callback(2).unwrap();
    gates[3].callback(3).unwrap();
    gates[4].callback(4).unwrap();
    assert_eq!(*started.borrow(), [0, 1, 2, 3, 4]);
    assert_eq!(max_seen.get(), 2);
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(taken(o).unwrap(), i as u32);
    }
    assert_eq!(sem.tokens(), 2);
}

#[test]
fn queue_hands_values_to_getters_in_order_with_limits() {
    let q = DeferredQueue::<u32>::new(Some(2), Some(2));
    let g1 = result_of(q.get().unwrap());
    let g2 = result_of(q.get().unwrap());
    assert_eq!(q.get().err(), Some(QueueUnderflow));
    q.put(1).unwrap();
    q.put(2).unwrap();
    assert_eq!(taken(&g1).unwrap(), 1);
    assert_eq!(taken(&g2).unwrap(), 2);
    q.put(3).unwrap();
    q.put(4).unwrap();
    match q.put(5) {
        Err(QueueOverflow(v)) => assert_eq!(v, 5),
        Ok(()) => panic!("size limit ignored"),
    }
    assert_eq!(taken(&result_of(q.get().unwrap())).unwrap(), 3);
    assert_eq!(taken(&result_of(q.get().unwrap())).unwrap(), 4);
}

#[test]
fn cancelled_queue_getter_does_not_swallow_a_value() {
    let q = DeferredQueue::<u32>::new(None, None);
    let a = q.get().unwrap();
    let b = result_of(q.get().unwrap());
    a.cancel();
    assert_eq!(q.waiting(), 1);
    q.put(9).unwrap();
    assert_eq!(taken(&b).unwrap(), 9);
}

// ---- time helpers ----

#[test]
fn defer_later_fires_after_the_delay_and_can_be_cancelled() {
    let clock = Clock::new();
    let d = result_of(defer_later(&clock, secs(3), || Ok::<_, Failure>(5u32)));
    clock.advance(secs(2));
    assert!(d.borrow().is_none());
    clock.advance(secs(1));
    assert_eq!(taken(&d).unwrap(), 5);

    let ran = Rc::new(Cell::new(false));
    let r = ran.clone();
    let later = defer_later(&clock, secs(1), move || {
        r.set(true);
        Ok::<_, Failure>(())
    });
    let out = result_of(later.clone());
    later.cancel();
    clock.advance(secs(5));
    assert!(!ran.get());
    assert!(taken(&out).unwrap_err().check::<CancelledError>());
    assert_eq!(clock.pending_calls(), 0);
}

#[test]
fn looping_call_runs_on_the_interval_and_stops() {
    let clock = Rc::new(Clock::new());
    let times = Rc::new(RefCell::new(Vec::new()));
    let (c, t) = (clock.clone(), times.clone());
    let lc = LoopingCall::new(clock.clone(), move || {
        use torsion_core::Clock as _;
        t.borrow_mut().push(c.now().as_secs());
        Ok::<(), Failure>(())
    });
    let done = result_of(lc.start(secs(2), false).unwrap());
    assert_eq!(
        lc.start(secs(1), true).err(),
        Some(LoopingCallError::AlreadyRunning)
    );
    clock.advance(secs(1));
    assert!(times.borrow().is_empty(), "now=false: not called at start");
    clock.pump(&[secs(1), secs(2), secs(2)]);
    assert_eq!(*times.borrow(), [2, 4, 6]);
    lc.stop().unwrap();
    assert!(taken(&done).is_ok());
    assert_eq!(lc.stop(), Err(LoopingCallError::NotRunning));
    clock.advance(secs(10));
    assert_eq!(times.borrow().len(), 3);
}

#[test]
fn looping_call_failure_stops_it_and_is_delivered() {
    let clock = Rc::new(Clock::new());
    let n = Rc::new(Cell::new(0));
    let n2 = n.clone();
    let lc = LoopingCall::new(clock.clone(), move || {
        n2.set(n2.get() + 1);
        if n2.get() == 3 {
            Err(Failure::new(Boom(3)))
        } else {
            Ok(())
        }
    });
    let done = result_of(lc.start(secs(1), true).unwrap());
    clock.advance(secs(5));
    assert_eq!(n.get(), 3);
    assert!(!lc.running());
    assert!(taken(&done).unwrap_err().check::<Boom>());
}

#[test]
fn looping_call_panic_stops_it() {
    let clock = Rc::new(Clock::new());
    let lc = LoopingCall::new(clock.clone(), || -> Result<(), Failure> {
        panic!("loop body")
    });
    let done = result_of(lc.start(secs(1), true).unwrap());
    assert!(taken(&done).unwrap_err().is_panic());
    assert!(!lc.running());
}

#[test]
fn looping_call_skips_missed_intervals() {
    // The call at t=0 returns a Deferred that only fires at t=3.5: the
    // calls due at 1, 2 and 3 are skipped, the next lands on the grid at 4.
    let clock = Rc::new(Clock::new());
    let calls = Rc::new(RefCell::new(Vec::new()));
    let (c, cl) = (clock.clone(), calls.clone());
    let lc = LoopingCall::with_count(clock.clone(), move |count| {
        use torsion_core::Clock as _;
        let now = c.now();
        cl.borrow_mut().push((now.as_millis(), count));
        if now.is_zero() {
            defer_later(&*c, Duration::from_millis(3500), || Ok::<(), Failure>(()))
        } else {
            Deferred::succeed(())
        }
    });
    let _done = lc.start(secs(1), true).unwrap();
    clock.advance(Duration::from_millis(3500));
    assert_eq!(*calls.borrow(), [(0, 1)]);
    clock.advance(Duration::from_millis(500));
    clock.advance(secs(1));
    assert_eq!(*calls.borrow(), [(0, 1), (4000, 4), (5000, 1)]);
    lc.stop().unwrap();
}

#[test]
fn looping_call_stopped_while_its_deferred_is_pending_fires_when_it_does() {
    let clock = Rc::new(Clock::new());
    let gate = Deferred::<()>::new();
    let g = gate.clone();
    let lc = LoopingCall::new(clock.clone(), move || g.clone());
    let done = result_of(lc.start(secs(1), true).unwrap());
    lc.stop().unwrap();
    assert!(done.borrow().is_none());
    gate.callback(()).unwrap();
    assert!(taken(&done).is_ok());
}

#[test]
fn cooperator_interleaves_tasks_a_slice_at_a_time() {
    let clock = Rc::new(Clock::new());
    let coop = Cooperator::new(clock.clone())
        .with_max_steps_per_tick(3)
        .with_tick_delay(Duration::from_millis(1));
    let log = Rc::new(RefCell::new(Vec::new()));
    let tasks: Vec<_> = ["a", "b"]
        .into_iter()
        .map(|name| {
            let l = log.clone();
            coop.cooperate((0..3).map(move |i| l.borrow_mut().push(format!("{name}{i}"))))
        })
        .collect();
    let done: Vec<_> = tasks.iter().map(|t| result_of(t.when_done())).collect();
    assert!(
        log.borrow().is_empty(),
        "nothing runs before the first tick"
    );
    clock.advance(Duration::from_millis(1));
    assert_eq!(*log.borrow(), ["a0", "b0", "a1"]);
    clock.advance(Duration::from_millis(1));
    assert_eq!(*log.borrow(), ["a0", "b0", "a1", "b1", "a2", "b2"]);
    clock.advance(Duration::from_millis(1));
    for d in done {
        assert!(taken(&d).is_ok());
    }
    assert_eq!(clock.pending_calls(), 0, "no ticks once idle");
}

#[test]
fn cooperator_task_waits_on_yielded_deferred_and_can_be_paused_and_stopped() {
    let clock = Rc::new(Clock::new());
    let coop = Cooperator::new(clock.clone()).with_tick_delay(Duration::from_millis(1));
    let gate = Deferred::<()>::new();
    let g = gate.clone();
    let steps = Rc::new(Cell::new(0));
    let s = steps.clone();
    let items: Vec<Yield> = vec![Yield::Continue, Yield::Wait(g), Yield::Continue];
    let task = coop.cooperate(items.into_iter().inspect(move |_| s.set(s.get() + 1)));
    let done = result_of(task.when_done());
    clock.advance(secs(1));
    assert_eq!(steps.get(), 2, "waiting on the gate");
    task.pause().unwrap();
    gate.callback(()).unwrap();
    clock.advance(secs(1));
    assert_eq!(steps.get(), 2, "paused");
    task.resume().unwrap();
    assert_eq!(task.resume(), Err(TaskError::NotPaused));
    clock.advance(secs(1));
    assert!(taken(&done).is_ok());
    assert_eq!(steps.get(), 3);

    let endless = coop.cooperate(std::iter::repeat(()));
    let endless_done = result_of(endless.when_done());
    // Two ticks of (at most) one 10 ms slice each.
    clock.advance(Duration::from_millis(2));
    endless.stop().unwrap();
    let f = taken(&endless_done).unwrap_err();
    assert_eq!(f.downcast_ref::<TaskError>(), Some(&TaskError::Stopped));
    assert_eq!(endless.stop(), Err(TaskError::Done));
    clock.advance(secs(1));
    assert_eq!(clock.pending_calls(), 0);
}

#[test]
fn cooperator_task_failure_and_panic_end_the_task() {
    let clock = Rc::new(Clock::new());
    let coop = Cooperator::new(clock.clone());
    let failing = coop.cooperate(vec![Ok(()), Err(Failure::new(Boom(1)))]);
    let panicking = coop.cooperate((0..3).map(|i| {
        if i == 1 {
            panic!("iterator step");
        }
    }));
    let (f1, f2) = (
        result_of(failing.when_done()),
        result_of(panicking.when_done()),
    );
    clock.advance(Duration::ZERO);
    assert!(taken(&f1).unwrap_err().check::<Boom>());
    assert!(taken(&f2).unwrap_err().is_panic());
    coop.stop();
    let late = result_of(coop.cooperate((0..1).map(|_| ())).when_done());
    let f = taken(&late).unwrap_err();
    assert_eq!(
        f.downcast_ref::<TaskError>(),
        Some(&TaskError::SchedulerStopped)
    );
}
