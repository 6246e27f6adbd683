//! Time helpers built on a [`Clock`]: [`defer_later`] and [`LoopingCall`].

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;
use std::time::Duration;

use crate::deferred::{maybe_deferred, Deferred, IntoDeferred};
use crate::time::{Clock, DelayedCall};

/// A Deferred that fires with `f`'s result `delay` from now on `clock`
/// (Twisted's `deferLater`). Cancelling it before then cancels the call.
///
/// ```
/// use std::time::Duration;
/// use torsion_core::{defer_later, testing::Clock, Failure};
/// let clock = Clock::new();
/// let d = defer_later(&clock, Duration::from_secs(1), || Ok::<_, Failure>("done"));
/// assert!(!d.called());
/// clock.advance(Duration::from_secs(1));
/// assert!(d.called());
/// ```
pub fn defer_later<T: 'static, R: IntoDeferred<T>, C: Clock + ?Sized>(
    clock: &C,
    delay: Duration,
    f: impl FnOnce() -> R + 'static,
) -> Deferred<T> {
    let call: Rc<RefCell<Option<DelayedCall>>> = Rc::default();
    let c = call.clone();
    let d = Deferred::with_canceller(move |_| {
        if let Some(call) = c.borrow_mut().take() {
            let _ = call.cancel();
        }
    });
    let out = d.clone();
    let scheduled = clock.call_later(
        delay,
        Box::new(move || {
            maybe_deferred(f).chain_deferred(&out);
        }),
    );
    *call.borrow_mut() = Some(scheduled);
    d
}

/// Why a [`LoopingCall`] operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LoopingCallError {
    /// `start` on a loop that is running.
    #[error("the LoopingCall is already running")]
    AlreadyRunning,
    /// `stop` on a loop that is not running.
    #[error("the LoopingCall is not running")]
    NotRunning,
}

type LoopFn = Box<dyn FnMut(u64) -> Deferred<()>>;

struct LoopState {
    running: bool,
    interval: Duration,
    start_time: Duration,
    /// The interval index (since `start_time`) of the last call.
    last_tick: Option<u128>,
    call: Option<DelayedCall>,
    /// Fires when the loop stops; fails when the function fails.
    done: Option<Deferred<()>>,
}

struct LoopInner {
    clock: Rc<dyn Clock>,
    f: RefCell<Option<LoopFn>>,
    st: RefCell<LoopState>,
}

/// Calls a function every `interval` (Twisted's `task.LoopingCall`).
///
/// Calls are aligned to the grid `start + k * interval`: when a call (or the
/// Deferred it returns) takes longer than an interval, the missed intervals
/// are skipped, not made up in a burst; [`LoopingCall::with_count`] tells the
/// function how many intervals passed since its last call. A function that
/// fails (or panics) stops the loop, and the failure arrives through the
/// Deferred `start` returned; `stop` fires that Deferred with `()`.
///
/// ```
/// use std::{cell::Cell, rc::Rc, time::Duration};
/// use torsion_core::{testing::Clock, Failure, LoopingCall};
/// let clock = Rc::new(Clock::new());
/// let n = Rc::new(Cell::new(0));
/// let n2 = n.clone();
/// let lc = LoopingCall::new(clock.clone(), move || { n2.set(n2.get() + 1); Ok::<(), Failure>(()) });
/// let done = lc.start(Duration::from_secs(1), true).unwrap();
/// assert_eq!(n.get(), 1);                      // `now`: called at once
/// clock.advance(Duration::from_secs(2));
/// assert_eq!(n.get(), 3);
/// lc.stop().unwrap();
/// assert!(done.called());
/// ```
#[derive(Clone)]
pub struct LoopingCall {
    inner: Rc<LoopInner>,
}

impl fmt::Debug for LoopingCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.inner.st.borrow();
        f.debug_struct("LoopingCall")
            .field("running", &st.running)
            .field("interval", &st.interval)
            .finish()
    }
}

impl LoopingCall {
    /// A loop calling `f`, which may return a value, a failure or a Deferred
    /// (the next call is scheduled once that Deferred fires).
    pub fn new<R: IntoDeferred<()>>(
        clock: impl Clock + 'static,
        mut f: impl FnMut() -> R + 'static,
    ) -> Self {
        Self::with_count(clock, move |_| f())
    }

    /// Like `new`, but `f` receives the number of intervals that elapsed
    /// since its previous call (1 when none was missed).
    pub fn with_count<R: IntoDeferred<()>>(
        clock: impl Clock + 'static,
        mut f: impl FnMut(u64) -> R + 'static,
    ) -> Self {
        let f: LoopFn = Box::new(move |n| maybe_deferred(|| f(n)));
        LoopingCall {
            inner: Rc::new(LoopInner {
                clock: Rc::new(clock),
                f: RefCell::new(Some(f)),
                st: RefCell::new(LoopState {
                    running: false,
                    interval: Duration::ZERO,
                    start_time: Duration::ZERO,
                    last_tick: None,
                    call: None,
                    done: None,
                }),
            }),
        }
    }

    /// True between `start` and `stop` (or a failure).
    pub fn running(&self) -> bool {
        self.inner.st.borrow().running
    }

    /// The interval given to `start`.
    pub fn interval(&self) -> Duration {
        self.inner.st.borrow().interval
    }

    /// Starts calling every `interval`, the first time at once when `now`.
    pub fn start(&self, interval: Duration, now: bool) -> Result<Deferred<()>, LoopingCallError> {
        let done = Deferred::new();
        {
            let mut st = self.inner.st.borrow_mut();
            if st.running {
                return Err(LoopingCallError::AlreadyRunning);
            }
            st.running = true;
            st.interval = interval;
            st.start_time = self.inner.clock.now();
            st.last_tick = None;
            st.done = Some(done.clone());
        }
        if now {
            call_now(&self.inner);
        } else {
            let start = self.inner.st.borrow().start_time;
            schedule_from(&self.inner, start);
        }
        Ok(done)
    }

    /// Stops the loop. If a call's Deferred is still pending, the loop's
    /// Deferred fires when it does; otherwise at once.
    pub fn stop(&self) -> Result<(), LoopingCallError> {
        let done = {
            let mut st = self.inner.st.borrow_mut();
            if !st.running {
                return Err(LoopingCallError::NotRunning);
            }
            st.running = false;
            match st.call.take() {
                Some(call) => {
                    let _ = call.cancel();
                    st.done.take()
                }
                // A call is in progress: its completion fires `done`.
                None => None,
            }
        };
        if let Some(d) = done {
            let _ = d.callback(());
        }
        Ok(())
    }
}

fn tick_of(st: &LoopState, at: Duration) -> u128 {
    let iv = st.interval.as_nanos();
    if iv == 0 {
        return st.last_tick.map_or(0, |t| t + 1);
    }
    at.saturating_sub(st.start_time).as_nanos() / iv
}

fn call_now(inner: &Rc<LoopInner>) {
    let count = {
        let mut st = inner.st.borrow_mut();
        st.call = None;
        let tick = tick_of(&st, inner.clock.now());
        let count = match st.last_tick {
            None => 1,
            Some(last) => tick.saturating_sub(last).max(1),
        };
        st.last_tick = Some(tick);
        count
    };
    // Taken out while it runs, so a re-entrant stop/start cannot alias it.
    let f = inner.f.borrow_mut().take();
    let Some(mut f) = f else {
        return;
    };
    let result = f(u64::try_from(count).unwrap_or(u64::MAX));
    *inner.f.borrow_mut() = Some(f);
    // Strong references from the pending work keep the loop alive even when
    // every handle is dropped, as the reactor keeps Twisted's loop alive.
    let inner = inner.clone();
    result.finally(move |r| match r {
        Ok(()) => {
            let running = inner.st.borrow().running;
            if running {
                let now = inner.clock.now();
                schedule_from(&inner, now);
            } else {
                let done = inner.st.borrow_mut().done.take();
                if let Some(d) = done {
                    let _ = d.callback(());
                }
            }
        }
        Err(failure) => {
            let done = {
                let mut st = inner.st.borrow_mut();
                st.running = false;
                st.done.take()
            };
            match done {
                Some(d) => {
                    let _ = d.errback(failure);
                }
                None => tracing::error!(%failure, "LoopingCall function failed"),
            }
        }
    });
}

/// Schedules the next call at the first grid point after `when`.
fn schedule_from(inner: &Rc<LoopInner>, when: Duration) {
    let delay = {
        let st = inner.st.borrow();
        let iv = st.interval.as_nanos();
        if iv == 0 {
            Duration::ZERO
        } else {
            let running_for = when.saturating_sub(st.start_time).as_nanos();
            let until_next = iv - running_for % iv;
            Duration::from_nanos(u64::try_from(until_next).unwrap_or(u64::MAX))
        }
    };
    let me = inner.clone();
    let call = inner.clock.call_later(
        delay,
        Box::new(move || {
            if me.st.borrow().running {
                call_now(&me);
            }
        }),
    );
    inner.st.borrow_mut().call = Some(call);
}
