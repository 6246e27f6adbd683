//! Threads as a source of Deferreds.
//!
//! Blocking work (a database call, `getaddrinfo`, a CPU-heavy function) runs
//! on a [`ThreadPool`] thread; its result comes back to the reactor thread
//! through [`ReactorHandle::call_from_thread`] and fires a [`Deferred`] there,
//! so callbacks never need locks.
//!
//! Each reactor owns a default pool ([`Reactor::thread_pool`]), created on
//! first use. A pool starts its threads lazily (when work arrives, or on
//! [`ThreadPool::start`]) and is stopped by a shutdown trigger of the
//! reactor: running work is waited for, queued work is dropped and its
//! Deferred fails with [`ThreadPoolError::Stopped`].
//!
//! ```
//! use torsion_core::{threads::defer_to_thread, Reactor};
//! let reactor = Reactor::new().unwrap();
//! let r = reactor.clone();
//! defer_to_thread(&reactor, || (1..=10u64).product::<u64>()).finally(move |res| {
//!     assert_eq!(res.unwrap(), 3_628_800);
//!     r.stop().unwrap();
//! });
//! reactor.run().unwrap();
//! ```

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::rc::Weak;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use slab::Slab;

use crate::deferred::{maybe_deferred, Deferred, IntoDeferred};
use crate::failure::{catch, Failure};
use crate::reactor::{Inner, Phase, Reactor, ReactorHandle, SystemEvent};

/// Default name prefix of the reactor's pool threads.
pub const DEFAULT_POOL_NAME: &str = "torsion-pool";
/// Default maximum size of the reactor's pool (Twisted's default too).
pub const DEFAULT_MAX_THREADS: usize = 10;

/// Errors of the thread pool and of calls between threads and the reactor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ThreadPoolError {
    /// The pool stopped (the reactor shut down) before the work could run.
    #[error("the thread pool stopped before the work could run")]
    Stopped,
    /// `defer_to_thread_pool` was called off the reactor thread of the pool.
    #[error("Deferreds of a thread pool can only be created on its reactor's thread")]
    NotReactorThread,
    /// `blocking_call_from_thread` was called on the reactor thread: waiting
    /// there for the reactor would deadlock.
    #[error("blocking_call_from_thread called on the reactor thread (it would deadlock)")]
    OnReactorThread,
    /// The reactor went away before it ran the call.
    #[error("the reactor went away before running the call")]
    ReactorGone,
    /// No thread could be started.
    #[error("could not start a pool thread: {0}")]
    Spawn(String),
}

/// A queued piece of work. Called with `None` to run it, or with the failure
/// that stops it from running; dropping it unrun counts as being stopped, so
/// no Deferred is ever left hanging.
pub(crate) struct Job(Option<Box<dyn FnOnce(Option<Failure>) + Send>>);

impl Job {
    pub(crate) fn new(f: impl FnOnce(Option<Failure>) + Send + 'static) -> Job {
        Job(Some(Box::new(f)))
    }
    fn run(mut self) {
        if let Some(f) = self.0.take() {
            f(None)
        }
    }
    fn drop_with(mut self, failure: Failure) {
        if let Some(f) = self.0.take() {
            f(Some(failure))
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            let _ = catch(move || f(Some(Failure::new(ThreadPoolError::Stopped))));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    /// Not started yet: work queues and starts the pool.
    Idle,
    Running,
    /// Stop requested; threads finish what they run and exit.
    Stopping,
    Stopped,
}

struct State {
    life: Life,
    min: usize,
    max: usize,
    queue: VecDeque<Job>,
    /// Worker threads that take work (a leaving thread is no longer counted).
    threads: usize,
    /// Worker threads that have not finished yet (stop hooks included).
    alive: usize,
    /// Workers waiting on the condition variable and not yet signalled.
    idle: usize,
    /// Signals sent to waiting workers and not yet taken up. Counting them
    /// (as tokio's blocking pool does) keeps a burst of submissions from
    /// signalling the same sleeper again and again: every `notify_one` is a
    /// futex system call whether or not anyone still waits.
    notified: usize,
    /// Workers not running a job (new ones included): what queued work can count on.
    free: usize,
    next_index: usize,
    joins: Vec<JoinHandle<()>>,
    /// Runs when the last worker has left after a stop.
    on_stopped: Vec<Box<dyn FnOnce() + Send>>,
}

type Hook = Arc<dyn Fn() + Send + Sync>;

struct Shared {
    name: String,
    handle: ReactorHandle,
    state: Mutex<State>,
    work: Condvar,
    on_thread_start: Option<Hook>,
    on_thread_stop: Option<Hook>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A pool of named threads (between `min` and `max` of them) that runs
/// blocking work for a reactor. `Send + Sync + Clone`.
///
/// ```
/// use torsion_core::{threads::{defer_to_thread_pool, ThreadPool}, Reactor};
/// let reactor = Reactor::new().unwrap();
/// let pool = ThreadPool::builder().name("hashing").min(1).max(4).build(&reactor);
/// let r = reactor.clone();
/// defer_to_thread_pool(&pool, || std::thread::current().name().map(String::from))
///     .finally(move |name| {
///         assert!(name.unwrap().unwrap().starts_with("hashing-"));
///         r.stop().unwrap();
///     });
/// reactor.run().unwrap();
/// ```
#[derive(Clone)]
pub struct ThreadPool {
    shared: Arc<Shared>,
}

impl fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.shared.lock();
        f.debug_struct("ThreadPool")
            .field("name", &self.shared.name)
            .field("life", &st.life)
            .field("min", &st.min)
            .field("max", &st.max)
            .field("threads", &st.threads)
            .field("queued", &st.queue.len())
            .finish()
    }
}

/// Builds a [`ThreadPool`].
pub struct ThreadPoolBuilder {
    name: String,
    min: usize,
    max: usize,
    on_thread_start: Option<Hook>,
    on_thread_stop: Option<Hook>,
}

impl ThreadPoolBuilder {
    /// Thread names are `NAME-0`, `NAME-1`, …
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// Threads started at once when the pool starts, and kept.
    pub fn min(mut self, min: usize) -> Self {
        self.min = min;
        self
    }
    /// Most threads the pool ever runs (at least 1).
    pub fn max(mut self, max: usize) -> Self {
        self.max = max;
        self
    }
    /// Runs on each new pool thread before it takes work (e.g. open a connection).
    pub fn on_thread_start(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_thread_start = Some(Arc::new(f));
        self
    }
    /// Runs on each pool thread as it exits (e.g. close its connection).
    pub fn on_thread_stop(mut self, f: impl Fn() + Send + Sync + 'static) -> Self {
        self.on_thread_stop = Some(Arc::new(f));
        self
    }
    /// Builds the pool for `reactor`, which stops it when it shuts down.
    pub fn build(self, reactor: &Reactor) -> ThreadPool {
        let max = self.max.max(1);
        let pool = ThreadPool {
            shared: Arc::new(Shared {
                name: self.name,
                handle: reactor.handle(),
                state: Mutex::new(State {
                    life: Life::Idle,
                    min: self.min.min(max),
                    max,
                    queue: VecDeque::new(),
                    threads: 0,
                    alive: 0,
                    idle: 0,
                    notified: 0,
                    free: 0,
                    next_index: 0,
                    joins: Vec::new(),
                    on_stopped: Vec::new(),
                }),
                work: Condvar::new(),
                on_thread_start: self.on_thread_start,
                on_thread_stop: self.on_thread_stop,
            }),
        };
        pool.attach(reactor.downgrade());
        pool
    }
}

impl ThreadPool {
    /// A builder: name `torsion-pool`, min 0, max 10.
    pub fn builder() -> ThreadPoolBuilder {
        ThreadPoolBuilder {
            name: DEFAULT_POOL_NAME.into(),
            min: 0,
            max: DEFAULT_MAX_THREADS,
            on_thread_start: None,
            on_thread_stop: None,
        }
    }

    /// A pool for `reactor` with `min`..=`max` threads named `name-N`.
    pub fn new(reactor: &Reactor, name: &str, min: usize, max: usize) -> ThreadPool {
        Self::builder().name(name).min(min).max(max).build(reactor)
    }

    /// Stops the pool on the reactor's shutdown (during phase); the reactor
    /// waits for the returned Deferred, i.e. for the running work.
    fn attach(&self, reactor: Weak<Inner>) {
        let Some(inner) = reactor.upgrade() else {
            return;
        };
        let r = Reactor::from_inner(inner);
        let pool = self.clone();
        r.add_system_event_trigger(Phase::During, SystemEvent::Shutdown, move || {
            let stopped = pool.stop();
            // A reactor may run again: the pool comes back with it.
            if let Some(inner) = reactor.upgrade() {
                let again = pool.clone();
                Reactor::from_inner(inner).call_when_running(move || again.start());
                pool.attach(reactor);
            }
            Some(stopped)
        });
    }

    /// The reactor this pool delivers results to.
    pub fn reactor_handle(&self) -> &ReactorHandle {
        &self.shared.handle
    }

    /// Starts the pool (its `min` threads). Work submitted to a pool that
    /// was never started starts it, so calling this is optional.
    pub fn start(&self) {
        let mut st = self.shared.lock();
        if matches!(st.life, Life::Idle | Life::Stopped) {
            st.life = Life::Running;
            self.grow(&mut st);
        }
    }

    /// Changes the bounds. Extra threads above a lowered `max` exit once idle.
    pub fn adjust_size(&self, min: usize, max: usize) {
        let mut st = self.shared.lock();
        st.max = max.max(1);
        st.min = min.min(st.max);
        if st.life == Life::Running {
            self.grow(&mut st);
        }
        self.shared.work.notify_all();
    }

    /// Live worker threads.
    pub fn thread_count(&self) -> usize {
        self.shared.lock().threads
    }

    /// Work waiting for a thread.
    pub fn queued(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// `(min, max)`.
    pub fn size(&self) -> (usize, usize) {
        let st = self.shared.lock();
        (st.min, st.max)
    }

    /// True while the pool accepts work (not stopping or stopped).
    pub fn is_accepting(&self) -> bool {
        matches!(self.shared.lock().life, Life::Idle | Life::Running)
    }

    /// Runs `f` on a pool thread, fire and forget; a panic is logged.
    pub fn call_in_thread(&self, f: impl FnOnce() + Send + 'static) {
        self.submit(Job::new(move |stopped| match stopped {
            None => {
                if let Err(failure) = catch(f) {
                    tracing::error!(%failure, "call_in_thread work panicked");
                }
            }
            Some(failure) => tracing::debug!(%failure, "call_in_thread work dropped"),
        }));
    }

    /// Queues a job; fails it at once when the pool no longer accepts work.
    pub(crate) fn submit(&self, job: Job) {
        if let Err(job) = self.try_submit(job) {
            job.drop_with(Failure::new(ThreadPoolError::Stopped));
        }
    }

    /// Queues a job, or hands it back when the pool no longer accepts work.
    fn try_submit(&self, job: Job) -> Result<(), Job> {
        let mut st = self.shared.lock();
        match st.life {
            Life::Stopping | Life::Stopped => return Err(job),
            Life::Idle => st.life = Life::Running,
            Life::Running => {}
        }
        st.queue.push_back(job);
        if st.idle > 0 {
            st.idle -= 1;
            st.notified += 1;
            self.shared.work.notify_one();
        }
        self.grow(&mut st);
        Ok(())
    }

    /// Starts threads up to `min`, and up to `max` while work waits unclaimed.
    fn grow(&self, st: &mut State) {
        while st.threads < st.max && (st.threads < st.min || st.queue.len() > st.free) {
            let index = st.next_index;
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{}", self.shared.name, index))
                .spawn(move || worker(shared));
            match spawned {
                Ok(join) => {
                    st.next_index += 1;
                    st.threads += 1;
                    st.alive += 1;
                    st.free += 1;
                    st.joins.push(join);
                }
                Err(e) => {
                    tracing::error!(pool = %self.shared.name, error = %e, "could not start a pool thread");
                    if st.threads == 0 {
                        // Nobody would ever run the queue: fail it now.
                        let failure = Failure::new(ThreadPoolError::Spawn(e.to_string()));
                        let jobs: Vec<Job> = st.queue.drain(..).collect();
                        for j in jobs {
                            j.drop_with(failure.clone());
                        }
                    }
                    return;
                }
            }
        }
    }

    /// Stops the pool: queued work is dropped (its Deferreds fail with
    /// [`ThreadPoolError::Stopped`]), running work is waited for. The returned
    /// Deferred fires on the reactor thread once every thread has exited.
    /// Must be called on the reactor thread.
    pub fn stop(&self) -> Deferred<()> {
        let (dropped, wait) = {
            let mut st = self.shared.lock();
            match st.life {
                Life::Stopped | Life::Idle if st.alive == 0 => {
                    st.life = Life::Stopped;
                    let joins = std::mem::take(&mut st.joins);
                    drop(st);
                    join_all(joins);
                    return Deferred::succeed(());
                }
                _ => {}
            }
            st.life = Life::Stopping;
            let dropped: Vec<Job> = st.queue.drain(..).collect();
            self.shared.work.notify_all();
            let d = Deferred::<()>::new();
            let wait = if st.alive == 0 {
                st.life = Life::Stopped;
                None
            } else {
                let id = park(d.clone());
                let handle = self.shared.handle.clone();
                let shared = Arc::downgrade(&self.shared);
                st.on_stopped.push(Box::new(move || {
                    handle.call_from_thread(move || {
                        if let Some(shared) = shared.upgrade() {
                            let joins = std::mem::take(&mut shared.lock().joins);
                            join_all(joins);
                        }
                        if let Some(d) = take::<Deferred<()>>(id) {
                            let _ = d.callback(());
                        }
                    })
                }));
                Some(d)
            };
            (dropped, wait)
        };
        for job in dropped {
            job.drop_with(Failure::new(ThreadPoolError::Stopped));
        }
        match wait {
            Some(d) => d,
            None => {
                let joins = std::mem::take(&mut self.shared.lock().joins);
                join_all(joins);
                Deferred::succeed(())
            }
        }
    }
}

fn join_all(joins: Vec<JoinHandle<()>>) {
    for j in joins {
        // The worker already left its loop; a panic there was logged by it.
        let _ = j.join();
    }
}

fn worker(shared: Arc<Shared>) {
    if let Some(hook) = &shared.on_thread_start {
        if let Err(failure) = catch(|| hook()) {
            tracing::error!(%failure, "thread pool start hook panicked");
        }
    }
    let mut st = shared.lock();
    let mut yielded = false;
    loop {
        if let Some(job) = st.queue.pop_front() {
            yielded = false;
            st.free -= 1;
            drop(st);
            // Jobs catch their own panics; this guard keeps the thread alive
            // should a result's destructor panic.
            if let Err(failure) = catch(|| job.run()) {
                tracing::error!(%failure, "thread pool work panicked");
            }
            st = shared.lock();
            st.free += 1;
            continue;
        }
        if st.threads > st.max || matches!(st.life, Life::Stopping | Life::Stopped) {
            // Counted out now, so that other surplus threads do not leave too.
            st.threads -= 1;
            st.free -= 1;
            break;
        }
        // Before sleeping, give the CPU away once and look again. Trivial jobs
        // drain the queue faster than the reactor thread fills it; a worker
        // that slept at once would need a futex wake-up (a system call and
        // an inter-processor wake on the reactor thread) for the very next
        // job. One `sched_yield` lets the submitter run instead, and in a
        // burst the queue has refilled when the worker comes back: 200,000
        // calls submitted at once ran ~5x faster on 2 cores (BENCHMARKS.md).
        if !yielded {
            yielded = true;
            drop(st);
            std::thread::yield_now();
            st = shared.lock();
            continue;
        }
        st.idle += 1;
        loop {
            st = shared.work.wait(st).unwrap_or_else(|p| p.into_inner());
            if st.notified > 0 {
                // The signaller counted us out of `idle` already.
                st.notified -= 1;
                break;
            }
            if st.threads > st.max || matches!(st.life, Life::Stopping | Life::Stopped) {
                // Woken by `notify_all` (stop or resize): go and check.
                st.idle -= 1;
                break;
            }
            // A spurious wake-up: nothing for this thread.
        }
    }
    drop(st);
    if let Some(hook) = &shared.on_thread_stop {
        if let Err(failure) = catch(|| hook()) {
            tracing::error!(%failure, "thread pool stop hook panicked");
        }
    }
    // The stop completes only once every thread has run its stop hook.
    let mut st = shared.lock();
    st.alive -= 1;
    let done = if st.alive == 0 && st.life == Life::Stopping {
        st.life = Life::Stopped;
        std::mem::take(&mut st.on_stopped)
    } else {
        Vec::new()
    };
    drop(st);
    for f in done {
        f();
    }
}

// ---- Deferreds parked on the reactor thread while work runs elsewhere ----

thread_local! {
    /// A slab, not a hash map: a burst of 200,000 calls parks 200,000
    /// Deferreds, and hashing them in and out was a quarter of the reactor
    /// thread's time. A key is taken exactly once (by the result or by the
    /// stop), so a reused key never reaches a stale owner.
    static PARKED: RefCell<Slab<Box<dyn Any>>> = RefCell::new(Slab::new());
}

/// Keeps a `!Send` value on this thread under a key that can cross threads.
fn park<T: 'static>(value: T) -> usize {
    PARKED.with(|p| p.borrow_mut().insert(Box::new(value)))
}

fn take<T: 'static>(key: usize) -> Option<T> {
    let boxed = PARKED.with(|p| {
        let mut p = p.borrow_mut();
        let boxed = p.try_remove(key);
        // Give back the memory of a past burst once everything came home.
        if p.is_empty() && p.capacity() > 4096 {
            *p = Slab::new();
        }
        boxed
    })?;
    boxed.downcast::<T>().ok().map(|b| *b)
}

// ---- the public functions ----

/// Runs `f` on the reactor's default pool; the returned Deferred fires on the
/// reactor thread with its result, or with a [`crate::PanicError`] failure
/// carrying the panic message. Call on the reactor thread.
///
/// ```
/// use torsion_core::{threads::defer_to_thread, Reactor};
/// let reactor = Reactor::new().unwrap();
/// let r = reactor.clone();
/// defer_to_thread(&reactor, || -> u32 { panic!("bad input") }).finally(move |res| {
///     assert!(res.unwrap_err().to_string().contains("bad input"));
///     r.stop().unwrap();
/// });
/// reactor.run().unwrap();
/// ```
pub fn defer_to_thread<T: Send + 'static>(
    reactor: &Reactor,
    f: impl FnOnce() -> T + Send + 'static,
) -> Deferred<T> {
    defer_to_thread_pool(&reactor.thread_pool(), f)
}

/// Runs `f` on `pool`; the returned Deferred fires on the pool's reactor
/// thread. If the pool stops before `f` runs, it fails with
/// [`ThreadPoolError::Stopped`]. Must be called on the reactor thread (the
/// Deferred lives there); elsewhere it fails with
/// [`ThreadPoolError::NotReactorThread`].
pub fn defer_to_thread_pool<T: Send + 'static>(
    pool: &ThreadPool,
    f: impl FnOnce() -> T + Send + 'static,
) -> Deferred<T> {
    let handle = pool.shared.handle.clone();
    if !handle.is_reactor_thread() {
        return Deferred::fail(ThreadPoolError::NotReactorThread);
    }
    let d = Deferred::new();
    let id = park(d.clone());
    let job = Job::new(move |stopped| {
        let result = match stopped {
            None => catch(f),
            Some(failure) => Err(failure),
        };
        handle.call_from_thread(move || {
            if let Some(d) = take::<Deferred<T>>(id) {
                // A cancelled Deferred ignores the late result.
                let _ = d.fire(result);
            }
        });
    });
    if let Err(mut job) = pool.try_submit(job) {
        // Refused on the reactor thread: fail now rather than through a
        // reactor turn that may never come (the reactor has stopped).
        job.0 = None;
        take::<Deferred<T>>(id);
        let _ = d.errback(ThreadPoolError::Stopped);
    }
    d
}

/// Runs `f` on the reactor's default pool, fire and forget; a panic is logged.
pub fn call_in_thread(reactor: &Reactor, f: impl FnOnce() + Send + 'static) {
    reactor.thread_pool().call_in_thread(f)
}

/// From a non-reactor thread (typically a pool thread): runs `f` on the
/// reactor thread, waits for the Deferred (or value) it returns, and gives
/// back its result. On the reactor thread itself it returns
/// [`ThreadPoolError::OnReactorThread`] at once instead of deadlocking.
///
/// ```
/// use torsion_core::{threads::{blocking_call_from_thread, defer_to_thread}, Deferred, Failure, Reactor};
/// let reactor = Reactor::new().unwrap();
/// let handle = reactor.handle();
/// let r = reactor.clone();
/// defer_to_thread(&reactor, move || {
///     blocking_call_from_thread(&handle, || Ok::<_, Failure>(6 * 7))
/// })
/// .finally(move |res| {
///     assert_eq!(res.unwrap().unwrap(), 42);
///     r.stop().unwrap();
/// });
/// reactor.run().unwrap();
/// ```
pub fn blocking_call_from_thread<T, R, F>(handle: &ReactorHandle, f: F) -> Result<T, Failure>
where
    T: Send + 'static,
    R: IntoDeferred<T>,
    F: FnOnce() -> R + Send + 'static,
{
    if handle.is_reactor_thread() {
        return Err(Failure::new(ThreadPoolError::OnReactorThread));
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<T, Failure>>(1);
    handle.call_from_thread(move || {
        maybe_deferred(f).finally(move |r| {
            let _ = tx.send(r);
        });
    });
    // If the reactor drops the call unrun, `tx` is dropped and recv fails.
    rx.recv()
        .unwrap_or_else(|_| Err(Failure::new(ThreadPoolError::ReactorGone)))
}

/// A thread pool size suited to this machine for blocking I/O work:
/// a few threads per CPU, at least 4, at most 64.
pub fn suggested_pool_size() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cpus * 4).clamp(4, 64)
}

impl Reactor {
    /// The reactor's default thread pool (created on first use, named
    /// `torsion-pool-N`, 0..=10 threads), stopped when the reactor shuts down.
    pub fn thread_pool(&self) -> ThreadPool {
        if let Some(p) = self.inner.thread_pool.borrow().as_ref() {
            return p.clone();
        }
        let pool = ThreadPool::builder().build(self);
        *self.inner.thread_pool.borrow_mut() = Some(pool.clone());
        pool
    }

    /// Sets the maximum size of the default pool (Twisted's `suggestThreadPoolSize`).
    ///
    /// ```
    /// let reactor = torsion_core::Reactor::new().unwrap();
    /// reactor.suggest_thread_pool_size(3);
    /// assert_eq!(reactor.thread_pool().size(), (0, 3));
    /// ```
    pub fn suggest_thread_pool_size(&self, max: usize) {
        let pool = self.thread_pool();
        let (min, _) = pool.size();
        pool.adjust_size(min, max);
    }
}

/// Sets the maximum size of `reactor`'s default pool (free-function form of
/// [`Reactor::suggest_thread_pool_size`]).
pub fn suggest_thread_pool_size(reactor: &Reactor, max: usize) {
    reactor.suggest_thread_pool_size(max)
}
