//! An echo server: `cargo run --example echo_server -- ENDPOINT`
//!
//! Sends back every byte it receives. ENDPOINT is any server endpoint string:
//! `tcp:8000:interface=127.0.0.1` (the default), a bare `127.0.0.1:8000`,
//! `unix:/tmp/echo.sock`, `ssl:8443:interface=127.0.0.1:privateKey=key.pem:certKey=cert.pem`.
//! Ctrl-C stops it gracefully.

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
    let spec = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp:8000:interface=127.0.0.1".into());
    // A bare socket address is accepted too, as a tcp: endpoint.
    let spec = match spec.parse::<std::net::SocketAddr>() {
        Ok(a) => format!(
            "tcp:{}:interface={}",
            a.port(),
            torsion::endpoint::escape(&a.ip().to_string())
        ),
        Err(_) => spec,
    };
    let reactor = Reactor::new()?;
    let port = torsion::endpoints::listen(&reactor, &spec, factory_fn(Echo::default))
        .map_err(|e| format!("cannot listen on {spec:?}: {e}"))?;
    println!("echo server listening on {}", port.host());
    reactor.install_signal_handlers()?;
    reactor.run()?;
    Ok(())
}
