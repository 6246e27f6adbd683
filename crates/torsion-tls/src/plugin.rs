//! `ssl:` and `tls:` in the core's endpoint parser.
//!
//! After [`register_endpoints`], `torsion_core::endpoint::server_from_string`
//! and `client_from_string` (and so every program that takes `--listen
//! ENDPOINT`) accept the TLS forms on this thread.
//!
//! ```no_run
//! use torsion_core::endpoint::{client_from_string, server_from_string};
//! torsion_tls::register_endpoints();
//! let server = server_from_string("ssl:8443:privateKey=key.pem:certKey=cert.pem")?;
//! let client = client_from_string("tls:host=localhost:port=8443:trustRoots=ca.pem")?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::rc::Rc;

use torsion_core::endpoint::{
    register_parser, CustomClientEndpoint, CustomServerEndpoint, EndpointArgs, EndpointError,
    EndpointParser, ListenError, ListeningHandle,
};
use torsion_core::{ClientFactory, Connector, Factory, Reactor};

use crate::endpoint::{
    PreparedTlsClientEndpoint, TlsClientEndpoint, TlsEndpointError, TlsListenError,
    TlsServerEndpoint,
};

/// Parses `ssl:`/`tls:` arguments for the core's endpoint registry.
#[derive(Debug, Default, Clone, Copy)]
pub struct TlsEndpointParser;

/// Registers `ssl` and `tls` with this thread's default endpoint registry.
/// Returns false if either prefix could not be registered.
pub fn register_endpoints() -> bool {
    let a = register_parser("ssl", Rc::new(TlsEndpointParser));
    let b = register_parser("tls", Rc::new(TlsEndpointParser));
    a && b
}

fn to_core(e: TlsEndpointError, kind: &str) -> EndpointError {
    let kind = kind.to_string();
    match e {
        TlsEndpointError::WrongScheme { got, .. } => EndpointError::UnknownType(got),
        TlsEndpointError::Missing(what) => EndpointError::Missing { kind, what },
        TlsEndpointError::UnknownOption(key) => EndpointError::UnknownKey { kind, key },
        TlsEndpointError::Duplicate(key) => EndpointError::DuplicateKey { kind, key },
        TlsEndpointError::UnexpectedArgument(arg) => {
            EndpointError::UnexpectedArgument { kind, arg }
        }
        TlsEndpointError::InvalidValue { key, value } => EndpointError::InvalidValue {
            key: key.to_string(),
            expected: "a valid value",
            got: value,
        },
        TlsEndpointError::DanglingEscape => EndpointError::DanglingEscape,
    }
}

impl EndpointParser for TlsEndpointParser {
    fn parse_server(
        &self,
        args: EndpointArgs,
    ) -> Result<Rc<dyn CustomServerEndpoint>, EndpointError> {
        let e = TlsServerEndpoint::from_parts(&args.positional, &args.keywords)
            .map_err(|e| to_core(e, &args.kind))?;
        Ok(Rc::new(e))
    }

    /// Loads the client's files at parse time, so a bad path is reported
    /// here rather than when connecting.
    fn parse_client(
        &self,
        args: EndpointArgs,
    ) -> Result<Rc<dyn CustomClientEndpoint>, EndpointError> {
        let e = TlsClientEndpoint::from_parts(&args.positional, &args.keywords)
            .map_err(|e| to_core(e, &args.kind))?;
        let prepared = e.prepare().map_err(|err| EndpointError::InvalidValue {
            key: "tls configuration".into(),
            expected: "readable certificate, key and trust-root files",
            got: err.to_string(),
        })?;
        Ok(Rc::new(prepared))
    }
}

impl CustomServerEndpoint for TlsServerEndpoint {
    fn listen(
        &self,
        reactor: &Reactor,
        factory: Rc<dyn Factory>,
    ) -> Result<Box<dyn ListeningHandle>, ListenError> {
        match TlsServerEndpoint::listen(self, reactor, factory) {
            Ok(port) => Ok(Box::new(port)),
            Err(TlsListenError::Io(source)) => Err(ListenError::Io {
                endpoint: self.to_string(),
                source,
            }),
            Err(e) => Err(ListenError::Other(format!("{self}: {e}"))),
        }
    }
}

impl std::fmt::Display for PreparedTlsClientEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.endpoint(), f)
    }
}

impl CustomClientEndpoint for PreparedTlsClientEndpoint {
    fn connect(&self, reactor: &Reactor, factory: Rc<dyn ClientFactory>) -> Connector {
        PreparedTlsClientEndpoint::connect(self, reactor, factory)
    }
}
