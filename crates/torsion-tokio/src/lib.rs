//! # torsion-tokio
//!
//! Runs a Torsion [`Reactor`] inside a tokio current-thread runtime: the
//! reactor's poller fd is watched with [`tokio::io::unix::AsyncFd`], its
//! timers with one [`tokio::time::Sleep`] re-armed after every turn. Torsion
//! protocols and tokio tasks then share one thread.
//!
//! ```
//! use std::time::Duration;
//! use torsion_core::Reactor;
//!
//! let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
//! let local = tokio::task::LocalSet::new();
//! local.block_on(&rt, async {
//!     let reactor = Reactor::new().unwrap();
//!     let host = torsion_tokio::attach(&reactor).unwrap();
//!     let r = reactor.clone();
//!     reactor.call_later(Duration::from_millis(5), move || r.stop().unwrap());
//!     host.run().await.unwrap(); // startup, serve until stop(), shutdown
//! });
//! ```
//!
//! Outside any runtime, `Reactor::run()` on an attached reactor builds a
//! current-thread runtime itself and does the same.

#![warn(missing_docs)]

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;

use torsion_core::hostloop::{HostDriver, HostLoop, HostLoopError, TimerPlan};
use torsion_core::{Deferred, Failure, Reactor, ReactorError};

struct Shared {
    quit: Notify,
    quitting: Cell<bool>,
    /// Weak: the reactor owns the `HostLoop`, the user's `TokioHost` owns the driver.
    driver: RefCell<Weak<HostDriver>>,
}

struct TokioLoop(Rc<Shared>);

impl HostLoop for TokioLoop {
    fn check_run(&self, _reactor: &Reactor) -> Result<(), ReactorError> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(ReactorError::Io(io::Error::other(
                "Reactor::run() inside a tokio runtime: await TokioHost::run() instead",
            )));
        }
        Ok(())
    }

    fn run(&self, reactor: &Reactor) -> Result<(), ReactorError> {
        self.check_run(reactor)?;
        let driver = self
            .0
            .driver
            .borrow()
            .upgrade()
            .ok_or_else(|| ReactorError::Io(io::Error::other("the TokioHost was dropped")))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, drive(&driver, &self.0))?;
        Ok(())
    }

    fn quit(&self) {
        self.0.quitting.set(true);
        self.0.quit.notify_waiters();
    }
}

/// A reactor attached to tokio. Keep it alive while the reactor should be
/// driven by tokio; dropping it detaches the reactor.
#[must_use = "dropping the TokioHost detaches the reactor"]
pub struct TokioHost {
    driver: Rc<HostDriver>,
    shared: Rc<Shared>,
}

impl std::fmt::Debug for TokioHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokioHost")
            .field("quitting", &self.shared.quitting.get())
            .finish()
    }
}

/// Attaches `reactor` to tokio. Fails with [`HostLoopError::AlreadyAttached`]
/// when another host loop (tokio, glib, ...) already drives it.
///
/// ```
/// let reactor = torsion_core::Reactor::new().unwrap();
/// let host = torsion_tokio::attach(&reactor).unwrap();
/// assert!(torsion_tokio::attach(&reactor).is_err());
/// # drop(host);
/// ```
pub fn attach(reactor: &Reactor) -> Result<TokioHost, HostLoopError> {
    let shared = Rc::new(Shared {
        quit: Notify::new(),
        quitting: Cell::new(false),
        driver: RefCell::new(Weak::new()),
    });
    let driver = Rc::new(HostDriver::attach(
        reactor,
        Rc::new(TokioLoop(shared.clone())),
    )?);
    *shared.driver.borrow_mut() = Rc::downgrade(&driver);
    Ok(TokioHost { driver, shared })
}

impl TokioHost {
    /// The driven reactor.
    pub fn reactor(&self) -> &Reactor {
        self.driver.reactor()
    }

    /// Runs the reactor's startup sequence, serves it from the current
    /// tokio runtime until `Reactor::stop()` or [`TokioHost::quit`], then
    /// runs its shutdown sequence (open connections are closed and see
    /// `connection_lost`). Must be awaited on the reactor's thread, inside a
    /// `LocalSet` or a current-thread runtime's `block_on`.
    ///
    /// The shutdown sequence runs on the reactor's own poller and blocks
    /// this thread for at most the reactor's shutdown grace period (other
    /// tokio tasks of this thread wait meanwhile). Dropping this future
    /// before it completes (a `select!` or `timeout` that gives up on it)
    /// runs the shutdown sequence there and then, so the reactor is never
    /// left marked as running with its connections open.
    pub async fn run(&self) -> Result<(), ReactorError> {
        let reactor = self.driver.reactor().clone();
        reactor.start_running()?;
        let mut guard = FinishOnDrop(Some(reactor.clone()));
        let served = drive(&self.driver, &self.shared).await;
        guard.0 = None;
        let finished = reactor.finish_running();
        served?;
        finished
    }

    /// Serves the reactor's I/O and timers until [`TokioHost::quit`],
    /// without its startup and shutdown sequences (the reactor is not
    /// "running", so `Reactor::stop()` does not apply).
    pub async fn serve(&self) -> io::Result<()> {
        drive(&self.driver, &self.shared).await
    }

    /// Makes `run`/`serve` return, as quitting the host loop would; `run`
    /// then shuts the reactor down.
    pub fn quit(&self) {
        self.shared.quitting.set(true);
        self.shared.quit.notify_waiters();
    }
}

/// Finishes a reactor whose `run` future was dropped mid-way.
struct FinishOnDrop(Option<Reactor>);

impl Drop for FinishOnDrop {
    fn drop(&mut self) {
        if let Some(r) = self.0.take() {
            if let Err(e) = r.finish_running() {
                tracing::warn!(error = %e, "shutting down after TokioHost::run was dropped");
            }
        }
    }
}

struct Fd(RawFd);
impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

async fn drive(driver: &HostDriver, shared: &Shared) -> io::Result<()> {
    shared.quitting.set(false);
    // Created here, not at attach time: AsyncFd belongs to the runtime it is
    // polled in.
    // SAFETY: the fd is the reactor's poller, kept open by the `Reactor`
    // the driver holds, which outlives `afd` (a local of this function).
    let afd = unsafe { AsyncFd::register_with_interest(Fd(driver.fd()), Interest::READABLE) }
        .map_err(|e| e.into_parts().1)?;
    let sleep = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(sleep);
    let mut armed = false;
    driver.timer_cancelled();
    let mut plan = driver.dispatch();
    loop {
        match plan {
            TimerPlan::Keep => {}
            TimerPlan::Disarm => armed = false,
            TimerPlan::Arm(d) if d.is_zero() => {
                // Work is queued: let other tokio tasks in, then take a turn.
                if shared.quitting.get() {
                    break;
                }
                tokio::task::yield_now().await;
                plan = driver.timer_fired();
                continue;
            }
            TimerPlan::Arm(d) => {
                sleep.as_mut().reset(tokio::time::Instant::now() + d);
                armed = true;
            }
        }
        if shared.quitting.get() {
            break;
        }
        plan = tokio::select! {
            biased;
            _ = shared.quit.notified() => break,
            ready = afd.readable() => {
                let mut guard = ready?;
                let plan = driver.dispatch();
                // AsyncFd is edge-triggered: keep the readiness while events
                // are left (more than one poll batch, or ones that arrived
                // during the turn), so they are served without new I/O.
                if !driver.fd_readable_now() {
                    guard.clear_ready();
                }
                plan
            }
            _ = &mut sleep, if armed => {
                armed = false;
                driver.timer_fired()
            }
        };
    }
    driver.timer_cancelled();
    Ok(())
}

/// A Deferred as a `!Send` future, for `tokio::task::spawn_local` or
/// `.await` in a `LocalSet`. Dropping the future cancels the Deferred if it
/// has not fired.
///
/// ```
/// use torsion_core::Deferred;
/// let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
/// let local = tokio::task::LocalSet::new();
/// let d = Deferred::new();
/// let fut = torsion_tokio::deferred_to_future(d.clone());
/// local.block_on(&rt, async move {
///     let task = tokio::task::spawn_local(fut);
///     d.callback(5).unwrap();
///     assert_eq!(task.await.unwrap().unwrap(), 5);
/// });
/// ```
pub fn deferred_to_future<T: 'static>(d: Deferred<T>) -> impl Future<Output = Result<T, Failure>> {
    // A Deferred is itself a (!Send) future; this names the conversion for
    // readers coming from tokio.
    d
}

/// Runs a tokio future as a task on the current `LocalSet` and returns a
/// Deferred for its output. Cancelling the Deferred aborts the task.
/// The future may use tokio I/O and timers (it runs in the runtime), and the
/// Deferred fires on this thread.
///
/// # Panics
///
/// Outside a `tokio::task::LocalSet` (as `tokio::task::spawn_local` does).
///
/// ```
/// use std::time::Duration;
/// use torsion_core::Failure;
/// let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
/// let local = tokio::task::LocalSet::new();
/// local.block_on(&rt, async {
///     let d = torsion_tokio::future_to_deferred(async {
///         tokio::time::sleep(Duration::from_millis(1)).await;
///         Ok::<_, Failure>(42)
///     });
///     assert_eq!(d.await.unwrap(), 42);
/// });
/// ```
pub fn future_to_deferred<T: 'static>(
    fut: impl Future<Output = Result<T, Failure>> + 'static,
) -> Deferred<T> {
    let abort: Rc<RefCell<Option<tokio::task::AbortHandle>>> = Rc::default();
    let a = abort.clone();
    let d = Deferred::with_canceller(move |_| {
        if let Some(h) = a.borrow_mut().take() {
            h.abort();
        }
    });
    let out = d.clone();
    let task = tokio::task::spawn_local(async move {
        let r = fut.await;
        if !out.called() {
            let _ = out.fire(r);
        }
    });
    *abort.borrow_mut() = Some(task.abort_handle());
    d
}
