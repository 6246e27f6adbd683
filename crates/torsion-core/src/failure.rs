//! `Failure`: the error value that flows down errback chains.
//!
//! A `Failure` wraps any `Error + Send + Sync + 'static` (or a caught panic) so
//! that one type can travel through Deferred chains, `connection_lost` and
//! `client_connection_failed`, while the original error stays reachable with
//! [`Failure::check`], [`Failure::downcast_ref`] and [`Failure::trap`].

use std::any::Any;
use std::backtrace::{Backtrace, BacktraceStatus};
use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// A shareable, type-erased error with an optional backtrace.
///
/// ```
/// use torsion_core::Failure;
/// let f = Failure::new(std::io::Error::new(std::io::ErrorKind::Other, "boom"));
/// assert!(f.check::<std::io::Error>());
/// assert_eq!(f.downcast_ref::<std::io::Error>().unwrap().to_string(), "boom");
/// ```
#[derive(Clone)]
pub struct Failure {
    inner: Arc<Inner>,
}

struct Inner {
    error: Box<dyn Error + Send + Sync + 'static>,
    backtrace: Option<Backtrace>,
}

/// The error a [`Failure`] holds when a user callback panicked.
#[derive(Debug, Clone, thiserror::Error)]
#[error("panic: {message}")]
pub struct PanicError {
    /// The panic payload as text (`&str` and `String` payloads; others are described).
    pub message: String,
}

impl PanicError {
    /// Builds the error from a payload returned by `std::panic::catch_unwind`.
    pub fn from_payload(payload: &(dyn Any + Send)) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_string()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "non-string panic payload".to_string()
        };
        PanicError { message }
    }
}

/// A plain message used by [`Failure::msg`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct MessageError(pub String);

impl Failure {
    /// Wraps an error. Captures a backtrace when `RUST_BACKTRACE` asks for one.
    pub fn new<E: Error + Send + Sync + 'static>(error: E) -> Self {
        Self::from_boxed(Box::new(error))
    }

    /// Wraps an already boxed error.
    pub fn from_boxed(error: Box<dyn Error + Send + Sync + 'static>) -> Self {
        let bt = Backtrace::capture();
        let backtrace = (bt.status() == BacktraceStatus::Captured).then_some(bt);
        Failure {
            inner: Arc::new(Inner { error, backtrace }),
        }
    }

    /// Wraps an error without capturing a backtrace, whatever `RUST_BACKTRACE`
    /// says. For routine outcomes (a peer closing or resetting a connection)
    /// whose backtrace would only show the reactor's own read path: capturing
    /// one costs microseconds per connection.
    ///
    /// ```
    /// use torsion_core::{ConnectionError, Failure};
    /// let f = Failure::without_backtrace(ConnectionError::Done);
    /// assert!(f.backtrace().is_none());
    /// assert!(f.check::<ConnectionError>());
    /// ```
    pub fn without_backtrace<E: Error + Send + Sync + 'static>(error: E) -> Self {
        Failure {
            inner: Arc::new(Inner {
                error: Box::new(error),
                backtrace: None,
            }),
        }
    }

    /// A failure holding only a message.
    pub fn msg(message: impl Into<String>) -> Self {
        Self::new(MessageError(message.into()))
    }

    /// A failure made from a caught panic payload.
    pub fn from_panic(payload: Box<dyn Any + Send>) -> Self {
        Self::new(PanicError::from_payload(&*payload))
    }

    /// True when the wrapped error is of type `E` (Twisted's `check`).
    pub fn check<E: Error + 'static>(&self) -> bool {
        self.inner.error.is::<E>()
    }

    /// The wrapped error as `E`, if it is one.
    pub fn downcast_ref<E: Error + 'static>(&self) -> Option<&E> {
        self.inner.error.downcast_ref::<E>()
    }

    /// Twisted's `trap`: `Ok(())` when the failure is an `E` (handled here),
    /// otherwise the failure itself back, to be passed on down the chain.
    ///
    /// ```
    /// use torsion_core::{Failure, CancelledError};
    /// let f = Failure::new(CancelledError);
    /// assert!(f.clone().trap::<CancelledError>().is_ok());
    /// assert!(f.trap::<std::io::Error>().is_err());
    /// ```
    pub fn trap<E: Error + 'static>(self) -> Result<(), Failure> {
        if self.check::<E>() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// The wrapped error.
    pub fn error(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.inner.error
    }

    /// The backtrace, when one was captured.
    pub fn backtrace(&self) -> Option<&Backtrace> {
        self.inner.backtrace.as_ref()
    }

    /// True when this failure came from a panic in user code.
    pub fn is_panic(&self) -> bool {
        self.check::<PanicError>()
    }
}

impl fmt::Display for Failure {
    /// The error and its `source()` chain, separated by ": ".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.inner.error)?;
        let mut source = self.inner.error.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Failure({self}")?;
        if let Some(bt) = &self.inner.backtrace {
            write!(f, "\n{bt}")?;
        }
        write!(f, ")")
    }
}

impl<E: Error + Send + Sync + 'static> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::new(e)
    }
}

/// Runs `f`, turning a panic into a `Failure`.
pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Failure> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(Failure::from_panic)
}

/// The error a Deferred fails with when it is cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operation was cancelled")]
pub struct CancelledError;

/// The error an operation fails with when it ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the operation timed out")]
pub struct TimeoutError;
