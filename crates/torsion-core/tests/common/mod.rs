//! Helpers shared by the integration tests: bounded runs, an echo protocol,
//! a recording client factory, and a tracing capture.
#![allow(dead_code)]

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use torsion_core::{
    factory_fn, Address, ClientFactory, ConnectionError, Connector, Factory, Failure,
    ListeningPort, Protocol, Reactor, Transport,
};

mod tempdir;
#[allow(unused_imports)]
pub use tempdir::TempDir;

/// Runs `reactor` until it stops by itself or `limit` passes; true when it
/// stopped by itself (the test's own condition), false on the watchdog.
pub fn run_bounded(reactor: &Reactor, limit: Duration) -> bool {
    let timed_out = Rc::new(Cell::new(false));
    let t = timed_out.clone();
    let r = reactor.clone();
    let dog = reactor.call_later(limit, move || {
        t.set(true);
        let _ = r.stop();
    });
    reactor.run().expect("reactor run");
    let _ = dog.cancel();
    !timed_out.get()
}

/// Asserts the reactor stopped by itself within `limit`.
pub fn run_until_stopped(reactor: &Reactor, limit: Duration, what: &str) {
    assert!(
        run_bounded(reactor, limit),
        "{what}: did not finish within {limit:?}"
    );
}

/// A local address with an ephemeral port.
pub fn any_local() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Sends back every byte.
#[derive(Default)]
pub struct Echo(pub Option<Transport>);

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

/// Starts an echo server on 127.0.0.1:0.
pub fn echo_server(reactor: &Reactor) -> ListeningPort {
    reactor
        .listen_tcp(any_local(), factory_fn(Echo::default))
        .expect("listen")
}

/// Raises the soft fd limit to at least `want` (bounded by the hard limit);
/// returns the soft limit now in force.
pub fn raise_fd_limit(want: u64) -> u64 {
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 0;
        }
        if l.rlim_cur < want {
            l.rlim_cur = want.min(l.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        }
        l.rlim_cur
    }
}

/// What a client connection attempt came to.
#[derive(Default)]
pub struct Outcome {
    pub failed: RefCell<Option<Failure>>,
    pub lost: RefCell<Option<Failure>>,
    pub started: Cell<u32>,
}

impl Outcome {
    pub fn failed_error(&self) -> Option<String> {
        self.failed.borrow().as_ref().map(|f| f.to_string())
    }
}

/// A client factory that records failure/loss and can stop the reactor on either.
pub struct RecordingFactory<F> {
    pub build: F,
    pub outcome: Rc<Outcome>,
    pub stop_on_end: Option<Reactor>,
}

impl<F, P> Factory for RecordingFactory<F>
where
    F: Fn() -> P + 'static,
    P: Protocol,
{
    fn build_protocol(&self, _peer: &Address) -> Option<Box<dyn Protocol>> {
        Some(Box::new((self.build)()))
    }
}

impl<F, P> ClientFactory for RecordingFactory<F>
where
    F: Fn() -> P + 'static,
    P: Protocol,
{
    fn started_connecting(&self, _c: &Connector) {
        self.outcome.started.set(self.outcome.started.get() + 1);
    }
    fn client_connection_failed(&self, _c: &Connector, reason: Failure) {
        *self.outcome.failed.borrow_mut() = Some(reason);
        if let Some(r) = &self.stop_on_end {
            let _ = r.stop();
        }
    }
    fn client_connection_lost(&self, _c: &Connector, reason: Failure) {
        *self.outcome.lost.borrow_mut() = Some(reason);
        if let Some(r) = &self.stop_on_end {
            let _ = r.stop();
        }
    }
}

pub fn recording<F, P>(build: F, stop: Option<Reactor>) -> (Rc<RecordingFactory<F>>, Rc<Outcome>)
where
    F: Fn() -> P + 'static,
    P: Protocol,
{
    let outcome = Rc::new(Outcome::default());
    (
        Rc::new(RecordingFactory {
            build,
            outcome: outcome.clone(),
            stop_on_end: stop,
        }),
        outcome,
    )
}

/// The `ConnectionError` inside a failure, or a panic naming what it was.
pub fn conn_err(f: &Failure) -> &ConnectionError {
    f.downcast_ref::<ConnectionError>()
        .unwrap_or_else(|| panic!("not a ConnectionError: {f}"))
}

/// A writer into a shared buffer, for capturing tracing output.
#[derive(Clone, Default)]
pub struct LogBuffer(pub Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Captures this thread's tracing output into a buffer while the guard lives.
pub fn capture_logs() -> (LogBuffer, tracing::subscriber::DefaultGuard) {
    let buf = LogBuffer::default();
    let sub = tracing_subscriber::fmt()
        .with_writer(buf.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let guard = tracing::subscriber::set_default(sub);
    (buf, guard)
}

/// A cheap order-sensitive checksum (FNV-1a, 64-bit), updated incrementally.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// Byte `i` of the deterministic test stream.
pub fn stream_byte(i: u64) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 9)) as u8
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Stops the reactor (once it runs) as soon as `cond` holds; checks every 2 ms.
pub fn stop_when(reactor: &Reactor, cond: impl Fn() -> bool + 'static) {
    fn check(r: Reactor, cond: Rc<dyn Fn() -> bool>) {
        if cond() {
            let _ = r.stop();
        } else {
            let r2 = r.clone();
            r.call_later(Duration::from_millis(2), move || check(r2, cond));
        }
    }
    let r = reactor.clone();
    let cond: Rc<dyn Fn() -> bool> = Rc::new(cond);
    reactor.call_later(Duration::ZERO, move || check(r, cond));
}
