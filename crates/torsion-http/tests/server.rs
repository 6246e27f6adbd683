//! The adapter over real TCP sockets on 127.0.0.1.

mod common;

use std::cell::Cell;
use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use torsion_core::{Deferred, Reactor};
use torsion_http::{
    handler_fn, Body, BodySource, Chunk, Handler, Notify, Redirect, Reply, Request, Resource,
    Response, ServerConfig, Site, Tree,
};

struct App {
    reactor: Reactor,
    /// Most bytes ever seen waiting unread in a request body.
    max_buffered: Rc<Cell<usize>>,
    produced: Arc<AtomicUsize>,
}

fn later(reactor: &Reactor, ms: u64, text: &'static str) -> Reply {
    let d = Deferred::new();
    let d2 = d.clone();
    reactor.call_later(Duration::from_millis(ms), move || {
        let _ = d2.callback(Response::text(text));
    });
    Reply::Later(d)
}

/// Produces `remaining` bytes on demand, counting what it produced.
struct Counting {
    remaining: usize,
    produced: Arc<AtomicUsize>,
}

impl BodySource for Counting {
    fn next_chunk(&mut self, max: usize, _n: &Notify) -> Chunk {
        if self.remaining == 0 {
            return Chunk::End;
        }
        let n = max.min(self.remaining);
        self.remaining -= n;
        self.produced.fetch_add(n, Ordering::SeqCst);
        Chunk::Data(vec![b'x'; n])
    }
}

impl Handler for App {
    fn handle(&self, req: Request) -> Reply {
        match req.path() {
            "/slow" => later(&self.reactor, 300, "slow"),
            "/medium" => later(&self.reactor, 100, "medium"),
            "/fast" => Response::text("fast").into(),
            "/panic" => panic!("handler exploded"),
            "/big" => Response::new(http::StatusCode::OK)
                .with_body(Body::Stream {
                    len: None,
                    source: Box::new(Counting {
                        remaining: 64 << 20,
                        produced: self.produced.clone(),
                    }),
                })
                .into(),
            "/count" => {
                // Reads the body slowly: one chunk per 2 ms timer tick.
                let max = self.max_buffered.clone();
                let reactor = self.reactor.clone();
                let d = Deferred::from_future(&self.reactor, async move {
                    let mut body = req.into_body();
                    let mut total = 0usize;
                    while let Some(c) = body.chunk().await? {
                        total += c.len();
                        max.set(max.get().max(body.buffered()));
                        let tick = Deferred::<()>::new();
                        let t2 = tick.clone();
                        reactor.call_later(Duration::from_millis(2), move || {
                            let _ = t2.callback(());
                        });
                        tick.await?;
                    }
                    Ok(Response::text(total.to_string()))
                });
                Reply::Later(d)
            }
            "/echo" => {
                let d = Deferred::from_future(&self.reactor, async move {
                    let body = req.into_body().bytes(1 << 20).await?;
                    Ok(Response::text(String::from_utf8_lossy(&body).into_owned()))
                });
                Reply::Later(d)
            }
            _ => Response::error(http::StatusCode::NOT_FOUND).into(),
        }
    }
}

fn app(r: &Reactor) -> App {
    App {
        reactor: r.clone(),
        max_buffered: Rc::new(Cell::new(0)),
        produced: Arc::new(AtomicUsize::new(0)),
    }
}

#[test]
fn pipelined_responses_keep_request_order_with_slow_and_fast_handlers() {
    with_server(ServerConfig::default(), app, |addr| {
        let mut s = connect(addr);
        let mut req = Vec::new();
        for p in ["/slow", "/fast", "/medium", "/fast", "/slow"] {
            req.extend_from_slice(format!("GET {p} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        }
        s.write_all(&req).unwrap();
        let mut buf = Vec::new();
        let got: Vec<String> = (0..5)
            .map(|_| read_response(&mut s, &mut buf, false).text())
            .collect();
        assert_eq!(got, ["slow", "fast", "medium", "fast", "slow"]);
    });
}

#[test]
fn handler_panic_gives_500_for_that_request_only() {
    with_server(ServerConfig::default(), app, |addr| {
        let mut s = connect(addr);
        s.write_all(
            b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\nGET /panic HTTP/1.1\r\nHost: t\r\n\r\nGET /fast HTTP/1.1\r\nHost: t\r\n\r\n",
        )
        .unwrap();
        let mut buf = Vec::new();
        let a = read_response(&mut s, &mut buf, false);
        let b = read_response(&mut s, &mut buf, false);
        let c = read_response(&mut s, &mut buf, false);
        assert_eq!((a.status, b.status, c.status), (200, 500, 200));
        assert_eq!(c.text(), "fast");
        // Other connections are unaffected.
        assert_eq!(
            request(addr, b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n").status,
            200
        );
    });
}

#[test]
fn async_handler_panic_gives_500() {
    let make = |_r: &Reactor| {
        handler_fn(|req: Request| async move {
            if req.path() == "/boom" {
                panic!("async boom");
            }
            Ok(Response::text("fine"))
        })
    };
    with_server(ServerConfig::default(), make, |addr| {
        let mut s = connect(addr);
        s.write_all(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\nGET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_response(&mut s, &mut buf, false).status, 500);
        let ok = read_response(&mut s, &mut buf, false);
        assert_eq!((ok.status, ok.text().as_str()), (200, "fine"));
    });
}

#[test]
fn request_body_streams_with_bounded_buffer() {
    let max = Rc::new(Cell::new(0));
    let m2 = max.clone();
    let cfg = ServerConfig {
        body_buffer: 32 * 1024,
        ..ServerConfig::default()
    };
    with_server(
        cfg,
        move |r| App {
            reactor: r.clone(),
            max_buffered: m2,
            produced: Arc::new(AtomicUsize::new(0)),
        },
        |addr| {
            let mut s = connect(addr);
            let total = 4 << 20;
            s.write_all(
                format!("POST /count HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n")
                    .as_bytes(),
            )
            .unwrap();
            let chunk = vec![b'a'; 64 * 1024];
            for _ in 0..(total / chunk.len()) {
                s.write_all(&chunk).unwrap();
            }
            let mut buf = Vec::new();
            let r = read_response(&mut s, &mut buf, false);
            assert_eq!(r.text(), total.to_string());
        },
    );
    // Never more than the configured buffer plus one 64 KiB read waited unread.
    assert!(max.get() > 0);
    assert!(
        max.get() <= 32 * 1024 + 64 * 1024,
        "max buffered {}",
        max.get()
    );
}

#[test]
fn slow_client_bounds_streamed_response_memory() {
    let produced = Arc::new(AtomicUsize::new(0));
    let p2 = produced.clone();
    let p3 = produced.clone();
    with_server(
        ServerConfig::default(),
        move |r| App {
            reactor: r.clone(),
            max_buffered: Rc::new(Cell::new(0)),
            produced: p2,
        },
        move |addr| {
            // A small, fixed receive buffer (no autotuning): the kernel's
            // share of the stalled bytes is known.
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_recv_buffer_size(64 * 1024).unwrap();
            sock.connect(&addr.into()).unwrap();
            let mut s: std::net::TcpStream = sock.into();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            // The client reads nothing for a while: production must stall at
            // what the kernel holds (the server socket's send buffer, at
            // most tcp_wmem's maximum, and this socket's receive buffer)
            // plus what the server may hold itself (the transport's 64 KiB
            // high-water mark and one 32 KiB piece), with 1 MiB to spare.
            std::thread::sleep(Duration::from_millis(500));
            let stalled = p3.load(Ordering::SeqCst);
            let rcvbuf = socket2::SockRef::from(&s).recv_buffer_size().unwrap();
            let bound = tcp_wmem_max() + rcvbuf + (1 << 20);
            assert!(
                stalled < bound,
                "produced {stalled} bytes (bound {bound}) for a client that read nothing"
            );
            let mut buf = Vec::new();
            let r = read_response(&mut s, &mut buf, false);
            assert_eq!(r.body.len(), 64 << 20);
        },
    );
    assert_eq!(produced.load(Ordering::SeqCst), 64 << 20);
}

#[test]
fn slowloris_is_dropped_at_header_timeout_while_others_are_served() {
    let cfg = ServerConfig {
        header_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    with_server(cfg, app, |addr| {
        let mut slow = connect(addr);
        let start = Instant::now();
        let head = b"GET /fast HTTP/1.1\r\nHost: t\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut sent = 0;
        let mut served = 0;
        // A byte every 250 ms (faster than the brief's one per second, same effect).
        while sent < head.len() && start.elapsed() < Duration::from_secs(5) {
            if slow.write_all(&head[sent..sent + 1]).is_err() {
                break;
            }
            sent += 1;
            // Meanwhile another client is served promptly.
            let r = request(addr, b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n");
            assert_eq!(r.status, 200);
            served += 1;
            std::thread::sleep(Duration::from_millis(250));
        }
        assert!(sent < head.len(), "slow client was never dropped");
        assert!(served >= 3);
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(closed_by_peer(&mut slow));
        let elapsed = start.elapsed();
        assert!(
            elapsed >= Duration::from_millis(900),
            "dropped too early: {elapsed:?}"
        );
    });
}

#[test]
fn idle_keep_alive_connection_is_closed() {
    let cfg = ServerConfig {
        idle_timeout: Duration::from_millis(300),
        ..ServerConfig::default()
    };
    with_server(cfg, app, |addr| {
        let mut s = connect(addr);
        s.write_all(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_response(&mut s, &mut buf, false).status, 200);
        let t = Instant::now();
        assert!(closed_by_peer(&mut s));
        assert!(t.elapsed() >= Duration::from_millis(200));
    });
}

#[test]
fn head_continue_and_http10() {
    with_server(ServerConfig::default(), app, |addr| {
        let r = request(addr, b"HEAD /fast HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("4"));
        assert!(r.header("date").is_some());
        assert!(r.header("server").unwrap().starts_with("Torsion/"));

        let mut s = connect(addr);
        s.write_all(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        )
        .unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_response(&mut s, &mut buf, false).status, 100);
        s.write_all(b"hello").unwrap();
        let r = read_response(&mut s, &mut buf, false);
        assert_eq!((r.status, r.text().as_str()), (200, "hello"));

        let mut s = connect(addr);
        s.write_all(b"GET /fast HTTP/1.0\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf, false);
        assert_eq!(r.header("connection"), Some("close"));
        assert!(closed_by_peer(&mut s));

        // A chunked upload, answered chunked-aware.
        let mut s = connect(addr);
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        assert_eq!(read_response(&mut s, &mut buf, false).text(), "abcde");
    });
}

#[test]
fn malformed_request_over_tcp_gets_400_and_close() {
    with_server(ServerConfig::default(), app, |addr| {
        let mut s = connect(addr);
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf, false);
        assert_eq!(r.status, 400);
        assert!(closed_by_peer(&mut s));
    });
}

struct Hello;
impl Resource for Hello {
    fn is_leaf(&self) -> bool {
        true
    }
    fn render_get(&self, req: Request) -> Reply {
        Response::text(format!(
            "tree {} {:?}",
            req.prepath().join("/"),
            req.postpath()
        ))
        .into()
    }
}

#[test]
fn resource_tree_async_handlers_vhosts_redirects_mixed() {
    let make = |_r: &Reactor| {
        let root = Tree::new();
        root.put_child("hello", Rc::new(Hello));
        root.put_child(
            "async",
            Rc::new(handler_fn(|req: Request| async move {
                Ok(Response::text(format!("async {}", req.method())))
            })),
        );
        root.put_child(
            "old",
            Rc::new(Redirect::new("/hello", http::StatusCode::MOVED_PERMANENTLY)),
        );
        let api = Tree::new();
        api.set_index(Rc::new(Hello));
        root.put_child("api", Rc::new(api));
        let site = Site::new(Rc::new(root));
        let other = Tree::new();
        other.put_child(
            "hello",
            Rc::new(handler_fn(|_| async { Response::text("other host") })),
        );
        site.add_vhost("other.test", Rc::new(other));
        site.add_header("x-site", "torsion").unwrap();
        site
    };
    with_server(ServerConfig::default(), make, |addr| {
        let get = |path: &str, host: &str| {
            request(
                addr,
                format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
            )
        };
        let r = get("/hello/a/b", "x");
        assert_eq!(r.text(), "tree hello [\"a\", \"b\"]");
        assert_eq!(r.header("x-site"), Some("torsion"));
        assert_eq!(get("/async", "x").text(), "async GET");
        let r = get("/old", "x");
        assert_eq!((r.status, r.header("location")), (301, Some("/hello")));
        assert_eq!(get("/nope", "x").status, 404);
        assert_eq!(get("/api/", "x").text(), "tree api/ []");
        // Segments are percent-decoded (an encoded `/` stays inside its
        // segment); one that does not decode to UTF-8 is a 400, before any
        // handler runs.
        assert_eq!(
            get("/hello/caf%C3%A9/a%2Fb", "x").text(),
            "tree hello [\"café\", \"a/b\"]"
        );
        assert_eq!(get("/hello/a%FFb", "x").status, 400);
        assert_eq!(get("/nope/a%FFb", "x").status, 400);
        assert_eq!(get("/hello", "Other.Test:8080").text(), "other host");
        let r = request(addr, b"DELETE /hello HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
    });
}

#[test]
fn header_timer_restarts_for_each_pipelined_head() {
    let cfg = ServerConfig {
        header_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    with_server(cfg, app, |addr| {
        let mut s = connect(addr);
        let req = b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n";
        let half = req.len() / 2;
        // Input never runs dry: each write completes one head and starts the next.
        s.write_all(&req[..half]).unwrap();
        // 30 × 60 ms: well past the 1 s header timeout in all.
        let n = 30;
        for _ in 0..n {
            std::thread::sleep(Duration::from_millis(60));
            let mut w = req[half..].to_vec();
            w.extend_from_slice(&req[..half]);
            s.write_all(&w).unwrap();
        }
        s.write_all(&req[half..]).unwrap();
        let mut buf = Vec::new();
        for i in 0..=n {
            let r = read_response(&mut s, &mut buf, false);
            assert_eq!((i, r.status), (i, 200));
        }
    });
}

#[test]
fn graceful_shutdown_finishes_in_flight_responses() {
    use std::sync::atomic::AtomicBool;
    let reactor = Reactor::new().unwrap();
    let server = torsion_http::HttpServer::new(&reactor, app(&reactor), ServerConfig::default());
    server.stop_gracefully_on_shutdown();
    let port = server.listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = port.local_addr();
    let sent = Arc::new(AtomicBool::new(false));
    let s2 = sent.clone();
    let t = std::thread::spawn(move || {
        let mut s = connect(addr);
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        s2.store(true, Ordering::SeqCst);
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf, false);
        (r.status, r.text(), closed_by_peer(&mut s))
    });
    fn wait(r: Reactor, sent: Arc<std::sync::atomic::AtomicBool>, left: u32) {
        if sent.load(Ordering::SeqCst) || left == 0 {
            let r2 = r.clone();
            // Stop while /slow (300 ms) is still being worked on.
            r.call_later(Duration::from_millis(100), move || {
                let _ = r2.stop();
            });
            return;
        }
        let r2 = r.clone();
        r.call_later(Duration::from_millis(5), move || wait(r2, sent, left - 1));
    }
    wait(reactor.clone(), sent, 2000);
    reactor.run().unwrap();
    let (status, text, closed) = t.join().unwrap();
    assert_eq!((status, text.as_str(), closed), (200, "slow", true));
}

#[test]
fn head_never_pulls_a_streamed_body() {
    let produced = Arc::new(AtomicUsize::new(0));
    let p2 = produced.clone();
    with_server(
        ServerConfig::default(),
        move |r| App {
            reactor: r.clone(),
            max_buffered: Rc::new(Cell::new(0)),
            produced: p2,
        },
        |addr| {
            let mut s = connect(addr);
            s.write_all(
                b"HEAD /big HTTP/1.1\r\nHost: t\r\n\r\nGET /fast HTTP/1.1\r\nHost: t\r\n\r\n",
            )
            .unwrap();
            let mut buf = Vec::new();
            let h = read_response(&mut s, &mut buf, true);
            assert_eq!((h.status, h.header("transfer-encoding")), (200, None));
            assert_eq!(read_response(&mut s, &mut buf, false).text(), "fast");
        },
    );
    assert_eq!(produced.load(Ordering::SeqCst), 0);
}

#[test]
fn deep_pipelining_beyond_the_queue_limit_stays_in_order() {
    let cfg = ServerConfig {
        max_pipelined: 4,
        ..ServerConfig::default()
    };
    with_server(cfg, app, |addr| {
        let mut s = connect(addr);
        let mut req = Vec::new();
        let paths = ["/medium", "/fast", "/fast", "/slow", "/fast"];
        for i in 0..40 {
            let p = paths[i % paths.len()];
            req.extend_from_slice(format!("GET {p} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        }
        s.write_all(&req).unwrap();
        let mut buf = Vec::new();
        for i in 0..40 {
            let want = &paths[i % paths.len()][1..];
            assert_eq!(
                read_response(&mut s, &mut buf, false).text(),
                want,
                "response {i}"
            );
        }
    });
}

#[test]
fn wrk_load_gets_no_errors() {
    with_server(ServerConfig::default(), app, |addr| {
        let out = std::process::Command::new("wrk")
            .args([
                "-t1",
                "-c20",
                "-d1s",
                "--timeout",
                "5s",
                &format!("http://{addr}/fast"),
            ])
            .output()
            .expect("wrk must be installed (scripts/apt.d/http.txt)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(!text.contains("Socket errors"), "{text}");
        assert!(!text.contains("Non-2xx"), "{text}");
        let requests: u64 = text
            .lines()
            .find(|l| l.contains("requests in"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(requests > 100, "{text}");
    });
}

#[test]
fn early_413_survives_an_upload_in_progress() {
    let cfg = ServerConfig {
        max_body: 1 << 20,
        ..ServerConfig::default()
    };
    with_server(cfg, app, |addr| {
        let mut s = connect(addr);
        let total = 4 << 20;
        s.write_all(
            format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n").as_bytes(),
        )
        .unwrap();
        // The server answers at once but keeps draining, so the whole
        // upload goes through and the response is not destroyed by a reset.
        let chunk = vec![b'u'; 64 * 1024];
        for _ in 0..(total / chunk.len()) {
            s.write_all(&chunk).expect("upload cut off by the server");
        }
        let mut buf = Vec::new();
        let r = read_response(&mut s, &mut buf, false);
        assert_eq!((r.status, r.header("connection")), (413, Some("close")));
        assert!(closed_by_peer(&mut s));
    });
}

#[test]
fn stalled_request_body_is_closed_at_body_timeout() {
    let cfg = ServerConfig {
        body_timeout: Duration::from_secs(1),
        ..ServerConfig::default()
    };
    with_server(cfg, app, |addr| {
        // A slow but steady upload is fine...
        let mut s = connect(addr);
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\n")
            .unwrap();
        for b in b"steady" {
            std::thread::sleep(Duration::from_millis(100));
            s.write_all(&[*b]).unwrap();
        }
        let mut buf = Vec::new();
        assert_eq!(read_response(&mut s, &mut buf, false).text(), "steady");
        // ...a stalled one is dropped.
        let mut s = connect(addr);
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly ten b")
            .unwrap();
        let t = Instant::now();
        assert!(closed_by_peer(&mut s));
        assert!(
            t.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t.elapsed()
        );
    });
}

/// Answers with the path and the `x-tag` header; `/later` keeps its request
/// for 100 ms first, `/marked` adds an `x-marked` header.
struct Tags(Reactor);

impl Handler for Tags {
    fn handle(&self, req: Request) -> Reply {
        let answer = |req: &Request| {
            Response::text(format!(
                "{} {}",
                req.path(),
                req.header("x-tag").unwrap_or("-")
            ))
        };
        match req.path() {
            "/later" => {
                let d = Deferred::new();
                let d2 = d.clone();
                self.0.call_later(Duration::from_millis(100), move || {
                    let _ = d2.callback(answer(&req));
                });
                Reply::Later(d)
            }
            "/marked" => {
                let mut r = answer(&req);
                r.headers
                    .insert("x-marked", http::HeaderValue::from_static("yes"));
                r.into()
            }
            _ => answer(&req).into(),
        }
    }
}

#[test]
fn kept_requests_and_reused_buffers_keep_their_own_headers() {
    // Header values are slices of the input buffer and header maps are
    // reused: a request kept while later ones are read into reused
    // buffers must still see its own values, and a response must not
    // carry fields of an earlier one.
    with_server(
        ServerConfig::default(),
        |r| Tags(r.clone()),
        |addr| {
            let req = |path: &str, tag: &str| {
                format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Tag: {tag}\r\n\r\n").into_bytes()
            };
            let mut a = connect(addr);
            let mut b = connect(addr);
            let mut first = req("/later", "a-kept-while-others-come");
            first.extend(req("/marked", "a2"));
            first.extend(req("/plain", "a3"));
            a.write_all(&first).unwrap();
            let (mut abuf, mut bbuf) = (Vec::new(), Vec::new());
            // While `/later` waits, other batches go through the same thread's buffers.
            for i in 0..20 {
                let mut batch = req("/marked", &format!("b{i}"));
                batch.extend(req("/plain", &"x".repeat(i + 1)));
                b.write_all(&batch).unwrap();
                let m = read_response(&mut b, &mut bbuf, false);
                assert_eq!(m.text(), format!("/marked b{i}"));
                assert_eq!(m.header("x-marked"), Some("yes"));
                let p = read_response(&mut b, &mut bbuf, false);
                assert_eq!(p.text(), format!("/plain {}", "x".repeat(i + 1)));
                assert_eq!(p.header("x-marked"), None);
            }
            let got: Vec<String> = (0..3)
                .map(|_| read_response(&mut a, &mut abuf, false).text())
                .collect();
            assert_eq!(
                got,
                ["/later a-kept-while-others-come", "/marked a2", "/plain a3"]
            );
        },
    );
}

#[test]
fn a_large_file_for_a_client_that_reads_nothing_costs_no_memory() {
    let dir = std::env::temp_dir().join(format!("torsion-bigfile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let size = 64usize << 20;
    let data: Vec<u8> = (0..size).map(|i| (i % 249) as u8).collect();
    std::fs::write(dir.join("big.bin"), &data).unwrap();
    drop(data);
    let d2 = dir.clone();
    with_server(
        ServerConfig::default(),
        move |_| torsion_http::Site::new(Rc::new(torsion_http::File::new(&d2).unwrap())),
        move |addr| {
            let before = rss();
            let mut s = connect(addr);
            s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
                .unwrap();
            std::thread::sleep(Duration::from_millis(500));
            let stalled = rss().saturating_sub(before);
            // The file goes out through sendfile or in 32 KiB pieces held
            // to the transport's high-water mark: nothing near its size.
            assert!(stalled < 8 << 20, "memory grew by {stalled} bytes");
            let mut buf = Vec::new();
            let r = read_response(&mut s, &mut buf, false);
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len(), size);
            assert!(r
                .body
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % 249) as u8));
        },
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_one_gib_upload_streams_through_without_sitting_in_memory() {
    let peak = Rc::new(Cell::new(0usize));
    let p2 = peak.clone();
    let total: u64 = 1 << 30;
    with_server(
        ServerConfig {
            max_body: 2 << 30,
            ..ServerConfig::default()
        },
        move |_| {
            torsion_http::handler_fn(move |req: torsion_http::Request| {
                let peak = p2.clone();
                async move {
                    let mut body = req.into_body();
                    let (mut n, mut chunks) = (0u64, 0u32);
                    while let Some(c) = body.chunk().await? {
                        n += c.len() as u64;
                        chunks += 1;
                        if chunks % 128 == 0 {
                            peak.set(peak.get().max(rss()));
                        }
                    }
                    Ok(torsion_http::Response::text(n.to_string()))
                }
            })
        },
        move |addr| {
            let before = rss();
            let mut s = connect(addr);
            s.set_read_timeout(Some(Duration::from_secs(25))).unwrap();
            write!(
                s,
                "POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: {total}\r\n\r\n"
            )
            .unwrap();
            let chunk = vec![b'u'; 256 * 1024];
            for _ in 0..(total / chunk.len() as u64) {
                s.write_all(&chunk).unwrap();
            }
            let mut buf = Vec::new();
            let r = read_response(&mut s, &mut buf, false);
            assert_eq!(r.text(), total.to_string());
            BASELINE.store(before, Ordering::SeqCst);
        },
    );
    let grew = peak.get().saturating_sub(BASELINE.load(Ordering::SeqCst));
    assert!(peak.get() > 0, "the handler never sampled its memory");
    assert!(
        grew < 64 << 20,
        "memory grew by {grew} bytes during a 1 GiB upload"
    );
}

/// The resident size before the upload (set by the client thread).
static BASELINE: AtomicUsize = AtomicUsize::new(0);
