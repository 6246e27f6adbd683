//! Echo ping-pong, 50 connections, under each host loop beside the native
//! reactor, in one run: server CPU µs per round trip and the ratio to native.
//!
//! `cargo bench -p torsion-hostloop-bench` (BENCH_ROUNDS=N to change the
//! rounds per connection; default 2000). Qt runs its server thread's own
//! `QEventLoop` under a `QCoreApplication` created on the main thread.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use torsion_core::{factory_fn, Protocol, Reactor, ReactorHandle, Transport};

const CONNS: usize = 50;
const MSG: usize = 64;

#[derive(Clone, Copy, Debug)]
enum Mode {
    Native,
    Tokio,
    Glib,
    Qt,
}

struct Echo(Option<Transport>);
impl Protocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        let _ = t.set_tcp_nodelay(true);
        self.0 = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.0 {
            t.write(data);
        }
    }
}

thread_local! {
    static SERVER: RefCell<Option<Reactor>> = const { RefCell::new(None) };
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs the echo server on this thread under `mode` until stopped.
fn serve(mode: Mode, ready: mpsc::Sender<(SocketAddr, ReactorHandle)>) {
    let reactor = Reactor::new().unwrap();
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), factory_fn(|| Echo(None)))
        .unwrap();
    SERVER.with(|s| *s.borrow_mut() = Some(reactor.clone()));
    ready.send((port.local_addr(), reactor.handle())).unwrap();
    match mode {
        Mode::Native => reactor.run().unwrap(),
        Mode::Tokio => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            tokio::task::LocalSet::new().block_on(&rt, async {
                let host = torsion_tokio::attach(&reactor).unwrap();
                host.run().await.unwrap();
            });
        }
        Mode::Glib => {
            let ml = glib::MainLoop::new(Some(&glib::MainContext::new()), false);
            let _host = torsion_glib::attach(&reactor, &ml).unwrap();
            reactor.run().unwrap();
        }
        Mode::Qt => {
            let _host = torsion_qt::attach(&reactor).unwrap();
            reactor.run().unwrap();
        }
    }
    SERVER.with(|s| s.borrow_mut().take());
}

/// One measured run: server CPU per round trip, and wall time.
fn measure(mode: Mode, rounds: usize) -> (f64, Duration) {
    let (tx, rx) = mpsc::channel();
    let server = std::thread::spawn(move || serve(mode, tx));
    let (addr, handle) = rx.recv().unwrap();
    let mut conns: Vec<TcpStream> = (0..CONNS)
        .map(|_| {
            let s = TcpStream::connect(addr).unwrap();
            s.set_nodelay(true).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            s
        })
        .collect();
    let msg = [b'x'; MSG];
    let mut buf = [0u8; MSG];
    let mut round = |conns: &mut Vec<TcpStream>| {
        for c in conns.iter_mut() {
            c.write_all(&msg).unwrap();
        }
        for c in conns.iter_mut() {
            c.read_exact(&mut buf).unwrap();
        }
    };
    for _ in 0..100 {
        round(&mut conns);
    }
    let cpu = Arc::new(Mutex::new((Duration::ZERO, Duration::ZERO)));
    let c = cpu.clone();
    let (mark_tx, mark_rx) = mpsc::channel();
    handle.call_from_thread(move || {
        c.lock().unwrap().0 = thread_cpu();
        mark_tx.send(()).unwrap();
    });
    mark_rx.recv().unwrap();
    let t0 = Instant::now();
    for _ in 0..rounds {
        round(&mut conns);
    }
    let wall = t0.elapsed();
    let c = cpu.clone();
    handle.call_from_thread(move || {
        c.lock().unwrap().1 = thread_cpu();
        SERVER.with(|s| {
            if let Some(r) = s.borrow().as_ref() {
                r.stop().unwrap();
            }
        });
    });
    drop(conns);
    server.join().unwrap();
    let (start, end) = *cpu.lock().unwrap();
    let per_rt = (end - start).as_secs_f64() * 1e6 / (rounds * CONNS) as f64;
    (per_rt, wall)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let _app = torsion_qt::CoreApplication::new();
    let modes = [Mode::Native, Mode::Tokio, Mode::Glib, Mode::Qt];
    // Interleave repetitions and keep each mode's best: the machine is shared.
    let mut best = [f64::INFINITY; 4];
    let mut walls = [Duration::MAX; 4];
    for _rep in 0..3 {
        for (i, m) in modes.iter().enumerate() {
            let (us, wall) = measure(*m, rounds);
            best[i] = best[i].min(us);
            walls[i] = walls[i].min(wall);
        }
    }
    println!(
        "echo ping-pong, {CONNS} connections x {rounds} rounds, {MSG}-byte messages (best of 3)"
    );
    println!(
        "{:<8} {:>18} {:>12} {:>10}",
        "loop", "server CPU µs/RT", "wall ms", "ratio"
    );
    for (i, m) in modes.iter().enumerate() {
        println!(
            "{:<8} {:>18.2} {:>12} {:>9.2}x",
            format!("{m:?}").to_lowercase(),
            best[i],
            walls[i].as_millis(),
            best[i] / best[0]
        );
    }
}
