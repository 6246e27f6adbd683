//! Running many iterators a slice at a time (Twisted's `task.Cooperator`).
//!
//! Long jobs written as iterators share the reactor fairly: each tick runs
//! one step of each runnable task in turn until a time slice (or a step
//! budget) is spent, then yields to the event loop until the next tick.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use crate::deferred::Deferred;
use crate::failure::{catch, Failure};
use crate::time::{Clock, DelayedCall};

/// What one step of a cooperative task produced.
pub enum Yield {
    /// Keep going: run the next step on a later turn.
    Continue,
    /// Pause this task until the Deferred fires; a failure fails the task.
    Wait(Deferred<()>),
    /// The task failed.
    Fail(Failure),
}

impl From<()> for Yield {
    fn from(_: ()) -> Self {
        Yield::Continue
    }
}

impl From<Deferred<()>> for Yield {
    fn from(d: Deferred<()>) -> Self {
        Yield::Wait(d)
    }
}

impl From<Result<(), Failure>> for Yield {
    fn from(r: Result<(), Failure>) -> Self {
        match r {
            Ok(()) => Yield::Continue,
            Err(f) => Yield::Fail(f),
        }
    }
}

/// Why a task did not finish normally, or a task operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// `stop` was called on the task.
    #[error("the cooperative task was stopped")]
    Stopped,
    /// The task already finished (or failed).
    #[error("the cooperative task is already done")]
    Done,
    /// The cooperator itself was stopped.
    #[error("the cooperator was stopped")]
    SchedulerStopped,
    /// `resume` without a matching `pause`.
    #[error("the cooperative task is not paused")]
    NotPaused,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TaskState {
    /// In the run queue.
    Runnable,
    /// Waiting for a Deferred it yielded.
    Waiting,
    /// Finished, failed or stopped.
    Finished,
}

type TaskIter = Box<dyn Iterator<Item = Yield>>;

struct TaskInner {
    iter: RefCell<Option<TaskIter>>,
    state: Cell<TaskState>,
    pauses: Cell<u32>,
    /// Made runnable while paused: enqueue on resume.
    wants_run: Cell<bool>,
    watchers: RefCell<Vec<Deferred<()>>>,
    outcome: RefCell<Option<Result<(), Failure>>>,
    coop: Weak<CoopInner>,
}

struct CoopInner {
    clock: Rc<dyn Clock>,
    queue: RefCell<VecDeque<Rc<TaskInner>>>,
    slice: Cell<Duration>,
    max_steps: Cell<Option<usize>>,
    tick_delay: Cell<Duration>,
    tick: RefCell<Option<DelayedCall>>,
    stopped: Cell<bool>,
    live: RefCell<Vec<Weak<TaskInner>>>,
}

/// Runs iterators cooperatively on a clock (the reactor, or a test clock).
///
/// ```
/// use std::{cell::RefCell, rc::Rc, time::Duration};
/// use torsion_core::{testing::Clock, Cooperator};
/// let clock = Rc::new(Clock::new());
/// let coop = Cooperator::new(clock.clone())
///     .with_max_steps_per_tick(2)
///     .with_tick_delay(Duration::from_millis(1));
/// let log = Rc::new(RefCell::new(Vec::new()));
/// for name in ["a", "b"] {
///     let l = log.clone();
///     coop.cooperate((0..2).map(move |i| l.borrow_mut().push(format!("{name}{i}"))));
/// }
/// clock.advance(Duration::from_millis(1));
/// assert_eq!(*log.borrow(), ["a0", "b0"]);           // one slice: two steps, interleaved
/// clock.advance(Duration::from_millis(1));
/// assert_eq!(*log.borrow(), ["a0", "b0", "a1", "b1"]);
/// ```
#[derive(Clone)]
pub struct Cooperator {
    inner: Rc<CoopInner>,
}

impl fmt::Debug for Cooperator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cooperator")
            .field("runnable", &self.inner.queue.borrow().len())
            .field("stopped", &self.inner.stopped.get())
            .finish()
    }
}

impl Cooperator {
    /// A cooperator ticking on `clock`, with a 10 ms slice per tick.
    pub fn new(clock: impl Clock + 'static) -> Self {
        Cooperator {
            inner: Rc::new(CoopInner {
                clock: Rc::new(clock),
                queue: RefCell::new(VecDeque::new()),
                slice: Cell::new(Duration::from_millis(10)),
                max_steps: Cell::new(None),
                tick_delay: Cell::new(Duration::ZERO),
                tick: RefCell::new(None),
                stopped: Cell::new(false),
                live: RefCell::new(Vec::new()),
            }),
        }
    }

    /// How long one tick may run steps before yielding to the loop.
    pub fn with_slice(self, slice: Duration) -> Self {
        self.inner.slice.set(slice);
        self
    }

    /// At most `n` steps per tick (deterministic slices, for tests).
    pub fn with_max_steps_per_tick(self, n: usize) -> Self {
        self.inner.max_steps.set(Some(n.max(1)));
        self
    }

    /// Delay between ticks (default zero: next turn of the loop).
    pub fn with_tick_delay(self, delay: Duration) -> Self {
        self.inner.tick_delay.set(delay);
        self
    }

    /// Adds an iterator as a task. Its items are `()`, a `Result<(), Failure>`,
    /// a `Deferred<()>` to wait for, or a [`Yield`].
    pub fn cooperate<I>(&self, iter: I) -> CooperativeTask
    where
        I: IntoIterator + 'static,
        I::Item: Into<Yield>,
    {
        let iter: TaskIter = Box::new(iter.into_iter().map(Into::into));
        let task = Rc::new(TaskInner {
            iter: RefCell::new(Some(iter)),
            state: Cell::new(TaskState::Runnable),
            pauses: Cell::new(0),
            wants_run: Cell::new(false),
            watchers: RefCell::new(Vec::new()),
            outcome: RefCell::new(None),
            coop: Rc::downgrade(&self.inner),
        });
        if self.inner.stopped.get() {
            finish(&task, Err(Failure::new(TaskError::SchedulerStopped)));
        } else {
            self.inner.live.borrow_mut().push(Rc::downgrade(&task));
            self.inner.queue.borrow_mut().push_back(task.clone());
            schedule_tick(&self.inner);
        }
        CooperativeTask { inner: task }
    }

    /// Stops every task (they fail with `SchedulerStopped`) and refuses new ones.
    pub fn stop(&self) {
        self.inner.stopped.set(true);
        if let Some(call) = self.inner.tick.borrow_mut().take() {
            let _ = call.cancel();
        }
        self.inner.queue.borrow_mut().clear();
        let live: Vec<_> = self.inner.live.borrow_mut().drain(..).collect();
        for t in live.iter().filter_map(Weak::upgrade) {
            finish(&t, Err(Failure::new(TaskError::SchedulerStopped)));
        }
    }

    /// Runnable tasks waiting for a tick.
    pub fn runnable(&self) -> usize {
        self.inner.queue.borrow().len()
    }
}

fn schedule_tick(inner: &Rc<CoopInner>) {
    if inner.stopped.get() || inner.tick.borrow().is_some() || inner.queue.borrow().is_empty() {
        return;
    }
    let weak = Rc::downgrade(inner);
    let call = inner.clock.call_later(
        inner.tick_delay.get(),
        Box::new(move || {
            if let Some(inner) = weak.upgrade() {
                inner.tick.borrow_mut().take();
                tick(&inner);
            }
        }),
    );
    *inner.tick.borrow_mut() = Some(call);
}

fn tick(inner: &Rc<CoopInner>) {
    let started = Instant::now();
    let mut steps = 0usize;
    loop {
        let next = inner.queue.borrow_mut().pop_front();
        let Some(task) = next else { break };
        step(&task);
        steps += 1;
        if inner.max_steps.get().is_some_and(|m| steps >= m)
            || started.elapsed() >= inner.slice.get()
        {
            break;
        }
    }
    inner.live.borrow_mut().retain(|w| w.strong_count() > 0);
    schedule_tick(inner);
}

fn enqueue(task: &Rc<TaskInner>) {
    if task.state.get() != TaskState::Runnable {
        return;
    }
    if task.pauses.get() > 0 {
        task.wants_run.set(true);
        return;
    }
    if let Some(coop) = task.coop.upgrade() {
        coop.queue.borrow_mut().push_back(task.clone());
        schedule_tick(&coop);
    }
}

fn step(task: &Rc<TaskInner>) {
    if task.state.get() != TaskState::Runnable {
        return;
    }
    if task.pauses.get() > 0 {
        task.wants_run.set(true);
        return;
    }
    // Taken out while it runs: the step may stop or pause its own task.
    let iter = task.iter.borrow_mut().take();
    let Some(mut iter) = iter else { return };
    let item = catch(|| iter.next());
    if task.state.get() == TaskState::Runnable {
        *task.iter.borrow_mut() = Some(iter);
    }
    match item {
        Err(panic) => finish(task, Err(panic)),
        Ok(None) => finish(task, Ok(())),
        Ok(Some(Yield::Fail(f))) => finish(task, Err(f)),
        Ok(Some(Yield::Continue)) => enqueue(task),
        Ok(Some(Yield::Wait(d))) => {
            if task.state.get() != TaskState::Runnable {
                return;
            }
            task.state.set(TaskState::Waiting);
            let t = task.clone();
            d.finally(move |r| {
                if t.state.get() != TaskState::Waiting {
                    return;
                }
                match r {
                    Ok(()) => {
                        t.state.set(TaskState::Runnable);
                        enqueue(&t);
                    }
                    Err(f) => finish(&t, Err(f)),
                }
            });
        }
    }
}

fn finish(task: &Rc<TaskInner>, outcome: Result<(), Failure>) {
    if task.state.get() == TaskState::Finished {
        return;
    }
    task.state.set(TaskState::Finished);
    let iter = task.iter.borrow_mut().take();
    drop(iter);
    if let Some(coop) = task.coop.upgrade() {
        coop.queue.borrow_mut().retain(|t| !Rc::ptr_eq(t, task));
    }
    *task.outcome.borrow_mut() = Some(outcome.clone());
    let watchers: Vec<_> = task.watchers.borrow_mut().drain(..).collect();
    for w in watchers {
        let _ = w.fire(outcome.clone());
    }
}

/// A task given to a [`Cooperator`].
#[derive(Clone)]
pub struct CooperativeTask {
    inner: Rc<TaskInner>,
}

impl fmt::Debug for CooperativeTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CooperativeTask")
            .field("state", &self.inner.state.get())
            .field("pauses", &self.inner.pauses.get())
            .finish()
    }
}

impl CooperativeTask {
    /// A Deferred that fires when the iterator is exhausted, or fails with
    /// the task's failure ([`TaskError::Stopped`] after `stop`).
    pub fn when_done(&self) -> Deferred<()> {
        if let Some(outcome) = self.inner.outcome.borrow().clone() {
            return match outcome {
                Ok(()) => Deferred::succeed(()),
                Err(f) => Deferred::fail(f),
            };
        }
        let d = Deferred::new();
        self.inner.watchers.borrow_mut().push(d.clone());
        d
    }

    /// True once the task finished, failed or was stopped.
    pub fn is_done(&self) -> bool {
        self.inner.state.get() == TaskState::Finished
    }

    /// Stops running steps until `resume` is called as many times.
    pub fn pause(&self) -> Result<(), TaskError> {
        if self.is_done() {
            return Err(TaskError::Done);
        }
        self.inner.pauses.set(self.inner.pauses.get() + 1);
        Ok(())
    }

    /// Undoes one `pause`.
    pub fn resume(&self) -> Result<(), TaskError> {
        if self.is_done() {
            return Err(TaskError::Done);
        }
        let p = self.inner.pauses.get();
        if p == 0 {
            return Err(TaskError::NotPaused);
        }
        self.inner.pauses.set(p - 1);
        if p == 1 && self.inner.wants_run.replace(false) {
            enqueue(&self.inner);
        }
        Ok(())
    }

    /// Stops the task; `when_done` Deferreds fail with [`TaskError::Stopped`].
    pub fn stop(&self) -> Result<(), TaskError> {
        if self.is_done() {
            return Err(TaskError::Done);
        }
        finish(&self.inner, Err(Failure::new(TaskError::Stopped)));
        Ok(())
    }
}
