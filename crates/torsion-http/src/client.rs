//! The HTTP/1.1 client: [`Agent`], with a per-host connection pool,
//! redirects, timeouts and streaming response bodies, returning Deferreds.
//!
//! `https://` URLs run over torsion-tls (feature `tls`, on by default) and
//! verify the server against the URL's host; [`AgentConfig::proxy`] tunnels
//! connections through a `CONNECT` proxy.
//!
//! Responses are parsed by [`ResponseParser`], a sans-I/O machine like the
//! server's: bytes in → head, body pieces, end out, with limits.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::rc::{Rc, Weak};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};
use torsion_core::{
    Address, ClientFactory, ConnectOptions, Connector, Deferred, DelayedCall, Factory, Failure,
    Producer, Protocol, Reactor, Transport,
};

use crate::chunked::{ChunkedDecoder, ChunkedError};
use crate::request::{self, RequestBody, SharedBody};
use crate::response::{Body, BodySource, Chunk, Notify};

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The URL is not an `http://` URL with a host.
    #[error("unsupported or invalid URL {0:?}")]
    BadUrl(String),
    /// The server's response was malformed.
    #[error("malformed response: {0}")]
    BadResponse(&'static str),
    /// The connection closed before the response was complete.
    #[error("connection closed before the response was complete")]
    ConnectionClosed,
    /// No response head within the response timeout.
    #[error("no response within {0:?}")]
    Timeout(Duration),
    /// More redirects than allowed.
    #[error("too many redirects (limit {0})")]
    TooManyRedirects(usize),
    /// The proxy answered `CONNECT` with this non-2xx status.
    #[error("the proxy refused CONNECT with {0}")]
    ProxyRefused(StatusCode),
    /// The proxy's answer to `CONNECT` was malformed or the proxy closed first.
    #[error("bad answer from the proxy: {0}")]
    BadProxyResponse(&'static str),
    /// No TLS client configuration could be made (platform roots), or the
    /// host is not a valid TLS server name.
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
}

/// A proxy the Agent tunnels every connection through with `CONNECT`.
///
/// ```
/// use torsion_http::client::{AgentConfig, Proxy};
/// let cfg = AgentConfig { proxy: Some(Proxy::new("127.0.0.1", 3128)), ..AgentConfig::default() };
/// assert_eq!(cfg.proxy.unwrap().port, 3128);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    /// Proxy host (name or IP address).
    pub host: String,
    /// Proxy port.
    pub port: u16,
}

impl Proxy {
    /// A `CONNECT` proxy at `host:port`.
    pub fn new(host: impl Into<String>, port: u16) -> Proxy {
        Proxy {
            host: host.into(),
            port,
        }
    }
}

/// Client limits and policies.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Connections per host and port.
    pub per_host: usize,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Time from sending a request to its response head.
    pub response_timeout: Duration,
    /// Redirects followed (0: none).
    pub max_redirects: usize,
    /// Largest response head.
    pub max_head_bytes: usize,
    /// `User-Agent` sent when the request has none.
    pub user_agent: String,
    /// Tunnel every connection (`http://` and `https://`) through this proxy
    /// with `CONNECT`; TLS then runs end to end through the tunnel.
    pub proxy: Option<Proxy>,
    /// TLS client configuration for `https://` URLs; `None`: the platform's
    /// verifier and roots (made on first use). Servers are verified against
    /// the URL's host name.
    #[cfg(feature = "tls")]
    pub tls: Option<torsion_tls::TlsClientConfig>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            per_host: 6,
            idle_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            response_timeout: Duration::from_secs(30),
            max_redirects: 10,
            max_head_bytes: 64 * 1024,
            user_agent: concat!("Torsion/", env!("CARGO_PKG_VERSION")).to_string(),
            proxy: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}

/// A response the client received; its body streams in after the head.
#[derive(Debug)]
pub struct ClientResponse {
    /// Status.
    pub status: StatusCode,
    /// Version the server spoke.
    pub version: Version,
    /// Header fields.
    pub headers: HeaderMap,
    /// The URL finally answered (after redirects).
    pub url: Uri,
    body: RequestBody,
}

impl ClientResponse {
    /// The body as a stream.
    pub fn into_body(self) -> RequestBody {
        self.body
    }
    /// Reads the whole body (at most `limit` bytes).
    pub async fn bytes(self, limit: usize) -> Result<Vec<u8>, Failure> {
        self.body.bytes(limit).await
    }
    /// A header value as text.
    pub fn header(&self, name: impl header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

// ---------------------------------------------------------------------------
// Sans-I/O response parser
// ---------------------------------------------------------------------------

/// What [`ResponseParser`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResponseEvent {
    /// The final (non-1xx) response head.
    Head {
        /// Status.
        status: StatusCode,
        /// Version.
        version: Version,
        /// Header fields.
        headers: HeaderMap,
        /// The connection may carry another request afterwards.
        keep_alive: bool,
    },
    /// Body bytes.
    Data(Vec<u8>),
    /// The response is complete.
    End,
}

#[derive(Debug)]
enum RState {
    Head,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// Parses one response to a request with a known method.
///
/// ```
/// use torsion_http::client::{ResponseEvent, ResponseParser};
/// let mut p = ResponseParser::new(false, 65536);
/// p.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi");
/// assert!(matches!(p.next_event(), Ok(Some(ResponseEvent::Head { .. }))));
/// assert_eq!(p.next_event().unwrap(), Some(ResponseEvent::Data(b"hi".to_vec())));
/// assert_eq!(p.next_event().unwrap(), Some(ResponseEvent::End));
/// ```
#[derive(Debug)]
pub struct ResponseParser {
    buf: Vec<u8>,
    state: RState,
    head_request: bool,
    max_head: usize,
    eof: bool,
}

impl ResponseParser {
    /// A parser for the response to a HEAD request (`head_request`) or another method.
    pub fn new(head_request: bool, max_head: usize) -> Self {
        ResponseParser {
            buf: Vec::new(),
            state: RState::Head,
            head_request,
            max_head,
            eof: false,
        }
    }

    /// Adds received bytes.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The peer closed: ends a close-delimited body, fails others.
    pub fn feed_eof(&mut self) {
        self.eof = true;
    }

    /// Bytes past the end of the response (a misbehaving server sent extra).
    pub fn leftover(&self) -> usize {
        self.buf.len()
    }

    /// The next event, `Ok(None)` when more input is needed.
    pub fn next_event(&mut self) -> Result<Option<ResponseEvent>, ClientError> {
        loop {
            match &mut self.state {
                RState::Done => return Ok(None),
                RState::Head => {
                    let mut hs = [httparse::EMPTY_HEADER; 100];
                    let mut r = httparse::Response::new(&mut hs);
                    let n = match r.parse(&self.buf) {
                        Ok(httparse::Status::Complete(n)) => n,
                        Ok(httparse::Status::Partial) => {
                            if self.buf.len() > self.max_head {
                                return Err(ClientError::BadResponse("response head too large"));
                            }
                            if self.eof {
                                return Err(ClientError::ConnectionClosed);
                            }
                            return Ok(None);
                        }
                        Err(_) => return Err(ClientError::BadResponse("malformed head")),
                    };
                    let status = StatusCode::from_u16(r.code.unwrap_or(0))
                        .map_err(|_| ClientError::BadResponse("bad status"))?;
                    let version = if r.version == Some(0) {
                        Version::HTTP_10
                    } else {
                        Version::HTTP_11
                    };
                    let mut headers = HeaderMap::new();
                    let mut cl: Option<u64> = None;
                    let mut chunked = false;
                    for h in r.headers.iter() {
                        let name = HeaderName::from_bytes(h.name.as_bytes())
                            .map_err(|_| ClientError::BadResponse("bad header name"))?;
                        let value = HeaderValue::from_bytes(h.value)
                            .map_err(|_| ClientError::BadResponse("bad header value"))?;
                        if name == header::CONTENT_LENGTH {
                            let v = std::str::from_utf8(h.value)
                                .ok()
                                .map(str::trim)
                                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                                .and_then(|v| v.parse::<u64>().ok())
                                .ok_or(ClientError::BadResponse("bad Content-Length"))?;
                            if cl.is_some_and(|c| c != v) {
                                return Err(ClientError::BadResponse("conflicting Content-Length"));
                            }
                            cl = Some(v);
                        } else if name == header::TRANSFER_ENCODING {
                            chunked =
                                h.value.rsplit(|&b| b == b',').next().is_some_and(|l| {
                                    l.trim_ascii().eq_ignore_ascii_case(b"chunked")
                                });
                        }
                        headers.append(name, value);
                    }
                    self.buf.drain(..n);
                    if status.is_informational() {
                        if status == StatusCode::SWITCHING_PROTOCOLS {
                            return Err(ClientError::BadResponse("unexpected 101"));
                        }
                        continue;
                    }
                    let conn: Vec<String> = headers
                        .get_all(header::CONNECTION)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .flat_map(|v| v.split(','))
                        .map(|t| t.trim().to_ascii_lowercase())
                        .collect();
                    let mut keep_alive = if version == Version::HTTP_11 {
                        !conn.iter().any(|t| t == "close")
                    } else {
                        conn.iter().any(|t| t == "keep-alive")
                    };
                    let no_body = self.head_request
                        || status == StatusCode::NO_CONTENT
                        || status == StatusCode::NOT_MODIFIED;
                    self.state = if no_body {
                        RState::Length(0)
                    } else if chunked {
                        RState::Chunked(ChunkedDecoder::new(u64::MAX))
                    } else if let Some(n) = cl {
                        RState::Length(n)
                    } else {
                        keep_alive = false;
                        RState::UntilClose
                    };
                    return Ok(Some(ResponseEvent::Head {
                        status,
                        version,
                        headers,
                        keep_alive,
                    }));
                }
                RState::Length(rem) => {
                    if *rem == 0 {
                        self.state = RState::Done;
                        return Ok(Some(ResponseEvent::End));
                    }
                    if self.buf.is_empty() {
                        if self.eof {
                            return Err(ClientError::ConnectionClosed);
                        }
                        return Ok(None);
                    }
                    let n = (*rem).min(self.buf.len() as u64) as usize;
                    *rem -= n as u64;
                    let d: Vec<u8> = self.buf.drain(..n).collect();
                    return Ok(Some(ResponseEvent::Data(d)));
                }
                RState::Chunked(dec) => {
                    let step = dec.decode(&self.buf).map_err(|e| {
                        ClientError::BadResponse(match e {
                            ChunkedError::InvalidSize => "invalid chunk size",
                            _ => "malformed chunked body",
                        })
                    })?;
                    let data = step.data.map(|r| self.buf[r].to_vec());
                    self.buf.drain(..step.consumed);
                    if step.done {
                        self.state = RState::Length(0);
                    }
                    if let Some(d) = data {
                        return Ok(Some(ResponseEvent::Data(d)));
                    }
                    if step.consumed == 0 && !step.done {
                        if self.eof {
                            return Err(ClientError::ConnectionClosed);
                        }
                        return Ok(None);
                    }
                }
                RState::UntilClose => {
                    if !self.buf.is_empty() {
                        return Ok(Some(ResponseEvent::Data(std::mem::take(&mut self.buf))));
                    }
                    if self.eof {
                        self.state = RState::Done;
                        return Ok(Some(ResponseEvent::End));
                    }
                    return Ok(None);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Agent
// ---------------------------------------------------------------------------

/// A pool key: TLS or not, host, port.
type Key = (bool, String, u16);

struct AgentInner {
    reactor: Reactor,
    cfg: AgentConfig,
    /// The TLS configuration in use (from `cfg.tls` or the platform, made once).
    #[cfg(feature = "tls")]
    tls: RefCell<Option<torsion_tls::TlsClientConfig>>,
    /// Idle connections per host.
    idle: RefCell<HashMap<Key, Vec<Rc<Conn>>>>,
    /// Open connections (idle or busy) per host.
    open: RefCell<HashMap<Key, usize>>,
    /// Requests waiting for a free connection.
    waiting: RefCell<HashMap<Key, VecDeque<Job>>>,
}

/// An HTTP client with a connection pool.
///
/// ```no_run
/// use torsion_core::Reactor;
/// use torsion_http::client::Agent;
/// let reactor = Reactor::new()?;
/// let agent = Agent::new(&reactor);
/// let r = reactor.clone();
/// let d = torsion_core::Deferred::from_future(&reactor, async move {
///     let resp = agent.get("http://127.0.0.1:8080/").await?;
///     let body = resp.bytes(1 << 20).await?;
///     println!("{} bytes", body.len());
///     Ok::<_, torsion_core::Failure>(())
/// });
/// d.finally(move |_| { let _ = r.stop(); });
/// reactor.run()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Agent {
    inner: Rc<AgentInner>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("open", &*self.inner.open.borrow())
            .finish()
    }
}

/// A request for [`Agent::request`]. The body is `body` (sent with
/// `Content-Length`) unless a `stream` is set: then it is pulled from the
/// stream as the connection can take it, chunked unless its length is known.
///
/// ```
/// use torsion_http::client::ClientRequest;
/// let (tx, body) = torsion_http::Body::channel();
/// let req = ClientRequest::new(http::Method::PUT, "http://127.0.0.1:8080/up".parse().unwrap())
///     .with_stream(body);
/// tx.write(b"streamed");
/// tx.finish();
/// ```
#[derive(Debug, Clone)]
pub struct ClientRequest {
    /// Method.
    pub method: Method,
    /// Absolute `http://` URL.
    pub url: Uri,
    /// Extra header fields.
    pub headers: HeaderMap,
    /// Body bytes (empty: none).
    pub body: Vec<u8>,
    /// A streamed body (sent once: not re-sent on redirects or retries).
    pub stream: Option<StreamBody>,
}

/// A one-shot streamed request body (see [`ClientRequest::with_stream`]).
#[derive(Clone)]
pub struct StreamBody(Rc<RefCell<Option<SizedSource>>>);

/// A body source and its length, when known.
type SizedSource = (Box<dyn BodySource>, Option<u64>);

impl std::fmt::Debug for StreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamBody")
    }
}

impl ClientRequest {
    /// A request without a body.
    pub fn new(method: Method, url: Uri) -> ClientRequest {
        ClientRequest {
            method,
            url,
            headers: HeaderMap::new(),
            body: Vec::new(),
            stream: None,
        }
    }

    /// Sets an in-memory body.
    pub fn with_body(mut self, body: Vec<u8>) -> ClientRequest {
        self.body = body;
        self
    }

    /// Sets a streamed body from a [`Body`] (`Body::Stream`, e.g. from
    /// `Body::channel` or `Body::from_request_body`; other kinds become bytes).
    pub fn with_stream(mut self, body: Body) -> ClientRequest {
        match body {
            Body::Empty => self.body.clear(),
            Body::Bytes(b) => self.body = Vec::from(b),
            Body::Stream { len, source } => {
                self.stream = Some(StreamBody(Rc::new(RefCell::new(Some((source, len))))))
            }
        }
        self
    }
}

struct Job {
    req: ClientRequest,
    d: Deferred<ClientResponse>,
    /// Retried once already on a fresh connection.
    retried: bool,
}

impl Agent {
    /// An agent with default limits.
    pub fn new(reactor: &Reactor) -> Agent {
        Self::with_config(reactor, AgentConfig::default())
    }

    /// An agent with `cfg`.
    pub fn with_config(reactor: &Reactor, cfg: AgentConfig) -> Agent {
        Agent {
            inner: Rc::new(AgentInner {
                reactor: reactor.clone(),
                #[cfg(feature = "tls")]
                tls: RefCell::new(cfg.tls.clone()),
                cfg,
                idle: RefCell::new(HashMap::new()),
                open: RefCell::new(HashMap::new()),
                waiting: RefCell::new(HashMap::new()),
            }),
        }
    }

    /// Connections open to `host:port` (idle or busy, `http` and `https`).
    pub fn open_connections(&self, host: &str, port: u16) -> usize {
        let open = self.inner.open.borrow();
        [false, true]
            .iter()
            .filter_map(|&tls| open.get(&(tls, host.to_string(), port)))
            .sum()
    }

    /// GET `url`.
    pub fn get(&self, url: &str) -> Deferred<ClientResponse> {
        self.request_url(Method::GET, url, Vec::new())
    }

    /// POST `body` to `url`.
    pub fn post(&self, url: &str, body: Vec<u8>) -> Deferred<ClientResponse> {
        self.request_url(Method::POST, url, body)
    }

    fn request_url(&self, method: Method, url: &str, body: Vec<u8>) -> Deferred<ClientResponse> {
        match url.parse::<Uri>() {
            Ok(u) => self.request(ClientRequest::new(method, u).with_body(body)),
            Err(_) => Deferred::fail(ClientError::BadUrl(url.to_string())),
        }
    }

    /// Sends `req`, following redirects; fires with the response once its
    /// head arrived (read the body from it).
    pub fn request(&self, req: ClientRequest) -> Deferred<ClientResponse> {
        let agent = self.clone();
        Deferred::from_future(&self.inner.reactor, async move {
            let mut req = req;
            let mut hops = 0;
            loop {
                let resp = agent.request_once(req.clone()).await?;
                let redirect = matches!(resp.status.as_u16(), 301 | 302 | 303 | 307 | 308);
                let location = resp.header(header::LOCATION).map(str::to_string);
                // A streamed body cannot be sent twice: its redirect is the answer.
                let Some(location) = location.filter(|_| redirect && req.stream.is_none()) else {
                    return Ok(resp);
                };
                if hops >= agent.inner.cfg.max_redirects {
                    if agent.inner.cfg.max_redirects == 0 {
                        return Ok(resp);
                    }
                    return Err(Failure::new(ClientError::TooManyRedirects(
                        agent.inner.cfg.max_redirects,
                    )));
                }
                hops += 1;
                let status = resp.status;
                // Read the redirect's body so its connection can be reused.
                let _ = resp.bytes(1 << 20).await;
                req.url = resolve_url(&req.url, &location)
                    .ok_or_else(|| Failure::new(ClientError::BadUrl(location.clone())))?;
                // 303 always, and 301/302 after POST, continue as GET without a body.
                let to_get = status == StatusCode::SEE_OTHER && req.method != Method::HEAD
                    || (matches!(status.as_u16(), 301 | 302) && req.method == Method::POST);
                if to_get {
                    req.method = Method::GET;
                    req.body.clear();
                    req.headers.remove(header::CONTENT_TYPE);
                }
            }
        })
    }

    fn request_once(&self, req: ClientRequest) -> Deferred<ClientResponse> {
        let d = Deferred::new();
        let job = Job {
            req,
            d: d.clone(),
            retried: false,
        };
        self.inner.submit(job);
        d
    }
}

/// Resolves `location` against `base` (absolute URLs, absolute paths, relative paths).
fn resolve_url(base: &Uri, location: &str) -> Option<Uri> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().ok();
    }
    let scheme = base.scheme_str()?;
    let auth = base.authority()?.as_str();
    let path = if location.starts_with('/') {
        location.to_string()
    } else {
        let bp = base.path();
        let dir = &bp[..bp.rfind('/').map(|i| i + 1).unwrap_or(0)];
        format!("{dir}{location}")
    };
    format!("{scheme}://{auth}{path}").parse().ok()
}

impl AgentInner {
    fn key(req: &ClientRequest) -> Result<Key, ClientError> {
        let u = &req.url;
        let tls = match u.scheme_str() {
            Some("http") => false,
            #[cfg(feature = "tls")]
            Some("https") => true,
            _ => {
                return Err(ClientError::BadUrl(format!(
                    "{u} (http:// and, with the `tls` feature, https:// are supported)"
                )))
            }
        };
        let host = u
            .host()
            .ok_or_else(|| ClientError::BadUrl(u.to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let port = u.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok((tls, host, port))
    }

    /// The TLS configuration: the configured one, or the platform's (made once).
    #[cfg(feature = "tls")]
    fn tls_config(&self) -> Result<torsion_tls::TlsClientConfig, ClientError> {
        if let Some(c) = self.tls.borrow().as_ref() {
            return Ok(c.clone());
        }
        let c = torsion_tls::TlsClientConfig::platform()
            .map_err(|e| ClientError::TlsConfig(e.to_string()))?;
        *self.tls.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    /// The protocol that runs over the connection to the origin (TLS-wrapped for `https`).
    fn origin_protocol(&self, conn: &Rc<Conn>) -> Result<Box<dyn Protocol>, ClientError> {
        let proto = Box::new(ConnProto(conn.clone()));
        if !conn.key.0 {
            return Ok(proto);
        }
        #[cfg(feature = "tls")]
        {
            let cfg = self.tls_config()?;
            let mut opts = torsion_tls::TlsOptions::with_clock(Rc::new(self.reactor.clone()));
            opts.handshake_timeout = Some(self.cfg.connect_timeout);
            Ok(Box::new(torsion_tls::TlsProtocol::new(
                proto,
                torsion_tls::TlsSide::client(cfg, &conn.key.1),
                opts,
            )))
        }
        #[cfg(not(feature = "tls"))]
        Err(ClientError::BadUrl(
            "https:// needs the `tls` feature".into(),
        ))
    }

    fn submit(self: &Rc<Self>, job: Job) {
        let key = match Self::key(&job.req) {
            Ok(k) => k,
            Err(e) => {
                let _ = job.d.errback(e);
                return;
            }
        };
        // An idle pooled connection first.
        loop {
            let c = self.idle.borrow_mut().get_mut(&key).and_then(Vec::pop);
            let Some(c) = c else { break };
            if c.is_usable() {
                c.start(job);
                return;
            }
        }
        let open = self.open.borrow().get(&key).copied().unwrap_or(0);
        if open < self.cfg.per_host {
            self.connect(key, job);
        } else {
            self.waiting
                .borrow_mut()
                .entry(key)
                .or_default()
                .push_back(job);
        }
    }

    fn connect(self: &Rc<Self>, key: Key, job: Job) {
        *self.open.borrow_mut().entry(key.clone()).or_insert(0) += 1;
        let conn = Rc::new_cyclic(|me| Conn {
            me: me.clone(),
            agent: Rc::downgrade(self),
            key: key.clone(),
            transport: RefCell::new(None),
            job: RefCell::new(Some(job)),
            parser: RefCell::new(None),
            body: RefCell::new(None),
            state: Cell::new(CState::Connecting),
            reused: Cell::new(false),
            got_bytes: Cell::new(false),
            timer: RefCell::new(None),
            keep_alive: Cell::new(false),
            paused: Cell::new(false),
            pumping: Cell::new(false),
            again: Cell::new(false),
            upload: RefCell::new(None),
            uploading: Cell::new(false),
        });
        let tunnel = self.cfg.proxy.is_some();
        // With a proxy, the origin's protocol is built once the tunnel stands.
        let proto = if tunnel {
            None
        } else {
            match self.origin_protocol(&conn) {
                Ok(p) => Some(p),
                Err(e) => {
                    conn.fail(Failure::new(e));
                    return;
                }
            }
        };
        let factory: Rc<dyn ClientFactory> = Rc::new(ConnFactory {
            conn: conn.clone(),
            proto: RefCell::new(proto),
        });
        let opts = ConnectOptions {
            timeout: Some(self.cfg.connect_timeout),
            ..ConnectOptions::default()
        };
        let (host, port) = match &self.cfg.proxy {
            Some(p) => (p.host.clone(), p.port),
            None => (key.1.clone(), key.2),
        };
        let _connector: Connector = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => self
                .reactor
                .connect_tcp(std::net::SocketAddr::new(ip, port), factory, opts),
            Err(_) => self.reactor.connect_tcp_host(&host, port, factory, opts),
        };
    }

    /// A connection closed: count it and let a waiting request connect.
    fn closed(self: &Rc<Self>, key: &Key) {
        if let Some(n) = self.open.borrow_mut().get_mut(key) {
            *n = n.saturating_sub(1);
        }
        self.idle
            .borrow_mut()
            .entry(key.clone())
            .or_default()
            .retain(|c| c.state.get() == CState::Idle);
        let next = self
            .waiting
            .borrow_mut()
            .get_mut(key)
            .and_then(VecDeque::pop_front);
        if let Some(job) = next {
            self.submit(job);
        }
    }

    /// A connection finished a response and may be reused.
    fn released(self: &Rc<Self>, conn: Rc<Conn>) {
        let next = self
            .waiting
            .borrow_mut()
            .get_mut(&conn.key)
            .and_then(VecDeque::pop_front);
        match next {
            Some(job) => conn.start(job),
            None => {
                conn.state.set(CState::Idle);
                let weak = Rc::downgrade(&conn);
                let t = self.reactor.call_later(self.cfg.idle_timeout, move || {
                    if let Some(c) = weak.upgrade() {
                        if c.state.get() == CState::Idle {
                            c.close();
                        }
                    }
                });
                *conn.timer.borrow_mut() = Some(t);
                self.idle
                    .borrow_mut()
                    .entry(conn.key.clone())
                    .or_default()
                    .push(conn);
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum CState {
    Connecting,
    Busy,
    Idle,
    Closed,
}

struct Conn {
    me: Weak<Conn>,
    agent: Weak<AgentInner>,
    key: Key,
    transport: RefCell<Option<Transport>>,
    job: RefCell<Option<Job>>,
    parser: RefCell<Option<ResponseParser>>,
    body: RefCell<Option<SharedBody>>,
    state: Cell<CState>,
    reused: Cell<bool>,
    got_bytes: Cell<bool>,
    timer: RefCell<Option<DelayedCall>>,
    keep_alive: Cell<bool>,
    paused: Cell<bool>,
    pumping: Cell<bool>,
    again: Cell<bool>,
    upload: RefCell<Option<Upload>>,
    uploading: Cell<bool>,
}

struct Upload {
    source: Box<dyn BodySource>,
    chunked: bool,
}

/// Pulls the next piece of a streamed request body when the transport drained.
struct UploadProducer(Weak<Conn>);

impl Producer for UploadProducer {
    fn pause_producing(&self) {}
    fn resume_producing(&self) {
        if let Some(c) = self.0.upgrade() {
            c.send_more();
        }
    }
    fn stop_producing(&self) {}
}

struct ConnFactory {
    conn: Rc<Conn>,
    /// The origin protocol (built before connecting); `None` through a proxy.
    proto: RefCell<Option<Box<dyn Protocol>>>,
}

impl Factory for ConnFactory {
    fn build_protocol(&self, _peer: &Address) -> Option<Box<dyn Protocol>> {
        match self.proto.borrow_mut().take() {
            Some(p) => Some(p),
            None => Some(Box::new(TunnelProto {
                conn: self.conn.clone(),
                transport: None,
                buf: Vec::new(),
                inner: None,
                timer: None,
            })),
        }
    }
}

impl ClientFactory for ConnFactory {
    fn client_connection_failed(&self, _c: &Connector, reason: Failure) {
        if self.conn.state.get() != CState::Closed {
            self.conn.fail(reason);
        }
    }
}

/// Speaks `CONNECT` to the proxy, then hands the tunnel to the origin protocol
/// (plain HTTP, or TLS around it for `https`).
struct TunnelProto {
    conn: Rc<Conn>,
    transport: Option<Transport>,
    buf: Vec<u8>,
    inner: Option<Box<dyn Protocol>>,
    timer: Option<DelayedCall>,
}

impl TunnelProto {
    fn refuse(&mut self, e: ClientError) {
        if let Some(job) = self.conn.job.borrow_mut().take() {
            let _ = job.d.errback(e);
        }
        if let Some(t) = &self.transport {
            t.lose_connection();
        }
    }
}

impl Protocol for TunnelProto {
    fn connection_made(&mut self, t: Transport) {
        let (_, host, port) = &self.conn.key;
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        t.write(format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n\r\n").as_bytes());
        // A proxy that never answers must not hold the request forever.
        if let Some(agent) = self.conn.agent() {
            let tt = t.clone();
            self.timer = Some(
                agent
                    .reactor
                    .call_later(agent.cfg.connect_timeout, move || {
                        tt.abort_connection();
                    }),
            );
        }
        self.transport = Some(t);
    }

    fn data_received(&mut self, data: &[u8]) {
        if let Some(p) = self.inner.as_mut() {
            p.data_received(data);
            return;
        }
        if self.transport.is_none() {
            return;
        }
        self.buf.extend_from_slice(data);
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut hs);
        let n = match r.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if self.buf.len() <= 16 * 1024 => return,
            Ok(httparse::Status::Partial) => {
                return self.refuse(ClientError::BadProxyResponse("response head too large"))
            }
            Err(_) => return self.refuse(ClientError::BadProxyResponse("malformed response")),
        };
        let status = r
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY);
        if !status.is_success() {
            return self.refuse(ClientError::ProxyRefused(status));
        }
        if let Some(t) = self.timer.take() {
            let _ = t.cancel();
        }
        let built = match self.conn.agent() {
            Some(a) => a.origin_protocol(&self.conn),
            None => Err(ClientError::ConnectionClosed),
        };
        let mut inner = match built {
            Ok(p) => p,
            Err(e) => return self.refuse(e),
        };
        let rest = self.buf.split_off(n);
        self.buf = Vec::new();
        if let Some(t) = self.transport.clone() {
            inner.connection_made(t);
        }
        if !rest.is_empty() {
            inner.data_received(&rest);
        }
        self.inner = Some(inner);
    }

    fn connection_lost(&mut self, reason: Failure) {
        if let Some(t) = self.timer.take() {
            let _ = t.cancel();
        }
        match self.inner.as_mut() {
            Some(p) => p.connection_lost(reason),
            None => {
                if let Some(job) = self.conn.job.borrow_mut().take() {
                    let _ = job.d.errback(ClientError::BadProxyResponse(
                        "the proxy closed before answering CONNECT",
                    ));
                }
                self.conn.lost(reason);
            }
        }
    }
}

struct ConnProto(Rc<Conn>);

impl Protocol for ConnProto {
    fn connection_made(&mut self, t: Transport) {
        *self.0.transport.borrow_mut() = Some(t);
        let job = self.0.job.borrow_mut().take();
        if let Some(job) = job {
            self.0.start(job);
        }
    }
    fn data_received(&mut self, data: &[u8]) {
        self.0.got_bytes.set(true);
        if let Some(p) = self.0.parser.borrow_mut().as_mut() {
            p.feed(data);
        }
        self.0.pump();
    }
    fn connection_lost(&mut self, reason: Failure) {
        self.0.lost(reason);
    }
}

impl Conn {
    fn is_usable(&self) -> bool {
        self.state.get() == CState::Idle
            && self
                .transport
                .borrow()
                .as_ref()
                .is_some_and(|t| t.is_connected())
    }

    fn agent(&self) -> Option<Rc<AgentInner>> {
        self.agent.upgrade()
    }

    fn start(&self, job: Job) {
        let Some(agent) = self.agent() else { return };
        if let Some(t) = self.timer.borrow_mut().take() {
            let _ = t.cancel();
        }
        if self.state.get() == CState::Idle {
            self.reused.set(true);
        }
        self.state.set(CState::Busy);
        self.got_bytes.set(false);
        let req = &job.req;
        let mut out = Vec::with_capacity(256 + req.body.len());
        let target = req.url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let _ = write!(out, "{} {} HTTP/1.1\r\n", req.method, target);
        if !req.headers.contains_key(header::HOST) {
            let host = req.url.authority().map(|a| a.as_str()).unwrap_or("");
            let _ = write!(out, "host: {host}\r\n");
        }
        if !req.headers.contains_key(header::USER_AGENT) {
            let _ = write!(out, "user-agent: {}\r\n", agent.cfg.user_agent);
        }
        for (k, v) in &req.headers {
            if k == header::CONTENT_LENGTH || k == header::TRANSFER_ENCODING {
                continue;
            }
            out.extend_from_slice(k.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let stream = req.stream.as_ref().and_then(|s| s.0.borrow_mut().take());
        match &stream {
            Some((_, Some(n))) => {
                let _ = write!(out, "content-length: {n}\r\n");
            }
            Some((_, None)) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            None => {
                if !req.body.is_empty() || matches!(req.method, Method::POST | Method::PUT) {
                    let _ = write!(out, "content-length: {}\r\n", req.body.len());
                }
            }
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&req.body);
        *self.parser.borrow_mut() = Some(ResponseParser::new(
            req.method == Method::HEAD,
            agent.cfg.max_head_bytes,
        ));
        let timeout = agent.cfg.response_timeout;
        let weak = self.me.clone();
        let t = agent.reactor.call_later(timeout, move || {
            if let Some(c) = weak.upgrade() {
                if let Some(job) = c.job.borrow_mut().take() {
                    let _ = job.d.errback(ClientError::Timeout(timeout));
                }
                c.close();
            }
        });
        *self.timer.borrow_mut() = Some(t);
        *self.job.borrow_mut() = Some(job);
        let t = self.transport.borrow().clone();
        if let Some(t) = t {
            t.write(&out);
            if let Some((source, len)) = stream {
                *self.upload.borrow_mut() = Some(Upload {
                    source,
                    chunked: len.is_none(),
                });
                let p: Rc<dyn Producer> = Rc::new(UploadProducer(self.me.clone()));
                // A pull producer is asked for its first piece at once.
                if t.register_producer(p, false).is_err() {
                    self.send_more();
                }
            }
        }
    }

    /// Writes more of a streamed request body while the transport has room.
    fn send_more(&self) {
        if self.uploading.replace(true) {
            return;
        }
        let t = self.transport.borrow().clone();
        for _ in 0..64 {
            let Some(t) = t.as_ref() else { break };
            if t.write_buffer_len() >= 64 * 1024 || !t.is_connected() {
                break;
            }
            let up = self.upload.borrow_mut().take();
            let Some(mut up) = up else { break };
            let notify = {
                let me = self.me.clone();
                Notify(Rc::new(move || {
                    if let Some(c) = me.upgrade() {
                        c.send_more();
                    }
                }))
            };
            let chunk = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                up.source.next_chunk(32 * 1024, &notify)
            }))
            .unwrap_or_else(|p| Chunk::Error(Failure::from_panic(p)));
            match chunk {
                Chunk::Data(d) => {
                    if up.chunked {
                        let mut framed = Vec::with_capacity(d.len() + 16);
                        crate::chunked::encode_chunk(&mut framed, &d);
                        t.write(&framed);
                    } else {
                        t.write(&d);
                    }
                    *self.upload.borrow_mut() = Some(up);
                }
                Chunk::Pending => {
                    *self.upload.borrow_mut() = Some(up);
                    break;
                }
                Chunk::End => {
                    if up.chunked {
                        t.write(b"0\r\n\r\n");
                    }
                    t.unregister_producer();
                    break;
                }
                Chunk::Error(f) => {
                    tracing::warn!(failure = %f, "request body stream failed");
                    t.unregister_producer();
                    t.abort_connection();
                    break;
                }
            }
        }
        self.uploading.set(false);
    }

    fn pump(&self) {
        if self.pumping.replace(true) {
            self.again.set(true);
            return;
        }
        for _ in 0..100 {
            self.again.set(false);
            self.pump_once();
            if !self.again.get() {
                break;
            }
        }
        self.pumping.set(false);
    }

    fn pump_once(&self) {
        for _ in 0..10_000 {
            if self
                .body
                .borrow()
                .as_ref()
                .is_some_and(|b| b.borrow().buffered >= 256 * 1024)
            {
                if !self.paused.get() {
                    self.paused.set(true);
                    if let Some(t) = self.transport.borrow().as_ref() {
                        t.pause_producing();
                    }
                }
                return;
            }
            if self.paused.get() {
                self.paused.set(false);
                if let Some(t) = self.transport.borrow().as_ref() {
                    t.resume_producing();
                }
            }
            let ev = match self.parser.borrow_mut().as_mut() {
                Some(p) => p.next_event(),
                None => return,
            };
            match ev {
                Ok(None) => return,
                Ok(Some(ResponseEvent::Head {
                    status,
                    version,
                    headers,
                    keep_alive,
                })) => {
                    if let Some(t) = self.timer.borrow_mut().take() {
                        let _ = t.cancel();
                    }
                    self.keep_alive.set(keep_alive);
                    let me = self.me.clone();
                    let on_consume: Rc<dyn Fn()> = Rc::new(move || {
                        if let Some(c) = me.upgrade() {
                            c.pump();
                        }
                    });
                    let body = request::new_body(false, Some(on_consume));
                    *self.body.borrow_mut() = Some(body.clone());
                    let job = self.job.borrow_mut().take();
                    if let Some(job) = job {
                        let resp = ClientResponse {
                            status,
                            version,
                            headers,
                            url: job.req.url.clone(),
                            body: RequestBody::new(body),
                        };
                        let _ = job.d.callback(resp);
                    }
                }
                Ok(Some(ResponseEvent::Data(d))) => {
                    let b = self.body.borrow().clone();
                    if let Some(b) = b {
                        request::push_body(&b, d);
                    }
                }
                Ok(Some(ResponseEvent::End)) => {
                    let b = self.body.borrow_mut().take();
                    if let Some(b) = b {
                        request::end_body(&b, None);
                    }
                    *self.parser.borrow_mut() = None;
                    if self.keep_alive.get() && self.state.get() == CState::Busy {
                        if let (Some(agent), Some(me)) = (self.agent(), self.me.upgrade()) {
                            agent.released(me);
                        }
                    } else {
                        self.close();
                    }
                    return;
                }
                Err(e) => {
                    let b = self.body.borrow_mut().take();
                    if let Some(b) = b {
                        request::end_body(&b, Some(e.to_string()));
                    }
                    if let Some(job) = self.job.borrow_mut().take() {
                        let _ = job.d.errback(e);
                    }
                    self.close();
                    return;
                }
            }
        }
    }

    fn close(&self) {
        if let Some(t) = self.transport.borrow().as_ref() {
            t.lose_connection();
        }
    }

    /// The connection could not be made: fail its request, free its slot.
    fn fail(&self, reason: Failure) {
        self.state.set(CState::Closed);
        if let Some(job) = self.job.borrow_mut().take() {
            let _ = job.d.errback(reason);
        }
        if let Some(a) = self.agent.upgrade() {
            a.closed(&self.key);
        }
    }

    fn lost(&self, reason: Failure) {
        #[cfg(not(feature = "tls"))]
        let _ = reason;
        let was = self.state.replace(CState::Closed);
        if let Some(t) = self.timer.borrow_mut().take() {
            let _ = t.cancel();
        }
        // TLS failures (certificate, handshake) are the answer, typed; the
        // parser would only see an early close.
        #[cfg(feature = "tls")]
        if reason.check::<torsion_tls::TlsError>() && !self.got_bytes.get() {
            if let Some(job) = self.job.borrow_mut().take() {
                let _ = job.d.errback(reason.clone());
            }
        }
        // A reused connection the server closed before answering a byte
        // (it closed the idle connection as the request went out): retry an
        // idempotent request once on a fresh connection. Decided before the
        // end of input reaches the parser, which would fail the request.
        let stale = was == CState::Busy && self.reused.get() && !self.got_bytes.get();
        if stale {
            let retry = {
                let job = self.job.borrow();
                job.as_ref().is_some_and(|job| {
                    !job.retried
                        && job.req.stream.is_none()
                        && matches!(
                            job.req.method,
                            Method::GET
                                | Method::HEAD
                                | Method::OPTIONS
                                | Method::PUT
                                | Method::DELETE
                        )
                })
            };
            if retry {
                let job = self.job.borrow_mut().take();
                if let (Some(mut job), Some(agent)) = (job, self.agent()) {
                    job.retried = true;
                    agent.closed(&self.key);
                    agent.submit(job);
                    return;
                }
            }
        }
        // A close-delimited body ends here.
        if let Some(p) = self.parser.borrow_mut().as_mut() {
            p.feed_eof();
        }
        self.pump();
        let b = self.body.borrow_mut().take();
        if let Some(b) = b {
            request::end_body(&b, Some(ClientError::ConnectionClosed.to_string()));
        }
        let job = self.job.borrow_mut().take();
        let Some(agent) = self.agent() else { return };
        if let Some(job) = job {
            let _ = job.d.errback(ClientError::ConnectionClosed);
        }
        agent.closed(&self.key);
    }
}
