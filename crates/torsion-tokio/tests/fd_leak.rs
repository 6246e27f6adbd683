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
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, async {
        let reactor = Reactor::new().unwrap();
        let host = torsion_tokio::attach(&reactor).unwrap();
        let port = reactor
            .listen_tcp("127.0.0.1:0".parse().unwrap(), factory_fn(|| Hold(None)))
            .unwrap();
        let addr = port.local_addr();
        let r = reactor.clone();
        tokio::task::spawn_local(async move {
            let _a = tokio::net::TcpStream::connect(addr).await.unwrap();
            let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            r.stop().unwrap();
        });
        tokio::time::timeout(Duration::from_secs(30), host.run())
            .await
            .unwrap()
            .unwrap();
    });
}

#[test]
fn stopping_the_host_loop_leaks_no_fds() {
    // A first cycle warms up lazily created process-wide fds.
    cycle();
    let before = open_fd_count().unwrap();
    for _ in 0..3 {
        cycle();
    }
    assert_eq!(open_fd_count().unwrap(), before);
}
