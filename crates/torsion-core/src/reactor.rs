//! The reactor: one event loop per thread over the OS poller.
//!
//! The reactor owns every source registered with it (listening ports,
//! connections, pipes) in a slab keyed by poller token. While it runs user
//! code it holds no borrow of its own tables: a source is looked up, its `Rc`
//! cloned, the borrow released, and only then is the source called. Sources
//! removed during a batch of events keep their slab slot until the batch
//! ends, so a stale event can never reach a newcomer that reused the token.
//!
//! Writes made by protocols are buffered on their connection and the
//! connection is queued on the reactor's *dirty* list; the reactor flushes
//! that list after every dispatch step, so several small writes from one
//! callback leave in one `writev`, and closes requested inside a callback
//! happen only once the callback has returned.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Registry, Token};
use slab::Slab;

use crate::deferred::Deferred;
use crate::error::ReactorError;
use crate::failure::{catch, Failure};
use crate::task::Executor;
use crate::time::{Clock, DelayedCall, SharedTimers, TimerQueue};

const WAKER_TOKEN: Token = Token(usize::MAX);
const SIGNAL_TOKEN: Token = Token(usize::MAX - 1);
/// Size of the one read buffer each reactor owns; idle connections hold none.
pub(crate) const READ_BUFFER_SIZE: usize = 64 * 1024;

/// Readiness reported for a source.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Readiness {
    pub readable: bool,
    pub writable: bool,
}

/// Something registered with the poller.
pub(crate) trait Source {
    /// The poller reported readiness (or a pending read turn came up).
    fn ready(self: Rc<Self>, reactor: &Reactor, readiness: Readiness);
    /// Writes were queued or a close was requested: flush and settle.
    fn settle(self: Rc<Self>, _reactor: &Reactor) {}
    /// The reactor is shutting down: close gracefully.
    fn shutdown(self: Rc<Self>, _reactor: &Reactor) {}
    /// True for connections (counted while draining at shutdown).
    fn is_connection(&self) -> bool {
        false
    }
    /// Shutdown's grace period is over: close now, dropping unsent data.
    fn force_close(self: Rc<Self>, _reactor: &Reactor) {}
    /// The reactor itself is being dropped without having shut down: release
    /// the socket now (a protocol holding its own transport would otherwise
    /// keep it alive in a cycle).
    fn reactor_dropped(self: Rc<Self>) {}
}

/// Phases of a system event, as in Twisted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Before the event: services flush and close; Deferreds returned here are awaited.
    Before,
    /// The event itself (the reactor closes ports and connections during shutdown).
    During,
    /// After the event.
    After,
}

/// System events triggers can hang on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemEvent {
    /// The reactor starts running.
    Startup,
    /// The reactor is stopping.
    Shutdown,
}

/// Identifies a trigger for `remove_system_event_trigger`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerId(u64);

type Trigger = Box<dyn FnOnce() -> Option<Deferred<()>>>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum RunState {
    Idle,
    Running,
    Stopping,
    Stopped,
}

/// Cross-thread queue: closures from other threads, and the poller wake-up.
pub(crate) struct Remote {
    queue: Mutex<Vec<Box<dyn FnOnce() + Send>>>,
    pending: AtomicBool,
    waker: mio::Waker,
    pub(crate) thread: ThreadId,
    /// A host loop drives the reactor and no turn is running: wakes on the
    /// reactor thread (a task woken from a host loop's callback) must wake
    /// the poller too, or the host loop would not know to take a turn.
    pub(crate) idle_hosted: AtomicBool,
}

impl Remote {
    pub(crate) fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                tracing::error!(error = %e, "could not wake the reactor");
            }
        }
    }
}

pub(crate) struct Inner {
    poll: RefCell<Poll>,
    pub(crate) registry: Registry,
    events: RefCell<Events>,
    sources: RefCell<Slab<Rc<dyn Source>>>,
    retired: RefCell<Vec<usize>>,
    /// Reused each turn for the copied-out batch of poller events.
    batch: RefCell<Vec<(Token, Readiness, bool)>>,
    timers: SharedTimers,
    now_fn: Rc<dyn Fn() -> Duration>,
    /// The clock as first read during this turn, and that turn's number
    /// (see `turn_now`); the number goes up when a poll returns.
    turn_clock: Cell<(u64, Duration)>,
    turns: Cell<u64>,
    soon: RefCell<VecDeque<Box<dyn FnOnce()>>>,
    pub(crate) remote: Arc<Remote>,
    read_buf: RefCell<Vec<u8>>,
    dirty: RefCell<VecDeque<Rc<dyn Source>>>,
    pending_io: RefCell<VecDeque<Rc<dyn Source>>>,
    state: Cell<RunState>,
    stop_requested: Cell<bool>,
    in_iterate: Cell<bool>,
    triggers: RefCell<Vec<(TriggerId, SystemEvent, Phase, Trigger)>>,
    next_trigger: Cell<u64>,
    when_running: RefCell<Vec<Box<dyn FnOnce()>>>,
    pub(crate) executor: Executor,
    signals: RefCell<Option<crate::sys::SignalPipe>>,
    shutdown_grace: Cell<Duration>,
    trigger_timeout: Cell<Option<Duration>>,
    /// The foreign event loop driving this reactor, if one is attached (see `hostloop`).
    host: RefCell<Option<Rc<dyn crate::hostloop::HostLoop>>>,
    hosted: Cell<bool>,
    /// Whether the event being dispatched reported the peer's end closed
    /// (EPOLLRDHUP/HUP): a short read then does not prove the socket drained.
    event_read_closed: Cell<bool>,
    /// The default thread pool, created on first use (see `threads.rs`).
    pub(crate) thread_pool: RefCell<Option<crate::threads::ThreadPool>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let sources: Vec<Rc<dyn Source>> = self.sources.get_mut().drain().collect();
        self.dirty.get_mut().clear();
        self.pending_io.get_mut().clear();
        for s in sources {
            s.reactor_dropped();
        }
    }
}

/// A handle on the event loop of the current thread. Cheap to clone; `!Send`.
///
/// ```
/// use std::time::Duration;
/// use torsion_core::Reactor;
/// let reactor = Reactor::new().unwrap();
/// let r = reactor.clone();
/// reactor.call_later(Duration::from_millis(10), move || r.stop().unwrap());
/// reactor.run().unwrap();
/// ```
#[derive(Clone)]
pub struct Reactor {
    pub(crate) inner: Rc<Inner>,
}

impl fmt::Debug for Reactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor")
            .field("state", &self.inner.state.get())
            .field("sources", &self.inner.sources.borrow().len())
            .field("timers", &self.inner.timers.borrow().len())
            .finish()
    }
}

/// The `Send + Clone` piece of a reactor that other threads use.
///
/// ```
/// use torsion_core::Reactor;
/// let reactor = Reactor::new().unwrap();
/// let handle = reactor.handle();
/// let r = reactor.clone();
/// std::thread::spawn(move || {
///     handle.call_from_thread(|| println!("on the reactor thread"));
/// });
/// # let h = reactor.handle();
/// # reactor.call_later(std::time::Duration::from_millis(50), move || { let _ = r.stop(); });
/// reactor.run().unwrap();
/// ```
#[derive(Clone)]
pub struct ReactorHandle {
    remote: Arc<Remote>,
}

impl fmt::Debug for ReactorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReactorHandle")
    }
}

impl ReactorHandle {
    /// Queues `f` to run on the reactor's thread and wakes its poller.
    /// Safe from any number of threads.
    pub fn call_from_thread(&self, f: impl FnOnce() + Send + 'static) {
        self.remote
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(f));
        self.remote.wake();
    }

    /// True when called on the reactor's own thread.
    pub fn is_reactor_thread(&self) -> bool {
        std::thread::current().id() == self.remote.thread
    }
}

impl Reactor {
    /// A new reactor for the current thread.
    pub fn new() -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = mio::Waker::new(poll.registry(), WAKER_TOKEN)?;
        let start = Instant::now();
        let now_fn: Rc<dyn Fn() -> Duration> = Rc::new(move || start.elapsed());
        let remote = Arc::new(Remote {
            queue: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
            waker,
            thread: std::thread::current().id(),
            idle_hosted: AtomicBool::new(false),
        });
        let executor = Executor::new(remote.clone());
        let reactor = Reactor {
            inner: Rc::new(Inner {
                poll: RefCell::new(poll),
                registry,
                events: RefCell::new(Events::with_capacity(1024)),
                sources: RefCell::new(Slab::new()),
                retired: RefCell::new(Vec::new()),
                batch: RefCell::new(Vec::new()),
                timers: Rc::new(RefCell::new(TimerQueue::default())),
                now_fn,
                turn_clock: Cell::new((u64::MAX, Duration::ZERO)),
                turns: Cell::new(0),
                soon: RefCell::new(VecDeque::new()),
                remote,
                read_buf: RefCell::new(vec![0; READ_BUFFER_SIZE]),
                dirty: RefCell::new(VecDeque::new()),
                pending_io: RefCell::new(VecDeque::new()),
                state: Cell::new(RunState::Idle),
                stop_requested: Cell::new(false),
                in_iterate: Cell::new(false),
                triggers: RefCell::new(Vec::new()),
                next_trigger: Cell::new(0),
                when_running: RefCell::new(Vec::new()),
                executor,
                signals: RefCell::new(None),
                shutdown_grace: Cell::new(Duration::from_secs(5)),
                trigger_timeout: Cell::new(Some(Duration::from_secs(30))),
                host: RefCell::new(None),
                hosted: Cell::new(false),
                event_read_closed: Cell::new(false),
                thread_pool: RefCell::new(None),
            }),
        };
        // A timer moved earlier from a host loop's own callback must re-arm
        // the host's timer, or it would fire at its old deadline.
        let weak = reactor.downgrade();
        reactor.inner.timers.borrow_mut().on_reschedule = Some(Rc::new(move || {
            if let Some(inner) = weak.upgrade() {
                Reactor::from_inner(inner).kick_host();
            }
        }));
        Ok(reactor)
    }

    pub(crate) fn from_inner(inner: Rc<Inner>) -> Reactor {
        Reactor { inner }
    }

    pub(crate) fn downgrade(&self) -> Weak<Inner> {
        Rc::downgrade(&self.inner)
    }

    /// The `Send` handle for other threads.
    pub fn handle(&self) -> ReactorHandle {
        ReactorHandle {
            remote: self.inner.remote.clone(),
        }
    }

    // ---- time ----

    /// Runs `f` once after `delay`.
    pub fn call_later(&self, delay: Duration, f: impl FnOnce() + 'static) -> DelayedCall {
        self.kick_host();
        DelayedCall::schedule(
            &self.inner.timers,
            self.inner.now_fn.clone(),
            delay,
            Box::new(f),
        )
    }

    /// Runs `f` on the next turn of the loop, after the current callback returns.
    pub fn call_soon(&self, f: impl FnOnce() + 'static) {
        self.kick_host();
        self.inner.soon.borrow_mut().push_back(Box::new(f));
    }

    /// Seconds since the reactor was created.
    pub fn seconds(&self) -> f64 {
        self.now().as_secs_f64()
    }

    /// Time since the reactor was created (the time line of `DelayedCall::time`).
    pub fn now(&self) -> Duration {
        (self.inner.now_fn)()
    }

    /// [`now`](Self::now) read once per turn of the loop: the first call
    /// after the poller returns reads the clock, later calls in the same
    /// turn return that reading (libuv's `uv_now`). For what needs the time
    /// often but to within a turn, such as a `Date` header or an idle
    /// deadline, at the cost of one clock read per turn, not per call.
    ///
    /// ```
    /// let reactor = torsion_core::Reactor::new()?;
    /// let a = reactor.turn_now();
    /// assert_eq!(reactor.turn_now(), a); // the same turn
    /// reactor.iterate(Some(std::time::Duration::from_millis(5)))?;
    /// assert!(reactor.turn_now() >= a + std::time::Duration::from_millis(5));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn turn_now(&self) -> Duration {
        let turn = self.inner.turns.get();
        let (at, t) = self.inner.turn_clock.get();
        if at == turn {
            return t;
        }
        let t = self.now();
        self.inner.turn_clock.set((turn, t));
        t
    }

    /// Runs `f` once the reactor is running (at once if it already is).
    pub fn call_when_running(&self, f: impl FnOnce() + 'static) {
        if self.inner.state.get() == RunState::Running {
            self.call_soon(f);
        } else {
            self.inner.when_running.borrow_mut().push(Box::new(f));
        }
    }

    // ---- system events ----

    /// Adds a trigger for a phase of a system event. A trigger may return a
    /// Deferred; the reactor waits for all of a phase's Deferreds before the
    /// next phase.
    ///
    /// ```
    /// use torsion_core::{Reactor, Phase, SystemEvent};
    /// let reactor = Reactor::new().unwrap();
    /// reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, || {
    ///     println!("flushing");
    ///     None
    /// });
    /// ```
    pub fn add_system_event_trigger(
        &self,
        phase: Phase,
        event: SystemEvent,
        f: impl FnOnce() -> Option<Deferred<()>> + 'static,
    ) -> TriggerId {
        let id = TriggerId(self.inner.next_trigger.get());
        self.inner.next_trigger.set(id.0 + 1);
        self.inner
            .triggers
            .borrow_mut()
            .push((id, event, phase, Box::new(f)));
        id
    }

    /// Removes a trigger; false when it already ran or never existed.
    pub fn remove_system_event_trigger(&self, id: TriggerId) -> bool {
        let mut t = self.inner.triggers.borrow_mut();
        let before = t.len();
        t.retain(|(i, ..)| *i != id);
        t.len() != before
    }

    /// How long shutdown waits for connections to flush and close before aborting them.
    pub fn set_shutdown_grace(&self, grace: Duration) {
        self.inner.shutdown_grace.set(grace);
    }

    /// How long shutdown waits, in all, for the Deferreds returned by
    /// shutdown triggers (30 s by default). `None` waits for as long as they
    /// take, as Twisted does; a bound keeps a trigger that never fires from
    /// holding the process forever (a warning names how many were left).
    ///
    /// ```
    /// use std::time::Duration;
    /// use torsion_core::{Deferred, Phase, Reactor, SystemEvent};
    ///
    /// let reactor = Reactor::new().unwrap();
    /// reactor.set_shutdown_trigger_timeout(Some(Duration::from_millis(50)));
    /// // A trigger whose Deferred never fires: shutdown gives up after 50 ms.
    /// reactor.add_system_event_trigger(Phase::Before, SystemEvent::Shutdown, || {
    ///     Some(Deferred::<()>::new())
    /// });
    /// let r = reactor.clone();
    /// reactor.call_soon(move || { let _ = r.stop(); });
    /// let t0 = std::time::Instant::now();
    /// reactor.run().unwrap();
    /// assert!(t0.elapsed() < Duration::from_secs(10));
    /// ```
    pub fn set_shutdown_trigger_timeout(&self, timeout: Option<Duration>) {
        self.inner.trigger_timeout.set(timeout);
    }

    fn fire_phase(&self, event: SystemEvent, phase: Phase) -> Vec<Deferred<()>> {
        let mine: Vec<Trigger> = {
            let mut all = self.inner.triggers.borrow_mut();
            let mut taken = Vec::new();
            let mut i = 0;
            while i < all.len() {
                if all[i].1 == event && all[i].2 == phase {
                    taken.push(all.remove(i).3);
                } else {
                    i += 1;
                }
            }
            taken
        };
        let mut waits = Vec::new();
        for t in mine {
            match catch(t) {
                Ok(Some(d)) => waits.push(d),
                Ok(None) => {}
                Err(f) => {
                    tracing::error!(failure = %f, ?event, ?phase, "system event trigger panicked")
                }
            }
        }
        self.flush_dirty();
        waits
    }

    /// Iterates until every Deferred in `waits` has fired (or the deadline passes).
    fn wait_all(
        &self,
        waits: Vec<Deferred<()>>,
        deadline: Option<Duration>,
    ) -> Result<(), ReactorError> {
        let left = Rc::new(Cell::new(waits.len()));
        for d in waits {
            let left = left.clone();
            d.finally(move |r| {
                if let Err(f) = r {
                    tracing::error!(failure = %f, "shutdown trigger failed");
                }
                left.set(left.get() - 1);
            });
        }
        while left.get() > 0 {
            if deadline.is_some_and(|d| self.now() >= d) {
                tracing::warn!(
                    remaining = left.get(),
                    "gave up waiting for shutdown triggers"
                );
                break;
            }
            self.turn(Some(Duration::from_millis(100)))?;
        }
        Ok(())
    }

    // ---- running ----

    /// Runs the loop until `stop()` is called and shutdown completes.
    /// With a host loop attached (see [`crate::hostloop`]), runs the host
    /// loop instead; `stop()` then quits it.
    pub fn run(&self) -> Result<(), ReactorError> {
        let host = self.inner.host.borrow().clone();
        if let Some(host) = &host {
            host.check_run(self)?;
        }
        self.start_running()?;
        match host {
            Some(host) => {
                // Shut down even when the host loop failed: never leave the
                // reactor marked as running with nothing driving it.
                let ran = host.run(self);
                let done = self.shutdown_sequence();
                ran.and(done)
            }
            None => {
                while !self.inner.stop_requested.get() {
                    self.turn(None)?;
                }
                self.shutdown_sequence()
            }
        }
    }

    /// The first half of `run()` for a foreign loop that runs on its own:
    /// fires the startup triggers and queues `call_when_running` calls.
    /// Pair it with [`Reactor::finish_running`] once the foreign loop returns.
    pub fn start_running(&self) -> Result<(), ReactorError> {
        if self.inner.in_iterate.get() {
            return Err(ReactorError::Reentrant);
        }
        match self.inner.state.get() {
            RunState::Running | RunState::Stopping => return Err(ReactorError::AlreadyRunning),
            RunState::Idle | RunState::Stopped => {}
        }
        self.inner.state.set(RunState::Running);
        self.inner.stop_requested.set(false);
        let startup = {
            let mut waits = self.fire_phase(SystemEvent::Startup, Phase::Before);
            waits.extend(self.fire_phase(SystemEvent::Startup, Phase::During));
            waits
        };
        self.wait_all(startup, None)?;
        for f in std::mem::take(&mut *self.inner.when_running.borrow_mut()) {
            self.inner.soon.borrow_mut().push_back(f);
        }
        let _ = self.fire_phase(SystemEvent::Startup, Phase::After);
        Ok(())
    }

    /// The second half of `run()` for a foreign loop: runs the shutdown
    /// sequence (triggers, then closing ports and connections, which see
    /// `connection_lost`) on the reactor's own poller, whether or not
    /// `stop()` was called. Blocks for at most the shutdown grace period
    /// plus what shutdown triggers take.
    pub fn finish_running(&self) -> Result<(), ReactorError> {
        if self.inner.state.get() != RunState::Running {
            return Err(ReactorError::NotRunning);
        }
        self.inner.stop_requested.set(true);
        self.shutdown_sequence()
    }

    /// Attaches the foreign loop that drives this reactor; fails when one
    /// already is. Integration crates call this (through `hostloop::HostDriver`).
    pub(crate) fn attach_host(
        &self,
        host: Rc<dyn crate::hostloop::HostLoop>,
    ) -> Result<(), crate::hostloop::HostLoopError> {
        let mut slot = self.inner.host.borrow_mut();
        if slot.is_some() {
            return Err(crate::hostloop::HostLoopError::AlreadyAttached);
        }
        *slot = Some(host);
        self.inner.hosted.set(true);
        self.inner.remote.idle_hosted.store(true, Ordering::Release);
        Ok(())
    }

    pub(crate) fn detach_host(&self) {
        self.inner.hosted.set(false);
        self.inner
            .remote
            .idle_hosted
            .store(false, Ordering::Release);
        let old = self.inner.host.borrow_mut().take();
        drop(old);
    }

    /// Work queued from outside a turn (a host loop's own callback scheduled
    /// a timer or wrote to a transport): wake the poller so the host loop
    /// takes a turn and re-arms its timer. Inside a turn the driver re-plans
    /// afterwards anyway, so the hot path pays one `Cell` read.
    pub(crate) fn kick_host(&self) {
        if self.inner.hosted.get() && !self.inner.in_iterate.get() {
            self.inner.remote.wake();
        }
    }

    /// True when a foreign loop drives this reactor.
    pub fn has_host_loop(&self) -> bool {
        self.inner.host.borrow().is_some()
    }

    fn shutdown_sequence(&self) -> Result<(), ReactorError> {
        self.inner.state.set(RunState::Stopping);
        let limit = self.inner.trigger_timeout.get().map(|t| self.now() + t);
        let w = self.fire_phase(SystemEvent::Shutdown, Phase::Before);
        self.wait_all(w, limit)?;
        let w = self.fire_phase(SystemEvent::Shutdown, Phase::During);
        self.wait_all(w, limit)?;
        // Close ports and connections gracefully, then wait a bounded time for them to go.
        let sources: Vec<Rc<dyn Source>> = self
            .inner
            .sources
            .borrow()
            .iter()
            .map(|(_, s)| s.clone())
            .collect();
        for s in sources {
            s.shutdown(self);
        }
        self.flush_dirty();
        let grace_end = self.now() + self.inner.shutdown_grace.get();
        while self.connection_count() > 0 && self.now() < grace_end {
            self.turn(Some(Duration::from_millis(50)))?;
        }
        // Whatever could not flush in time is aborted, so every protocol still
        // hears connection_lost and no socket outlives the loop.
        let stuck: Vec<Rc<dyn Source>> = self
            .inner
            .sources
            .borrow()
            .iter()
            .map(|(_, s)| s.clone())
            .collect();
        for s in stuck {
            s.force_close(self);
        }
        self.flush_dirty();
        self.retire();
        let w = self.fire_phase(SystemEvent::Shutdown, Phase::After);
        self.wait_all(w, limit)?;
        self.inner.state.set(RunState::Stopped);
        Ok(())
    }

    fn connection_count(&self) -> usize {
        self.inner
            .sources
            .borrow()
            .iter()
            .filter(|(_, s)| s.is_connection())
            .count()
    }

    /// Asks the running loop to stop; shutdown triggers run, then `run()` returns.
    pub fn stop(&self) -> Result<(), ReactorError> {
        match self.inner.state.get() {
            RunState::Running => {
                if self.inner.stop_requested.get() {
                    return Err(ReactorError::NotRunning);
                }
                self.inner.stop_requested.set(true);
                self.inner.remote.wake();
                let host = self.inner.host.borrow().clone();
                if let Some(host) = host {
                    host.quit();
                }
                Ok(())
            }
            _ => Err(ReactorError::NotRunning),
        }
    }

    /// True while `run()` is running (and not yet stopping).
    pub fn is_running(&self) -> bool {
        self.inner.state.get() == RunState::Running && !self.inner.stop_requested.get()
    }

    /// Stops the reactor gracefully on SIGINT or SIGTERM.
    pub fn install_signal_handlers(&self) -> Result<(), ReactorError> {
        let pipe = crate::sys::SignalPipe::install(&[libc::SIGINT, libc::SIGTERM])
            .map_err(ReactorError::Signals)?;
        self.inner
            .registry
            .register(&mut pipe.source(), SIGNAL_TOKEN, Interest::READABLE)
            .map_err(ReactorError::Signals)?;
        *self.inner.signals.borrow_mut() = Some(pipe);
        Ok(())
    }

    /// Runs one turn of the loop: waits up to `timeout` (`None`: until
    /// something happens) for I/O, dispatches it, then runs due timers and
    /// queued calls. This and `as_raw_fd`/`next_timeout` are what a foreign
    /// event loop needs.
    pub fn iterate(&self, timeout: Option<Duration>) -> Result<(), ReactorError> {
        self.turn(timeout)
    }

    /// The poller's file descriptor: readable when the reactor has I/O to
    /// dispatch. Watch it from a foreign loop and call `iterate(Some(ZERO))`.
    pub fn as_raw_fd(&self) -> RawFd {
        self.inner.poll.borrow().as_raw_fd()
    }

    /// How long until the reactor needs a turn even with no I/O: zero when
    /// calls are queued, the time to the next timer, or `None`.
    pub fn next_timeout(&self) -> Option<Duration> {
        if self.has_immediate_work() {
            return Some(Duration::ZERO);
        }
        let next = self.inner.timers.borrow_mut().next_deadline()?;
        Some(next.saturating_sub(self.now()))
    }

    fn has_immediate_work(&self) -> bool {
        !self.inner.soon.borrow().is_empty()
            || !self.inner.pending_io.borrow().is_empty()
            || !self.inner.dirty.borrow().is_empty()
            || self.inner.executor.has_ready()
            || self.inner.stop_requested.get() && self.inner.state.get() == RunState::Running
    }

    fn turn(&self, timeout: Option<Duration>) -> Result<(), ReactorError> {
        if self.inner.in_iterate.replace(true) {
            return Err(ReactorError::Reentrant);
        }
        struct Guard<'a>(&'a Cell<bool>);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                self.0.set(false);
            }
        }
        let _guard = Guard(&self.inner.in_iterate);
        struct HostedGuard<'a>(Option<&'a AtomicBool>);
        impl Drop for HostedGuard<'_> {
            fn drop(&mut self) {
                if let Some(idle) = self.0 {
                    idle.store(true, Ordering::Release);
                }
            }
        }
        let hosted = self.inner.hosted.get();
        if hosted {
            self.inner
                .remote
                .idle_hosted
                .store(false, Ordering::Release);
        }
        let _hosted_guard = HostedGuard(hosted.then_some(&self.inner.remote.idle_hosted));

        let mut wait = match (timeout, self.next_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if self.inner.remote.pending.load(Ordering::Acquire) {
            wait = Some(Duration::ZERO);
        }
        // Round up to whole milliseconds so a timer due in 0.3 ms does not
        // make us spin with zero-timeout polls.
        let wait = wait.map(|d| {
            if d.is_zero() {
                d
            } else {
                // Capped: the poller takes an i32 of milliseconds anyway.
                let ms = d.as_millis().clamp(1, i32::MAX as u128) as u64;
                Duration::from_millis(ms + u64::from(d.subsec_nanos() % 1_000_000 != 0))
            }
        });
        let mut events = self.inner.events.borrow_mut();
        match self.inner.poll.borrow_mut().poll(&mut events, wait) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReactorError::Io(e)),
        }
        // Copy the batch out so user callbacks never run under the events
        // borrow, into a Vec the reactor keeps from turn to turn (turns do
        // not nest: `in_iterate` guards that), so a turn allocates nothing.
        // A new turn: `turn_now` reads the clock again when first asked.
        self.inner.turns.set(self.inner.turns.get().wrapping_add(1));
        let mut batch = std::mem::take(&mut *self.inner.batch.borrow_mut());
        batch.extend(events.iter().map(|e| {
            (
                e.token(),
                Readiness {
                    readable: e.is_readable() || e.is_read_closed() || e.is_error(),
                    writable: e.is_writable() || e.is_write_closed(),
                },
                e.is_read_closed() || e.is_error(),
            )
        }));
        drop(events);

        for &(token, readiness, read_closed) in &batch {
            match token {
                WAKER_TOKEN => {}
                SIGNAL_TOKEN => self.handle_signals(),
                Token(key) => {
                    let source = self.inner.sources.borrow().get(key).cloned();
                    if let Some(source) = source {
                        self.inner.event_read_closed.set(read_closed);
                        source.ready(self, readiness);
                        self.inner.event_read_closed.set(false);
                        self.flush_dirty();
                    }
                }
            }
        }
        batch.clear();
        *self.inner.batch.borrow_mut() = batch;
        self.retire();

        // Sources that stopped reading to be fair to others, or were resumed.
        if !self.inner.pending_io.borrow().is_empty() {
            let pending: Vec<Rc<dyn Source>> =
                self.inner.pending_io.borrow_mut().drain(..).collect();
            for s in pending {
                s.ready(
                    self,
                    Readiness {
                        readable: true,
                        writable: false,
                    },
                );
                self.flush_dirty();
            }
            self.retire();
        }

        self.run_remote();
        self.run_timers();
        self.run_soon();
        self.inner.executor.run_ready();
        self.flush_dirty();
        self.retire();
        Ok(())
    }

    fn handle_signals(&self) {
        let got = self
            .inner
            .signals
            .borrow_mut()
            .as_mut()
            .map(|p| p.drain())
            .unwrap_or_default();
        for sig in got {
            tracing::info!(signal = sig, "received signal; stopping the reactor");
            let _ = self.stop();
        }
    }

    fn run_remote(&self) {
        if !self.inner.remote.pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let queued = std::mem::take(
            &mut *self
                .inner
                .remote
                .queue
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for f in queued {
            if let Err(f) = catch(f) {
                tracing::error!(failure = %f, "call_from_thread callback panicked");
            }
            self.flush_dirty();
        }
    }

    fn run_timers(&self) {
        // No clock read on turns without timers.
        if self.inner.timers.borrow_mut().next_deadline().is_none() {
            return;
        }
        let now = self.now();
        loop {
            let due = self.inner.timers.borrow_mut().pop_due(now);
            let Some(f) = due else { break };
            if let Err(f) = catch(f) {
                tracing::error!(failure = %f, "timed call panicked");
            }
            self.flush_dirty();
        }
    }

    fn run_soon(&self) {
        // Only what is queued now: calls queued by these calls wait for the next turn.
        let n = self.inner.soon.borrow().len();
        for _ in 0..n {
            let f = self.inner.soon.borrow_mut().pop_front();
            let Some(f) = f else { break };
            if let Err(f) = catch(f) {
                tracing::error!(failure = %f, "call_soon callback panicked");
            }
            self.flush_dirty();
        }
    }

    // ---- plumbing for sources ----

    pub(crate) fn register_source(
        &self,
        io: &mut impl mio::event::Source,
        interest: Interest,
        make: impl FnOnce(usize) -> Rc<dyn Source>,
    ) -> io::Result<usize> {
        let mut sources = self.inner.sources.borrow_mut();
        let entry = sources.vacant_entry();
        let key = entry.key();
        self.inner.registry.register(io, Token(key), interest)?;
        entry.insert(make(key));
        Ok(key)
    }

    /// Replaces the source at `key` (a connecting socket becoming a connection).
    pub(crate) fn replace_source(&self, key: usize, source: Rc<dyn Source>) {
        if let Some(slot) = self.inner.sources.borrow_mut().get_mut(key) {
            *slot = source;
        }
    }

    /// Frees `key` once the current batch of events is done.
    pub(crate) fn retire_source(&self, key: usize) {
        self.inner.retired.borrow_mut().push(key);
    }

    fn retire(&self) {
        if self.inner.retired.borrow().is_empty() {
            return;
        }
        let keys: Vec<usize> = std::mem::take(&mut *self.inner.retired.borrow_mut());
        let mut sources = self.inner.sources.borrow_mut();
        let mut dropped = Vec::with_capacity(keys.len());
        for &k in &keys {
            if sources.contains(k) {
                dropped.push(sources.remove(k));
            }
        }
        drop(sources);
        // Sources may run destructors that touch the reactor: drop them unborrowed.
        drop(dropped);
        // Hand the key list back (with its allocation) unless a destructor queued more.
        let mut retired = self.inner.retired.borrow_mut();
        if retired.is_empty() {
            let mut keys = keys;
            keys.clear();
            *retired = keys;
        }
    }

    pub(crate) fn mark_dirty(&self, source: Rc<dyn Source>) {
        self.kick_host();
        self.inner.dirty.borrow_mut().push_back(source);
    }

    /// True while dispatching an event that reported the peer's sending side
    /// closed: a reader must then read until EOF even after a short read.
    pub(crate) fn event_read_closed(&self) -> bool {
        self.inner.event_read_closed.get()
    }

    pub(crate) fn want_read_turn(&self, source: Rc<dyn Source>) {
        self.kick_host();
        self.inner.pending_io.borrow_mut().push_back(source);
    }

    pub(crate) fn flush_dirty(&self) {
        // One at a time, in the order they were marked; sources marked while
        // settling join the back of the queue. The queue keeps its allocation.
        loop {
            let next = self.inner.dirty.borrow_mut().pop_front();
            let Some(s) = next else { return };
            s.settle(self);
        }
    }

    /// Borrows the reactor's one read buffer for the duration of `f`.
    /// A nested use (a source read from inside another's callback) gets a
    /// temporary buffer instead of failing.
    pub(crate) fn with_read_buffer<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        // The borrow is held while `f` runs; only a nested use finds it taken.
        match self.inner.read_buf.try_borrow_mut() {
            Ok(mut buf) => f(&mut buf),
            Err(_) => f(&mut vec![0; READ_BUFFER_SIZE]),
        }
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    /// Number of live sources (ports, connections, pipes): useful in tests.
    pub fn source_count(&self) -> usize {
        self.inner.sources.borrow().len()
    }
}

impl Clock for Reactor {
    fn now(&self) -> Duration {
        Reactor::now(self)
    }
    fn call_later(&self, delay: Duration, f: Box<dyn FnOnce()>) -> DelayedCall {
        self.kick_host();
        DelayedCall::schedule(&self.inner.timers, self.inner.now_fn.clone(), delay, f)
    }
}

/// Logs a failure that came out of a user callback on a connection.
pub(crate) fn log_callback_failure(what: &str, peer: &crate::Address, failure: &Failure) {
    tracing::error!(peer = %peer, failure = %failure, "{what} panicked; aborting the connection");
}
