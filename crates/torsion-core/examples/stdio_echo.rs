//! Echoes its standard input to its standard output through Torsion's stdio
//! transport, with the same kind of protocol a TCP echo server uses. The
//! listening endpoint comes from the first argument (default `stdio:`), so
//! `stdio_echo tcp:8000:interface=127.0.0.1` serves the same echo over TCP.
//!
//! `echo hello | cargo run -p torsion-core --example stdio_echo`

use torsion_core::endpoint::server_from_string;
use torsion_core::{factory_fn, Failure, Protocol, Reactor, Transport};

struct Echo {
    transport: Option<Transport>,
    reactor: Reactor,
    stop_when_done: bool,
}

impl Protocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.transport = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.transport {
            t.write(data);
        }
    }
    fn connection_lost(&mut self, _reason: Failure) {
        if self.stop_when_done {
            let _ = self.reactor.stop();
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = std::env::args().nth(1).unwrap_or_else(|| "stdio:".into());
    let endpoint = server_from_string(&spec)?;
    let stdio = spec.starts_with("stdio");
    let reactor = Reactor::new()?;
    let r = reactor.clone();
    endpoint.listen(
        &reactor,
        factory_fn(move || Echo {
            transport: None,
            reactor: r.clone(),
            stop_when_done: stdio,
        }),
    )?;
    reactor.install_signal_handlers()?;
    reactor.run()?;
    Ok(())
}
