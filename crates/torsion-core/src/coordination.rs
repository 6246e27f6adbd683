//! Coordinating callbacks: [`DeferredLock`], [`DeferredSemaphore`], [`DeferredQueue`].
//!
//! All three are fair: waiters are served first come, first served, and a
//! released token (or a queued value) goes straight to the oldest waiter.
//! A waiter whose Deferred is cancelled leaves the line.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::rc::{Rc, Weak};

use crate::deferred::{maybe_deferred, Deferred, IntoDeferred};

/// `release` was called more times than `acquire` succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("released more tokens than were acquired")]
pub struct NotAcquiredError;

struct SemState {
    tokens: usize,
    limit: usize,
    waiting: VecDeque<Deferred<()>>,
}

/// Limits how many operations run at once (Twisted's `DeferredSemaphore`).
///
/// ```
/// use torsion_core::{Deferred, DeferredSemaphore, Failure};
/// let sem = DeferredSemaphore::new(1);
/// let first = Deferred::<u8>::new();
/// let f2 = first.clone();
/// let a = sem.run(move || f2);                                  // runs now
/// let b = sem.run(|| Ok::<u8, Failure>(2));                     // waits for a
/// assert_eq!(sem.tokens(), 0);
/// first.callback(1).unwrap();                                   // a done: b runs
/// assert_eq!(sem.tokens(), 1);
/// # drop((a, b));
/// ```
#[derive(Clone)]
pub struct DeferredSemaphore {
    st: Rc<RefCell<SemState>>,
}

impl fmt::Debug for DeferredSemaphore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.st.borrow();
        f.debug_struct("DeferredSemaphore")
            .field("tokens", &st.tokens)
            .field("limit", &st.limit)
            .field("waiting", &st.waiting.len())
            .finish()
    }
}

impl DeferredSemaphore {
    /// A semaphore with `tokens` tokens (at least one).
    pub fn new(tokens: usize) -> Self {
        let tokens = tokens.max(1);
        DeferredSemaphore {
            st: Rc::new(RefCell::new(SemState {
                tokens,
                limit: tokens,
                waiting: VecDeque::new(),
            })),
        }
    }

    /// Tokens free now.
    pub fn tokens(&self) -> usize {
        self.st.borrow().tokens
    }

    /// The number of tokens the semaphore was made with.
    pub fn limit(&self) -> usize {
        self.st.borrow().limit
    }

    /// Waiters in line.
    pub fn waiting(&self) -> usize {
        self.st.borrow().waiting.len()
    }

    /// A Deferred that fires once a token is ours. Cancelling it while it
    /// waits removes it from the line (it fails with `CancelledError`).
    pub fn acquire(&self) -> Deferred<()> {
        let mut st = self.st.borrow_mut();
        if st.tokens > 0 {
            st.tokens -= 1;
            return Deferred::succeed(());
        }
        let weak: Weak<RefCell<SemState>> = Rc::downgrade(&self.st);
        let d = Deferred::with_canceller(move |d: &Deferred<()>| {
            if let Some(st) = weak.upgrade() {
                st.borrow_mut().waiting.retain(|w| !w.ptr_eq(d));
            }
        });
        st.waiting.push_back(d.clone());
        d
    }

    /// Gives a token back; the oldest waiter gets it at once.
    pub fn release(&self) -> Result<(), NotAcquiredError> {
        let next = {
            let mut st = self.st.borrow_mut();
            if st.tokens >= st.limit {
                return Err(NotAcquiredError);
            }
            match st.waiting.pop_front() {
                Some(d) => Some(d),
                None => {
                    st.tokens += 1;
                    None
                }
            }
        };
        if let Some(d) = next {
            // The token passes straight to the waiter; its callbacks run now.
            let _ = d.callback(());
        }
        Ok(())
    }

    /// Acquires, runs `f` (which may return a value, a failure or a
    /// Deferred), and releases when its result is in. Panics in `f` become
    /// the failure of the returned Deferred.
    pub fn run<U: 'static, R: IntoDeferred<U>>(
        &self,
        f: impl FnOnce() -> R + 'static,
    ) -> Deferred<U> {
        let sem = self.clone();
        self.acquire().add_callback_deferred(move |()| {
            maybe_deferred(f).add_both(move |r| {
                if let Err(e) = sem.release() {
                    tracing::error!(error = %e, "DeferredSemaphore::run: release failed");
                }
                r
            })
        })
    }
}

/// A lock for callbacks (Twisted's `DeferredLock`): one holder at a time,
/// waiters served in order.
///
/// ```
/// use torsion_core::DeferredLock;
/// let lock = DeferredLock::new();
/// let first = lock.acquire();
/// let second = lock.acquire();
/// assert!(first.called() && !second.called());
/// lock.release().unwrap();
/// assert!(second.called() && lock.locked());
/// ```
#[derive(Clone, Debug)]
pub struct DeferredLock {
    sem: DeferredSemaphore,
}

impl Default for DeferredLock {
    fn default() -> Self {
        Self::new()
    }
}

impl DeferredLock {
    /// An unlocked lock.
    pub fn new() -> Self {
        DeferredLock {
            sem: DeferredSemaphore::new(1),
        }
    }

    /// True while someone holds the lock.
    pub fn locked(&self) -> bool {
        self.sem.tokens() == 0
    }

    /// A Deferred that fires when the lock is ours.
    pub fn acquire(&self) -> Deferred<()> {
        self.sem.acquire()
    }

    /// Releases the lock; the oldest waiter gets it.
    pub fn release(&self) -> Result<(), NotAcquiredError> {
        self.sem.release()
    }

    /// Runs `f` holding the lock; releases when its result is in.
    pub fn run<U: 'static, R: IntoDeferred<U>>(
        &self,
        f: impl FnOnce() -> R + 'static,
    ) -> Deferred<U> {
        self.sem.run(f)
    }
}

/// `put` on a [`DeferredQueue`] already holding `size` values; the value comes back.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
#[error("the DeferredQueue is full")]
pub struct QueueOverflow<T>(pub T);

impl<T> fmt::Debug for QueueOverflow<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QueueOverflow(..)")
    }
}

/// `get` on a [`DeferredQueue`] that already has `backlog` waiting getters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many getters are already waiting on the DeferredQueue")]
pub struct QueueUnderflow;

struct QueueState<T: 'static> {
    pending: VecDeque<T>,
    waiting: VecDeque<Deferred<T>>,
    size: Option<usize>,
    backlog: Option<usize>,
}

/// A queue whose `get` returns a Deferred (Twisted's `DeferredQueue`).
///
/// `size` bounds the values held, `backlog` the getters waiting; past
/// either, `put`/`get` return a typed error instead of growing.
///
/// ```
/// use torsion_core::DeferredQueue;
/// let q = DeferredQueue::<u8>::new(Some(1), Some(1));
/// let got = q.get().unwrap();          // waits
/// assert!(q.get().is_err());           // backlog of 1 reached
/// q.put(7).unwrap();                   // goes straight to the getter
/// assert!(got.called());
/// q.put(8).unwrap();
/// assert!(q.put(9).is_err());          // size of 1 reached
/// ```
pub struct DeferredQueue<T: 'static> {
    st: Rc<RefCell<QueueState<T>>>,
}

impl<T: 'static> Clone for DeferredQueue<T> {
    fn clone(&self) -> Self {
        DeferredQueue {
            st: self.st.clone(),
        }
    }
}

impl<T: 'static> fmt::Debug for DeferredQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.st.borrow();
        f.debug_struct("DeferredQueue")
            .field("pending", &st.pending.len())
            .field("waiting", &st.waiting.len())
            .finish()
    }
}

impl<T: 'static> DeferredQueue<T> {
    /// A queue holding at most `size` values and `backlog` waiting getters
    /// (`None`: unbounded).
    pub fn new(size: Option<usize>, backlog: Option<usize>) -> Self {
        DeferredQueue {
            st: Rc::new(RefCell::new(QueueState {
                pending: VecDeque::new(),
                waiting: VecDeque::new(),
                size,
                backlog,
            })),
        }
    }

    /// Values waiting for a getter.
    pub fn len(&self) -> usize {
        self.st.borrow().pending.len()
    }

    /// True when no value waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Getters waiting for a value.
    pub fn waiting(&self) -> usize {
        self.st.borrow().waiting.len()
    }

    /// Hands `value` to the oldest waiting getter, or keeps it.
    pub fn put(&self, value: T) -> Result<(), QueueOverflow<T>> {
        let getter = {
            let mut st = self.st.borrow_mut();
            match st.waiting.pop_front() {
                Some(d) => Some(d),
                None => {
                    if st.size.is_some_and(|s| st.pending.len() >= s) {
                        return Err(QueueOverflow(value));
                    }
                    st.pending.push_back(value);
                    return Ok(());
                }
            }
        };
        if let Some(d) = getter {
            let _ = d.callback(value);
        }
        Ok(())
    }

    /// A Deferred for the next value. Cancelling it while it waits removes
    /// it from the line.
    pub fn get(&self) -> Result<Deferred<T>, QueueUnderflow> {
        let mut st = self.st.borrow_mut();
        if let Some(v) = st.pending.pop_front() {
            drop(st);
            return Ok(Deferred::succeed(v));
        }
        if st.backlog.is_some_and(|b| st.waiting.len() >= b) {
            return Err(QueueUnderflow);
        }
        let weak = Rc::downgrade(&self.st);
        let d = Deferred::with_canceller(move |d: &Deferred<T>| {
            if let Some(st) = weak.upgrade() {
                st.borrow_mut().waiting.retain(|w| !w.ptr_eq(d));
            }
        });
        st.waiting.push_back(d.clone());
        Ok(d)
    }
}
