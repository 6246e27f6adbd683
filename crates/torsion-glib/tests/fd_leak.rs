//! Alone in its own test binary: fd counts are process-wide.

use std::time::Duration;

use torsion_core::{factory_fn, open_fd_count, Protocol, Reactor, Transport};

struct Hold(Option<Transport>);
impl Protocol for Hold {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
    fn data_received(&mut self, _data: &[u8]) {}
}

fn cycle() {
    let ml = glib::MainLoop::new(Some(&glib::MainContext::new()), false);
    let reactor = Reactor::new().unwrap();
    let host = torsion_glib::attach(&reactor, &ml).unwrap();
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), factory_fn(|| Hold(None)))
        .unwrap();
    let addr = port.local_addr();
    let _a = std::net::TcpStream::connect(addr).unwrap();
    let _b = std::net::TcpStream::connect(addr).unwrap();
    let r = reactor.clone();
    reactor.call_later(Duration::from_millis(20), move || r.stop().unwrap());
    reactor.run().unwrap();
    drop(host);
}

#[test]
fn stopping_the_glib_loop_leaks_no_fds() {
    cycle();
    let before = open_fd_count().unwrap();
    for _ in 0..3 {
        cycle();
    }
    assert_eq!(open_fd_count().unwrap(), before);
}
