//! # torsion-core
//!
//! The heart of Torsion: a reactor (one event loop per thread over the OS
//! poller), transports, protocols and factories, Deferreds, and a testing
//! kit for driving protocols deterministically.
//!
//! ```no_run
//! use torsion_core::{factory_fn, Protocol, Reactor, Transport};
//!
//! #[derive(Default)]
//! struct Echo(Option<Transport>);
//! impl Protocol for Echo {
//!     fn connection_made(&mut self, t: Transport) { self.0 = Some(t); }
//!     fn data_received(&mut self, data: &[u8]) {
//!         if let Some(t) = &self.0 { t.write(data); }
//!     }
//! }
//!
//! let reactor = Reactor::new()?;
//! reactor.listen_tcp("127.0.0.1:8000".parse()?, factory_fn(Echo::default))?;
//! reactor.install_signal_handlers()?;
//! reactor.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod accept;
pub mod address;
pub mod basic;
pub mod connector;
pub mod cooperator;
pub mod coordination;
pub mod defer_list;
pub mod deferred;
pub mod endpoint;
pub mod error;
pub mod failure;
pub mod hostloop;
pub mod looping;
pub mod policies;
pub mod process;
pub mod protocol;
pub mod reactor;
pub mod reconnect;
pub mod resolve;
mod stream;
mod sys;
pub mod task;
pub mod tcp;
pub mod testing;
pub mod threads;
pub mod time;
pub mod transport;
pub mod udp;
pub mod unix;

pub use address::Address;
pub use connector::{Connector, ConnectorState};
pub use cooperator::{CooperativeTask, Cooperator, TaskError, Yield};
pub use coordination::{
    DeferredLock, DeferredQueue, DeferredSemaphore, NotAcquiredError, QueueOverflow, QueueUnderflow,
};
pub use defer_list::{gather_results, race, DeferredList, FailureGroup, FirstError, ListOutcome};
pub use deferred::{maybe_deferred, AlreadyCalledError, Deferred, IntoDeferred};
pub use error::{ConnectionError, NotSupportedError, ReactorError};
pub use failure::{CancelledError, Failure, PanicError, TimeoutError};
pub use looping::{defer_later, LoopingCall, LoopingCallError};
pub use protocol::{factory_fn, ClientFactory, Factory, Producer, Protocol, ServerFactory};
pub use reactor::{Phase, Reactor, ReactorHandle, SystemEvent, TriggerId};
pub use reconnect::ReconnectingClientFactory;
pub use stream::{DEFAULT_HIGH_WATER, DEFAULT_LOW_WATER};
pub use tcp::{ConnectOptions, ListeningPort, TcpListenOptions};
pub use threads::{
    blocking_call_from_thread, call_in_thread, defer_to_thread, defer_to_thread_pool,
    suggest_thread_pool_size, ThreadPool, ThreadPoolError,
};
pub use time::{Clock, DelayedCall, DelayedCallError};
pub use transport::{SendFileError, Transport, TransportImpl, UnixCredentials};

/// Number of open file descriptors of this process (Linux), for leak checks in tests.
pub fn open_fd_count() -> std::io::Result<usize> {
    sys::open_fd_count_impl()
}
