//! The accept loop shared by every stream listener (TCP, Unix).
//!
//! Listening sockets are registered edge-triggered, so a listener must accept
//! until `WouldBlock` or it will not hear of the connections still queued.
//! When accepting fails for lack of resources (EMFILE, ENFILE, ENOBUFS,
//! ENOMEM) the pending connections stay in the kernel's backlog and no new
//! edge will come for them: the loop retries after a short pause that grows
//! up to one second, instead of spinning or giving up.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::io;
use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::protocol::{factory_in_use, factory_released, Factory};
use crate::reactor::{Inner, Reactor, Source};
use crate::time::DelayedCall;

/// Accepts per readiness event before yielding to other sources.
const ACCEPTS_PER_TURN: usize = 128;

/// Retry state of one listener.
#[derive(Default)]
pub(crate) struct AcceptState {
    backoff: Cell<Duration>,
    retry: RefCell<Option<DelayedCall>>,
}

impl AcceptState {
    /// True while a retry after an accept failure is scheduled: readiness
    /// events are then ignored, the retry will drain the backlog.
    pub(crate) fn waiting(&self) -> bool {
        self.retry.borrow().as_ref().is_some_and(|c| c.active())
    }

    /// Cancels a scheduled retry (the listener is closing).
    pub(crate) fn cancel(&self) {
        if let Some(c) = self.retry.borrow_mut().take() {
            let _ = c.cancel();
        }
    }
}

/// What every stream listener (TCP, Unix) holds: its socket while open,
/// its token, its factory and its accept-retry state, with the opening and
/// closing steps they share.
pub(crate) struct Listening<L> {
    reactor: Weak<Inner>,
    token: Cell<usize>,
    /// The listening socket; `None` once closed.
    pub(crate) socket: RefCell<Option<L>>,
    pub(crate) factory: Rc<dyn Factory>,
    pub(crate) accept: AcceptState,
}

impl<L: mio::event::Source> Listening<L> {
    pub(crate) fn new(reactor: &Reactor, factory: Rc<dyn Factory>) -> Self {
        Listening {
            reactor: reactor.downgrade(),
            token: Cell::new(usize::MAX),
            socket: RefCell::new(None),
            factory,
            accept: AcceptState::default(),
        }
    }

    /// Registers `listener` for `port` (readable events drive the accept
    /// loop), keeps it, and counts the port as a user of its factory.
    pub(crate) fn open<A: Acceptor>(
        &self,
        reactor: &Reactor,
        port: &Rc<A>,
        mut listener: L,
    ) -> io::Result<()> {
        let source = port.clone();
        let key =
            reactor.register_source(&mut listener, mio::Interest::READABLE, move |_| source)?;
        self.token.set(key);
        *self.socket.borrow_mut() = Some(listener);
        factory_in_use(&*self.factory);
        Ok(())
    }

    /// Closes the socket: deregisters it, retires its token, cancels a
    /// pending accept retry and tells the factory it will get no more
    /// connections. `before_stop` runs after the socket is closed and before
    /// `stop_factory` (a Unix listener removes its socket file there).
    /// Returns false, doing nothing, when it was already closed.
    pub(crate) fn close(&self, before_stop: impl FnOnce()) -> bool {
        let Some(mut l) = self.socket.borrow_mut().take() else {
            return false;
        };
        if let Some(inner) = self.reactor.upgrade() {
            let r = Reactor::from_inner(inner);
            let _ = r.registry().deregister(&mut l);
            r.retire_source(self.token.get());
        }
        self.accept.cancel();
        drop(l);
        before_stop();
        factory_released(&*self.factory);
        true
    }
}

/// A listener the shared loop can drive.
pub(crate) trait Acceptor: Source + 'static {
    /// Accepts one connection and starts it. `Ok(false)`: the listener is closed.
    fn accept_one(self: &Rc<Self>, reactor: &Reactor) -> io::Result<bool>;
    /// Its retry state.
    fn accept_state(&self) -> &AcceptState;
    /// Where it listens, for logs.
    fn describe(&self) -> &dyn fmt::Display;
}

/// Accepts until the backlog is empty, the turn is used up, or resources run out.
pub(crate) fn accept_some<A: Acceptor>(me: &Rc<A>, reactor: &Reactor) {
    for _ in 0..ACCEPTS_PER_TURN {
        match me.accept_one(reactor) {
            Ok(true) => me.accept_state().backoff.set(Duration::ZERO),
            Ok(false) => return,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // The peer gave up before we accepted: nothing to serve, go on.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ECONNABORTED) | Some(libc::EPROTO)
                ) =>
            {
                continue
            }
            Err(e) => {
                let state = me.accept_state();
                let next = (state.backoff.get() * 2)
                    .clamp(Duration::from_millis(10), Duration::from_secs(1));
                state.backoff.set(next);
                tracing::warn!(listener = %me.describe(), error = %e, retry_in = ?next, "accept failed; retrying");
                let weak_me = Rc::downgrade(me);
                let weak_r = reactor.downgrade();
                let call = reactor.call_later(next, move || {
                    if let (Some(me), Some(r)) = (weak_me.upgrade(), weak_r.upgrade()) {
                        accept_some(&me, &Reactor::from_inner(r));
                    }
                });
                *state.retry.borrow_mut() = Some(call);
                return;
            }
        }
    }
    reactor.want_read_turn(me.clone());
}
