//! Peers that no one here wrote talk to a Torsion echo server: Python's
//! `socket` module, socat and OpenBSD netcat (installed by scripts/test.sh
//! from scripts/apt.d/core.txt).

mod common;

use std::cell::RefCell;
use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::rc::Rc;
use std::time::Duration;

use common::*;
use torsion_core::Reactor;

/// Runs `cmd` with `input` on stdin while the reactor serves; returns its output.
fn run_peer(reactor: &Reactor, mut cmd: Command, input: Vec<u8>) -> Output {
    let program = format!("{:?}", cmd.get_program());
    assert!(
        have(cmd.get_program().to_str().unwrap()),
        "{program} is required (scripts/apt.d/core.txt)"
    );
    let h = std::thread::spawn(move || {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
            // Dropping stdin sends EOF.
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    });
    let h = Rc::new(RefCell::new(Some(h)));
    let h2 = h.clone();
    stop_when(reactor, move || {
        h2.borrow().as_ref().is_some_and(|h| h.is_finished())
    });
    run_until_stopped(reactor, Duration::from_secs(60), &program);
    let h = h.borrow_mut().take().unwrap();
    h.join().unwrap()
}

const PY_ECHO_CLIENT: &str = r#"
import random, socket, sys, threading
port = int(sys.argv[1])
random.seed(7)
errors = []
def client(n):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        sent = bytearray()
        got = bytearray()
        for k in range(40):
            msg = bytes(random.getrandbits(8) for _ in range(random.randint(1, 5000)))
            s.sendall(msg)
            sent += msg
            while len(got) < len(sent):
                b = s.recv(65536)
                if not b:
                    raise RuntimeError("early EOF")
                got += b
        if got != sent:
            raise RuntimeError("mismatch")
        s.close()
    except Exception as e:
        errors.append(f"client {n}: {e!r}")
threads = [threading.Thread(target=client, args=(n,)) for n in range(10)]
for t in threads: t.start()
for t in threads: t.join()
if errors:
    print("\n".join(errors)); sys.exit(1)
print("OK 10")
"#;

#[test]
fn python_socket_clients_get_their_bytes_back() {
    let reactor = Reactor::new().unwrap();
    let port = echo_server(&reactor).local_addr().port();
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(PY_ECHO_CLIENT).arg(port.to_string());
    let out = run_peer(&reactor, cmd, Vec::new());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "OK 10");
}

fn blob() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 13 % 251) as u8).collect()
}

#[test]
fn socat_sends_a_file_and_gets_it_back() {
    let reactor = Reactor::new().unwrap();
    let port = echo_server(&reactor).local_addr().port();
    let mut cmd = Command::new("socat");
    // -t: after stdin's EOF (a half-close towards the server) wait at most 10 s
    // for the rest; the echo server flushes and closes well before that.
    cmd.args(["-t", "10", "-", &format!("TCP:127.0.0.1:{port}")]);
    let t0 = std::time::Instant::now();
    let out = run_peer(&reactor, cmd, blob());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout.len(), blob().len());
    assert!(out.stdout == blob(), "socat got different bytes back");
    assert!(
        t0.elapsed() < Duration::from_secs(9),
        "the server did not close after the peer's EOF"
    );
}

#[test]
fn netcat_sends_lines_and_gets_them_back() {
    let reactor = Reactor::new().unwrap();
    let port = echo_server(&reactor).local_addr().port();
    let mut cmd = Command::new("nc");
    // OpenBSD nc: -N shuts down the socket's write side at stdin EOF; -w bounds idle time.
    cmd.args(["-N", "-w", "10", "127.0.0.1", &port.to_string()]);
    let input: Vec<u8> = (0..2000)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect();
    let out = run_peer(&reactor, cmd, input.clone());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == input, "nc got different bytes back");
}

const PY_ECHO_SERVER: &str = r#"
import socket, sys
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(1)
srv.settimeout(20)
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
conn.settimeout(20)
total = 0
while True:
    b = conn.recv(65536)
    if not b:
        break
    total += len(b)
    conn.sendall(b)
conn.close()
print(total, flush=True)
"#;

/// The other direction: a Torsion client talks to Python's socket server.
#[test]
fn torsion_client_talks_to_a_python_server() {
    use std::io::{BufRead, BufReader};
    use torsion_core::testing::AccumulatingProtocol;
    use torsion_core::ConnectOptions;
    assert!(
        have("python3"),
        "python3 is required (scripts/apt.d/core.txt)"
    );
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(PY_ECHO_SERVER)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let port: u16 = line.trim().parse().unwrap();
    let reactor = Reactor::new().unwrap();
    let (p, log) = AccumulatingProtocol::half_closeable();
    let slot = RefCell::new(Some(p));
    let (f, outcome) = recording(move || slot.borrow_mut().take().unwrap(), None);
    reactor.connect_tcp(([127, 0, 0, 1], port).into(), f, ConnectOptions::default());
    let data = blob();
    let (l2, d2) = (log.clone(), data.clone());
    let sent = Rc::new(std::cell::Cell::new(false));
    stop_when(&reactor, move || {
        if let Some(t) = l2.transport() {
            if !sent.replace(true) {
                t.write(&d2);
                t.lose_write_connection();
            }
        }
        l2.lost().is_some()
    });
    run_until_stopped(&reactor, Duration::from_secs(60), "python server");
    assert!(outcome.failed.borrow().is_none());
    assert!(
        log.data() == data,
        "got {} of {} bytes back",
        log.data().len(),
        data.len()
    );
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), data.len().to_string());
    assert!(child.wait().unwrap().success());
}
