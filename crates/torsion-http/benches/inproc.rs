//! The server's own work per request, without the kernel: a Torsion
//! `HttpServer` protocol fed 16 pipelined `GET /` at a time over an
//! in-memory transport (no sockets, no syscalls), answering each with
//! `Hello, World!` as `examples/http_hello` does. Prints nanoseconds per
//! request, the best of several runs (the floor is what code changes
//! move; the spread is other load on the machine).
//!
//!   cargo bench -p torsion-http --bench inproc [-- ROUNDS]
//!
//! `CONNS=N` spreads the batches over N connections in turn (default 1).
//! Under callgrind (`REPS=1`, two round counts, the difference divided by
//! the requests) it counts instructions per request exactly.

use std::time::Instant;

use torsion_core::testing::StringTransport;
use torsion_core::{Address, Reactor};
use torsion_http::{HttpServer, Reply, Request, Response, ServerConfig};

struct Hello;

impl torsion_http::Handler for Hello {
    fn handle(&self, _req: Request) -> Reply {
        Reply::Now(Response::text("Hello, World!"))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200_000);
    let reps: usize = std::env::var("REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(7);
    let reactor = Reactor::new()?;
    let server = HttpServer::new(&reactor, Hello, ServerConfig::default());
    // A TCP peer, as a real server sees (a memory peer's label is a String).
    let tcp = |p| Address::Tcp(std::net::SocketAddr::from(([127, 0, 0, 1], p)));
    let nconn: usize = std::env::var("CONNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut conns = Vec::new();
    for i in 0..nconn {
        let t = StringTransport::with_addresses(tcp(40000 + i as u16), tcp(8080));
        let mut proto = server
            .factory()
            .build_protocol(&tcp(40000))
            .ok_or("the server refused the connection")?;
        proto.connection_made(t.transport());
        conns.push((t, proto));
    }
    let (t, proto) = &mut conns[0];
    let batch = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n".repeat(16);
    proto.data_received(&batch);
    let answered = String::from_utf8(t.take_written())?
        .matches("Hello, World!")
        .count();
    if answered != 16 {
        return Err(format!("expected 16 answers, got {answered}").into());
    }
    let mut best = f64::MAX;
    for _ in 0..reps {
        let start = Instant::now();
        for r in 0..rounds {
            let (t, proto) = &mut conns[r % nconn];
            proto.data_received(&batch);
            t.clear();
        }
        best = best.min(start.elapsed().as_nanos() as f64 / (rounds * 16) as f64);
    }
    println!("torsion-http in-process: {best:.1} ns per pipelined request (best of {reps})");
    Ok(())
}
