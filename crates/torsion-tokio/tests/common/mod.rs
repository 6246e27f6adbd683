//! Test support shared by the host-loop integration tests (torsion-tokio and
//! torsion-glib include this file): small protocols and blocking real clients.
#![allow(dead_code)]

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::thread::ThreadId;
use std::time::Duration;

use torsion_core::{factory_fn, Factory, Failure, Protocol, Transport};

/// What the server side saw, recorded on the reactor thread.
#[derive(Default)]
pub struct Log {
    pub threads: Vec<ThreadId>,
    pub made: usize,
    pub lost: Vec<String>,
}

pub struct Echo {
    t: Option<Transport>,
    log: Rc<RefCell<Log>>,
}

impl Protocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.log.borrow_mut().made += 1;
        self.t = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.log
            .borrow_mut()
            .threads
            .push(std::thread::current().id());
        if let Some(t) = &self.t {
            t.write(data);
        }
    }
    fn connection_lost(&mut self, reason: Failure) {
        self.log.borrow_mut().lost.push(reason.to_string());
    }
}

pub fn echo_factory(log: Rc<RefCell<Log>>) -> Rc<dyn Factory> {
    factory_fn(move || Echo {
        t: None,
        log: log.clone(),
    })
}

pub const HTTP_BODY: &str = "served by torsion inside a host loop\n";

/// An HTTP server (torsion-http) answering every request with `HTTP_BODY`.
pub fn http_factory(reactor: &torsion_core::Reactor) -> Rc<dyn Factory> {
    use torsion_http::{Handler, HttpServer, Reply, Request, Response, ServerConfig};
    struct Fixed;
    impl Handler for Fixed {
        fn handle(&self, _req: Request) -> Reply {
            Reply::Now(Response::text(HTTP_BODY))
        }
    }
    HttpServer::new(reactor, Fixed, ServerConfig::default()).factory()
}

/// Sends `msg` and reads the same number of bytes back (blocking, bounded).
pub fn echo_roundtrip(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(msg)?;
    let mut back = vec![0; msg.len()];
    s.read_exact(&mut back)?;
    Ok(back)
}

/// A GET with Python's standard-library client; returns (status, body).
pub fn python_http_get(addr: SocketAddr) -> Result<String, String> {
    let script = format!(
        "import http.client\n\
         c = http.client.HTTPConnection('127.0.0.1', {}, timeout=10)\n\
         c.request('GET', '/')\n\
         r = c.getresponse()\n\
         print(r.status)\n\
         print(r.read().decode(), end='')\n",
        addr.port()
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

thread_local! {
    static CURRENT: RefCell<Option<torsion_core::Reactor>> = const { RefCell::new(None) };
}

/// Remembers `reactor` as this thread's, so `stop_from_thread` can reach it
/// with a `Send` closure (a `Reactor` itself is `!Send`).
pub fn set_current(reactor: Option<&torsion_core::Reactor>) {
    CURRENT.with(|c| *c.borrow_mut() = reactor.cloned());
}

/// From any thread: stops the reactor registered with `set_current` on the
/// reactor's thread.
pub fn stop_from_thread(handle: &torsion_core::ReactorHandle) {
    handle.call_from_thread(|| {
        CURRENT.with(|c| {
            if let Some(r) = c.borrow().as_ref() {
                r.stop().unwrap();
            }
        })
    });
}
