//! Responses: status, headers and a body that is either in memory or
//! produced piece by piece as the client takes it.

use bytes::Bytes;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::rc::Rc;

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE, LOCATION};
use http::{HeaderMap, StatusCode};
use torsion_core::Failure;

/// A handle a pending [`BodySource`] calls when it has more to give.
#[derive(Clone)]
pub struct Notify(pub(crate) Rc<dyn Fn()>);

impl Notify {
    /// Wakes the connection so it pulls from the source again.
    pub fn notify(&self) {
        (self.0)()
    }
    /// A notify that does nothing (for driving sources by hand).
    pub fn noop() -> Notify {
        Notify(Rc::new(|| {}))
    }
}

impl fmt::Debug for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Notify")
    }
}

/// One pull from a [`BodySource`].
#[derive(Debug)]
pub enum Chunk {
    /// More bytes.
    Data(Vec<u8>),
    /// Nothing now; the source calls the [`Notify`] it was given when it has more.
    Pending,
    /// The body is complete.
    End,
    /// The body cannot be completed; the connection is closed.
    Error(Failure),
}

/// A response body produced on demand. The connection pulls a chunk only
/// when the transport's write buffer has room (it registers itself as a
/// pull producer on the transport), so a slow client never makes the server
/// hold more than about one buffer of the body.
pub trait BodySource: 'static {
    /// The next piece, at most about `max` bytes.
    fn next_chunk(&mut self, max: usize, notify: &Notify) -> Chunk;

    /// When the next bytes are a region of a file — `(file, offset, len)` —
    /// the connection may hand them to the kernel (`sendfile`) instead of
    /// calling [`next_chunk`](Self::next_chunk), and then reports what
    /// went with [`file_region_sent`](Self::file_region_sent). The default:
    /// never.
    fn file_region(&self) -> Option<(&std::fs::File, u64, u64)> {
        None
    }

    /// `n` bytes of the region [`file_region`](Self::file_region) offered
    /// were sent.
    fn file_region_sent(&mut self, n: u64) {
        let _ = n;
    }
}

/// A response body.
pub enum Body {
    /// No body bytes.
    Empty,
    /// A body in memory (`Bytes::from_static` for constant text costs no
    /// allocation; a `Vec` or `String` converts without a copy).
    Bytes(Bytes),
    /// A body pulled from a source; `len` is its length when known
    /// (sent as `Content-Length`, otherwise the body is chunked).
    Stream {
        /// Total length, when known.
        len: Option<u64>,
        /// Where the bytes come from.
        source: Box<dyn BodySource>,
    },
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Body::Empty => f.write_str("Body::Empty"),
            Body::Bytes(b) => write!(f, "Body::Bytes({} bytes)", b.len()),
            Body::Stream { len, .. } => write!(f, "Body::Stream(len={len:?})"),
        }
    }
}

impl Body {
    /// The length when known.
    pub fn len(&self) -> Option<u64> {
        match self {
            Body::Empty => Some(0),
            Body::Bytes(b) => Some(b.len() as u64),
            Body::Stream { len, .. } => *len,
        }
    }

    /// True for a known-empty body.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// A body streamed from a request's (or a client response's) body, as
    /// it arrives; `len` is its length when known.
    pub fn from_request_body(body: crate::RequestBody, len: Option<u64>) -> Body {
        Body::Stream {
            len,
            source: Box::new(BodyStreamSource(body)),
        }
    }

    /// A streamed body fed through a [`BodySender`] (the handler writes as it goes).
    ///
    /// ```
    /// use torsion_http::{Body, Response};
    /// let (tx, body) = Body::channel();
    /// tx.write(b"part 1, ");
    /// tx.write(b"part 2");
    /// tx.finish();
    /// let resp = Response::new(http::StatusCode::OK).with_body(body);
    /// assert_eq!(resp.body.len(), None);
    /// ```
    pub fn channel() -> (BodySender, Body) {
        let shared = Rc::new(RefCell::new(ChannelState::default()));
        (
            BodySender {
                shared: shared.clone(),
            },
            Body::Stream {
                len: None,
                source: Box::new(ChannelSource { shared }),
            },
        )
    }
}

#[derive(Default)]
struct ChannelState {
    chunks: VecDeque<Vec<u8>>,
    buffered: usize,
    finished: bool,
    error: Option<Failure>,
    notify: Option<Notify>,
}

/// The writing end of [`Body::channel`].
#[derive(Clone)]
pub struct BodySender {
    shared: Rc<RefCell<ChannelState>>,
}

impl fmt::Debug for BodySender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BodySender({} bytes queued)", self.buffered())
    }
}

impl BodySender {
    fn wake(&self) {
        let n = self.shared.borrow_mut().notify.take();
        if let Some(n) = n {
            n.notify();
        }
    }
    /// Queues bytes for the client.
    pub fn write(&self, data: &[u8]) {
        {
            let mut s = self.shared.borrow_mut();
            if s.finished || data.is_empty() {
                return;
            }
            s.buffered += data.len();
            s.chunks.push_back(data.to_vec());
        }
        self.wake();
    }
    /// Ends the body.
    pub fn finish(&self) {
        self.shared.borrow_mut().finished = true;
        self.wake();
    }
    /// Breaks the body off; the connection is closed.
    pub fn abort(&self, why: Failure) {
        {
            let mut s = self.shared.borrow_mut();
            s.error = Some(why);
            s.finished = true;
        }
        self.wake();
    }
    /// Bytes written and not yet taken by the connection: a writer producing
    /// much data should wait while this is large.
    pub fn buffered(&self) -> usize {
        self.shared.borrow().buffered
    }
}

impl Drop for ChannelSource {
    fn drop(&mut self) {
        self.shared.borrow_mut().finished = true;
    }
}

struct ChannelSource {
    shared: Rc<RefCell<ChannelState>>,
}

impl BodySource for ChannelSource {
    fn next_chunk(&mut self, _max: usize, notify: &Notify) -> Chunk {
        let mut s = self.shared.borrow_mut();
        if let Some(c) = s.chunks.pop_front() {
            s.buffered -= c.len();
            return Chunk::Data(c);
        }
        if let Some(e) = s.error.take() {
            return Chunk::Error(e);
        }
        if s.finished {
            return Chunk::End;
        }
        s.notify = Some(notify.clone());
        Chunk::Pending
    }
}

struct BodyStreamSource(crate::RequestBody);

impl BodySource for BodyStreamSource {
    fn next_chunk(&mut self, _max: usize, notify: &Notify) -> Chunk {
        match self.0.poll_with(notify.0.clone()) {
            std::task::Poll::Ready(Ok(Some(d))) => Chunk::Data(d),
            std::task::Poll::Ready(Ok(None)) => Chunk::End,
            std::task::Poll::Ready(Err(f)) => Chunk::Error(f),
            std::task::Poll::Pending => Chunk::Pending,
        }
    }
}

/// UTF-8 text for [`Response::text`] and [`Response::html`]: made from a
/// `&'static str` without a copy, or from a `String`, `&String` or
/// `Cow<str>`.
#[derive(Debug, Clone)]
pub struct Text(Bytes);

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Self {
        Text(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text(Bytes::from(s))
    }
}

impl From<&String> for Text {
    fn from(s: &String) -> Self {
        Text(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<std::borrow::Cow<'static, str>> for Text {
    fn from(s: std::borrow::Cow<'static, str>) -> Self {
        match s {
            std::borrow::Cow::Borrowed(b) => b.into(),
            std::borrow::Cow::Owned(o) => o.into(),
        }
    }
}

/// The default content type of [`Response::text`].
pub static TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
/// The default content type of [`Response::html`].
pub static TEXT_HTML: HeaderValue = HeaderValue::from_static("text/html; charset=utf-8");

/// An HTTP response.
///
/// The server writes the framing fields itself (`Content-Length` or
/// `Transfer-Encoding`, `Connection`, `Date`, `Server`). The Content-Type
/// is `headers`' when it names one, otherwise `default_content_type`
/// (Twisted's `defaultContentType`): [`Response::text`] and
/// [`Response::html`] set only the default, so the common answer needs no
/// header map at all. [`Response::content_type`] tells which applies.
///
/// ```
/// use torsion_http::Response;
/// let r = Response::text("Hello, World!").header("x-demo", "1");
/// assert_eq!(r.status, http::StatusCode::OK);
/// assert_eq!(r.content_type().unwrap(), "text/plain; charset=utf-8");
/// assert!(r.headers.get("content-type").is_none());
/// let r = r.header("content-type", "text/markdown");
/// assert_eq!(r.content_type().unwrap(), "text/markdown");
/// ```
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: StatusCode,
    /// Header fields (framing headers are set by the server). A
    /// [`HeaderMap`] through `Deref`, built when the first field is added.
    pub headers: Headers,
    /// The body.
    pub body: Body,
    /// The Content-Type sent when `headers` has none (a static value, such
    /// as [`TEXT_PLAIN`]: a default is chosen by code, not per response).
    pub default_content_type: Option<&'static HeaderValue>,
}

/// A response's own header fields: a [`HeaderMap`] (through `Deref` and
/// `DerefMut`) that is not built until a field is added. The common
/// response has none, and then carries one null pointer rather than a map
/// to make, move and drop.
///
/// ```
/// use torsion_http::Response;
/// let mut r = Response::text("hi");
/// assert!(r.headers.is_empty());
/// r.headers.insert("x-demo", "1".parse().unwrap());
/// assert_eq!(r.headers.get("x-demo").unwrap(), "1");
/// let map: http::HeaderMap = r.headers.into_map();
/// assert_eq!(map.len(), 1);
/// ```
#[derive(Default)]
pub struct Headers(Option<Box<HeaderMap>>);

impl Headers {
    /// No fields.
    pub const fn new() -> Headers {
        Headers(None)
    }

    /// True once a map was built (a field was added, or a map given).
    pub(crate) fn is_built(&self) -> bool {
        self.0.is_some()
    }

    /// The fields as a map of their own.
    pub fn into_map(self) -> HeaderMap {
        match self.0 {
            Some(mut b) => std::mem::take(&mut *b),
            None => HeaderMap::new(),
        }
    }

    /// Gives the map (emptied) to the thread's spares, for the next
    /// response that adds a field.
    #[inline]
    pub(crate) fn recycle(self) {
        let Some(mut map) = self.0 else { return };
        if map.capacity() > SPARE_HEADERS_CAPACITY {
            return;
        }
        map.clear();
        let _ = SPARE_HEADERS.try_with(move |s| {
            let mut s = s.borrow_mut();
            if s.len() < SPARE_HEADERS_MAX {
                s.push(map);
            }
        });
    }
}

static EMPTY_HEADERS: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();

impl std::ops::Deref for Headers {
    type Target = HeaderMap;
    fn deref(&self) -> &HeaderMap {
        match &self.0 {
            Some(m) => m,
            None => EMPTY_HEADERS.get_or_init(HeaderMap::new),
        }
    }
}

impl std::ops::DerefMut for Headers {
    fn deref_mut(&mut self) -> &mut HeaderMap {
        self.0.get_or_insert_with(|| {
            SPARE_HEADERS
                .try_with(|s| s.borrow_mut().pop())
                .ok()
                .flatten()
                .unwrap_or_default()
        })
    }
}

impl From<HeaderMap> for Headers {
    fn from(map: HeaderMap) -> Headers {
        Headers(Some(Box::new(map)))
    }
}

impl Clone for Headers {
    fn clone(&self) -> Headers {
        match &self.0 {
            Some(m) => Headers::from((**m).clone()),
            None => Headers(None),
        }
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Headers) -> bool {
        **self == **other
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a HeaderName, &'a HeaderValue);
    type IntoIter = http::header::Iter<'a, HeaderValue>;
    fn into_iter(self) -> Self::IntoIter {
        (**self).iter()
    }
}

thread_local! {
    /// Boxed header maps of written responses, emptied, for the next
    /// response that adds a field: a fresh map allocates on its first insert.
    // (Boxes, not maps: `Headers` holds a box, and the box is reused too.)
    #[allow(clippy::vec_box)]
    static SPARE_HEADERS: RefCell<Vec<Box<HeaderMap>>> = const { RefCell::new(Vec::new()) };
}

/// Spare maps kept per thread.
const SPARE_HEADERS_MAX: usize = 16;
/// Larger maps are freed rather than kept.
const SPARE_HEADERS_CAPACITY: usize = 32;

impl Response {
    /// An empty response with `status`.
    pub fn new(status: StatusCode) -> Response {
        Response {
            status,
            headers: Headers::new(),
            body: Body::Empty,
            default_content_type: None,
        }
    }

    /// The Content-Type the response will carry: the one in `headers`,
    /// else the default.
    pub fn content_type(&self) -> Option<&HeaderValue> {
        self.headers.get(CONTENT_TYPE).or(self.default_content_type)
    }

    /// 200 with a UTF-8 text body: a `&'static str` (no copy) or a `String`.
    pub fn text(body: impl Into<Text>) -> Response {
        Response::typed(body.into().0, &TEXT_PLAIN)
    }

    /// 200 with an HTML body: a `&'static str` (no copy) or a `String`.
    pub fn html(body: impl Into<Text>) -> Response {
        Response::typed(body.into().0, &TEXT_HTML)
    }

    fn typed(body: Bytes, content_type: &'static HeaderValue) -> Response {
        Response {
            status: StatusCode::OK,
            headers: Headers::new(),
            body: Body::Bytes(body),
            default_content_type: Some(content_type),
        }
    }

    /// A plain-text error page for `status`.
    pub fn error(status: StatusCode) -> Response {
        let text = format!(
            "{} {}\n",
            status.as_str(),
            status.canonical_reason().unwrap_or("")
        );
        let mut r = Response::text(text);
        r.status = status;
        r
    }

    /// A redirect to `location` with `status` (301, 302, 303, 307, 308).
    pub fn redirect(status: StatusCode, location: &str) -> Response {
        let esc = crate::util::html_escape(location);
        let mut r = Response::html(format!(
            "<!DOCTYPE html><title>Moved</title><p>Moved to <a href=\"{esc}\">{esc}</a>.</p>\n"
        ));
        r.status = status;
        if let Ok(v) = HeaderValue::from_str(location) {
            r.headers.insert(LOCATION, v);
        }
        r
    }

    /// Sets the status.
    pub fn with_status(mut self, status: StatusCode) -> Response {
        self.status = status;
        self
    }

    /// Sets the body.
    pub fn with_body(mut self, body: Body) -> Response {
        self.body = body;
        self
    }

    /// Adds a header; invalid names or values are ignored with a warning.
    pub fn header<K, V>(mut self, name: K, value: V) -> Response
    where
        K: TryInto<HeaderName>,
        V: TryInto<HeaderValue>,
    {
        match (name.try_into(), value.try_into()) {
            (Ok(n), Ok(v)) => {
                self.headers.append(n, v);
            }
            _ => tracing::warn!("invalid response header ignored"),
        }
        self
    }
}

impl From<&'static str> for Response {
    fn from(s: &'static str) -> Self {
        Response::text(s)
    }
}

impl From<String> for Response {
    fn from(s: String) -> Self {
        Response::text(s)
    }
}

impl From<StatusCode> for Response {
    fn from(s: StatusCode) -> Self {
        Response::error(s)
    }
}
