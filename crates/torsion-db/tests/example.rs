//! Runs the `record_store` example as a real process and talks to it over TCP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn example_path() -> PathBuf {
    // tests run from target/<profile>/deps; cargo builds examples beside them.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let path = dir.join("examples").join("record_store");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p torsion-db --examples` (cargo test/nextest build it)",
        path.display()
    );
    path
}

struct Server(Child);
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(db: &str) -> (Server, u16) {
    let mut child = Command::new(example_path())
        .args([db, "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let server = Server(child);
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    reader.read_line(&mut line).unwrap();
    // Keep draining: a closed pipe would make the server's later output fail.
    std::thread::spawn(move || std::io::copy(&mut reader, &mut std::io::sink()));
    let port = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
    (server, port)
}

fn converse(port: u16, input: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(input).unwrap();
    // Read until the server closes. A reset after its last reply counts as a
    // close: it can come when the server hangs up on input it refused.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                eprintln!("reset after {} bytes", out.len());
                break;
            }
            Err(e) => panic!("reading from the example failed: {e}"),
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn record_store_stores_and_reads_records_in_order() {
    let dir = std::env::temp_dir().join(format!("torsion-db-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("records.db");
    let (_server, port) = start(db.to_str().unwrap());
    let out = converse(
        port,
        b"PUT greeting hello world\nPUT a 1\nPUT a 2\nGET greeting\nGET a\nLIST\nDEL a\nDEL a\nGET a\nFROB\nQUIT\n",
    );
    assert_eq!(
        out,
        "OK\nOK\nOK\nVALUE hello world\nVALUE 2\nKEY a\nKEY greeting\nEND\nOK\nNOTFOUND\nNOTFOUND\n\
         ERR unknown command or missing key\nBYE\n"
    );
    // A second connection sees what the first stored; an overlong line is refused.
    let out = converse(port, b"GET greeting\nQUIT\n");
    assert_eq!(out, "VALUE hello world\nBYE\n");
    let out = converse(port, &[b'x'; 5000]);
    assert_eq!(out, "ERR line too long\n");
    drop(_server);
    // The data is in the file, readable without the service.
    let c = rusqlite::Connection::open(&db).unwrap();
    let v: String = c
        .query_row(
            "SELECT value FROM records WHERE key = 'greeting'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(v, "hello world");
    let _ = std::fs::remove_dir_all(&dir);
}
