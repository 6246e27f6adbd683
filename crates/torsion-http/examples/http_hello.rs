//! The benchmark server: `cargo run --release -p torsion-http --example http_hello -- 127.0.0.1:8080`
//!
//! Answers every request with `Hello, World!` (`text/plain`, keep-alive).
//! The argument is an address (`127.0.0.1:8080`) or `tcp:PORT[:interface=ADDR]`.

use torsion_core::Reactor;
use torsion_http::{HttpServer, Reply, Request, Response, ServerConfig};

struct Hello;

impl torsion_http::Handler for Hello {
    fn handle(&self, _req: Request) -> Reply {
        Reply::Now(Response::text("Hello, World!"))
    }
}

fn parse(arg: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = arg.parse() {
        return Ok(a);
    }
    let rest = arg.strip_prefix("tcp:").ok_or_else(|| {
        format!("bad endpoint {arg:?}: expected ADDR:PORT or tcp:PORT[:interface=ADDR]")
    })?;
    let mut parts = rest.split(':');
    let port: u16 = parts
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("bad port in {arg:?}"))?;
    let mut ip = "0.0.0.0".to_string();
    for p in parts {
        match p.split_once('=') {
            Some(("interface", v)) => ip = v.to_string(),
            _ => return Err(format!("unknown option {p:?} in {arg:?}")),
        }
    }
    let ip: std::net::IpAddr = ip.parse().map_err(|e| format!("bad interface: {e}"))?;
    Ok((ip, port).into())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let arg = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let addr = parse(&arg)?;
    let reactor = Reactor::new()?;
    let server = HttpServer::new(&reactor, Hello, ServerConfig::default());
    let port = server.listen_tcp(addr)?;
    println!("http_hello listening on http://{}/", port.local_addr());
    reactor.install_signal_handlers()?;
    reactor.run()?;
    Ok(())
}
