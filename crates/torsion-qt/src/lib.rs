//! # torsion-qt
//!
//! Runs a Torsion [`Reactor`] inside a Qt 6 event loop (`QCoreApplication`
//! for headless programs, `QApplication` for GUIs): one `QSocketNotifier`
//! watches the reactor's poller fd and one single-shot `QTimer` is re-armed
//! to `Reactor::next_timeout()` after every turn. The decisions are made by
//! the shared [`torsion_core::hostloop::HostDriver`]; the C++ side (a small
//! `cxx` bridge) only owns the Qt objects. Calls from other threads
//! (`ReactorHandle::call_from_thread`) wake the poller fd, so the notifier
//! fires on the Qt thread.
//!
//! A `QCoreApplication` (or `QApplication`) must exist first;
//! [`CoreApplication::new`] makes one for headless programs and tests.
//!
//! ```no_run
//! use std::time::Duration;
//! let _app = torsion_qt::CoreApplication::new();
//! let reactor = torsion_core::Reactor::new().unwrap();
//! let _host = torsion_qt::attach(&reactor).unwrap();
//! let r = reactor.clone();
//! reactor.call_later(Duration::from_millis(5), move || r.stop().unwrap());
//! reactor.run().unwrap(); // a QEventLoop until stop()
//! ```

#![warn(missing_docs)]

use std::cell::Cell;
use std::rc::Rc;

use torsion_core::hostloop::{HostDriver, HostLoop, HostLoopError, TimerPlan};
use torsion_core::{Reactor, ReactorError};

#[cxx::bridge(namespace = "torsion_qt")]
mod ffi {
    extern "Rust" {
        type QtDriver;
        fn on_fd_ready(d: &QtDriver) -> i64;
        fn on_timer(d: &QtDriver) -> i64;
    }

    unsafe extern "C++" {
        include!("torsion-qt/include/bridge.h");

        type QtHost;
        fn new_qt_host(fd: i32, driver: Box<QtDriver>) -> UniquePtr<QtHost>;
        fn apply(self: &QtHost, plan: i64);

        type EventLoop;
        fn new_event_loop() -> UniquePtr<EventLoop>;
        fn run(self: &EventLoop);
        fn quit(self: &EventLoop);
        fn is_running(self: &EventLoop) -> bool;

        type CoreApp;
        fn has_application() -> bool;
        fn new_core_application() -> UniquePtr<CoreApp>;
        fn new_gui_application() -> UniquePtr<CoreApp>;
    }
}

/// The Rust state the C++ `QtHost` owns and calls back into.
pub struct QtDriver {
    driver: HostDriver,
}

fn encode(plan: TimerPlan) -> i64 {
    match plan {
        TimerPlan::Keep => -2,
        TimerPlan::Disarm => -1,
        TimerPlan::Arm(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
    }
}

fn on_fd_ready(d: &QtDriver) -> i64 {
    encode(d.driver.dispatch())
}

fn on_timer(d: &QtDriver) -> i64 {
    encode(d.driver.timer_fired())
}

struct QtLoop {
    event_loop: cxx::UniquePtr<ffi::EventLoop>,
    quit_early: Cell<bool>,
}

impl HostLoop for QtLoop {
    fn run(&self, _reactor: &Reactor) -> Result<(), ReactorError> {
        if self.quit_early.replace(false) {
            return Ok(());
        }
        if let Some(l) = self.event_loop.as_ref() {
            l.run();
        }
        Ok(())
    }

    fn quit(&self) {
        match self.event_loop.as_ref() {
            Some(l) if l.is_running() => l.quit(),
            _ => self.quit_early.set(true),
        }
    }
}

/// A Qt application object made from Rust (one per process, on the thread
/// that will run Qt's loops): a headless `QCoreApplication` or a
/// `QGuiApplication`. Not needed when the program already has one.
pub struct CoreApplication {
    _app: cxx::UniquePtr<ffi::CoreApp>,
}

impl CoreApplication {
    /// Creates the application object; `None` if one exists already.
    pub fn new() -> Option<CoreApplication> {
        if ffi::has_application() {
            return None;
        }
        Some(CoreApplication {
            _app: ffi::new_core_application(),
        })
    }

    /// Creates a `QGuiApplication` (GUI event dispatcher; the platform
    /// plugin comes from `QT_QPA_PLATFORM`, e.g. `offscreen` for tests);
    /// `None` if an application exists already.
    pub fn new_gui() -> Option<CoreApplication> {
        if ffi::has_application() {
            return None;
        }
        Some(CoreApplication {
            _app: ffi::new_gui_application(),
        })
    }
}

impl std::fmt::Debug for CoreApplication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CoreApplication")
    }
}

/// A reactor attached to Qt. Dropping it deletes the notifier and the timer
/// and detaches the reactor (do not drop it from inside a reactor callback).
#[must_use = "dropping the QtHost detaches the reactor"]
pub struct QtHost {
    /// Held for its destructor, which deletes the Qt objects.
    _host: cxx::UniquePtr<ffi::QtHost>,
}

impl std::fmt::Debug for QtHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QtHost")
    }
}

/// Attaches `reactor` to the Qt event loop of this thread. `Reactor::run()`
/// then runs a `QEventLoop` and `Reactor::stop()` quits it. Fails when
/// another host loop drives the reactor, or when no `QCoreApplication`
/// exists yet.
pub fn attach(reactor: &Reactor) -> Result<QtHost, HostLoopError> {
    if !ffi::has_application() {
        return Err(HostLoopError::Setup(std::io::Error::other(
            "create a QCoreApplication (or QApplication) before attaching",
        )));
    }
    let driver = HostDriver::attach(
        reactor,
        Rc::new(QtLoop {
            event_loop: ffi::new_event_loop(),
            quit_early: Cell::new(false),
        }),
    )?;
    let fd = driver.fd();
    let first = encode(driver.plan());
    let host = ffi::new_qt_host(fd, Box::new(QtDriver { driver }));
    if let Some(h) = host.as_ref() {
        h.apply(first);
    }
    Ok(QtHost { _host: host })
}
