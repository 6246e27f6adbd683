//! Static files over real TCP: traversal vectors, ranges, conditionals, listing.

mod common;

use std::path::{Path, PathBuf};
use std::rc::Rc;

use common::*;
use torsion_core::Reactor;
use torsion_http::{File, ServerConfig, Site};

/// A fresh directory tree: `<tmp>/secret.txt` outside the root `<tmp>/root`.
pub fn fixture(tag: &str) -> (PathBuf, PathBuf) {
    let base = std::env::temp_dir().join(format!("torsion-http-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("root");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(root.join("withindex")).unwrap();
    std::fs::write(base.join("secret.txt"), "TOP SECRET").unwrap();
    std::fs::write(root.join("a.txt"), "hello world\n").unwrap();
    std::fs::write(root.join("sp ace.txt"), "spaced").unwrap();
    std::fs::write(root.join("data.log"), "log line").unwrap();
    std::fs::write(root.join("sub/b.html"), "<p>b</p>").unwrap();
    std::fs::write(root.join("withindex/index.html"), "<h1>index</h1>").unwrap();
    std::fs::write(root.join("<script>.txt"), "x").unwrap();
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    // A known modification time for the listing test: 2001-02-03 04:05:06 UTC.
    std::fs::File::options()
        .write(true)
        .open(root.join("a.txt"))
        .unwrap()
        .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(981_173_106))
        .unwrap();
    std::os::unix::fs::symlink(&base, root.join("out")).unwrap();
    std::os::unix::fs::symlink(root.join("a.txt"), root.join("in")).unwrap();
    (base, root)
}

fn site(root: &Path) -> impl FnOnce(&Reactor) -> Site {
    site_with(root, |f| f.set_mime_type("log", "text/x-log"))
}

/// A site serving `root` through a `File` that `configure` sets up.
fn site_with(root: &Path, configure: impl FnOnce(&mut File)) -> impl FnOnce(&Reactor) -> Site {
    let root = root.to_path_buf();
    move |_| {
        let mut f = File::new(&root).unwrap();
        configure(&mut f);
        Site::new(Rc::new(f))
    }
}

fn get(addr: std::net::SocketAddr, target: &str, extra: &str) -> Resp {
    request(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").as_bytes(),
    )
}

#[test]
fn traversal_vectors_never_escape_the_root() {
    let (base, root) = fixture("trav");
    with_server(ServerConfig::default(), site(&root), |addr| {
        let table: &[(&str, u16)] = &[
            ("/../secret.txt", 400),
            ("/%2e%2e/secret.txt", 400),
            ("/%2E%2E/secret.txt", 400),
            ("/.%2e/secret.txt", 400),
            ("/sub/../../secret.txt", 400),
            ("/sub/%2e%2e/%2e%2e/secret.txt", 400),
            ("/sub/..%2f..%2fsecret.txt", 400),
            ("/%2fetc%2fpasswd", 400),
            ("/..%5csecret.txt", 400),
            ("/sub\\..\\..\\secret.txt", 400),
            ("/a.txt%00.html", 400),
            ("http://t/../secret.txt", 400),
            ("/out/secret.txt", 403),
            ("/out/", 403),
            ("/..;/secret.txt", 404),
            ("/nonexistent", 404),
            ("/a.txt/", 404),
            ("/in", 200),
            ("/./a.txt", 200),
            ("//a.txt", 200),
            ("/sp%20ace.txt", 200),
        ];
        let mut bad = Vec::new();
        for (target, want) in table {
            let r = get(addr, target, "");
            if r.status != *want || r.text().contains("TOP SECRET") {
                bad.push(format!("{target}: got {} want {want}", r.status));
            }
        }
        assert!(bad.is_empty(), "{bad:#?}");
    });
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn files_types_ranges_and_conditionals() {
    let (base, root) = fixture("ranges");
    let root2 = root.clone();
    with_server(ServerConfig::default(), site(&root), move |addr| {
        let root = root2;
        let r = get(addr, "/a.txt", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "hello world\n");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.header("accept-ranges"), Some("bytes"));
        let etag = r.header("etag").unwrap().to_string();
        let lm = r.header("last-modified").unwrap().to_string();
        assert_eq!(
            get(addr, "/sub/b.html", "").header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            get(addr, "/data.log", "").header("content-type"),
            Some("text/x-log")
        );

        // Conditionals.
        let r = get(addr, "/a.txt", &format!("If-None-Match: {etag}\r\n"));
        assert_eq!(r.status, 304);
        assert_eq!(r.header("etag"), Some(etag.as_str()));
        assert_eq!(
            get(addr, "/a.txt", "If-None-Match: \"other\"\r\n").status,
            200
        );
        assert_eq!(
            get(addr, "/a.txt", &format!("If-Modified-Since: {lm}\r\n")).status,
            304
        );
        assert_eq!(
            get(
                addr,
                "/a.txt",
                "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
            )
            .status,
            200
        );

        // Ranges.
        let r = get(addr, "/a.txt", "Range: bytes=0-4\r\n");
        assert_eq!((r.status, r.text().as_str()), (206, "hello"));
        assert_eq!(r.header("content-range"), Some("bytes 0-4/12"));
        let r = get(addr, "/a.txt", "Range: bytes=-6\r\n");
        assert_eq!((r.status, r.text().as_str()), (206, "world\n"));
        let r = get(addr, "/a.txt", "Range: bytes=100-\r\n");
        assert_eq!(
            (r.status, r.header("content-range")),
            (416, Some("bytes */12"))
        );
        let r = get(addr, "/a.txt", "Range: bytes=0-1,6-7\r\n");
        assert_eq!(r.status, 206);
        let ct = r.header("content-type").unwrap();
        let boundary = ct.strip_prefix("multipart/byteranges; boundary=").unwrap();
        let body = r.text();
        assert_eq!(body.matches(&format!("--{boundary}\r\n")).count(), 2);
        assert!(body.contains("content-range: bytes 0-1/12\r\n\r\nhe\r\n"));
        assert!(body.contains("content-range: bytes 6-7/12\r\n\r\nwo\r\n"));
        assert!(body.ends_with(&format!("--{boundary}--\r\n")));
        // If-Range with a stale validator: the whole file.
        let r = get(
            addr,
            "/a.txt",
            "Range: bytes=0-4\r\nIf-Range: \"stale\"\r\n",
        );
        assert_eq!((r.status, r.body.len()), (200, 12));

        // HEAD.
        let r = request(addr, b"HEAD /big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(r.header("content-length"), Some("3145728"));

        // A large file, streamed; and a range in the middle of it.
        let big = std::fs::read(root.join("big.bin")).unwrap();
        let r = get(addr, "/big.bin", "");
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert!(r.body == big);
        let r = get(addr, "/big.bin", "Range: bytes=1000000-1999999\r\n");
        assert!(r.body == big[1_000_000..2_000_000]);
    });
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn directories_redirect_index_and_listing() {
    let (base, root) = fixture("dirs");
    with_server(ServerConfig::default(), site(&root), |addr| {
        let r = get(addr, "/sub?x=1", "");
        assert_eq!((r.status, r.header("location")), (301, Some("/sub/?x=1")));
        let r = get(addr, "/withindex/", "");
        assert_eq!(r.text(), "<h1>index</h1>");
        let r = get(addr, "/", "");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
        let html = r.text();
        assert!(html.contains("<title>Index of /</title>"));
        assert!(html.contains("<a href=\"sub/\">sub/</a>"));
        assert!(html.contains("<a href=\"a.txt\">a.txt</a>"));
        assert!(html.contains("<a href=\"sp%20ace.txt\">sp ace.txt</a>"));
        assert!(html.contains("title=\"12 bytes\">12 B</span>"));
        // Each file's modification time, in UTC (set in the fixture).
        let row = html.lines().find(|l| l.contains("href=\"a.txt\"")).unwrap();
        assert!(
            row.contains("<td class=\"date\">2001-02-03 04:05</td>"),
            "{row}"
        );
        assert!(html.contains("3.0 MiB"));
        // Names are escaped.
        assert!(html.contains("&lt;script&gt;.txt"));
        assert!(!html.contains("<script>"));
        // Directories first.
        assert!(html.find("sub/").unwrap() < html.find("a.txt").unwrap());
        let sub = get(addr, "/sub/", "").text();
        assert!(sub.contains("<a href=\"../\">../</a>"));
        assert!(sub.contains("b.html"));
    });
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn gzip_for_text_types_when_enabled() {
    use std::io::Read;
    let (base, root) = fixture("gzip");
    let text: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    std::fs::write(root.join("long.txt"), &text).unwrap();
    let make = site_with(&root, |f| f.set_gzip(true));
    with_server(ServerConfig::default(), make, move |addr| {
        let r = get(addr, "/long.txt", "Accept-Encoding: br, gzip;q=0.8\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-encoding"), Some("gzip"));
        assert_eq!(r.header("vary"), Some("accept-encoding"));
        assert!(
            r.body.len() < text.len() / 3,
            "compressed to {}",
            r.body.len()
        );
        let mut plain = String::new();
        flate2::read::GzDecoder::new(&r.body[..])
            .read_to_string(&mut plain)
            .unwrap();
        assert_eq!(plain, text);
        let gz_etag = r.header("etag").unwrap().to_string();
        // Not for clients that refuse it, nor for binary types or ranges.
        let r = get(addr, "/long.txt", "Accept-Encoding: gzip;q=0\r\n");
        assert_eq!(
            (r.header("content-encoding"), r.body.len()),
            (None, text.len())
        );
        assert_ne!(r.header("etag"), Some(gz_etag.as_str()));
        let r = get(addr, "/big.bin", "Accept-Encoding: gzip\r\n");
        assert_eq!(r.header("content-encoding"), None);
        let r = get(
            addr,
            "/long.txt",
            "Accept-Encoding: gzip\r\nRange: bytes=0-6\r\n",
        );
        assert_eq!((r.status, r.text().as_str()), (206, "line 0\n"));
        let r = get(
            addr,
            "/long.txt",
            &format!("Accept-Encoding: gzip\r\nIf-None-Match: {gz_etag}\r\n"),
        );
        assert_eq!(r.status, 304);
    });
    let _ = std::fs::remove_dir_all(base);
}

/// A large file to a client that reads slowly at first, then a pipelined
/// request for a range of it and a small file on the same connection: the
/// file path (`sendfile` when the socket keeps up, copies through the
/// write buffer when it does not) keeps every byte in order.
#[test]
fn a_slow_reader_and_pipelined_file_responses_get_every_byte_in_order() {
    use std::io::{Read, Write};
    let (base, root) = fixture("slowfile");
    let big: Vec<u8> = (0..12 << 20).map(|i: u32| (i * 31 % 253) as u8).collect();
    std::fs::write(root.join("huge.bin"), &big).unwrap();
    with_server(ServerConfig::default(), site(&root), move |addr| {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        s.write_all(
            b"GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /huge.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=5000000-5999999\r\n\r\n\
              GET /a.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        // Slowly at first: the server's socket buffer fills up.
        for _ in 0..40 {
            std::thread::sleep(std::time::Duration::from_millis(3));
            let n = s.read(&mut buf).unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        s.read_to_end(&mut got).unwrap();
        // Three responses, back to back.
        let mut rest = &got[..];
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let end = rest
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("a response head")
                + 4;
            let head = std::str::from_utf8(&rest[..end])
                .unwrap()
                .to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .expect("content-length")
                .trim()
                .parse()
                .unwrap();
            bodies.push((
                head.lines().next().unwrap().to_string(),
                rest[end..end + len].to_vec(),
            ));
            rest = &rest[end + len..];
        }
        assert!(
            rest.is_empty(),
            "{} stray bytes after the last response",
            rest.len()
        );
        assert_eq!(bodies[0].0, "http/1.1 200 ok");
        assert!(bodies[0].1 == big, "whole file differs");
        assert_eq!(bodies[1].0, "http/1.1 206 partial content");
        assert!(bodies[1].1 == big[5_000_000..6_000_000], "range differs");
        assert_eq!(bodies[2].1, b"hello world\n");
    });
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn symlinks_out_of_the_root_are_followed_only_when_allowed() {
    let (base, root) = fixture("outside");
    with_server(
        ServerConfig::default(),
        site_with(&root, |f| f.set_allow_outside_symlinks(true)),
        |addr| {
            // Through the link out of the root, now allowed.
            let r = get(addr, "/out/secret.txt", "");
            assert_eq!((r.status, r.text().as_str()), (200, "TOP SECRET"));
            // Dot segments are refused all the same: allowing links does
            // not allow climbing out by name.
            assert_eq!(get(addr, "/../secret.txt", "").status, 400);
            assert_eq!(get(addr, "/%2e%2e/secret.txt", "").status, 400);
        },
    );
    // The default refuses the same link.
    with_server(ServerConfig::default(), site(&root), |addr| {
        assert_eq!(get(addr, "/out/secret.txt", "").status, 403);
    });
    let _ = std::fs::remove_dir_all(base);
}

#[test]
fn hidden_names_are_neither_served_nor_listed_unless_asked() {
    let (base, root) = fixture("hidden");
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::write(root.join(".git/config"), "[core]").unwrap();
    std::fs::write(root.join(".env"), "SECRET=1").unwrap();
    std::fs::create_dir_all(root.join(".well-known/acme-challenge")).unwrap();
    std::fs::write(root.join(".well-known/acme-challenge/tok"), "proof").unwrap();
    // A plainly named link into a hidden directory.
    std::os::unix::fs::symlink(root.join(".git"), root.join("repo")).unwrap();
    with_server(ServerConfig::default(), site(&root), |addr| {
        for path in [
            "/.git/config",
            "/.env",
            "/.git/",
            "/%2egit/config",
            "/repo/config",
        ] {
            assert_eq!(get(addr, path, "").status, 404, "{path}");
        }
        let r = get(addr, "/.well-known/acme-challenge/tok", "");
        assert_eq!((r.status, r.text().as_str()), (200, "proof"));
        let html = get(addr, "/", "").text();
        assert!(html.contains("a.txt"));
        assert!(!html.contains(".git") && !html.contains(".env") && !html.contains(".well-known"));
    });
    with_server(
        ServerConfig::default(),
        site_with(&root, |f| f.set_serve_hidden(true)),
        |addr| {
            let r = get(addr, "/.git/config", "");
            assert_eq!((r.status, r.text().as_str()), (200, "[core]"));
            let html = get(addr, "/", "").text();
            assert!(html.contains("href=\".git/\"") && html.contains("href=\".env\""));
        },
    );
    let _ = std::fs::remove_dir_all(base);
}
