//! Handler styles over one core: Twisted-style resource trees and
//! `async fn(Request) -> Result<Response, Failure>` handlers, mixable in one [`Site`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use http::header::{HeaderName, HeaderValue, ALLOW};
use http::{HeaderMap, Method, StatusCode};
use torsion_core::{Deferred, Failure};

use crate::request::Request;
use crate::response::Response;

/// What a handler returns: a response now, or a Deferred of one.
pub enum Reply {
    /// The response is ready.
    Now(Response),
    /// The response comes later.
    Later(Deferred<Response>),
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Now(r) => write!(f, "Reply::Now({})", r.status),
            Reply::Later(_) => f.write_str("Reply::Later"),
        }
    }
}

impl From<Response> for Reply {
    fn from(r: Response) -> Self {
        Reply::Now(r)
    }
}

impl From<Deferred<Response>> for Reply {
    fn from(d: Deferred<Response>) -> Self {
        Reply::Later(d)
    }
}

impl Reply {
    /// Applies `f` to the response, now or when it arrives.
    pub fn map(self, f: impl FnOnce(Response) -> Response + 'static) -> Reply {
        match self {
            Reply::Now(r) => Reply::Now(f(r)),
            Reply::Later(d) => Reply::Later(d.add_callback(f)),
        }
    }
}

/// Anything that answers requests. A panic inside `handle` (or inside the
/// future of an async handler) becomes a 500 for that request only.
pub trait Handler: 'static {
    /// Answers one request.
    fn handle(&self, req: Request) -> Reply;
}

/// A handler (and leaf resource) made from an async function; see [`handler_fn`].
pub struct FnHandler<F>(F);

/// What an async handler may return: a [`Response`], or a
/// `Result<Response, Failure>` (an error becomes a 500).
pub trait IntoResponseResult {
    /// The response or the failure.
    fn into_response_result(self) -> Result<Response, Failure>;
}

impl IntoResponseResult for Response {
    fn into_response_result(self) -> Result<Response, Failure> {
        Ok(self)
    }
}

impl IntoResponseResult for Result<Response, Failure> {
    fn into_response_result(self) -> Result<Response, Failure> {
        self
    }
}

/// Wraps `async fn(Request) -> Response` (or `-> Result<Response, Failure>`)
/// as a handler and a leaf resource.
///
/// ```
/// use torsion_http::{handler_fn, Request, Response};
/// let hello = handler_fn(|req: Request| async move {
///     Response::text(format!("you asked for {}", req.path()))
/// });
/// let fallible = handler_fn(|req: Request| async move {
///     let body = req.into_body().bytes(1 << 20).await?;
///     Ok(Response::text(format!("{} bytes", body.len())))
/// });
/// ```
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(Request) -> Fut + 'static,
    Fut: Future + 'static,
    Fut::Output: IntoResponseResult,
{
    FnHandler(f)
}

impl<F, Fut> Handler for FnHandler<F>
where
    F: Fn(Request) -> Fut + 'static,
    Fut: Future + 'static,
    Fut::Output: IntoResponseResult,
{
    fn handle(&self, req: Request) -> Reply {
        let Some(reactor) = req.reactor().cloned() else {
            tracing::error!("async handler called without a reactor");
            return Reply::Now(Response::error(StatusCode::INTERNAL_SERVER_ERROR));
        };
        let fut = CatchUnwind(Box::pin((self.0)(req)));
        Reply::Later(Deferred::from_future(&reactor, fut))
    }
}

impl<F, Fut> Resource for FnHandler<F>
where
    F: Fn(Request) -> Fut + 'static,
    Fut: Future + 'static,
    Fut::Output: IntoResponseResult,
{
    fn is_leaf(&self) -> bool {
        true
    }
    fn render(&self, req: Request) -> Reply {
        self.handle(req)
    }
}

/// Turns a panic while polling into a failed output.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F> Future for CatchUnwind<F>
where
    F: Future,
    F::Output: IntoResponseResult,
{
    type Output = Result<Response, Failure>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || fut.poll(cx))) {
            Ok(Poll::Ready(r)) => Poll::Ready(r.into_response_result()),
            Ok(Poll::Pending) => Poll::Pending,
            Err(e) => Poll::Ready(Err(Failure::from_panic(e))),
        }
    }
}

/// A node of a resource tree (Twisted's `IResource`).
///
/// The [`Site`] walks the request path segment by segment with
/// [`Resource::get_child`] until it reaches a leaf or the path ends, then
/// calls [`Resource::render`], which dispatches on the method to
/// `render_get`, `render_post`, ... (405 by default).
///
/// ```
/// use std::rc::Rc;
/// use torsion_http::{Reply, Request, Resource, Response, Tree};
/// struct Hello;
/// impl Resource for Hello {
///     fn is_leaf(&self) -> bool { true }
///     fn render_get(&self, _req: Request) -> Reply { Response::text("hello").into() }
/// }
/// let root = Tree::new();
/// root.put_child("hello", Rc::new(Hello));
/// ```
pub trait Resource: 'static {
    /// A leaf renders whatever path remains (its `postpath`).
    fn is_leaf(&self) -> bool {
        false
    }
    /// The child named `name` (one percent-decoded path segment).
    fn get_child(&self, name: &str, req: &Request) -> Option<Rc<dyn Resource>> {
        let _ = (name, req);
        None
    }
    /// Adds a child; resources without children ignore it and return false.
    fn put_child(&self, name: &str, child: Rc<dyn Resource>) -> bool {
        let _ = (name, child);
        false
    }
    /// Answers the request; dispatches on the method by default.
    fn render(&self, req: Request) -> Reply {
        match *req.method() {
            Method::GET => self.render_get(req),
            Method::HEAD => self.render_head(req),
            Method::POST => self.render_post(req),
            Method::PUT => self.render_put(req),
            Method::DELETE => self.render_delete(req),
            _ => self.method_not_allowed(req),
        }
    }
    /// GET.
    fn render_get(&self, req: Request) -> Reply {
        self.method_not_allowed(req)
    }
    /// HEAD: GET without the body (the server drops the body bytes).
    fn render_head(&self, req: Request) -> Reply {
        self.render_get(req)
    }
    /// POST.
    fn render_post(&self, req: Request) -> Reply {
        self.method_not_allowed(req)
    }
    /// PUT.
    fn render_put(&self, req: Request) -> Reply {
        self.method_not_allowed(req)
    }
    /// DELETE.
    fn render_delete(&self, req: Request) -> Reply {
        self.method_not_allowed(req)
    }
    /// Methods listed in the `Allow` header of a 405.
    fn allowed_methods(&self) -> &'static str {
        "GET, HEAD"
    }
    /// The 405 response.
    fn method_not_allowed(&self, _req: Request) -> Reply {
        Response::error(StatusCode::METHOD_NOT_ALLOWED)
            .header(ALLOW, self.allowed_methods())
            .into()
    }
}

/// A resource with named children and an optional resource for its own path.
///
/// ```
/// use std::rc::Rc;
/// use torsion_http::{handler_fn, Response, Tree, Resource};
/// let api = Tree::new();
/// api.put_child("time", Rc::new(handler_fn(|_| async { Ok(Response::text("now")) })));
/// let root = Tree::new();
/// root.put_child("api", Rc::new(api));
/// ```
#[derive(Default)]
pub struct Tree {
    children: RefCell<HashMap<String, Rc<dyn Resource>>>,
    index: RefCell<Option<Rc<dyn Resource>>>,
}

impl Tree {
    /// An empty tree (404 for its own path until an index is set).
    pub fn new() -> Tree {
        Tree::default()
    }

    /// Sets what answers the tree's own path.
    pub fn set_index(&self, index: Rc<dyn Resource>) {
        *self.index.borrow_mut() = Some(index);
    }
}

impl Resource for Tree {
    fn get_child(&self, name: &str, _req: &Request) -> Option<Rc<dyn Resource>> {
        self.children.borrow().get(name).cloned()
    }
    fn put_child(&self, name: &str, child: Rc<dyn Resource>) -> bool {
        self.children.borrow_mut().insert(name.to_string(), child);
        true
    }
    fn render(&self, req: Request) -> Reply {
        let index = self.index.borrow().clone();
        match index {
            Some(i) => i.render(req),
            None => Response::error(StatusCode::NOT_FOUND).into(),
        }
    }
}

/// A leaf that redirects every request.
///
/// ```
/// use torsion_http::Redirect;
/// let r = Redirect::new("https://example.org/", http::StatusCode::MOVED_PERMANENTLY);
/// ```
#[derive(Debug, Clone)]
pub struct Redirect {
    location: String,
    status: StatusCode,
}

impl Redirect {
    /// Redirects to `location` with `status`.
    pub fn new(location: impl Into<String>, status: StatusCode) -> Redirect {
        Redirect {
            location: location.into(),
            status,
        }
    }
}

impl Resource for Redirect {
    fn is_leaf(&self) -> bool {
        true
    }
    fn render(&self, _req: Request) -> Reply {
        Response::redirect(self.status, &self.location).into()
    }
}

/// The root of a web site: resolves the resource for a request (by `Host`
/// for virtual hosts, then path segment by segment) and renders it.
///
/// ```
/// use std::rc::Rc;
/// use torsion_http::{handler_fn, Response, Site, Tree, Resource};
/// let root = Tree::new();
/// root.put_child("hi", Rc::new(handler_fn(|_| async { Ok(Response::text("hi")) })));
/// let site = Site::new(Rc::new(root));
/// let other = Tree::new();
/// site.add_vhost("other.example", Rc::new(other));
/// site.add_header("x-frame-options", "DENY").unwrap();
/// ```
pub struct Site {
    root: Rc<dyn Resource>,
    vhosts: RefCell<HashMap<String, Rc<dyn Resource>>>,
    headers: RefCell<HeaderMap>,
}

/// A header given to [`Site::add_header`] is not valid.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid header {0:?}")]
pub struct InvalidHeader(pub String);

impl Site {
    /// A site serving `root` for every host.
    pub fn new(root: Rc<dyn Resource>) -> Site {
        Site {
            root,
            vhosts: RefCell::new(HashMap::new()),
            headers: RefCell::new(HeaderMap::new()),
        }
    }

    /// Serves `resource` for requests whose `Host` is `host` (case-insensitive, port ignored).
    pub fn add_vhost(&self, host: &str, resource: Rc<dyn Resource>) {
        self.vhosts
            .borrow_mut()
            .insert(host.to_ascii_lowercase(), resource);
    }

    /// Adds a header to every response.
    pub fn add_header(&self, name: &str, value: &str) -> Result<(), InvalidHeader> {
        let n =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| InvalidHeader(name.to_string()))?;
        let v = HeaderValue::from_str(value).map_err(|_| InvalidHeader(value.to_string()))?;
        self.headers.borrow_mut().append(n, v);
        Ok(())
    }

    /// Finds the resource for `req`, moving consumed segments to `prepath`.
    pub fn resolve(&self, req: &mut Request) -> Option<Rc<dyn Resource>> {
        let mut res = req
            .host()
            .and_then(|h| self.vhosts.borrow().get(&h).cloned())
            .unwrap_or_else(|| self.root.clone());
        // (As in Twisted, the segment is in `prepath` when its parent's
        // `get_child` is asked for it.)
        while !res.is_leaf() && req.consume_segment() {
            let name = req.prepath().last().map_or("", String::as_str);
            match res.get_child(name, req) {
                Some(c) => res = c,
                // A trailing slash on a non-leaf names the resource itself.
                None if name.is_empty() && req.postpath().is_empty() => return Some(res),
                None => return None,
            }
        }
        Some(res)
    }
}

impl Handler for Site {
    fn handle(&self, mut req: Request) -> Reply {
        let reply = match self.resolve(&mut req) {
            Some(r) => r.render(req),
            None => Response::error(StatusCode::NOT_FOUND).into(),
        };
        let extra = self.headers.borrow().clone();
        if extra.is_empty() {
            return reply;
        }
        reply.map(move |mut r| {
            for (k, v) in &extra {
                r.headers.append(k.clone(), v.clone());
            }
            r
        })
    }
}

impl Handler for Rc<dyn Resource> {
    fn handle(&self, req: Request) -> Reply {
        Site::new(self.clone()).handle(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A resource whose every child is itself, noting what each
    /// `get_child` call saw.
    struct Spy(RefCell<Vec<String>>);

    impl Resource for Spy {
        fn get_child(&self, name: &str, req: &Request) -> Option<Rc<dyn Resource>> {
            self.0
                .borrow_mut()
                .push(format!("{name}: {:?} {:?}", req.prepath(), req.postpath()));
            (name != "stop").then(|| Rc::new(Spy(RefCell::new(Vec::new()))) as Rc<dyn Resource>)
        }
    }

    #[test]
    fn get_child_sees_its_segment_already_in_prepath() {
        let spy = Rc::new(Spy(RefCell::new(Vec::new())));
        let site = Site::new(spy.clone());
        let mut req = Request::new(Method::GET, "/a/b%20c".parse().unwrap());
        assert!(site.resolve(&mut req).is_some());
        // Only the root's own call is on record (children are fresh spies).
        assert_eq!(*spy.0.borrow(), [r#"a: ["a"] ["b c"]"#]);
        assert_eq!(req.prepath(), ["a", "b c"]);
        assert!(req.postpath().is_empty());
        // A child that is not there: no resource, and the segment stays consumed.
        let mut req = Request::new(Method::GET, "/stop/x".parse().unwrap());
        assert!(site.resolve(&mut req).is_none());
        assert_eq!(
            (req.prepath(), req.postpath()),
            (&["stop".to_string()][..], &["x".to_string()][..])
        );
    }
}
