//! `Deferred<T>`: a value not computed yet, with a chain of callbacks.
//!
//! Firing a Deferred passes `Result<T, Failure>` down its chain; each step's
//! output feeds the next, and a step that returns another Deferred pauses the
//! chain until that one fires. The chain is stored type-erased (each step
//! takes and returns a `Value`, which keeps values of up to three words
//! inline so that small results cost no allocation) while the public API
//! stays typed: each `add_*` call consumes the handle and returns one typed
//! for the new end of the chain. Running the chain is iterative — a Deferred
//! waiting on another is resumed by a loop, never by recursion — so depth
//! never touches the thread's stack. The shared state of a dropped Deferred
//! goes to a thread-local pool, so making one usually allocates nothing
//! (see `BENCHMARKS-deferred.md`).
//!
//! A Deferred lives on one thread (`!Send`). It is also a `Future`, so
//! `async` code can `.await` it; dropping a Deferred while it is being
//! awaited cancels it, which is how cancellation reaches a Deferred an
//! `async fn` was waiting on when its task is dropped.

use std::any::TypeId;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::mem::{ManuallyDrop, MaybeUninit};
use std::pin::Pin;
use std::ptr;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use crate::failure::{catch, CancelledError, Failure, TimeoutError};
use crate::time::Clock;

// ---------------------------------------------------------------------------
// Type-erased values.

type Words = [usize; 3];

/// A type-erased value. Values that fit in three words (and need no more
/// than word alignment) live inline; bigger ones are boxed.
pub(crate) struct Value {
    vt: &'static ValueVt,
    data: MaybeUninit<Words>,
    // The value may be `!Send`; so is its container.
    _not_send: PhantomData<*const ()>,
}

struct ValueVt {
    tid: fn() -> TypeId,
    drop: Option<unsafe fn(*mut u8)>,
}

const fn fits_inline<T>() -> bool {
    std::mem::size_of::<T>() <= std::mem::size_of::<Words>()
        && std::mem::align_of::<T>() <= std::mem::align_of::<Words>()
}

const fn vt<T: 'static>() -> &'static ValueVt {
    const {
        &ValueVt {
            tid: TypeId::of::<T>,
            drop: if !fits_inline::<T>() {
                Some(drop_boxed::<T> as unsafe fn(*mut u8))
            } else if std::mem::needs_drop::<T>() {
                Some(drop_inline::<T> as unsafe fn(*mut u8))
            } else {
                None
            },
        }
    }
}

unsafe fn drop_inline<T>(p: *mut u8) {
    // SAFETY: the caller passes the storage a `T` was written to by `Value::new`.
    unsafe { ptr::drop_in_place(p as *mut T) }
}

unsafe fn drop_boxed<T>(p: *mut u8) {
    // SAFETY: the storage holds a pointer from `Box::into_raw`, read once.
    unsafe { drop(Box::from_raw(ptr::read(p as *const *mut T))) }
}

impl Value {
    #[inline]
    pub(crate) fn new<T: 'static>(v: T) -> Value {
        let mut data = MaybeUninit::<Words>::uninit();
        let p = data.as_mut_ptr() as *mut u8;
        if fits_inline::<T>() {
            // SAFETY: `fits_inline` checked size and alignment.
            unsafe { ptr::write(p as *mut T, v) };
        } else {
            let b = Box::into_raw(Box::new(v));
            // SAFETY: a pointer fits in the (word-aligned) storage.
            unsafe { ptr::write(p as *mut *mut T, b) };
        }
        Value {
            vt: vt::<T>(),
            data,
            _not_send: PhantomData,
        }
    }

    #[inline]
    fn unit() -> Value {
        Value::new(())
    }

    #[inline]
    fn is<T: 'static>(&self) -> bool {
        // The pointer comparison is the fast path; the same table may exist
        // twice across codegen units, so fall back to the type id.
        ptr::eq(self.vt, vt::<T>()) || (self.vt.tid)() == TypeId::of::<T>()
    }

    /// Moves the `T` out, leaving the storage logically uninitialised.
    ///
    /// # Safety
    /// The value holds a `T` (see `is`), and is not used or dropped
    /// afterwards (only overwritten).
    #[inline]
    unsafe fn read<T: 'static>(&mut self) -> T {
        let p = self.data.as_mut_ptr() as *mut u8;
        // SAFETY: per the caller, written by `Value::new::<T>` in the layout
        // `fits_inline::<T>` selects, and read once.
        unsafe {
            if fits_inline::<T>() {
                ptr::read(p as *const T)
            } else {
                *Box::from_raw(ptr::read(p as *const *mut T))
            }
        }
    }

    /// The value as a `T`, or itself back when it holds another type.
    #[inline]
    pub(crate) fn take<T: 'static>(self) -> Result<T, Value> {
        if !self.is::<T>() {
            return Err(self);
        }
        let mut me = ManuallyDrop::new(self);
        let p = me.data.as_mut_ptr() as *mut u8;
        // SAFETY: the type matched, so the storage was written by
        // `Value::new::<T>` in the layout `fits_inline::<T>` selects; `me`
        // is never dropped, so the value is moved out exactly once.
        unsafe {
            if fits_inline::<T>() {
                Ok(ptr::read(p as *const T))
            } else {
                Ok(*Box::from_raw(ptr::read(p as *const *mut T)))
            }
        }
    }
}

impl Drop for Value {
    fn drop(&mut self) {
        if let Some(f) = self.vt.drop {
            // SAFETY: the drop function was chosen for this storage's layout.
            unsafe { f(self.data.as_mut_ptr() as *mut u8) }
        }
    }
}

type Outcome = Result<Value, Failure>;

/// What one step of the chain produced.
pub(crate) enum Next {
    Done(Outcome),
    Wait(Rc<Core>),
    /// Hand the result to the task awaiting this Deferred.
    Deliver(Outcome),
}

type StepWords = [usize; 2];

const fn fits_step<F>() -> bool {
    std::mem::size_of::<F>() <= std::mem::size_of::<StepWords>()
        && std::mem::align_of::<F>() <= std::mem::align_of::<StepWords>()
}

/// One step of the chain: a type-erased `FnOnce(Outcome) -> Next`. Like
/// [`Value`], a closure of up to two words (one capturing a `Deferred`
/// or two `Rc`s) is stored inline, so adding it allocates nothing;
/// bigger closures are boxed.
pub(crate) struct Step {
    vt: &'static StepVt,
    data: MaybeUninit<StepWords>,
    // The closure may be `!Send`; so is its container.
    _not_send: PhantomData<*const ()>,
}

struct StepVt {
    /// Moves the closure out of the storage and calls it with the outcome
    /// in the slot, where the step's own outcome is written back.
    call: unsafe fn(*mut u8, *mut Outcome) -> Flow,
    drop: Option<unsafe fn(*mut u8)>,
}

/// What a step does when the chain reaches it.
pub(crate) trait RunStep: 'static {
    /// Runs with the outcome in `io`, consuming it, and writes the step's
    /// own outcome back there (for `Flow::Done` and `Flow::Deliver`).
    ///
    /// # Safety
    /// `io` holds an outcome. If this panics, the outcome counts as
    /// consumed (the caller must neither read nor drop it).
    unsafe fn run(self, io: *mut Outcome) -> Flow;
}

/// The general step: a closure from outcome to `Next`.
struct AnyStep<F>(F);

impl<F: FnOnce(Outcome) -> Next + 'static> RunStep for AnyStep<F> {
    #[inline]
    unsafe fn run(self, io: *mut Outcome) -> Flow {
        // SAFETY: the caller's slot holds an outcome, moved in here; it
        // gets one back unless the step returned a Deferred to wait for.
        match (self.0)(unsafe { ptr::read(io) }) {
            Next::Done(o) => {
                unsafe { ptr::write(io, o) };
                Flow::Done
            }
            Next::Deliver(o) => {
                unsafe { ptr::write(io, o) };
                Flow::Deliver
            }
            Next::Wait(core) => Flow::Wait(core),
        }
    }
}

/// `add_callback`'s step, which works on the slot in place: a value of the
/// expected type is moved straight out of it into the callback and the
/// callback's value written back, with no copy of the whole outcome on
/// the way in or out; a failure stays where it is.
struct MapStep<T, U, F>(F, PhantomData<fn(T) -> U>);

impl<T: 'static, U: 'static, F: FnOnce(T) -> U + 'static> RunStep for MapStep<T, U, F> {
    #[inline]
    unsafe fn run(self, io: *mut Outcome) -> Flow {
        // SAFETY: `io` holds an outcome (caller's contract).
        if let Ok(v) = unsafe { &mut *io } {
            if v.is::<T>() {
                // SAFETY: the type matched; the value is moved out once and
                // the slot overwritten without dropping it. If `f` panics,
                // the slot counts as consumed (see `RunStep::run`).
                unsafe {
                    let t = v.read::<T>();
                    ptr::write(io, Ok(Value::new((self.0)(t))));
                }
            } else {
                // SAFETY: the slot is read once and rewritten.
                unsafe {
                    let Ok(other) = ptr::read(io) else {
                        unreachable!()
                    };
                    ptr::write(io, Err(type_error(other, std::any::type_name::<T>())));
                }
            }
        }
        Flow::Done
    }
}

/// `add_callback_deferred`'s step: like [`MapStep`], the value is moved
/// straight out of the slot, and the returned Deferred goes to the run
/// loop to be waited for.
struct ThenStep<T, U, F>(F, PhantomData<fn(T) -> U>);

impl<T: 'static, U: 'static, F: FnOnce(T) -> Deferred<U> + 'static> RunStep for ThenStep<T, U, F> {
    #[inline]
    unsafe fn run(self, io: *mut Outcome) -> Flow {
        // SAFETY: `io` holds an outcome (caller's contract).
        if let Ok(v) = unsafe { &mut *io } {
            if v.is::<T>() {
                // SAFETY: the type matched; the value is moved out once, and
                // the slot counts as consumed (`Flow::Wait`, or a panic).
                let t = unsafe { v.read::<T>() };
                return Flow::Wait((self.0)(t).into_core());
            }
            // SAFETY: the slot is read once and rewritten.
            unsafe {
                let Ok(other) = ptr::read(io) else {
                    unreachable!()
                };
                ptr::write(io, Err(type_error(other, std::any::type_name::<T>())));
            }
        }
        Flow::Done
    }
}

const fn step_vt<S: RunStep>() -> &'static StepVt {
    const {
        &StepVt {
            call: call_step::<S>,
            drop: if !fits_step::<S>() {
                Some(drop_boxed::<S> as unsafe fn(*mut u8))
            } else if std::mem::needs_drop::<S>() {
                Some(drop_inline::<S> as unsafe fn(*mut u8))
            } else {
                None
            },
        }
    }
}

/// What a step did; its outcome (for `Done` and `Deliver`) is in the slot.
///
/// The outcome stays in one slot of the run loop from step to step: moving
/// a 32-byte `Next` through return values cost store-forwarding stalls
/// (wide loads of data just written by narrower stores) on every callback.
pub(crate) enum Flow {
    Done,
    Wait(Rc<Core>),
    Deliver,
}

unsafe fn call_step<S: RunStep>(p: *mut u8, io: *mut Outcome) -> Flow {
    // SAFETY: the caller passes the storage `Step::from_run::<S>` wrote,
    // once, and a slot holding an outcome.
    unsafe {
        let s: S = if fits_step::<S>() {
            ptr::read(p as *const S)
        } else {
            *Box::from_raw(ptr::read(p as *const *mut S))
        };
        s.run(io)
    }
}

/// Runs `call` (a step's vtable entry) the slow way: outcome in, `Next` out.
///
/// # Safety
/// As for `StepVt::call`.
#[cfg(test)]
unsafe fn call_next(
    call: unsafe fn(*mut u8, *mut Outcome) -> Flow,
    data: *mut u8,
    o: Outcome,
) -> Next {
    let mut slot = MaybeUninit::new(o);
    // SAFETY: the slot is initialised; `Flow` says whether it still is.
    unsafe {
        match call(data, slot.as_mut_ptr()) {
            Flow::Done => Next::Done(slot.assume_init()),
            Flow::Deliver => Next::Deliver(slot.assume_init()),
            Flow::Wait(core) => Next::Wait(core),
        }
    }
}

impl Step {
    #[inline]
    pub(crate) fn new<F: FnOnce(Outcome) -> Next + 'static>(f: F) -> Step {
        Step::from_run(AnyStep(f))
    }

    #[inline]
    fn from_run<S: RunStep>(s: S) -> Step {
        let mut data = MaybeUninit::<StepWords>::uninit();
        let p = data.as_mut_ptr() as *mut u8;
        if fits_step::<S>() {
            // SAFETY: `fits_step` checked size and alignment.
            unsafe { ptr::write(p as *mut S, s) };
        } else {
            let b = Box::into_raw(Box::new(s));
            // SAFETY: a pointer fits in the (word-aligned) storage.
            unsafe { ptr::write(p as *mut *mut S, b) };
        }
        Step {
            vt: step_vt::<S>(),
            data,
            _not_send: PhantomData,
        }
    }

    #[cfg(test)]
    fn call(self, o: Outcome) -> Next {
        let mut me = ManuallyDrop::new(self);
        // SAFETY: `me` is never dropped, so the closure is moved out (by
        // `call`) exactly once; a panic inside drops it as it unwinds.
        unsafe { call_next(me.vt.call, me.data.as_mut_ptr() as *mut u8, o) }
    }
}

/// A step taken off the chain but left in its slot (see
/// `Chain::pop_front_in_place`). It must be called before anything can
/// touch the chain again (a push may reuse or reallocate the slot):
/// calling it moves the closure out first, before user code runs.
struct StepInPlace {
    vt: &'static StepVt,
    data: *mut u8,
}

impl StepInPlace {
    /// Calls the step with the outcome in `io`, written back there.
    ///
    /// # Safety
    /// Nothing may have pushed to (or dropped) the chain since the step
    /// was taken off it; `io` holds an outcome, and holds one afterwards
    /// unless `Flow::Wait` is returned (or the step panics).
    #[inline]
    unsafe fn call_in_place(self, io: *mut Outcome) -> Flow {
        // SAFETY: per the caller, the slot still holds the step, which was
        // taken off the chain, so this is its only use.
        unsafe { (self.vt.call)(self.data, io) }
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if let Some(f) = self.vt.drop {
            // SAFETY: the drop function was chosen for this storage's layout.
            unsafe { f(self.data.as_mut_ptr() as *mut u8) }
        }
    }
}

// ---------------------------------------------------------------------------
// Errors.

/// Firing a Deferred that has already fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the Deferred has already been called")]
pub struct AlreadyCalledError;

/// A callback received a value of another type than the chain promised.
///
/// This happens only when callbacks are added through a stale handle (one
/// whose type no longer describes the end of the chain).
#[derive(Debug, Clone, thiserror::Error)]
#[error("Deferred chain type mismatch: expected {expected}")]
pub struct ChainTypeError {
    /// The type the callback expected.
    pub expected: &'static str,
}

/// The result of a Deferred was already taken: it was handed on to another
/// Deferred it is chained to, or to the task that awaited it.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("this Deferred's result was already handed on (to a chained Deferred or an awaiting task)")]
pub struct ResultConsumedError;

/// A callback returned a Deferred that cannot be waited for: the Deferred
/// itself, or one already chained to another Deferred.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("a callback returned a Deferred that is itself or already chained to another Deferred")]
pub struct ChainingError;

/// A second task awaited a Deferred that another task is already awaiting.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("this Deferred is already being awaited by another task")]
pub struct AlreadyAwaitedError;

fn consumed() -> Outcome {
    Err(Failure::new(ResultConsumedError))
}

// ---------------------------------------------------------------------------
// The shared core.

/// The queue of steps: a `Vec` consumed from a moving head, cheaper than a
/// `VecDeque` for the push-back/pop-front-only use here. Slots before `head`
/// have been moved out; the vector is emptied whenever the head catches up.
struct Chain {
    steps: Vec<Step>,
    head: usize,
}

impl Chain {
    #[cfg(test)]
    fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    /// Pushes a step given as its parts, written field by field into the
    /// slot (see `Core::push`).
    #[inline]
    fn push_parts(&mut self, vt: &'static StepVt, a: MaybeUninit<usize>, b: MaybeUninit<usize>) {
        self.steps.reserve(1);
        let len = self.steps.len();
        // SAFETY: there is room for one more slot; both of its fields are
        // written before the length covers it.
        unsafe {
            let slot = self.steps.as_mut_ptr().add(len);
            ptr::addr_of_mut!((*slot).vt).write(vt);
            let data = ptr::addr_of_mut!((*slot).data) as *mut MaybeUninit<usize>;
            data.write(a);
            data.add(1).write(b);
            ptr::addr_of_mut!((*slot)._not_send).write(PhantomData);
            self.steps.set_len(len + 1);
        }
    }

    #[cfg(test)]
    fn pop_front(&mut self) -> Option<Step> {
        if self.head >= self.steps.len() {
            return None;
        }
        // SAFETY: `head < len`, and the slot is read once: `head` moves past it.
        let step = unsafe { ptr::read(self.steps.as_ptr().add(self.head)) };
        self.head += 1;
        if self.head == self.steps.len() {
            // SAFETY: every slot has been moved out; forget them.
            unsafe { self.steps.set_len(0) };
            self.head = 0;
        }
        Some(step)
    }

    /// Like `pop_front`, without moving the step out of its slot: the run
    /// loop calls it in place, which saves copying it per callback.
    #[inline]
    fn pop_front_in_place(&mut self) -> Option<StepInPlace> {
        if self.head >= self.steps.len() {
            return None;
        }
        // SAFETY: `head < len`.
        let slot = unsafe { self.steps.as_mut_ptr().add(self.head) };
        self.head += 1;
        if self.head == self.steps.len() {
            // SAFETY: every slot has been (or, for this one, is about to
            // be) moved out; forget them. The storage stays allocated.
            unsafe { self.steps.set_len(0) };
            self.head = 0;
        }
        // SAFETY: the slot holds a live step, read only through this value.
        Some(StepInPlace {
            vt: unsafe { (*slot).vt },
            data: unsafe { (*slot).data.as_mut_ptr() as *mut u8 },
        })
    }

    fn len(&self) -> usize {
        self.steps.len() - self.head
    }

    fn is_empty(&self) -> bool {
        self.head >= self.steps.len()
    }

    /// The (empty) storage, for reuse.
    fn into_empty_vec(self) -> Vec<Step> {
        let mut me = ManuallyDrop::new(self);
        debug_assert!(me.is_empty());
        let mut v = std::mem::take(&mut me.steps);
        // SAFETY: empty chain: no live slot (head == len, or both zero).
        unsafe { v.set_len(0) };
        v
    }
}

impl Drop for Chain {
    fn drop(&mut self) {
        let (head, len) = (self.head, self.steps.len());
        // SAFETY: slots `head..len` are live, the ones before were moved out;
        // the length is cleared first so a panicking drop cannot double-drop.
        unsafe {
            self.steps.set_len(0);
            let live =
                std::ptr::slice_from_raw_parts_mut(self.steps.as_mut_ptr().add(head), len - head);
            ptr::drop_in_place(live);
        }
    }
}

pub(crate) struct Core {
    st: RefCell<State>,
    /// The next core in the thread's pool while this one is pooled.
    pool_next: Cell<*const Core>,
}

struct State {
    called: bool,
    result: Option<Outcome>,
    /// Dropped by hand in `Core::drop` (recycled when empty).
    chain: ManuallyDrop<Chain>,
    paused: u32,
    running: bool,
    /// Set by `cancel` when it fired us: one late `callback` is ignored.
    suppress_already_called: bool,
    canceller: Option<Box<dyn FnOnce()>>,
    /// The Deferred whose result we wait for (a step returned it).
    waiting_on: Option<Weak<Core>>,
    /// The Deferred that waits for our result.
    chained_to: Option<Rc<Core>>,
    /// Some task is awaiting this Deferred (see `impl Future`).
    awaited: bool,
    waker: Option<Waker>,
    delivered: Option<Outcome>,
}

/// Cores of dropped Deferreds, reset and kept for reuse: creating a
/// Deferred then costs no allocation (nor its step queue, which stays).
///
/// A list linked through `Core::pool_next`, each entry holding the one
/// strong reference of its core. The type has no destructor, so that
/// reaching it is a plain thread-local access; [`PoolGuard`], touched only
/// on the slow path, frees the cores when the thread exits.
struct CorePool {
    head: Cell<*const Core>,
    /// How many more cores the pool takes; 0 until the guard is set up.
    room: Cell<u32>,
    state: Cell<PoolState>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PoolState {
    /// No core pooled yet on this thread: the guard is not set up.
    Unguarded,
    Guarded,
    /// The thread is exiting: nothing is pooled any more.
    Closed,
}

/// See `State::on_fire`.
enum OnFire {
    /// The result waits in the state: paused, or no callbacks yet and
    /// nobody waiting on us.
    Store,
    /// Run the chain now.
    Run,
    /// No callbacks, and a Deferred waits for the result: hand it over.
    HandOver,
}

impl State {
    /// What firing a Deferred does with its result; `Run` marks it running.
    #[inline(always)]
    fn on_fire(&mut self) -> OnFire {
        if self.paused > 0 {
            return OnFire::Store;
        }
        if self.chain.is_empty() {
            return if self.chained_to.is_none() {
                OnFire::Store
            } else {
                OnFire::HandOver
            };
        }
        self.running = true;
        OnFire::Run
    }

    /// Stores the result of a Deferred just fired (`called` was false, so
    /// there is none yet; a plain assignment would check for an old value
    /// to drop).
    #[inline]
    fn set_first_result(&mut self, outcome: Outcome) {
        debug_assert!(self.result.is_none());
        // SAFETY: a plain overwrite; at worst (were the field not `None`,
        // which it is) a value would leak.
        unsafe { ptr::write(&mut self.result, Some(outcome)) };
    }

    /// Stores the result of a chain that has run, moved out of `slot`: the
    /// state's field is empty then (it was taken to run the chain), unless
    /// a Deferred this one waited on handed a result over meanwhile
    /// (possible when it was unpaused by hand), which this one replaces.
    ///
    /// # Safety
    /// `slot` is initialised; it is moved out.
    #[inline]
    unsafe fn set_result_from(&mut self, slot: &mut MaybeUninit<Outcome>) {
        if self.result.is_some() {
            // SAFETY: per the caller.
            return unsafe { self.replace_result_from(slot) };
        }
        // SAFETY: per the caller; a plain overwrite of `None`.
        unsafe { ptr::write(&mut self.result, Some(slot.assume_init_read())) };
    }

    /// # Safety
    /// As for `set_result_from`.
    #[cold]
    #[inline(never)]
    unsafe fn replace_result_from(&mut self, slot: &mut MaybeUninit<Outcome>) {
        // SAFETY: per the caller.
        self.result = Some(unsafe { slot.assume_init_read() });
    }
}

thread_local! {
    static CORE_POOL: CorePool = const {
        CorePool {
            head: Cell::new(ptr::null()),
            room: Cell::new(0),
            state: Cell::new(PoolState::Unguarded),
        }
    };
    static POOL_GUARD: PoolGuard = const { PoolGuard };
}

const CORE_POOL_MAX: u32 = 256;

impl CorePool {
    /// This thread's pool: a plain thread-local access (no destructor, so
    /// no registration check), always available.
    #[inline(always)]
    fn get() -> &'static CorePool {
        // SAFETY: the pool is thread-local and has no destructor, so it
        // lives as long as the thread; the reference does not leave it
        // (`CorePool` is `!Send`/`!Sync` through its `Cell`s).
        CORE_POOL.with(|p| unsafe { &*(p as *const CorePool) })
    }
}

/// Frees the pooled cores when the thread exits.
struct PoolGuard;

impl Drop for PoolGuard {
    fn drop(&mut self) {
        let head = CORE_POOL.with(|p| {
            p.state.set(PoolState::Closed);
            p.room.set(0);
            p.head.replace(ptr::null())
        });
        let mut next = head;
        while !next.is_null() {
            // SAFETY: pooled pointers come from `Rc::into_raw` in
            // `pool_put`; each is unlinked and turned back exactly once.
            let core = unsafe { Rc::from_raw(next) };
            next = core.pool_next.get();
            drop(core);
        }
    }
}

impl Core {
    #[inline]
    fn new() -> Rc<Core> {
        let p = CorePool::get();
        let head = p.head.get();
        if !head.is_null() {
            // SAFETY: a pooled core is alive (the pool holds its one strong
            // reference, taken back here once: it is unlinked first) and
            // only this thread touches it.
            unsafe {
                p.head.set((*head).pool_next.get());
                p.room.set(p.room.get() + 1);
                return Rc::from_raw(head);
            }
        }
        Core::fresh()
    }

    /// Drops a handle's reference. The last one, when nothing else refers
    /// to the core (no weak reference, no pending step, nobody chained),
    /// resets it into the pool instead of freeing it.
    #[inline]
    fn release(core: Rc<Core>) {
        // Another handle remains (the usual case for all but the last
        // one): just the decrement, inlined.
        if Rc::strong_count(&core) != 1 {
            return;
        }
        Core::release_last(core)
    }

    #[inline(never)]
    fn release_last(mut core: Rc<Core>) {
        // Unique (no other handle, no weak reference): nothing can hold a
        // borrow of the state either, so it is reached without one.
        let Some(unique) = Rc::get_mut(&mut core) else {
            return;
        };
        let st = unique.st.get_mut();
        if !st.chain.is_empty() || st.chained_to.is_some() || st.running {
            return;
        }
        if st.canceller.is_some()
            || st.waiting_on.is_some()
            || st.waker.is_some()
            || st.delivered.is_some()
        {
            return Core::release_slow(core);
        }
        if let Some(Err(f)) = &st.result {
            tracing::error!(failure = %f, "Unhandled error in Deferred: {f}");
        }
        // A long chain's queue is not worth keeping around.
        if st.chain.steps.capacity() > 256 {
            Core::drop_long_queue(st);
        }
        st.called = false;
        st.paused = 0;
        st.suppress_already_called = false;
        st.awaited = false;
        // The common case: the result has no destructor, so no user code
        // runs and nothing can have taken a new reference meanwhile.
        let plain = match &st.result {
            None => true,
            Some(Ok(v)) => v.vt.drop.is_none(),
            Some(Err(_)) => false,
        };
        if plain {
            // SAFETY: nothing to drop (checked just above): overwritten.
            unsafe { ptr::write(&mut st.result, None) };
            Core::pool_put(core);
        } else {
            let result = st.result.take();
            Core::release_result(core, result);
        }
    }

    #[cold]
    fn drop_long_queue(st: &mut State) {
        st.chain.steps = Vec::new();
    }

    /// The end of `release_last` for a result with a destructor: it drops
    /// (user code, which may make and drop Deferreds of its own) with the
    /// core unreferenced elsewhere, and the core is pooled if it still is.
    #[cold]
    #[inline(never)]
    fn release_result(core: Rc<Core>, result: Option<Outcome>) {
        drop(result);
        if Rc::strong_count(&core) == 1 && Rc::weak_count(&core) == 0 {
            Core::pool_put(core);
        }
    }

    /// Releases a Deferred a step returned, once its result was taken:
    /// usually the last reference, so the core goes back to the pool.
    /// Out of line, to keep the run loop small.
    #[inline(never)]
    fn release_returned(core: Rc<Core>) {
        Core::release(core)
    }

    #[inline(always)]
    fn pool_put(core: Rc<Core>) {
        let p = CorePool::get();
        let room = p.room.get();
        if room == 0 {
            return Core::pool_put_slow(p, core);
        }
        p.room.set(room - 1);
        core.pool_next.set(p.head.get());
        p.head.set(Rc::into_raw(core));
    }

    /// The pool is full, or this thread has not pooled a core yet (the
    /// guard that empties it at thread exit is set up here), or is exiting.
    #[cold]
    fn pool_put_slow(p: &CorePool, core: Rc<Core>) {
        if p.state.get() != PoolState::Unguarded || POOL_GUARD.try_with(|_| ()).is_err() {
            return;
        }
        p.state.set(PoolState::Guarded);
        p.room.set(CORE_POOL_MAX - 1);
        core.pool_next.set(p.head.get());
        p.head.set(Rc::into_raw(core));
    }

    /// `release` for a core with a canceller, a waker or a delivered result.
    #[cold]
    fn release_slow(core: Rc<Core>) {
        let taken = {
            let Ok(mut st) = core.st.try_borrow_mut() else {
                return;
            };
            if let Some(Err(f)) = &st.result {
                tracing::error!(failure = %f, "Unhandled error in Deferred: {f}");
            }
            let taken = (
                st.result.take(),
                st.canceller.take(),
                st.waiting_on.take(),
                st.waker.take(),
                st.delivered.take(),
            );
            if st.chain.steps.capacity() > 256 {
                st.chain.steps = Vec::new();
            }
            st.called = false;
            st.paused = 0;
            st.suppress_already_called = false;
            st.awaited = false;
            taken
        };
        // User values drop here, with nothing borrowed; they may make and
        // drop Deferreds of their own.
        drop(taken);
        if Rc::strong_count(&core) != 1 || Rc::weak_count(&core) != 0 {
            return;
        }
        Core::pool_put(core);
    }

    fn fresh() -> Rc<Core> {
        Rc::new(Core {
            pool_next: Cell::new(ptr::null()),
            st: RefCell::new(State {
                called: false,
                result: None,
                chain: ManuallyDrop::new(new_chain()),
                paused: 0,
                running: false,
                suppress_already_called: false,
                canceller: None,
                waiting_on: None,
                chained_to: None,
                awaited: false,
                waker: None,
                delivered: None,
            }),
        })
    }

    /// Inlined into `callback` and friends, so that the outcome is built
    /// right in the slot the run loop uses: copying it out of an argument
    /// just written by the caller stalled on store forwarding.
    #[inline(always)]
    fn fire(self: &Rc<Self>, outcome: Outcome) -> Result<(), AlreadyCalledError> {
        let mut slot = MaybeUninit::new(outcome);
        self.fire_slot(&mut slot)
    }

    /// `slot` holds the outcome; it is moved out (or dropped) here.
    #[inline(never)]
    fn fire_slot(
        self: &Rc<Self>,
        slot: &mut MaybeUninit<Outcome>,
    ) -> Result<(), AlreadyCalledError> {
        // SAFETY (for each `assume_init_*` below): the slot is initialised
        // and read exactly once, on whichever path is taken.
        let mut st = self.st.borrow_mut();
        {
            if st.called {
                let late = st.suppress_already_called;
                st.suppress_already_called = false;
                drop(st);
                drop(unsafe { slot.assume_init_read() });
                return if late {
                    Ok(())
                } else {
                    Err(AlreadyCalledError)
                };
            }
        }
        st.called = true;
        if st.canceller.is_some() {
            drop(st);
            return self.fire_cancellable(slot);
        }
        match st.on_fire() {
            OnFire::Run => {
                drop(st);
                run_fired::<0>(self, slot);
            }
            // SAFETY: see above.
            OnFire::Store => st.set_first_result(unsafe { slot.assume_init_read() }),
            OnFire::HandOver => {
                drop(st);
                self.fire_to_parent(slot);
            }
        }
        Ok(())
    }

    /// Fired with no callbacks of its own while a Deferred waits for the
    /// result (it was returned by one of that one's steps): the result goes
    /// there, and that chain resumes.
    #[cold]
    #[inline(never)]
    fn fire_to_parent(self: &Rc<Self>, slot: &mut MaybeUninit<Outcome>) {
        // As `hand_over` then `begin`, with the result kept in the slot
        // when the parent can run at once (the usual case).
        let parent = {
            let mut st = self.st.borrow_mut();
            // A neutral value stays so that dropping us logs nothing: the
            // parent owns the result (and any failure) now.
            st.set_first_result(Ok(Value::unit()));
            st.chained_to
                .take()
                .expect("fire_to_parent: a Deferred waits on this one")
        };
        let (run, old) = {
            let mut pst = parent.st.borrow_mut();
            pst.paused = pst.paused.saturating_sub(1);
            let waiting_on = pst.waiting_on.take();
            if pst.running || pst.paused > 0 || !pst.called {
                // SAFETY: the slot holds the outcome, read once.
                pst.result = Some(unsafe { slot.assume_init_read() });
                (false, (waiting_on, None))
            } else {
                pst.running = true;
                (true, (waiting_on, pst.result.take()))
            }
        };
        drop(old);
        if run {
            // The fast loop again, as a copy of its own (see `run_fired`).
            run_fired::<1>(&parent, slot);
        }
        Core::release_returned(parent);
    }

    /// The rest of `fire_slot` for a Deferred that has a canceller: no
    /// longer needed, it is dropped (which may run user code) with nothing
    /// borrowed, after the result is placed. Apart, so that the common
    /// path has a single inlined run loop.
    #[cold]
    #[inline(never)]
    fn fire_cancellable(
        self: &Rc<Self>,
        slot: &mut MaybeUninit<Outcome>,
    ) -> Result<(), AlreadyCalledError> {
        let mut st = self.st.borrow_mut();
        let canceller = st.canceller.take();
        let on_fire = st.on_fire();
        if let OnFire::Store = on_fire {
            // SAFETY: the slot holds the outcome, read once.
            st.set_first_result(unsafe { slot.assume_init_read() });
            drop(st);
            drop(canceller);
            return Ok(());
        }
        drop(st);
        drop(canceller);
        if let OnFire::HandOver = on_fire {
            self.fire_to_parent(slot);
        } else {
            // The general loop (`run_fired`'s fast one stays inlined once).
            // SAFETY: the slot holds the outcome, read once.
            let outcome = unsafe { slot.assume_init_read() };
            run_callbacks(self.clone(), Some(Next::Done(outcome)));
        }
        Ok(())
    }

    #[inline(always)]
    fn push(self: &Rc<Self>, step: Step) {
        // The step goes over as three words in registers: a `Step` passed
        // by reference (it is bigger than two words) is read back with one
        // wide load right after the caller wrote it with narrower stores,
        // a store-forwarding stall that cost ~8 ns per callback.
        let step = ManuallyDrop::new(step);
        // SAFETY: `step` is never dropped, so its parts are moved once;
        // the storage is an array of two (maybe uninitialised) words.
        let [a, b] = unsafe {
            std::mem::transmute::<MaybeUninit<StepWords>, [MaybeUninit<usize>; 2]>(ptr::read(
                &step.data,
            ))
        };
        self.push_parts(step.vt, a, b);
    }

    fn push_parts(
        self: &Rc<Self>,
        vt: &'static StepVt,
        a: MaybeUninit<usize>,
        b: MaybeUninit<usize>,
    ) {
        let mut st = self.st.borrow_mut();
        st.chain.push_parts(vt, a, b);
        if st.called && !st.running && st.paused == 0 {
            drop(st);
            self.run_now();
        }
    }

    /// A step was added to a fired, idle Deferred: it runs at once. Out of
    /// line, so that adding to an unfired Deferred stays a plain push.
    #[inline(never)]
    fn run_now(self: &Rc<Self>) {
        let result = {
            let mut st = self.st.borrow_mut();
            st.running = true;
            st.result.take().unwrap_or_else(consumed)
        };
        run_callbacks(self.clone(), Some(Next::Done(result)));
    }

    /// The handle awaiting this Deferred is dropped.
    #[cold]
    fn drop_awaiter(self: &Rc<Self>) {
        // The task awaiting us was dropped before the result came:
        // cancel, as Twisted cancels the Deferred a coroutine waits on.
        let pending = self.st.borrow().delivered.is_none();
        if pending {
            self.cancel();
        }
        // Whatever arrives (or arrived) is nobody's now; dropped with
        // nothing borrowed, as its drop may run user code.
        let (value, waker) = {
            let mut st = self.st.borrow_mut();
            (st.delivered.take(), st.waker.take())
        };
        drop((value, waker));
    }

    pub(crate) fn cancel(self: &Rc<Self>) {
        let (called, canceller, waiting_on) = {
            let mut st = self.st.borrow_mut();
            (
                st.called,
                st.canceller.take(),
                st.waiting_on.as_ref().and_then(Weak::upgrade),
            )
        };
        if !called {
            if let Some(c) = canceller {
                if let Err(f) = catch(c) {
                    tracing::error!(failure = %f, "canceller panicked");
                }
            }
            let still_unfired = !self.st.borrow().called;
            if still_unfired {
                // The producer does not know it was cancelled and may still
                // deliver its result: that one late call is eaten, not an error.
                let _ = self.fire(Err(Failure::new(CancelledError)));
                self.st.borrow_mut().suppress_already_called = true;
            }
        } else if let Some(inner) = waiting_on {
            // Paused waiting for a Deferred a callback returned: cancel that one.
            inner.cancel();
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        let st = self.st.get_mut();
        if let Some(Err(f)) = &st.result {
            if st.chained_to.is_none() {
                tracing::error!(failure = %f, "Unhandled error in Deferred: {f}");
            }
        }
        // SAFETY: `chain` is not used after this point; `State` never drops it.
        let chain = unsafe { ManuallyDrop::take(&mut st.chain) };
        if chain.is_empty() {
            let chain = chain.into_empty_vec();
            recycle_chain(chain);
        } else {
            drop(chain);
        }
        // A long line of unfired Deferreds chained to each other would be
        // dropped recursively; unlink it here instead.
        let mut next = st.chained_to.take();
        while let Some(rc) = next {
            next = match Rc::try_unwrap(rc) {
                Ok(core) => {
                    let mut core = core;
                    core.st.get_mut().chained_to.take()
                }
                Err(_) => None,
            };
        }
    }
}

/// Runs the chain of `core`, just marked running, with its result in `slot`.
///
/// The fast path: the steps of this one Deferred run in a tight loop as
/// long as they return plain results or a Deferred (one already fired and
/// idle is taken at once; an unfired one is waited for). Anything else —
/// delivering to an awaiting task, a Deferred waiting on this one, a
/// panic — hands over to the general loop, [`run_callbacks`].
///
/// `COPY` tells apart its callers: each gets a copy of its own, as the
/// unwind guard's inner function is inlined only where it has one caller.
#[inline(always)]
fn run_fired<const COPY: u8>(core: &Rc<Core>, slot: &mut MaybeUninit<Outcome>) {
    // `catch_unwind` itself rather than `failure::catch`, so that the
    // whole loop is inlined here.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_local(core, slot))) {
        Ok(None) => {}
        Ok(Some(next)) => run_callbacks(core.clone(), Some(next)),
        Err(payload) => run_after_panic(core.clone(), payload),
    }
}

/// A step run by [`run_fired`] panicked: the panic is the failure of the
/// Deferred whose step it was, and the general loop continues with its
/// next errback.
#[cold]
#[inline(never)]
fn run_after_panic(cur: Rc<Core>, payload: Box<dyn std::any::Any + Send>) {
    set_panicked(&cur, Failure::from_panic(payload));
    run_callbacks(cur, None);
}

fn set_panicked(cur: &Rc<Core>, panic: Failure) {
    tracing::error!(failure = %panic, "a Deferred callback panicked");
    let mut st = cur.st.borrow_mut();
    st.result = Some(Err(panic));
    st.running = false;
}

/// The loop of [`run_fired`]: `None` when the run is over (the result
/// stored and `running` cleared, or paused waiting for a Deferred), else
/// what the general loop continues with (`core` still marked running).
///
/// `slot` holds the outcome on entry and is moved out by the return (a
/// step that panics has consumed it: nothing to drop).
#[inline(always)]
fn run_local(core: &Rc<Core>, slot: &mut MaybeUninit<Outcome>) -> Option<Next> {
    loop {
        let step = {
            let mut st = core.st.borrow_mut();
            if st.paused > 0 {
                // SAFETY: initialised (see the loop's end).
                return Some(Next::Done(unsafe { slot.assume_init_read() }));
            }
            match st.chain.pop_front_in_place() {
                Some(step) => step,
                // A Deferred waits for our result: the general loop hands
                // it over.
                None if st.chained_to.is_some() => {
                    // SAFETY: initialised (see the loop's end).
                    return Some(Next::Done(unsafe { slot.assume_init_read() }));
                }
                None => {
                    // SAFETY: initialised (see the loop's end).
                    unsafe { st.set_result_from(slot) };
                    st.running = false;
                    return None;
                }
            }
        };
        // SAFETY: nothing ran since the step was taken off the chain, and
        // the slot is initialised.
        match unsafe { step.call_in_place(slot.as_mut_ptr()) } {
            Flow::Done => {}
            Flow::Wait(inner) => {
                if !wait_or_take(core, inner, slot) {
                    return None;
                }
            }
            // SAFETY: the step wrote its outcome back.
            Flow::Deliver => return Some(Next::Deliver(unsafe { slot.assume_init_read() })),
        }
    }
}

/// Runs the chain of `start`, then of the Deferreds waiting on it, in a loop
/// (the general entry: for a first outcome other than a fired result, or
/// none, to start from the state).
///
/// One unwind guard covers the whole run: a panicking callback leaves its
/// Deferred as the current one, whose result becomes the panic's failure,
/// and the run resumes with the next errback.
#[cold]
#[inline(never)]
fn run_callbacks(start: Rc<Core>, first: Option<Next>) {
    let mut slot = MaybeUninit::<Outcome>::uninit();
    let mut first = match first {
        Some(Next::Done(outcome)) => {
            slot.write(outcome);
            Some(Flow::Done)
        }
        Some(Next::Deliver(outcome)) => {
            slot.write(outcome);
            Some(Flow::Deliver)
        }
        Some(Next::Wait(inner)) => Some(Flow::Wait(inner)),
        None => None,
    };
    let mut cur = start;
    loop {
        let mut held = None;
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_chains(&cur, &mut held, &mut slot, first.take())
        }));
        match run {
            Ok(()) => {
                if let Some(other) = held {
                    Core::release_returned(other);
                }
                Core::release_returned(cur);
                return;
            }
            Err(payload) => {
                if let Some(other) = held {
                    cur = other;
                }
                set_panicked(&cur, Failure::from_panic(payload));
            }
        }
    }
}

/// The run loop: runs the chain of the current Deferred (`start`, or
/// once the loop has moved on, the one in `held`), then of the Deferreds
/// waiting on it.
///
/// With `first`, the current Deferred is marked running and continues with
/// that flow (its outcome, when it has one, in `slot`); without, it starts
/// from its state if it can run. While a chain runs, its result lives in
/// `slot` rather than in the state: one borrow per step, and each step reads
/// and writes it in place. A step that panics has consumed the slot.
#[inline]
fn run_chains(
    start: &Rc<Core>,
    held: &mut Option<Rc<Core>>,
    slot: &mut MaybeUninit<Outcome>,
    first: Option<Flow>,
) {
    debug_assert!(held.is_none());
    // The current Deferred; `held` owns it once it is not `start`.
    let mut cur: &Rc<Core> = start;
    let mut flow = match first {
        Some(flow) => flow,
        None => {
            if !begin(cur, slot) {
                return;
            }
            Flow::Done
        }
    };
    loop {
        // `slot` is initialised here unless `flow` is `Wait`.
        match flow {
            Flow::Done => {}
            Flow::Deliver => deliver(cur, slot),
            Flow::Wait(inner) => {
                if let Some(outcome) = take_ready(cur, &inner) {
                    slot.write(outcome);
                    Core::release_returned(inner);
                } else {
                    match wait_for(cur, inner, slot) {
                        Waited::Continue => {}
                        Waited::Paused => return,
                        Waited::Switch(inner) => {
                            // The returned Deferred has fired but is idle
                            // with steps of its own: run them first.
                            if let Some(old) = held.replace(inner) {
                                Core::release_returned(old);
                            }
                            cur = held.as_ref().unwrap_or(start);
                            if !begin(cur, slot) {
                                return;
                            }
                        }
                    }
                }
            }
        }
        let step = {
            let mut st = cur.st.borrow_mut();
            if st.paused > 0 {
                // SAFETY: initialised (handled above).
                st.result = Some(unsafe { slot.assume_init_read() });
                st.running = false;
                return;
            }
            match st.chain.pop_front_in_place() {
                Some(step) => Some(step),
                None => {
                    st.running = false;
                    if st.chained_to.is_none() {
                        // SAFETY: initialised (handled above).
                        unsafe { st.set_result_from(slot) };
                        return;
                    }
                    None
                }
            }
        };
        match step {
            // SAFETY: nothing ran since the step was taken off the chain,
            // and the slot is initialised.
            Some(step) => flow = unsafe { step.call_in_place(slot.as_mut_ptr()) },
            None => {
                // The chain is exhausted and a Deferred waits for its result.
                let parent = hand_over(cur, slot);
                if let Some(old) = held.replace(parent) {
                    Core::release_returned(old);
                }
                cur = held.as_ref().unwrap_or(start);
                if !begin(cur, slot) {
                    return;
                }
                flow = Flow::Done;
            }
        }
    }
}

/// Starts `cur` from its state, when it has fired and is idle and not
/// paused: marks it running and moves its result into `slot`.
#[inline]
fn begin(cur: &Rc<Core>, slot: &mut MaybeUninit<Outcome>) -> bool {
    let mut st = cur.st.borrow_mut();
    if st.running || st.paused > 0 || !st.called {
        return false;
    }
    st.running = true;
    slot.write(st.result.take().unwrap_or_else(consumed));
    true
}

/// The chain of `cur` is exhausted and its result (in `slot`, moved out)
/// goes to the Deferred waiting on it, which is returned (one pause fewer).
#[inline(never)]
fn hand_over(cur: &Rc<Core>, slot: &mut MaybeUninit<Outcome>) -> Rc<Core> {
    let parent = {
        let mut st = cur.st.borrow_mut();
        // A neutral value stays so that dropping `cur` logs nothing: the
        // parent owns the result (and any failure) now.
        st.result = Some(Ok(Value::unit()));
        st.chained_to
            .take()
            .expect("hand_over: a Deferred waits on this one")
    };
    {
        let mut pst = parent.st.borrow_mut();
        // SAFETY: the caller's slot is initialised; read once.
        pst.result = Some(unsafe { slot.assume_init_read() });
        pst.paused = pst.paused.saturating_sub(1);
        pst.waiting_on = None;
    }
    parent
}

/// Hands the result in `slot` to the task awaiting `cur`; what stays in the
/// slot is neutral, so nothing is logged as unhandled.
#[cold]
#[inline(never)]
fn deliver(cur: &Rc<Core>, slot: &mut MaybeUninit<Outcome>) {
    // SAFETY: the caller's slot is initialised; read once, then rewritten.
    let outcome = unsafe { slot.assume_init_read() };
    slot.write(Ok(Value::unit()));
    let waker = {
        let mut st = cur.st.borrow_mut();
        st.delivered = Some(outcome);
        st.waker.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

enum Waited {
    /// The step's outcome is in the slot (a `ChainingError`).
    Continue,
    /// The current Deferred now waits for the returned one.
    Paused,
    /// The current Deferred waits for the returned one, which can run now.
    Switch(Rc<Core>),
}

/// A step of `cur` returned `inner`, which has not fired (or is busy):
/// `cur` pauses until `inner` hands its result over.
#[inline(never)]
fn wait_for(cur: &Rc<Core>, inner: Rc<Core>, slot: &mut MaybeUninit<Outcome>) -> Waited {
    if Rc::ptr_eq(&inner, cur) {
        slot.write(Err(Failure::new(ChainingError)));
        return Waited::Continue;
    }
    let mut ist = inner.st.borrow_mut();
    if ist.chained_to.is_some() {
        drop(ist);
        slot.write(Err(Failure::new(ChainingError)));
        return Waited::Continue;
    }
    ist.chained_to = Some(cur.clone());
    let inner_can_run = ist.called && ist.paused == 0 && !ist.running;
    drop(ist);
    {
        let mut st = cur.st.borrow_mut();
        st.paused += 1;
        st.waiting_on = Some(Rc::downgrade(&inner));
        st.running = false;
    }
    if inner_can_run {
        Waited::Switch(inner)
    } else {
        Waited::Paused
    }
}

/// For the fast loop: a step of `core` returned `inner`. True when the
/// outcome to go on with is in `slot` (`inner` had fired and is idle, or
/// could not be waited for); false when the run is over (`core` waits for
/// `inner`, or the general loop ran the rest). Out of line, which keeps
/// the loop's registers few.
#[inline(never)]
fn wait_or_take(core: &Rc<Core>, inner: Rc<Core>, slot: &mut MaybeUninit<Outcome>) -> bool {
    if let Some(outcome) = take_ready(core, &inner) {
        slot.write(outcome);
        Core::release(inner);
        return true;
    }
    match wait_for(core, inner, slot) {
        Waited::Continue => true,
        Waited::Paused => false,
        Waited::Switch(inner) => {
            run_callbacks(inner, None);
            false
        }
    }
}

/// The result of `inner`, a Deferred a step of `cur` returned, when it has
/// fired and is idle (no step to run, not paused, not chained elsewhere):
/// it is taken now, leaving a neutral value so that dropping `inner` does
/// not log a failure that is ours now.
#[inline]
fn take_ready(cur: &Rc<Core>, inner: &Rc<Core>) -> Option<Outcome> {
    if Rc::ptr_eq(inner, cur) {
        return None;
    }
    let mut ist = inner.st.borrow_mut();
    if ist.chained_to.is_none()
        && ist.called
        && ist.paused == 0
        && !ist.running
        && ist.chain.is_empty()
    {
        Some(
            ist.result
                .replace(Ok(Value::unit()))
                .unwrap_or_else(consumed),
        )
    } else {
        None
    }
}

thread_local! {
    /// Emptied chains of dropped Deferreds, reused so that building a chain
    /// rarely allocates its queue.
    static CHAIN_POOL: RefCell<Vec<Vec<Step>>> = const { RefCell::new(Vec::new()) };
}

fn new_chain() -> Chain {
    let steps = CHAIN_POOL
        .try_with(|p| p.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default();
    Chain { steps, head: 0 }
}

fn recycle_chain(chain: Vec<Step>) {
    if chain.is_empty() && chain.capacity() > 0 && chain.capacity() <= 256 {
        let _ = CHAIN_POOL.try_with(|p| {
            if let Ok(mut p) = p.try_borrow_mut() {
                if p.len() < 64 {
                    p.push(chain);
                }
            }
        });
    }
}

#[inline]
fn downcast<T: 'static>(v: Value) -> Result<T, Failure> {
    match v.take::<T>() {
        Ok(v) => Ok(v),
        Err(other) => Err(type_error(other, std::any::type_name::<T>())),
    }
}

/// Out of line, so that a step's code (run once per callback) does not
/// carry the error path's allocation.
#[cold]
#[inline(never)]
fn type_error(other: Value, expected: &'static str) -> Failure {
    drop(other);
    Failure::new(ChainTypeError { expected })
}

// ---------------------------------------------------------------------------
// The typed handle.

/// A value not computed yet, with a chain of callbacks and errbacks.
///
/// ```
/// use std::cell::Cell;
/// use std::rc::Rc;
/// use torsion_core::Deferred;
///
/// let d = Deferred::<u32>::new();
/// let seen = Rc::new(Cell::new(0));
/// let s = seen.clone();
/// d.clone()
///     .add_callback(|n| n * 2)             // 21 -> 42
///     .add_callback(move |n| s.set(n));
/// d.callback(21).unwrap();
/// assert_eq!(seen.get(), 42);
/// ```
///
/// A Deferred belongs to the thread that made it; it cannot be sent to
/// (or awaited on) another thread:
///
/// ```compile_fail
/// use torsion_core::Deferred;
/// let d = Deferred::<u32>::new();
/// std::thread::spawn(move || {
///     let _ = d.callback(1);
/// });
/// ```
///
/// nor can a future that awaits one be run by a multi-threaded executor:
///
/// ```compile_fail
/// use torsion_core::Deferred;
/// fn needs_send<F: std::future::Future + Send>(_: F) {}
/// let d = Deferred::<u32>::new();
/// needs_send(async move { d.await });
/// ```
pub struct Deferred<T: 'static> {
    /// Taken by hand in `drop` (the last handle recycles the core).
    core: ManuallyDrop<Rc<Core>>,
    /// This handle registered itself as the awaiter of the chain.
    awaiting: bool,
    _t: PhantomData<*const T>,
}

impl<T: 'static> Clone for Deferred<T> {
    fn clone(&self) -> Self {
        Deferred {
            core: ManuallyDrop::new(Rc::clone(&self.core)),
            awaiting: false,
            _t: PhantomData,
        }
    }
}

impl<T: 'static> Drop for Deferred<T> {
    #[inline]
    fn drop(&mut self) {
        if self.awaiting {
            self.core.drop_awaiter();
        }
        // SAFETY: `core` is not used after this point.
        let core = unsafe { ManuallyDrop::take(&mut self.core) };
        Core::release(core);
    }
}

impl<T: 'static> fmt::Debug for Deferred<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.core.st.try_borrow() {
            Ok(st) => f
                .debug_struct("Deferred")
                .field("called", &st.called)
                .field("paused", &st.paused)
                .field("pending_callbacks", &st.chain.len())
                .finish(),
            Err(_) => f.write_str("Deferred { running }"),
        }
    }
}

impl<T: 'static> Default for Deferred<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: 'static> Deferred<T> {
    /// A new, unfired Deferred.
    pub fn new() -> Self {
        Deferred {
            core: ManuallyDrop::new(Core::new()),
            awaiting: false,
            _t: PhantomData,
        }
    }

    pub(crate) fn from_core(core: Rc<Core>) -> Self {
        Deferred {
            core: ManuallyDrop::new(core),
            awaiting: false,
            _t: PhantomData,
        }
    }

    /// A new Deferred whose `cancel()` first calls `canceller` with it; if the
    /// canceller does not fire it, it fails with [`CancelledError`].
    ///
    /// ```
    /// use torsion_core::{Deferred, Failure};
    /// let d = Deferred::<u8>::with_canceller(|d| { let _ = d.errback(Failure::msg("stopped")); });
    /// let out = std::rc::Rc::new(std::cell::RefCell::new(String::new()));
    /// let o = out.clone();
    /// let handle = d.clone();
    /// d.finally(move |r| *o.borrow_mut() = r.unwrap_err().to_string());
    /// handle.cancel();
    /// assert_eq!(*out.borrow(), "stopped");
    /// ```
    pub fn with_canceller(canceller: impl FnOnce(&Deferred<T>) + 'static) -> Self {
        let d = Self::new();
        let weak = Rc::downgrade(&d.core);
        d.core.st.borrow_mut().canceller = Some(Box::new(move || {
            if let Some(core) = weak.upgrade() {
                canceller(&Deferred::from_core(core))
            }
        }));
        d
    }

    /// A Deferred that has already succeeded with `value`.
    pub fn succeed(value: T) -> Self {
        let d = Self::new();
        let _ = d.callback(value);
        d
    }

    /// A Deferred that has already failed.
    pub fn fail(failure: impl Into<Failure>) -> Self {
        let d = Self::new();
        let _ = d.errback(failure);
        d
    }

    /// Fires the chain with a value. Firing twice is an [`AlreadyCalledError`]
    /// (except the one late call after a `cancel`, which is ignored).
    #[inline]
    pub fn callback(&self, value: T) -> Result<(), AlreadyCalledError> {
        self.core.fire(Ok(Value::new(value)))
    }

    /// Fires the chain with a failure.
    pub fn errback(&self, failure: impl Into<Failure>) -> Result<(), AlreadyCalledError> {
        self.core.fire(Err(failure.into()))
    }

    /// Fires with `Ok` or `Err`.
    pub fn fire(&self, result: Result<T, Failure>) -> Result<(), AlreadyCalledError> {
        self.core.fire(result.map(Value::new))
    }

    /// True once `callback` or `errback` has been called (or it was cancelled).
    pub fn called(&self) -> bool {
        self.core.st.borrow().called
    }

    /// True while paused by `pause` or by waiting for a Deferred a callback returned.
    pub fn paused(&self) -> bool {
        self.core.st.borrow().paused > 0
    }

    /// Cancels the operation this Deferred stands for.
    ///
    /// Calls the canceller; if that does not fire the Deferred, it fails with
    /// [`CancelledError`] and a later `callback` from the producer is ignored.
    /// A Deferred paused on another one it is waiting for cancels that one.
    /// Cancelling a Deferred that has fired (and waits on nothing) does nothing.
    pub fn cancel(&self) {
        self.core.cancel();
    }

    /// Stops running callbacks until `unpause` is called as many times.
    pub fn pause(&self) {
        self.core.st.borrow_mut().paused += 1;
    }

    /// Undoes one `pause`; runs pending callbacks when none is left.
    pub fn unpause(&self) {
        let run = {
            let mut st = self.core.st.borrow_mut();
            st.paused = st.paused.saturating_sub(1);
            st.paused == 0 && st.called && !st.running
        };
        if run {
            run_callbacks(Rc::clone(&self.core), None);
        }
    }

    /// True when both handles stand for the same Deferred.
    pub fn ptr_eq(&self, other: &Deferred<T>) -> bool {
        Rc::ptr_eq(&self.core, &other.core)
    }

    pub(crate) fn downgrade_core(&self) -> Weak<Core> {
        Rc::downgrade(&self.core)
    }

    #[inline]
    pub(crate) fn push_raw(&self, step: Step) {
        self.core.push(step)
    }

    #[inline]
    fn retype<U: 'static>(self) -> Deferred<U> {
        let this = ManuallyDrop::new(self);
        Deferred {
            // SAFETY: `this` is never dropped, so the Rc is moved, not copied.
            core: unsafe { ptr::read(&this.core) },
            awaiting: false,
            _t: PhantomData,
        }
    }

    /// Adds a callback that maps the value; failures pass by untouched.
    #[inline]
    pub fn add_callback<U: 'static>(self, f: impl FnOnce(T) -> U + 'static) -> Deferred<U> {
        self.push_raw(Step::from_run(MapStep(f, PhantomData)));
        self.retype()
    }

    /// Adds a callback that may fail: returning `Err` switches the chain to errbacks.
    pub fn add_callback_result<U: 'static>(
        self,
        f: impl FnOnce(T) -> Result<U, Failure> + 'static,
    ) -> Deferred<U> {
        self.push_raw(Step::new(move |o| {
            Next::Done(match o {
                Ok(v) => downcast::<T>(v).and_then(f).map(Value::new),
                Err(e) => Err(e),
            })
        }));
        self.retype()
    }

    /// Adds a callback that returns another Deferred; the chain pauses until it fires
    /// and continues with its result.
    pub fn add_callback_deferred<U: 'static>(
        self,
        f: impl FnOnce(T) -> Deferred<U> + 'static,
    ) -> Deferred<U> {
        self.push_raw(Step::from_run(ThenStep(f, PhantomData)));
        self.retype()
    }

    fn into_core(self) -> Rc<Core> {
        let this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so the Rc is moved, not copied.
        ManuallyDrop::into_inner(unsafe { ptr::read(&this.core) })
    }

    /// Adds an errback: it sees failures only, and may recover (`Ok`) or pass one on (`Err`).
    pub fn add_errback(
        self,
        f: impl FnOnce(Failure) -> Result<T, Failure> + 'static,
    ) -> Deferred<T> {
        self.push_raw(Step::new(move |o| {
            Next::Done(match o {
                Ok(v) => Ok(v),
                Err(e) => f(e).map(Value::new),
            })
        }));
        self
    }

    /// Adds an errback that recovers through another Deferred.
    pub fn add_errback_deferred(
        self,
        f: impl FnOnce(Failure) -> Deferred<T> + 'static,
    ) -> Deferred<T> {
        self.push_raw(Step::new(move |o| match o {
            Ok(v) => Next::Done(Ok(v)),
            Err(e) => Next::Wait(f(e).into_core()),
        }));
        self
    }

    /// Adds a callback and an errback at the same position of the chain:
    /// exactly one of them runs, and an errback here never sees a failure
    /// raised by the callback beside it.
    pub fn add_callbacks<U: 'static>(
        self,
        callback: impl FnOnce(T) -> Result<U, Failure> + 'static,
        errback: impl FnOnce(Failure) -> Result<U, Failure> + 'static,
    ) -> Deferred<U> {
        self.push_raw(Step::new(move |o| {
            Next::Done(match o {
                Ok(v) => downcast::<T>(v).and_then(callback).map(Value::new),
                Err(e) => errback(e).map(Value::new),
            })
        }));
        self.retype()
    }

    /// Adds one function called with the result either way (Twisted's `addBoth`).
    pub fn add_both<U: 'static>(
        self,
        f: impl FnOnce(Result<T, Failure>) -> Result<U, Failure> + 'static,
    ) -> Deferred<U> {
        self.push_raw(Step::new(move |o| {
            let typed = o.and_then(downcast::<T>);
            Next::Done(f(typed).map(Value::new))
        }));
        self.retype()
    }

    /// Like `add_both`, returning a Deferred that the chain waits for.
    pub fn add_both_deferred<U: 'static>(
        self,
        f: impl FnOnce(Result<T, Failure>) -> Deferred<U> + 'static,
    ) -> Deferred<U> {
        self.push_raw(Step::new(move |o| {
            let typed = o.and_then(downcast::<T>);
            Next::Wait(f(typed).into_core())
        }));
        self.retype()
    }

    /// Fires `other` with this chain's result when it arrives (Twisted's
    /// `chainDeferred`). This chain's result afterwards is `()`: the result
    /// (and the duty to handle a failure) moved to `other`.
    ///
    /// ```
    /// use torsion_core::Deferred;
    /// let a = Deferred::<u8>::new();
    /// let b = Deferred::<u8>::new();
    /// a.clone().chain_deferred(&b);
    /// a.callback(3).unwrap();
    /// assert!(b.called());
    /// ```
    pub fn chain_deferred(self, other: &Deferred<T>) -> Deferred<()> {
        let other = other.clone();
        self.add_both(move |r| {
            if let Err(e) = other.fire(r) {
                tracing::debug!(error = %e, "chain_deferred: the target had already fired");
            }
            Ok(())
        })
    }

    /// Consumes the result: runs `f` with it and ends the chain. Failures count as handled.
    pub fn finally(self, f: impl FnOnce(Result<T, Failure>) + 'static) {
        self.add_both(move |r| {
            f(r);
            Ok(())
        });
    }

    /// Times the Deferred out: if it has not fired `timeout` from now on
    /// `clock`, it is cancelled, and the `CancelledError` that results is
    /// turned into a [`TimeoutError`] (Twisted's `addTimeout`).
    ///
    /// ```
    /// use std::time::Duration;
    /// use torsion_core::{testing::Clock, Deferred, TimeoutError};
    /// let clock = Clock::new();
    /// let d = Deferred::<u8>::new().add_timeout(Duration::from_secs(5), &clock);
    /// let out = std::rc::Rc::new(std::cell::Cell::new(false));
    /// let o = out.clone();
    /// d.finally(move |r| o.set(r.unwrap_err().check::<TimeoutError>()));
    /// clock.advance(Duration::from_secs(5));
    /// assert!(out.get());
    /// ```
    pub fn add_timeout<C: Clock + ?Sized>(self, timeout: Duration, clock: &C) -> Deferred<T> {
        self.add_timeout_inner(timeout, clock, None)
    }

    /// Like [`add_timeout`](Self::add_timeout), but on timeout the result
    /// (normally the `CancelledError` failure, or whatever the canceller fired
    /// with) goes through `on_timeout` instead of becoming a `TimeoutError`.
    pub fn add_timeout_with<C: Clock + ?Sized>(
        self,
        timeout: Duration,
        clock: &C,
        on_timeout: impl FnOnce(Result<T, Failure>, Duration) -> Result<T, Failure> + 'static,
    ) -> Deferred<T> {
        self.add_timeout_inner(timeout, clock, Some(Box::new(on_timeout)))
    }

    #[allow(clippy::type_complexity)]
    fn add_timeout_inner<C: Clock + ?Sized>(
        self,
        timeout: Duration,
        clock: &C,
        on_timeout: Option<Box<dyn FnOnce(Result<T, Failure>, Duration) -> Result<T, Failure>>>,
    ) -> Deferred<T> {
        let timed_out = Rc::new(std::cell::Cell::new(false));
        // The timer keeps the Deferred alive, as a pending producer would;
        // firing in time cancels the timer and so lets go of it.
        let core = Rc::clone(&self.core);
        let flag = timed_out.clone();
        let call = clock.call_later(
            timeout,
            Box::new(move || {
                flag.set(true);
                core.cancel();
            }),
        );
        self.add_both(move |r| {
            // Fired in time (or timed out): the timer is no longer needed.
            let _ = call.cancel();
            if !timed_out.get() {
                return r;
            }
            match on_timeout {
                Some(hook) => hook(r, timeout),
                None => match r {
                    Err(f) if f.check::<CancelledError>() => Err(Failure::new(TimeoutError)),
                    other => other,
                },
            }
        })
    }
}

impl<T: 'static> Deferred<Deferred<T>> {
    /// Flattens a Deferred of a Deferred.
    pub fn flatten(self) -> Deferred<T> {
        self.add_callback_deferred(|d| d)
    }
}

/// A Deferred is a future of its result.
///
/// Awaiting takes the result out of the chain: callbacks added afterwards
/// through a clone see [`ResultConsumedError`]. Only one task may await a
/// given chain (a second gets [`AlreadyAwaitedError`]). Dropping the
/// awaiting future before the result arrives cancels the Deferred.
///
/// ```
/// use torsion_core::{Deferred, Failure, Reactor};
/// let reactor = Reactor::new().unwrap();
/// let d = Deferred::<u32>::new();
/// let feed = d.clone();
/// reactor.call_soon(move || { feed.callback(5).unwrap(); });
/// let r = reactor.clone();
/// let task = Deferred::from_future(&reactor, async move {
///     let v = d.await?;
///     r.stop().unwrap();
///     Ok::<_, Failure>(v * 2)
/// });
/// reactor.run().unwrap();
/// assert!(task.called());
/// ```
impl<T: 'static> Future for Deferred<T> {
    type Output = Result<T, Failure>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if !this.awaiting {
            {
                let mut st = this.core.st.borrow_mut();
                if st.awaited {
                    return Poll::Ready(Err(Failure::new(AlreadyAwaitedError)));
                }
                st.awaited = true;
                st.waker = Some(cx.waker().clone());
            }
            this.awaiting = true;
            // May run at once (and deliver) when the Deferred has fired.
            this.core.push(Step::new(Next::Deliver));
        }
        let mut st = this.core.st.borrow_mut();
        if let Some(outcome) = st.delivered.take() {
            st.waker = None;
            drop(st);
            this.awaiting = false;
            return Poll::Ready(outcome.and_then(downcast::<T>));
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

/// Calls `f`, turning its value, failure, Deferred or panic into a Deferred
/// (Twisted's `maybeDeferred`).
///
/// ```
/// use torsion_core::{deferred::maybe_deferred, Deferred, Failure};
/// let d: Deferred<u8> = maybe_deferred(|| -> Result<u8, Failure> { panic!("oops") });
/// let out = std::rc::Rc::new(std::cell::RefCell::new(None));
/// let o = out.clone();
/// d.finally(move |r| *o.borrow_mut() = Some(r.is_err()));
/// assert_eq!(*out.borrow(), Some(true));
/// ```
pub fn maybe_deferred<T: 'static, R: IntoDeferred<T>>(f: impl FnOnce() -> R) -> Deferred<T> {
    match catch(f) {
        Ok(r) => r.into_deferred(),
        Err(panic) => Deferred::fail(panic),
    }
}

/// What `maybe_deferred` accepts from its function.
pub trait IntoDeferred<T: 'static> {
    /// Converts into a Deferred.
    fn into_deferred(self) -> Deferred<T>;
}

impl<T: 'static> IntoDeferred<T> for Deferred<T> {
    fn into_deferred(self) -> Deferred<T> {
        self
    }
}

impl<T: 'static> IntoDeferred<T> for Result<T, Failure> {
    fn into_deferred(self) -> Deferred<T> {
        match self {
            Ok(v) => Deferred::succeed(v),
            Err(f) => Deferred::fail(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_inline_and_boxed_round_trip() {
        let v = Value::new(7u64);
        assert_eq!(v.take::<u64>().ok(), Some(7));
        let s = Value::new(String::from("abc"));
        assert_eq!(s.take::<String>().ok().as_deref(), Some("abc"));
        let big = Value::new([9u64; 8]);
        assert_eq!(big.take::<[u64; 8]>().ok(), Some([9u64; 8]));
        let wrong = Value::new(1u8);
        let Err(back) = wrong.take::<u16>() else {
            panic!("type mismatch not detected")
        };
        assert_eq!(back.take::<u8>().ok(), Some(1));
        // Drops run exactly once for both layouts.
        let rc = Rc::new(());
        drop(Value::new(rc.clone()));
        drop(Value::new([rc.clone(), rc.clone(), rc.clone(), rc.clone()]));
        assert_eq!(Rc::strong_count(&rc), 1);
    }

    #[test]
    fn recycled_cores_start_fresh_and_release_their_values() {
        let marker = Rc::new(());
        let d = Deferred::<Rc<()>>::new();
        d.pause();
        d.callback(marker.clone()).unwrap();
        let addr = Rc::as_ptr(&d.core);
        drop(d);
        assert_eq!(Rc::strong_count(&marker), 1, "the result was dropped");
        let e = Deferred::<u32>::new();
        assert_eq!(Rc::as_ptr(&e.core), addr, "the core was reused");
        assert!(!e.called() && !e.paused());
        let seen = Rc::new(std::cell::Cell::new(0));
        let s = seen.clone();
        e.clone().add_callback(move |v| s.set(v));
        e.callback(5).unwrap();
        assert_eq!(seen.get(), 5);
        assert_eq!(e.callback(6), Err(AlreadyCalledError));
        // A core still referenced elsewhere (here: weakly) is not reused.
        let weak = Rc::downgrade(&e.core);
        drop(e);
        let f = Deferred::<u32>::new();
        assert!(!std::ptr::eq(Rc::as_ptr(&f.core), weak.as_ptr()));
    }

    #[test]
    fn steps_inline_and_boxed_run_or_drop_exactly_once() {
        let rc = Rc::new(());
        // Inline (one word captured) and boxed (five words captured).
        let small = {
            let r = rc.clone();
            Step::new(move |o| {
                drop(r);
                Next::Done(o)
            })
        };
        let big = {
            let rs = [rc.clone(), rc.clone(), rc.clone(), rc.clone(), rc.clone()];
            Step::new(move |o| {
                drop(rs);
                Next::Done(o.map(|v| Value::new(v.take::<u32>().map_or(0, |n| n + 1))))
            })
        };
        assert_eq!(Rc::strong_count(&rc), 7);
        let Next::Done(Ok(v)) = big.call(Ok(Value::new(41u32))) else {
            panic!("the boxed step did not run")
        };
        assert_eq!(v.take::<u32>().ok(), Some(42));
        assert_eq!(Rc::strong_count(&rc), 2);
        drop(small);
        assert_eq!(Rc::strong_count(&rc), 1);
        // Dropped without running, boxed: the captures go too.
        let r = [rc.clone(), rc.clone(), rc.clone()];
        drop(Step::new(move |o| {
            drop(r);
            Next::Done(o)
        }));
        assert_eq!(Rc::strong_count(&rc), 1);
        // A step that panics releases its captures as it unwinds.
        let r = rc.clone();
        let step = Step::new(move |_| -> Next {
            let _keep = &r;
            panic!("step panicked")
        });
        assert!(catch(move || step.call(Ok(Value::unit()))).is_err());
        assert_eq!(Rc::strong_count(&rc), 1);
    }

    #[test]
    fn chain_drops_only_the_steps_not_yet_run() {
        let rc = Rc::new(());
        let mut chain = new_chain();
        for _ in 0..5 {
            let r = rc.clone();
            chain.push(Step::new(move |o| {
                drop(r);
                Next::Done(o)
            }));
        }
        for _ in 0..2 {
            let step = chain.pop_front().expect("a step");
            let _ = step.call(Ok(Value::unit()));
        }
        assert_eq!(chain.len(), 3);
        assert_eq!(Rc::strong_count(&rc), 4);
        drop(chain);
        assert_eq!(Rc::strong_count(&rc), 1);
        // Draining to the end resets the storage for reuse.
        let mut chain = new_chain();
        chain.push(Step::new(Next::Done));
        assert!(chain.pop_front().is_some());
        assert!(chain.is_empty() && chain.pop_front().is_none());
        assert!(chain.into_empty_vec().is_empty());
    }

    #[test]
    fn map_steps_move_inline_and_boxed_values_and_closures() {
        let rc = Rc::new(());
        let seen = Rc::new(RefCell::new(Vec::new()));
        let d = Deferred::<[u64; 6]>::new();
        // A boxed value (six words) into a closure capturing five words
        // (boxed too), out as an inline `String`, then a `Vec` of `Rc`s.
        let caps = [rc.clone(), rc.clone(), rc.clone(), rc.clone(), rc.clone()];
        let (s1, s2) = (seen.clone(), seen.clone());
        let r = rc.clone();
        d.clone()
            .add_callback(move |a| {
                drop(caps);
                format!("{}", a.iter().sum::<u64>())
            })
            .add_callback(move |s| {
                s1.borrow_mut().push(s);
                vec![r.clone(), r]
            })
            .add_callback(move |v| s2.borrow_mut().push(v.len().to_string()));
        assert_eq!(Rc::strong_count(&rc), 7);
        d.callback([1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(*seen.borrow(), ["21", "2"]);
        assert_eq!(Rc::strong_count(&rc), 1, "captures and values dropped once");
        // Steps dropped without running release their captures too.
        let e = Deferred::<u8>::new();
        let caps = [rc.clone(), rc.clone(), rc.clone()];
        e.clone().add_callback(move |x| {
            drop(caps);
            x
        });
        drop(e);
        assert_eq!(Rc::strong_count(&rc), 1);
    }

    #[test]
    fn returned_deferreds_go_back_to_the_pool() {
        // Fired before it is returned: taken at once, its core pooled.
        let inner = Deferred::<u32>::succeed(4);
        let inner_addr = Rc::as_ptr(&inner.core);
        let d = Deferred::<u32>::new();
        let out = Rc::new(std::cell::Cell::new(0));
        let o = out.clone();
        d.clone()
            .add_callback_deferred(move |_| inner)
            .add_callback(move |v| o.set(v));
        d.callback(1).unwrap();
        assert_eq!(out.get(), 4);
        assert_eq!(Rc::as_ptr(&Deferred::<u8>::new().core), inner_addr);
        // Fired later: the outer chain pauses, resumes with its result, and
        // both cores are pooled once the handles are gone.
        let inner = Deferred::<u32>::new();
        let i2 = inner.clone();
        let d = Deferred::<u32>::new();
        let o = out.clone();
        d.clone()
            .add_callback_deferred(move |_| i2)
            .add_callback(move |v| o.set(v + 1));
        d.callback(1).unwrap();
        assert!(d.paused());
        inner.callback(9).unwrap();
        assert!(!d.paused());
        assert_eq!(out.get(), 10);
        let (a, b) = (Rc::as_ptr(&d.core), Rc::as_ptr(&inner.core));
        drop(d);
        drop(inner);
        let (x, y) = (Deferred::<u8>::new(), Deferred::<u8>::new());
        assert_eq!((Rc::as_ptr(&x.core), Rc::as_ptr(&y.core)), (b, a));
    }

    #[test]
    fn the_pool_is_bounded_and_emptied_when_its_thread_exits() {
        let t = std::thread::spawn(|| {
            let many: Vec<Deferred<u8>> =
                (0..CORE_POOL_MAX + 50).map(|_| Deferred::new()).collect();
            drop(many);
            let p = CorePool::get();
            let mut pooled = 0;
            let mut next = p.head.get();
            while !next.is_null() {
                pooled += 1;
                // SAFETY: pooled cores stay alive while pooled.
                next = unsafe { (*next).pool_next.get() };
            }
            assert_eq!(pooled, CORE_POOL_MAX);
            assert_eq!(p.room.get(), 0);
            assert!(p.state.get() == PoolState::Guarded);
            // A Deferred dropped while the thread's destructors run, before
            // or after the pool's guard: pooled then freed, or freed (run
            // under valgrind's memcheck, nothing leaks).
            struct DropLate(Option<Deferred<u8>>);
            impl Drop for DropLate {
                fn drop(&mut self) {
                    drop(self.0.take());
                }
            }
            thread_local! {
                static LATE: RefCell<Option<DropLate>> = const { RefCell::new(None) };
            }
            LATE.with(|l| *l.borrow_mut() = Some(DropLate(Some(Deferred::new()))));
        });
        t.join().expect("the thread ran");
    }

    #[test]
    fn a_returned_deferred_fired_later_resumes_its_waiter_on_every_path() {
        let out = Rc::new(RefCell::new(Vec::<String>::new()));
        // With a canceller, fired with a failure; the outer chain's handles
        // are all dropped before: only the inner one keeps it alive.
        let inner = Deferred::<u32>::with_canceller(|_| {});
        let i2 = inner.clone();
        let o = out.clone();
        let outer = Deferred::<u32>::new();
        outer
            .clone()
            .add_callback_deferred(move |_| i2)
            .add_callbacks(|v| Ok(v.to_string()), |f| Ok(format!("failed: {f}")))
            .add_callback(move |s| o.borrow_mut().push(s));
        outer.callback(1).unwrap();
        let outer_addr = Rc::as_ptr(&outer.core);
        drop(outer);
        assert!(out.borrow().is_empty());
        inner.errback(Failure::msg("no")).unwrap();
        assert_eq!(*out.borrow(), ["failed: no"]);
        // The waiter's core went back to the pool once the run was over.
        drop(inner);
        let reuse: Vec<_> = (0..2).map(|_| Deferred::<u8>::new()).collect();
        assert!(reuse.iter().any(|d| Rc::as_ptr(&d.core) == outer_addr));
        // Three levels, fired innermost first, each with a canceller.
        let a = Deferred::<u32>::with_canceller(|_| {});
        let b = Deferred::<u32>::with_canceller(|_| {});
        let c = Deferred::<u32>::with_canceller(|_| {});
        let (b2, c2) = (b.clone(), c.clone());
        let o = out.clone();
        a.clone()
            .add_callback_deferred(move |x| b2.add_callback(move |y| x + y))
            .add_callback(move |v| o.borrow_mut().push(v.to_string()));
        b.clone().add_callback_deferred(move |_| c2);
        a.callback(1).unwrap();
        b.callback(10).unwrap();
        assert!(a.paused() && b.paused());
        c.callback(100).unwrap();
        assert!(!a.paused() && !b.paused());
        assert_eq!(out.borrow().last().map(String::as_str), Some("101"));
    }

    #[test]
    fn a_waiter_unpaused_by_hand_and_its_returned_deferred_firing_meanwhile() {
        // `unpause` lets a Deferred waiting on another run on (with
        // `ResultConsumedError`, its result being with the step that
        // returned the other); if that other one fires during the run, its
        // result lands in the waiter's state, and the run's own result
        // replaces it when the run ends (the old one is dropped, not lost).
        let marker = Rc::new(());
        let inner = Deferred::<Rc<()>>::new();
        let (i2, i3) = (inner.clone(), inner.clone());
        let outer = Deferred::<u8>::new();
        let seen = Rc::new(RefCell::new(Vec::new()));
        let s = seen.clone();
        let m = marker.clone();
        let tail = outer.clone().add_callback_deferred(move |_| i2);
        outer.callback(1).unwrap();
        assert!(outer.paused());
        tail.add_both(move |r| {
            s.borrow_mut().push(r.is_err());
            i3.callback(m).unwrap();
            Ok(7u8)
        });
        outer.unpause();
        assert_eq!(*seen.borrow(), [true]);
        assert_eq!(Rc::strong_count(&marker), 1, "the inner result was dropped");
        let r = Rc::new(RefCell::new(None));
        let r2 = r.clone();
        outer
            .clone()
            .finally(move |v| *r2.borrow_mut() = Some(v.ok()));
        assert_eq!(*r.borrow(), Some(Some(7)), "the run's own result stays");
        drop((outer, inner));
        assert_eq!(Rc::strong_count(&marker), 1, "the inner result was dropped");
    }
}
