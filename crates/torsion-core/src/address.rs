//! Addresses of the two ends of a transport.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Where a transport's end is: what `Transport::peer()` and `host()` return.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Address {
    /// A TCP endpoint.
    Tcp(SocketAddr),
    /// A UDP endpoint.
    Udp(SocketAddr),
    /// A Unix socket with a path (`None`: unnamed, as a client's end usually is).
    Unix(Option<PathBuf>),
    /// A Linux abstract-namespace Unix socket (the name without the leading NUL).
    UnixAbstract(Vec<u8>),
    /// A child process, by pid.
    Process(u32),
    /// The program's own standard input and output.
    Stdio,
    /// An in-memory transport (tests); the label names the end.
    Memory(String),
}

impl Address {
    /// The socket address, for TCP and UDP.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self {
            Address::Tcp(a) | Address::Udp(a) => Some(*a),
            _ => None,
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(a) => write!(f, "tcp:{a}"),
            Address::Udp(a) => write!(f, "udp:{a}"),
            Address::Unix(Some(p)) => write!(f, "unix:{}", p.display()),
            Address::Unix(None) => write!(f, "unix:(unnamed)"),
            Address::UnixAbstract(n) => write!(f, "unix:@{}", String::from_utf8_lossy(n)),
            Address::Process(pid) => write!(f, "process:{pid}"),
            Address::Stdio => write!(f, "stdio"),
            Address::Memory(l) => write!(f, "memory:{l}"),
        }
    }
}
