//! Timers: `call_later`, `DelayedCall` and the `Clock` trait.
//!
//! One `TimerQueue` implementation serves both the real reactor and the
//! manual [`crate::testing::Clock`], so the semantics tests drive by hand are
//! exactly the ones production runs. Scheduling and cancelling are O(log n):
//! a binary heap of `(deadline, sequence)` keys plus a slab of live entries;
//! a cancelled or reset entry leaves a stale heap key that is skipped (and the
//! heap is compacted when stale keys outnumber live ones), so cancelled timers
//! cost nothing when their time comes.

use std::cell::RefCell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::rc::{Rc, Weak};
use std::time::Duration;

use slab::Slab;

/// A source of time that can schedule calls: the reactor, or a manual clock in tests.
///
/// ```
/// use std::time::Duration;
/// use torsion_core::{Clock, testing};
/// let clock = testing::Clock::new();
/// let call = clock.call_later(Duration::from_secs(5), Box::new(|| println!("later")));
/// assert!(call.active());
/// clock.advance(Duration::from_secs(5));
/// assert!(!call.active());
/// ```
pub trait Clock {
    /// Time since this clock's origin.
    fn now(&self) -> Duration;
    /// Seconds since this clock's origin, as a float (Twisted's `seconds()`).
    fn seconds(&self) -> f64 {
        self.now().as_secs_f64()
    }
    /// Runs `f` once, `delay` from now.
    fn call_later(&self, delay: Duration, f: Box<dyn FnOnce()>) -> DelayedCall;
}

impl<C: Clock + ?Sized> Clock for Rc<C> {
    fn now(&self) -> Duration {
        (**self).now()
    }
    fn call_later(&self, delay: Duration, f: Box<dyn FnOnce()>) -> DelayedCall {
        (**self).call_later(delay, f)
    }
}

/// Why a `DelayedCall` operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DelayedCallError {
    /// The call already ran.
    #[error("the delayed call has already been called")]
    AlreadyCalled,
    /// The call was cancelled before.
    #[error("the delayed call has already been cancelled")]
    AlreadyCancelled,
}

struct Entry {
    deadline: Duration,
    seq: u64,
    func: Option<Box<dyn FnOnce()>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    Called,
    Cancelled,
}

/// The timer structure shared by the reactor and the manual clock.
#[derive(Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    entries: Slab<Entry>,
    next_seq: u64,
    /// Told when a call is moved (`reset`/`delay`): the reactor wakes a
    /// host loop with it, since a host arms its timer only after a turn.
    pub(crate) on_reschedule: Option<Rc<dyn Fn()>>,
}

pub(crate) type SharedTimers = Rc<RefCell<TimerQueue>>;

impl TimerQueue {
    pub(crate) fn schedule(&mut self, deadline: Duration, func: Box<dyn FnOnce()>) -> (usize, u64) {
        let seq = self.bump();
        let key = self.entries.insert(Entry {
            deadline,
            seq,
            func: Some(func),
        });
        self.heap.push(Reverse((deadline, seq, key)));
        (key, seq)
    }

    fn bump(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn live(&self, key: usize, seq: u64) -> bool {
        // Slab keys are reused once freed; the sequence number, which a reset
        // keeps, tells whether the slot still holds this call.
        self.entries.get(key).is_some_and(|e| e.seq == seq)
    }

    /// The deadline of the earliest live timer.
    pub(crate) fn next_deadline(&mut self) -> Option<Duration> {
        while let Some(Reverse((deadline, seq, key))) = self.heap.peek().copied() {
            match self.entries.get(key) {
                Some(e) if e.seq == seq && e.deadline == deadline => return Some(deadline),
                _ => {
                    self.heap.pop();
                }
            }
        }
        None
    }

    /// Removes and returns the earliest timer due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Duration) -> Option<Box<dyn FnOnce()>> {
        let deadline = self.next_deadline()?;
        if deadline > now {
            return None;
        }
        let Reverse((_, _, key)) = self.heap.pop()?;
        let mut entry = self.entries.remove(key);
        entry.func.take()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn maybe_compact(&mut self) {
        if self.heap.len() > 64 && self.heap.len() > 2 * self.entries.len() {
            let entries = &self.entries;
            self.heap.retain(|Reverse((d, s, k))| {
                entries
                    .get(*k)
                    .is_some_and(|e| e.seq == *s && e.deadline == *d)
            });
        }
    }
}

/// A call scheduled with `call_later`; cancel, reset or delay it.
///
/// Operations on a call that already ran or was cancelled return a typed
/// [`DelayedCallError`], never panic.
pub struct DelayedCall {
    queue: Weak<RefCell<TimerQueue>>,
    key: usize,
    seq: u64,
    now: Rc<dyn Fn() -> Duration>,
    fate: Rc<std::cell::Cell<Option<Fate>>>,
}

impl fmt::Debug for DelayedCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DelayedCall")
            .field("active", &self.active())
            .field("time", &self.time())
            .finish()
    }
}

impl DelayedCall {
    pub(crate) fn schedule(
        queue: &SharedTimers,
        now: Rc<dyn Fn() -> Duration>,
        delay: Duration,
        func: Box<dyn FnOnce()>,
    ) -> DelayedCall {
        let fate = Rc::new(std::cell::Cell::new(None));
        let fate2 = fate.clone();
        let wrapped: Box<dyn FnOnce()> = Box::new(move || {
            fate2.set(Some(Fate::Called));
            func()
        });
        // Saturating: `Duration::MAX` means "never", not a panic.
        let deadline = now().saturating_add(delay);
        let (key, seq) = queue.borrow_mut().schedule(deadline, wrapped);
        DelayedCall {
            queue: Rc::downgrade(queue),
            key,
            seq,
            now,
            fate,
        }
    }

    fn check(&self) -> Result<Rc<RefCell<TimerQueue>>, DelayedCallError> {
        match self.fate.get() {
            Some(Fate::Called) => return Err(DelayedCallError::AlreadyCalled),
            Some(Fate::Cancelled) => return Err(DelayedCallError::AlreadyCancelled),
            None => {}
        }
        let q = self
            .queue
            .upgrade()
            .ok_or(DelayedCallError::AlreadyCancelled)?;
        if !q.borrow().live(self.key, self.seq) {
            return Err(DelayedCallError::AlreadyCalled);
        }
        Ok(q)
    }

    /// True until the call runs or is cancelled.
    pub fn active(&self) -> bool {
        self.check().is_ok()
    }

    /// Cancels the call; it will not run.
    pub fn cancel(&self) -> Result<(), DelayedCallError> {
        let q = self.check()?;
        let mut q = q.borrow_mut();
        q.entries.remove(self.key);
        q.maybe_compact();
        self.fate.set(Some(Fate::Cancelled));
        Ok(())
    }

    /// Reschedules the call to run `delay` from now.
    pub fn reset(&self, delay: Duration) -> Result<(), DelayedCallError> {
        let deadline = (self.now)().saturating_add(delay);
        self.move_to(deadline)
    }

    /// Pushes the call `delay` later than currently scheduled.
    pub fn delay(&self, delay: Duration) -> Result<(), DelayedCallError> {
        let q = self.check()?;
        let deadline = q.borrow().entries[self.key].deadline.saturating_add(delay);
        self.move_to(deadline)
    }

    fn move_to(&self, deadline: Duration) -> Result<(), DelayedCallError> {
        let q = self.check()?;
        let hook = {
            let mut q = q.borrow_mut();
            let earlier = deadline < q.entries[self.key].deadline;
            q.entries[self.key].deadline = deadline;
            q.heap.push(Reverse((deadline, self.seq, self.key)));
            q.maybe_compact();
            if earlier {
                q.on_reschedule.clone()
            } else {
                None
            }
        };
        if let Some(h) = hook {
            h();
        }
        Ok(())
    }

    /// When the call is due, on its clock's time line (`None` once it ran or was cancelled).
    pub fn time(&self) -> Option<Duration> {
        let q = self.check().ok()?;
        let d = q.borrow().entries[self.key].deadline;
        Some(d)
    }
}

/// The proleptic Gregorian date `(year, month, day)` of a day counted from
/// 1970-01-01 (negative before it; year 0 is 1 BC). Protocols that print
/// dates (HTTP logs, database values) share this rather than each carrying
/// a copy of the arithmetic (Howard Hinnant's `civil_from_days`).
///
/// ```
/// use torsion_core::time::{civil_from_days, days_from_civil};
/// assert_eq!(civil_from_days(0), (1970, 1, 1));
/// assert_eq!(civil_from_days(-1), (1969, 12, 31));
/// assert_eq!(days_from_civil(2000, 3, 1), 11_017);
/// assert_eq!(civil_from_days(days_from_civil(-43, 3, 15)), (-43, 3, 15));
/// ```
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days from 1970-01-01 of the proleptic Gregorian date `(year, month,
/// day)`; the inverse of [`civil_from_days`]. The date is not validated.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}
