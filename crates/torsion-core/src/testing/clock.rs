//! A clock whose time moves only when a test says so.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use crate::time::{self, DelayedCall, SharedTimers, TimerQueue};

/// Manual time for tests (Twisted's `task.Clock`): `advance` runs the calls
/// that fall due, in deadline order, with the clock set to each one's time.
///
/// ```
/// use std::{cell::Cell, rc::Rc, time::Duration};
/// use torsion_core::{testing::Clock, Clock as _};
/// let clock = Clock::new();
/// let hits = Rc::new(Cell::new(0));
/// let h = hits.clone();
/// clock.call_later(Duration::from_secs(2), Box::new(move || h.set(h.get() + 1)));
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(hits.get(), 0);
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(hits.get(), 1);
/// ```
pub struct Clock {
    now: Rc<Cell<Duration>>,
    timers: SharedTimers,
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock")
            .field("now", &self.now.get())
            .finish()
    }
}

impl Clock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Clock {
            now: Rc::new(Cell::new(Duration::ZERO)),
            timers: Rc::new(RefCell::new(TimerQueue::default())),
        }
    }

    /// Moves time forward by `by`, running every call that falls due.
    pub fn advance(&self, by: Duration) {
        let target = self.now.get().saturating_add(by);
        loop {
            let next = self.timers.borrow_mut().next_deadline();
            match next {
                Some(d) if d <= target => {
                    self.now.set(self.now.get().max(d));
                    let f = self.timers.borrow_mut().pop_due(d);
                    if let Some(f) = f {
                        f();
                    }
                }
                _ => break,
            }
        }
        self.now.set(target);
    }

    /// Advances by each step in turn (Twisted's `pump`).
    pub fn pump(&self, steps: &[Duration]) {
        for s in steps {
            self.advance(*s);
        }
    }

    /// Number of calls still scheduled.
    pub fn pending_calls(&self) -> usize {
        self.timers.borrow().len()
    }
}

impl time::Clock for Clock {
    fn now(&self) -> Duration {
        self.now.get()
    }
    fn call_later(&self, delay: Duration, f: Box<dyn FnOnce()>) -> DelayedCall {
        let now = self.now.clone();
        DelayedCall::schedule(&self.timers, Rc::new(move || now.get()), delay, f)
    }
}
