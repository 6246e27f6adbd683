//! `Deferred<T>`: a value not computed yet, with a chain of callbacks.
//!
//! Firing a Deferred passes `Result<T, Failure>` down its chain; each step's
//! output feeds the next, and a step that returns another Deferred pauses the
//! chain until that one fires. The chain is stored type-erased (each step
//! takes and returns a boxed value) while the public API stays typed: each
//! `add_*` call consumes the handle and returns one typed for the new end of
//! the chain. Running the chain is iterative — nested Deferreds are walked
//! with an explicit stack — so depth never touches the thread's stack.
//!
//! A Deferred lives on one thread (`!Send`). It is also a `Future`, so
//! `async` code can `.await` it.

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

use crate::failure::{catch, CancelledError, Failure};

type Value = Box<dyn Any>;
type Outcome = Result<Value, Failure>;

/// What one step of the chain produced.
pub(crate) enum Next {
    Done(Outcome),
    Wait(Rc<Core>),
}

type Step = Box<dyn FnOnce(Outcome) -> Next>;

/// Firing a Deferred that has already fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the Deferred has already been called")]
pub struct AlreadyCalledError;

/// A callback received a value of another type than the chain promised.
///
/// This happens only when callbacks are added through a stale handle (one
/// whose type no longer describes the end of the chain).
#[derive(Debug, Clone, thiserror::Error)]
#[error("Deferred chain type mismatch: expected {expected}")]
pub struct ChainTypeError {
    /// The type the callback expected.
    pub expected: &'static str,
}

/// The result of a Deferred that was handed on to another Deferred.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("this Deferred's result was handed on to another Deferred it was chained to")]
pub struct ResultConsumedError;

pub(crate) struct Core {
    st: RefCell<State>,
}

struct State {
    called: bool,
    result: Option<Outcome>,
    chain: VecDeque<Step>,
    paused: u32,
    running: bool,
    /// Set by `cancel` when no canceller fired us: a late `callback` is ignored.
    suppress_already_called: bool,
    canceller: Option<Box<dyn FnOnce()>>,
    /// The Deferred whose result we wait for (a step returned it).
    waiting_on: Option<Weak<Core>>,
    /// The Deferred that waits for our result.
    chained_to: Option<Rc<Core>>,
}

impl Core {
    fn new() -> Rc<Core> {
        Rc::new(Core {
            st: RefCell::new(State {
                called: false,
                result: None,
                chain: VecDeque::new(),
                paused: 0,
                running: false,
                suppress_already_called: false,
                canceller: None,
                waiting_on: None,
                chained_to: None,
            }),
        })
    }

    fn fire(self: &Rc<Self>, outcome: Outcome) -> Result<(), AlreadyCalledError> {
        {
            let mut st = self.st.borrow_mut();
            if st.called {
                if st.suppress_already_called {
                    st.suppress_already_called = false;
                    return Ok(());
                }
                return Err(AlreadyCalledError);
            }
            st.called = true;
            st.canceller = None;
            st.result = Some(outcome);
        }
        run_callbacks(self.clone());
        Ok(())
    }

    fn push(self: &Rc<Self>, step: Step) {
        let run = {
            let mut st = self.st.borrow_mut();
            st.chain.push_back(step);
            st.called && !st.running && st.paused == 0
        };
        if run {
            run_callbacks(self.clone());
        }
    }

    fn cancel(self: &Rc<Self>) {
        let (called, canceller, waiting_on) = {
            let mut st = self.st.borrow_mut();
            (
                st.called,
                st.canceller.take(),
                st.waiting_on.as_ref().and_then(Weak::upgrade),
            )
        };
        if !called {
            if let Some(c) = canceller {
                if let Err(f) = catch(c) {
                    tracing::error!(failure = %f, "canceller panicked");
                }
            }
            let still_unfired = !self.st.borrow().called;
            if still_unfired {
                let _ = self.fire(Err(Failure::new(CancelledError)));
                self.st.borrow_mut().suppress_already_called = true;
            }
        } else if let Some(inner) = waiting_on {
            // We are paused waiting for a Deferred a callback returned: cancel that one.
            inner.cancel();
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let st = self.st.get_mut();
        if let Some(Err(f)) = &st.result {
            if st.chained_to.is_none() {
                tracing::error!(failure = %f, "Unhandled error in Deferred: {f}");
            }
        }
    }
}

/// Runs the chains of `start` and of any Deferreds waiting on it, iteratively.
fn run_callbacks(start: Rc<Core>) {
    let mut stack: Vec<Rc<Core>> = vec![start];
    'outer: while let Some(cur) = stack.last().cloned() {
        {
            let mut st = cur.st.borrow_mut();
            if st.running || st.paused > 0 {
                stack.pop();
                continue;
            }
            st.running = true;
        }
        loop {
            let (step, outcome) = {
                let mut st = cur.st.borrow_mut();
                if st.paused > 0 {
                    st.running = false;
                    stack.pop();
                    continue 'outer;
                }
                match st.chain.pop_front() {
                    Some(step) => {
                        let outcome = st
                            .result
                            .take()
                            .unwrap_or_else(|| Err(Failure::new(ResultConsumedError)));
                        (step, outcome)
                    }
                    None => break,
                }
            };
            let next = match catch(move || step(outcome)) {
                Ok(next) => next,
                Err(panic) => Next::Done(Err(panic)),
            };
            match next {
                Next::Done(outcome) => cur.st.borrow_mut().result = Some(outcome),
                Next::Wait(inner) => {
                    let ready = {
                        let ist = inner.st.borrow();
                        ist.called && ist.paused == 0 && ist.chain.is_empty() && !ist.running
                    };
                    if ready {
                        // Already fired and idle: take its result now. A neutral
                        // value stays behind so its drop does not log a failure
                        // that is ours now.
                        let taken = inner.st.borrow_mut().result.replace(Ok(boxed(())));
                        cur.st.borrow_mut().result =
                            Some(taken.unwrap_or_else(|| Err(Failure::new(ResultConsumedError))));
                    } else {
                        {
                            let mut st = cur.st.borrow_mut();
                            st.paused += 1;
                            st.waiting_on = Some(Rc::downgrade(&inner));
                        }
                        inner.st.borrow_mut().chained_to = Some(cur.clone());
                        let inner_can_run = {
                            let ist = inner.st.borrow();
                            ist.called && ist.paused == 0 && !ist.running
                        };
                        cur.st.borrow_mut().running = false;
                        stack.pop();
                        if inner_can_run {
                            stack.push(inner);
                        }
                        continue 'outer;
                    }
                }
            }
        }
        // The chain of `cur` is exhausted.
        let parent = {
            let mut st = cur.st.borrow_mut();
            st.running = false;
            if st.chained_to.is_some() && st.called {
                let parent = st.chained_to.take();
                let result = st.result.take();
                // Keep a neutral value so dropping this core does not log the
                // failure that the parent now owns.
                st.result = Some(Ok(Box::new(())));
                parent.map(|p| (p, result))
            } else {
                None
            }
        };
        stack.pop();
        if let Some((parent, result)) = parent {
            {
                let mut pst = parent.st.borrow_mut();
                pst.result = Some(result.unwrap_or_else(|| Err(Failure::new(ResultConsumedError))));
                pst.paused = pst.paused.saturating_sub(1);
                pst.waiting_on = None;
            }
            stack.push(parent);
        }
    }
}

fn downcast<T: 'static>(v: Value) -> Result<T, Failure> {
    v.downcast::<T>().map(|b| *b).map_err(|_| {
        Failure::new(ChainTypeError {
            expected: std::any::type_name::<T>(),
        })
    })
}

fn boxed<T: 'static>(v: T) -> Value {
    Box::new(v)
}

/// A value not computed yet, with a chain of callbacks and errbacks.
///
/// ```
/// use std::cell::Cell;
/// use std::rc::Rc;
/// use torsion_core::Deferred;
///
/// let d = Deferred::<u32>::new();
/// let seen = Rc::new(Cell::new(0));
/// let s = seen.clone();
/// d.clone()
///     .add_callback(|n| n * 2)             // 21 -> 42
///     .add_callback(move |n| s.set(n));
/// d.callback(21).unwrap();
/// assert_eq!(seen.get(), 42);
/// ```
pub struct Deferred<T: 'static> {
    core: Rc<Core>,
    _t: PhantomData<*const T>,
}

impl<T: 'static> Clone for Deferred<T> {
    fn clone(&self) -> Self {
        Deferred {
            core: self.core.clone(),
            _t: PhantomData,
        }
    }
}

impl<T: 'static> fmt::Debug for Deferred<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.core.st.borrow();
        f.debug_struct("Deferred")
            .field("called", &st.called)
            .field("paused", &st.paused)
            .field("pending_callbacks", &st.chain.len())
            .finish()
    }
}

impl<T: 'static> Default for Deferred<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: 'static> Deferred<T> {
    /// A new, unfired Deferred.
    pub fn new() -> Self {
        Deferred {
            core: Core::new(),
            _t: PhantomData,
        }
    }

    /// A new Deferred whose `cancel()` first calls `canceller` with it; if the
    /// canceller does not fire it, it fails with [`CancelledError`].
    pub fn with_canceller(canceller: impl FnOnce(&Deferred<T>) + 'static) -> Self {
        let d = Self::new();
        let weak = Rc::downgrade(&d.core);
        d.core.st.borrow_mut().canceller = Some(Box::new(move || {
            if let Some(core) = weak.upgrade() {
                canceller(&Deferred {
                    core,
                    _t: PhantomData,
                })
            }
        }));
        d
    }

    /// A Deferred that has already succeeded with `value`.
    pub fn succeed(value: T) -> Self {
        let d = Self::new();
        let _ = d.callback(value);
        d
    }

    /// A Deferred that has already failed.
    pub fn fail(failure: impl Into<Failure>) -> Self {
        let d = Self::new();
        let _ = d.errback(failure);
        d
    }

    /// Fires the chain with a value.
    pub fn callback(&self, value: T) -> Result<(), AlreadyCalledError> {
        self.core.fire(Ok(boxed(value)))
    }

    /// Fires the chain with a failure.
    pub fn errback(&self, failure: impl Into<Failure>) -> Result<(), AlreadyCalledError> {
        self.core.fire(Err(failure.into()))
    }

    /// Fires with `Ok` or `Err`.
    pub fn fire(&self, result: Result<T, Failure>) -> Result<(), AlreadyCalledError> {
        self.core.fire(result.map(boxed))
    }

    /// True once `callback` or `errback` has been called.
    pub fn called(&self) -> bool {
        self.core.st.borrow().called
    }

    /// Cancels the operation this Deferred stands for.
    ///
    /// Calls the canceller; if that does not fire the Deferred, it fails with
    /// [`CancelledError`] and a later `callback` from the producer is ignored.
    /// A Deferred paused on another one it is waiting for cancels that one.
    pub fn cancel(&self) {
        self.core.cancel();
    }

    /// Stops running callbacks until `unpause` is called as many times.
    pub fn pause(&self) {
        self.core.st.borrow_mut().paused += 1;
    }

    /// Undoes one `pause`; runs pending callbacks when none is left.
    pub fn unpause(&self) {
        let run = {
            let mut st = self.core.st.borrow_mut();
            st.paused = st.paused.saturating_sub(1);
            st.paused == 0 && st.called && !st.running
        };
        if run {
            run_callbacks(self.core.clone());
        }
    }

    pub(crate) fn push_raw(&self, step: Step) {
        self.core.push(step)
    }

    fn retype<U: 'static>(self) -> Deferred<U> {
        Deferred {
            core: self.core,
            _t: PhantomData,
        }
    }

    /// Adds a callback that maps the value; failures pass by untouched.
    pub fn add_callback<U: 'static>(self, f: impl FnOnce(T) -> U + 'static) -> Deferred<U> {
        self.push_raw(Box::new(move |o| {
            Next::Done(match o {
                Ok(v) => downcast::<T>(v).map(|v| boxed(f(v))),
                Err(e) => Err(e),
            })
        }));
        self.retype()
    }

    /// Adds a callback that may fail: returning `Err` switches the chain to errbacks.
    pub fn add_callback_result<U: 'static>(
        self,
        f: impl FnOnce(T) -> Result<U, Failure> + 'static,
    ) -> Deferred<U> {
        self.push_raw(Box::new(move |o| {
            Next::Done(match o {
                Ok(v) => downcast::<T>(v).and_then(f).map(boxed),
                Err(e) => Err(e),
            })
        }));
        self.retype()
    }

    /// Adds a callback that returns another Deferred; the chain pauses until it fires
    /// and continues with its result.
    pub fn add_callback_deferred<U: 'static>(
        self,
        f: impl FnOnce(T) -> Deferred<U> + 'static,
    ) -> Deferred<U> {
        self.push_raw(Box::new(move |o| match o {
            Ok(v) => match downcast::<T>(v) {
                Ok(v) => Next::Wait(f(v).core),
                Err(e) => Next::Done(Err(e)),
            },
            Err(e) => Next::Done(Err(e)),
        }));
        self.retype()
    }

    /// Adds an errback: it sees failures only, and may recover (`Ok`) or pass one on (`Err`).
    pub fn add_errback(
        self,
        f: impl FnOnce(Failure) -> Result<T, Failure> + 'static,
    ) -> Deferred<T> {
        self.push_raw(Box::new(move |o| {
            Next::Done(match o {
                Ok(v) => Ok(v),
                Err(e) => f(e).map(boxed),
            })
        }));
        self
    }

    /// Adds an errback that recovers through another Deferred.
    pub fn add_errback_deferred(
        self,
        f: impl FnOnce(Failure) -> Deferred<T> + 'static,
    ) -> Deferred<T> {
        self.push_raw(Box::new(move |o| match o {
            Ok(v) => Next::Done(Ok(v)),
            Err(e) => Next::Wait(f(e).core),
        }));
        self
    }

    /// Adds a callback and an errback at the same position of the chain.
    pub fn add_callbacks<U: 'static>(
        self,
        callback: impl FnOnce(T) -> Result<U, Failure> + 'static,
        errback: impl FnOnce(Failure) -> Result<U, Failure> + 'static,
    ) -> Deferred<U> {
        self.push_raw(Box::new(move |o| {
            Next::Done(match o {
                Ok(v) => downcast::<T>(v).and_then(callback).map(boxed),
                Err(e) => errback(e).map(boxed),
            })
        }));
        self.retype()
    }

    /// Adds one function called with the result either way (Twisted's `addBoth`).
    pub fn add_both<U: 'static>(
        self,
        f: impl FnOnce(Result<T, Failure>) -> Result<U, Failure> + 'static,
    ) -> Deferred<U> {
        self.push_raw(Box::new(move |o| {
            let typed = o.and_then(downcast::<T>);
            Next::Done(f(typed).map(boxed))
        }));
        self.retype()
    }

    /// Like `add_both`, returning a Deferred that the chain waits for.
    pub fn add_both_deferred<U: 'static>(
        self,
        f: impl FnOnce(Result<T, Failure>) -> Deferred<U> + 'static,
    ) -> Deferred<U> {
        self.push_raw(Box::new(move |o| {
            let typed = o.and_then(downcast::<T>);
            Next::Wait(f(typed).core)
        }));
        self.retype()
    }

    /// Fires `other` with this chain's result when it arrives (Twisted's `chainDeferred`).
    /// This chain's result afterwards is `()`.
    pub fn chain_deferred(self, other: &Deferred<T>) -> Deferred<()> {
        let other = other.clone();
        self.add_both(move |r| {
            let _ = other.fire(r);
            Ok(())
        })
    }

    /// Consumes the result: runs `f` with it and ends the chain. Failures count as handled.
    pub fn finally(self, f: impl FnOnce(Result<T, Failure>) + 'static) {
        self.add_both(move |r| {
            f(r);
            Ok(())
        });
    }
}

impl<T: 'static> Deferred<Deferred<T>> {
    /// Flattens a Deferred of a Deferred.
    pub fn flatten(self) -> Deferred<T> {
        self.add_callback_deferred(|d| d)
    }
}

/// Calls `f`, turning its value, failure, Deferred or panic into a Deferred
/// (Twisted's `maybeDeferred`).
///
/// ```
/// use torsion_core::{deferred::maybe_deferred, Deferred, Failure};
/// let d: Deferred<u8> = maybe_deferred(|| -> Result<u8, Failure> { panic!("oops") });
/// let out = std::rc::Rc::new(std::cell::RefCell::new(None));
/// let o = out.clone();
/// d.finally(move |r| *o.borrow_mut() = Some(r.is_err()));
/// assert_eq!(*out.borrow(), Some(true));
/// ```
pub fn maybe_deferred<T: 'static, R: IntoDeferred<T>>(f: impl FnOnce() -> R) -> Deferred<T> {
    match catch(f) {
        Ok(r) => r.into_deferred(),
        Err(panic) => Deferred::fail(panic),
    }
}

/// What `maybe_deferred` accepts from its function.
pub trait IntoDeferred<T: 'static> {
    /// Converts into a Deferred.
    fn into_deferred(self) -> Deferred<T>;
}

impl<T: 'static> IntoDeferred<T> for Deferred<T> {
    fn into_deferred(self) -> Deferred<T> {
        self
    }
}

impl<T: 'static> IntoDeferred<T> for Result<T, Failure> {
    fn into_deferred(self) -> Deferred<T> {
        match self {
            Ok(v) => Deferred::succeed(v),
            Err(f) => Deferred::fail(f),
        }
    }
}

/// Awaiting a Deferred adds a final callback that stores the result and wakes the task.
struct Slot<T> {
    result: Option<Result<T, Failure>>,
    waker: Option<Waker>,
    taken: bool,
}

/// The future returned by `Deferred::into_future`; dropping it cancels the Deferred
/// if it has not fired yet.
pub struct DeferredFuture<T: 'static> {
    deferred: Option<Deferred<T>>,
    slot: Rc<RefCell<Slot<T>>>,
    armed: bool,
}

impl<T: 'static> std::future::IntoFuture for Deferred<T> {
    type Output = Result<T, Failure>;
    type IntoFuture = DeferredFuture<T>;
    fn into_future(self) -> DeferredFuture<T> {
        DeferredFuture {
            deferred: Some(self),
            slot: Rc::new(RefCell::new(Slot {
                result: None,
                waker: None,
                taken: false,
            })),
            armed: false,
        }
    }
}

impl<T: 'static> Future for DeferredFuture<T> {
    type Output = Result<T, Failure>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.armed {
            this.armed = true;
            this.slot.borrow_mut().waker = Some(cx.waker().clone());
            let slot = this.slot.clone();
            if let Some(d) = this.deferred.clone() {
                d.finally(move |r| {
                    let waker = {
                        let mut s = slot.borrow_mut();
                        s.result = Some(r);
                        s.waker.take()
                    };
                    if let Some(w) = waker {
                        w.wake();
                    }
                });
            }
        }
        let mut s = this.slot.borrow_mut();
        if let Some(r) = s.result.take() {
            s.taken = true;
            return Poll::Ready(r);
        }
        if s.taken {
            return Poll::Ready(Err(Failure::new(ResultConsumedError)));
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T: 'static> Drop for DeferredFuture<T> {
    fn drop(&mut self) {
        let pending = {
            let s = self.slot.borrow();
            s.result.is_none() && !s.taken
        };
        if pending {
            if let Some(d) = self.deferred.take() {
                if self.armed && !d.called() {
                    d.cancel();
                }
            }
        }
    }
}
