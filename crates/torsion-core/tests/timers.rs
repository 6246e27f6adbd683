//! Timers: the manual testing::Clock and the real reactor share one timer
//! queue; both are exercised here.

mod common;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use common::*;
use torsion_core::{testing, Clock, DelayedCall, DelayedCallError, Reactor};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

type Log = Rc<RefCell<Vec<u32>>>;

fn recorder() -> (Log, impl Fn(u32) -> Box<dyn FnOnce()>) {
    let log = Rc::new(RefCell::new(Vec::new()));
    let l = log.clone();
    (log, move |id| {
        let l = l.clone();
        Box::new(move || l.borrow_mut().push(id)) as Box<dyn FnOnce()>
    })
}

#[test]
fn manual_clock_runs_calls_in_deadline_order_then_schedule_order() {
    let clock = testing::Clock::new();
    let (log, rec) = recorder();
    clock.call_later(ms(30), rec(3));
    clock.call_later(ms(10), rec(1));
    clock.call_later(ms(20), rec(2));
    clock.call_later(ms(20), rec(22)); // same deadline: after 2
    clock.call_later(ms(0), rec(0));
    assert_eq!(clock.pending_calls(), 5);
    clock.advance(ms(0));
    assert_eq!(*log.borrow(), vec![0]);
    clock.advance(ms(19));
    assert_eq!(*log.borrow(), vec![0, 1]);
    clock.advance(ms(1));
    assert_eq!(*log.borrow(), vec![0, 1, 2, 22]);
    clock.pump(&[ms(4), ms(5)]);
    assert_eq!(*log.borrow(), vec![0, 1, 2, 22]);
    clock.pump(&[ms(1), ms(5)]);
    assert_eq!(*log.borrow(), vec![0, 1, 2, 22, 3]);
    assert_eq!(clock.pending_calls(), 0);
    assert_eq!(clock.now(), ms(35));
    assert!((clock.seconds() - 0.035).abs() < 1e-9);
}

#[test]
fn a_call_sees_the_clock_at_its_own_deadline_and_may_schedule_more() {
    let clock = Rc::new(testing::Clock::new());
    let seen = Rc::new(RefCell::new(Vec::new()));
    let (c, s) = (clock.clone(), seen.clone());
    clock.call_later(
        ms(10),
        Box::new(move || {
            s.borrow_mut().push(c.now());
            let (c2, s2) = (c.clone(), s.clone());
            // Due within the same advance: runs in it.
            c.call_later(ms(5), Box::new(move || s2.borrow_mut().push(c2.now())));
        }),
    );
    clock.advance(ms(100));
    assert_eq!(*seen.borrow(), vec![ms(10), ms(15)]);
    assert_eq!(clock.now(), ms(100));
}

#[test]
fn cancel_reset_delay_active_time_on_the_manual_clock() {
    let clock = testing::Clock::new();
    let (log, rec) = recorder();
    let a = clock.call_later(ms(10), rec(1));
    let b = clock.call_later(ms(10), rec(2));
    let c = clock.call_later(ms(10), rec(3));
    assert!(a.active() && b.active() && c.active());
    assert_eq!(a.time(), Some(ms(10)));
    a.cancel().unwrap();
    assert!(!a.active());
    assert_eq!(a.time(), None);
    assert_eq!(a.cancel(), Err(DelayedCallError::AlreadyCancelled));
    assert_eq!(a.reset(ms(1)), Err(DelayedCallError::AlreadyCancelled));
    assert_eq!(a.delay(ms(1)), Err(DelayedCallError::AlreadyCancelled));
    clock.advance(ms(4));
    b.reset(ms(10)).unwrap(); // now due at 14
    assert_eq!(b.time(), Some(ms(14)));
    c.delay(ms(20)).unwrap(); // due at 30
    assert_eq!(c.time(), Some(ms(30)));
    clock.advance(ms(6)); // t=10: nothing (a cancelled, b moved, c delayed)
    assert!(log.borrow().is_empty());
    clock.advance(ms(4)); // t=14
    assert_eq!(*log.borrow(), vec![2]);
    assert!(!b.active());
    assert_eq!(b.cancel(), Err(DelayedCallError::AlreadyCalled));
    assert_eq!(b.reset(ms(1)), Err(DelayedCallError::AlreadyCalled));
    assert_eq!(b.delay(ms(1)), Err(DelayedCallError::AlreadyCalled));
    // Reset earlier than first scheduled.
    c.reset(ms(1)).unwrap();
    clock.advance(ms(1));
    assert_eq!(*log.borrow(), vec![2, 3]);
    assert_eq!(clock.pending_calls(), 0);
}

#[test]
fn a_call_cancelling_another_due_at_the_same_time_prevents_it() {
    let clock = testing::Clock::new();
    let ran = Rc::new(Cell::new(false));
    let victim: Rc<RefCell<Option<DelayedCall>>> = Rc::new(RefCell::new(None));
    let v = victim.clone();
    let me: Rc<RefCell<Option<DelayedCall>>> = Rc::new(RefCell::new(None));
    let me2 = me.clone();
    *me.borrow_mut() = Some(clock.call_later(
        ms(5),
        Box::new(move || {
            assert_eq!(v.borrow().as_ref().unwrap().cancel(), Ok(()));
            // Cancelling oneself from inside: it already runs.
            assert_eq!(
                me2.borrow().as_ref().unwrap().cancel(),
                Err(DelayedCallError::AlreadyCalled)
            );
        }),
    ));
    let r = ran.clone();
    *victim.borrow_mut() = Some(clock.call_later(ms(5), Box::new(move || r.set(true))));
    clock.advance(ms(5));
    assert!(!ran.get());
}

#[test]
fn hundred_thousand_timers_half_cancelled_fire_exactly_the_right_ones() {
    let clock = testing::Clock::new();
    const N: usize = 100_000;
    let fired = Rc::new(RefCell::new(vec![0u8; N]));
    let order_ok = Rc::new(Cell::new(true));
    let last = Rc::new(Cell::new(Duration::ZERO));
    let mut calls = Vec::with_capacity(N);
    for i in 0..N {
        let (f, ok, last, now) = (
            fired.clone(),
            order_ok.clone(),
            last.clone(),
            // Spread deadlines pseudo-randomly over 0..10 s.
            ms((i as u64 * 7919) % 10_000),
        );
        let c = clock.call_later(
            now,
            Box::new(move || {
                f.borrow_mut()[i] += 1;
                if now < last.get() {
                    ok.set(false);
                }
                last.set(now);
            }),
        );
        calls.push(c);
    }
    // Cancel every odd one, some of them after resetting.
    for (i, c) in calls.iter().enumerate() {
        if i % 2 == 1 {
            if i % 6 == 1 {
                c.reset(ms(1)).unwrap();
            }
            c.cancel().unwrap();
        }
    }
    assert_eq!(clock.pending_calls(), N / 2);
    clock.advance(Duration::from_secs(5));
    clock.advance(Duration::from_secs(5));
    let fired = fired.borrow();
    for (i, n) in fired.iter().enumerate() {
        assert_eq!(*n, u8::from(i % 2 == 0), "timer {i}");
    }
    assert!(order_ok.get(), "fired out of deadline order");
    assert_eq!(clock.pending_calls(), 0);
    assert!(calls.iter().all(|c| !c.active()));
}

#[test]
fn memory_reactor_clock_is_manual_too() {
    let r = testing::MemoryReactor::new();
    let hit = Rc::new(Cell::new(false));
    let h = hit.clone();
    r.call_later(ms(50), Box::new(move || h.set(true)));
    r.advance(ms(49));
    assert!(!hit.get());
    r.advance(ms(1));
    assert!(hit.get());
    assert_eq!(Clock::now(&r), ms(50));
}

#[test]
fn real_reactor_timers_fire_in_order_and_honour_cancel_reset_delay() {
    let reactor = Reactor::new().unwrap();
    let (log, rec) = recorder();
    let t0 = Instant::now();
    let start = reactor.now();
    let a = reactor.call_later(ms(40), rec(40));
    reactor.call_later(ms(20), rec(20));
    reactor.call_later(ms(20), rec(21));
    let c = reactor.call_later(ms(10), rec(99));
    let d = reactor.call_later(ms(5), rec(60));
    let e = reactor.call_later(ms(500), rec(30));
    c.cancel().unwrap();
    d.delay(ms(55)).unwrap(); // 60
    e.reset(ms(30)).unwrap();
    let at = a.time().unwrap();
    assert!(at >= start + ms(40) && at < start + ms(1000), "{at:?}");
    assert!(reactor.seconds() >= 0.0);
    let r = reactor.clone();
    reactor.call_later(ms(80), move || r.stop().unwrap());
    run_until_stopped(&reactor, Duration::from_secs(20), "real timers");
    assert_eq!(*log.borrow(), vec![20, 21, 30, 40, 60]);
    assert!(t0.elapsed() >= ms(75));
    assert_eq!(a.cancel(), Err(DelayedCallError::AlreadyCalled));
    assert_eq!(c.cancel(), Err(DelayedCallError::AlreadyCancelled));
}

#[test]
fn real_reactor_runs_many_timers_half_cancelled() {
    let reactor = Reactor::new().unwrap();
    const N: usize = 20_000;
    let fired = Rc::new(RefCell::new(vec![0u8; N]));
    let mut calls = Vec::new();
    for i in 0..N {
        let f = fired.clone();
        calls.push(reactor.call_later(ms((i % 50) as u64), move || f.borrow_mut()[i] += 1));
    }
    for (i, c) in calls.iter().enumerate() {
        if i % 2 == 1 {
            c.cancel().unwrap();
        }
    }
    let r = reactor.clone();
    reactor.call_later(ms(100), move || r.stop().unwrap());
    run_until_stopped(&reactor, Duration::from_secs(20), "many real timers");
    for (i, n) in fired.borrow().iter().enumerate() {
        assert_eq!(*n, u8::from(i % 2 == 0), "timer {i}");
    }
}

#[test]
fn timers_of_a_dropped_reactor_fail_softly() {
    let reactor = Reactor::new().unwrap();
    let c = reactor.call_later(ms(10), || {});
    drop(reactor);
    assert!(!c.active());
    assert!(c.cancel().is_err());
    assert!(c.reset(ms(1)).is_err());
    assert_eq!(c.time(), None);
}

#[test]
fn huge_delays_do_not_overflow() {
    let reactor = Reactor::new().unwrap();
    let c = reactor.call_later(Duration::MAX, || panic!("must never run"));
    assert!(c.active());
    assert!(reactor.next_timeout().unwrap() > Duration::from_secs(1 << 40));
    reactor.iterate(Some(Duration::ZERO)).unwrap();
    c.delay(Duration::MAX).unwrap();
    c.reset(Duration::MAX).unwrap();
    assert!(c.active());
    c.cancel().unwrap();

    let clock = testing::Clock::new();
    let hit = Rc::new(Cell::new(0));
    let h = hit.clone();
    clock.call_later(Duration::MAX, Box::new(move || h.set(h.get() + 1)));
    clock.advance(Duration::from_secs(10));
    clock.advance(Duration::MAX);
    clock.advance(Duration::MAX);
    assert_eq!(hit.get(), 1);
}
