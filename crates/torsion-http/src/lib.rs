//! # torsion-http
//!
//! HTTP/1.1 for Torsion, in two layers: [`h1::ServerConn`], a sans-I/O
//! server machine (bytes in → events out, responses in → bytes out), and
//! [`HttpServer`], an adapter that runs it as a [`torsion_core::Protocol`]
//! over any transport, with streaming request bodies (backpressure on the
//! transport), responses streamed through producers, timeouts, and panics
//! in handlers turned into 500s.
//!
//! Handlers come in two styles over one core — Twisted-style resource trees
//! ([`Resource`], [`Tree`], [`Site`]) and async functions ([`handler_fn`]) —
//! and mix freely; [`File`] serves static files.
//!
//! ```no_run
//! use std::rc::Rc;
//! use torsion_core::Reactor;
//! use torsion_http::{handler_fn, File, HttpServer, Resource, Response, ServerConfig, Site, Tree};
//!
//! let reactor = Reactor::new()?;
//! let root = Tree::new();
//! root.put_child("hello", Rc::new(handler_fn(|_req| async { Ok(Response::text("Hello, World!")) })));
//! root.put_child("static", Rc::new(File::new(".")?));
//! let server = HttpServer::new(&reactor, Site::new(Rc::new(root)), ServerConfig::default());
//! server.listen_tcp("127.0.0.1:8080".parse()?)?;
//! reactor.install_signal_handlers()?;
//! reactor.run()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod chunked;
pub mod client;
pub mod config;
pub mod file;
pub mod h1;
pub mod mime;
pub mod parse;
pub mod proxy;
pub mod request;
pub mod resource;
pub mod response;
pub mod server;
mod util;

pub use bytes::Bytes;
pub use client::{Agent, AgentConfig, ClientResponse, Proxy};
pub use config::ServerConfig;
pub use file::File;
pub use request::{Request, RequestBody};
pub use resource::{
    handler_fn, FnHandler, Handler, IntoResponseResult, Redirect, Reply, Resource, Site, Tree,
};
pub use response::{Body, BodySender, BodySource, Chunk, Headers, Notify, Response, Text};
pub use server::HttpServer;
