//! Test harness: a real server on 127.0.0.1:0 run by the test thread's
//! reactor, and a client running in another thread.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use torsion_core::Reactor;
use torsion_http::{
    handler_fn, Handler, HttpServer, Request, Resource, Response, ServerConfig, Tree,
};

/// Runs `client(addr)` in a thread against a server with `handler`; the
/// reactor stops when the client returns (or after 30 s). Panics in the
/// client fail the test.
pub fn with_server<H: Handler>(
    cfg: ServerConfig,
    make: impl FnOnce(&Reactor) -> H,
    client: impl FnOnce(SocketAddr) + Send + 'static,
) {
    let reactor = Reactor::new().unwrap();
    let server = HttpServer::new(&reactor, make(&reactor), cfg);
    let port = server.listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = port.local_addr();
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let t = std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| client(addr)));
        d2.store(true, Ordering::SeqCst);
        r
    });
    let start = Instant::now();
    fn poll(r: Reactor, done: Arc<AtomicBool>, start: Instant) {
        if done.load(Ordering::SeqCst) || start.elapsed() > Duration::from_secs(30) {
            let _ = r.stop();
            return;
        }
        let r2 = r.clone();
        r.call_later(Duration::from_millis(5), move || poll(r2, done, start));
    }
    poll(reactor.clone(), done, start);
    reactor.set_shutdown_grace(Duration::from_millis(100));
    reactor.run().unwrap();
    match t.join().unwrap() {
        Ok(()) => {}
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// This process's resident memory in bytes (Linux `/proc/self/status`).
#[allow(dead_code)]
pub fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// The kernel's largest TCP send buffer (`net.ipv4.tcp_wmem`'s maximum):
/// what a server's socket may hold beyond what the server itself holds.
#[allow(dead_code)]
pub fn tcp_wmem_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 << 20)
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// A parsed response read off a stream.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response (Content-Length, chunked, or to EOF); `head` true for HEAD requests.
pub fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>, head: bool) -> Resp {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 4);
            let mut lines = head_text.split("\r\n");
            let status: u16 = lines.next().unwrap()[9..12].parse().unwrap();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect();
            let mut r = Resp {
                status,
                headers,
                body: Vec::new(),
            };
            if status == 100 {
                return r;
            }
            if head || status == 304 || status == 204 {
                return r;
            }
            if let Some(cl) = r.header("content-length") {
                let n: usize = cl.parse().unwrap();
                fill(s, buf, n);
                r.body = buf.drain(..n).collect();
            } else if r.header("transfer-encoding") == Some("chunked") {
                loop {
                    let line_end = loop {
                        if let Some(i) = find(buf, b"\r\n") {
                            break i;
                        }
                        more(s, buf);
                    };
                    let size = usize::from_str_radix(
                        std::str::from_utf8(&buf[..line_end])
                            .unwrap()
                            .split(';')
                            .next()
                            .unwrap(),
                        16,
                    )
                    .unwrap();
                    buf.drain(..line_end + 2);
                    fill(s, buf, size + 2);
                    r.body.extend(buf.drain(..size));
                    buf.drain(..2);
                    if size == 0 {
                        break;
                    }
                }
            } else {
                loop {
                    let mut tmp = [0u8; 65536];
                    match s.read(&mut tmp) {
                        Ok(0) => break,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        Err(e) => panic!("read: {e}"),
                    }
                }
                r.body = std::mem::take(buf);
            }
            return r;
        }
        more(s, buf);
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn more(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut tmp = [0u8; 65536];
    let n = s.read(&mut tmp).expect("read");
    assert!(
        n > 0,
        "unexpected EOF; have {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&tmp[..n]);
}

fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, n: usize) {
    while buf.len() < n {
        more(s, buf);
    }
}

/// Sends `req` on a new connection and reads one response.
pub fn request(addr: SocketAddr, req: &[u8]) -> Resp {
    let mut s = connect(addr);
    s.write_all(req).unwrap();
    let mut buf = Vec::new();
    read_response(&mut s, &mut buf, req.starts_with(b"HEAD "))
}

/// True when the peer closed the connection (EOF) within the read timeout.
pub fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut tmp = [0u8; 4096];
    loop {
        match s.read(&mut tmp) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// Adds the two routes the client tests share to `root`: `/fast` answers
/// "fast", `/echo` answers with the request's method and body.
pub fn add_fast_and_echo(root: &Tree) {
    root.put_child(
        "fast",
        std::rc::Rc::new(handler_fn(|_| async { Ok(Response::text("fast")) })),
    );
    root.put_child(
        "echo",
        std::rc::Rc::new(handler_fn(|req: Request| async move {
            let m = req.method().clone();
            let b = req.into_body().bytes(1 << 20).await?;
            Ok(Response::text(format!(
                "{m} {}",
                String::from_utf8_lossy(&b)
            )))
        })),
    );
}

/// Status and body text of a client response.
pub async fn text(
    d: torsion_core::Deferred<torsion_http::ClientResponse>,
) -> Result<(u16, String), torsion_core::Failure> {
    let r = d.await?;
    let status = r.status.as_u16();
    let b = r.bytes(64 << 20).await?;
    Ok((status, String::from_utf8_lossy(&b).into_owned()))
}

/// The Agent against Python's `http.server` at `base` serving `data.bin`
/// (`data`) and `sub/f.txt`: the file, a redirect from `/sub` to its
/// listing, and a 404.
pub async fn browse_python_server(
    agent: &torsion_http::Agent,
    base: &str,
    data: &[u8],
) -> Result<(), torsion_core::Failure> {
    let r = agent.get(&format!("{base}/data.bin")).await?;
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.bytes(1 << 20).await?, data);
    // Python answers /sub with a 301 to /sub/: followed, then a listing.
    let r = agent.get(&format!("{base}/sub")).await?;
    assert_eq!(r.url.path(), "/sub/");
    let html = String::from_utf8(r.bytes(1 << 20).await?).unwrap();
    assert!(html.contains("f.txt"), "{html}");
    assert_eq!(text(agent.get(&format!("{base}/missing"))).await?.0, 404);
    Ok(())
}
