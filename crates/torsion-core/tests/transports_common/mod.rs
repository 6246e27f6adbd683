//! Shared helpers: a bounded loop driver and the echo protocols every
//! transport test uses.
#![allow(dead_code)]

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use torsion_core::{Failure, Protocol, Reactor, Transport};

/// Turns the reactor until `done()` or `limit` passes; returns whether `done()` held.
pub fn run_until(reactor: &Reactor, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        reactor.iterate(Some(Duration::from_millis(10))).unwrap();
    }
    done()
}

/// The echo server protocol: every transport in these tests runs this same type.
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

/// What a [`Pinger`] saw.
#[derive(Default, Debug)]
pub struct PingLog {
    pub received: Vec<u8>,
    pub kind: Option<&'static str>,
    pub lost: Option<String>,
    pub transport: Option<Transport>,
}

/// The echo client: sends `payload`, collects the echo, closes once it is all back.
pub struct Pinger {
    pub payload: Vec<u8>,
    pub log: Rc<RefCell<PingLog>>,
}

impl Pinger {
    pub fn new(payload: &[u8]) -> (Pinger, Rc<RefCell<PingLog>>) {
        let log = Rc::new(RefCell::new(PingLog::default()));
        (
            Pinger {
                payload: payload.to_vec(),
                log: log.clone(),
            },
            log,
        )
    }
}

impl Protocol for Pinger {
    fn connection_made(&mut self, t: Transport) {
        // Send in a few pieces to exercise buffering.
        for chunk in self.payload.chunks(7) {
            t.write(chunk);
        }
        let mut l = self.log.borrow_mut();
        l.kind = Some(t.kind());
        l.transport = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        let mut l = self.log.borrow_mut();
        l.received.extend_from_slice(data);
        if l.received.len() >= self.payload.len() {
            if let Some(t) = &l.transport {
                t.lose_connection();
            }
        }
    }
    fn connection_lost(&mut self, reason: Failure) {
        self.log.borrow_mut().lost = Some(reason.to_string());
    }
}

#[path = "../common/tempdir.rs"]
mod tempdir;
#[allow(unused_imports)]
pub use tempdir::TempDir;

/// Runs a command with a time limit, feeding `input`; returns its stdout.
pub fn run_peer(cmd: &mut std::process::Command, input: &[u8], limit: Duration) -> Vec<u8> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("peer starts");
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input).unwrap();
    }
    let end = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    out.stdout
}
