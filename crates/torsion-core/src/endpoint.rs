//! Endpoint strings in Twisted's grammar, parsed into typed values.
//!
//! Servers: `tcp:PORT[:interface=ADDR][:backlog=N]`, `tcp6:…`,
//! `unix:PATH[:mode=660][:backlog=N]` (`@name`: Linux abstract namespace),
//! `systemd:domain=INET|INET6|UNIX:index=N`, `stdio:`.
//! Clients: `tcp:host=H:port=P[:timeout=S][:bindAddress=A]` (also `tcp:H:P`),
//! `unix:path=P[:timeout=S]`.
//!
//! Arguments are separated by `:`; `key=value` arguments may come in any
//! order; a backslash escapes the next character (`interface=\:\:1`).
//! Errors are typed and name the bad part:
//!
//! ```
//! use torsion_core::endpoint::{server_from_string, EndpointError, ServerEndpoint};
//! let e = server_from_string("tcp:8080:interface=127.0.0.1").unwrap();
//! assert_eq!(e.to_string(), "tcp:8080:interface=127.0.0.1");
//! let err = server_from_string("tcp:port=abc").unwrap_err();
//! assert_eq!(err.to_string(), "port must be a number from 0 to 65535, got 'abc'");
//! ```
//!
//! # Extension point
//!
//! Other crates add endpoint types (torsion-tls adds `ssl:` and `tls:`) by
//! implementing [`EndpointParser`] and registering it for a prefix, either in
//! the per-thread default registry used by [`server_from_string`] and
//! [`client_from_string`] ([`register_parser`]) or in an
//! [`EndpointRegistry`] of their own. The parser gets the split, unescaped
//! [`EndpointArgs`] and returns a [`CustomServerEndpoint`] /
//! [`CustomClientEndpoint`] trait object, which the typed enums carry as
//! `ServerEndpoint::Custom` / `ClientEndpoint::Custom`. Built-in prefixes
//! cannot be replaced.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::address::Address;
use crate::connector::{Connector, ConnectorImpl, ConnectorState};
use crate::error::ConnectionError;
use crate::failure::{catch, Failure};
use crate::protocol::{ClientFactory, Factory, Protocol};
use crate::reactor::{Inner, Reactor};
use crate::resolve::Resolver;
use crate::tcp::{ConnectOptions, ListeningPort, TcpListenOptions};
use crate::time::DelayedCall;
use crate::transport::Transport;
use crate::unix::{UnixError, UnixListenOptions, UnixPath, UnixPort};

/// Why an endpoint string was refused. Each names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// The string is empty.
    #[error("empty endpoint string")]
    Empty,
    /// No parser for this prefix.
    #[error("unknown endpoint type '{0}'")]
    UnknownType(String),
    /// The type exists but not on this side (a client-only type used for a server ...).
    #[error("'{kind}' endpoints cannot be used as {side}s")]
    WrongSide {
        /// The prefix.
        kind: String,
        /// "server" or "client".
        side: &'static str,
    },
    /// A required argument is missing.
    #[error("{kind} endpoint needs {what}")]
    Missing {
        /// The prefix.
        kind: String,
        /// What is missing.
        what: &'static str,
    },
    /// A value does not parse.
    #[error("{key} must be {expected}, got '{got}'")]
    InvalidValue {
        /// The argument's name.
        key: String,
        /// What was expected.
        expected: &'static str,
        /// What was given.
        got: String,
    },
    /// A `key=value` this endpoint type does not know.
    #[error("unknown key '{key}' for a {kind} endpoint")]
    UnknownKey {
        /// The prefix.
        kind: String,
        /// The key.
        key: String,
    },
    /// A key given twice.
    #[error("duplicate key '{key}' in a {kind} endpoint")]
    DuplicateKey {
        /// The prefix.
        kind: String,
        /// The key.
        key: String,
    },
    /// More positional arguments than the type takes.
    #[error("unexpected argument '{arg}' for a {kind} endpoint")]
    UnexpectedArgument {
        /// The prefix.
        kind: String,
        /// The extra argument.
        arg: String,
    },
    /// A backslash at the very end.
    #[error("endpoint string ends with a lone backslash")]
    DanglingEscape,
}

/// An endpoint string split into its parts, unescaped. Custom parsers get this.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointArgs {
    /// The prefix (`tcp`, `unix`, ...).
    pub kind: String,
    /// Arguments without `=`, in order.
    pub positional: Vec<String>,
    /// `key=value` arguments, in order.
    pub keywords: Vec<(String, String)>,
}

impl EndpointArgs {
    /// Splits `s` by unescaped `:` into kind, positional and keyword arguments.
    pub fn parse(s: &str) -> Result<EndpointArgs, EndpointError> {
        if s.is_empty() {
            return Err(EndpointError::Empty);
        }
        // Each part keeps track of whether it contained an unescaped '='.
        let mut parts: Vec<(String, Option<usize>)> = Vec::new();
        let mut cur = String::new();
        let mut eq: Option<usize> = None;
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(n) => cur.push(n),
                    None => return Err(EndpointError::DanglingEscape),
                },
                ':' => {
                    parts.push((std::mem::take(&mut cur), eq.take()));
                }
                '=' if eq.is_none() && !parts.is_empty() => {
                    eq = Some(cur.len());
                    cur.push('=');
                }
                c => cur.push(c),
            }
        }
        parts.push((cur, eq));
        let mut it = parts.into_iter();
        let (kind, _) = it.next().unwrap_or_default();
        if kind.is_empty() {
            return Err(EndpointError::Empty);
        }
        let mut args = EndpointArgs {
            kind,
            ..Default::default()
        };
        let rest: Vec<(String, Option<usize>)> = it.collect();
        // "stdio:" has one empty trailing part; drop a single empty last part.
        let n = rest.len();
        for (i, (p, eq)) in rest.into_iter().enumerate() {
            if p.is_empty()
                && i + 1 == n
                && eq.is_none()
                && args.positional.is_empty()
                && args.keywords.is_empty()
            {
                continue;
            }
            match eq {
                Some(at) => {
                    let (k, v) = p.split_at(at);
                    let key = k.to_string();
                    if args.keywords.iter().any(|(x, _)| *x == key) {
                        return Err(EndpointError::DuplicateKey {
                            kind: args.kind.clone(),
                            key,
                        });
                    }
                    args.keywords.push((key, v[1..].to_string()));
                }
                None => args.positional.push(p),
            }
        }
        Ok(args)
    }

    /// Takes the keyword `key`, or else the next positional argument.
    fn take(&mut self, key: &str, positional: &mut usize) -> Option<String> {
        if let Some(i) = self.keywords.iter().position(|(k, _)| k == key) {
            return Some(self.keywords.remove(i).1);
        }
        if *positional < self.positional.len() {
            *positional += 1;
            return Some(self.positional[*positional - 1].clone());
        }
        None
    }

    /// Takes a keyword-only argument.
    pub fn take_key(&mut self, key: &str) -> Option<String> {
        let i = self.keywords.iter().position(|(k, _)| k == key)?;
        Some(self.keywords.remove(i).1)
    }

    /// Errors for whatever was not taken.
    pub fn finish(&self, positional_used: usize) -> Result<(), EndpointError> {
        if let Some((k, _)) = self.keywords.first() {
            return Err(EndpointError::UnknownKey {
                kind: self.kind.clone(),
                key: k.clone(),
            });
        }
        if let Some(a) = self.positional.get(positional_used) {
            return Err(EndpointError::UnexpectedArgument {
                kind: self.kind.clone(),
                arg: a.clone(),
            });
        }
        Ok(())
    }
}

/// Escapes `:`, `=` and `\` for an endpoint string.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ':' | '=' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn invalid(key: &str, expected: &'static str, got: &str) -> EndpointError {
    EndpointError::InvalidValue {
        key: key.to_string(),
        expected,
        got: got.to_string(),
    }
}

fn parse_port(key: &str, v: &str) -> Result<u16, EndpointError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid(key, "a number from 0 to 65535", v));
    }
    v.parse::<u16>()
        .map_err(|_| invalid(key, "a number from 0 to 65535", v))
}

fn parse_backlog(v: &str) -> Result<i32, EndpointError> {
    match v.parse::<i32>() {
        Ok(n) if n > 0 && v.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(invalid("backlog", "a positive number", v)),
    }
}

fn parse_mode(v: &str) -> Result<u32, EndpointError> {
    let ok = !v.is_empty() && v.len() <= 4 && v.bytes().all(|b| (b'0'..=b'7').contains(&b));
    if !ok {
        return Err(invalid("mode", "an octal file mode such as 660", v));
    }
    u32::from_str_radix(v, 8).map_err(|_| invalid("mode", "an octal file mode such as 660", v))
}

/// Parses seconds with up to nine decimals, exactly (no float rounding).
fn parse_timeout(v: &str) -> Result<Duration, EndpointError> {
    let err = || invalid("timeout", "a number of seconds", v);
    let (int, frac) = match v.split_once('.') {
        Some((a, b)) => (a, b),
        None => (v, ""),
    };
    if int.is_empty()
        || !int.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 9
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || (v.contains('.') && frac.is_empty())
    {
        return Err(err());
    }
    let secs: u64 = int.parse().map_err(|_| err())?;
    let mut nanos: u32 = 0;
    if !frac.is_empty() {
        let padded = format!("{frac:0<9}");
        nanos = padded.parse().map_err(|_| err())?;
    }
    Ok(Duration::new(secs, nanos))
}

fn fmt_timeout(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        return d.as_secs().to_string();
    }
    let frac = format!("{:09}", d.subsec_nanos());
    format!("{}.{}", d.as_secs(), frac.trim_end_matches('0'))
}

fn parse_unix_path(v: &str) -> Result<UnixPath, EndpointError> {
    if v.is_empty() {
        return Err(invalid("path", "a non-empty path", v));
    }
    Ok(match v.strip_prefix('@') {
        Some(name) => UnixPath::Abstract(name.as_bytes().to_vec()),
        None => UnixPath::File(v.into()),
    })
}

fn fmt_unix_path(p: &UnixPath) -> String {
    match p {
        UnixPath::File(p) => escape(&p.to_string_lossy()),
        UnixPath::Abstract(n) => format!("@{}", escape(&String::from_utf8_lossy(n))),
    }
}

/// The socket family of a `systemd:` endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemdDomain {
    /// IPv4 (`INET`).
    Inet,
    /// IPv6 (`INET6`).
    Inet6,
    /// Unix socket (`UNIX`).
    Unix,
}

impl fmt::Display for SystemdDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SystemdDomain::Inet => "INET",
            SystemdDomain::Inet6 => "INET6",
            SystemdDomain::Unix => "UNIX",
        })
    }
}

// ---- extension traits ----

/// Something listening, as returned by [`ServerEndpoint::listen`].
pub trait ListeningHandle: fmt::Debug {
    /// The address listened on.
    fn host(&self) -> Address;
    /// Stops listening.
    fn stop_listening(&self);
}

impl ListeningHandle for ListeningPort {
    fn host(&self) -> Address {
        ListeningPort::host(self)
    }
    fn stop_listening(&self) {
        drop(ListeningPort::stop_listening(self));
    }
}

impl ListeningHandle for UnixPort {
    fn host(&self) -> Address {
        UnixPort::host(self)
    }
    fn stop_listening(&self) {
        drop(UnixPort::stop_listening(self));
    }
}

/// The stdio "listener": one connection over stdin/stdout.
#[derive(Debug)]
struct StdioListening(Transport);

impl ListeningHandle for StdioListening {
    fn host(&self) -> Address {
        Address::Stdio
    }
    fn stop_listening(&self) {
        self.0.lose_connection();
    }
}

/// A server endpoint type added from outside (e.g. TLS).
pub trait CustomServerEndpoint: fmt::Debug + fmt::Display {
    /// Starts listening.
    fn listen(
        &self,
        reactor: &Reactor,
        factory: Rc<dyn Factory>,
    ) -> Result<Box<dyn ListeningHandle>, ListenError>;
}

/// A client endpoint type added from outside (e.g. TLS).
pub trait CustomClientEndpoint: fmt::Debug + fmt::Display {
    /// Starts connecting.
    fn connect(&self, reactor: &Reactor, factory: Rc<dyn ClientFactory>) -> Connector;
}

/// Parses the arguments of one endpoint prefix into custom endpoints.
pub trait EndpointParser: 'static {
    /// A server endpoint, or [`EndpointError::WrongSide`] when the type has none.
    fn parse_server(
        &self,
        args: EndpointArgs,
    ) -> Result<Rc<dyn CustomServerEndpoint>, EndpointError> {
        Err(EndpointError::WrongSide {
            kind: args.kind,
            side: "server",
        })
    }
    /// A client endpoint, or [`EndpointError::WrongSide`].
    fn parse_client(
        &self,
        args: EndpointArgs,
    ) -> Result<Rc<dyn CustomClientEndpoint>, EndpointError> {
        Err(EndpointError::WrongSide {
            kind: args.kind,
            side: "client",
        })
    }
}

/// Prefixes handled here, which a registry refuses to override.
pub const BUILTIN_PREFIXES: &[&str] = &["tcp", "tcp6", "unix", "systemd", "stdio"];

/// Parsers for prefixes beyond the built-in ones.
#[derive(Default, Clone)]
pub struct EndpointRegistry {
    parsers: HashMap<String, Rc<dyn EndpointParser>>,
}

impl fmt::Debug for EndpointRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.parsers.keys().collect();
        keys.sort();
        f.debug_struct("EndpointRegistry")
            .field("prefixes", &keys)
            .finish()
    }
}

thread_local! {
    static DEFAULT_REGISTRY: RefCell<EndpointRegistry> = RefCell::new(EndpointRegistry::default());
}

/// Registers `parser` for `prefix` in this thread's default registry.
/// Returns false (and changes nothing) for a built-in prefix.
pub fn register_parser(prefix: &str, parser: Rc<dyn EndpointParser>) -> bool {
    DEFAULT_REGISTRY.with(|r| r.borrow_mut().register(prefix, parser))
}

impl EndpointRegistry {
    /// An empty registry (built-in types only).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a parser; false for a built-in prefix.
    pub fn register(&mut self, prefix: &str, parser: Rc<dyn EndpointParser>) -> bool {
        if BUILTIN_PREFIXES.contains(&prefix) {
            return false;
        }
        self.parsers.insert(prefix.to_string(), parser);
        true
    }

    /// Parses a server endpoint string.
    pub fn parse_server(&self, s: &str) -> Result<ServerEndpoint, EndpointError> {
        let args = EndpointArgs::parse(s)?;
        match args.kind.as_str() {
            "tcp" | "tcp6" | "unix" | "systemd" | "stdio" => ServerEndpoint::from_args(args),
            other => match self.parsers.get(other) {
                Some(p) => Ok(ServerEndpoint::Custom(p.parse_server(args)?)),
                None => Err(EndpointError::UnknownType(other.to_string())),
            },
        }
    }

    /// Parses a client endpoint string.
    pub fn parse_client(&self, s: &str) -> Result<ClientEndpoint, EndpointError> {
        let args = EndpointArgs::parse(s)?;
        match args.kind.as_str() {
            "tcp" | "tcp6" | "unix" => ClientEndpoint::from_args(args),
            "systemd" | "stdio" => Err(EndpointError::WrongSide {
                kind: args.kind,
                side: "client",
            }),
            other => match self.parsers.get(other) {
                Some(p) => Ok(ClientEndpoint::Custom(p.parse_client(args)?)),
                None => Err(EndpointError::UnknownType(other.to_string())),
            },
        }
    }
}

/// Parses a server endpoint string (built-ins plus this thread's registered parsers).
pub fn server_from_string(s: &str) -> Result<ServerEndpoint, EndpointError> {
    DEFAULT_REGISTRY.with(|r| r.borrow().parse_server(s))
}

/// Parses a client endpoint string (built-ins plus this thread's registered parsers).
pub fn client_from_string(s: &str) -> Result<ClientEndpoint, EndpointError> {
    DEFAULT_REGISTRY.with(|r| r.borrow().parse_client(s))
}

// ---- server endpoints ----

/// A parsed server endpoint.
#[derive(Debug, Clone)]
pub enum ServerEndpoint {
    /// `tcp:` / `tcp6:`.
    Tcp {
        /// Port (0: any free one).
        port: u16,
        /// Address to bind (default: all interfaces of the family).
        interface: Option<IpAddr>,
        /// Accept-queue length.
        backlog: Option<i32>,
        /// True for `tcp6:`.
        ipv6: bool,
    },
    /// `unix:`.
    Unix {
        /// Socket path.
        path: UnixPath,
        /// File mode.
        mode: Option<u32>,
        /// Accept-queue length.
        backlog: Option<i32>,
    },
    /// `systemd:` socket activation.
    Systemd {
        /// Expected family.
        domain: SystemdDomain,
        /// Index among the passed descriptors.
        index: usize,
    },
    /// `stdio:`: one connection over this program's stdin/stdout.
    Stdio,
    /// A type added through [`EndpointParser`].
    Custom(Rc<dyn CustomServerEndpoint>),
}

impl PartialEq for ServerEndpoint {
    fn eq(&self, other: &Self) -> bool {
        use ServerEndpoint::*;
        match (self, other) {
            (
                Tcp {
                    port: a,
                    interface: b,
                    backlog: c,
                    ipv6: d,
                },
                Tcp {
                    port: e,
                    interface: f,
                    backlog: g,
                    ipv6: h,
                },
            ) => a == e && b == f && c == g && d == h,
            (
                Unix {
                    path: a,
                    mode: b,
                    backlog: c,
                },
                Unix {
                    path: d,
                    mode: e,
                    backlog: f,
                },
            ) => a == d && b == e && c == f,
            (
                Systemd {
                    domain: a,
                    index: b,
                },
                Systemd {
                    domain: c,
                    index: d,
                },
            ) => a == c && b == d,
            (Stdio, Stdio) => true,
            (Custom(a), Custom(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl fmt::Display for ServerEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerEndpoint::Tcp {
                port,
                interface,
                backlog,
                ipv6,
            } => {
                write!(f, "{}:{port}", if *ipv6 { "tcp6" } else { "tcp" })?;
                if let Some(i) = interface {
                    write!(f, ":interface={}", escape(&i.to_string()))?;
                }
                if let Some(b) = backlog {
                    write!(f, ":backlog={b}")?;
                }
                Ok(())
            }
            ServerEndpoint::Unix {
                path,
                mode,
                backlog,
            } => {
                write!(f, "unix:{}", fmt_unix_path(path))?;
                if let Some(m) = mode {
                    write!(f, ":mode={m:o}")?;
                }
                if let Some(b) = backlog {
                    write!(f, ":backlog={b}")?;
                }
                Ok(())
            }
            ServerEndpoint::Systemd { domain, index } => {
                write!(f, "systemd:domain={domain}:index={index}")
            }
            ServerEndpoint::Stdio => f.write_str("stdio:"),
            ServerEndpoint::Custom(c) => fmt::Display::fmt(c, f),
        }
    }
}

/// Why listening on an endpoint failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// A socket error.
    #[error("could not listen on {endpoint}: {source}")]
    Io {
        /// The endpoint, as a string.
        endpoint: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A Unix socket problem.
    #[error("could not listen on {endpoint}: {source}")]
    Unix {
        /// The endpoint, as a string.
        endpoint: String,
        /// What went wrong.
        #[source]
        source: UnixError,
    },
    /// Socket activation problems.
    #[error("socket activation: {0}")]
    Systemd(#[from] SystemdError),
    /// A custom endpoint's own error.
    #[error("{0}")]
    Other(String),
}

impl ServerEndpoint {
    fn from_args(mut args: EndpointArgs) -> Result<ServerEndpoint, EndpointError> {
        let mut pos = 0;
        let ep = match args.kind.as_str() {
            "tcp" | "tcp6" => {
                let ipv6 = args.kind == "tcp6";
                let port = args.take("port", &mut pos).ok_or(EndpointError::Missing {
                    kind: args.kind.clone(),
                    what: "a port",
                })?;
                let port = parse_port("port", &port)?;
                let interface = match args.take("interface", &mut pos) {
                    Some(v) => {
                        let ip: IpAddr = if ipv6 {
                            v.parse::<Ipv6Addr>()
                                .map(IpAddr::V6)
                                .map_err(|_| invalid("interface", "an IPv6 address", &v))?
                        } else {
                            v.parse::<Ipv4Addr>()
                                .map(IpAddr::V4)
                                .map_err(|_| invalid("interface", "an IPv4 address", &v))?
                        };
                        Some(ip)
                    }
                    None => None,
                };
                let backlog = match args.take("backlog", &mut pos) {
                    Some(v) => Some(parse_backlog(&v)?),
                    None => None,
                };
                ServerEndpoint::Tcp {
                    port,
                    interface,
                    backlog,
                    ipv6,
                }
            }
            "unix" => {
                let path = match args.take_key("address") {
                    Some(p) => p,
                    None => args.take("path", &mut pos).ok_or(EndpointError::Missing {
                        kind: "unix".into(),
                        what: "a path",
                    })?,
                };
                let path = parse_unix_path(&path)?;
                let mode = match args.take("mode", &mut pos) {
                    Some(v) => Some(parse_mode(&v)?),
                    None => None,
                };
                let backlog = match args.take("backlog", &mut pos) {
                    Some(v) => Some(parse_backlog(&v)?),
                    None => None,
                };
                // Twisted's lockfile flag: accepted for compatibility; stale
                // sockets are detected by connecting instead.
                if let Some(v) = args.take_key("lockfile") {
                    if v != "0" && v != "1" {
                        return Err(invalid("lockfile", "0 or 1", &v));
                    }
                }
                ServerEndpoint::Unix {
                    path,
                    mode,
                    backlog,
                }
            }
            "systemd" => {
                let d = args
                    .take("domain", &mut pos)
                    .ok_or(EndpointError::Missing {
                        kind: "systemd".into(),
                        what: "a domain (INET, INET6 or UNIX)",
                    })?;
                let domain = match d.as_str() {
                    "INET" => SystemdDomain::Inet,
                    "INET6" => SystemdDomain::Inet6,
                    "UNIX" => SystemdDomain::Unix,
                    _ => return Err(invalid("domain", "INET, INET6 or UNIX", &d)),
                };
                let i = args.take("index", &mut pos).ok_or(EndpointError::Missing {
                    kind: "systemd".into(),
                    what: "an index",
                })?;
                let index = if !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()) {
                    i.parse::<usize>()
                        .map_err(|_| invalid("index", "a number", &i))?
                } else {
                    return Err(invalid("index", "a number", &i));
                };
                if index > 1000 {
                    return Err(invalid("index", "a number below 1000", &i));
                }
                ServerEndpoint::Systemd { domain, index }
            }
            "stdio" => ServerEndpoint::Stdio,
            other => return Err(EndpointError::UnknownType(other.to_string())),
        };
        args.finish(pos)?;
        Ok(ep)
    }

    /// Starts listening with `factory`.
    pub fn listen(
        &self,
        reactor: &Reactor,
        factory: Rc<dyn Factory>,
    ) -> Result<Box<dyn ListeningHandle>, ListenError> {
        let endpoint = self.to_string();
        match self {
            ServerEndpoint::Tcp {
                port,
                interface,
                backlog,
                ipv6,
            } => {
                let ip = interface.unwrap_or(if *ipv6 {
                    IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                });
                let opts = TcpListenOptions {
                    backlog: backlog.unwrap_or(TcpListenOptions::default().backlog),
                    ..TcpListenOptions::default()
                };
                let p = reactor
                    .listen_tcp_with(SocketAddr::new(ip, *port), factory, opts)
                    .map_err(|source| ListenError::Io { endpoint, source })?;
                Ok(Box::new(p))
            }
            ServerEndpoint::Unix {
                path,
                mode,
                backlog,
            } => {
                let opts = UnixListenOptions {
                    mode: *mode,
                    backlog: backlog.unwrap_or(UnixListenOptions::default().backlog),
                };
                let p = reactor
                    .listen_unix(path.clone(), factory, opts)
                    .map_err(|source| ListenError::Unix { endpoint, source })?;
                Ok(Box::new(p))
            }
            ServerEndpoint::Systemd { domain, index } => {
                let sockets = SystemdSockets::from_env()?;
                sockets.listen(reactor, *index, *domain, factory)
            }
            ServerEndpoint::Stdio => {
                let protocol = factory.build_protocol(&Address::Stdio).ok_or_else(|| {
                    ListenError::Other("the factory refused the stdio connection".into())
                })?;
                let t = reactor
                    .stdio(protocol)
                    .map_err(|source| ListenError::Io { endpoint, source })?;
                Ok(Box::new(StdioListening(t)))
            }
            ServerEndpoint::Custom(c) => c.listen(reactor, factory),
        }
    }
}

// ---- systemd socket activation ----

/// Socket-activation problems.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SystemdError {
    /// `LISTEN_PID`/`LISTEN_FDS` are missing or meant for another process.
    #[error("no sockets were passed to this process (LISTEN_PID/LISTEN_FDS not set for pid {0})")]
    NotActivated(u32),
    /// A variable does not parse.
    #[error("{var} must be a number, got '{got}'")]
    BadVariable {
        /// The variable.
        var: &'static str,
        /// Its value.
        got: String,
    },
    /// The index is past the passed descriptors.
    #[error("socket index {index} out of range: {count} sockets were passed")]
    NoSuchIndex {
        /// Asked for.
        index: usize,
        /// Available.
        count: usize,
    },
    /// The descriptor is of another family than the endpoint says.
    #[error("passed socket {index} is not of domain {expected}")]
    WrongDomain {
        /// Its index.
        index: usize,
        /// The family the endpoint asked for.
        expected: SystemdDomain,
    },
    /// Adopting the socket failed.
    #[error("could not adopt passed socket: {0}")]
    Adopt(String),
}

/// Descriptors passed by systemd (`LISTEN_FDS` of them from fd 3, for
/// the process in `LISTEN_PID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemdSockets {
    /// The first descriptor (3 under systemd).
    pub start: RawFd,
    /// How many were passed.
    pub count: usize,
}

impl SystemdSockets {
    /// Reads `LISTEN_PID` and `LISTEN_FDS` from the environment.
    pub fn from_env() -> Result<SystemdSockets, SystemdError> {
        let pid = std::env::var("LISTEN_PID").ok();
        let fds = std::env::var("LISTEN_FDS").ok();
        Self::from_vars(pid.as_deref(), fds.as_deref(), std::process::id())
    }

    /// Interprets the two variables for process `my_pid`.
    pub fn from_vars(
        listen_pid: Option<&str>,
        listen_fds: Option<&str>,
        my_pid: u32,
    ) -> Result<SystemdSockets, SystemdError> {
        let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
            return Err(SystemdError::NotActivated(my_pid));
        };
        let pid: u32 = pid.parse().map_err(|_| SystemdError::BadVariable {
            var: "LISTEN_PID",
            got: pid.to_string(),
        })?;
        if pid != my_pid {
            return Err(SystemdError::NotActivated(my_pid));
        }
        let count: usize = fds.parse().map_err(|_| SystemdError::BadVariable {
            var: "LISTEN_FDS",
            got: fds.to_string(),
        })?;
        Ok(SystemdSockets { start: 3, count })
    }

    /// Listens on passed socket `index`, checking its family. The passed
    /// descriptor is duplicated, so it stays valid for other users.
    pub fn listen(
        &self,
        reactor: &Reactor,
        index: usize,
        domain: SystemdDomain,
        factory: Rc<dyn Factory>,
    ) -> Result<Box<dyn ListeningHandle>, ListenError> {
        if index >= self.count {
            return Err(SystemdError::NoSuchIndex {
                index,
                count: self.count,
            }
            .into());
        }
        let fd = self.start + index as RawFd;
        let actual =
            crate::sys::socket_domain(fd).map_err(|e| SystemdError::Adopt(e.to_string()))?;
        let expected = match domain {
            SystemdDomain::Inet => libc::AF_INET,
            SystemdDomain::Inet6 => libc::AF_INET6,
            SystemdDomain::Unix => libc::AF_UNIX,
        };
        if actual != expected {
            return Err(SystemdError::WrongDomain {
                index,
                expected: domain,
            }
            .into());
        }
        let dup = crate::sys::dup_cloexec_at_least(fd, 3)
            .map_err(|e| SystemdError::Adopt(e.to_string()))?;
        reactor
            .adopt_listener(dup, factory)
            .map_err(|e| SystemdError::Adopt(e.to_string()).into())
    }
}

impl Reactor {
    /// Serves an inherited listening socket (TCP or Unix, detected from the
    /// descriptor), as systemd socket activation or a supervisor passes them.
    pub fn adopt_listener(
        &self,
        fd: OwnedFd,
        factory: Rc<dyn Factory>,
    ) -> io::Result<Box<dyn ListeningHandle>> {
        let domain = crate::sys::socket_domain(fd.as_raw_fd())?;
        match domain {
            libc::AF_INET | libc::AF_INET6 => {
                let l = std::net::TcpListener::from(fd);
                Ok(Box::new(self.adopt_tcp_listener(l, factory)?))
            }
            libc::AF_UNIX => {
                let l = std::os::unix::net::UnixListener::from(fd);
                self.adopt_unix_listener(l, factory)
                    .map(|p| Box::new(p) as Box<dyn ListeningHandle>)
                    .map_err(|e| io::Error::other(e.to_string()))
            }
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("descriptor is a socket of unsupported family {other}"),
            )),
        }
    }
}

// ---- client endpoints ----

/// A parsed client endpoint.
#[derive(Debug, Clone)]
pub enum ClientEndpoint {
    /// `tcp:host=H:port=P`. A host name is resolved and its addresses raced
    /// (happy eyeballs); an IP literal is connected to directly.
    Tcp {
        /// Host name or IP literal.
        host: String,
        /// Port.
        port: u16,
        /// Give up after this long.
        timeout: Option<Duration>,
        /// Local address to bind.
        bind_address: Option<IpAddr>,
    },
    /// `unix:path=P`.
    Unix {
        /// Socket path.
        path: UnixPath,
        /// Accepted for parity with TCP.
        timeout: Option<Duration>,
    },
    /// A type added through [`EndpointParser`].
    Custom(Rc<dyn CustomClientEndpoint>),
}

impl PartialEq for ClientEndpoint {
    fn eq(&self, other: &Self) -> bool {
        use ClientEndpoint::*;
        match (self, other) {
            (
                Tcp {
                    host: a,
                    port: b,
                    timeout: c,
                    bind_address: d,
                },
                Tcp {
                    host: e,
                    port: f,
                    timeout: g,
                    bind_address: h,
                },
            ) => a == e && b == f && c == g && d == h,
            (
                Unix {
                    path: a,
                    timeout: b,
                },
                Unix {
                    path: c,
                    timeout: d,
                },
            ) => a == c && b == d,
            (Custom(a), Custom(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

impl fmt::Display for ClientEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientEndpoint::Tcp {
                host,
                port,
                timeout,
                bind_address,
            } => {
                write!(f, "tcp:host={}:port={port}", escape(host))?;
                if let Some(t) = timeout {
                    write!(f, ":timeout={}", fmt_timeout(*t))?;
                }
                if let Some(b) = bind_address {
                    write!(f, ":bindAddress={}", escape(&b.to_string()))?;
                }
                Ok(())
            }
            ClientEndpoint::Unix { path, timeout } => {
                write!(f, "unix:path={}", fmt_unix_path(path))?;
                if let Some(t) = timeout {
                    write!(f, ":timeout={}", fmt_timeout(*t))?;
                }
                Ok(())
            }
            ClientEndpoint::Custom(c) => fmt::Display::fmt(c, f),
        }
    }
}

impl ClientEndpoint {
    fn from_args(mut args: EndpointArgs) -> Result<ClientEndpoint, EndpointError> {
        let mut pos = 0;
        let ep = match args.kind.as_str() {
            "tcp" | "tcp6" => {
                let host = args.take("host", &mut pos).ok_or(EndpointError::Missing {
                    kind: args.kind.clone(),
                    what: "a host",
                })?;
                if host.is_empty() {
                    return Err(invalid("host", "a host name or address", &host));
                }
                let port = args.take("port", &mut pos).ok_or(EndpointError::Missing {
                    kind: args.kind.clone(),
                    what: "a port",
                })?;
                let port = parse_port("port", &port)?;
                let timeout = match args.take("timeout", &mut pos) {
                    Some(v) => Some(parse_timeout(&v)?),
                    None => None,
                };
                let bind_address = match args.take("bindAddress", &mut pos) {
                    Some(v) => Some(
                        v.parse::<IpAddr>()
                            .map_err(|_| invalid("bindAddress", "an IP address", &v))?,
                    ),
                    None => None,
                };
                ClientEndpoint::Tcp {
                    host,
                    port,
                    timeout,
                    bind_address,
                }
            }
            "unix" => {
                let path = args.take("path", &mut pos).ok_or(EndpointError::Missing {
                    kind: "unix".into(),
                    what: "a path",
                })?;
                let path = parse_unix_path(&path)?;
                let timeout = match args.take("timeout", &mut pos) {
                    Some(v) => Some(parse_timeout(&v)?),
                    None => None,
                };
                // Twisted's checkPID flag: accepted, nothing to check without lock files.
                if let Some(v) = args.take_key("checkPID") {
                    if v != "0" && v != "1" {
                        return Err(invalid("checkPID", "0 or 1", &v));
                    }
                }
                ClientEndpoint::Unix { path, timeout }
            }
            other => return Err(EndpointError::UnknownType(other.to_string())),
        };
        args.finish(pos)?;
        Ok(ep)
    }

    /// Connects with `factory`, resolving names with this thread's resolver
    /// ([`crate::resolve::set_thread_resolver`]; default [`crate::resolve::ThreadResolver`]).
    pub fn connect(&self, reactor: &Reactor, factory: Rc<dyn ClientFactory>) -> Connector {
        self.connect_with_resolver(reactor, factory, crate::resolve::thread_resolver())
    }

    /// Connects with `factory`, resolving names with `resolver`.
    pub fn connect_with_resolver(
        &self,
        reactor: &Reactor,
        factory: Rc<dyn ClientFactory>,
        resolver: Rc<dyn Resolver>,
    ) -> Connector {
        match self {
            ClientEndpoint::Tcp {
                host,
                port,
                timeout,
                bind_address,
            } => {
                let opts = ConnectOptions {
                    timeout: *timeout,
                    bind_address: bind_address.map(|ip| SocketAddr::new(ip, 0)),
                };
                let literal = host.trim_start_matches('[').trim_end_matches(']');
                if let Ok(ip) = literal.parse::<IpAddr>() {
                    return reactor.connect_tcp(SocketAddr::new(ip, *port), factory, opts);
                }
                HostnameEndpoint {
                    host: host.clone(),
                    port: *port,
                    options: opts,
                    resolver,
                    stagger: HAPPY_EYEBALLS_STAGGER,
                }
                .connect(reactor, factory)
            }
            ClientEndpoint::Unix { path, timeout } => {
                reactor.connect_unix(path.clone(), factory, *timeout)
            }
            ClientEndpoint::Custom(c) => c.connect(reactor, factory),
        }
    }
}

// ---- happy eyeballs ----

/// Delay between starting connection attempts to successive addresses (RFC 8305).
pub const HAPPY_EYEBALLS_STAGGER: Duration = Duration::from_millis(300);

/// Connects to a host name: resolves it, then races its addresses, starting
/// one attempt every `stagger` (or at once when the previous one failed);
/// the first to connect wins and the others are cancelled.
///
/// ```no_run
/// use std::rc::Rc;
/// use torsion_core::{factory_fn, Protocol, Reactor, endpoint::HostnameEndpoint};
/// struct Quiet;
/// impl Protocol for Quiet { fn data_received(&mut self, _: &[u8]) {} }
/// let reactor = Reactor::new()?;
/// let connector = HostnameEndpoint::new("localhost", 8080).connect(&reactor, factory_fn(|| Quiet));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct HostnameEndpoint {
    /// The name.
    pub host: String,
    /// The port.
    pub port: u16,
    /// Per-attempt options (timeout, bind address).
    pub options: ConnectOptions,
    /// How names are resolved.
    pub resolver: Rc<dyn Resolver>,
    /// Delay between attempts.
    pub stagger: Duration,
}

impl fmt::Debug for HostnameEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostnameEndpoint({}:{})", self.host, self.port)
    }
}

impl HostnameEndpoint {
    /// With this thread's resolver, 30 s timeout and 300 ms stagger.
    pub fn new(host: &str, port: u16) -> Self {
        HostnameEndpoint {
            host: host.to_string(),
            port,
            options: ConnectOptions::default(),
            resolver: crate::resolve::thread_resolver(),
            stagger: HAPPY_EYEBALLS_STAGGER,
        }
    }

    /// Starts the race. The factory sees one connection (or one failure).
    pub fn connect(&self, reactor: &Reactor, factory: Rc<dyn ClientFactory>) -> Connector {
        let imp = Rc::new(HappyConnector {
            reactor: reactor.downgrade(),
            ep: self.clone(),
            factory,
            race: RefCell::new(None),
        });
        let c = Connector::new(imp);
        c.connect();
        c
    }
}

/// Interleaves address families, keeping the resolver's order within each (RFC 8305 §4).
pub fn interleave_families(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first().copied() else {
        return addrs;
    };
    let (mut a, mut b): (VecDeque<SocketAddr>, VecDeque<SocketAddr>) = addrs
        .into_iter()
        .partition(|x| x.is_ipv6() == first.is_ipv6());
    let mut out = Vec::with_capacity(a.len() + b.len());
    loop {
        match (a.pop_front(), b.pop_front()) {
            (None, None) => break,
            (x, y) => {
                out.extend(x);
                out.extend(y);
            }
        }
    }
    out
}

struct Race {
    outer: Connector,
    pending: RefCell<VecDeque<SocketAddr>>,
    attempts: RefCell<Vec<Connector>>,
    in_flight: std::cell::Cell<usize>,
    finished: std::cell::Cell<bool>,
    timer: RefCell<Option<DelayedCall>>,
    last_error: RefCell<Option<Failure>>,
}

struct HappyConnector {
    reactor: Weak<Inner>,
    ep: HostnameEndpoint,
    factory: Rc<dyn ClientFactory>,
    /// Weak: the race is kept alive by its attempts, so nothing leaks once it ends.
    race: RefCell<Option<Weak<Race>>>,
}

/// The factory each racing attempt uses.
struct AttemptFactory {
    race: Rc<Race>,
    user: Rc<dyn ClientFactory>,
    reactor: Weak<Inner>,
    ep: HostnameEndpoint,
}

/// Wraps the winner's protocol to record the outer connector's transport.
struct Winner {
    inner: Box<dyn Protocol>,
    outer: Connector,
}

impl Protocol for Winner {
    fn connection_made(&mut self, t: Transport) {
        self.outer
            .set_state(ConnectorState::Connected, Some(t.clone()));
        self.inner.connection_made(t)
    }
    fn data_received(&mut self, data: &[u8]) {
        self.inner.data_received(data)
    }
    fn connection_lost(&mut self, reason: Failure) {
        self.inner.connection_lost(reason)
    }
    fn half_closeable(&self) -> bool {
        self.inner.half_closeable()
    }
    fn read_connection_lost(&mut self) {
        self.inner.read_connection_lost()
    }
    fn write_connection_lost(&mut self) {
        self.inner.write_connection_lost()
    }
}

impl Race {
    fn finish_failed(&self, user: &Rc<dyn ClientFactory>, reason: Failure) {
        if self.finished.replace(true) {
            return;
        }
        if let Some(t) = self.timer.borrow_mut().take() {
            let _ = t.cancel();
        }
        self.attempts.borrow_mut().clear();
        self.outer.set_state(ConnectorState::Disconnected, None);
        if let Err(p) = catch(|| user.client_connection_failed(&self.outer, reason)) {
            tracing::error!(failure = %p, "client_connection_failed panicked");
        }
        self.outer.stop_using_if_idle(&**user);
    }

    /// Stops every attempt still connecting (the winner, if any, is past that).
    fn cancel_others(&self) {
        if let Some(t) = self.timer.borrow_mut().take() {
            let _ = t.cancel();
        }
        self.pending.borrow_mut().clear();
        // Taking the list also breaks the race -> attempt -> factory -> race cycle.
        let others: Vec<Connector> = std::mem::take(&mut *self.attempts.borrow_mut());
        for c in others {
            if c.state() == ConnectorState::Connecting {
                c.stop_connecting();
            }
        }
    }
}

fn start_next(race: &Rc<Race>, reactor: &Reactor, af: &Rc<AttemptFactory>) {
    if race.finished.get() {
        return;
    }
    let Some(addr) = race.pending.borrow_mut().pop_front() else {
        return;
    };
    race.in_flight.set(race.in_flight.get() + 1);
    tracing::debug!(%addr, host = %af.ep.host, "happy eyeballs: trying");
    let c = reactor.connect_tcp(addr, af.clone(), af.ep.options.clone());
    race.attempts.borrow_mut().push(c);
    if race.finished.get() || race.pending.borrow().is_empty() {
        return;
    }
    let weak = Rc::downgrade(race);
    let af2 = af.clone();
    let wr = reactor.downgrade();
    let call = reactor.call_later(af.ep.stagger, move || {
        if let (Some(race), Some(inner)) = (weak.upgrade(), wr.upgrade()) {
            start_next(&race, &Reactor::from_inner(inner), &af2);
        }
    });
    if let Some(old) = race.timer.borrow_mut().replace(call) {
        let _ = old.cancel();
    }
}

impl Factory for AttemptFactory {
    fn build_protocol(&self, peer: &Address) -> Option<Box<dyn Protocol>> {
        let race = &self.race;
        if race.finished.replace(true) {
            return None; // a late loser: close it
        }
        tracing::debug!(peer = %peer, host = %self.ep.host, "happy eyeballs: connected");
        race.cancel_others();
        let p = self.user.build_protocol(peer)?;
        Some(Box::new(Winner {
            inner: p,
            outer: race.outer.clone(),
        }))
    }
}

impl ClientFactory for AttemptFactory {
    fn client_connection_failed(&self, _connector: &Connector, reason: Failure) {
        let race = self.race.clone();
        if race.finished.get() {
            return;
        }
        race.in_flight.set(race.in_flight.get().saturating_sub(1));
        *race.last_error.borrow_mut() = Some(reason.clone());
        if race.pending.borrow().is_empty() {
            if race.in_flight.get() == 0 {
                race.finish_failed(&self.user, reason);
            }
            return;
        }
        // An attempt failed: start the next one now rather than at the stagger.
        if let Some(inner) = self.reactor.upgrade() {
            let reactor = Reactor::from_inner(inner);
            if let Some(t) = race.timer.borrow_mut().take() {
                let _ = t.cancel();
            }
            // Re-enter through call_soon: we are inside the failed attempt's callback.
            let weak = Rc::downgrade(&race);
            let af = Rc::new(AttemptFactory {
                race: race.clone(),
                user: self.user.clone(),
                reactor: self.reactor.clone(),
                ep: self.ep.clone(),
            });
            reactor.clone().call_soon(move || {
                if let Some(race) = weak.upgrade() {
                    start_next(&race, &reactor, &af);
                }
            });
        }
    }

    fn client_connection_lost(&self, _connector: &Connector, reason: Failure) {
        let race = &self.race;
        race.outer.set_state(ConnectorState::Disconnected, None);
        if let Err(p) = catch(|| self.user.client_connection_lost(&race.outer, reason)) {
            tracing::error!(failure = %p, "client_connection_lost panicked");
        }
        race.outer.stop_using_if_idle(&*self.user);
    }
}

impl ConnectorImpl for HappyConnector {
    fn connect(&self, me: &Connector) {
        let Some(inner) = self.reactor.upgrade() else {
            return;
        };
        let reactor = Reactor::from_inner(inner);
        if me.state() != ConnectorState::Disconnected {
            return;
        }
        me.set_state(ConnectorState::Connecting, None);
        me.start_using(&*self.factory);
        if let Err(f) = catch(|| self.factory.started_connecting(me)) {
            tracing::error!(failure = %f, "started_connecting panicked");
        }
        let race = Rc::new(Race {
            outer: me.clone(),
            pending: RefCell::new(VecDeque::new()),
            attempts: RefCell::new(Vec::new()),
            in_flight: std::cell::Cell::new(0),
            finished: std::cell::Cell::new(false),
            timer: RefCell::new(None),
            last_error: RefCell::new(None),
        });
        *self.race.borrow_mut() = Some(Rc::downgrade(&race));
        let af = Rc::new(AttemptFactory {
            race: race.clone(),
            user: self.factory.clone(),
            reactor: self.reactor.clone(),
            ep: self.ep.clone(),
        });
        let user = self.factory.clone();
        let d = self
            .ep
            .resolver
            .resolve(&reactor, &self.ep.host, self.ep.port);
        let race2 = race.clone();
        d.finally(move |r| {
            if race2.finished.get() {
                return;
            }
            match r {
                Ok(addrs) if !addrs.is_empty() => {
                    *race2.pending.borrow_mut() = interleave_families(addrs).into();
                    start_next(&race2, &reactor, &af);
                }
                Ok(_) => race2.finish_failed(
                    &user,
                    Failure::new(ConnectionError::DnsLookup {
                        host: af.ep.host.clone(),
                        message: "no addresses".into(),
                    }),
                ),
                Err(f) => race2.finish_failed(&user, f),
            }
        });
    }

    fn stop_connecting(&self) {
        let Some(race) = self.race.borrow().as_ref().and_then(Weak::upgrade) else {
            return;
        };
        if race.finished.get() {
            return;
        }
        race.cancel_others();
        race.finish_failed(&self.factory, Failure::new(ConnectionError::Cancelled));
    }

    fn destination(&self) -> Address {
        Address::Memory(format!("{}:{}", self.ep.host, self.ep.port))
    }
}
