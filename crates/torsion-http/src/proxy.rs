//! A reverse proxy resource: forwards what is left of the path to an
//! upstream server through an [`Agent`] and streams the answer back.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri};
use torsion_core::{Deferred, Failure};

use crate::client::{Agent, ClientError, ClientRequest};
use crate::request::Request;
use crate::resource::{Reply, Resource};
use crate::response::{Body, Response};
use crate::util::percent_encode_segment;

/// Hop-by-hop fields (RFC 9110 §7.6.1): never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Forwards requests below its mount point to `upstream`.
///
/// Request and response bodies stream through as they arrive, with
/// backpressure both ways.
/// Upstream failures give 502, upstream timeouts 504.
///
/// ```no_run
/// use std::rc::Rc;
/// use torsion_core::Reactor;
/// use torsion_http::{client::Agent, proxy::ReverseProxy, Resource, Tree};
/// let reactor = Reactor::new()?;
/// let root = Tree::new();
/// root.put_child("api", Rc::new(ReverseProxy::new(Agent::new(&reactor), "http://127.0.0.1:9000/v1")?));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ReverseProxy {
    agent: Agent,
    scheme_authority: String,
    base_path: String,
}

impl std::fmt::Debug for ReverseProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ReverseProxy({}{})",
            self.scheme_authority, self.base_path
        )
    }
}

impl ReverseProxy {
    /// A proxy to `upstream` (`http://host:port[/base]`). Give it an Agent
    /// that follows no redirects (`max_redirects: 0`) to pass them through.
    pub fn new(agent: Agent, upstream: &str) -> Result<ReverseProxy, ClientError> {
        let u: Uri = upstream
            .parse()
            .map_err(|_| ClientError::BadUrl(upstream.to_string()))?;
        let (Some(scheme), Some(auth)) = (u.scheme_str(), u.authority()) else {
            return Err(ClientError::BadUrl(upstream.to_string()));
        };
        Ok(ReverseProxy {
            agent,
            scheme_authority: format!("{scheme}://{auth}"),
            base_path: u.path().trim_end_matches('/').to_string(),
        })
    }

    fn target(&self, req: &Request) -> String {
        let mut t = self.base_path.clone();
        for seg in req.postpath() {
            t.push('/');
            t.push_str(&percent_encode_segment(seg));
        }
        if t.is_empty() {
            t.push('/');
        }
        if let Some(q) = req.query() {
            t.push('?');
            t.push_str(q);
        }
        format!("{}{t}", self.scheme_authority)
    }
}

fn strip_hop_by_hop(h: &HeaderMap) -> HeaderMap {
    let named: Vec<String> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::with_capacity(h.len());
    for (k, v) in h {
        let name = k.as_str();
        if HOP_BY_HOP.contains(&name) || named.iter().any(|n| n == name) {
            continue;
        }
        out.append(k.clone(), v.clone());
    }
    out
}

impl Resource for ReverseProxy {
    fn is_leaf(&self) -> bool {
        true
    }

    fn render(&self, mut req: Request) -> Reply {
        let Some(reactor) = req.reactor().cloned() else {
            return Response::error(StatusCode::INTERNAL_SERVER_ERROR).into();
        };
        let url = self.target(&req);
        let me = self.clone();
        let d = Deferred::from_future(&reactor, async move {
            let Ok(url) = url.parse::<Uri>() else {
                return Ok(Response::error(StatusCode::BAD_REQUEST));
            };
            let mut headers = strip_hop_by_hop(req.headers());
            headers.remove(header::HOST);
            headers.remove(header::CONTENT_LENGTH);
            if let Some(host) = req.header(header::HOST) {
                if let Ok(v) = HeaderValue::from_str(host) {
                    headers.insert(HeaderName::from_static("x-forwarded-host"), v);
                }
            }
            if let Some(a) = req.peer().socket_addr() {
                let prior = req.header("x-forwarded-for").map(str::to_string);
                let xff = match prior {
                    Some(p) => format!("{p}, {}", a.ip()),
                    None => a.ip().to_string(),
                };
                if let Ok(v) = HeaderValue::from_str(&xff) {
                    headers.insert(HeaderName::from_static("x-forwarded-for"), v);
                }
            }
            // The request body streams through as it arrives.
            let cl = req
                .header(header::CONTENT_LENGTH)
                .and_then(|v| v.parse::<u64>().ok());
            let has_body =
                req.headers().contains_key(header::TRANSFER_ENCODING) || cl.is_some_and(|n| n > 0);
            let mut creq = ClientRequest::new(req.method().clone(), url);
            if has_body {
                creq = creq.with_stream(Body::from_request_body(req.take_body(), cl));
            }
            creq.headers = headers;
            let resp = match me.agent.request(creq).await {
                Ok(r) => r,
                Err(f) => {
                    tracing::warn!(failure = %f, "upstream request failed");
                    let status = match f.downcast_ref::<ClientError>() {
                        Some(ClientError::Timeout(_)) => StatusCode::GATEWAY_TIMEOUT,
                        _ => StatusCode::BAD_GATEWAY,
                    };
                    return Ok(Response::error(status));
                }
            };
            let len = resp
                .header(header::CONTENT_LENGTH)
                .and_then(|v| v.parse::<u64>().ok());
            let mut out = Response::new(resp.status);
            out.headers = strip_hop_by_hop(&resp.headers).into();
            out.headers.remove(header::CONTENT_LENGTH);
            out.headers.remove(header::DATE);
            out.headers.remove(header::SERVER);
            out.body = Body::from_request_body(resp.into_body(), len);
            Ok::<_, Failure>(out)
        });
        Reply::Later(d)
    }
}
