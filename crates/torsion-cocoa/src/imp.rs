//! The CFRunLoop integration (Apple targets only).

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::rc::Rc;

use core_foundation::base::TCFType;
use core_foundation::filedescriptor::{CFFileDescriptor, CFFileDescriptorContext};
use core_foundation::runloop::{
    kCFRunLoopCommonModes, CFRunLoop, CFRunLoopSource, CFRunLoopTimer, CFRunLoopTimerContext,
};
use core_foundation_sys::base::CFOptionFlags;
use core_foundation_sys::date::CFAbsoluteTimeGetCurrent;
use core_foundation_sys::filedescriptor::{
    kCFFileDescriptorReadCallBack, CFFileDescriptorEnableCallBacks, CFFileDescriptorInvalidate,
    CFFileDescriptorRef,
};
use core_foundation_sys::runloop::{
    CFRunLoopTimerInvalidate, CFRunLoopTimerRef, CFRunLoopTimerSetNextFireDate,
};

use torsion_core::hostloop::{HostDriver, HostLoop, HostLoopError, TimerPlan};
use torsion_core::{Reactor, ReactorError};

/// A disarmed timer waits this long (CFRunLoopTimer has no "never").
const FAR: f64 = 10.0 * 365.0 * 86_400.0;

struct CocoaLoop {
    run_loop: CFRunLoop,
    running: Cell<bool>,
    quit_early: Cell<bool>,
}

impl HostLoop for CocoaLoop {
    fn run(&self, _reactor: &Reactor) -> Result<(), ReactorError> {
        if self.quit_early.replace(false) {
            return Ok(());
        }
        self.running.set(true);
        CFRunLoop::run_current();
        self.running.set(false);
        Ok(())
    }

    fn quit(&self) {
        if self.running.get() {
            self.run_loop.stop();
        } else {
            self.quit_early.set(true);
        }
    }
}

struct Shared {
    driver: HostDriver,
    fd: RefCell<Option<(CFFileDescriptor, CFRunLoopSource)>>,
    timer: RefCell<Option<CFRunLoopTimer>>,
}

impl Shared {
    fn apply(&self, plan: TimerPlan) {
        let timer = self.timer.borrow();
        let Some(timer) = timer.as_ref() else { return };
        let at = match plan {
            TimerPlan::Keep => return,
            TimerPlan::Disarm => FAR,
            TimerPlan::Arm(d) => d.as_secs_f64(),
        };
        // SAFETY: a valid timer we own; moving its fire date is how a
        // CFRunLoopTimer is re-armed without re-creating it.
        unsafe {
            CFRunLoopTimerSetNextFireDate(
                timer.as_concrete_TypeRef(),
                CFAbsoluteTimeGetCurrent() + at,
            )
        };
    }
}

extern "C" fn on_fd(f: CFFileDescriptorRef, _types: CFOptionFlags, info: *mut c_void) {
    // SAFETY: `info` is the `Shared` kept alive by `CocoaHost`, which
    // invalidates this descriptor before freeing it.
    let shared = unsafe { &*(info as *const Shared) };
    let plan = shared.driver.dispatch();
    shared.apply(plan);
    // CFFileDescriptor callbacks are one-shot: re-enable for the next read.
    // SAFETY: `f` is the live descriptor this callback belongs to.
    unsafe { CFFileDescriptorEnableCallBacks(f, kCFFileDescriptorReadCallBack) };
}

extern "C" fn on_timer(_t: CFRunLoopTimerRef, info: *mut c_void) {
    // SAFETY: as in `on_fd`; the timer is invalidated before `Shared` goes.
    let shared = unsafe { &*(info as *const Shared) };
    let plan = shared.driver.timer_fired();
    // A repeating timer with a far interval: without a new plan it sleeps.
    let plan = match plan {
        TimerPlan::Keep => TimerPlan::Disarm,
        p => p,
    };
    shared.apply(plan);
}

/// A reactor attached to the current thread's `CFRunLoop`. Dropping it
/// removes the run-loop source and timer and detaches the reactor.
#[must_use = "dropping the CocoaHost detaches the reactor"]
pub struct CocoaHost {
    shared: Rc<Shared>,
}

impl std::fmt::Debug for CocoaHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CocoaHost").finish()
    }
}

/// Attaches `reactor` to the current thread's `CFRunLoop` (in the common
/// modes, so it keeps running during event tracking and modal panels).
/// `Reactor::run()` then runs `CFRunLoopRun` and `Reactor::stop()` stops it.
pub fn attach(reactor: &Reactor) -> Result<CocoaHost, HostLoopError> {
    let run_loop = CFRunLoop::get_current();
    let driver = HostDriver::attach(
        reactor,
        Rc::new(CocoaLoop {
            run_loop: run_loop.clone(),
            running: Cell::new(false),
            quit_early: Cell::new(false),
        }),
    )?;
    let shared = Rc::new(Shared {
        driver,
        fd: RefCell::new(None),
        timer: RefCell::new(None),
    });
    let info = Rc::as_ptr(&shared) as *mut c_void;
    let ctx = CFFileDescriptorContext {
        version: 0,
        info,
        retain: None,
        release: None,
        copyDescription: None,
    };
    // closeOnInvalidate = false: the reactor owns its poller fd.
    let fd =
        CFFileDescriptor::new(shared.driver.fd(), false, on_fd, Some(&ctx)).ok_or_else(|| {
            HostLoopError::Setup(std::io::Error::other("CFFileDescriptorCreate failed"))
        })?;
    let source = fd.to_run_loop_source(0).ok_or_else(|| {
        HostLoopError::Setup(std::io::Error::other(
            "CFFileDescriptorCreateRunLoopSource failed",
        ))
    })?;
    fd.enable_callbacks(kCFFileDescriptorReadCallBack);
    // SAFETY: reading an immutable CF constant.
    let common = unsafe { kCFRunLoopCommonModes };
    run_loop.add_source(&source, common);
    let mut tctx = CFRunLoopTimerContext {
        version: 0,
        info,
        retain: None,
        release: None,
        copyDescription: None,
    };
    // SAFETY: reading the current absolute time.
    let now = unsafe { CFAbsoluteTimeGetCurrent() };
    let timer = CFRunLoopTimer::new(now + FAR, FAR, 0, 0, on_timer, &mut tctx);
    run_loop.add_timer(&timer, common);
    *shared.fd.borrow_mut() = Some((fd, source));
    *shared.timer.borrow_mut() = Some(timer);
    let plan = shared.driver.plan();
    shared.apply(plan);
    Ok(CocoaHost { shared })
}

impl CocoaHost {
    /// The driven reactor.
    pub fn reactor(&self) -> &Reactor {
        self.shared.driver.reactor()
    }
}

impl Drop for CocoaHost {
    fn drop(&mut self) {
        // Invalidate first: after this no callback can see `info`.
        if let Some(t) = self.shared.timer.borrow_mut().take() {
            // SAFETY: a valid timer we own.
            unsafe { CFRunLoopTimerInvalidate(t.as_concrete_TypeRef()) };
        }
        if let Some((fd, _source)) = self.shared.fd.borrow_mut().take() {
            // SAFETY: a valid descriptor object we own (the fd stays open).
            unsafe { CFFileDescriptorInvalidate(fd.as_concrete_TypeRef()) };
        }
        self.shared.driver.timer_cancelled();
    }
}
