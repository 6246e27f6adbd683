//! One echo protocol over every stream transport: TCP, Unix stream, a child
//! process's pipes (`cat`), stdio (a child running the `stdio_echo`
//! example), and the in-memory loopback. The protocol types are the same in
//! every case; only the transport differs.

#[path = "transports_common/mod.rs"]
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

#[test]
fn systemd_socket_activation_of_a_child() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    use torsion_core::process::{ChildFd, ExitStatus};
    let bin = stdio_echo_binary();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // As systemd does: the socket at fd 3, LISTEN_PID naming the service itself.
    let mut opts = ProcessOptions::new(
        "/bin/sh",
        vec![
            "-c".to_string(),
            "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" systemd:domain=INET:index=0".to_string(),
            bin.to_string_lossy().into_owned(),
        ],
    );
    opts.child_fds = vec![(3, ChildFd::Inherit(listener.as_raw_fd()))];
    let reactor = Reactor::new().unwrap();
    let (proto, status) = ExitRecorder::new();
    let p = reactor.spawn_process(Box::new(proto), opts).unwrap();
    drop(listener); // only the child holds the socket now
    let client = std::thread::spawn(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"socket activated").unwrap();
        let mut buf = [0u8; 16];
        s.read_exact(&mut buf).unwrap();
        buf
    });
    assert!(run_until(&reactor, LIMIT, || client.is_finished()));
    assert_eq!(&client.join().unwrap(), b"socket activated");
    p.signal(libc::SIGTERM).unwrap();
    assert!(run_until(&reactor, LIMIT, || status.borrow().is_some()));
    assert_eq!(
        *status.borrow(),
        Some(ExitStatus::Code(0)),
        "graceful stop on SIGTERM"
    );
}

struct ExitRecorder(Rc<std::cell::RefCell<Option<torsion_core::process::ExitStatus>>>);

impl ExitRecorder {
    fn new() -> (
        Self,
        Rc<std::cell::RefCell<Option<torsion_core::process::ExitStatus>>>,
    ) {
        let s = Rc::new(std::cell::RefCell::new(None));
        (ExitRecorder(s.clone()), s)
    }
}

impl torsion_core::process::ProcessProtocol for ExitRecorder {
    fn child_data_received(&mut self, _fd: i32, _data: &[u8]) {}
    fn process_ended(&mut self, status: torsion_core::process::ExitStatus) {
        *self.0.borrow_mut() = Some(status);
    }
}

#[test]
fn stdio_on_a_regular_file_is_a_clear_error() {
    use std::os::fd::AsRawFd;
    use torsion_core::process::{ChildFd, ExitStatus, ProcessProtocol};
    let bin = stdio_echo_binary();
    let dir = TempDir::new("stdio-file");
    std::fs::write(dir.path("in.txt"), b"data").unwrap();
    let file = std::fs::File::open(dir.path("in.txt")).unwrap();
    let mut opts = ProcessOptions::new(bin.as_os_str(), Vec::<String>::new());
    opts.child_fds = vec![
        (0, ChildFd::Inherit(file.as_raw_fd())),
        (1, ChildFd::FromChild),
        (2, ChildFd::FromChild),
    ];
    #[derive(Default)]
    struct R(Rc<std::cell::RefCell<(Vec<u8>, Option<ExitStatus>)>>);
    impl ProcessProtocol for R {
        fn child_data_received(&mut self, fd: i32, data: &[u8]) {
            if fd == 2 {
                self.0.borrow_mut().0.extend_from_slice(data);
            }
        }
        fn process_ended(&mut self, s: ExitStatus) {
            self.0.borrow_mut().1 = Some(s);
        }
    }
    let r = R::default();
    let seen = r.0.clone();
    let reactor = Reactor::new().unwrap();
    let p = reactor.spawn_process(Box::new(r), opts).unwrap();
    let ok = run_until(&reactor, LIMIT, || seen.borrow().1.is_some());
    assert!(
        ok,
        "{:?} {:?} {}",
        seen.borrow(),
        p.status(),
        String::from_utf8_lossy(&seen.borrow().0)
    );
    let (err, status) = seen.borrow().clone();
    assert_eq!(status, Some(ExitStatus::Code(1)));
    let err = String::from_utf8_lossy(&err);
    assert!(err.contains("must be pipes, sockets or terminals"), "{err}");
}
