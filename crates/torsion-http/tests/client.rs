//! The client Agent against the Torsion server (same reactor) and against
//! Python's http.server.

mod common;

use std::cell::RefCell;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::Duration;

use torsion_core::{Deferred, Failure, Reactor};
use torsion_http::client::{AgentConfig, ClientError};
use torsion_http::{
    handler_fn, Agent, Body, HttpServer, Redirect, Request, Resource, Response, ServerConfig, Site,
    Tree,
};

/// Runs `body` on a fresh reactor with a Torsion server; returns its result.
fn run<F, Fut>(server_cfg: ServerConfig, body: F) -> Result<(), Failure>
where
    F: FnOnce(Reactor, String) -> Fut,
    Fut: Future<Output = Result<(), Failure>> + 'static,
{
    let reactor = Reactor::new().unwrap();
    let root = Tree::new();
    common::add_fast_and_echo(&root);
    root.put_child(
        "never",
        Rc::new(handler_fn(|_| async { Deferred::<Response>::new().await })),
    );
    root.put_child(
        "big",
        Rc::new(handler_fn(|_| async {
            let (tx, body) = Body::channel();
            for i in 0..128u32 {
                tx.write(&vec![(i % 251) as u8; 64 * 1024]);
            }
            tx.finish();
            Ok(Response::new(http::StatusCode::OK).with_body(body))
        })),
    );
    root.put_child(
        "len",
        Rc::new(handler_fn(|req: Request| async move {
            let te = req.header("transfer-encoding").unwrap_or("-").to_string();
            let mut body = req.into_body();
            let (mut n, mut sum) = (0usize, 0u64);
            while let Some(c) = body.chunk().await? {
                n += c.len();
                sum += c.iter().map(|&b| b as u64).sum::<u64>();
            }
            Ok(Response::text(format!("{n} {sum} {te}")))
        })),
    );
    root.put_child("r1", Rc::new(Redirect::new("/r2", http::StatusCode::FOUND)));
    root.put_child(
        "r2",
        Rc::new(Redirect::new("fast", http::StatusCode::MOVED_PERMANENTLY)),
    );
    root.put_child(
        "see",
        Rc::new(Redirect::new("/echo", http::StatusCode::SEE_OTHER)),
    );
    root.put_child(
        "moved",
        Rc::new(Redirect::new("/echo", http::StatusCode::MOVED_PERMANENTLY)),
    );
    root.put_child(
        "found",
        Rc::new(Redirect::new("/echo", http::StatusCode::FOUND)),
    );
    root.put_child(
        "keep",
        Rc::new(Redirect::new("/echo", http::StatusCode::TEMPORARY_REDIRECT)),
    );
    root.put_child(
        "loop",
        Rc::new(Redirect::new("/loop", http::StatusCode::FOUND)),
    );
    let server = HttpServer::new(&reactor, Site::new(Rc::new(root)), server_cfg);
    let port = server.listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let base = format!("http://{}", port.local_addr());
    let result: Rc<RefCell<Option<Result<(), Failure>>>> = Rc::default();
    let r2 = result.clone();
    let rr = reactor.clone();
    Deferred::from_future(&reactor, body(reactor.clone(), base)).finally(move |r| {
        *r2.borrow_mut() = Some(r);
        let _ = rr.stop();
    });
    let rr = reactor.clone();
    reactor.call_later(Duration::from_secs(30), move || {
        let _ = rr.stop();
    });
    reactor.set_shutdown_grace(Duration::from_millis(100));
    reactor.run().unwrap();
    let r = result.borrow_mut().take();
    r.unwrap_or_else(|| Err(Failure::msg("timed out")))
}

use common::text;

#[test]
fn agent_get_post_pool_and_streaming_against_torsion() {
    run(ServerConfig::default(), |reactor, base| async move {
        let agent = Agent::with_config(
            &reactor,
            AgentConfig {
                per_host: 2,
                ..AgentConfig::default()
            },
        );
        assert_eq!(
            text(agent.get(&format!("{base}/fast"))).await?,
            (200, "fast".into())
        );
        assert_eq!(
            text(agent.post(&format!("{base}/echo"), b"payload".to_vec())).await?,
            (200, "POST payload".into())
        );
        // Sequential requests reuse one connection.
        for _ in 0..5 {
            assert_eq!(text(agent.get(&format!("{base}/fast"))).await?.1, "fast");
        }
        let port: u16 = base.rsplit(':').next().unwrap().parse().unwrap();
        assert_eq!(agent.open_connections("127.0.0.1", port), 1);
        // Ten at once over at most two connections.
        let ds: Vec<_> = (0..10)
            .map(|_| agent.get(&format!("{base}/fast")))
            .collect();
        assert!(agent.open_connections("127.0.0.1", port) <= 2);
        for d in ds {
            assert_eq!(text(d).await?.1, "fast");
        }
        assert!(agent.open_connections("127.0.0.1", port) <= 2);
        // A streamed 8 MiB chunked body, read piece by piece.
        let resp = agent.get(&format!("{base}/big")).await?;
        assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
        let mut body = resp.into_body();
        let (mut total, mut pieces) = (0usize, 0usize);
        while let Some(c) = body.chunk().await? {
            total += c.len();
            pieces += 1;
        }
        assert_eq!(total, 8 << 20);
        assert!(pieces > 1);
        Ok(())
    })
    .unwrap();
}

#[test]
fn agent_redirects_and_timeouts() {
    run(ServerConfig::default(), |reactor, base| async move {
        let agent = Agent::new(&reactor);
        let r = agent.get(&format!("{base}/r1")).await?;
        assert_eq!(r.url.path(), "/fast");
        assert_eq!(r.bytes(100).await?, b"fast");
        // 303 turns POST into GET without a body; 307 keeps both.
        assert_eq!(
            text(agent.post(&format!("{base}/see"), b"data".to_vec()))
                .await?
                .1,
            "GET "
        );
        assert_eq!(
            text(agent.post(&format!("{base}/keep"), b"data".to_vec()))
                .await?
                .1,
            "POST data"
        );
        // 301 and 302 after a POST become GET too (what browsers do).
        for path in ["moved", "found"] {
            assert_eq!(
                text(agent.post(&format!("{base}/{path}"), b"data".to_vec()))
                    .await?
                    .1,
                "GET ",
                "{path}"
            );
        }
        let e = agent.get(&format!("{base}/loop")).await.unwrap_err();
        assert!(matches!(
            e.downcast_ref::<ClientError>(),
            Some(ClientError::TooManyRedirects(10))
        ));
        // No redirects followed when the limit is 0.
        let no = Agent::with_config(
            &reactor,
            AgentConfig {
                max_redirects: 0,
                ..AgentConfig::default()
            },
        );
        assert_eq!(no.get(&format!("{base}/r1")).await?.status.as_u16(), 302);
        // Response timeout.
        let quick = Agent::with_config(
            &reactor,
            AgentConfig {
                response_timeout: Duration::from_millis(200),
                ..AgentConfig::default()
            },
        );
        let e = quick.get(&format!("{base}/never")).await.unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<ClientError>(),
                Some(ClientError::Timeout(_))
            ),
            "{e}"
        );
        // Bad URLs and refused connections fail cleanly.
        assert!(agent.get("ftp://x/").await.is_err());
        assert!(agent.get("https://127.0.0.1:1/").await.is_err());
        assert!(agent.get("http://127.0.0.1:1/").await.is_err());
        Ok(())
    })
    .unwrap();
}

#[test]
fn agent_survives_server_closing_idle_connection() {
    let cfg = ServerConfig {
        idle_timeout: Duration::from_millis(100),
        ..ServerConfig::default()
    };
    run(cfg, |reactor, base| async move {
        let agent = Agent::new(&reactor);
        assert_eq!(text(agent.get(&format!("{base}/fast"))).await?.1, "fast");
        let wait = Deferred::<()>::new();
        let w2 = wait.clone();
        reactor.call_later(Duration::from_millis(300), move || {
            let _ = w2.callback(());
        });
        wait.await?;
        assert_eq!(text(agent.get(&format!("{base}/fast"))).await?.1, "fast");
        Ok(())
    })
    .unwrap();
}

const PY_SERVER: &str = r#"
import functools, http.server, sys
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), h)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

#[test]
fn agent_against_python_http_server() {
    let dir = std::env::temp_dir().join(format!("torsion-agent-py-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.join("data.bin"), &data).unwrap();
    std::fs::write(dir.join("sub/f.txt"), "in sub").unwrap();
    let mut child = Command::new("python3")
        .args(["-c", PY_SERVER, dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 must be installed");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port: u16 = line.trim().parse().unwrap();
    let result = run(ServerConfig::default(), move |reactor, _| async move {
        let agent = Agent::new(&reactor);
        let base = format!("http://127.0.0.1:{port}");
        common::browse_python_server(&agent, &base, &data).await
    });
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    result.unwrap();
}

#[test]
fn response_parser_framing_and_errors() {
    use torsion_http::client::{ResponseEvent, ResponseParser};
    let collect = |input: &[u8], head: bool, eof: bool| {
        let mut p = ResponseParser::new(head, 4096);
        let mut evs = Vec::new();
        for b in input.chunks(3) {
            p.feed(b);
            while let Some(e) = p.next_event()? {
                evs.push(e);
            }
        }
        if eof {
            p.feed_eof();
            while let Some(e) = p.next_event()? {
                evs.push(e);
            }
        }
        Ok::<_, ClientError>(evs)
    };
    let body = |evs: &[ResponseEvent]| {
        evs.iter()
            .filter_map(|e| match e {
                ResponseEvent::Data(d) => Some(d.clone()),
                _ => None,
            })
            .flatten()
            .collect::<Vec<u8>>()
    };
    let evs = collect(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", false, false).unwrap();
    assert_eq!(body(&evs), b"abc");
    assert_eq!(evs.last(), Some(&ResponseEvent::End));
    let evs = collect(b"HTTP/1.0 200 OK\r\n\r\nuntil close", false, true).unwrap();
    assert!(matches!(
        &evs[0],
        ResponseEvent::Head {
            keep_alive: false,
            ..
        }
    ));
    assert_eq!(body(&evs), b"until close");
    let evs = collect(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false).unwrap();
    assert_eq!(evs.len(), 2);
    assert!(collect(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
        false,
        true
    )
    .is_err());
    assert!(collect(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        false,
        false
    )
    .is_err());
    assert!(collect(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        false,
        false
    )
    .is_err());
    assert!(collect(b"garbage\r\n\r\n", false, false).is_err());
}

mod parser_props {
    use super::cases;
    use proptest::prelude::*;
    use torsion_http::client::{ResponseEvent, ResponseParser};

    fn run(data: &[u8], step: usize) -> Option<Vec<u8>> {
        let mut p = ResponseParser::new(false, 4096);
        let mut body = Vec::new();
        for piece in data.chunks(step.max(1)) {
            p.feed(piece);
            while let Some(e) = p.next_event().ok()? {
                if let ResponseEvent::Data(d) = e {
                    body.extend(d);
                }
            }
        }
        p.feed_eof();
        while let Some(e) = p.next_event().ok()? {
            if let ResponseEvent::Data(d) = e {
                body.extend(d);
            }
        }
        Some(body)
    }

    fn responses() -> impl Strategy<Value = Vec<u8>> {
        let good = prop_oneof![
            Just(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec()),
            Just(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n".to_vec()),
            Just(b"HTTP/1.0 200 OK\r\n\r\nhello".to_vec()),
        ];
        let damaged = (good.clone(), any::<usize>(), any::<u8>()).prop_map(|(mut v, i, b)| {
            let n = v.len();
            v[i % n] = b;
            v
        });
        prop_oneof![
            good,
            damaged,
            proptest::collection::vec(any::<u8>(), 0..300)
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: cases(512), ..ProptestConfig::default() })]
        /// The fuzz target's property: no panic; whole and split parses agree.
        #[test]
        fn response_parser_split_invariant(data in responses(), step in 1usize..7) {
            if let (Some(a), Some(b)) = (run(&data, data.len()), run(&data, step)) {
                prop_assert_eq!(a, b);
            }
        }
    }
}

#[test]
fn reverse_proxy_forwards_and_streams() {
    run(ServerConfig::default(), |reactor, base| async move {
        use torsion_http::proxy::ReverseProxy;
        let upstream_agent = Agent::with_config(
            &reactor,
            AgentConfig {
                max_redirects: 0,
                response_timeout: Duration::from_secs(1),
                ..AgentConfig::default()
            },
        );
        let root = Tree::new();
        root.put_child(
            "up",
            Rc::new(ReverseProxy::new(upstream_agent.clone(), &base).unwrap()),
        );
        root.put_child(
            "dead",
            Rc::new(ReverseProxy::new(upstream_agent, "http://127.0.0.1:1").unwrap()),
        );
        let proxy = HttpServer::new(&reactor, Site::new(Rc::new(root)), ServerConfig::default());
        let port = proxy.listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let front = format!("http://{}", port.local_addr());
        let client = Agent::with_config(
            &reactor,
            AgentConfig {
                max_redirects: 0,
                ..AgentConfig::default()
            },
        );
        assert_eq!(
            text(client.get(&format!("{front}/up/fast"))).await?,
            (200, "fast".into())
        );
        assert_eq!(
            text(client.post(&format!("{front}/up/echo"), b"via proxy".to_vec()))
                .await?
                .1,
            "POST via proxy"
        );
        // Redirects pass through untouched.
        let r = client.get(&format!("{front}/up/r1")).await?;
        assert_eq!(
            (r.status.as_u16(), r.header("location")),
            (302, Some("/r2"))
        );
        // A streamed upstream body streams through.
        let r = client.get(&format!("{front}/up/big")).await?;
        assert_eq!(r.bytes(16 << 20).await?.len(), 8 << 20);
        assert_eq!(text(client.get(&format!("{front}/dead/x"))).await?.0, 502);
        assert_eq!(text(client.get(&format!("{front}/up/never"))).await?.0, 504);
        Ok(())
    })
    .unwrap();
}

/// Generates `n` bytes (i % 251) on demand.
struct Gen {
    n: usize,
    at: usize,
}

impl torsion_http::BodySource for Gen {
    fn next_chunk(&mut self, max: usize, _: &torsion_http::Notify) -> torsion_http::Chunk {
        if self.at == self.n {
            return torsion_http::Chunk::End;
        }
        let k = max.min(self.n - self.at);
        let d = (self.at..self.at + k).map(|i| (i % 251) as u8).collect();
        self.at += k;
        torsion_http::Chunk::Data(d)
    }
}

fn gen_sum(n: usize) -> u64 {
    (0..n).map(|i| (i % 251) as u64).sum()
}

#[test]
fn agent_streams_request_bodies_directly_and_through_proxy() {
    use torsion_http::client::ClientRequest;
    use torsion_http::proxy::ReverseProxy;
    run(ServerConfig::default(), |reactor, base| async move {
        let agent = Agent::new(&reactor);
        let n = 6 << 20;
        // Chunked (length unknown).
        let req = ClientRequest::new(http::Method::POST, format!("{base}/len").parse().unwrap())
            .with_stream(Body::Stream {
                len: None,
                source: Box::new(Gen { n, at: 0 }),
            });
        assert_eq!(
            text(agent.request(req)).await?.1,
            format!("{n} {} chunked", gen_sum(n))
        );
        // Content-Length known.
        let req = ClientRequest::new(http::Method::PUT, format!("{base}/len").parse().unwrap())
            .with_stream(Body::Stream {
                len: Some(n as u64),
                source: Box::new(Gen { n, at: 0 }),
            });
        assert_eq!(
            text(agent.request(req)).await?.1,
            format!("{n} {} -", gen_sum(n))
        );
        // Through the reverse proxy, the upload streams on to the upstream.
        let root = Tree::new();
        root.put_child(
            "up",
            Rc::new(ReverseProxy::new(Agent::new(&reactor), &base).unwrap()),
        );
        let proxy = HttpServer::new(&reactor, Site::new(Rc::new(root)), ServerConfig::default());
        let port = proxy.listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
        let req = ClientRequest::new(
            http::Method::POST,
            format!("http://{}/up/len", port.local_addr())
                .parse()
                .unwrap(),
        )
        .with_stream(Body::Stream {
            len: None,
            source: Box::new(Gen { n, at: 0 }),
        });
        assert_eq!(
            text(agent.request(req)).await?.1,
            format!("{n} {} chunked", gen_sum(n))
        );
        Ok(())
    })
    .unwrap();
}

/// Case count: `PROPTEST_CASES` when set (long local campaigns), else `n`.
#[allow(dead_code)]
fn cases(n: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(n)
}

/// Reads one request head (and its Content-Length body) from a raw socket;
/// returns its request line, or `None` at EOF.
fn read_raw_request(s: &mut std::net::TcpStream) -> Option<String> {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => buf.push(byte[0]),
            _ => return None,
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    head.lines().next().map(str::to_string)
}

/// Waits `d` on `reactor` time.
async fn sleep(reactor: &Reactor, d: Duration) -> Result<(), Failure> {
    let wait = Deferred::<()>::new();
    let w2 = wait.clone();
    reactor.call_later(d, move || {
        let _ = w2.callback(());
    });
    wait.await
}

/// A bare answer to any request.
const RAW_OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A raw HTTP server on a thread: accepts `conns` connections one after
/// another and runs `serve` on each (with its number); returns the port
/// and the thread, whose result is what `serve` returned, in order.
fn raw_server<T: Send + 'static>(
    conns: usize,
    serve: impl Fn(usize, std::net::TcpStream) -> T + Send + 'static,
) -> (u16, std::thread::JoinHandle<Vec<T>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        (0..conns)
            .map(|n| serve(n, listener.accept().unwrap().0))
            .collect()
    });
    (port, t)
}

#[test]
fn a_pooled_connection_the_server_closed_is_retried_once_for_idempotent_requests_only() {
    use std::io::Write;
    // Each connection: answer its first request, then read the next one
    // and close without answering — the race a pool meets when a server
    // closes an idle connection just as a request goes out on it.
    let (port, server) = raw_server(2, |conn, mut s| {
        let mut log = vec![(conn, read_raw_request(&mut s).unwrap())];
        s.write_all(RAW_OK).unwrap();
        if let Some(second) = read_raw_request(&mut s) {
            log.push((conn, second));
        }
        log
    });
    run(ServerConfig::default(), move |reactor, _| async move {
        let agent = Agent::new(&reactor);
        let base = format!("http://127.0.0.1:{port}");
        assert_eq!(text(agent.get(&format!("{base}/a"))).await?.1, "ok");
        // Sent on the pooled connection, which the server then closes:
        // retried on a new connection, and answered there.
        assert_eq!(text(agent.get(&format!("{base}/b"))).await?.1, "ok");
        // A POST is not idempotent: the same race fails it, typed.
        let e = agent
            .post(&format!("{base}/c"), b"x".to_vec())
            .await
            .unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<ClientError>(),
                Some(ClientError::ConnectionClosed)
            ),
            "{e}"
        );
        Ok(())
    })
    .unwrap();
    let log: Vec<(usize, String)> = server.join().unwrap().concat();
    let want: Vec<(usize, String)> = vec![
        (0, "GET /a HTTP/1.1".into()),
        (0, "GET /b HTTP/1.1".into()),
        (1, "GET /b HTTP/1.1".into()),
        (1, "POST /c HTTP/1.1".into()),
    ];
    assert_eq!(log, want);
}

#[test]
fn pooled_connections_are_closed_after_the_idle_timeout() {
    use std::io::Write;
    // Answers every request; returns, per connection, how many it served
    // before the client closed it.
    let (port, server) = raw_server(3, |_, mut s| {
        let mut served = 0;
        while read_raw_request(&mut s).is_some() {
            served += 1;
            s.write_all(RAW_OK).unwrap();
        }
        served
    });
    run(ServerConfig::default(), move |reactor, _| async move {
        let url = format!("http://127.0.0.1:{port}/x");
        let cfg = AgentConfig {
            idle_timeout: Duration::from_millis(100),
            ..AgentConfig::default()
        };
        let short = Agent::with_config(&reactor, cfg.clone());
        assert_eq!(text(short.get(&url)).await?.1, "ok");
        sleep(&reactor, Duration::from_millis(400)).await?;
        // The first connection was closed by the agent: a new one.
        assert_eq!(text(short.get(&url)).await?.1, "ok");
        let again = Agent::with_config(&reactor, cfg);
        // Within the idle timeout the connection is reused.
        assert_eq!(text(again.get(&url)).await?.1, "ok");
        sleep(&reactor, Duration::from_millis(20)).await?;
        assert_eq!(text(again.get(&url)).await?.1, "ok");
        // Let the idle timers close both agents' connections.
        sleep(&reactor, Duration::from_millis(400)).await?;
        Ok(())
    })
    .unwrap();
    // Connection 1 served one request and was closed by the idle timer
    // (the server saw EOF: its thread moved on); connection 2 likewise;
    // connection 3 served two requests.
    assert_eq!(server.join().unwrap(), vec![1, 1, 2]);
}

#[test]
fn connecting_longer_than_the_connect_timeout_fails_typed() {
    use socket2::{Domain, Socket, Type};
    // A listener whose accept queue is full: the kernel drops further SYNs,
    // so a connection attempt hangs until someone gives up.
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            fillers.push(s);
        }
    }
    assert!(
        !fillers.is_empty(),
        "the accept queue should take one connection"
    );
    let started = std::time::Instant::now();
    run(ServerConfig::default(), move |reactor, _| async move {
        let agent = Agent::with_config(
            &reactor,
            AgentConfig {
                connect_timeout: Duration::from_millis(300),
                ..AgentConfig::default()
            },
        );
        let e = agent.get(&format!("http://{addr}/x")).await.unwrap_err();
        assert!(
            matches!(
                e.downcast_ref::<torsion_core::ConnectionError>(),
                Some(torsion_core::ConnectionError::Timeout(_))
            ),
            "{e}"
        );
        Ok(())
    })
    .unwrap();
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(250), "{took:?}");
    drop(fillers);
    drop(sock);
}
