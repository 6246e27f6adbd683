//! Driving a reactor from a foreign event loop (glib, tokio, CFRunLoop, Qt).
//!
//! A foreign ("host") loop needs two things from a reactor: a file
//! descriptor to watch (the poller's; readable whenever I/O or a call from
//! another thread is waiting) and one timer, re-armed after every turn to
//! [`Reactor::next_timeout`]. When either fires it runs one non-blocking
//! turn. [`HostDriver`] is that logic, written once so every integration
//! runs the same tested code path; an integration only translates
//! [`TimerPlan`] into its own timer calls.
//!
//! Lifecycle: an integration implements [`HostLoop`] (`run` until `quit`)
//! and attaches it with [`HostDriver::attach`]. `Reactor::run()` then runs the
//! host loop between the startup and shutdown sequences, and `Reactor::stop()`
//! quits it. Programs whose host loop is run by someone else (a GUI toolkit's
//! `Application::run`) call [`Reactor::start_running`] before and
//! [`Reactor::finish_running`] after it instead.
//!
//! ```
//! use std::rc::Rc;
//! use torsion_core::hostloop::{HostDriver, HostLoop, TimerPlan};
//! use torsion_core::{Reactor, ReactorError};
//!
//! struct Never;
//! impl HostLoop for Never {
//!     fn run(&self, _reactor: &Reactor) -> Result<(), ReactorError> { Ok(()) }
//!     fn quit(&self) {}
//! }
//!
//! let reactor = Reactor::new().unwrap();
//! let driver = HostDriver::attach(&reactor, Rc::new(Never)).unwrap();
//! // A second host loop on the same reactor is refused.
//! assert!(HostDriver::attach(&reactor, Rc::new(Never)).is_err());
//! reactor.call_soon(|| ());
//! assert_eq!(driver.plan(), TimerPlan::Arm(std::time::Duration::ZERO));
//! // After the turn nothing is scheduled: the timer goes.
//! assert_eq!(driver.dispatch(), TimerPlan::Disarm);
//! ```

use std::cell::Cell;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::time::Duration;

use crate::error::ReactorError;
use crate::reactor::Reactor;

/// A foreign event loop that can drive a reactor.
pub trait HostLoop {
    /// Runs the host loop until [`HostLoop::quit`] is called (`Reactor::run`
    /// calls this between its startup and shutdown sequences).
    fn run(&self, reactor: &Reactor) -> Result<(), ReactorError>;
    /// Says whether `run` can work here, before `Reactor::run` starts the
    /// reactor (e.g. tokio cannot block inside a runtime).
    fn check_run(&self, reactor: &Reactor) -> Result<(), ReactorError> {
        let _ = reactor;
        Ok(())
    }
    /// Makes a running `run` return soon. Called by `Reactor::stop`, possibly
    /// from inside a reactor callback that the host loop is dispatching.
    fn quit(&self);
}

/// Errors attaching a host loop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostLoopError {
    /// The reactor is already driven by another host loop; one reactor
    /// belongs to exactly one loop.
    #[error("a host loop is already attached to this reactor")]
    AlreadyAttached,
    /// Setting up the host loop's watches failed.
    #[error("could not set up the host loop: {0}")]
    Setup(#[source] std::io::Error),
}

/// What the integration should do with its one timer after a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerPlan {
    /// The armed timer (or its absence) is still right.
    Keep,
    /// (Re-)arm the timer to fire after this long (already rounded up to
    /// whole milliseconds, so a host timer never fires before the reactor's
    /// deadline and causes an idle spin; zero means "as soon as possible").
    Arm(Duration),
    /// Cancel the timer: nothing is scheduled.
    Disarm,
}

/// The shared driving logic: one per attached host loop. Dropping it
/// detaches the host loop from the reactor.
pub struct HostDriver {
    reactor: Reactor,
    /// Reactor-time deadline of the armed host timer, if any.
    armed: Cell<Option<Duration>>,
}

impl std::fmt::Debug for HostDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostDriver")
            .field("armed", &self.armed.get())
            .finish()
    }
}

/// Two deadlines closer than this are the same for re-arming purposes:
/// host timers have millisecond resolution anyway.
const SAME_DEADLINE: Duration = Duration::from_micros(500);

impl HostDriver {
    /// Attaches `host` to `reactor`. Fails with
    /// [`HostLoopError::AlreadyAttached`] when another host loop drives it.
    pub fn attach(reactor: &Reactor, host: Rc<dyn HostLoop>) -> Result<HostDriver, HostLoopError> {
        reactor.attach_host(host)?;
        Ok(HostDriver {
            reactor: reactor.clone(),
            armed: Cell::new(None),
        })
    }

    /// The reactor being driven.
    pub fn reactor(&self) -> &Reactor {
        &self.reactor
    }

    /// The descriptor the host loop watches for readability.
    pub fn fd(&self) -> RawFd {
        self.reactor.as_raw_fd()
    }

    /// The fd became readable or the timer fired: runs one non-blocking
    /// turn and says what to do with the timer. Never blocks, never panics
    /// (user callbacks are caught by the reactor).
    pub fn dispatch(&self) -> TimerPlan {
        match self.reactor.iterate(Some(Duration::ZERO)) {
            Ok(()) => self.plan(),
            Err(ReactorError::Reentrant) => {
                // The host loop was run nested inside a reactor callback (a
                // modal dialog): come back once that callback has returned.
                self.arm(Duration::from_millis(1))
            }
            Err(e) => {
                tracing::error!(error = %e, "reactor turn failed under the host loop");
                self.arm(Duration::from_millis(10))
            }
        }
    }

    /// The host timer fired (so it is no longer armed); then runs a turn.
    pub fn timer_fired(&self) -> TimerPlan {
        self.armed.set(None);
        self.dispatch()
    }

    /// The host loop dropped its timer (e.g. it was destroyed).
    pub fn timer_cancelled(&self) {
        self.armed.set(None);
    }

    /// What to do with the timer given the reactor's current state.
    pub fn plan(&self) -> TimerPlan {
        match self.reactor.next_timeout() {
            None => {
                if self.armed.take().is_some() {
                    TimerPlan::Disarm
                } else {
                    TimerPlan::Keep
                }
            }
            Some(d) => self.arm(d),
        }
    }

    fn arm(&self, d: Duration) -> TimerPlan {
        let d = round_up_ms(d);
        let deadline = self.reactor.now() + d;
        if !d.is_zero() {
            if let Some(a) = self.armed.get() {
                let diff = a.abs_diff(deadline);
                if diff < SAME_DEADLINE {
                    return TimerPlan::Keep;
                }
            }
        }
        self.armed.set(Some(deadline));
        TimerPlan::Arm(d)
    }

    /// True when the poller fd is readable right now. Edge-triggered host
    /// watchers (tokio's `AsyncFd`) must not clear their readiness while
    /// this holds, or I/O left over after a turn would wait for new I/O.
    pub fn fd_readable_now(&self) -> bool {
        fd_readable_now(self.fd())
    }
}

impl Drop for HostDriver {
    fn drop(&mut self) {
        self.reactor.detach_host();
    }
}

fn round_up_ms(d: Duration) -> Duration {
    if d.is_zero() {
        return d;
    }
    let ms = d.as_millis() as u64 + u64::from(!d.subsec_nanos().is_multiple_of(1_000_000));
    Duration::from_millis(ms.max(1))
}

/// A zero-timeout `poll(2)` of `fd` for readability.
pub fn fd_readable_now(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents & libc::POLLIN != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flag(Rc<Cell<bool>>);
    impl HostLoop for Flag {
        fn run(&self, _r: &Reactor) -> Result<(), ReactorError> {
            Ok(())
        }
        fn quit(&self) {
            self.0.set(true);
        }
    }

    #[test]
    fn rounding() {
        assert_eq!(round_up_ms(Duration::ZERO), Duration::ZERO);
        assert_eq!(
            round_up_ms(Duration::from_micros(300)),
            Duration::from_millis(1)
        );
        assert_eq!(
            round_up_ms(Duration::from_micros(2001)),
            Duration::from_millis(3)
        );
        assert_eq!(
            round_up_ms(Duration::from_millis(7)),
            Duration::from_millis(7)
        );
    }

    #[test]
    fn timer_plan_follows_next_timeout() {
        let reactor = Reactor::new().unwrap();
        let d = HostDriver::attach(&reactor, Rc::new(Flag(Default::default()))).unwrap();
        assert_eq!(d.plan(), TimerPlan::Keep);
        let call = reactor.call_later(Duration::from_secs(5), || ());
        match d.plan() {
            TimerPlan::Arm(t) => assert!(t > Duration::from_secs(4) && t <= Duration::from_secs(5)),
            other => panic!("expected Arm, got {other:?}"),
        }
        // Same deadline: no re-arm.
        assert_eq!(d.plan(), TimerPlan::Keep);
        call.cancel().unwrap();
        assert_eq!(d.plan(), TimerPlan::Disarm);
        assert_eq!(d.plan(), TimerPlan::Keep);
    }

    #[test]
    fn attach_twice_fails_and_drop_detaches() {
        let reactor = Reactor::new().unwrap();
        let d = HostDriver::attach(&reactor, Rc::new(Flag(Default::default()))).unwrap();
        assert!(reactor.has_host_loop());
        let again = HostDriver::attach(&reactor, Rc::new(Flag(Default::default())));
        assert!(matches!(again, Err(HostLoopError::AlreadyAttached)));
        drop(d);
        assert!(!reactor.has_host_loop());
        let _d = HostDriver::attach(&reactor, Rc::new(Flag(Default::default()))).unwrap();
    }

    #[test]
    fn fd_readable_after_call_from_thread() {
        let reactor = Reactor::new().unwrap();
        let d = HostDriver::attach(&reactor, Rc::new(Flag(Default::default()))).unwrap();
        assert!(!d.fd_readable_now());
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handle = reactor.handle();
        let r = ran.clone();
        std::thread::spawn(move || {
            handle.call_from_thread(move || r.store(true, std::sync::atomic::Ordering::SeqCst))
        })
        .join()
        .unwrap();
        assert!(d.fd_readable_now());
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
        d.dispatch();
        assert!(ran.load(std::sync::atomic::Ordering::SeqCst));
        assert!(!d.fd_readable_now());
    }

    #[test]
    fn stop_quits_the_host_loop() {
        let reactor = Reactor::new().unwrap();
        let quit = Rc::new(Cell::new(false));
        let _d = HostDriver::attach(&reactor, Rc::new(Flag(quit.clone()))).unwrap();
        reactor.start_running().unwrap();
        assert!(!quit.get());
        reactor.stop().unwrap();
        assert!(quit.get());
        reactor.finish_running().unwrap();
        assert!(reactor.stop().is_err());
    }
}
