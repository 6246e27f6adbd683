//! One echo protocol over every stream transport: TCP, Unix stream, a child
//! process's pipes (`cat`), stdio (a child running the `stdio_echo`
//! example), and the in-memory loopback. The protocol types are the same in
//! every case; only the transport differs.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;
use std::time::Duration;

use common::{run_until, Echo, Pinger, TempDir};
use torsion_core::process::ProcessOptions;
use torsion_core::testing::LoopbackPump;
use torsion_core::unix::{UnixListenOptions, UnixPath};
use torsion_core::{factory_fn, ConnectOptions, ConnectionError, Reactor};

const PAYLOAD: &[u8] = b"the same protocol over every transport\nline two\n";
const LIMIT: Duration = Duration::from_secs(10);

#[test]
fn echo_over_tcp() {
    let reactor = Reactor::new().unwrap();
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), factory_fn(Echo::default))
        .unwrap();
    let (pinger, log) = Pinger::new(PAYLOAD);
    let pinger = std::cell::RefCell::new(Some(pinger));
    reactor.connect_tcp(
        port.local_addr(),
        factory_fn(move || pinger.borrow_mut().take().expect("one connection")),
        ConnectOptions::default(),
    );
    assert!(run_until(&reactor, LIMIT, || log.borrow().lost.is_some()));
    assert_eq!(log.borrow().received, PAYLOAD);
    assert_eq!(log.borrow().kind, Some("TCP"));
}

#[test]
fn echo_over_unix_stream() {
    let dir = TempDir::new("echo-unix");
    let path = dir.path("echo.sock");
    let reactor = Reactor::new().unwrap();
    reactor
        .listen_unix(
            UnixPath::from(path.as_path()),
            factory_fn(Echo::default),
            UnixListenOptions::default(),
        )
        .unwrap();
    let (pinger, log) = Pinger::new(PAYLOAD);
    let pinger = std::cell::RefCell::new(Some(pinger));
    reactor.connect_unix(
        UnixPath::from(path.as_path()),
        factory_fn(move || pinger.borrow_mut().take().expect("one connection")),
        None,
    );
    assert!(run_until(&reactor, LIMIT, || log.borrow().lost.is_some()));
    assert_eq!(log.borrow().received, PAYLOAD);
    assert_eq!(log.borrow().kind, Some("Unix"));
}

#[test]
fn echo_over_process_pipes_with_cat() {
    let reactor = Reactor::new().unwrap();
    let (pinger, log) = Pinger::new(PAYLOAD);
    let p = reactor
        .spawn_process_stream(
            Box::new(pinger),
            ProcessOptions::new("cat", Vec::<String>::new()),
        )
        .unwrap();
    // Pinger closes (our end of cat's stdin) once the echo is back; cat then exits 0.
    assert!(run_until(&reactor, LIMIT, || log.borrow().lost.is_some()));
    assert_eq!(log.borrow().received, PAYLOAD);
    assert_eq!(log.borrow().kind, Some("process"));
    assert_eq!(
        log.borrow().lost.as_deref(),
        Some(ConnectionError::Done.to_string().as_str())
    );
    assert!(p.status().is_some_and(|s| s.success()));
}

/// Path of the `stdio_echo` example (built by `cargo test`/nextest along with the tests).
fn stdio_echo_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
    let bin = dir.join("examples").join("stdio_echo");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "-q",
                "-p",
                "torsion-core",
                "--example",
                "stdio_echo",
            ])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the stdio_echo example failed");
    }
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

#[test]
fn echo_over_stdio_of_a_child() {
    let bin = stdio_echo_binary();
    let reactor = Reactor::new().unwrap();
    let (pinger, log) = Pinger::new(PAYLOAD);
    let mut opts = ProcessOptions::new(bin.as_os_str(), Vec::<String>::new());
    opts.env = Some(vec![("RUST_LOG".into(), "off".into())]);
    let p = reactor
        .spawn_process_stream(Box::new(pinger), opts)
        .unwrap();
    assert!(run_until(&reactor, LIMIT, || log.borrow().lost.is_some()));
    assert_eq!(log.borrow().received, PAYLOAD);
    // The child's stdio transport saw end of input, flushed, and exited cleanly.
    assert!(run_until(&reactor, LIMIT, || p.status().is_some()));
    assert!(p.status().unwrap().success(), "{:?}", p.status());
}

#[test]
fn echo_over_memory_loopback() {
    let (pinger, log) = Pinger::new(PAYLOAD);
    let pump = LoopbackPump::connect(Box::new(Echo::default()), Box::new(pinger));
    for _ in 0..20 {
        pump.pump();
    }
    assert_eq!(log.borrow().received, PAYLOAD);
    assert!(log.borrow().lost.is_some());
}

#[test]
fn unix_echo_server_with_socat_client() {
    let dir = TempDir::new("socat-unix");
    let path = dir.path("s.sock");
    let reactor = Reactor::new().unwrap();
    let port = reactor
        .listen_unix(
            UnixPath::from(path.as_path()),
            factory_fn(Echo::default),
            UnixListenOptions::default(),
        )
        .unwrap();
    let p2 = path.clone();
    // socat half-closes after stdin ends, then waits up to 2 s for the echo.
    let peer = std::thread::spawn(move || {
        common::run_peer(
            Command::new("socat").args(["-t", "2", "-", &format!("UNIX-CONNECT:{}", p2.display())]),
            b"hello over a unix socket\n",
            Duration::from_secs(10),
        )
    });
    assert!(run_until(&reactor, LIMIT, || peer.is_finished()));
    assert_eq!(peer.join().unwrap(), b"hello over a unix socket\n");
    let _ = port.stop_listening();
    assert!(!path.exists(), "socket file removed on stop_listening");
    let _ = Rc::new(());
}
