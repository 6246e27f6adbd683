//! A TLS echo server.
//!
//! ```text
//! cargo run -p torsion-tls --example tls_echo_server -- ssl:8443:privateKey=key.pem:certKey=cert.pem
//! cargo run -p torsion-tls --example tls_echo_server            # ephemeral self-signed "localhost" cert on 127.0.0.1, random port
//! ```
//! Prints `listening on 127.0.0.1:PORT` once ready; answers ALPN `h2` and `http/1.1`.

use std::rc::Rc;

use torsion_core::{factory_fn, Address, Protocol, Reactor, Transport};
use torsion_tls::{CertificateKey, TlsServerConfig, TlsServerEndpoint, TlsWrappingFactory};

#[derive(Default)]
struct Echo(Option<Transport>);

impl Protocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.0 {
            t.write(data);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let reactor = Reactor::new()?;
    let port = match std::env::args().nth(1) {
        Some(ep) => {
            let ep = TlsServerEndpoint::parse(&ep)?;
            ep.listen(&reactor, factory_fn(Echo::default))?
        }
        None => {
            let key = rcgen::KeyPair::generate()?;
            let params = rcgen::CertificateParams::new(vec!["localhost".to_string()])?;
            let cert = params.self_signed(&key)?;
            let ck =
                CertificateKey::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes())?;
            let config = TlsServerConfig::builder()
                .certificate(ck)
                .alpn(&[b"h2", b"http/1.1"])
                .build()?;
            let tls =
                TlsWrappingFactory::server(factory_fn(Echo::default), config).with_clock(&reactor);
            reactor.listen_tcp("127.0.0.1:0".parse()?, Rc::new(tls))?
        }
    };
    if let Address::Tcp(a) = port.host() {
        println!("listening on {a}");
    }
    reactor.install_signal_handlers()?;
    reactor.run()?;
    Ok(())
}
