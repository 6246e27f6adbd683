//! TLS over a Unix socket: the same wrapper, another stream transport.

mod common;

use std::rc::Rc;
use std::time::Duration;

use common::*;
use torsion_core::unix::{UnixListenOptions, UnixPath};
use torsion_core::{ConnectionError, Reactor};
use torsion_tls::*;

#[test]
fn echo_over_tls_over_a_unix_socket() {
    init_logging();
    let pki = Pki::new("CA");
    let dir = TempDir::new();
    let path = dir.0.join("tls.sock");
    let reactor = Reactor::new().unwrap();
    let sf = EchoFactory::new();
    let tls = TlsWrappingFactory::server(sf.clone(), pki.server_config(&["localhost"]))
        .with_clock(&reactor);
    let _port = reactor
        .listen_unix(
            UnixPath::File(path.clone()),
            Rc::new(tls),
            UnixListenOptions::default(),
        )
        .unwrap();
    let client = OneClient::new(b"over unix", Some(9));
    let ctls = TlsWrappingFactory::client(client.clone(), pki.client_config(), "localhost")
        .unwrap()
        .with_clock(&reactor);
    reactor.connect_unix(UnixPath::File(path), Rc::new(ctls), None);
    // While the server side is open, facts of the transport below still
    // answer through the TLS layer.
    let s2 = sf.clone();
    assert!(run_until(&reactor, Duration::from_secs(15), move || s2
        .log(0)
        .is_some_and(|l| !l.borrow().data.is_empty())));
    let st = sf.log(0).unwrap().borrow().transport.clone().unwrap();
    let creds = st.unix_credentials().expect("Unix credentials through TLS");
    assert_eq!(creds.pid, std::process::id() as i32);
    let c = client.clone();
    assert!(run_until(&reactor, Duration::from_secs(15), move || c
        .log
        .borrow()
        .lost
        .is_some()));
    let l = client.log.borrow();
    assert!(l.failed.is_none(), "{:?}", l.failed);
    assert_eq!(l.data, b"over unix");
    let t = l.transport.clone().unwrap();
    assert_eq!(t.kind(), "TLS");
    assert_eq!(t.tls_version().unwrap(), Some(TlsVersion::Tls13));
    assert!(matches!(
        l.lost.clone().unwrap().downcast_ref::<ConnectionError>(),
        Some(ConnectionError::Done)
    ));
}
