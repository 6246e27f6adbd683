//! The reactor's local executor: runs `!Send` futures on the reactor thread.
//!
//! Wakers are `Send + Sync`: waking from another thread queues the task and
//! wakes the poller; waking on the reactor thread only queues it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use slab::Slab;

use crate::deferred::Deferred;
use crate::failure::{catch, CancelledError, Failure};
use crate::reactor::{Reactor, Remote};

type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

struct ReadyQueue {
    ids: Mutex<Vec<(usize, u64)>>,
    remote: Arc<Remote>,
}

struct TaskWaker {
    id: usize,
    generation: u64,
    queue: Arc<ReadyQueue>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let first = {
            let mut ids = self.queue.ids.lock().unwrap_or_else(|p| p.into_inner());
            ids.push((self.id, self.generation));
            ids.len() == 1
        };
        if first
            && (std::thread::current().id() != self.queue.remote.thread
                || self.queue.remote.idle_hosted.load(Ordering::Acquire))
        {
            self.queue.remote.wake();
        }
    }
}

struct Slot {
    generation: u64,
    future: Option<LocalTask>,
}

pub(crate) struct Executor {
    tasks: RefCell<Slab<Slot>>,
    queue: Arc<ReadyQueue>,
    next_generation: std::cell::Cell<u64>,
}

/// Identifies a spawned task, to cancel it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskId {
    key: usize,
    generation: u64,
}

impl Executor {
    pub(crate) fn new(remote: Arc<Remote>) -> Self {
        Executor {
            tasks: RefCell::new(Slab::new()),
            queue: Arc::new(ReadyQueue {
                ids: Mutex::new(Vec::new()),
                remote,
            }),
            next_generation: std::cell::Cell::new(0),
        }
    }

    pub(crate) fn spawn(&self, fut: LocalTask) -> TaskId {
        let generation = self.next_generation.get() + 1;
        self.next_generation.set(generation);
        let key = self.tasks.borrow_mut().insert(Slot {
            generation,
            future: Some(fut),
        });
        self.queue
            .ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key, generation));
        TaskId { key, generation }
    }

    pub(crate) fn cancel(&self, id: TaskId) -> bool {
        let fut = {
            let mut tasks = self.tasks.borrow_mut();
            match tasks.get(id.key) {
                Some(s) if s.generation == id.generation => tasks.remove(id.key).future,
                _ => None,
            }
        };
        // Dropping the future may run user code: do it with nothing borrowed.
        let found = fut.is_some();
        drop(fut);
        found
    }

    pub(crate) fn has_ready(&self) -> bool {
        !self
            .queue
            .ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    pub(crate) fn run_ready(&self) {
        let ready: Vec<(usize, u64)> =
            std::mem::take(&mut *self.queue.ids.lock().unwrap_or_else(|p| p.into_inner()));
        for (key, generation) in ready {
            self.poll_task(key, generation);
        }
    }

    /// Polls one task now (if it still exists and is not being polled).
    pub(crate) fn poll_task(&self, key: usize, generation: u64) {
        let fut = {
            let mut tasks = self.tasks.borrow_mut();
            match tasks.get_mut(key) {
                Some(s) if s.generation == generation => s.future.take(),
                _ => None,
            }
        };
        // Taken out while polled: a task already being polled (woken twice) is skipped.
        let Some(mut fut) = fut else { return };
        let waker = Waker::from(Arc::new(TaskWaker {
            id: key,
            generation,
            queue: self.queue.clone(),
        }));
        let mut cx = Context::from_waker(&waker);
        let done = match catch(|| fut.as_mut().poll(&mut cx)) {
            Ok(Poll::Ready(())) => true,
            Ok(Poll::Pending) => false,
            Err(f) => {
                tracing::error!(failure = %f, "a task panicked");
                true
            }
        };
        let mut tasks = self.tasks.borrow_mut();
        if done {
            if tasks.get(key).is_some_and(|s| s.generation == generation) {
                tasks.remove(key);
            }
            drop(tasks);
            drop(fut);
        } else if let Some(s) = tasks.get_mut(key) {
            if s.generation == generation {
                s.future = Some(fut);
            }
        }
    }
}

impl Reactor {
    /// Runs a future on the reactor thread; returns an id to cancel it with.
    pub fn spawn_local(&self, fut: impl Future<Output = ()> + 'static) -> TaskId {
        self.kick_host();
        self.inner.executor.spawn(Box::pin(fut))
    }

    /// Drops a spawned future; true when it was still running.
    pub fn cancel_task(&self, id: TaskId) -> bool {
        self.inner.executor.cancel(id)
    }
}

impl<T: 'static> Deferred<T> {
    /// Runs `fut` on the reactor's executor and returns a Deferred for its
    /// output (Twisted's `ensureDeferred`). The future first runs on the
    /// reactor's next turn.
    ///
    /// Cancellation goes both ways: cancelling the Deferred drops the future
    /// (and so cancels any Deferred it was awaiting), and a future dropped
    /// before it finished (its task cancelled, the reactor gone) fails the
    /// Deferred with [`CancelledError`].
    ///
    /// ```
    /// use torsion_core::{Deferred, Failure, Reactor};
    /// let reactor = Reactor::new().unwrap();
    /// let d = Deferred::from_future(&reactor, async { Ok::<_, Failure>(7) });
    /// let r = reactor.clone();
    /// d.add_callback(move |v| { assert_eq!(v, 7); r.stop().unwrap(); });
    /// reactor.run().unwrap();
    /// ```
    pub fn from_future(
        reactor: &Reactor,
        fut: impl Future<Output = Result<T, Failure>> + 'static,
    ) -> Deferred<T> {
        let id_cell: Rc<Cell<Option<TaskId>>> = Default::default();
        let weak = reactor.downgrade();
        let idc = id_cell.clone();
        let d = Deferred::with_canceller(move |_d| {
            if let (Some(inner), Some(id)) = (weak.upgrade(), idc.get()) {
                Reactor::from_inner(inner).cancel_task(id);
            }
        });
        // Fails the Deferred if the future is dropped before it produced a result.
        struct Guard<T: 'static>(Option<Deferred<T>>);
        impl<T: 'static> Drop for Guard<T> {
            fn drop(&mut self) {
                if let Some(d) = self.0.take() {
                    if !d.called() {
                        let _ = d.errback(Failure::new(CancelledError));
                    }
                }
            }
        }
        let mut guard = Guard(Some(d.clone()));
        let id = reactor.spawn_local(async move {
            let r = CatchUnwind(Box::pin(fut)).await;
            if let Some(out) = guard.0.take() {
                if !out.called() {
                    let _ = out.fire(r);
                }
            }
        });
        id_cell.set(Some(id));
        // Unlike Twisted's `ensureDeferred`, the first poll happens on the
        // reactor's next turn, not here: callers may hold borrows that the
        // future's first steps would need.
        d
    }
}

/// Polls a future, turning a panic into its `Failure` result.
struct CatchUnwind<T>(Pin<Box<dyn Future<Output = Result<T, Failure>>>>);

impl<T> Future for CatchUnwind<T> {
    type Output = Result<T, Failure>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match catch(move || fut.poll(cx)) {
            Ok(p) => p,
            Err(panic) => {
                tracing::error!(failure = %panic, "a future run by Deferred::from_future panicked");
                Poll::Ready(Err(panic))
            }
        }
    }
}
