//! Waiting on several Deferreds at once: [`DeferredList`], [`gather_results`], [`race`].
//!
//! The combinators take the member Deferreds by value: each member's result
//! moves into the combined result (values need not be `Clone`). A member's
//! failure is cloned into the combined result and, unless errors are
//! consumed, also left on the member's chain — so a failure nobody looks at
//! is still logged as unhandled, as in Twisted.

use std::cell::RefCell;
use std::error::Error;
use std::fmt;
use std::rc::{Rc, Weak};

use crate::deferred::{Core, Deferred};
use crate::failure::Failure;

/// A member of a [`gather_results`] (or a `fire_on_one_errback`
/// [`DeferredList`]) failed.
#[derive(Debug, Clone)]
pub struct FirstError {
    /// Position of the failed Deferred in the list.
    pub index: usize,
    /// Its failure.
    pub failure: Failure,
}

impl fmt::Display for FirstError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Deferred #{} in the list failed", self.index)
    }
}

impl Error for FirstError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self.failure.error())
    }
}

/// Every Deferred given to [`race`] failed (or there was none).
#[derive(Debug, Clone)]
pub struct FailureGroup {
    /// The failures, in the order of the Deferreds.
    pub failures: Vec<Failure>,
}

impl fmt::Display for FailureGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "all {} Deferreds failed", self.failures.len())?;
        for (i, x) in self.failures.iter().enumerate() {
            write!(f, "; #{i}: {x}")?;
        }
        Ok(())
    }
}

impl Error for FailureGroup {}

/// What a [`DeferredList`] fires with.
#[derive(Debug)]
pub enum ListOutcome<T> {
    /// Every member fired: `(success, result)` per member, in list order.
    All(Vec<(bool, Result<T, Failure>)>),
    /// With `fire_on_one_callback`: the first member to succeed.
    First {
        /// Position of that member.
        index: usize,
        /// Its value.
        value: T,
    },
}

impl<T> ListOutcome<T> {
    /// The per-member results, when every member fired.
    pub fn into_all(self) -> Option<Vec<(bool, Result<T, Failure>)>> {
        match self {
            ListOutcome::All(v) => Some(v),
            ListOutcome::First { .. } => None,
        }
    }
}

/// Fires when all (or, by option, the first successful or failed) of a list
/// of Deferreds have fired (Twisted's `DeferredList`).
///
/// Cancelling the combined Deferred cancels every member that has not fired.
///
/// ```
/// use torsion_core::{Deferred, Failure, DeferredList, ListOutcome};
/// let a = Deferred::<u8>::new();
/// let b = Deferred::<u8>::new();
/// let all = DeferredList::new([a.clone(), b.clone()]).consume_errors(true).build();
/// let out = std::rc::Rc::new(std::cell::RefCell::new(None));
/// let o = out.clone();
/// all.add_callback(move |r| *o.borrow_mut() = r.into_all());
/// b.errback(Failure::msg("no")).unwrap();
/// a.callback(1).unwrap();
/// let got = out.borrow_mut().take().unwrap();
/// assert!(got[0].0 && !got[1].0);
/// ```
pub struct DeferredList<T: 'static> {
    members: Vec<Deferred<T>>,
    fire_on_one_callback: bool,
    fire_on_one_errback: bool,
    consume_errors: bool,
}

struct ListState<T> {
    results: Vec<Option<Result<T, Failure>>>,
    remaining: usize,
    done: bool,
}

fn cancel_all<T: 'static>(members: &[Weak<Core>]) {
    for m in members {
        if let Some(core) = m.upgrade() {
            Deferred::<T>::from_core(core).cancel();
        }
    }
}

impl<T: 'static> DeferredList<T> {
    /// A list over `members`; by default it fires when all have fired.
    pub fn new(members: impl IntoIterator<Item = Deferred<T>>) -> Self {
        DeferredList {
            members: members.into_iter().collect(),
            fire_on_one_callback: false,
            fire_on_one_errback: false,
            consume_errors: false,
        }
    }

    /// Fire with [`ListOutcome::First`] as soon as one member succeeds.
    pub fn fire_on_one_callback(mut self, yes: bool) -> Self {
        self.fire_on_one_callback = yes;
        self
    }

    /// Fail with [`FirstError`] as soon as one member fails.
    pub fn fire_on_one_errback(mut self, yes: bool) -> Self {
        self.fire_on_one_errback = yes;
        self
    }

    /// Mark members' failures as handled (they are not logged as unhandled).
    pub fn consume_errors(mut self, yes: bool) -> Self {
        self.consume_errors = yes;
        self
    }

    /// The combined Deferred.
    pub fn build(self) -> Deferred<ListOutcome<T>> {
        let n = self.members.len();
        let weak: Vec<Weak<Core>> = self.members.iter().map(|d| d.downgrade_core()).collect();
        let out = Deferred::with_canceller(move |_| cancel_all::<T>(&weak));
        if n == 0 {
            let _ = out.callback(ListOutcome::All(Vec::new()));
            return out;
        }
        let state = Rc::new(RefCell::new(ListState {
            results: (0..n).map(|_| None).collect(),
            remaining: n,
            done: false,
        }));
        let (on_cb, on_eb, consume) = (
            self.fire_on_one_callback,
            self.fire_on_one_errback,
            self.consume_errors,
        );
        for (index, member) in self.members.into_iter().enumerate() {
            let state = state.clone();
            let out = out.clone();
            member.add_both(move |r| {
                let keep = match &r {
                    Err(f) if !consume => Err(f.clone()),
                    _ => Ok(()),
                };
                // Decide under the borrow; fire `out` (user code) after it.
                let fire: Option<Result<ListOutcome<T>, Failure>> = {
                    let mut st = state.borrow_mut();
                    st.remaining -= 1;
                    if st.done {
                        None
                    } else {
                        match r {
                            Ok(value) if on_cb => {
                                st.done = true;
                                Some(Ok(ListOutcome::First { index, value }))
                            }
                            Err(failure) if on_eb => {
                                st.done = true;
                                Some(Err(Failure::new(FirstError { index, failure })))
                            }
                            r => {
                                st.results[index] = Some(r);
                                if st.remaining == 0 {
                                    st.done = true;
                                    let all = st
                                        .results
                                        .drain(..)
                                        .map(|r| {
                                            let r = r.unwrap_or_else(|| {
                                                Err(Failure::msg("missing DeferredList result"))
                                            });
                                            (r.is_ok(), r)
                                        })
                                        .collect();
                                    Some(Ok(ListOutcome::All(all)))
                                } else {
                                    None
                                }
                            }
                        }
                    }
                };
                if let Some(result) = fire {
                    let _ = out.fire(result);
                }
                keep
            });
        }
        out
    }
}

/// Fires with every member's value, in order, or fails with a
/// [`FirstError`] naming the first member to fail (Twisted's `gatherResults`).
///
/// ```
/// use torsion_core::{gather_results, Deferred};
/// let d = gather_results([Deferred::succeed(1), Deferred::succeed(2)], false);
/// let out = std::rc::Rc::new(std::cell::RefCell::new(vec![]));
/// let o = out.clone();
/// d.add_callback(move |v| *o.borrow_mut() = v);
/// assert_eq!(*out.borrow(), vec![1, 2]);
/// ```
pub fn gather_results<T: 'static>(
    members: impl IntoIterator<Item = Deferred<T>>,
    consume_errors: bool,
) -> Deferred<Vec<T>> {
    DeferredList::new(members)
        .fire_on_one_errback(true)
        .consume_errors(consume_errors)
        .build()
        .add_callback_result(|outcome| match outcome {
            ListOutcome::All(all) => all.into_iter().map(|(_, r)| r).collect(),
            ListOutcome::First { .. } => Err(Failure::msg("unexpected DeferredList outcome")),
        })
}

/// The first member to succeed wins: fires with `(index, value)` and
/// cancels the others. When all fail, fails with a [`FailureGroup`].
/// Cancelling the result cancels every member (Twisted's `race`).
///
/// ```
/// use torsion_core::{race, Deferred};
/// let slow = Deferred::<u8>::new();
/// let fast = Deferred::<u8>::new();
/// let winner = race([slow.clone(), fast.clone()]);
/// let out = std::rc::Rc::new(std::cell::Cell::new(None));
/// let o = out.clone();
/// winner.add_callback(move |w| o.set(Some(w)));
/// fast.callback(9).unwrap();
/// assert_eq!(out.get(), Some((1, 9)));
/// assert!(slow.called()); // cancelled
/// ```
pub fn race<T: 'static>(members: impl IntoIterator<Item = Deferred<T>>) -> Deferred<(usize, T)> {
    let members: Vec<Deferred<T>> = members.into_iter().collect();
    let n = members.len();
    let weak: Rc<Vec<Weak<Core>>> = Rc::new(members.iter().map(|d| d.downgrade_core()).collect());
    let w = weak.clone();
    let out = Deferred::with_canceller(move |_| cancel_all::<T>(&w));
    if n == 0 {
        let _ = out.errback(Failure::new(FailureGroup {
            failures: Vec::new(),
        }));
        return out;
    }
    struct RaceState {
        failures: Vec<Option<Failure>>,
        failed: usize,
        done: bool,
    }
    let state = Rc::new(RefCell::new(RaceState {
        failures: vec![None; n],
        failed: 0,
        done: false,
    }));
    for (index, member) in members.into_iter().enumerate() {
        let state = state.clone();
        let out = out.clone();
        let weak = weak.clone();
        member.add_both(move |r| {
            let fire = {
                let mut st = state.borrow_mut();
                if st.done {
                    None
                } else {
                    match r {
                        Ok(v) => {
                            st.done = true;
                            Some(Ok((index, v)))
                        }
                        Err(f) => {
                            st.failures[index] = Some(f);
                            st.failed += 1;
                            if st.failed == n {
                                st.done = true;
                                let failures =
                                    st.failures.iter_mut().filter_map(Option::take).collect();
                                Some(Err(Failure::new(FailureGroup { failures })))
                            } else {
                                None
                            }
                        }
                    }
                }
            };
            if let Some(result) = fire {
                if result.is_ok() {
                    // The losers' CancelledErrors land in this closure too and
                    // are consumed there.
                    for (i, m) in weak.iter().enumerate() {
                        if i != index {
                            if let Some(core) = m.upgrade() {
                                Deferred::<T>::from_core(core).cancel();
                            }
                        }
                    }
                }
                let _ = out.fire(result);
            }
            Ok(())
        });
    }
    out
}
