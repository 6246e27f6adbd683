//! Limits and timeouts of the HTTP server, all configurable.

use std::time::Duration;

/// Server limits and timeouts.
///
/// ```
/// use std::time::Duration;
/// use torsion_http::ServerConfig;
/// let cfg = ServerConfig {
///     header_timeout: Duration::from_secs(1),
///     max_body: 10 << 20,
///     ..ServerConfig::default()
/// };
/// assert_eq!(cfg.max_header_bytes, 16 * 1024);
/// ```
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request head (request line and header fields); larger → 431.
    pub max_header_bytes: usize,
    /// Most header fields in one request; more → 431.
    pub max_headers: usize,
    /// Longest request line; longer → 414.
    pub max_request_line: usize,
    /// Largest request body; larger → 413.
    pub max_body: u64,
    /// Most requests read ahead of their responses (pipelining); reading
    /// pauses while this many are unanswered (at least 1).
    pub max_pipelined: usize,
    /// Time allowed for a whole request head once its first byte arrived
    /// (slowloris defence); the connection is closed when it runs out.
    /// Timeouts are checked by one sweeper per server, every eighth of the
    /// shortest timeout (5 ms to 1 s): they fire at most that much late.
    pub header_timeout: Duration,
    /// Longest wait for the next piece of a request body the handler is
    /// ready to take (a stalled upload is closed).
    pub body_timeout: Duration,
    /// How long an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// Request-body bytes buffered for a handler that has not read them yet;
    /// reading from the peer pauses above it.
    pub body_buffer: usize,
    /// The `Server` header value (`None`: no header).
    pub server_name: Option<String>,
    /// The `site` field of this server's access-log events (target
    /// `torsion_http::access`), so each site's log can be filtered apart.
    pub log_name: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_request_line: 8 * 1024,
            max_body: 1 << 40,
            max_pipelined: 16,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            body_buffer: 64 * 1024,
            server_name: Some(concat!("Torsion/", env!("CARGO_PKG_VERSION")).to_string()),
            log_name: "default".to_string(),
        }
    }
}
