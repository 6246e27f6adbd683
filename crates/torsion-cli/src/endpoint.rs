//! A minimal parser for `tcp:` listening endpoints.
//!
//! Kept to this one function on purpose: the general endpoint grammar
//! (tcp6, ssl, unix, systemd) belongs in torsion-core, and this is the
//! single place to swap for it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Parses `tcp:PORT`, `tcp:PORT:interface=ADDR`, `tcp:port=PORT[:interface=ADDR]`
/// (Twisted's grammar; colons inside a value are escaped as `\:`, e.g.
/// `tcp:8080:interface=\:\:1`). Without an interface, all IPv4 interfaces.
pub fn parse_listen(spec: &str) -> Result<SocketAddr, String> {
    let fields = split_escaped(spec);
    let (kind, rest) = fields
        .split_first()
        .ok_or_else(|| format!("empty endpoint {spec:?}"))?;
    match kind.as_str() {
        "tcp" => {}
        "ssl" | "tls" => {
            return Err(format!(
                "endpoint {spec:?}: ssl: endpoints are not available in this build (no TLS support yet)"
            ))
        }
        other => {
            return Err(format!(
                "endpoint {spec:?}: unsupported kind {other:?} (expected tcp:PORT[:interface=ADDR])"
            ))
        }
    }
    let mut port: Option<u16> = None;
    let mut iface: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    for (i, f) in rest.iter().enumerate() {
        let (key, value) = match f.split_once('=') {
            Some((k, v)) => (k, v),
            None if i == 0 => ("port", f.as_str()),
            None => return Err(format!("endpoint {spec:?}: unexpected {f:?}")),
        };
        match key {
            "port" => {
                port = Some(
                    value
                        .parse()
                        .map_err(|_| format!("endpoint {spec:?}: bad port {value:?}"))?,
                )
            }
            "interface" => {
                iface = value
                    .parse()
                    .map_err(|_| format!("endpoint {spec:?}: bad interface {value:?}"))?
            }
            "backlog" => {}
            _ => return Err(format!("endpoint {spec:?}: unknown option {key:?}")),
        }
    }
    let port = port.ok_or_else(|| format!("endpoint {spec:?}: missing port"))?;
    Ok(SocketAddr::new(iface, port))
}

/// Splits on `:` except where escaped as `\:`.
fn split_escaped(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(n), Some(l)) = (chars.next(), out.last_mut()) {
                    l.push(n);
                }
            }
            ':' => out.push(String::new()),
            c => {
                if let Some(l) = out.last_mut() {
                    l.push(c)
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            parse_listen("tcp:8080").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen("tcp:0:interface=127.0.0.1").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(
            parse_listen("tcp:port=81:interface=127.0.0.1").unwrap(),
            "127.0.0.1:81".parse().unwrap()
        );
        assert_eq!(
            parse_listen(r"tcp:8080:interface=\:\:1").unwrap(),
            "[::1]:8080".parse().unwrap()
        );
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "tcp",
            "tcp:abc",
            "tcp:70000",
            "tcp:80:interface=nope",
            "tcp:80:colour=red",
            "udp:80",
            "8080",
            "ssl:443",
        ] {
            assert!(parse_listen(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_listen("ssl:443")
            .unwrap_err()
            .contains("not available"));
    }
}
