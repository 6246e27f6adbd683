//! The sans-I/O HTTP/1.1 server connection: bytes in → events out,
//! responses in → bytes out.
//!
//! [`ServerConn`] owns no socket and reads no clock. Feed it what the peer
//! sent with [`ServerConn::receive`], pull [`Event`]s with
//! [`ServerConn::next_event`], answer each request (in any order of
//! readiness, but the machine only accepts writes for the oldest unanswered
//! request: responses go out strictly in request order), and send what
//! [`ServerConn::take_output`] hands back. Malformed requests never reach the
//! caller as requests: the machine answers them itself with the right status
//! (after the responses of earlier pipelined requests) and then asks for the
//! connection to be closed.
//!
//! ```
//! use torsion_http::h1::{Event, ServerConn};
//! use torsion_http::ServerConfig;
//! use http::{HeaderMap, StatusCode};
//!
//! let mut conn = ServerConn::new(ServerConfig::default());
//! conn.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
//! let Some(Event::Head(head)) = conn.next_event() else { panic!() };
//! assert_eq!(head.path(), "/");
//! assert!(matches!(conn.next_event(), Some(Event::End { .. })));
//! conn.respond(head.id(), StatusCode::OK, &HeaderMap::new(), Some(2)).unwrap();
//! conn.send_data(head.id(), b"hi").unwrap();
//! conn.finish(head.id()).unwrap();
//! let out = String::from_utf8(conn.take_output()).unwrap();
//! assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
//! assert!(out.ends_with("content-length: 2\r\n\r\nhi"));
//! ```

use std::collections::VecDeque;
use std::io::Write;
use std::rc::Rc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri, Version};

use crate::chunked::{self, ChunkedDecoder, ChunkedError};
use crate::config::ServerConfig;
use crate::parse::{parse_request_head, HeadLimits, ParsedHead};

/// The head of a request, as the machine parsed and checked it.
///
/// The head keeps the bytes it was parsed from; the target and the header
/// fields are read out of them when asked for. So a request costs no header
/// map and no URI unless someone wants one: [`RequestHead::header`] and
/// [`RequestHead::fields`] read the bytes directly, [`RequestHead::headers`]
/// and [`RequestHead::uri`] build the `http` types.
///
/// A head is one pointer: its parts live in a box that comes from a
/// per-thread pool and goes back to it, with its byte buffer, when the head
/// is dropped. Handing a head from the machine to a handler moves eight
/// bytes, and a request costs neither an allocation nor an atomic count.
///
/// ```
/// use torsion_http::h1::{Event, ServerConn};
/// use torsion_http::ServerConfig;
///
/// let mut conn = ServerConn::new(ServerConfig::default());
/// conn.receive(b"GET /a/b?q=1 HTTP/1.1\r\nHost: example.org\r\nAccept: */*\r\n\r\n");
/// let Some(Event::Head(head)) = conn.next_event() else { panic!() };
/// assert_eq!(head.method(), http::Method::GET);
/// assert_eq!(head.path(), "/a/b");
/// assert_eq!(head.query(), Some("q=1"));
/// assert_eq!(head.header("host"), Some(&b"example.org"[..]));
/// assert_eq!(head.fields().count(), 2);
/// assert_eq!(head.headers()["accept"], "*/*");
/// ```
// (`ManuallyDrop`: `Drop` below takes the box out, so the compiler's own
// drop of the emptied field, a call per request, is left out.)
pub struct RequestHead(std::mem::ManuallyDrop<Option<Box<HeadData>>>);

/// The parts of a [`RequestHead`].
#[derive(Default)]
struct HeadData {
    id: u64,
    method: Method,
    version: Version,
    content_length: Option<u64>,
    keep_alive: bool,
    expect_continue: bool,
    /// The head as received: request line, field lines, empty line. Every
    /// line ends in CRLF (the machine refuses anything else).
    raw: Vec<u8>,
    /// Where the request target is in `raw`.
    target: (u32, u32),
    /// Where its `?` is (the target's end when it has no query).
    query: u32,
    /// The target may hold `%` escapes (so its path segments must be
    /// decoded to be checked); false only for a plain target without.
    escaped: bool,
    /// Where the first field line starts in `raw`.
    fields: u32,
    /// The target parsed at once when it is not a plain origin-form path
    /// (absolute-form, `*`, authority-form, or characters outside RFC
    /// 3986's path and query set); `None` when it can be built lazily.
    uri: Option<Box<Uri>>,
}

/// What a head reads as if its parts were gone (never, before `drop`).
static EMPTY_HEAD: HeadData = HeadData {
    id: 0,
    method: Method::GET,
    version: Version::HTTP_11,
    content_length: Some(0),
    keep_alive: false,
    expect_continue: false,
    raw: Vec::new(),
    target: (0, 0),
    query: 0,
    escaped: false,
    fields: 0,
    uri: None,
};

thread_local! {
    // The boxes themselves are what is pooled: a head is handed around as one.
    #[allow(clippy::vec_box)]
    static HEAD_POOL: std::cell::RefCell<Vec<Box<HeadData>>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// The box most recently given back, in front of the pool: a server
    /// answering each request before it parses the next one passes one
    /// box round and round, without the pool's borrow and vector.
    static HEAD_LAST: std::cell::Cell<Option<Box<HeadData>>> = const { std::cell::Cell::new(None) };
}

/// Heads kept in a thread's pool, and the largest byte buffer kept with one.
const HEAD_POOL_MAX: usize = 64;
const HEAD_POOL_BUFFER_MAX: usize = 4 * 1024;

impl RequestHead {
    /// An empty head from the pool.
    /// A box from the pool (or a new one) for a head's parts. Every part
    /// is assigned before the box is wrapped: a pooled box keeps what its
    /// last head had.
    fn pooled_box() -> Box<HeadData> {
        if let Some(d) = HEAD_LAST.try_with(std::cell::Cell::take).ok().flatten() {
            return d;
        }
        HEAD_POOL
            .try_with(|p| p.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    fn d(&self) -> &HeadData {
        // The box is there from creation until `drop` takes it.
        self.0.as_deref().unwrap_or(&EMPTY_HEAD)
    }

    /// Sequence number on this connection, from 0; responses are matched by it.
    pub fn id(&self) -> u64 {
        self.d().id
    }

    /// The request method.
    pub fn method(&self) -> &Method {
        &self.d().method
    }

    /// `HTTP/1.0` or `HTTP/1.1`.
    pub fn version(&self) -> Version {
        self.d().version
    }

    /// Body length when known (`Content-Length`, or 0 without body); `None` for chunked.
    pub fn content_length(&self) -> Option<u64> {
        self.d().content_length
    }

    /// True when the connection stays open after this request.
    pub fn keep_alive(&self) -> bool {
        self.d().keep_alive
    }

    /// The client sent `Expect: 100-continue`.
    pub fn expect_continue(&self) -> bool {
        self.d().expect_continue
    }

    /// True when a body follows the head.
    pub fn has_body(&self) -> bool {
        self.d().content_length != Some(0)
    }

    /// The request target exactly as sent (for a request built by hand,
    /// its URI's path and query).
    pub fn target(&self) -> &str {
        let d = self.d();
        match &d.uri {
            Some(u) if d.raw.is_empty() => u.path_and_query().map_or("/", |p| p.as_str()),
            _ => d.raw_str(d.target.0, d.target.1),
        }
    }

    /// The path of the target (without the query).
    pub fn path(&self) -> &str {
        let d = self.d();
        match &d.uri {
            Some(u) => u.path(),
            None => d.raw_str(d.target.0, d.query),
        }
    }

    /// True when the target is plain ASCII without `%` escapes (see
    /// `PLAIN_TARGET`): its path segments are then UTF-8 as they stand.
    pub(crate) fn path_is_plain(&self) -> bool {
        !self.d().escaped
    }

    /// The path's bytes (no UTF-8 check: splitting it into segments
    /// checks each).
    pub(crate) fn path_bytes(&self) -> &[u8] {
        let d = self.d();
        match &d.uri {
            Some(u) => u.path().as_bytes(),
            None => d
                .raw
                .get(d.target.0 as usize..d.query as usize)
                .unwrap_or_default(),
        }
    }

    /// The query of the target, without the `?`.
    pub fn query(&self) -> Option<&str> {
        let d = self.d();
        match &d.uri {
            Some(u) => u.query(),
            None => (d.query < d.target.1).then(|| d.raw_str(d.query + 1, d.target.1)),
        }
    }

    /// The target as an [`http::Uri`] (built on each call).
    pub fn uri(&self) -> Uri {
        match &self.d().uri {
            Some(u) => (**u).clone(),
            // A plain origin-form target always parses (see `PLAIN_TARGET`).
            None => Uri::try_from(self.target()).unwrap_or_else(|_| Uri::from_static("/")),
        }
    }

    /// The first header field named `name` (compared without case), its
    /// value without surrounding whitespace.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// The header fields in the order they were sent: name as sent, value
    /// without surrounding whitespace.
    pub fn fields(&self) -> Fields<'_> {
        let d = self.d();
        Fields {
            rest: d.raw.get(d.fields as usize..).unwrap_or_default(),
        }
    }

    /// The header fields as an [`http::HeaderMap`] (built on each call).
    pub fn headers(&self) -> HeaderMap {
        build_header_map(self.fields())
    }

    /// The head's bytes as received (empty for a request built by hand).
    pub fn raw(&self) -> &[u8] {
        &self.d().raw
    }

    /// A head without received bytes, for a request built by hand.
    pub(crate) fn built(method: Method, version: Version, uri: Uri) -> RequestHead {
        let mut d = RequestHead::pooled_box();
        d.id = 0;
        d.method = method;
        d.version = version;
        d.content_length = Some(0);
        d.keep_alive = true;
        d.expect_continue = false;
        d.target = (0, 0);
        d.query = 0;
        d.escaped = true;
        d.fields = 0;
        d.uri = Some(Box::new(uri));
        RequestHead(std::mem::ManuallyDrop::new(Some(d)))
    }
}

impl HeadData {
    fn raw_str(&self, from: u32, to: u32) -> &str {
        // The target was checked to be UTF-8 when the head was accepted.
        let bytes = self.raw.get(from as usize..to as usize).unwrap_or_default();
        std::str::from_utf8(bytes).unwrap_or_default()
    }
}

impl Drop for RequestHead {
    fn drop(&mut self) {
        let Some(mut d) = self.0.take() else { return };
        if d.raw.capacity() > HEAD_POOL_BUFFER_MAX {
            return;
        }
        // Keep the box and the byte buffer. Every other part is assigned
        // (dropping what it held) when the box is used again, so it is left
        // as it is: resetting it here only cost stores.
        d.raw.clear();
        let Ok(Some(older)) = HEAD_LAST.try_with(|last| last.replace(Some(d))) else {
            return;
        };
        let _ = HEAD_POOL.try_with(move |p| {
            let mut p = p.borrow_mut();
            if p.len() < HEAD_POOL_MAX {
                p.push(older);
            }
        });
    }
}

impl Clone for RequestHead {
    fn clone(&self) -> Self {
        let (from, mut to) = (self.d(), RequestHead::pooled_box());
        to.id = from.id;
        to.method = from.method.clone();
        to.version = from.version;
        to.content_length = from.content_length;
        to.keep_alive = from.keep_alive;
        to.expect_continue = from.expect_continue;
        to.raw.extend_from_slice(&from.raw);
        to.target = from.target;
        to.query = from.query;
        to.escaped = from.escaped;
        to.fields = from.fields;
        to.uri = from.uri.clone();
        RequestHead(std::mem::ManuallyDrop::new(Some(to)))
    }
}

/// Builds a map from fields read out of a head.
pub(crate) fn build_header_map(fields: Fields<'_>) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in fields {
        // The parser accepted these bytes, and its name and value
        // alphabets are exactly the `http` crate's: neither can fail.
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            map.append(n, v);
        }
    }
    map
}

impl std::fmt::Debug for RequestHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestHead")
            .field("id", &self.id())
            .field("method", self.method())
            .field("target", &self.target())
            .field("version", &self.version())
            .field("fields", &self.fields().collect::<Vec<_>>())
            .field("content_length", &self.content_length())
            .field("keep_alive", &self.keep_alive())
            .field("expect_continue", &self.expect_continue())
            .finish()
    }
}

/// The header fields of a [`RequestHead`], read out of its bytes.
#[derive(Debug, Clone)]
pub struct Fields<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Fields<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.rest;
        // The empty line that ends the head (or nothing, for a built head).
        if rest.len() < 3 {
            return None;
        }
        let colon = memchr::memchr(b':', rest)?;
        let lf = colon + memchr::memchr(b'\n', &rest[colon..])?;
        let value_end = if rest[lf - 1] == b'\r' { lf - 1 } else { lf };
        let value = rest.get(colon + 1..value_end).unwrap_or_default();
        self.rest = &rest[lf + 1..];
        // Names are tokens (ASCII), values trimmed as the parser trims them.
        let name = std::str::from_utf8(&rest[..colon]).unwrap_or_default();
        Some((name, value.trim_ascii()))
    }
}

/// What the machine found in the input.
#[derive(Debug, Clone, PartialEq, Eq)]
// Heads are the common event; boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// A request head; body events for it follow.
    Head(RequestHead),
    /// A piece of the current request's body.
    Data {
        /// The request it belongs to.
        id: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The current request's body is complete.
    End {
        /// The request.
        id: u64,
    },
    /// The input was malformed. The machine answers with `status` itself and
    /// closes; `id` names the request whose body was cut short, if any.
    Error {
        /// The request whose body failed, `None` when no head was accepted.
        id: Option<u64>,
        /// The status the machine answers with.
        status: StatusCode,
        /// What was wrong, for logs.
        reason: &'static str,
    },
}

impl PartialEq for RequestHead {
    fn eq(&self, o: &Self) -> bool {
        let (a, b) = (self.d(), o.d());
        a.id == b.id
            && a.method == b.method
            && a.version == b.version
            && a.raw == b.raw
            && a.content_length == b.content_length
            && a.keep_alive == b.keep_alive
            && a.expect_continue == b.expect_continue
    }
}
impl Eq for RequestHead {}

/// A response call the machine refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The id is not the oldest unanswered request (or is unknown).
    #[error("request {0} is not the one being answered")]
    NotCurrent(u64),
    /// `respond` was already called for this request.
    #[error("response head already sent")]
    HeadAlreadySent,
    /// `send_data`/`finish` before `respond`.
    #[error("response head not sent yet")]
    HeadNotSent,
    /// More body bytes than the declared `Content-Length`.
    #[error("body longer than its Content-Length")]
    TooLong,
    /// The machine answered this request itself (its input was malformed).
    #[error("the request was answered with an error status by the machine")]
    Superseded,
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body at all (HEAD, 204, 304): data is dropped.
    Empty,
    Length(u64),
    Chunked,
    /// HTTP/1.0 without a length: the close ends the body.
    Close,
}

#[derive(Debug)]
struct Pending {
    id: u64,
    is_head: bool,
    version: Version,
    keep_alive: bool,
    expect_continue: bool,
    continue_sent: bool,
    body_done: bool,
    error: Option<StatusCode>,
    /// Response state: `None` until the head is written.
    framing: Option<Framing>,
}

#[derive(Debug)]
enum ReadState {
    Head,
    Length {
        id: u64,
        remaining: u64,
    },
    Chunked {
        id: u64,
        // Boxed: every connection carries a ReadState, few a chunked body.
        dec: Box<ChunkedDecoder>,
    },
    /// No more requests are read (after `Connection: close` or an error).
    Stopped,
}

/// The server side of one HTTP/1.x connection, without I/O.
#[derive(Debug)]
pub struct ServerConn {
    cfg: Rc<ServerConfig>,
    /// Unparsed input. A parsed head's bytes are copied out with it (into
    /// a pooled buffer), so this buffer is never shared.
    inbuf: InBuf,
    read: ReadState,
    pending: PendingQueue,
    next_id: u64,
    out: Vec<u8>,
    /// The `date` line and, when it fits, the `server` line every
    /// response carries, rendered once per date change (inline: no
    /// allocation per connection).
    std_lines: SharedLines,
    close_after: bool,
    closed: bool,
    bytes_sent_body: u64,
    /// A body just completed: its `End` event is due next.
    end_pending: Option<u64>,
}

const NO_BODY_EVENT_MAX: usize = 64 * 1024;

/// The requests read and not yet answered, oldest first. The oldest is
/// held inline: one unanswered request at a time is the common case (a
/// handler answering at once, pipelined or not), and then the queue is
/// never touched. Invariant: `front` is `None` only when `rest` is empty.
#[derive(Debug, Default)]
struct PendingQueue {
    front: Option<Pending>,
    rest: VecDeque<Pending>,
}

impl PendingQueue {
    fn is_empty(&self) -> bool {
        self.front.is_none()
    }

    fn len(&self) -> usize {
        usize::from(self.front.is_some()) + self.rest.len()
    }

    fn front(&self) -> Option<&Pending> {
        self.front.as_ref()
    }

    fn front_mut(&mut self) -> Option<&mut Pending> {
        self.front.as_mut()
    }

    fn push_back(&mut self, p: Pending) {
        if self.front.is_none() {
            self.front = Some(p);
        } else {
            self.rest.push_back(p);
        }
    }

    fn pop_front(&mut self) -> Option<Pending> {
        let first = self.front.take();
        if !self.rest.is_empty() {
            self.front = self.rest.pop_front();
        }
        first
    }

    fn clear(&mut self) {
        self.front = None;
        self.rest.clear();
    }

    fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.front.iter().chain(self.rest.iter())
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Pending> {
        self.front.iter_mut().chain(self.rest.iter_mut())
    }
}

/// Unparsed input: a vector and how much of its front was consumed.
/// Consuming a parsed head is one addition, and a buffer consumed to its
/// end starts over at the front of its allocation; only a partial message
/// left at the end of a read is moved, when the next read arrives.
#[derive(Debug, Default)]
struct InBuf {
    buf: Vec<u8>,
    pos: usize,
}

impl InBuf {
    fn extend_from_slice(&mut self, data: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Drops the first `n` unconsumed bytes.
    fn advance(&mut self, n: usize) {
        self.pos += n;
        debug_assert!(self.pos <= self.buf.len());
        if self.pos >= self.buf.len() {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

impl std::ops::Deref for InBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }
}

/// Buffers an idle connection gave back, for the next busy one: idle
/// connections hold none, and busy ones do not grow fresh ones every batch.
struct Spare {
    inbuf: Option<InBuf>,
    pending: VecDeque<Pending>,
}

thread_local! {
    static SPARE: std::cell::RefCell<Spare> = const {
        std::cell::RefCell::new(Spare {
            inbuf: None,
            pending: VecDeque::new(),
        })
    };
}

/// Largest input buffer kept as a spare.
const SPARE_INPUT_MAX: usize = 4 * 1024;
/// Most queued-request entries kept as a spare.
const SPARE_PENDING_MAX: usize = 64;

impl ServerConn {
    /// A new connection with these limits.
    pub fn new(cfg: ServerConfig) -> Self {
        Self::with_shared_config(Rc::new(cfg))
    }

    /// A new connection sharing its configuration with others (what a
    /// server with many connections uses: no copy per connection).
    pub fn with_shared_config(cfg: Rc<ServerConfig>) -> Self {
        let lines = SharedLines::new(&cfg);
        Self::with_shared_parts(cfg, lines)
    }

    /// A new connection sharing its configuration and its rendered
    /// standard lines (`date`, `server`) with the server's other
    /// connections: one copy per server, not per connection.
    pub(crate) fn with_shared_parts(mut cfg: Rc<ServerConfig>, std_lines: SharedLines) -> Self {
        // Zero would never read a request at all.
        if cfg.max_pipelined == 0 || cfg.max_headers == 0 {
            let c = Rc::make_mut(&mut cfg);
            c.max_pipelined = c.max_pipelined.max(1);
            c.max_headers = c.max_headers.max(1);
        }
        ServerConn {
            cfg,
            inbuf: InBuf::default(),
            read: ReadState::Head,
            pending: PendingQueue::default(),
            next_id: 0,
            out: Vec::new(),
            std_lines,
            close_after: false,
            closed: false,
            bytes_sent_body: 0,
            end_pending: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Sets the value of the `Date` header written from now on (the caller owns the clock).
    /// `date` must be an IMF-fixdate (29 bytes, as `httpdate` formats);
    /// anything else is ignored.
    pub fn set_date(&mut self, date: &str) {
        self.std_lines.set_date(date, &self.cfg);
    }

    /// Adds bytes received from the peer. Bytes arriving after the machine
    /// stopped reading (close requested, error) are dropped.
    pub fn receive(&mut self, data: &[u8]) {
        if matches!(self.read, ReadState::Stopped) || self.closed {
            return;
        }
        if self.inbuf.capacity() == 0 {
            if let Some(b) = SPARE.with(|s| s.borrow_mut().inbuf.take()) {
                self.inbuf = b;
            }
        }
        self.inbuf.extend_from_slice(data);
    }

    /// Releases input-buffer memory once everything in it was parsed (call
    /// when idle: an idle connection then holds no buffer).
    /// The buffers go back to the thread's spares, for the next connection
    /// that has work.
    #[inline(never)]
    pub fn compact(&mut self) {
        if self.inbuf.is_empty() {
            let b = std::mem::take(&mut self.inbuf);
            SPARE.with(|s| {
                let mut s = s.borrow_mut();
                if b.capacity() <= SPARE_INPUT_MAX
                    && s.inbuf.as_ref().is_none_or(|o| o.capacity() < b.capacity())
                {
                    s.inbuf = Some(b);
                }
            });
        }
        self.compact_rest();
    }

    fn compact_rest(&mut self) {
        if self.out.is_empty() {
            self.out = Vec::new();
        }
        if self.pending.is_empty() && self.pending.rest.capacity() > 0 {
            let p = std::mem::take(&mut self.pending.rest);
            SPARE.with(|s| {
                let mut s = s.borrow_mut();
                if p.capacity() <= SPARE_PENDING_MAX && s.pending.capacity() < p.capacity() {
                    s.pending = p;
                }
            });
        }
    }

    /// Unparsed input held.
    pub fn buffered(&self) -> usize {
        self.inbuf.len()
    }

    /// True when the caller should keep reading from the peer: the machine is
    /// still reading requests and its unparsed input is small. When false,
    /// pause the transport until events have been pulled.
    pub fn wants_input(&self) -> bool {
        !self.closed
            && !matches!(self.read, ReadState::Stopped)
            && self.buffered() < self.cfg.max_header_bytes + 64 * 1024
    }

    /// True while part of a request head has arrived but not all of it
    /// (the header timeout runs).
    pub fn receiving_head(&self) -> bool {
        matches!(self.read, ReadState::Head)
            && self.buffered() > 0
            && self.pending.len() < self.cfg.max_pipelined
    }

    /// True while a request body is being read.
    pub fn receiving_body(&self) -> bool {
        matches!(
            self.read,
            ReadState::Length { .. } | ReadState::Chunked { .. }
        )
    }

    /// True when nothing is in progress: no unanswered request and no input
    /// (the idle keep-alive timeout runs).
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.buffered() == 0 && matches!(self.read, ReadState::Head)
    }

    /// The oldest request whose response is not finished.
    pub fn current(&self) -> Option<u64> {
        self.pending.front().map(|p| p.id)
    }

    /// Number of requests read and not yet answered.
    pub fn queued(&self) -> usize {
        self.pending.len()
    }

    /// True when every response is out and the connection should now be
    /// closed (after sending [`ServerConn::take_output`]).
    pub fn should_close(&self) -> bool {
        self.closed
    }

    /// Bytes to send to the peer; empties the output.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Swaps the output into `dst` (which should be empty), reusing its allocation.
    pub fn swap_output(&mut self, dst: &mut Vec<u8>) {
        std::mem::swap(&mut self.out, dst);
    }

    /// True when output is waiting.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Parses the next event from the input, if a complete one is there.
    pub fn next_event(&mut self) -> Option<Event> {
        if self.closed {
            return None;
        }
        if let Some(id) = self.end_pending.take() {
            return Some(Event::End { id });
        }
        match &mut self.read {
            ReadState::Stopped => None,
            ReadState::Head => {
                if self.pending.len() >= self.cfg.max_pipelined {
                    return None;
                }
                self.parse_head()
            }
            _ => self.next_body_event(),
        }
    }

    /// The next event of a request body being read.
    // (Out of line: keeps the body decoders out of the code every head runs through.)
    #[inline(never)]
    fn next_body_event(&mut self) -> Option<Event> {
        match &mut self.read {
            ReadState::Stopped | ReadState::Head => None,
            ReadState::Length { id, remaining } => {
                let id = *id;
                let avail = self.inbuf.len();
                let n = (avail as u64).min(*remaining) as usize;
                if n == 0 {
                    return None;
                }
                let n = n.min(NO_BODY_EVENT_MAX);
                *remaining -= n as u64;
                let data = self.inbuf[..n].to_vec();
                self.inbuf.advance(n);
                if *remaining == 0 {
                    self.body_finished(id);
                }
                Some(Event::Data { id, data })
            }
            ReadState::Chunked { id, dec } => {
                let id = *id;
                loop {
                    let input = &self.inbuf[..];
                    match dec.decode(input) {
                        Ok(step) => {
                            let data = step.data.map(|r| input[r].to_vec());
                            self.inbuf.advance(step.consumed);
                            if step.done {
                                self.body_finished(id);
                                return Some(match data {
                                    Some(d) if !d.is_empty() => Event::Data { id, data: d },
                                    _ => {
                                        self.end_pending = None;
                                        Event::End { id }
                                    }
                                });
                            }
                            if let Some(d) = data {
                                return Some(Event::Data { id, data: d });
                            }
                            if step.consumed == 0 {
                                return None;
                            }
                        }
                        Err(e) => {
                            let status = if e == ChunkedError::TooLarge {
                                StatusCode::PAYLOAD_TOO_LARGE
                            } else {
                                StatusCode::BAD_REQUEST
                            };
                            let reason = match e {
                                ChunkedError::InvalidSize => "invalid chunk size",
                                ChunkedError::InvalidLineEnding => {
                                    "bad line ending in chunked body"
                                }
                                ChunkedError::LineTooLong => "chunk line too long",
                                ChunkedError::TooLarge => "body too large",
                                ChunkedError::InvalidTrailer => "invalid trailer",
                            };
                            return Some(self.fail(Some(id), status, reason));
                        }
                    }
                }
            }
        }
    }

    /// Takes request `id`'s [`Event::End`] when it is the next event (as it
    /// is right after the [`Event::Head`] of a request without a body), so
    /// the caller need not pull it; false otherwise.
    ///
    /// ```
    /// use torsion_http::h1::{Event, ServerConn};
    /// use torsion_http::ServerConfig;
    ///
    /// let mut conn = ServerConn::new(ServerConfig::default());
    /// conn.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    /// let Some(Event::Head(head)) = conn.next_event() else { panic!() };
    /// assert!(!head.has_body() && conn.take_end(head.id()));
    /// assert!(conn.next_event().is_none());
    /// ```
    pub fn take_end(&mut self, id: u64) -> bool {
        if self.end_pending == Some(id) && !self.closed {
            self.end_pending = None;
            true
        } else {
            false
        }
    }

    /// After the last body byte: the End event comes next (for Length bodies).
    fn body_finished(&mut self, id: u64) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.id == id) {
            p.body_done = true;
        }
        let keep = self
            .pending
            .iter()
            .find(|p| p.id == id)
            .map(|p| p.keep_alive)
            // Already answered (a response before the body was read): its
            // response decided, and `close_after` holds a close.
            .unwrap_or(true);
        self.read = if keep && !self.close_after {
            ReadState::Head
        } else {
            ReadState::Stopped
        };
        // The End event comes with the next call.
        self.end_pending = Some(id);
    }

    fn parse_head(&mut self) -> Option<Event> {
        if self.pending.front.is_some() && self.pending.rest.capacity() == 0 {
            self.pending.rest = SPARE.with(|s| std::mem::take(&mut s.borrow_mut().pending));
        }
        // RFC 9112 §2.2: ignore empty lines before a request-line.
        while self.inbuf.starts_with(b"\r\n") {
            self.inbuf.advance(2);
        }
        let buf = &self.inbuf[..];
        if buf.is_empty() {
            return None;
        }
        let limits = HeadLimits {
            max_head: self.cfg.max_header_bytes,
            max_request_line: self.cfg.max_request_line,
            max_fields: self.cfg.max_headers,
        };
        let mut framing = FramingFields::default();
        let parsed = match parse_request_head(buf, &limits, |n, v| framing.see(n, v)) {
            Ok(Some(p)) => p,
            Ok(None) => return None,
            Err(e) => return Some(self.fail(None, e.status(), e.reason())),
        };
        let n = parsed.len;
        // The head's bytes go with the request, in a buffer of the
        // thread's pool: the input buffer stays this connection's alone
        // (no shared, atomically counted slices of it), and a request a
        // handler keeps holds only its head.
        let id = self.next_id;
        let mut d = RequestHead::pooled_box();
        // (The parts are read from the input, where the parser just was,
        // not from the copy being made.)
        let src = &self.inbuf[..n];
        let filled = fill_head(&mut d, src, &parsed, &framing, id, &self.cfg);
        d.raw.extend_from_slice(src);
        self.inbuf.advance(n);
        // (On an error the box goes back to the pool with the head.)
        let head = RequestHead(std::mem::ManuallyDrop::new(Some(d)));
        if let Err((status, reason)) = filled {
            // (What followed the head is dropped: the connection ends.)
            return Some(self.fail(None, status, reason));
        }
        self.next_id += 1;
        let d = head.d();
        self.pending.push_back(Pending {
            id,
            is_head: d.method == Method::HEAD,
            version: d.version,
            keep_alive: d.keep_alive,
            expect_continue: d.expect_continue,
            continue_sent: false,
            body_done: d.content_length == Some(0),
            error: None,
            framing: None,
        });
        self.read = match d.content_length {
            Some(0) => {
                self.end_pending = Some(id);
                if d.keep_alive {
                    ReadState::Head
                } else {
                    ReadState::Stopped
                }
            }
            Some(n) => ReadState::Length { id, remaining: n },
            None => ReadState::Chunked {
                id,
                dec: Box::new(ChunkedDecoder::new(self.cfg.max_body)),
            },
        };
        if !d.keep_alive {
            self.close_after = true;
        }
        // Only a head that is now the front can need the machine's own
        // work (a 100 Continue): an older front is unchanged by it.
        if self.pending.len() == 1 && d.expect_continue {
            self.advance();
        }
        Some(Event::Head(head))
    }

    /// Malformed input: stop reading, queue the error response, report it.
    #[cold]
    fn fail(&mut self, id: Option<u64>, status: StatusCode, reason: &'static str) -> Event {
        self.read = ReadState::Stopped;
        self.close_after = true;
        self.inbuf.clear();
        match id {
            Some(id) => {
                // The request's handler may already be answering; if not, the
                // machine's error response takes its place. If it was answered
                // already, the connection just closes.
                if let Some(p) = self.pending.iter_mut().find(|p| p.id == id) {
                    if p.framing.is_none() {
                        p.error = Some(status);
                    }
                    p.body_done = true;
                    p.keep_alive = false;
                }
            }
            None => {
                let id = self.next_id;
                self.next_id += 1;
                self.pending.push_back(Pending {
                    id,
                    is_head: false,
                    version: Version::HTTP_11,
                    keep_alive: false,
                    expect_continue: false,
                    continue_sent: false,
                    body_done: true,
                    error: Some(status),
                    framing: None,
                });
            }
        }
        self.advance();
        Event::Error { id, status, reason }
    }

    /// Work the machine does on its own for the front request: `100
    /// Continue`, error responses, and noticing that everything is done.
    fn advance(&mut self) {
        let Some(front) = self.pending.front_mut() else {
            if self.close_after
                && !matches!(
                    self.read,
                    ReadState::Length { .. } | ReadState::Chunked { .. }
                )
            {
                self.closed = true;
            }
            return;
        };
        if let (Some(status), None) = (front.error, front.framing) {
            // An error response is always the connection's last.
            self.pending.clear();
            write_error_response(&mut self.out, status, &self.std_lines.0.borrow());
            self.read = ReadState::Stopped;
            self.closed = true;
            return;
        }
        if front.expect_continue
            && !front.continue_sent
            && front.framing.is_none()
            && !front.body_done
        {
            front.continue_sent = true;
            self.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
    }

    fn front_for(&mut self, id: u64) -> Result<&mut Pending, SendError> {
        if self.closed {
            return Err(SendError::Closed);
        }
        let is_front = self.pending.front().is_some_and(|p| p.id == id);
        if !is_front {
            let queued = self.pending.iter().any(|p| p.id == id);
            return Err(if id < self.next_id && !queued {
                // An id the machine already answered with an error status.
                SendError::Superseded
            } else {
                SendError::NotCurrent(id)
            });
        }
        self.pending.front_mut().ok_or(SendError::NotCurrent(id))
    }

    /// Writes the response head for request `id`, which must be the oldest
    /// unanswered one. `content_length` is the body size when known; without
    /// it the body is chunked (HTTP/1.1) or delimited by the close (HTTP/1.0).
    /// Framing headers in `headers` (`Content-Length`, `Transfer-Encoding`,
    /// `Connection`) are replaced by the machine's own.
    pub fn respond(
        &mut self,
        id: u64,
        status: StatusCode,
        headers: &HeaderMap,
        content_length: Option<u64>,
    ) -> Result<(), SendError> {
        self.respond_typed(id, status, headers, None, content_length)
    }

    /// Writes a whole response whose body is in memory for request `id`
    /// (the oldest unanswered one): [`respond`](Self::respond),
    /// [`send_data`](Self::send_data) and [`finish`](Self::finish) in one
    /// call, the common case of a handler that answers at once.
    ///
    /// ```
    /// use torsion_http::h1::{Event, ServerConn};
    /// use torsion_http::ServerConfig;
    /// use http::{HeaderMap, StatusCode};
    ///
    /// let mut conn = ServerConn::new(ServerConfig::default());
    /// conn.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    /// let Some(Event::Head(head)) = conn.next_event() else { panic!() };
    /// conn.respond_with_body(head.id(), StatusCode::OK, &HeaderMap::new(), b"hi").unwrap();
    /// let out = String::from_utf8(conn.take_output()).unwrap();
    /// assert!(out.ends_with("content-length: 2\r\n\r\nhi"));
    /// assert_eq!(conn.current(), None);
    /// ```
    pub fn respond_with_body(
        &mut self,
        id: u64,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), SendError> {
        self.respond_typed_with_body(id, status, headers, None, body)
    }

    /// [`respond_with_body`](Self::respond_with_body) with a Content-Type
    /// written when `headers` has none.
    pub(crate) fn respond_typed_with_body(
        &mut self,
        id: u64,
        status: StatusCode,
        headers: &HeaderMap,
        default_type: Option<&HeaderValue>,
        body: &[u8],
    ) -> Result<(), SendError> {
        // The commonest answer takes the short way when the request allows.
        if let Some(ct) = default_type {
            if status == StatusCode::OK && headers.is_empty() && self.respond_ok_typed(id, ct, body)
            {
                return Ok(());
            }
        }
        self.respond_whole(id, status, headers, default_type, body)
    }

    /// [`respond_typed_with_body`](Self::respond_typed_with_body) the
    /// general way: head, body and end.
    pub(crate) fn respond_whole(
        &mut self,
        id: u64,
        status: StatusCode,
        headers: &HeaderMap,
        default_type: Option<&HeaderValue>,
        body: &[u8],
    ) -> Result<(), SendError> {
        // (The head writes the body too, unless the response has none.)
        self.write_head(
            id,
            status,
            headers,
            default_type,
            Some(body.len() as u64),
            Some(body),
        )?;
        self.bytes_sent_body = body.len() as u64;
        // `write_head` just checked that `id` is the front request.
        self.finish_front();
        Ok(())
    }

    /// The commonest answer, a 200 with content type `ct`, no fields of its
    /// own and `body`, to request `id` when that is the front request on a
    /// keep-alive HTTP/1.1 connection with nothing else to attend to: the
    /// cached whole head and the body, then the next request is the front.
    /// False, having written nothing, whenever anything more is involved
    /// (the caller then takes the general way, which gives the same bytes).
    pub(crate) fn respond_ok_typed(&mut self, id: u64, ct: &HeaderValue, body: &[u8]) -> bool {
        let Some(p) = self.pending.front() else {
            return false;
        };
        if p.id != id
            || self.closed
            || self.close_after
            || p.framing.is_some()
            || p.error.is_some()
            || !p.keep_alive
            || p.is_head
            || p.version != Version::HTTP_11
            || (p.expect_continue && !p.continue_sent && !p.body_done)
        {
            return false;
        }
        self.reserve_head(body.len());
        let out = &mut self.out;
        let cached = self
            .std_lines
            .0
            .borrow_mut()
            .write_ok_with_body(out, ct, body);
        if cached != Cached::Whole {
            // (Only a content type too long to cache; nothing was written.)
            return false;
        }
        self.bytes_sent_body = 0;
        self.front_finished(true);
        true
    }

    /// Room in the output for a usual head and `body_len` body bytes: the
    /// pieces written next then copy without growing it.
    fn reserve_head(&mut self, body_len: usize) {
        self.out
            .reserve(STD_LINES_MAX + CACHED_CT_MAX + 64 + body_len);
    }

    /// [`respond`](Self::respond) with a Content-Type written when
    /// `headers` has none.
    pub(crate) fn respond_typed(
        &mut self,
        id: u64,
        status: StatusCode,
        headers: &HeaderMap,
        default_type: Option<&HeaderValue>,
        content_length: Option<u64>,
    ) -> Result<(), SendError> {
        self.write_head(id, status, headers, default_type, content_length, None)
            .map(|_| ())
    }

    /// The head of `respond`; returns the framing chosen for the body.
    fn write_head(
        &mut self,
        id: u64,
        status: StatusCode,
        headers: &HeaderMap,
        default_type: Option<&HeaderValue>,
        content_length: Option<u64>,
        body: Option<&[u8]>,
    ) -> Result<Framing, SendError> {
        let p = self.front_for(id)?;
        if p.framing.is_some() {
            return Err(SendError::HeadAlreadySent);
        }
        if status.is_informational() {
            return Err(SendError::HeadNotSent);
        }
        let no_body = status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let mut keep_alive = p.keep_alive;
        // A request whose body was never asked for after `Expect: 100-continue`
        // leaves the stream in an unknown state: close after the response.
        if p.expect_continue && !p.continue_sent && !p.body_done {
            keep_alive = false;
        }
        let framing = if no_body {
            Framing::Empty
        } else if let Some(n) = content_length {
            Framing::Length(n)
        } else if p.version == Version::HTTP_11 {
            Framing::Chunked
        } else {
            keep_alive = false;
            Framing::Close
        };
        if !keep_alive {
            p.keep_alive = false;
        }
        let version = p.version;
        let is_head = p.is_head;
        let effective = if is_head { Framing::Empty } else { framing };
        p.framing = Some(effective);
        self.reserve_head(body.map_or(0, <[u8]>::len));
        let out = &mut self.out;
        // The common answer: a 200 with its default type, no fields of its
        // own and a known length. Everything up to the length's digits is
        // one cached piece.
        let cached = match (default_type, framing) {
            (Some(ct), Framing::Length(len)) if status == StatusCode::OK && headers.is_empty() => {
                // Keep-alive HTTP/1.1 needs no connection line: the cached
                // head can run through the length and the empty line.
                let whole = (keep_alive && version == Version::HTTP_11).then_some(len);
                self.std_lines.0.borrow_mut().write_ok_typed(out, ct, whole)
            }
            _ => Cached::No,
        };
        if cached == Cached::No {
            self.write_head_fields(status, headers, default_type);
        }
        let out = &mut self.out;
        if cached != Cached::Whole {
            // The framing lines and the empty line, assembled on the stack
            // and copied at once. (A macro, not a closure: each literal is
            // then copied with its constant length, inline, rather than by
            // a call.)
            let mut tail = [0u8; 64];
            let mut n = 0;
            macro_rules! put {
                ($lit:expr) => {{
                    const LIT: &[u8] = $lit;
                    tail[n..n + LIT.len()].copy_from_slice(LIT);
                    n += LIT.len();
                }};
            }
            match framing {
                Framing::Length(len) => {
                    if cached == Cached::No {
                        put!(b"content-length: ");
                    }
                    n += write_decimal(&mut tail[n..n + 20], len);
                    put!(b"\r\n");
                }
                Framing::Chunked if !is_head => put!(b"transfer-encoding: chunked\r\n"),
                _ => {}
            }
            if !keep_alive {
                put!(b"connection: close\r\n");
            } else if version == Version::HTTP_10 {
                put!(b"connection: keep-alive\r\n");
            }
            put!(b"\r\n");
            out.extend_from_slice(&tail[..n]);
        }
        if let (Some(body), Framing::Length(_)) = (body, effective) {
            out.extend_from_slice(body);
        }
        self.bytes_sent_body = 0;
        if !keep_alive {
            self.close_after = true;
            // Nothing after this response will be answered: stop reading
            // new requests, but finish reading this request's body.
            if matches!(self.read, ReadState::Head) {
                self.read = ReadState::Stopped;
                self.inbuf.clear();
            }
        }
        Ok(effective)
    }

    /// The status line, the standard lines, the response's own fields and
    /// its default content type (when it names none).
    #[inline(never)]
    fn write_head_fields(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        default_type: Option<&HeaderValue>,
    ) {
        let out = &mut self.out;
        self.std_lines.0.borrow().write(out, status);
        for (name, value) in headers {
            if name == header::CONTENT_LENGTH
                || name == header::TRANSFER_ENCODING
                || name == header::CONNECTION
                || name == header::DATE
                || (name == header::SERVER && self.cfg.server_name.is_some())
            {
                continue;
            }
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if let Some(ct) = default_type {
            if headers.is_empty() || !headers.contains_key(header::CONTENT_TYPE) {
                out.extend_from_slice(b"content-type: ");
                out.extend_from_slice(ct.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Adds body bytes to the current response.
    pub fn send_data(&mut self, id: u64, data: &[u8]) -> Result<(), SendError> {
        let sent = self.bytes_sent_body;
        let p = self.front_for(id)?;
        let framing = p.framing.ok_or(SendError::HeadNotSent)?;
        match framing {
            Framing::Empty => {}
            Framing::Length(n) => {
                if sent + data.len() as u64 > n {
                    return Err(SendError::TooLong);
                }
                self.out.extend_from_slice(data);
            }
            Framing::Chunked => chunked::encode_chunk(&mut self.out, data),
            Framing::Close => self.out.extend_from_slice(data),
        }
        self.bytes_sent_body += data.len() as u64;
        Ok(())
    }

    /// True when the body of response `id` may go out unframed by another
    /// route (a `sendfile`): its head was written, it is delimited by
    /// `Content-Length` or by the close (not chunked), and none of the
    /// machine's output is still waiting to be taken, so nothing can be
    /// overtaken.
    pub fn raw_body_ready(&mut self, id: u64) -> bool {
        if self.has_output() {
            return false;
        }
        matches!(
            self.front_for(id).map(|p| p.framing),
            Ok(Some(Framing::Length(_) | Framing::Close))
        )
    }

    /// Counts `n` body bytes of response `id` that the caller sent itself
    /// after [`raw_body_ready`](Self::raw_body_ready) said it may: the same
    /// length check as [`send_data`](Self::send_data), without the bytes.
    pub fn note_raw_body_sent(&mut self, id: u64, n: u64) -> Result<(), SendError> {
        let sent = self.bytes_sent_body;
        let p = self.front_for(id)?;
        match p.framing.ok_or(SendError::HeadNotSent)? {
            Framing::Length(len) if sent + n > len => return Err(SendError::TooLong),
            Framing::Length(_) | Framing::Close => {}
            Framing::Empty | Framing::Chunked => return Err(SendError::HeadNotSent),
        }
        self.bytes_sent_body += n;
        Ok(())
    }

    /// Ends the current response; the next request's response may follow.
    pub fn finish(&mut self, id: u64) -> Result<(), SendError> {
        let p = self.front_for(id)?;
        p.framing.ok_or(SendError::HeadNotSent)?;
        self.finish_front();
        Ok(())
    }

    /// `finish` for the front request, whose head was written.
    fn finish_front(&mut self) {
        let sent = self.bytes_sent_body;
        let Some(p) = self.pending.front() else {
            return;
        };
        let Some(framing) = p.framing else {
            return;
        };
        let mut keep_alive = p.keep_alive;
        match framing {
            Framing::Chunked => chunked::encode_last(&mut self.out),
            Framing::Length(n) if sent != n => keep_alive = false,
            Framing::Close => keep_alive = false,
            _ => {}
        }
        self.front_finished(keep_alive);
    }

    /// The front request's response is complete: the next request becomes
    /// the front, or, when this response ends the connection (`keep_alive`
    /// false, or a close asked for with nothing left), the machine closes.
    #[inline]
    fn front_finished(&mut self, keep_alive: bool) {
        self.pending.pop_front();
        // A handler that answered without reading the whole body leaves the
        // rest to be read and dropped, so the stream stays in sync.
        if !keep_alive || (self.close_after && self.pending.is_empty()) {
            // This response ends the connection: later requests go unanswered.
            self.pending.clear();
            self.read = ReadState::Stopped;
            self.closed = true;
            return;
        }
        if self.front_needs_advance() {
            self.advance();
        }
    }

    /// True when `advance` has work for the current front: an error
    /// response to write, a 100 Continue to send, or (with nothing left)
    /// a close to note.
    fn front_needs_advance(&self) -> bool {
        match self.pending.front() {
            None => self.close_after,
            Some(f) => {
                (f.error.is_some() && f.framing.is_none())
                    || (f.expect_continue && !f.continue_sent)
            }
        }
    }

    /// True when request `id`'s response head was written.
    pub fn head_sent(&self, id: u64) -> bool {
        self.pending
            .iter()
            .find(|p| p.id == id)
            .is_some_and(|p| p.framing.is_some())
    }
}

/// Writes `n` in decimal at the start of `dst` (at least 20 bytes);
/// returns the number of digits (cheaper than `write!` on the hot path).
fn write_decimal(dst: &mut [u8], mut n: u64) -> usize {
    let digits = n.checked_ilog10().unwrap_or(0) as usize + 1;
    for d in dst.iter_mut().take(digits).rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    digits
}

/// For a plain origin-form target `raw[target]` (bytes of
/// [`PLAIN_TARGET`](crate::parse::PLAIN_TARGET) only, starting with `/`),
/// where its `?` is (its length without a query) and whether it holds a
/// `%`; `None` for any other target.
fn plain_origin_form(raw: &[u8], target: std::ops::Range<usize>) -> Option<(usize, bool)> {
    if raw.get(target.start) != Some(&b'/') {
        return None;
    }
    crate::parse::plain_target(raw, target.start, target.end)
}

/// The fields the machine itself reads, judged while the head is parsed
/// (nothing borrowed from it: the head's bytes leave the input afterwards).
#[derive(Default, Clone, Copy)]
struct FramingFields {
    content_length: Option<u64>,
    /// A Transfer-Encoding field was seen; the verdict on its value.
    transfer_encoding: Option<Result<(), (StatusCode, &'static str)>>,
    hosts: usize,
    conn_close: bool,
    conn_keep_alive: bool,
    /// The first Expect field: `Some(true)` for `100-continue`.
    expect: Option<bool>,
    /// The first problem seen, reported once the head is complete.
    error: Option<&'static str>,
}

impl FramingFields {
    fn see(&mut self, name: &[u8], value: &[u8]) {
        // Dispatch on length first: most fields are none of these.
        match name.len() {
            4 if token_is(name, b"host") => self.hosts += 1,
            // (Their first letters, `e`, `c` and `t` in either case, rule
            // out most other names of these lengths, as `Accept`,
            // `User-Agent` and `Sec-Fetch-Mode`, without a call.)
            6 | 10 | 14 | 17
                if name
                    .first()
                    .is_some_and(|&b| matches!(b | 0x20, b'e' | b'c' | b't')) =>
            {
                self.see_framing(name, value)
            }
            _ => {}
        }
    }

    /// Expect, Connection, Content-Length and Transfer-Encoding (by the
    /// length of their names).
    #[inline(never)]
    fn see_framing(&mut self, name: &[u8], value: &[u8]) {
        match name.len() {
            6 if self.expect.is_none() && token_is(name, b"expect") => {
                self.expect = Some(value.eq_ignore_ascii_case(b"100-continue"))
            }
            10 if token_is(name, b"connection") => {
                for t in value.split(|&b| b == b',') {
                    let t = t.trim_ascii();
                    self.conn_close |= t.eq_ignore_ascii_case(b"close");
                    self.conn_keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            14 if token_is(name, b"content-length") => {
                if self.content_length.is_some() {
                    self.fail("duplicate Content-Length");
                }
                match parse_content_length(value) {
                    Some(n) => self.content_length = Some(n),
                    None => self.fail("invalid Content-Length"),
                }
            }
            17 if token_is(name, b"transfer-encoding") => {
                if self.transfer_encoding.is_some() {
                    self.fail("duplicate Transfer-Encoding");
                }
                self.transfer_encoding = Some(check_transfer_encoding(value));
            }
            _ => {}
        }
    }

    fn fail(&mut self, why: &'static str) {
        self.error.get_or_insert(why);
    }
}

/// True when the token `name` is `lower` (lowercase letters and `-`) in any
/// case. Setting bit 5 lowercases a letter and leaves `-` as it is; no other
/// token byte becomes a letter or `-` that way, so comparing words is exact.
#[inline(always)]
fn token_is(name: &[u8], lower: &'static [u8]) -> bool {
    if name.len() != lower.len() {
        return false;
    }
    let word = |b: &[u8]| {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    };
    name.chunks(8)
        .zip(lower.chunks(8))
        .all(|(a, b)| word(a) | (0x2020_2020_2020_2020 & mask(a.len())) == word(b))
}

/// The low `n` bytes of a word set.
#[inline(always)]
fn mask(n: usize) -> u64 {
    if n >= 8 {
        u64::MAX
    } else {
        (1u64 << (n * 8)) - 1
    }
}

/// Checks a parsed head, whose bytes `d.raw` holds, and fills in its parts
/// from the parse and the framing fields judged during it (no header map is
/// built).
fn fill_head(
    d: &mut HeadData,
    raw: &[u8],
    parsed: &ParsedHead,
    framing: &FramingFields,
    id: u64,
    cfg: &ServerConfig,
) -> Result<(), (StatusCode, &'static str)> {
    let bad = |r| (StatusCode::BAD_REQUEST, r);
    let too_large = (
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "header block too large",
    );
    let offset = |i: usize| u32::try_from(i).map_err(|_| too_large);
    let method = match raw.get(parsed.method.clone()).unwrap_or_default() {
        // The common ones without a table look-up.
        b"GET" => Method::GET,
        b"POST" => Method::POST,
        m => Method::from_bytes(m).map_err(|_| bad("invalid method"))?,
    };
    let path = raw.get(parsed.target.clone()).unwrap_or_default();
    let target = (offset(parsed.target.start)?, offset(parsed.target.end)?);
    let plain = plain_origin_form(raw, parsed.target.clone());
    // (Only read for plain targets: the others have their `Uri`.)
    let query = target.0 + plain.map_or(path.len(), |(q, _)| q) as u32;
    let uri = if plain.is_some() {
        None
    } else {
        // (UTF-8 already: the parser checks.)
        let valid_form = path.starts_with(b"/")
            || (path == b"*" && method == Method::OPTIONS)
            || path.starts_with(b"http://")
            || path.starts_with(b"https://")
            || (method == Method::CONNECT && !path.is_empty());
        if !valid_form {
            return Err(bad("invalid request target"));
        }
        Some(Box::new(
            Uri::try_from(path).map_err(|_| bad("invalid request target"))?,
        ))
    };
    let version = match parsed.minor_version {
        0 => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let fields = offset(parsed.fields_start)?;
    if let Some(why) = framing.error {
        return Err(bad(why));
    }
    if framing.hosts > 1 {
        return Err(bad("more than one Host"));
    }
    if framing.hosts == 0 && version == Version::HTTP_11 {
        return Err(bad("missing Host"));
    }
    let content_length = match (framing.transfer_encoding, framing.content_length) {
        (Some(_), Some(_)) => return Err(bad("Content-Length with Transfer-Encoding")),
        (Some(_), None) if version == Version::HTTP_10 => {
            return Err(bad("Transfer-Encoding in HTTP/1.0"))
        }
        (Some(verdict), None) => {
            verdict?;
            None
        }
        (None, Some(n)) => Some(n),
        (None, None) => Some(0),
    };
    if content_length.is_some_and(|n| n > cfg.max_body) {
        return Err((StatusCode::PAYLOAD_TOO_LARGE, "body too large"));
    }
    let keep_alive = match version {
        Version::HTTP_11 => !framing.conn_close,
        _ => framing.conn_keep_alive && !framing.conn_close,
    };
    let expect_continue = match framing.expect {
        None => false,
        Some(true) => version == Version::HTTP_11 && content_length != Some(0),
        Some(false) => return Err((StatusCode::EXPECTATION_FAILED, "unsupported expectation")),
    };
    d.id = id;
    d.method = method;
    d.version = version;
    d.content_length = content_length;
    d.keep_alive = keep_alive;
    d.expect_continue = expect_continue;
    d.target = target;
    d.query = query;
    d.escaped = plain.is_none_or(|(_, pct)| pct);
    d.fields = fields;
    // (Replaced, not assigned: the old value is nearly always `None`, and
    // this way its drop is no call.)
    if let Some(old) = std::mem::replace(&mut d.uri, uri) {
        drop(old);
    }
    Ok(())
}

fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn check_transfer_encoding(te: &[u8]) -> Result<(), (StatusCode, &'static str)> {
    let codings: Vec<&[u8]> = te.split(|&b| b == b',').map(|c| c.trim_ascii()).collect();
    let bad = (StatusCode::BAD_REQUEST, "invalid Transfer-Encoding");
    if codings
        .iter()
        .any(|c| c.is_empty() || !c.iter().all(|&b| chunked::is_tchar(b)))
    {
        return Err(bad);
    }
    let chunked_count = codings
        .iter()
        .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
        .count();
    let last_is_chunked = codings
        .last()
        .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"));
    if !last_is_chunked || chunked_count != 1 {
        return Err(bad);
    }
    if codings.len() > 1 {
        return Err((StatusCode::NOT_IMPLEMENTED, "unsupported transfer coding"));
    }
    Ok(())
}

fn write_status_line(out: &mut Vec<u8>, status: StatusCode) {
    // The common ones in one piece.
    let line: &'static [u8] = match status.as_u16() {
        200 => OK_LINE,
        204 => b"HTTP/1.1 204 No Content\r\n",
        206 => b"HTTP/1.1 206 Partial Content\r\n",
        301 => b"HTTP/1.1 301 Moved Permanently\r\n",
        302 => b"HTTP/1.1 302 Found\r\n",
        304 => b"HTTP/1.1 304 Not Modified\r\n",
        404 => b"HTTP/1.1 404 Not Found\r\n",
        _ => b"",
    };
    if !line.is_empty() {
        out.extend_from_slice(line);
        return;
    }
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The status line of a 200, which starts the rendered standard lines.
const OK_LINE: &[u8] = b"HTTP/1.1 200 OK\r\n";
/// Room for the 200 status line and the rendered `date` and `server` lines
/// (with a server name of ordinary length).
const STD_LINES_MAX: usize = 100;

/// The rendered standard lines, shared by a server's connections.
#[derive(Debug, Clone)]
pub(crate) struct SharedLines(Rc<std::cell::RefCell<StdLines>>);

impl SharedLines {
    /// Renders `date` (an IMF-fixdate; anything else is ignored) when it
    /// is not the one rendered.
    pub(crate) fn set_date(&self, date: &str, cfg: &ServerConfig) {
        if let Ok(d) = <&[u8; 29]>::try_from(date.as_bytes()) {
            if self.0.borrow().date() != d {
                *self.0.borrow_mut() = StdLines::new(d, cfg);
            }
        }
    }

    pub(crate) fn new(cfg: &ServerConfig) -> SharedLines {
        SharedLines(Rc::new(std::cell::RefCell::new(StdLines::new(
            b"Thu, 01 Jan 1970 00:00:00 GMT",
            cfg,
        ))))
    }
}

/// `HTTP/1.1 200 OK`, the `date` line and the `server` line, rendered
/// (one per server, renewed when the date changes): a 200's head starts
/// with one copy. After them, `bytes` caches the `content-type` line of
/// the last default content type used with `content-length: ` after it,
/// so the common answer (a 200 with `Response::text`) is one copy, its
/// length digits and its body.
#[derive(Debug, Clone)]
struct StdLines {
    bytes: Vec<u8>,
    /// End of the standard lines in `bytes`.
    std_end: usize,
    /// The content type rendered after them, held so that its bytes
    /// cannot be freed and reused: the same address then means the same
    /// value, and a hit costs no comparison of bytes.
    ct: Option<HeaderValue>,
    /// The length whose digits and the empty line follow the content type
    /// lines, when they do: then `bytes` up to `head_end` is a whole
    /// keep-alive head.
    len: Option<u64>,
    /// Then what follows `head_end` in `bytes` is the last small body
    /// written whole after that head (nothing when there is none): a body
    /// answered again and again, as `Hello, World!` or `OK`, is then one
    /// copy with its head.
    head_end: usize,
}

/// How much of a head [`StdLines::write_ok_typed`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cached {
    /// Nothing: the content type is too long to cache.
    No,
    /// Through `content-length: `; the digits and the rest follow.
    UpToLength,
    /// The whole head, through its empty line.
    Whole,
}

/// Longest content type cached with the standard lines.
const CACHED_CT_MAX: usize = 128;
/// What comes before and after a cached content type.
const CT_PREFIX: &[u8] = b"content-type: ";
const LENGTH_PREFIX: &[u8] = b"\r\ncontent-length: ";

impl StdLines {
    fn new(date: &[u8; 29], cfg: &ServerConfig) -> StdLines {
        let mut bytes = Vec::with_capacity(STD_LINES_MAX + CACHED_CT_MAX + 64);
        bytes.extend_from_slice(OK_LINE);
        bytes.extend_from_slice(b"date: ");
        bytes.extend_from_slice(date);
        bytes.extend_from_slice(b"\r\n");
        if let Some(name) = &cfg.server_name {
            bytes.extend_from_slice(b"server: ");
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        let std_end = bytes.len();
        StdLines {
            bytes,
            std_end,
            ct: None,
            len: None,
            head_end: std_end,
        }
    }

    fn date(&self) -> &[u8; 29] {
        let d = OK_LINE.len() + 6;
        self.bytes
            .get(d..d + 29)
            .and_then(|b| b.try_into().ok())
            .unwrap_or(&[b' '; 29])
    }

    /// The status line for `status`, then the standard lines.
    fn write(&self, out: &mut Vec<u8>, status: StatusCode) {
        let from = if status == StatusCode::OK {
            0
        } else {
            write_status_line(out, status);
            OK_LINE.len()
        };
        out.extend_from_slice(&self.bytes[from..self.std_end]);
    }

    /// A 200's status and standard lines, `content-type: {ct}` and
    /// `content-length: `, in one copy (rendering `ct` into the cache
    /// first when it is not the cached one). With `whole`, the length's
    /// digits and the empty line too: the whole head of a keep-alive
    /// HTTP/1.1 answer, so a server answering the same kind of response
    /// again and again copies one cached piece per answer.
    fn write_ok_typed(
        &mut self,
        out: &mut Vec<u8>,
        ct: &HeaderValue,
        whole: Option<u64>,
    ) -> Cached {
        let same = self
            .ct
            .as_ref()
            .is_some_and(|held| same_bytes(held.as_bytes(), ct.as_bytes()));
        if !same {
            if ct.len() > CACHED_CT_MAX {
                return Cached::No;
            }
            self.bytes.truncate(self.std_end);
            self.bytes.extend_from_slice(CT_PREFIX);
            self.bytes.extend_from_slice(ct.as_bytes());
            self.bytes.extend_from_slice(LENGTH_PREFIX);
            self.ct = Some(ct.clone());
            self.len = None;
        }
        // Where `content-length: ` ends (the same content type as `ct`).
        let ct_end = self.std_end + CT_PREFIX.len() + ct.len() + LENGTH_PREFIX.len();
        let Some(len) = whole else {
            out.extend_from_slice(&self.bytes[..ct_end]);
            return Cached::UpToLength;
        };
        if self.len != Some(len) {
            self.bytes.truncate(ct_end);
            let mut digits = [0u8; 20];
            let n = write_decimal(&mut digits, len);
            self.bytes.extend_from_slice(&digits[..n]);
            self.bytes.extend_from_slice(b"\r\n\r\n");
            self.len = Some(len);
            self.head_end = self.bytes.len();
        }
        out.extend_from_slice(&self.bytes[..self.head_end]);
        Cached::Whole
    }

    /// [`write_ok_typed`](Self::write_ok_typed)'s whole head and `body`
    /// after it. A body of at most [`CACHED_BODY_MAX`] bytes is kept
    /// after the head, and when the next one has the same bytes the head
    /// and body are one copy. (Compared by content, which is a few
    /// word compares at this size: an address would need the body held,
    /// and a body made afresh for each answer would then be counted and
    /// released each time.)
    fn write_ok_with_body(&mut self, out: &mut Vec<u8>, ct: &HeaderValue, body: &[u8]) -> Cached {
        let len = body.len() as u64;
        // (`small_eq` compares lengths too: no body kept, or a longer one
        // not kept, never matches a body that has bytes.)
        if self.len == Some(len)
            && self
                .ct
                .as_ref()
                .is_some_and(|held| same_bytes(held.as_bytes(), ct.as_bytes()))
            && self
                .bytes
                .get(self.head_end..)
                .is_some_and(|kept| small_eq(kept, body))
        {
            out.extend_from_slice(&self.bytes);
            return Cached::Whole;
        }
        let cached = self.write_ok_typed(out, ct, Some(len));
        if cached == Cached::Whole {
            out.extend_from_slice(body);
            if body.len() <= CACHED_BODY_MAX {
                self.bytes.truncate(self.head_end);
                self.bytes.extend_from_slice(body);
            }
        }
        cached
    }
}

/// The largest body kept after the cached head.
const CACHED_BODY_MAX: usize = 32;

/// Whether two slices are the same bytes, by address first.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
}

/// `a == b`, in word compares rather than a call to `memcmp` up to
/// [`CACHED_BODY_MAX`] bytes: two overlapping words cover any length from
/// 8 to 16, four any length to 32.
fn small_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_ne_bytes(s[at..at + 8].try_into().unwrap_or([0; 8]));
    let half = |s: &[u8], at: usize| u32::from_ne_bytes(s[at..at + 4].try_into().unwrap_or([0; 4]));
    match n {
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        17..=32 => {
            word(a, 0) == word(b, 0)
                && word(a, 8) == word(b, 8)
                && word(a, n - 16) == word(b, n - 16)
                && word(a, n - 8) == word(b, n - 8)
        }
        _ => a == b,
    }
}

fn write_error_response(out: &mut Vec<u8>, status: StatusCode, std_lines: &StdLines) {
    let body = format!(
        "{} {}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("Error")
    );
    std_lines.write(out, status);
    let _ = write!(
        out,
        "content-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}",
        body.len(),
        body
    );
}

#[cfg(test)]
mod tests {
    use super::token_is;

    #[test]
    fn token_is_matches_any_case_and_nothing_else() {
        for (name, lower) in [
            (&b"Host"[..], &b"host"[..]),
            (b"HOST", b"host"),
            (b"Content-Length", b"content-length"),
            (b"TRANSFER-encoding", b"transfer-encoding"),
            (b"connectioN", b"connection"),
        ] {
            assert!(token_is(name, lower), "{name:?}");
        }
        // Every other token byte in every position: never a false match.
        let lower = b"transfer-encoding";
        for pos in 0..lower.len() {
            for b in 0..=255u8 {
                if !crate::parse::is_token(b) || b.to_ascii_lowercase() == lower[pos] {
                    continue;
                }
                let mut name = lower.to_vec();
                name[pos] = b;
                assert!(
                    !token_is(&name, lower),
                    "{:?}",
                    String::from_utf8_lossy(&name)
                );
            }
        }
        assert!(!token_is(b"hos", b"host"));
    }

    /// The shortest way (`respond_ok_typed`) writes exactly what the
    /// general one writes, and refuses (writing nothing) wherever the
    /// general one would add or decide something more.
    #[test]
    fn shortest_way_gives_the_general_ways_bytes_or_declines() {
        use super::{Event, ServerConn};
        use crate::response::{TEXT_HTML, TEXT_PLAIN};
        use crate::ServerConfig;
        use http::{HeaderMap, StatusCode};
        let heads: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
        ];
        let long = http::HeaderValue::from_bytes(&[b'x'; 200]).unwrap();
        for head in heads {
            for (ct, body) in [
                (&TEXT_PLAIN, &b"Hello"[..]),
                (&TEXT_HTML, b""),
                (&long, b"x"),
            ] {
                // Two answers in a row, so the second meets a warm cache.
                let mut general = ServerConn::new(ServerConfig::default());
                let mut short = ServerConn::new(ServerConfig::default());
                general.set_date("Sun, 06 Nov 1994 08:49:37 GMT");
                short.set_date("Sun, 06 Nov 1994 08:49:37 GMT");
                general.receive(head);
                short.receive(head);
                for _ in 0..2 {
                    let (Some(Event::Head(g)), Some(Event::Head(h))) =
                        (general.next_event(), short.next_event())
                    else {
                        break;
                    };
                    general
                        .respond_whole(g.id(), StatusCode::OK, &HeaderMap::new(), Some(ct), body)
                        .unwrap();
                    let took = short.respond_ok_typed(h.id(), ct, body);
                    if !took {
                        short
                            .respond_whole(
                                h.id(),
                                StatusCode::OK,
                                &HeaderMap::new(),
                                Some(ct),
                                body,
                            )
                            .unwrap();
                    }
                    let plain_keep_alive = head.starts_with(b"GET / HTTP/1.1")
                        && !head.windows(5).any(|w| w == b"close");
                    if plain_keep_alive && ct.len() < 100 {
                        assert!(took, "{:?}", String::from_utf8_lossy(head));
                    }
                    // (A POST may take either way: its body is read on after.)
                    if !plain_keep_alive && !head.starts_with(b"POST") {
                        assert!(!took, "{:?}", String::from_utf8_lossy(head));
                    }
                    assert_eq!(
                        String::from_utf8_lossy(&general.take_output()),
                        String::from_utf8_lossy(&short.take_output()),
                        "{:?}",
                        String::from_utf8_lossy(head)
                    );
                    assert_eq!(general.current(), short.current());
                    assert_eq!(general.should_close(), short.should_close());
                }
            }
        }
    }

    #[test]
    fn small_eq_tells_every_differing_byte() {
        use super::small_eq;
        for n in 0..=40usize {
            let a: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            assert!(small_eq(&a, &a.clone()), "{n}");
            for at in 0..n {
                let mut b = a.clone();
                b[at] ^= 0x20;
                assert!(!small_eq(&a, &b), "length {n}, byte {at}");
            }
            // Different lengths are never equal, even when one is a prefix.
            if n > 0 {
                assert!(!small_eq(&a, &a[..n - 1]), "{n}");
            }
        }
    }

    /// The body kept after the cached head: answers one after another
    /// with bodies that change content but not length, change length,
    /// repeat, and exceed what is kept, each giving the general way's bytes.
    #[test]
    fn a_kept_body_never_stands_for_another() {
        use super::{Event, ServerConn};
        use crate::response::{TEXT_HTML, TEXT_PLAIN};
        use crate::ServerConfig;
        use http::{HeaderMap, StatusCode};
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        for n in [0usize, 1, 3, 4, 7, 8, 13, 16, 17, 31, 32, 33, 40] {
            let base: Vec<u8> = (0..n).map(|i| b'a' + (i % 26) as u8).collect();
            bodies.push(base.clone());
            bodies.push(base.clone());
            for at in [0, n / 2, n.saturating_sub(1)] {
                if n > 0 {
                    let mut b = base.clone();
                    b[at] = b'Z';
                    bodies.push(b);
                }
            }
        }
        let mut general = ServerConn::new(ServerConfig::default());
        let mut short = ServerConn::new(ServerConfig::default());
        general.set_date("Sun, 06 Nov 1994 08:49:37 GMT");
        short.set_date("Sun, 06 Nov 1994 08:49:37 GMT");
        for (i, body) in bodies.iter().enumerate() {
            let ct = if i % 7 == 6 { &TEXT_HTML } else { &TEXT_PLAIN };
            general.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
            short.receive(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
            let (Some(Event::Head(g)), Some(Event::Head(h))) =
                (general.next_event(), short.next_event())
            else {
                panic!("no head for answer {i}");
            };
            general.take_end(g.id());
            short.take_end(h.id());
            general
                .respond_whole(g.id(), StatusCode::OK, &HeaderMap::new(), Some(ct), body)
                .unwrap();
            assert!(short.respond_ok_typed(h.id(), ct, body), "answer {i}");
            assert_eq!(
                String::from_utf8_lossy(&general.take_output()),
                String::from_utf8_lossy(&short.take_output()),
                "answer {i}: {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
