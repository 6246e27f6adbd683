//! TLS echo throughput and full handshakes per second: Torsion beside
//! tokio-rustls, same rustls version, same aws-lc-rs provider, the very same
//! rustls configurations, in one run. Server and client run on two threads
//! (one event loop each) for both stacks.
//!
//! `cargo bench -p torsion-tls --bench tls` (env: TLS_BENCH_MIB, TLS_BENCH_HANDSHAKES)

use std::cell::{Cell, OnceCell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use torsion_core::{
    factory_fn, Address, ClientFactory, ConnectOptions, Connector, Factory, Failure, Producer,
    Protocol, Reactor, Transport,
};
use torsion_tls::{
    connect_ssl, listen_ssl, CertificateKey, TlsClientConfig, TlsServerConfig, TlsTransportExt,
    TrustRoots,
};

const CHUNK: usize = 1024 * 1024;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn configs() -> (TlsServerConfig, TlsClientConfig, TlsClientConfig) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let ck =
        CertificateKey::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    let server = TlsServerConfig::builder().certificate(ck).build().unwrap();
    let roots = TrustRoots::from_pem(cert.pem().as_bytes()).unwrap();
    let client = TlsClientConfig::with_roots(roots).unwrap();
    let mut no_resume = (**client.rustls()).clone();
    no_resume.resumption = rustls::client::Resumption::disabled();
    (
        server,
        client,
        TlsClientConfig::from_rustls(Arc::new(no_resume)),
    )
}

// ---------------- Torsion ----------------

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

/// Runs a Torsion TLS echo server on its own thread (until the process exits).
fn torsion_server(config: TlsServerConfig) -> SocketAddr {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let reactor = Reactor::new().unwrap();
        let port = listen_ssl(
            &reactor,
            "127.0.0.1:0".parse().unwrap(),
            factory_fn(Echo::default),
            config,
        )
        .unwrap();
        let Address::Tcp(a) = port.host() else {
            panic!()
        };
        tx.send(a).unwrap();
        reactor.run().unwrap();
    });
    rx.recv().unwrap()
}

struct Tput {
    t: OnceCell<Transport>,
    total: usize,
    sent: Cell<usize>,
    recv: Cell<usize>,
    paused: Cell<bool>,
    chunk: Vec<u8>,
    done: Cell<Option<Instant>>,
}

impl Tput {
    fn pump(&self) {
        let Some(t) = self.t.get() else { return };
        while !self.paused.get() && self.sent.get() < self.total {
            t.write(&self.chunk);
            self.sent.set(self.sent.get() + self.chunk.len());
        }
        if self.sent.get() >= self.total {
            t.unregister_producer();
        }
    }
}

impl Producer for Tput {
    fn pause_producing(&self) {
        self.paused.set(true);
    }
    fn resume_producing(&self) {
        self.paused.set(false);
        self.pump();
    }
    fn stop_producing(&self) {
        self.paused.set(true);
    }
}

struct TputProtocol(Rc<Tput>, Reactor);
impl Protocol for TputProtocol {
    fn connection_made(&mut self, t: Transport) {
        let _ = self.0.t.set(t.clone());
        t.register_producer(self.0.clone(), true).unwrap();
        self.0.pump();
    }
    fn data_received(&mut self, data: &[u8]) {
        let r = self.0.recv.get() + data.len();
        self.0.recv.set(r);
        if r >= self.0.total && self.0.done.get().is_none() {
            self.0.done.set(Some(Instant::now()));
            if let Some(t) = self.0.t.get() {
                t.lose_connection();
            }
            let _ = self.1.stop();
        }
    }
}

struct TputFactory(Rc<Tput>, Reactor);
impl Factory for TputFactory {
    fn build_protocol(&self, _: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(TputProtocol(self.0.clone(), self.1.clone())))
    }
}
impl ClientFactory for TputFactory {
    fn client_connection_failed(&self, _: &Connector, reason: Failure) {
        panic!("connect failed: {reason}");
    }
}

fn torsion_throughput(addr: SocketAddr, client: TlsClientConfig, total: usize) -> Duration {
    let reactor = Reactor::new().unwrap();
    let state = Rc::new(Tput {
        t: OnceCell::new(),
        total,
        sent: Cell::new(0),
        recv: Cell::new(0),
        paused: Cell::new(false),
        chunk: vec![0xa5; CHUNK],
        done: Cell::new(None),
    });
    let start = Instant::now();
    connect_ssl(
        &reactor,
        addr,
        Rc::new(TputFactory(state.clone(), reactor.clone())),
        client,
        "localhost",
        ConnectOptions::default(),
    )
    .unwrap();
    reactor.run().unwrap();
    state.done.get().expect("transfer finished") - start
}

struct Shakes {
    left: Cell<usize>,
    reactor: Reactor,
    failed: RefCell<Option<Failure>>,
}

struct ShakeProtocol;
impl Protocol for ShakeProtocol {
    fn connection_made(&mut self, t: Transport) {
        let t2 = t.clone();
        if let Ok(d) = t.when_handshake_done() {
            d.add_callback(move |_| t2.lose_connection());
        }
    }
    fn data_received(&mut self, _: &[u8]) {}
}

impl Factory for Shakes {
    fn build_protocol(&self, _: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new(ShakeProtocol))
    }
}
impl ClientFactory for Shakes {
    fn client_connection_failed(&self, _: &Connector, reason: Failure) {
        *self.failed.borrow_mut() = Some(reason);
        let _ = self.reactor.stop();
    }
    fn client_connection_lost(&self, connector: &Connector, _reason: Failure) {
        let left = self.left.get() - 1;
        self.left.set(left);
        if left == 0 {
            let _ = self.reactor.stop();
        } else {
            connector.connect();
        }
    }
}

fn torsion_handshakes(addr: SocketAddr, client: TlsClientConfig, n: usize) -> Duration {
    let reactor = Reactor::new().unwrap();
    let f = Rc::new(Shakes {
        left: Cell::new(n),
        reactor: reactor.clone(),
        failed: RefCell::new(None),
    });
    let start = Instant::now();
    connect_ssl(
        &reactor,
        addr,
        f.clone(),
        client,
        "localhost",
        ConnectOptions::default(),
    )
    .unwrap();
    reactor.run().unwrap();
    assert!(f.failed.borrow().is_none(), "{:?}", f.failed.borrow());
    start.elapsed()
}

// ---------------- tokio-rustls ----------------

fn tokio_server(config: TlsServerConfig) -> SocketAddr {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(config.rustls().clone());
            let local = tokio::task::LocalSet::new();
            local
                .run_until(async move {
                    loop {
                        let Ok((s, _)) = listener.accept().await else {
                            return;
                        };
                        let _ = s.set_nodelay(true);
                        let acceptor = acceptor.clone();
                        tokio::task::spawn_local(async move {
                            let Ok(tls) = acceptor.accept(s).await else {
                                return;
                            };
                            let (mut r, mut w) = tokio::io::split(tls);
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            let _ = w.shutdown().await;
                        });
                    }
                })
                .await;
        });
    });
    rx.recv().unwrap()
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn tokio_throughput(addr: SocketAddr, client: TlsClientConfig, total: usize) -> Duration {
    tokio_rt().block_on(async move {
        let start = Instant::now();
        let connector = tokio_rustls::TlsConnector::from(client.rustls().clone());
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let tls = connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let (mut r, mut w) = tokio::io::split(tls);
        let chunk = vec![0xa5u8; CHUNK];
        let writer = async {
            let mut sent = 0;
            while sent < total {
                w.write_all(&chunk).await.unwrap();
                sent += chunk.len();
            }
            w.flush().await.unwrap();
        };
        let reader = async {
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            while got < total {
                let n = r.read(&mut buf).await.unwrap();
                assert!(n > 0, "early EOF");
                got += n;
            }
            Instant::now()
        };
        let ((), done) = tokio::join!(writer, reader);
        done - start
    })
}

fn tokio_handshakes(addr: SocketAddr, client: TlsClientConfig, n: usize) -> Duration {
    tokio_rt().block_on(async move {
        let connector = tokio_rustls::TlsConnector::from(client.rustls().clone());
        let start = Instant::now();
        for _ in 0..n {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let mut tls = connector
                .connect("localhost".try_into().unwrap(), tcp)
                .await
                .unwrap();
            tls.shutdown().await.unwrap();
        }
        start.elapsed()
    })
}

fn main() {
    let mib = env_usize("TLS_BENCH_MIB", 256);
    let shakes = env_usize("TLS_BENCH_HANDSHAKES", 1000);
    let total = mib * 1024 * 1024;
    let (server_cfg, client_cfg, no_resume) = configs();

    let t_addr = torsion_server(server_cfg.clone());
    let k_addr = tokio_server(server_cfg);

    // For profiling one side: TLS_BENCH_ONLY=torsion|tokio runs its
    // throughput part only, torsion-handshakes|tokio-handshakes its
    // handshakes only (for instruction counts under callgrind, which do not
    // depend on what else the machine is doing).
    if let Ok(only) = std::env::var("TLS_BENCH_ONLY") {
        match only.as_str() {
            "tokio" | "torsion" => {
                let d = if only == "tokio" {
                    tokio_throughput(k_addr, client_cfg, total)
                } else {
                    torsion_throughput(t_addr, client_cfg, total)
                };
                println!("{only}: {:.0} MB/s", total as f64 / 1e6 / d.as_secs_f64());
            }
            "tokio-handshakes" | "torsion-handshakes" => {
                let d = if only == "tokio-handshakes" {
                    tokio_handshakes(k_addr, no_resume, shakes)
                } else {
                    torsion_handshakes(t_addr, no_resume, shakes)
                };
                println!(
                    "{only}: {:.0} handshakes/s",
                    shakes as f64 / d.as_secs_f64()
                );
            }
            other => eprintln!("TLS_BENCH_ONLY: unknown part {other:?}"),
        }
        return;
    }
    // Warm-up (allocators, page cache of the binary).
    torsion_throughput(t_addr, client_cfg.clone(), 16 * CHUNK);
    tokio_throughput(k_addr, client_cfg.clone(), 16 * CHUNK);

    // The machine is shared: alternate the two stacks and keep each one's best round.
    let rounds = env_usize("TLS_BENCH_ROUNDS", 3).max(1);
    let best = |a: Duration, b: Duration| a.min(b);
    let (mut t_tput, mut k_tput, mut t_hs, mut k_hs) =
        (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
    for round in 0..rounds {
        if round % 2 == 0 {
            t_tput = best(
                t_tput,
                torsion_throughput(t_addr, client_cfg.clone(), total),
            );
            k_tput = best(k_tput, tokio_throughput(k_addr, client_cfg.clone(), total));
            t_hs = best(t_hs, torsion_handshakes(t_addr, no_resume.clone(), shakes));
            k_hs = best(k_hs, tokio_handshakes(k_addr, no_resume.clone(), shakes));
        } else {
            k_tput = best(k_tput, tokio_throughput(k_addr, client_cfg.clone(), total));
            t_tput = best(
                t_tput,
                torsion_throughput(t_addr, client_cfg.clone(), total),
            );
            k_hs = best(k_hs, tokio_handshakes(k_addr, no_resume.clone(), shakes));
            t_hs = best(t_hs, torsion_handshakes(t_addr, no_resume.clone(), shakes));
        }
    }

    let mbps = |d: Duration| total as f64 / 1e6 / d.as_secs_f64();
    let hps = |d: Duration| shakes as f64 / d.as_secs_f64();
    println!(
        "TLS echo, {mib} MiB in {CHUNK}-byte writes; {shakes} sequential full handshakes (TLS 1.3, no resumption); best of {rounds} alternating rounds"
    );
    println!("| measure | Torsion | tokio-rustls | Torsion / tokio |");
    println!("| --- | ---: | ---: | ---: |");
    println!(
        "| echo throughput (MB/s) | {:.0} | {:.0} | {:.2} |",
        mbps(t_tput),
        mbps(k_tput),
        mbps(t_tput) / mbps(k_tput)
    );
    println!(
        "| full handshakes/s | {:.0} | {:.0} | {:.2} |",
        hps(t_hs),
        hps(k_hs),
        hps(t_hs) / hps(k_hs)
    );
}
