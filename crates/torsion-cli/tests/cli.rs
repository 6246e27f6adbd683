//! The `torsion` binary as a user runs it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn torsion() -> Command {
    Command::new(env!("CARGO_BIN_EXE_torsion"))
}

fn tmpdir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("torsion-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("docs")).unwrap();
    std::fs::write(d.join("hello.txt"), "hello from disk\n").unwrap();
    std::fs::write(d.join("notes.log"), "a log").unwrap();
    std::fs::write(d.join("docs/home.htm"), "<p>home</p>").unwrap();
    d
}

/// Starts `torsion web` and returns the child and the addresses it printed.
fn start(args: &[&str]) -> (Child, Vec<String>) {
    let mut child = torsion()
        .arg("web")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let n = args.iter().filter(|a| **a == "--listen").count();
    let mut addrs = Vec::new();
    for _ in 0..n {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let url = line
            .split("http://")
            .nth(1)
            .unwrap()
            .trim()
            .trim_end_matches('/');
        addrs.push(url.to_string());
    }
    (child, addrs)
}

fn get(addr: &str, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    r
}

fn interrupt_and_wait(mut child: Child) -> std::process::ExitStatus {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("torsion web did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops `torsion web` with Ctrl-C (it must exit 0) and returns the
/// access-log line it wrote to stderr.
fn stop_and_find_access_line(mut child: Child) -> String {
    let mut err = child.stderr.take().unwrap();
    assert!(interrupt_and_wait(child).success());
    let mut log = String::new();
    err.read_to_string(&mut log).unwrap();
    log.lines()
        .find(|l| l.contains("torsion_http::access"))
        .unwrap_or_else(|| panic!("no access log line in {log}"))
        .to_string()
}

#[test]
fn web_serves_directory_and_stops_on_ctrl_c() {
    let dir = tmpdir("serve");
    let (child, addrs) = start(&[
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--path",
        dir.to_str().unwrap(),
        "--index",
        "home.htm",
        "--add-header",
        "X-Served-By: torsion-test",
        "--mime-type",
        "log=text/x-custom",
        "--log-format",
        "json",
    ]);
    assert_eq!(addrs.len(), 2);
    assert_ne!(addrs[0], addrs[1]);
    for a in &addrs {
        let r = get(a, "/hello.txt");
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("x-served-by: torsion-test\r\n"));
        assert!(r.ends_with("hello from disk\n"));
    }
    assert!(get(&addrs[0], "/notes.log").contains("content-type: text/x-custom\r\n"));
    assert!(get(&addrs[0], "/docs/").ends_with("<p>home</p>"));
    let listing = get(&addrs[0], "/");
    assert!(listing.contains("Index of /") && listing.contains("hello.txt"));
    let status = interrupt_and_wait(child);
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn ctrl_c_lets_a_response_in_flight_finish_and_stops_taking_new_ones() {
    let dir = tmpdir("inflight");
    // Larger than the socket buffers between server and client: most of
    // it is still unsent when the signal comes.
    let big: Vec<u8> = (0..(32u32 << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("big.bin"), &big).unwrap();
    let (child, addrs) = start(&[
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--path",
        dir.to_str().unwrap(),
    ]);
    let addr = addrs[0].clone();
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET /big.bin HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut got = vec![0u8; 64 * 1024];
    s.read_exact(&mut got).unwrap();
    // Ctrl-C while the body is on its way.
    let pid = child.id() as i32;
    // SAFETY: plain syscall on our own child.
    unsafe {
        libc::kill(pid, libc::SIGINT);
    }
    // New connections are no longer taken (the port closes)...
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match TcpStream::connect(&addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ if Instant::now() > deadline => panic!("still accepting after Ctrl-C"),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    // ...while the response in flight finishes, every byte of it.
    s.read_to_end(&mut got).unwrap();
    let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..head_end]);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains(&format!("content-length: {}\r\n", big.len())),
        "{head}"
    );
    assert_eq!(got.len() - head_end, big.len());
    assert!(got[head_end..] == big[..], "the body arrived changed");
    let status = interrupt_and_wait(child);
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn access_log_is_json_with_combined_line() {
    let dir = tmpdir("log");
    let (child, addrs) = start(&[
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--path",
        dir.to_str().unwrap(),
        "--log-format",
        "json",
    ]);
    let _ = get(&addrs[0], "/hello.txt");
    let line = stop_and_find_access_line(child);
    assert!(line.starts_with('{'), "{line}");
    assert!(line.contains("\"site\":\"default\""), "{line}");
    assert!(line.contains("\"host\":\"t\""), "{line}");
    assert!(line.contains("127.0.0.1 - - ["), "{line}");
    assert!(
        line.contains("] \\\"GET /hello.txt HTTP/1.1\\\" 200 16 \\\"-\\\" \\\"-\\\""),
        "{line}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn access_log_is_a_combined_line_in_text_format_by_default() {
    let dir = tmpdir("logtext");
    let (child, addrs) = start(&[
        "--listen",
        "tcp:0:interface=127.0.0.1",
        "--path",
        dir.to_str().unwrap(),
    ]);
    let mut s = TcpStream::connect(&addrs[0]).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET /hello.txt HTTP/1.1\r\nHost: docs.example\r\nReferer: http://r.example/\r\nUser-Agent: probe/1.0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    drop(s);
    let line = stop_and_find_access_line(child);
    assert!(!line.starts_with('{'), "{line}");
    // Combined log format: host ident user [time] "request" status bytes
    // "referer" "user agent"; the site and the virtual host as fields.
    let combined = line
        .split_once("127.0.0.1 - - [")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("{line}"));
    let (time, rest) = combined.split_once("] ").unwrap();
    assert_eq!(time.len(), "07/Dec/2026:15:42:08 +0000".len(), "{time}");
    assert!(time.ends_with(" +0000"), "{time}");
    assert!(
        rest.starts_with("\"GET /hello.txt HTTP/1.1\" 200 16 \"http://r.example/\" \"probe/1.0\""),
        "{rest}"
    );
    assert!(
        line.contains("site=\"default\"") || line.contains("site=default"),
        "{line}"
    );
    assert!(line.contains("host=docs.example"), "{line}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bad_arguments_exit_non_zero_with_a_message() {
    let dir = tmpdir("bad");
    let long_unix = format!("unix:/tmp/{}", "x".repeat(200));
    let long_unix = long_unix.as_str();
    let cases: &[&[&str]] = &[
        &["web", "--listen", "tcp:notaport", "--path", "."],
        &["web", "--listen", "bogus:8080", "--path", "."],
        // Unix paths longer than the OS allows are refused before listening.
        &["web", "--listen", long_unix, "--path", "."],
        &[
            "web",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--path",
            "/definitely/not/here",
        ],
        &[
            "web",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--add-header",
            "NoColon",
        ],
        &[
            "web",
            "--listen",
            "tcp:0:interface=127.0.0.1",
            "--mime-type",
            "txt",
        ],
        &["web", "--log-format", "xml"],
        &["nosuchcommand"],
    ];
    for args in cases {
        let out = torsion().args(*args).current_dir(&dir).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("error"), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A self-signed certificate for 127.0.0.1, made now with the openssl command
/// (never committed).
fn make_cert(dir: &std::path::Path) -> (String, String) {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args([
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .stderr(Stdio::null())
        .status()
        .expect("openssl is installed by the test command");
    assert!(st.success());
    (key.display().to_string(), cert.display().to_string())
}

#[test]
fn web_serves_https_on_an_ssl_endpoint_to_curl() {
    let dir = tmpdir("ssl");
    let (key, cert) = make_cert(&dir);
    let spec = format!(
        "ssl:0:interface=127.0.0.1:privateKey={}:certKey={}",
        key.replace(':', "\\:"),
        cert.replace(':', "\\:")
    );
    let mut child = torsion()
        .args(["web", "--listen", &spec, "--path"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line.split_whitespace().last().unwrap().to_string();
    assert!(url.starts_with("https://127.0.0.1:"), "printed {line:?}");
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            &cert,
            "-w",
            "\n%{http_code} %{scheme}",
        ])
        .arg(format!("{url}hello.txt"))
        .output()
        .expect("curl is installed by the test command");
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(body, "hello from disk\n\n200 HTTPS");
    assert!(interrupt_and_wait(child).success());
}

#[test]
fn a_port_that_is_not_a_number_is_named_in_the_error() {
    let dir = tmpdir("badep");
    let out = torsion()
        .args(["web", "--listen", "tcp:port=abc", "--path"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("abc"), "stderr: {err}");
}
