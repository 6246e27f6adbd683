//! `ssl:` and `tls:` endpoint strings end to end: PEM files on disk, a
//! listening server, a client verifying against a trust-roots directory and
//! presenting a client certificate.

mod common;

use std::time::Duration;

use common::*;
use torsion_core::{Address, Reactor};
use torsion_tls::*;

#[test]
fn endpoint_strings_listen_and_connect() {
    init_logging();
    let pki = Pki::new("CA");
    let leaf = pki.server_leaf(&["localhost"]);
    let client = pki.client_leaf("bob");
    let dir = TempDir::new();
    let key = dir.write("server.key", &leaf.key_pem);
    let cert = dir.write("server.pem", &leaf.cert_pem);
    let ca = dir.write("ca.pem", &pki.ca_pem);
    let roots = TempDir::new();
    roots.write("root.pem", &pki.ca_pem);
    let ckey = dir.write("client.key", &client.key_pem);
    let ccert = dir.write("client.pem", &client.cert_pem);

    let server = TlsServerEndpoint::parse(&format!(
        "ssl:0:interface=127.0.0.1:privateKey={}:certKey={}:caCerts={}",
        key.display(),
        cert.display(),
        ca.display()
    ))
    .unwrap();
    let reactor = Reactor::new().unwrap();
    let sf = EchoFactory::new();
    let port = server.listen(&reactor, sf.clone()).unwrap();
    let Address::Tcp(addr) = port.host() else {
        panic!()
    };
    let client_ep = TlsClientEndpoint::parse(&format!(
        "tls:host=localhost:port={}:trustRoots={}:certificate={}:privateKey={}",
        addr.port(),
        roots.0.display(),
        ccert.display(),
        ckey.display()
    ))
    .unwrap();
    let oc = OneClient::new(b"via endpoints", Some(13));
    client_ep.connect(&reactor, oc.clone()).unwrap();
    let o2 = oc.clone();
    assert!(run_until(&reactor, Duration::from_secs(15), move || {
        o2.log.borrow().lost.is_some() || o2.log.borrow().failed.is_some()
    }));
    assert!(
        oc.log.borrow().failed.is_none(),
        "{:?}",
        oc.log.borrow().failed
    );
    assert_eq!(oc.log.borrow().data, b"via endpoints");
    let st = sf.log(0).unwrap().borrow().transport.clone().unwrap();
    assert_eq!(
        st.peer_certificate().unwrap().unwrap().as_ref(),
        &client.der()[..]
    );

    // Missing files are typed configuration errors.
    let bad = TlsServerEndpoint::parse("ssl:0:privateKey=/nonexistent/key.pem").unwrap();
    assert!(matches!(
        bad.server_config(),
        Err(TlsConfigError::Io { .. })
    ));
    // A key that does not match the certificate is refused.
    let other = pki.server_leaf(&["x"]);
    let okey = dir.write("other.key", &other.key_pem);
    let mismatched = TlsServerEndpoint::parse(&format!(
        "ssl:0:privateKey={}:certKey={}",
        okey.display(),
        cert.display()
    ))
    .unwrap();
    assert!(matches!(
        mismatched.server_config(),
        Err(TlsConfigError::Key(_))
    ));
}

#[test]
fn extra_cert_chain_completes_the_path_to_the_root() {
    init_logging();
    let root = Pki::new("Root CA");
    let inter = root.intermediate("Intermediate CA");
    let leaf = inter.server_leaf(&["localhost"]);
    let dir = TempDir::new();
    let key = dir.write("k.pem", &leaf.key_pem);
    let cert = dir.write("c.pem", &leaf.cert_pem);
    let chain = dir.write("chain.pem", &inter.ca_pem);
    let roots = dir.write("root.pem", &root.ca_pem);
    // A server endpoint with and without the intermediate; the client trusts only the root.
    let base = format!(
        "ssl:0:interface=127.0.0.1:privateKey={}:certKey={}",
        key.display(),
        cert.display()
    );
    let with_chain = format!("{base}:extraCertChain={}", chain.display());
    let by_name = |server: &str| {
        let reactor = Reactor::new().unwrap();
        let port = TlsServerEndpoint::parse(server)
            .unwrap()
            .listen(&reactor, EchoFactory::new())
            .unwrap();
        let Address::Tcp(addr) = port.host() else {
            panic!()
        };
        let oc = OneClient::new(b"chain", Some(5));
        let cfg = TlsClientConfig::with_roots(TrustRoots::from_path(&roots).unwrap()).unwrap();
        connect_ssl(
            &reactor,
            addr,
            oc.clone(),
            cfg,
            "localhost",
            torsion_core::ConnectOptions::default(),
        )
        .unwrap();
        let o2 = oc.clone();
        assert!(run_until(&reactor, Duration::from_secs(15), move || {
            o2.log.borrow().lost.is_some() || o2.log.borrow().failed.is_some()
        }));
        let l = oc.log.borrow();
        (l.data.clone(), l.failed.clone())
    };
    let (data, failed) = by_name(&with_chain);
    assert!(failed.is_none(), "{failed:?}");
    assert_eq!(data, b"chain");
    let (_, failed) = by_name(&base);
    let failed = failed.expect("no path to the root without the intermediate");
    assert!(matches!(
        failed.downcast_ref::<TlsError>(),
        Some(TlsError::Certificate(CertificateError::UnknownIssuer))
    ));
}

#[test]
fn core_endpoint_parser_knows_ssl_and_tls_after_registration() {
    use torsion_core::endpoint::{client_from_string, server_from_string, EndpointError};
    init_logging();
    assert!(register_endpoints());
    let pki = Pki::new("CA");
    let leaf = pki.server_leaf(&["localhost"]);
    let dir = TempDir::new();
    let key = dir.write("k.pem", &leaf.key_pem);
    let cert = dir.write("c.pem", &leaf.cert_pem);
    let ca = dir.write("ca.pem", &pki.ca_pem);
    let server = server_from_string(&format!(
        "ssl:0:interface=127.0.0.1:privateKey={}:certKey={}",
        key.display(),
        cert.display()
    ))
    .unwrap();
    let reactor = Reactor::new().unwrap();
    let handle = server.listen(&reactor, EchoFactory::new()).unwrap();
    let Address::Tcp(addr) = handle.host() else {
        panic!()
    };
    let client = client_from_string(&format!(
        "tls:host=localhost:port={}:trustRoots={}",
        addr.port(),
        ca.display()
    ))
    .unwrap();
    assert!(client.to_string().starts_with("tls:host=localhost:port="));
    let oc = OneClient::new(b"registered", Some(10));
    client.connect(&reactor, oc.clone());
    let o2 = oc.clone();
    assert!(run_until(&reactor, Duration::from_secs(15), move || {
        o2.log.borrow().lost.is_some() || o2.log.borrow().failed.is_some()
    }));
    assert_eq!(oc.log.borrow().data, b"registered");
    // Errors come back in the core's typed form.
    assert!(matches!(
        server_from_string("ssl:443"),
        Err(EndpointError::Missing {
            what: "privateKey",
            ..
        })
    ));
    assert!(matches!(
        client_from_string("tls:host=a:port=1:trustRoots=/nonexistent/ca.pem"),
        Err(EndpointError::InvalidValue { .. })
    ));
}
