//! The request a handler receives, with its streaming body.

use std::cell::{OnceCell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use http::{HeaderMap, Method, Uri, Version};
use torsion_core::{Address, Deferred, Failure, Reactor};

use crate::h1::RequestHead;

/// The request body ended early: the connection broke or the input was malformed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("request body incomplete: {0}")]
pub struct BodyError(pub String);

/// A body larger than the limit the reader gave.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("request body larger than {0} bytes")]
pub struct BodyTooLarge(pub usize);

#[derive(Default)]
pub(crate) struct BodyShared {
    chunks: VecDeque<Vec<u8>>,
    pub(crate) buffered: usize,
    done: bool,
    error: Option<String>,
    waker: Option<Waker>,
    /// A non-async reader waiting for more (see `RequestBody::poll_with`).
    listener: Option<Rc<dyn Fn()>>,
    /// Called (outside any borrow) when the reader took bytes: the
    /// connection may resume reading from the peer.
    on_consume: Option<Rc<dyn Fn()>>,
    /// The reader is gone: drop what arrives.
    pub(crate) discard: bool,
}

pub(crate) type SharedBody = Rc<RefCell<BodyShared>>;

pub(crate) fn new_body(done: bool, on_consume: Option<Rc<dyn Fn()>>) -> SharedBody {
    Rc::new(RefCell::new(BodyShared {
        done,
        on_consume,
        ..BodyShared::default()
    }))
}

pub(crate) fn push_body(b: &SharedBody, data: Vec<u8>) {
    let (waker, listener) = {
        let mut s = b.borrow_mut();
        if s.discard || data.is_empty() {
            return;
        }
        s.buffered += data.len();
        s.chunks.push_back(data);
        (s.waker.take(), s.listener.take())
    };
    if let Some(w) = waker {
        w.wake();
    }
    if let Some(l) = listener {
        l();
    }
}

pub(crate) fn discard_body(b: &SharedBody) {
    let mut s = b.borrow_mut();
    s.discard = true;
    s.chunks.clear();
    s.buffered = 0;
}

pub(crate) fn end_body(b: &SharedBody, error: Option<String>) {
    let (waker, listener) = {
        let mut s = b.borrow_mut();
        if s.done {
            return;
        }
        s.done = true;
        s.error = error;
        (s.waker.take(), s.listener.take())
    };
    if let Some(w) = waker {
        w.wake();
    }
    if let Some(l) = listener {
        l();
    }
}

/// The request body as a stream of chunks. Reading it is what lets the
/// connection read more from the peer: at most
/// [`crate::ServerConfig::body_buffer`] bytes wait here unread.
///
/// ```no_run
/// # async fn f(req: torsion_http::Request) -> Result<(), torsion_core::Failure> {
/// let mut body = req.into_body();
/// let mut total = 0;
/// while let Some(chunk) = body.chunk().await? {
///     total += chunk.len();
/// }
/// # Ok(()) }
/// ```
pub struct RequestBody {
    shared: SharedBody,
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shared.borrow();
        f.debug_struct("RequestBody")
            .field("buffered", &s.buffered)
            .field("done", &s.done)
            .finish()
    }
}

impl RequestBody {
    pub(crate) fn new(shared: SharedBody) -> Self {
        RequestBody { shared }
    }

    /// An empty, complete body.
    pub fn empty() -> Self {
        thread_local! {
            // Shared by every body-less request: reading it changes nothing.
            static EMPTY: SharedBody = new_body(true, None);
        }
        RequestBody::new(EMPTY.with(Rc::clone))
    }

    /// A complete body holding `data`.
    pub fn from_bytes(data: Vec<u8>) -> Self {
        let b = new_body(false, None);
        push_body(&b, data);
        end_body(&b, None);
        RequestBody::new(b)
    }

    /// The next chunk, `Ok(None)` at the end, or an error when the body broke off.
    pub fn chunk(&mut self) -> ChunkFuture<'_> {
        ChunkFuture { body: self }
    }

    fn poll_chunk(&self, cx: &mut Context<'_>) -> Poll<Result<Option<Vec<u8>>, Failure>> {
        self.poll_inner(|s| s.waker = Some(cx.waker().clone()))
    }

    /// Like [`RequestBody::chunk`] without async: `Pending` registers
    /// `listener`, called once when more arrives (used to stream a body
    /// straight into a response, see [`crate::Body::from_request_body`]).
    pub fn poll_with(&self, listener: Rc<dyn Fn()>) -> Poll<Result<Option<Vec<u8>>, Failure>> {
        self.poll_inner(|s| s.listener = Some(listener))
    }

    fn poll_inner(
        &self,
        wait: impl FnOnce(&mut BodyShared),
    ) -> Poll<Result<Option<Vec<u8>>, Failure>> {
        let (r, notify) = {
            let mut s = self.shared.borrow_mut();
            if let Some(c) = s.chunks.pop_front() {
                s.buffered -= c.len();
                (Poll::Ready(Ok(Some(c))), s.on_consume.clone())
            } else if s.done {
                match &s.error {
                    Some(e) => (Poll::Ready(Err(Failure::new(BodyError(e.clone())))), None),
                    None => (Poll::Ready(Ok(None)), None),
                }
            } else {
                wait(&mut s);
                (Poll::Pending, None)
            }
        };
        if let Some(n) = notify {
            n();
        }
        r
    }

    /// Reads the whole body, failing with [`BodyTooLarge`] past `limit` bytes.
    pub async fn bytes(mut self, limit: usize) -> Result<Vec<u8>, Failure> {
        let mut all = Vec::new();
        while let Some(c) = self.chunk().await? {
            if all.len() + c.len() > limit {
                return Err(Failure::new(BodyTooLarge(limit)));
            }
            all.extend_from_slice(&c);
        }
        Ok(all)
    }

    /// Reads the whole body on `reactor` and returns it through a Deferred.
    pub fn read_all(self, reactor: &Reactor, limit: usize) -> Deferred<Vec<u8>> {
        Deferred::from_future(reactor, self.bytes(limit))
    }

    /// Bytes received and waiting here unread (bounded by the server's `body_buffer` plus one read).
    pub fn buffered(&self) -> usize {
        self.shared.borrow().buffered
    }

    /// True when every byte was received (some may still be unread here).
    pub fn is_complete(&self) -> bool {
        self.shared.borrow().done
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let notify = {
            let mut s = self.shared.borrow_mut();
            s.discard = true;
            s.chunks.clear();
            s.buffered = 0;
            s.on_consume.clone()
        };
        if let Some(n) = notify {
            n();
        }
    }
}

/// The future of [`RequestBody::chunk`].
pub struct ChunkFuture<'a> {
    body: &'a mut RequestBody,
}

impl Future for ChunkFuture<'_> {
    type Output = Result<Option<Vec<u8>>, Failure>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.body.poll_chunk(cx)
    }
}

/// An HTTP request as handlers see it.
///
/// The head is kept as it arrived and read on demand: [`Request::header`]
/// looks a field up in the received bytes, and the [`HeaderMap`] of
/// [`Request::headers`] and the [`Uri`] of [`Request::uri`] are built the
/// first time someone asks for them. A handler that needs neither costs no
/// map and no allocation for them.
///
/// The resource tree consumes the path segment by segment:
/// [`prepath`](Request::prepath) holds the segments already matched,
/// [`postpath`](Request::postpath) those still to go (Twisted's names).
/// The segments too are made on first use: a handler that never asks for
/// them costs no string per segment.
///
/// ```
/// use torsion_http::Request;
/// let mut req = Request::new(http::Method::GET, "/docs/a%20b?page=2".parse().unwrap());
/// assert_eq!(req.path(), "/docs/a%20b");
/// assert_eq!(req.query(), Some("page=2"));
/// assert_eq!(req.postpath(), ["docs", "a b"]);
/// req.headers_mut().insert("accept", "text/html".parse().unwrap());
/// assert_eq!(req.header("Accept"), Some("text/html"));
/// ```
pub struct Request {
    /// How many path segments the resource tree has consumed.
    consumed: usize,
    head: RequestHead,
    /// What is built from the head on first use (or given, for requests
    /// built by hand): one box for both, so a request that needs neither
    /// has one empty cell to drop.
    // (`ManuallyDrop`, emptied in `Drop`: the empty cell most requests
    // end with then costs no call to drop.)
    lazy: std::mem::ManuallyDrop<OnceCell<Box<Lazy>>>,
    body: Option<RequestBody>,
    origin: Rc<dyn ConnInfo>,
}

/// Where a request came from: what a server's connection tells its
/// requests (shared by all of them: one count per request, not a copy of
/// the address and the reactor), or a hand-built request's own parts.
pub(crate) trait ConnInfo {
    fn peer(&self) -> &Address;
    fn reactor(&self) -> Option<&Reactor>;
}

/// The origin of a request built by hand.
struct Own(Address, Option<Reactor>);

impl ConnInfo for Own {
    fn peer(&self) -> &Address {
        &self.0
    }
    fn reactor(&self) -> Option<&Reactor> {
        self.1.as_ref()
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Some(lazy) = self.lazy.take() {
            drop(lazy);
        }
    }
}

/// The parts of a request built on first use.
#[derive(Default)]
struct Lazy {
    uri: OnceCell<Uri>,
    headers: OnceCell<HeaderMap>,
    /// The path's segments, percent-decoded.
    segments: OnceCell<Vec<String>>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("method", self.method())
            .field("target", &self.target())
            .field("version", &self.version())
            .field("headers", self.headers())
            .field("prepath", &self.prepath())
            .field("postpath", &self.postpath())
            .field("peer", self.peer())
            .finish()
    }
}

impl Request {
    /// A request built by hand (tests, internal redirects).
    ///
    /// ```
    /// use torsion_http::Request;
    /// let req = Request::new(http::Method::GET, "/a/b%20c".parse().unwrap());
    /// assert_eq!(req.postpath(), ["a", "b c"]);
    /// ```
    pub fn new(method: Method, uri: Uri) -> Request {
        Request {
            consumed: 0,
            head: RequestHead::built(method, Version::HTTP_11, uri),
            lazy: std::mem::ManuallyDrop::new(OnceCell::new()),
            body: Some(RequestBody::empty()),
            origin: Rc::new(Own(Address::Memory("test".into()), None)),
        }
    }

    pub(crate) fn from_head(
        head: RequestHead,
        body: Option<RequestBody>,
        conn: Rc<dyn ConnInfo>,
    ) -> Request {
        Request {
            consumed: 0,
            head,
            lazy: std::mem::ManuallyDrop::new(OnceCell::new()),
            body,
            origin: conn,
        }
    }

    /// The method.
    pub fn method(&self) -> &Method {
        self.head.method()
    }

    /// The protocol version.
    pub fn version(&self) -> Version {
        self.head.version()
    }

    /// The request target exactly as the client sent it.
    pub fn target(&self) -> &str {
        self.head.target()
    }

    fn lazy(&self) -> &Lazy {
        self.lazy.get_or_init(Box::default)
    }

    fn built_headers(&self) -> Option<&HeaderMap> {
        self.lazy.get().and_then(|l| l.headers.get())
    }

    /// The target as a [`Uri`] (parsed on first use).
    pub fn uri(&self) -> &Uri {
        self.lazy().uri.get_or_init(|| self.head.uri())
    }

    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.head.path()
    }

    /// The query part of the target, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.head.query()
    }

    /// The header fields (the map is built on first use).
    pub fn headers(&self) -> &HeaderMap {
        self.lazy().headers.get_or_init(|| self.head.headers())
    }

    /// The header fields, to change them (builds the map if needed).
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        let _ = self.headers();
        let lazy = self.lazy.get_mut().expect("made by headers() above");
        lazy.headers.get_mut().expect("made by headers() above")
    }

    /// The first value of header `name` (any case) as text, if present and
    /// valid UTF-8. Reads the received head directly unless the map was built.
    pub fn header(&self, name: impl AsRef<str>) -> Option<&str> {
        let name = name.as_ref();
        match self.built_headers() {
            Some(map) => map.get(name).and_then(|v| v.to_str().ok()),
            None => self
                .head
                .header(name)
                .and_then(|v| std::str::from_utf8(v).ok()),
        }
    }

    /// The host the client asked for (`Host` header without the port, lowercased).
    pub fn host(&self) -> Option<String> {
        let h = self
            .header(http::header::HOST)
            .map(str::to_string)
            .or_else(|| self.uri().host().map(str::to_string))?;
        let h = if h.starts_with('[') {
            h.split_inclusive(']').next().unwrap_or(&h).to_string()
        } else {
            h.rsplit_once(':').map(|(a, _)| a.to_string()).unwrap_or(h)
        };
        Some(h.to_ascii_lowercase())
    }

    /// The peer's address.
    pub fn peer(&self) -> &Address {
        self.origin.peer()
    }

    /// Sets the peer address (for requests built by hand).
    pub fn set_peer(&mut self, peer: Address) {
        let reactor = self.reactor().cloned();
        self.origin = Rc::new(Own(peer, reactor));
    }

    /// The reactor serving the request (`None` for requests built by hand).
    pub fn reactor(&self) -> Option<&Reactor> {
        self.origin.reactor()
    }

    /// Takes the body stream (an empty body if it was taken already).
    pub fn take_body(&mut self) -> RequestBody {
        self.body.take().unwrap_or_else(RequestBody::empty)
    }

    /// Consumes the request for its body.
    pub fn into_body(mut self) -> RequestBody {
        self.take_body()
    }

    /// Replaces the body (requests built by hand).
    pub fn set_body(&mut self, body: RequestBody) {
        self.body = Some(body);
    }

    /// The path's segments, percent-decoded (made on first use; none when
    /// a segment does not decode to UTF-8, which a server answers with 400
    /// before any handler sees the request).
    fn segments(&self) -> &[String] {
        self.lazy()
            .segments
            .get_or_init(|| split_path(self.head.path_bytes()).unwrap_or_default())
    }

    /// The path segments the resource tree has consumed so far,
    /// percent-decoded (Twisted's `prepath`).
    ///
    /// ```
    /// use torsion_http::Request;
    /// let mut req = Request::new(http::Method::GET, "/a/b/c".parse().unwrap());
    /// assert!(req.consume_segment());
    /// assert_eq!(req.prepath(), ["a"]);
    /// assert_eq!(req.postpath(), ["b", "c"]);
    /// ```
    pub fn prepath(&self) -> &[String] {
        let s = self.segments();
        &s[..self.consumed.min(s.len())]
    }

    /// The path segments still to consume, percent-decoded (Twisted's
    /// `postpath`). A path ending in `/` ends in an empty segment.
    pub fn postpath(&self) -> &[String] {
        let s = self.segments();
        &s[self.consumed.min(s.len())..]
    }

    /// Moves the first segment of [`postpath`](Self::postpath) to the end
    /// of [`prepath`](Self::prepath), as the resource tree does for each
    /// child it looks up; false when none is left.
    pub fn consume_segment(&mut self) -> bool {
        if self.postpath().is_empty() {
            return false;
        }
        self.consumed += 1;
        true
    }

    /// The path up to what was consumed, with a trailing `/` (for relative links).
    pub fn prepath_url(&self) -> String {
        let mut s = String::from("/");
        for p in self.prepath() {
            s.push_str(&crate::util::percent_encode_segment(p));
            s.push('/');
        }
        s
    }
}

/// Whether every segment of `path` decodes to UTF-8 (what
/// [`split_path`] needs), without making the segments when it can: a path
/// with no `%` decodes to itself.
pub(crate) fn path_is_valid(path: &[u8]) -> bool {
    // (One short loop for the usual ASCII path without escapes: no calls.)
    if path.iter().all(|&b| b != b'%' && b.is_ascii()) {
        return true;
    }
    split_path(path).is_some()
}

/// Splits a path into percent-decoded segments; `None` if a segment is not UTF-8.
pub(crate) fn split_path(path: &[u8]) -> Option<Vec<String>> {
    let path = path.strip_prefix(b"/").unwrap_or(path);
    if path.is_empty() {
        return Some(Vec::new());
    }
    path.split(|&b| b == b'/')
        .map(|seg| String::from_utf8(crate::util::percent_decode(seg)).ok())
        .collect()
}
