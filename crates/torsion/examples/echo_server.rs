//! An echo server: `cargo run --example echo_server -- 127.0.0.1:8000`
//!
//! Sends back every byte it receives. Ctrl-C stops it gracefully.

use torsion::prelude::*;

#[derive(Default)]
struct Echo(Option<Transport>);

impl Protocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        tracing::info!(peer = %t.peer(), "client connected");
        self.0 = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.0 {
            t.write(data);
        }
    }
    fn connection_lost(&mut self, reason: Failure) {
        tracing::info!(%reason, "client gone");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8000".into());
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    let reactor = Reactor::new()?;
    let port = reactor.listen_tcp(addr, factory_fn(Echo::default))?;
    println!("echo server listening on {}", port.host());
    reactor.install_signal_handlers()?;
    reactor.run()?;
    Ok(())
}
