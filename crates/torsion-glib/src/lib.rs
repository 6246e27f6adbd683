//! # torsion-glib
//!
//! Runs a Torsion [`Reactor`] inside a glib main loop, so a GTK program (or
//! anything built on `glib::MainLoop`) uses Torsion networking on its GUI
//! thread with no thread per socket. The reactor's poller fd is one glib
//! fd source; its timers are one glib timeout source, re-armed to
//! `Reactor::next_timeout()` after every turn by the shared
//! [`torsion_core::hostloop::HostDriver`].
//!
//! `Reactor::run()` runs the attached `MainLoop` (between the reactor's
//! startup and shutdown sequences) and `Reactor::stop()` quits it. If your
//! program runs the loop itself, call `reactor.start_running()` before and
//! `reactor.finish_running()` after.
//!
//! ```
//! use std::time::Duration;
//! use torsion_core::Reactor;
//!
//! let ctx = glib::MainContext::new();
//! let main_loop = glib::MainLoop::new(Some(&ctx), false);
//! let reactor = Reactor::new().unwrap();
//! let _host = torsion_glib::attach(&reactor, &main_loop).unwrap();
//! let r = reactor.clone();
//! reactor.call_later(Duration::from_millis(5), move || r.stop().unwrap());
//! reactor.run().unwrap(); // runs main_loop until stop()
//! ```

#![warn(missing_docs)]

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

use glib::thread_guard::ThreadGuard;
use glib::{ControlFlow, IOCondition, MainContext, MainLoop, Priority, Source};

use torsion_core::hostloop::{HostDriver, HostLoop, HostLoopError, TimerPlan};
use torsion_core::{Reactor, ReactorError};

/// What the reactor keeps: enough to run and quit the loop.
struct GlibLoop {
    main_loop: MainLoop,
    /// `stop()` came before the loop started running (from a startup trigger).
    quit_early: Cell<bool>,
}

impl HostLoop for GlibLoop {
    fn run(&self, _reactor: &Reactor) -> Result<(), ReactorError> {
        if !self.quit_early.replace(false) {
            self.main_loop.run();
        }
        Ok(())
    }

    fn quit(&self) {
        if self.main_loop.is_running() {
            self.main_loop.quit();
        } else {
            self.quit_early.set(true);
        }
    }
}

struct Shared {
    driver: HostDriver,
    ctx: MainContext,
    fd_source: RefCell<Option<Source>>,
    timer: RefCell<Option<Source>>,
}

impl Shared {
    fn apply(self: &Rc<Self>, plan: TimerPlan) {
        match plan {
            TimerPlan::Keep => {}
            TimerPlan::Disarm => {
                if let Some(t) = self.timer.borrow_mut().take() {
                    t.destroy();
                }
            }
            TimerPlan::Arm(d) => {
                if let Some(t) = self.timer.borrow_mut().take() {
                    t.destroy();
                }
                let weak = ThreadGuard::new(Rc::downgrade(self));
                let src = glib::timeout_source_new(
                    d,
                    Some("torsion-reactor-timer"),
                    Priority::DEFAULT,
                    move || {
                        if let Some(s) = weak.get_ref().upgrade() {
                            s.timer.borrow_mut().take();
                            let plan = s.driver.timer_fired();
                            s.apply(plan);
                        }
                        ControlFlow::Break
                    },
                );
                src.attach(Some(&self.ctx));
                *self.timer.borrow_mut() = Some(src);
            }
        }
    }
}

/// A reactor attached to a glib main loop. Keep it alive as long as glib
/// should drive the reactor; dropping it removes the glib sources and
/// detaches the reactor.
#[must_use = "dropping the GlibHost detaches the reactor"]
pub struct GlibHost {
    shared: Rc<Shared>,
    main_loop: MainLoop,
}

impl std::fmt::Debug for GlibHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlibHost")
            .field("driver", &self.shared.driver)
            .finish()
    }
}

/// Attaches `reactor` to `main_loop` (and its `MainContext`). Fails with
/// [`HostLoopError::AlreadyAttached`] when another host loop drives the
/// reactor. Call on the reactor's thread; the context must be iterated on
/// this thread too.
///
/// ```
/// let main_loop = glib::MainLoop::new(Some(&glib::MainContext::new()), false);
/// let reactor = torsion_core::Reactor::new().unwrap();
/// let host = torsion_glib::attach(&reactor, &main_loop).unwrap();
/// assert!(torsion_glib::attach(&reactor, &main_loop).is_err());
/// # drop(host);
/// ```
pub fn attach(reactor: &Reactor, main_loop: &MainLoop) -> Result<GlibHost, HostLoopError> {
    let driver = HostDriver::attach(
        reactor,
        Rc::new(GlibLoop {
            main_loop: main_loop.clone(),
            quit_early: Cell::new(false),
        }),
    )?;
    let ctx = main_loop.context();
    let shared = Rc::new(Shared {
        driver,
        ctx: ctx.clone(),
        fd_source: RefCell::new(None),
        timer: RefCell::new(None),
    });
    let weak: ThreadGuard<Weak<Shared>> = ThreadGuard::new(Rc::downgrade(&shared));
    let src = glib::unix_fd_source_new(
        shared.driver.fd(),
        IOCondition::IN,
        Some("torsion-reactor"),
        Priority::DEFAULT,
        move |_, _| match weak.get_ref().upgrade() {
            Some(s) => {
                let plan = s.driver.dispatch();
                s.apply(plan);
                ControlFlow::Continue
            }
            None => ControlFlow::Break,
        },
    );
    src.attach(Some(&ctx));
    *shared.fd_source.borrow_mut() = Some(src);
    // Work queued before attaching (timers, listens) gets its timer now.
    let plan = shared.driver.plan();
    shared.apply(plan);
    Ok(GlibHost {
        shared,
        main_loop: main_loop.clone(),
    })
}

impl GlibHost {
    /// The driven reactor.
    pub fn reactor(&self) -> &Reactor {
        self.shared.driver.reactor()
    }

    /// The main loop `Reactor::run()` runs.
    pub fn main_loop(&self) -> &MainLoop {
        &self.main_loop
    }
}

impl Drop for GlibHost {
    fn drop(&mut self) {
        if let Some(s) = self.shared.fd_source.borrow_mut().take() {
            s.destroy();
        }
        if let Some(t) = self.shared.timer.borrow_mut().take() {
            t.destroy();
        }
        self.shared.driver.timer_cancelled();
    }
}
