//! An echo client: `cargo run --example echo_client -- 127.0.0.1:8000 "hello"`
//!
//! Connects, sends the message, prints what comes back, and exits.

use std::rc::Rc;
use torsion::prelude::*;

struct Client {
    message: Vec<u8>,
    got: Vec<u8>,
    transport: Option<Transport>,
    reactor: Reactor,
}

impl Protocol for Client {
    fn connection_made(&mut self, t: Transport) {
        t.write(&self.message);
        self.transport = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.got.extend_from_slice(data);
        if self.got.len() >= self.message.len() {
            println!("{}", String::from_utf8_lossy(&self.got));
            if let Some(t) = &self.transport {
                t.lose_connection();
            }
        }
    }
    fn connection_lost(&mut self, _reason: Failure) {
        let _ = self.reactor.stop();
    }
}

struct Factory_ {
    reactor: Reactor,
    message: Vec<u8>,
}

impl Factory for Factory_ {
    fn build_protocol(&self, _peer: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(Client {
            message: self.message.clone(),
            got: Vec::new(),
            transport: None,
            reactor: self.reactor.clone(),
        }))
    }
}

impl ClientFactory for Factory_ {
    fn client_connection_failed(&self, _c: &torsion::Connector, reason: Failure) {
        eprintln!("connection failed: {reason}");
        let _ = self.reactor.stop();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8000".into());
    let message = args.next().unwrap_or_else(|| "hello, torsion".into());
    let addr = addr
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    let reactor = Reactor::new()?;
    let factory = Rc::new(Factory_ {
        reactor: reactor.clone(),
        message: message.into_bytes(),
    });
    reactor.connect_tcp(addr, factory, ConnectOptions::default());
    reactor.run()?;
    Ok(())
}
