//! Typed errors for connections and the reactor.

use std::io;

/// Why a connection ended or a connection attempt failed.
///
/// `connection_lost` and `client_connection_failed` receive a
/// [`crate::Failure`] holding one of these; test with `failure.downcast_ref::<ConnectionError>()`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The connection was closed cleanly (by either side).
    #[error("connection was closed cleanly")]
    Done,
    /// This side aborted the connection (`abort_connection`), dropping unsent data.
    #[error("connection was aborted")]
    Aborted,
    /// The peer reset the connection.
    #[error("connection was reset by the peer")]
    Reset,
    /// The connection broke for another reason.
    #[error("connection was lost: {0}")]
    Lost(#[source] io::Error),
    /// Nobody listens at the address.
    #[error("connection refused by {0}")]
    Refused(String),
    /// The attempt ran out of time.
    #[error("connection attempt to {0} timed out")]
    Timeout(String),
    /// The host name could not be resolved.
    #[error("DNS lookup failed for {host}: {message}")]
    DnsLookup {
        /// The name looked up.
        host: String,
        /// The resolver's message.
        message: String,
    },
    /// The attempt failed for another reason.
    #[error("connecting to {addr} failed: {source}")]
    ConnectFailed {
        /// Where we tried to connect.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// `stop_connecting` was called.
    #[error("the connection attempt was cancelled")]
    Cancelled,
    /// The protocol's callback panicked; the connection was aborted.
    #[error("a protocol callback panicked: {0}")]
    ProtocolPanicked(String),
    /// The reactor shut down.
    #[error("the reactor shut down")]
    ReactorShutdown,
}

impl ConnectionError {
    /// Maps an OS error from an established connection.
    pub fn from_io(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => ConnectionError::Reset,
            _ => ConnectionError::Lost(e),
        }
    }

    /// Maps an OS error from a connection attempt to `addr`.
    pub fn from_connect_io(addr: impl std::fmt::Display, e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::ConnectionRefused => ConnectionError::Refused(addr.to_string()),
            io::ErrorKind::TimedOut => ConnectionError::Timeout(addr.to_string()),
            _ => ConnectionError::ConnectFailed {
                addr: addr.to_string(),
                source: e,
            },
        }
    }
}

/// Errors from reactor operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReactorError {
    /// `stop()` on a reactor that is not running.
    #[error("the reactor is not running")]
    NotRunning,
    /// `run()` on a reactor that already runs.
    #[error("the reactor is already running")]
    AlreadyRunning,
    /// `iterate`/`run` called from inside a reactor callback.
    #[error("the reactor cannot be run from inside one of its own callbacks")]
    Reentrant,
    /// Installing signal handlers failed.
    #[error("could not install signal handlers: {0}")]
    Signals(#[source] io::Error),
    /// The poller failed.
    #[error("poller error: {0}")]
    Io(#[from] io::Error),
}

/// A transport was asked for something it does not have (a TLS certificate of
/// a plain TCP connection, Unix credentials of a TCP peer).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{what} is not supported by this transport ({transport})")]
pub struct NotSupportedError {
    /// What was asked for.
    pub what: &'static str,
    /// The kind of transport asked.
    pub transport: &'static str,
}
