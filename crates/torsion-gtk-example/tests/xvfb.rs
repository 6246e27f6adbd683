//! Starts the GTK example under Xvfb and talks HTTP to it with Python's
//! standard-library client: requests are served from the GTK thread, the
//! stop/start button works, the window renders, and the program exits cleanly.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn get(port: u16) -> Result<String, String> {
    let script = format!(
        "import http.client\n\
         c = http.client.HTTPConnection('127.0.0.1', {port}, timeout=10)\n\
         c.request('GET', '/')\n\
         r = c.getresponse()\n\
         print(r.status, r.read().decode(), end='')\n"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn wait_line(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.starts_with(prefix) => return l,
            Ok(_) => {}
            Err(e) => panic!("no line starting with {prefix:?}: {e}"),
        }
    }
}

#[test]
fn gtk_example_serves_requests_under_xvfb() {
    let dir = std::env::temp_dir().join(format!("torsion-gtk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let shot = dir.join("window.png");
    let mut child = Command::new("xvfb-run")
        .args(["-a", env!("CARGO_BIN_EXE_torsion-gtk-example")])
        .args(["--quit-after-requests", "2", "--toggle-after-requests", "1"])
        .arg("--screenshot")
        .arg(&shot)
        // Xvfb has no GL: use GTK's software renderer.
        .env("GSK_RENDERER", "cairo")
        .env("GDK_BACKEND", "x11")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("xvfb-run (Debian package xvfb) is installed by the test command");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = wait_line(&rx, "listening on ");
    let port: u16 = first.rsplit(':').next().unwrap().parse().unwrap();

    assert_eq!(
        get(port).unwrap(),
        "200 request 1 served by torsion inside GTK\n"
    );
    // The button (clicked by the program itself) stops listening ...
    wait_line(&rx, "stopped listening");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    // ... and starts again on the same port.
    assert_eq!(wait_line(&rx, "listening on "), first);
    assert_eq!(
        get(port).unwrap(),
        "200 request 2 served by torsion inside GTK\n"
    );
    assert_eq!(wait_line(&rx, "served "), "served 2 requests");

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the example did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG screenshot");
    let _ = std::fs::remove_dir_all(&dir);
}
