//! The semantics table of Deferreds, one test per row, from Twisted's
//! documented behaviour (twisted.internet.defer and its howto), plus bad input.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use torsion_core::deferred::{ChainingError, ResultConsumedError};
use torsion_core::{
    maybe_deferred, AlreadyCalledError, CancelledError, Deferred, Failure, PanicError,
};

type Slot<T> = Rc<RefCell<Option<Result<T, Failure>>>>;

/// Ends the chain, keeping its result for the test to look at.
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

#[derive(Debug, thiserror::Error)]
#[error("boom {0}")]
struct Boom(u32);

#[test]
fn result_flows_through_callbacks_in_order() {
    let d = Deferred::<u32>::new();
    let log = Rc::new(RefCell::new(Vec::new()));
    let (l1, l2) = (log.clone(), log.clone());
    let end = d
        .clone()
        .add_callback(move |v| {
            l1.borrow_mut().push(format!("first {v}"));
            v + 1
        })
        .add_callback(move |v| {
            l2.borrow_mut().push(format!("second {v}"));
            format!("<{v}>")
        });
    let out = result_of(end);
    assert!(log.borrow().is_empty(), "nothing runs before firing");
    d.callback(1).unwrap();
    assert_eq!(*log.borrow(), ["first 1", "second 2"]);
    assert_eq!(taken(&out).unwrap(), "<2>");
}

#[test]
fn failure_skips_callbacks_until_an_errback() {
    let d = Deferred::<u32>::new();
    let called = Rc::new(Cell::new(false));
    let c = called.clone();
    let out = result_of(
        d.clone()
            .add_callback(move |v| {
                c.set(true);
                v
            })
            .add_errback(|f| {
                assert!(f.check::<Boom>());
                Err(f)
            }),
    );
    d.errback(Boom(1)).unwrap();
    assert!(!called.get());
    assert_eq!(
        taken(&out).unwrap_err().downcast_ref::<Boom>().unwrap().0,
        1
    );
}

#[test]
fn errback_recovering_returns_chain_to_callbacks() {
    let d = Deferred::<u32>::new();
    let out = result_of(
        d.clone()
            .add_errback(|f| f.trap::<Boom>().map(|()| 7))
            .add_callback(|v| v * 10),
    );
    d.errback(Boom(2)).unwrap();
    assert_eq!(taken(&out).unwrap(), 70);
}

#[test]
fn trap_passes_other_failures_on() {
    let d = Deferred::<u32>::new();
    let out = result_of(d.clone().add_errback(|f| f.trap::<Boom>().map(|()| 0)));
    d.errback(io::Error::other("disk")).unwrap();
    assert!(taken(&out).unwrap_err().check::<io::Error>());
}

#[test]
fn callback_returning_failure_switches_to_errbacks() {
    let d = Deferred::<u32>::new();
    let skipped = Rc::new(Cell::new(true));
    let s = skipped.clone();
    let out = result_of(
        d.clone()
            .add_callback_result(|v| Err::<u32, _>(Failure::new(Boom(v))))
            .add_callback(move |v| {
                s.set(false);
                v
            })
            .add_errback(|f| Ok(f.downcast_ref::<Boom>().map_or(0, |b| b.0 + 100))),
    );
    d.callback(5).unwrap();
    assert!(skipped.get());
    assert_eq!(taken(&out).unwrap(), 105);
}

#[test]
fn add_callbacks_errback_does_not_see_failure_of_its_sibling() {
    let d = Deferred::<u32>::new();
    let sibling_ran = Rc::new(Cell::new(false));
    let s = sibling_ran.clone();
    let out = result_of(d.clone().add_callbacks(
        |_| Err::<u32, _>(Failure::new(Boom(3))),
        move |f| {
            s.set(true);
            Err(f)
        },
    ));
    d.callback(1).unwrap();
    assert!(!sibling_ran.get());
    assert!(taken(&out).unwrap_err().check::<Boom>());
}

#[test]
fn add_both_sees_success_and_failure() {
    for fail in [false, true] {
        let d = Deferred::<u32>::new();
        let out = result_of(d.clone().add_both(|r| Ok(r.is_ok())));
        if fail {
            d.errback(Boom(0)).unwrap();
        } else {
            d.callback(0).unwrap();
        }
        assert_eq!(taken(&out).unwrap(), !fail);
    }
}

#[test]
fn callbacks_added_after_firing_run_at_once() {
    let d = Deferred::succeed(4u32);
    let seen = Rc::new(Cell::new(0));
    let s = seen.clone();
    let d = d.add_callback(move |v| {
        s.set(v);
        v + 1
    });
    assert_eq!(seen.get(), 4, "ran during add_callback");
    let out = result_of(d);
    assert_eq!(taken(&out).unwrap(), 5);
}

#[test]
fn chaining_pauses_until_inner_fires_and_resumes_with_its_result() {
    let outer = Deferred::<u32>::new();
    let inner = Deferred::<String>::new();
    let i2 = inner.clone();
    let after = Rc::new(Cell::new(false));
    let a = after.clone();
    let out = result_of(
        outer
            .clone()
            .add_callback_deferred(move |_| i2)
            .add_callback(move |s| {
                a.set(true);
                s.len()
            }),
    );
    outer.callback(1).unwrap();
    assert!(outer.paused(), "outer waits on inner");
    assert!(!after.get());
    inner.callback("four".into()).unwrap();
    assert!(after.get());
    assert!(!outer.paused());
    assert_eq!(taken(&out).unwrap(), 4);
}

#[test]
fn chaining_an_already_fired_deferred_continues_at_once() {
    let out =
        result_of(Deferred::succeed(2u32).add_callback_deferred(|v| Deferred::succeed(v * 3)));
    assert_eq!(taken(&out).unwrap(), 6);
}

#[test]
fn failure_of_inner_deferred_flows_to_outer_errbacks() {
    let outer = Deferred::<u32>::new();
    let inner = Deferred::<u32>::new();
    let i2 = inner.clone();
    let out = result_of(outer.clone().add_callback_deferred(move |_| i2));
    outer.callback(0).unwrap();
    inner.errback(Boom(9)).unwrap();
    assert_eq!(
        taken(&out).unwrap_err().downcast_ref::<Boom>().unwrap().0,
        9
    );
}

#[test]
fn errback_recovering_through_a_deferred() {
    let d = Deferred::<u32>::new();
    let out = result_of(d.clone().add_errback_deferred(|_| Deferred::succeed(11)));
    d.errback(Boom(0)).unwrap();
    assert_eq!(taken(&out).unwrap(), 11);
}

#[test]
fn callback_returning_its_own_deferred_is_an_error_not_a_hang() {
    let d = Deferred::<u32>::new();
    let me = d.clone();
    let out = result_of(d.clone().add_callback_deferred(move |_| me));
    d.callback(1).unwrap();
    assert!(taken(&out).unwrap_err().check::<ChainingError>());
}

#[test]
fn pause_and_unpause() {
    let d = Deferred::<u32>::new();
    d.pause();
    d.pause();
    let out = result_of(d.clone().add_callback(|v| v + 1));
    d.callback(1).unwrap();
    assert!(out.borrow().is_none());
    d.unpause();
    assert!(out.borrow().is_none(), "paused twice, unpaused once");
    d.unpause();
    assert_eq!(taken(&out).unwrap(), 2);
}

#[test]
fn chain_deferred_fires_the_other() {
    let a = Deferred::<u32>::new();
    let b = Deferred::<u32>::new();
    let out = result_of(b.clone());
    a.clone().chain_deferred(&b);
    a.errback(Boom(4)).unwrap();
    assert!(taken(&out).unwrap_err().check::<Boom>());
}

#[test]
fn succeed_fail_and_maybe_deferred() {
    assert_eq!(taken(&result_of(Deferred::succeed(1))).unwrap(), 1);
    assert!(taken(&result_of(Deferred::<u8>::fail(Boom(1))))
        .unwrap_err()
        .check::<Boom>());
    let v: Deferred<u8> = maybe_deferred(|| Ok(3));
    assert_eq!(taken(&result_of(v)).unwrap(), 3);
    let f: Deferred<u8> = maybe_deferred(|| Err(Failure::new(Boom(2))));
    assert!(taken(&result_of(f)).unwrap_err().check::<Boom>());
    let inner = Deferred::<u8>::new();
    let i2 = inner.clone();
    let w = result_of(maybe_deferred(move || i2));
    inner.callback(8).unwrap();
    assert_eq!(taken(&w).unwrap(), 8);
    let p: Deferred<u8> = maybe_deferred(|| -> Result<u8, Failure> { panic!("in maybe_deferred") });
    let e = taken(&result_of(p)).unwrap_err();
    assert!(e.is_panic());
    assert!(e.to_string().contains("in maybe_deferred"));
}

// ---- cancellation ----

#[test]
fn cancel_without_canceller_fails_with_cancelled_and_eats_one_late_callback() {
    let d = Deferred::<u32>::new();
    let out = result_of(d.clone());
    d.cancel();
    assert!(taken(&out).unwrap_err().check::<CancelledError>());
    // The producer, unaware, delivers its result: silently ignored once.
    assert_eq!(d.callback(1), Ok(()));
    // A second one is a real double fire.
    assert_eq!(d.callback(2), Err(AlreadyCalledError));
}

#[test]
fn cancel_calls_the_canceller_which_may_fire() {
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    let d = Deferred::<u32>::with_canceller(move |d| {
        c.set(c.get() + 1);
        d.callback(42).unwrap();
    });
    let out = result_of(d.clone());
    d.cancel();
    assert_eq!(calls.get(), 1);
    assert_eq!(taken(&out).unwrap(), 42);
}

#[test]
fn canceller_that_does_not_fire_leads_to_cancelled_error() {
    let d = Deferred::<u32>::with_canceller(|_| {});
    let out = result_of(d.clone());
    d.cancel();
    assert!(taken(&out).unwrap_err().check::<CancelledError>());
    assert_eq!(d.callback(1), Ok(()), "late result ignored");
}

#[test]
fn cancelling_a_deferred_waiting_on_another_cancels_that_one() {
    let inner_cancelled = Rc::new(Cell::new(false));
    let ic = inner_cancelled.clone();
    let inner = Deferred::<u32>::with_canceller(move |_| ic.set(true));
    let i2 = inner.clone();
    let outer = Deferred::<u32>::new();
    let out = result_of(outer.clone().add_callback_deferred(move |_| i2));
    outer.callback(1).unwrap();
    outer.cancel();
    assert!(inner_cancelled.get());
    assert!(taken(&out).unwrap_err().check::<CancelledError>());
}

#[test]
fn cancelling_twice_and_after_firing_do_nothing() {
    let calls = Rc::new(Cell::new(0));
    let c = calls.clone();
    let d = Deferred::<u32>::with_canceller(move |_| c.set(c.get() + 1));
    let out = result_of(d.clone());
    d.cancel();
    d.cancel();
    assert_eq!(calls.get(), 1);
    assert!(taken(&out).unwrap_err().check::<CancelledError>());

    let fired = Deferred::<u32>::with_canceller(|_| panic!("canceller must not run after firing"));
    let out = result_of(fired.clone());
    fired.callback(3).unwrap();
    fired.cancel();
    assert_eq!(taken(&out).unwrap(), 3);
}

#[test]
fn panicking_canceller_still_cancels() {
    let d = Deferred::<u32>::with_canceller(|_| panic!("canceller bug"));
    let out = result_of(d.clone());
    d.cancel();
    assert!(taken(&out).unwrap_err().check::<CancelledError>());
}

// ---- bad input ----

#[test]
fn panicking_callback_becomes_failure_for_the_next_errback() {
    let d = Deferred::<u32>::new();
    let skipped = Rc::new(Cell::new(true));
    let s = skipped.clone();
    let out = result_of(
        d.clone()
            .add_callback(|_v| -> u32 { panic!("callback exploded") })
            .add_callback(move |v| {
                s.set(false);
                v
            })
            .add_errback(|f| {
                let p = f.downcast_ref::<PanicError>().expect("a PanicError");
                assert!(p.message.contains("callback exploded"));
                Ok(1)
            })
            .add_callback(|v| v + 1),
    );
    d.callback(0).unwrap();
    assert!(skipped.get());
    assert_eq!(taken(&out).unwrap(), 2, "the chain went on after the panic");
}

#[test]
fn panic_inside_a_nested_deferred_chain_flows_to_the_outer_chain() {
    let outer = Deferred::<u32>::new();
    let inner = Deferred::<u32>::new();
    let inner_end = inner.clone().add_callback(|_v| -> u32 { panic!("inner") });
    let out = result_of(outer.clone().add_callback_deferred(move |_| inner_end));
    outer.callback(0).unwrap();
    inner.callback(0).unwrap();
    assert!(taken(&out).unwrap_err().is_panic());
}

#[test]
fn firing_twice_is_a_typed_error() {
    let d = Deferred::<u32>::new();
    let out = result_of(d.clone());
    d.callback(1).unwrap();
    assert_eq!(d.callback(2), Err(AlreadyCalledError));
    assert_eq!(d.errback(Boom(0)), Err(AlreadyCalledError));
    assert_eq!(taken(&out).unwrap(), 1, "the first result stands");
}

#[test]
fn firing_from_inside_own_callback_is_a_typed_error() {
    let d = Deferred::<u32>::new();
    let me = d.clone();
    let second = Rc::new(RefCell::new(None));
    let s = second.clone();
    d.clone().add_callback(move |v| {
        *s.borrow_mut() = Some(me.callback(v + 1));
        v
    });
    d.callback(1).unwrap();
    assert_eq!(*second.borrow(), Some(Err(AlreadyCalledError)));
}

#[test]
fn stale_handle_gets_a_consumed_or_type_error_not_ub() {
    let d = Deferred::<u32>::new();
    let stale = d.clone();
    let _s = d.clone().add_callback(|v| v.to_string());
    // `stale` still claims u32, but the chain now carries a String.
    let out = result_of(stale.add_callback(|v: u32| v + 1));
    d.callback(1).unwrap();
    assert!(taken(&out).is_err());
    // After a chained Deferred handed its result on, its own chain has nothing.
    let outer = Deferred::<u32>::new();
    let inner = Deferred::<u32>::new();
    let i2 = inner.clone();
    let _o = result_of(outer.clone().add_callback_deferred(move |_| i2));
    outer.callback(0).unwrap();
    inner.callback(5).unwrap();
    let late = taken(&result_of(inner)).unwrap_err();
    assert!(late.check::<ResultConsumedError>() || late.to_string().contains("mismatch"));
}

// ---- deep chains (debug builds too) ----

#[test]
fn hundred_thousand_chained_callbacks_do_not_overflow_the_stack() {
    let d = Deferred::<u64>::new();
    let mut end = d.clone();
    for _ in 0..100_000 {
        end = end.add_callback(|v| v + 1);
    }
    let out = result_of(end);
    d.callback(0).unwrap();
    assert_eq!(taken(&out).unwrap(), 100_000);
}

#[test]
fn ten_thousand_nested_deferreds_fired_innermost_first() {
    // Each Deferred's callback returns the next one; all fire before the
    // outermost, so the whole line resolves in one run.
    const N: usize = 10_000;
    let ds: Vec<Deferred<u64>> = (0..=N).map(|_| Deferred::new()).collect();
    for i in 0..N {
        let next = ds[i + 1].clone();
        ds[i].clone().add_callback_deferred(move |_| next);
    }
    let out = result_of(ds[0].clone().add_callback(|v| v + 1));
    ds[N].callback(7).unwrap();
    for d in ds[1..N].iter().rev() {
        d.callback(0).unwrap();
    }
    ds[0].callback(0).unwrap();
    assert_eq!(taken(&out).unwrap(), 8);
}

#[test]
fn ten_thousand_nested_deferreds_resolved_from_the_inside_out() {
    // The outer chain fires first and pauses on a line of unfired
    // Deferreds; firing the innermost one resumes them all, iteratively.
    const N: usize = 10_000;
    let ds: Vec<Deferred<u64>> = (0..=N).map(|_| Deferred::new()).collect();
    for i in 0..N {
        let next = ds[i + 1].clone();
        ds[i].clone().add_callback_deferred(move |_| next);
    }
    let out = result_of(ds[0].clone());
    for d in &ds[..N] {
        d.callback(0).unwrap();
    }
    assert!(out.borrow().is_none());
    ds[N].callback(99).unwrap();
    assert_eq!(taken(&out).unwrap(), 99);
}

/// Twisted's `test_boundedStackDepth`: the stack depth at which the last
/// callback runs does not grow with the number of chained Deferreds.
fn stack_address_at_end_of_nested_chain(how_many: usize) -> usize {
    let top = Deferred::<()>::new();
    let inners: Vec<Deferred<()>> = (0..how_many).map(|_| Deferred::new()).collect();
    let last = Deferred::<()>::new();
    let seen = Rc::new(Cell::new(0usize));
    let s = seen.clone();
    let first = inners[how_many - 1].clone();
    top.clone()
        .add_callback_deferred(move |()| first)
        .add_callback(move |()| {
            let marker = 0u8;
            s.set(std::hint::black_box(&marker) as *const u8 as usize);
        });
    for i in (1..how_many).rev() {
        let next = inners[i - 1].clone();
        inners[i].clone().add_callback_deferred(move |()| next);
    }
    let l = last.clone();
    inners[0].clone().add_callback_deferred(move |()| l);
    top.callback(()).unwrap();
    for d in inners.iter().rev() {
        d.callback(()).unwrap();
    }
    assert_eq!(seen.get(), 0, "not yet: everything waits on `last`");
    last.callback(()).unwrap();
    seen.get()
}

#[test]
fn stack_depth_is_bounded_whatever_the_nesting() {
    let shallow = stack_address_at_end_of_nested_chain(2);
    let deep = stack_address_at_end_of_nested_chain(10_000);
    assert_ne!(deep, 0);
    // Recursion would take at least ~100 bytes per level: 1 MB here.
    assert!(
        shallow.abs_diff(deep) < 16 * 1024,
        "{shallow:#x} vs {deep:#x}"
    );
}

#[test]
fn dropping_a_long_line_of_unfired_chained_deferreds_is_iterative() {
    const N: usize = 10_000;
    let ds: Vec<Deferred<u64>> = (0..=N).map(|_| Deferred::new()).collect();
    for i in 0..N {
        let next = ds[i + 1].clone();
        ds[i].clone().add_callback_deferred(move |_| next);
        ds[i].callback(0).unwrap();
    }
    // Drop the outer handles first, the innermost last: its drop releases
    // the whole line.
    let last = ds[N].clone();
    drop(ds);
    drop(last);
}

// ---- unhandled failures ----

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn capture_logs(f: impl FnOnce()) -> String {
    let cap = Capture::default();
    let c2 = cap.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || c2.clone())
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, f);
    let bytes = cap.0.lock().unwrap().clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn dropping_a_deferred_with_an_unhandled_failure_logs_it() {
    let logs = capture_logs(|| {
        let d = Deferred::<u32>::new();
        d.errback(Boom(77)).unwrap();
        drop(d);
    });
    assert!(logs.contains("Unhandled error in Deferred"), "{logs}");
    assert!(logs.contains("boom 77"), "{logs}");
}

#[test]
fn handled_or_handed_on_failures_are_not_logged() {
    let logs = capture_logs(|| {
        let d = Deferred::<u32>::new();
        let end = d.clone().add_errback(|_| Ok(0));
        d.errback(Boom(1)).unwrap();
        drop((d, end));
        // A failure handed on to a chained outer Deferred belongs to it.
        let outer = Deferred::<u32>::new();
        let inner = Deferred::<u32>::new();
        let i2 = inner.clone();
        let handled = outer
            .clone()
            .add_callback_deferred(move |_| i2)
            .add_errback(|_| Ok(1));
        outer.callback(0).unwrap();
        inner.errback(Boom(2)).unwrap();
        drop((outer, inner, handled));
    });
    assert!(!logs.contains("Unhandled error"), "{logs}");
}

#[test]
fn unhandled_failure_after_a_panicking_callback_is_logged() {
    let logs = capture_logs(|| {
        let d = Deferred::<u32>::new();
        let end = d.clone().add_callback(|_v| -> u32 { panic!("lost panic") });
        d.callback(1).unwrap();
        drop((d, end));
    });
    assert!(logs.contains("Unhandled error in Deferred"), "{logs}");
    assert!(logs.contains("lost panic"), "{logs}");
}

#[test]
fn add_both_deferred_and_flatten() {
    let d = Deferred::<u32>::new();
    let out = result_of(
        d.clone()
            .add_both_deferred(|r| Deferred::succeed(r.is_err()))
            .add_callback(|failed| Deferred::succeed(u32::from(failed) + 10))
            .flatten(),
    );
    d.errback(Boom(0)).unwrap();
    assert_eq!(taken(&out).unwrap(), 11);
}

#[test]
fn canceller_may_errback_with_its_own_failure() {
    let d = Deferred::<u32>::with_canceller(|d| d.errback(Boom(8)).unwrap());
    let out = result_of(d.clone());
    d.cancel();
    assert_eq!(
        taken(&out).unwrap_err().downcast_ref::<Boom>().unwrap().0,
        8
    );
    // The canceller fired it: a late producer result is a real double fire.
    assert_eq!(d.callback(1), Err(AlreadyCalledError));
}
