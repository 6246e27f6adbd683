//! One site, both handler styles: `cargo run -p torsion-http --example site -- 127.0.0.1:8080 [DIR]`
//!
//! - `/`            a resource-tree leaf rendering per method
//! - `/hello/NAME`  an async handler
//! - `/upload`      an async handler streaming the request body
//! - `/files/`      static files from DIR (default `.`), with listing and gzip
//! - `/old`         a redirect to `/hello/world`
//!
//! Ctrl-C stops it after in-flight responses finish.

use std::rc::Rc;

use torsion_core::Reactor;
use torsion_http::{
    handler_fn, File, HttpServer, Redirect, Reply, Request, Resource, Response, ServerConfig, Site,
    Tree,
};

struct Home;

impl Resource for Home {
    fn is_leaf(&self) -> bool {
        true
    }
    fn render_get(&self, _req: Request) -> Reply {
        Response::html("<h1>Torsion</h1><p>Try <a href=\"/hello/you\">/hello/you</a> or <a href=\"/files/\">/files/</a>.</p>").into()
    }
    fn render_post(&self, _req: Request) -> Reply {
        Response::text("posted\n").into()
    }
    fn allowed_methods(&self) -> &'static str {
        "GET, HEAD, POST"
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()?;
    let dir = args.next().unwrap_or_else(|| ".".into());

    let root = Tree::new();
    root.set_index(Rc::new(Home));
    root.put_child(
        "hello",
        Rc::new(handler_fn(|req: Request| async move {
            let name = req.postpath().first().cloned().unwrap_or_default();
            Response::text(format!("Hello, {name}!\n"))
        })),
    );
    root.put_child(
        "upload",
        Rc::new(handler_fn(|req: Request| async move {
            let mut body = req.into_body();
            let mut total = 0usize;
            while let Some(chunk) = body.chunk().await? {
                total += chunk.len();
            }
            Ok(Response::text(format!("received {total} bytes\n")))
        })),
    );
    let mut files = File::new(&dir)?;
    files.set_gzip(true);
    root.put_child("files", Rc::new(files));
    root.put_child(
        "old",
        Rc::new(Redirect::new(
            "/hello/world",
            http::StatusCode::MOVED_PERMANENTLY,
        )),
    );
    let site = Site::new(Rc::new(root));
    site.add_header("x-content-type-options", "nosniff")?;

    let reactor = Reactor::new()?;
    let server = HttpServer::new(&reactor, site, ServerConfig::default());
    let port = server.listen_tcp(addr)?;
    println!("site listening on http://{}/", port.local_addr());
    server.stop_gracefully_on_shutdown();
    reactor.install_signal_handlers()?;
    reactor.run()?;
    Ok(())
}
