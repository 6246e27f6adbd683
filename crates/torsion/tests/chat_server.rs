//! Drives the chat_server example with two Python clients.

#[allow(dead_code)]
#[path = "../examples/chat_server.rs"]
mod chat_server;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use torsion::Reactor;

const PY_TWO_CLIENTS: &str = r#"
import socket, sys
port = int(sys.argv[1])

def connect():
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s, s.makefile("rb")

def expect(f, want):
    got = f.readline().decode().rstrip("\r\n")
    if got != want:
        print(f"expected {want!r}, got {got!r}")
        sys.exit(1)

a, af = connect()
expect(af, "What's your name?")
a.sendall(b"alice\r\n")
expect(af, "Welcome, alice!")

b, bf = connect()
expect(bf, "What's your name?")
b.sendall(b"alice\r\n")
expect(bf, "Name taken, please choose another.")
b.sendall(b"two words\n")
expect(bf, "Names are 1 to 32 bytes without spaces; what's your name?")
b.sendall(b"bob\n")
expect(bf, "Welcome, bob!")
expect(af, "* bob has joined")

# Broadcast goes to the others, not back to the sender; lines may arrive in pieces.
a.sendall(b"hello ")
a.sendall(b"bob\r\nsecond line\r\n")
expect(bf, "<alice> hello bob")
expect(bf, "<alice> second line")
b.sendall(b"hi alice\n")
expect(af, "<bob> hi alice")

# A line past the limit gets bob disconnected; alice hears that he left.
b.sendall(b"x" * 3000)
expect(bf, "Line too long; goodbye.")
if bf.readline() != b"":
    print("bob was not disconnected"); sys.exit(1)
expect(af, "* bob has left")
a.close()
print("OK")
"#;

#[test]
fn two_python_clients_chat() {
    let reactor = Reactor::new().unwrap();
    let port = reactor
        .listen_tcp("127.0.0.1:0".parse().unwrap(), chat_server::chat_factory())
        .unwrap()
        .local_addr()
        .port();
    let peer = std::thread::spawn(move || {
        std::process::Command::new("python3")
            .arg("-c")
            .arg(PY_TWO_CLIENTS)
            .arg(port.to_string())
            .output()
            .expect("python3 is required (scripts/apt.d/core.txt)")
    });
    let peer = Rc::new(RefCell::new(Some(peer)));
    fn poll(r: Reactor, p: Rc<RefCell<Option<std::thread::JoinHandle<std::process::Output>>>>) {
        if p.borrow().as_ref().is_some_and(|h| h.is_finished()) {
            let _ = r.stop();
        } else {
            let r2 = r.clone();
            r.call_later(Duration::from_millis(5), move || poll(r2, p));
        }
    }
    let (r, p) = (reactor.clone(), peer.clone());
    reactor.call_when_running(move || poll(r, p));
    let timed_out = Rc::new(Cell::new(false));
    let (t, r) = (timed_out.clone(), reactor.clone());
    reactor.call_later(Duration::from_secs(60), move || {
        t.set(true);
        let _ = r.stop();
    });
    reactor.run().unwrap();
    assert!(!timed_out.get(), "chat session did not finish");
    let out = peer.borrow_mut().take().unwrap().join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "OK");
}
