//! Echoes its standard input to its standard output through Torsion's stdio
//! transport, with the same kind of protocol a TCP echo server uses.
//!
//! `echo hello | cargo run -p torsion-core --example stdio_echo`

use torsion_core::{Failure, Protocol, Reactor, Transport};

struct Echo {
    transport: Option<Transport>,
    reactor: Reactor,
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
        let _ = self.reactor.stop();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let reactor = Reactor::new()?;
    reactor.stdio(Box::new(Echo {
        transport: None,
        reactor: reactor.clone(),
    }))?;
    reactor.run()?;
    Ok(())
}
