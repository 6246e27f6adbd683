//! Real peers: curl and Python's http.client against the server.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::rc::Rc;

use common::*;
use torsion_core::Reactor;
use torsion_http::{handler_fn, File, Request, Resource, Response, ServerConfig, Site, Tree};

fn fixture(tag: &str) -> PathBuf {
    let base =
        std::env::temp_dir().join(format!("torsion-http-interop-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(base.join("root/dir")).unwrap();
    std::fs::write(base.join("secret"), "TOP SECRET").unwrap();
    std::fs::write(base.join("root/a.txt"), "hello world\n").unwrap();
    std::fs::write(base.join("root/dir/x.txt"), "x").unwrap();
    let upload: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    std::fs::write(base.join("upload.bin"), upload).unwrap();
    base
}

fn site(base: PathBuf) -> impl FnOnce(&Reactor) -> Site {
    move |_| {
        let root = Tree::new();
        root.put_child(
            "fast",
            Rc::new(handler_fn(|_| async { Ok(Response::text("fast")) })),
        );
        root.put_child(
            "echo",
            Rc::new(handler_fn(|req: Request| async move {
                let body = req.into_body().bytes(16 << 20).await?;
                Ok(Response::new(http::StatusCode::OK)
                    .header("content-type", "application/octet-stream")
                    .with_body(torsion_http::Body::Bytes(body.into())))
            })),
        );
        root.put_child("files", Rc::new(File::new(base.join("root")).unwrap()));
        Site::new(Rc::new(root))
    }
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl must be installed (scripts/apt.d/http.txt)");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn curl_keep_alive_ranges_upload_head_continue_listing_traversal() {
    let base = fixture("curl");
    let b2 = base.clone();
    with_server(ServerConfig::default(), site(base.clone()), move |addr| {
        let base = b2;
        let url = |p: &str| format!("http://{addr}{p}");
        // Keep-alive: two URLs, one connection.
        let (out, err) = curl(&["-v", &url("/fast"), &url("/fast")]);
        assert_eq!(out, "fastfast");
        assert!(err.contains("Re-using existing connection"), "{err}");
        // Ranges.
        let (out, _) = curl(&["-r", "0-4", &url("/files/a.txt")]);
        assert_eq!(out, "hello");
        let (out, _) = curl(&[
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-r",
            "0-1,3-4",
            &url("/files/a.txt"),
        ]);
        assert!(out.starts_with("HTTP/1.1 206 Partial Content\r\n"), "{out}");
        assert!(out.contains("content-type: multipart/byteranges; boundary="));
        let (out, _) = curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-r",
            "50-",
            &url("/files/a.txt"),
        ]);
        assert_eq!(out, "416");
        // Chunked upload.
        let upload = base.join("upload.bin");
        let data = format!("@{}", upload.display());
        let (out, _) = curl(&[
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
            &data,
            &url("/echo"),
        ]);
        assert!(
            out.as_bytes() == std::fs::read(&upload).unwrap(),
            "echo differs ({} bytes)",
            out.len()
        );
        // HEAD.
        let (out, _) = curl(&["-I", &url("/files/a.txt")]);
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(out.contains("content-length: 12\r\n"));
        // 100-continue.
        let (out, err) = curl(&[
            "-v",
            "-H",
            "Expect: 100-continue",
            "--data-binary",
            &data,
            &url("/echo"),
        ]);
        assert!(err.contains("HTTP/1.1 100 Continue"), "{err}");
        assert_eq!(out.len(), 300_000);
        // A body over the limit is refused before curl sends it.
        let (out, err) = curl(&[
            "-v",
            "-H",
            "Expect: 100-continue",
            "-H",
            "Content-Length: 2000000000000",
            "--data-binary",
            "x",
            &url("/echo"),
        ]);
        assert!(err.contains("HTTP/1.1 413"), "{err}");
        assert!(!err.contains("100 Continue"), "{err}");
        assert!(out.contains("413"), "{out}");
        // Directory listing (curl follows the slash redirect).
        let (out, _) = curl(&["-L", &url("/files/dir")]);
        assert!(
            out.contains("Index of /files/dir/") && out.contains("x.txt"),
            "{out}"
        );
        // Traversal attempts, sent as-is.
        for p in [
            "/files/../secret",
            "/files/%2e%2e/secret",
            "/files/..%2fsecret",
            "/files/dir/..%5c..%5csecret",
        ] {
            let (out, _) = curl(&["--path-as-is", "-w", "\n%{http_code}", &url(p)]);
            assert!(!out.contains("TOP SECRET"), "{p}: {out}");
            assert!(out.ends_with("\n400"), "{p}: {out}");
        }
    });
    let _ = std::fs::remove_dir_all(base);
}

const PY_CLIENT: &str = r#"
import http.client, sys
host, port = sys.argv[1], int(sys.argv[2])
c = http.client.HTTPConnection(host, port, timeout=10)
out = []
for _ in range(3):
    c.request("GET", "/fast")
    r = c.getresponse()
    out.append("%d %s" % (r.status, r.read().decode()))
sock = c.sock
c.request("POST", "/echo", body=b"x" * 100000)
r = c.getresponse()
out.append("%d %d" % (r.status, len(r.read())))
def gen():
    for i in range(5):
        yield b"part%d;" % i
c.request("POST", "/echo", body=gen(), encode_chunked=True, headers={"Transfer-Encoding": "chunked"})
r = c.getresponse()
out.append("%d %s" % (r.status, r.read().decode()))
c.request("HEAD", "/files/a.txt")
r = c.getresponse()
out.append("%d %s %r" % (r.status, r.getheader("content-length"), r.read()))
out.append("same-socket %s" % (c.sock is sock))
print("\n".join(out))
"#;

#[test]
fn python_http_client_keep_alive_post_chunked_head() {
    let base = fixture("py");
    with_server(ServerConfig::default(), site(base.clone()), |addr| {
        let out = Command::new("python3")
            .args([
                "-c",
                PY_CLIENT,
                &addr.ip().to_string(),
                &addr.port().to_string(),
            ])
            .output()
            .expect("python3 must be installed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines,
            [
                "200 fast",
                "200 fast",
                "200 fast",
                "200 100000",
                "200 part0;part1;part2;part3;part4;",
                "200 12 b''",
                "same-socket True",
            ]
        );
    });
    let _ = std::fs::remove_dir_all(base);
}
