//! UDP: echo with socat as the peer, connected UDP and ICMP refusal,
//! oversized datagrams, socket options, and multicast received by two
//! listeners at once (sent by Python's `socket` and by us) on loopback.

#[path = "transports_common/mod.rs"]
mod common;

use std::cell::RefCell;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::rc::Rc;
use std::time::Duration;

use common::run_until;
use torsion_core::udp::{DatagramError, DatagramProtocol, DatagramTransport, UdpOptions};
use torsion_core::{Address, Reactor};

const LIMIT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Log {
    got: Vec<(Vec<u8>, Address)>,
    refused: usize,
    too_large: Vec<usize>,
    stopped: bool,
    t: Option<DatagramTransport>,
    echo: bool,
}

struct Proto(Rc<RefCell<Log>>);

impl DatagramProtocol for Proto {
    fn start_protocol(&mut self, t: DatagramTransport) {
        self.0.borrow_mut().t = Some(t);
    }
    fn datagram_received(&mut self, data: &[u8], from: Address) {
        let mut l = self.0.borrow_mut();
        l.got.push((data.to_vec(), from.clone()));
        if l.echo {
            if let Some(t) = &l.t {
                t.write_to(data, &from).unwrap();
            }
        }
    }
    fn connection_refused(&mut self) {
        self.0.borrow_mut().refused += 1;
    }
    fn datagram_too_large(&mut self, size: usize, _from: Address) {
        self.0.borrow_mut().too_large.push(size);
    }
    fn stop_protocol(&mut self) {
        self.0.borrow_mut().stopped = true;
    }
}

fn proto(echo: bool) -> (Box<Proto>, Rc<RefCell<Log>>) {
    let log = Rc::new(RefCell::new(Log {
        echo,
        ..Log::default()
    }));
    (Box::new(Proto(log.clone())), log)
}

#[test]
fn udp_echo_with_socat() {
    let reactor = Reactor::new().unwrap();
    let (p, log) = proto(true);
    let port = reactor
        .listen_udp("127.0.0.1:0".parse().unwrap(), p)
        .unwrap();
    let addr = port.local_addr().unwrap();
    let peer = std::thread::spawn(move || {
        common::run_peer(
            Command::new("socat").args(["-t", "1", "-", &format!("UDP:{addr}")]),
            b"datagram ping",
            Duration::from_secs(10),
        )
    });
    assert!(run_until(&reactor, LIMIT, || peer.is_finished()));
    assert_eq!(peer.join().unwrap(), b"datagram ping");
    assert_eq!(log.borrow().got.len(), 1);
    assert_eq!(log.borrow().got[0].0, b"datagram ping");
    assert!(matches!(log.borrow().got[0].1, Address::Udp(a) if a.ip() == Ipv4Addr::LOCALHOST));
    port.stop_listening();
    assert!(log.borrow().stopped);
    assert!(matches!(
        port.write_to_addr(b"x", addr),
        Err(DatagramError::Closed)
    ));
}

#[test]
fn connected_udp_reports_refusal() {
    // A port that was bound and closed: nobody listens there.
    let dead: SocketAddr = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let reactor = Reactor::new().unwrap();
    let (p, log) = proto(false);
    let t = reactor
        .listen_udp("127.0.0.1:0".parse().unwrap(), p)
        .unwrap();
    assert!(matches!(t.write(b"x"), Err(DatagramError::NotConnected)));
    t.connect(&Address::Udp(dead)).unwrap();
    assert_eq!(t.peer(), Some(Address::Udp(dead)));
    // The first send succeeds; the ICMP port-unreachable comes back as
    // connection_refused (on a later receive or send).
    let _ = t.write(b"anyone?");
    let ok = run_until(&reactor, LIMIT, || {
        if log.borrow().refused == 0 {
            let _ = t.write(b"anyone?");
        }
        log.borrow().refused > 0
    });
    assert!(ok, "no connection_refused");
}

#[test]
fn oversized_datagrams_are_reported_and_refused() {
    let reactor = Reactor::new().unwrap();
    let (p, log) = proto(false);
    let t = reactor
        .listen_udp_with(
            "127.0.0.1:0".parse().unwrap(),
            p,
            UdpOptions {
                max_packet_size: 100,
                ..UdpOptions::default()
            },
        )
        .unwrap();
    let addr = t.local_addr().unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(&[7u8; 500], addr).unwrap();
    sender.send_to(&[8u8; 100], addr).unwrap();
    assert!(run_until(&reactor, LIMIT, || log.borrow().got.len() == 1));
    assert_eq!(log.borrow().too_large, vec![500]);
    assert_eq!(log.borrow().got[0].0, vec![8u8; 100]);
    let err = t.write_to_addr(&[0u8; 101], addr).unwrap_err();
    assert!(matches!(
        err,
        DatagramError::TooLarge {
            size: 101,
            max: 100
        }
    ));
    t.set_max_packet_size(1000);
    assert_eq!(t.max_packet_size(), 1000);
    t.write_to_addr(&[0u8; 101], addr).unwrap();
}

#[test]
fn socket_options() {
    let reactor = Reactor::new().unwrap();
    let (p, _log) = proto(false);
    let t = reactor
        .listen_udp("127.0.0.1:0".parse().unwrap(), p)
        .unwrap();
    assert!(!t.broadcast_allowed().unwrap());
    t.set_broadcast_allowed(true).unwrap();
    assert!(t.broadcast_allowed().unwrap());
    t.set_multicast_ttl(5).unwrap();
    assert_eq!(t.multicast_ttl().unwrap(), 5);
    t.set_multicast_loopback(false).unwrap();
    assert!(!t.multicast_loopback().unwrap());
    t.set_outgoing_interface(Ipv4Addr::LOCALHOST).unwrap();
    assert_eq!(t.outgoing_interface().unwrap(), Ipv4Addr::LOCALHOST);
    // Leaving a group never joined is a typed error, not a panic.
    let err = t.leave_group("239.255.1.1".parse().unwrap(), Some(Ipv4Addr::LOCALHOST));
    assert!(matches!(err, Err(DatagramError::Io(_))));
}

#[test]
fn ipv6_multicast_membership_on_loopback() {
    let reactor = Reactor::new().unwrap();
    let (p, _log) = proto(false);
    let t = match reactor.listen_udp("[::1]:0".parse().unwrap(), p) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("no IPv6 loopback here ({e}); skipping");
            return;
        }
    };
    let lo = unsafe { libc::if_nametoindex(c"lo".as_ptr()) };
    assert!(lo > 0);
    let group: Ipv6Addr = "ff01::4242".parse().unwrap();
    t.join_group_v6(group, lo).unwrap();
    t.set_multicast_ttl(3).unwrap();
    assert_eq!(t.multicast_ttl().unwrap(), 3);
    t.set_outgoing_interface_v6(lo).unwrap();
    t.leave_group_v6(group, lo).unwrap();
    assert!(t.leave_group_v6(group, lo).is_err(), "left twice");
}

const GROUP: Ipv4Addr = Ipv4Addr::new(239, 255, 77, 1);

#[test]
fn two_multicast_listeners_both_receive() {
    let reactor = Reactor::new().unwrap();
    let (p1, log1) = proto(false);
    let (p2, log2) = proto(false);
    // Both bind the group address itself (so only group traffic arrives)
    // with SO_REUSEPORT on one port.
    let a = reactor
        .listen_multiple(SocketAddr::new(GROUP.into(), 0), p1)
        .unwrap();
    let port = a.local_addr().unwrap().port();
    let b = reactor
        .listen_multiple(SocketAddr::new(GROUP.into(), port), p2)
        .unwrap();
    for t in [&a, &b] {
        t.join_group(GROUP.into(), Some(Ipv4Addr::LOCALHOST))
            .unwrap();
    }
    // Python's socket module sends one datagram to the group via loopback.
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton('127.0.0.1'))\n\
         s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 1)\n\
         s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 0)\n\
         s.sendto(b'to the group', ('{GROUP}', {port}))\n"
    );
    let status = Command::new("python3")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(run_until(&reactor, LIMIT, || {
        !log1.borrow().got.is_empty() && !log2.borrow().got.is_empty()
    }));
    assert_eq!(log1.borrow().got[0].0, b"to the group");
    assert_eq!(log2.borrow().got[0].0, b"to the group");

    // Now we send to the group ourselves, with TTL 0, loopback on, out of lo.
    let (p3, _log3) = proto(false);
    let sender = reactor
        .listen_udp("127.0.0.1:0".parse().unwrap(), p3)
        .unwrap();
    sender.set_outgoing_interface(Ipv4Addr::LOCALHOST).unwrap();
    sender.set_multicast_ttl(0).unwrap();
    sender.set_multicast_loopback(true).unwrap();
    sender
        .write_to_addr(b"second", SocketAddr::new(GROUP.into(), port))
        .unwrap();
    assert!(run_until(&reactor, LIMIT, || {
        log1.borrow().got.len() == 2 && log2.borrow().got.len() == 2
    }));

    // After b leaves the group, only a hears the third datagram.
    b.leave_group(GROUP.into(), Some(Ipv4Addr::LOCALHOST))
        .unwrap();
    sender
        .write_to_addr(b"third", SocketAddr::new(GROUP.into(), port))
        .unwrap();
    assert!(run_until(&reactor, LIMIT, || log1.borrow().got.len() == 3));
    run_until(&reactor, Duration::from_millis(200), || false);
    assert_eq!(log2.borrow().got.len(), 2, "b still received after leaving");
}

#[test]
fn udp_over_ipv6_loopback() {
    let reactor = Reactor::new().unwrap();
    let (p, log) = proto(true);
    let t = match reactor.listen_udp("[::1]:0".parse().unwrap(), p) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("no IPv6 loopback here ({e}); skipping");
            return;
        }
    };
    let addr = t.local_addr().unwrap();
    let c = UdpSocket::bind("[::1]:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.send_to(b"six", addr).unwrap();
    assert!(run_until(&reactor, LIMIT, || !log.borrow().got.is_empty()));
    let mut buf = [0u8; 16];
    let (n, from) = c.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"six");
    assert_eq!(from, addr);
}

/// IPv6 multicast does not route over `lo`, so this test re-runs itself in a
/// private network namespace (`unshare -n`, as root) with a veth pair; no
/// outside interface or address is touched.
#[test]
fn ipv6_multicast_in_a_private_network_namespace() {
    if std::env::var_os("TORSION_NETNS_INNER").is_some() {
        return ipv6_multicast_inner();
    }
    let exe = std::env::current_exe().unwrap();
    let setup = "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad; \
                 echo 0 > /proc/sys/net/ipv6/conf/all/accept_dad; \
                 ip link add v0 type veth peer name v1 && ip link set v0 up && ip link set v1 up && \
                 ip -6 addr add fd00::1/64 dev v0 nodad && \
                 exec \"$0\" --exact ipv6_multicast_in_a_private_network_namespace --test-threads 1 --nocapture";
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", setup])
        .arg(&exe)
        .env("TORSION_NETNS_INNER", "1")
        .output()
        .expect("unshare (util-linux) runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "inner run failed (needs root for unshare -n and iproute2):\n{text}"
    );
    assert!(text.contains("1 passed"), "{text}");
}

fn ipv6_multicast_inner() {
    use std::net::SocketAddrV6;
    let idx = unsafe { libc::if_nametoindex(c"v0".as_ptr()) };
    assert!(idx > 0, "veth v0 missing");
    let group: Ipv6Addr = "ff12::4242".parse().unwrap();
    let reactor = Reactor::new().unwrap();
    let (p1, log1) = proto(false);
    let (p2, log2) = proto(false);
    let a = reactor
        .listen_multiple(SocketAddr::V6(SocketAddrV6::new(group, 0, 0, idx)), p1)
        .unwrap();
    let port = a.local_addr().unwrap().port();
    let b = reactor
        .listen_multiple(SocketAddr::V6(SocketAddrV6::new(group, port, 0, idx)), p2)
        .unwrap();
    a.join_group_v6(group, idx).unwrap();
    b.join_group_v6(group, idx).unwrap();
    // Python's socket module sends the first datagram.
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, {idx})\n\
         s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 1)\n\
         s.sendto(b'six', ('{group}', {port}, 0, {idx}))\n"
    );
    assert!(Command::new("python3")
        .args(["-c", &script])
        .status()
        .unwrap()
        .success());
    assert!(run_until(&reactor, LIMIT, || {
        !log1.borrow().got.is_empty() && !log2.borrow().got.is_empty()
    }));
    assert_eq!(log1.borrow().got[0].0, b"six");
    assert_eq!(log2.borrow().got[0].0, b"six");
    // Our own sender: hop limit, loopback, outgoing interface by index.
    let (p3, _l3) = proto(false);
    let sender = reactor.listen_udp("[::]:0".parse().unwrap(), p3).unwrap();
    sender.set_outgoing_interface_v6(idx).unwrap();
    sender.set_multicast_ttl(1).unwrap();
    sender.set_multicast_loopback(true).unwrap();
    let to = SocketAddr::V6(SocketAddrV6::new(group, port, 0, idx));
    b.leave_group_v6(group, idx).unwrap();
    sender.write_to_addr(b"after leave", to).unwrap();
    assert!(run_until(&reactor, LIMIT, || log1.borrow().got.len() == 2));
    run_until(&reactor, Duration::from_millis(200), || false);
    assert_eq!(log2.borrow().got.len(), 1, "b still received after leaving");
}
