//! A flood of connections past the process's fd limit: accept errors are
//! logged and retried with backoff (no busy loop), accepted connections keep
//! working, and pending ones are served once fds free up.
//!
//! The server runs in a child process (this test binary, re-run with an
//! environment variable) so lowering RLIMIT_NOFILE cannot disturb other tests.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream as StdStream;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::time::Duration;

use common::*;
use torsion_core::unix::{UnixListenOptions, UnixPath};
use torsion_core::{factory_fn, Phase, Reactor, SystemEvent};

/// A client socket of either kind.
trait Client: Read + Write {
    fn set_timeout(&self, d: Duration);
}
impl Client for StdStream {
    fn set_timeout(&self, d: Duration) {
        self.set_read_timeout(Some(d)).unwrap();
    }
}
impl Client for StdUnixStream {
    fn set_timeout(&self, d: Duration) {
        self.set_read_timeout(Some(d)).unwrap();
    }
}

#[test]
#[ignore = "helper: run as a child process by accept_errors_back_off_and_nothing_is_lost"]
fn emfile_child() {
    if std::env::var("TORSION_EMFILE_CHILD").is_err() {
        return;
    }
    let (logs, _guard) = capture_logs();
    let reactor = Reactor::new().unwrap();
    // The same listener loop serves TCP and Unix sockets: test either.
    let ready = match std::env::var("TORSION_EMFILE_UNIX") {
        Ok(path) => {
            reactor
                .listen_unix(
                    UnixPath::File(path.clone().into()),
                    factory_fn(Echo::default),
                    UnixListenOptions::default(),
                )
                .unwrap();
            path
        }
        Err(_) => echo_server(&reactor).local_addr().port().to_string(),
    };
    reactor.install_signal_handlers().unwrap();
    let headroom: u64 = 6;
    let open = torsion_core::open_fd_count().unwrap() as u64;
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        // Descriptors are numbered from 0, so the limit is the highest fd + 1.
        l.rlim_cur = open + headroom;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
    }
    let logs2 = logs.clone();
    reactor.add_system_event_trigger(Phase::After, SystemEvent::Shutdown, move || {
        let text = logs2.text();
        let failures = text.lines().filter(|l| l.contains("accept failed")).count();
        let emfile = text.contains("Too many open files");
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        let cpu_ms = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000
            + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
        println!("STATS failures={failures} emfile={emfile} cpu_ms={cpu_ms}");
        None
    });
    println!("READY {ready}");
    std::io::stdout().flush().unwrap();
    let r = reactor.clone();
    reactor.call_later(Duration::from_secs(40), move || {
        println!("NO-SIGNAL");
        let _ = r.stop();
    });
    reactor.run().unwrap();
    println!("CLEAN-EXIT");
}

#[test]
fn accept_errors_back_off_and_nothing_is_lost() {
    flood(None);
}

#[test]
fn unix_accept_errors_back_off_and_nothing_is_lost() {
    let path = std::env::temp_dir().join(format!("torsion-emfile-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    flood(Some(path.display().to_string()));
    let _ = std::fs::remove_file(&path);
}

fn flood(unix: Option<String>) {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = std::process::Command::new(exe);
    if let Some(p) = &unix {
        cmd.env("TORSION_EMFILE_UNIX", p);
    }
    let mut child = cmd
        .args(["--ignored", "--exact", "emfile_child", "--nocapture"])
        .env("TORSION_EMFILE_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut ready = None;
    let mut line = String::new();
    for _ in 0..50 {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(p) = line.trim().strip_prefix("READY ") {
            ready = Some(p.to_string());
            break;
        }
    }
    let ready = ready.expect("child never became ready");
    const N: usize = 30;
    let mut conns: Vec<Option<Box<dyn Client>>> = (0..N)
        .map(|i| {
            let mut s: Box<dyn Client> = match &unix {
                Some(path) => Box::new(StdUnixStream::connect(path).unwrap()),
                None => Box::new(
                    StdStream::connect(("127.0.0.1", ready.parse::<u16>().unwrap())).unwrap(),
                ),
            };
            s.write_all(format!("conn{i:02}").as_bytes()).unwrap();
            Some(s)
        })
        .collect();
    // Phase 1: while the child is out of fds, the connections it accepted work.
    std::thread::sleep(Duration::from_millis(300));
    let mut echoed = [false; N];
    for (i, c) in conns.iter_mut().enumerate() {
        let s = c.as_mut().unwrap();
        // The first connection is accepted first (FIFO): wait for it as long
        // as a loaded machine needs; the rest get a short look.
        let wait = if i == 0 { 10_000 } else { 50 };
        s.set_timeout(Duration::from_millis(wait));
        let mut b = [0u8; 6];
        if s.read_exact(&mut b).is_ok() {
            assert_eq!(&b, format!("conn{i:02}").as_bytes());
            echoed[i] = true;
        }
    }
    let first = echoed.iter().filter(|e| **e).count();
    assert!(first >= 1, "nothing was accepted");
    assert!(
        first < N,
        "the fd limit was never reached ({first} accepted)"
    );
    // Let the child sit at its limit for a while: a busy loop would burn CPU now.
    std::thread::sleep(Duration::from_millis(700));
    // Phase 2: close the served connections; the pending ones must be served.
    for (i, c) in conns.iter_mut().enumerate() {
        if echoed[i] {
            *c = None;
        }
    }
    let mut served_late = 0;
    for (i, c) in conns.iter_mut().enumerate() {
        if echoed[i] {
            continue;
        }
        let s = c.as_mut().unwrap();
        s.set_timeout(Duration::from_secs(15));
        let mut b = [0u8; 6];
        s.read_exact(&mut b)
            .unwrap_or_else(|e| panic!("pending connection {i} never served: {e}"));
        assert_eq!(&b, format!("conn{i:02}").as_bytes());
        served_late += 1;
        // Free its fd so the next pending one fits.
        *c = None;
    }
    assert_eq!(first + served_late, N);
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let mut tail = String::new();
    out.read_to_string(&mut tail).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "child: {status:?}\n{tail}");
    assert!(tail.contains("CLEAN-EXIT"), "{tail}");
    let stats = tail
        .lines()
        .find_map(|l| l.strip_prefix("STATS "))
        .unwrap_or_else(|| panic!("no stats:\n{tail}"));
    let field = |name: &str| -> String {
        stats
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .unwrap()
            .to_string()
    };
    eprintln!("child stats: {stats}");
    let failures: usize = field("failures").parse().unwrap();
    let cpu_ms: u64 = field("cpu_ms").parse().unwrap();
    assert_eq!(field("emfile"), "true", "{tail}");
    // Logged, and retried with backoff: a handful of attempts in ~1 s, not thousands.
    assert!(failures >= 1, "{tail}");
    assert!(
        failures <= 200,
        "{failures} accept failures logged: busy retrying"
    );
    assert!(cpu_ms < 1000, "child used {cpu_ms} ms of CPU: busy looping");
}
