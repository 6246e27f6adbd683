//! Static files: the [`File`] resource.
//!
//! Paths are resolved segment by segment: a segment that is `..`, or that
//! decodes to something holding `/`, `\` or NUL, is refused with 400 before
//! the file system is asked anything; the resolved path is then
//! canonicalised and must stay under the (canonical) root, so symlinks
//! pointing out of the root give 403 unless allowed. Files are streamed in
//! pieces as the client takes them, never read whole into memory.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use flate2::write::GzEncoder;
use flate2::Compression;
use http::header::{
    ACCEPT_ENCODING, ACCEPT_RANGES, CONTENT_ENCODING, CONTENT_RANGE, CONTENT_TYPE, ETAG,
    IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, LAST_MODIFIED, RANGE, VARY,
};
use http::{Method, StatusCode};
use torsion_core::Failure;

use crate::resource::{Reply, Resource};
use crate::response::{Body, BodySource, Chunk, Notify, Response};
use crate::util::{html_escape, listing_time, percent_encode_segment};

/// Most ranges honoured in one request; more and the whole file is sent.
const MAX_RANGES: usize = 16;

#[derive(Debug, Clone)]
struct Options {
    index_names: Vec<String>,
    listing: bool,
    allow_outside_symlinks: bool,
    serve_hidden: bool,
    mime: HashMap<String, String>,
    gzip: bool,
}

/// Serves a directory tree (or a single file).
///
/// ```no_run
/// use std::rc::Rc;
/// use torsion_http::{File, Site};
/// let mut files = File::new("/srv/www")?;
/// files.set_index_names(vec!["index.html".into()]);
/// files.set_mime_type("log", "text/plain");
/// let site = Site::new(Rc::new(files));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct File {
    root: PathBuf,
    opts: Rc<Options>,
}

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PathError {
    Bad,
    Forbidden,
    NotFound,
}

impl File {
    /// Serves `root` (canonicalised now; it must exist).
    pub fn new(root: impl AsRef<Path>) -> io::Result<File> {
        Ok(File {
            root: fs::canonicalize(root)?,
            opts: Rc::new(Options {
                index_names: vec!["index.html".into(), "index.htm".into()],
                listing: true,
                allow_outside_symlinks: false,
                serve_hidden: false,
                mime: HashMap::new(),
                gzip: false,
            }),
        })
    }

    /// The canonical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn opts(&mut self) -> &mut Options {
        Rc::make_mut(&mut self.opts)
    }

    /// File names tried, in order, for a directory (default `index.html`, `index.htm`).
    pub fn set_index_names(&mut self, names: Vec<String>) {
        self.opts().index_names = names;
    }

    /// Turns the HTML directory listing on (default) or off (403 instead).
    pub fn set_directory_listing(&mut self, on: bool) {
        self.opts().listing = on;
    }

    /// Follows symlinks that point outside the root (off by default).
    pub fn set_allow_outside_symlinks(&mut self, on: bool) {
        self.opts().allow_outside_symlinks = on;
    }

    /// Serves and lists hidden names, those starting with a dot (off by
    /// default: they answer 404 and are left out of listings, so serving a
    /// working tree does not serve its `.git`). `.well-known` is always
    /// served (ACME challenges, security.txt).
    pub fn set_serve_hidden(&mut self, on: bool) {
        self.opts().serve_hidden = on;
    }

    /// Compresses text types with gzip for clients that accept it (off by
    /// default). Compressed responses are streamed (chunked) and carry their
    /// own `ETag`; range requests are always answered uncompressed.
    pub fn set_gzip(&mut self, on: bool) {
        self.opts().gzip = on;
    }

    /// Content type for an extension (without the dot), overriding the built-in table.
    pub fn set_mime_type(&mut self, ext: &str, content_type: &str) {
        self.opts().mime.insert(
            ext.trim_start_matches('.').to_ascii_lowercase(),
            content_type.to_string(),
        );
    }

    fn content_type(&self, path: &Path) -> String {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some((_, ext)) = name.rsplit_once('.') {
            if let Some(t) = self.opts.mime.get(&ext.to_ascii_lowercase()) {
                return t.clone();
            }
        }
        crate::mime::guess(name).to_string()
    }

    /// Maps path segments to a file under the root.
    fn resolve(&self, segments: &[String]) -> Result<PathBuf, PathError> {
        let mut path = self.root.clone();
        for seg in segments {
            if seg == ".."
                || seg.contains('/')
                || seg.contains('\\')
                || seg.contains('\0')
                || seg.contains(':') && cfg!(windows)
            {
                return Err(PathError::Bad);
            }
            if seg.is_empty() || seg == "." {
                continue;
            }
            path.push(seg);
        }
        let canon = fs::canonicalize(&path).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => PathError::Forbidden,
            _ => PathError::NotFound,
        })?;
        if !canon.starts_with(&self.root) && !self.opts.allow_outside_symlinks {
            return Err(PathError::Forbidden);
        }
        // Hidden names are judged on the resolved path: that covers a
        // hidden name in the request and a plain-named link into one.
        if !self.opts.serve_hidden {
            if let Ok(rel) = canon.strip_prefix(&self.root) {
                if rel.iter().any(|c| c.to_str().is_none_or(is_hidden)) {
                    return Err(PathError::NotFound);
                }
            }
        }
        Ok(canon)
    }

    fn serve(&self, req: &crate::Request) -> Response {
        let path = match self.resolve(req.postpath()) {
            Ok(p) => p,
            Err(PathError::Bad) => return Response::error(StatusCode::BAD_REQUEST),
            Err(PathError::Forbidden) => return Response::error(StatusCode::FORBIDDEN),
            Err(PathError::NotFound) => return Response::error(StatusCode::NOT_FOUND),
        };
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(_) => return Response::error(StatusCode::NOT_FOUND),
        };
        if meta.is_dir() {
            if !req.path().ends_with('/') {
                let mut loc = format!("{}/", req.path());
                if let Some(q) = req.query() {
                    loc.push('?');
                    loc.push_str(q);
                }
                return Response::redirect(StatusCode::MOVED_PERMANENTLY, &loc);
            }
            for name in &self.opts.index_names {
                let p = path.join(name);
                if let Ok(m) = fs::metadata(&p) {
                    if m.is_file() {
                        let ok = fs::canonicalize(&p).is_ok_and(|c| {
                            c.starts_with(&self.root) || self.opts.allow_outside_symlinks
                        });
                        if ok {
                            return self.serve_file(req, &p, &m);
                        }
                    }
                }
            }
            if !self.opts.listing {
                return Response::error(StatusCode::FORBIDDEN);
            }
            return match listing(&path, req.path(), path == self.root, self.opts.serve_hidden) {
                Ok(html) => Response::html(html),
                Err(_) => Response::error(StatusCode::FORBIDDEN),
            };
        }
        if !meta.is_file() {
            return Response::error(StatusCode::FORBIDDEN);
        }
        if req.path().ends_with('/') && path != self.root {
            return Response::error(StatusCode::NOT_FOUND);
        }
        self.serve_file(req, &path, &meta)
    }

    fn serve_file(&self, req: &crate::Request, path: &Path, meta: &fs::Metadata) -> Response {
        let len = meta.len();
        let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
        let mtime_ns = mtime
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let ctype = self.content_type(path);
        let gzip = self.opts.gzip
            && crate::mime::is_text(&ctype)
            && req.header(RANGE).is_none()
            && accepts_gzip(req);
        let etag = if gzip {
            format!("\"{len:x}-{mtime_ns:x}-gz\"")
        } else {
            format!("\"{len:x}-{mtime_ns:x}\"")
        };
        let last_modified = httpdate::fmt_http_date(mtime);
        let compressible = self.opts.gzip && crate::mime::is_text(&ctype);
        let base = |status| {
            let r = Response::new(status)
                .header(ETAG, etag.as_str())
                .header(LAST_MODIFIED, last_modified.as_str())
                .header(ACCEPT_RANGES, "bytes");
            if compressible {
                r.header(VARY, "accept-encoding")
            } else {
                r
            }
        };
        if not_modified(req, &etag, mtime) {
            return base(StatusCode::NOT_MODIFIED);
        }
        let file = match fs::File::open(path) {
            Ok(f) => f,
            Err(_) => return Response::error(StatusCode::FORBIDDEN),
        };
        let ranges = if *req.method() == Method::GET && if_range_ok(req, &etag, mtime) {
            req.header(RANGE).map(|r| parse_ranges(r, len))
        } else {
            None
        };
        if gzip {
            return base(StatusCode::OK)
                .header(CONTENT_TYPE, ctype.as_str())
                .header(CONTENT_ENCODING, "gzip")
                .with_body(Body::Stream {
                    len: None,
                    source: Box::new(GzipSource {
                        inner: FileSource {
                            file,
                            segs: vec![Seg::File(0, len)].into(),
                        },
                        enc: Some(GzEncoder::new(Vec::new(), Compression::default())),
                    }),
                });
        }
        match ranges {
            None | Some(RangeResult::Ignore) => base(StatusCode::OK)
                .header(CONTENT_TYPE, ctype.as_str())
                .with_body(file_body(file, vec![Seg::File(0, len)])),
            Some(RangeResult::Unsatisfiable) => Response::error(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(CONTENT_RANGE, format!("bytes */{len}"))
                .header(ACCEPT_RANGES, "bytes"),
            Some(RangeResult::Ranges(r)) if r.len() == 1 => {
                let (s, e) = r[0];
                base(StatusCode::PARTIAL_CONTENT)
                    .header(CONTENT_TYPE, ctype.as_str())
                    .header(CONTENT_RANGE, format!("bytes {s}-{e}/{len}"))
                    .with_body(file_body(file, vec![Seg::File(s, e - s + 1)]))
            }
            Some(RangeResult::Ranges(r)) => {
                let boundary = boundary();
                let mut segs = Vec::new();
                for (s, e) in &r {
                    segs.push(Seg::Bytes(
                        format!(
                            "\r\n--{boundary}\r\ncontent-type: {ctype}\r\ncontent-range: bytes {s}-{e}/{len}\r\n\r\n"
                        )
                        .into_bytes(),
                    ));
                    segs.push(Seg::File(*s, e - s + 1));
                }
                segs.push(Seg::Bytes(format!("\r\n--{boundary}--\r\n").into_bytes()));
                base(StatusCode::PARTIAL_CONTENT)
                    .header(
                        CONTENT_TYPE,
                        format!("multipart/byteranges; boundary={boundary}"),
                    )
                    .with_body(file_body(file, segs))
            }
        }
    }
}

impl Resource for File {
    fn is_leaf(&self) -> bool {
        true
    }
    fn render_get(&self, req: crate::Request) -> Reply {
        self.serve(&req).into()
    }
}

fn boundary() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "torsion-{:016x}{:04x}",
        t,
        N.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

fn etag_matches(list: &str, etag: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
    list.trim() == "*" || list.split(',').any(|t| strip(t) == strip(etag))
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn not_modified(req: &crate::Request, etag: &str, mtime: SystemTime) -> bool {
    if *req.method() != Method::GET && *req.method() != Method::HEAD {
        return false;
    }
    if let Some(inm) = req.header(IF_NONE_MATCH) {
        return etag_matches(inm, etag);
    }
    if let Some(ims) = req.header(IF_MODIFIED_SINCE) {
        if let Ok(t) = httpdate::parse_http_date(ims) {
            return secs(mtime) <= secs(t);
        }
    }
    false
}

fn if_range_ok(req: &crate::Request, etag: &str, mtime: SystemTime) -> bool {
    match req.header(IF_RANGE) {
        None => true,
        Some(v) if v.trim_start().starts_with('"') => v.trim() == etag,
        Some(v) => httpdate::parse_http_date(v).is_ok_and(|t| secs(t) == secs(mtime)),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum RangeResult {
    /// Malformed or unsupported: serve the whole file.
    Ignore,
    Unsatisfiable,
    Ranges(Vec<(u64, u64)>),
}

/// Parses `bytes=...` into inclusive ranges within `len`.
fn parse_ranges(h: &str, len: u64) -> RangeResult {
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeResult::Ignore;
    };
    let mut out = Vec::new();
    let mut count = 0;
    for part in spec.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        count += 1;
        if count > MAX_RANGES {
            return RangeResult::Ignore;
        }
        let Some((a, b)) = part.split_once('-') else {
            return RangeResult::Ignore;
        };
        let num = |s: &str| -> Option<u64> {
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                None
            } else {
                s.parse().ok()
            }
        };
        let r = if a.is_empty() {
            let Some(n) = num(b) else {
                return RangeResult::Ignore;
            };
            if n == 0 || len == 0 {
                None
            } else {
                Some((len.saturating_sub(n), len - 1))
            }
        } else {
            let Some(s) = num(a) else {
                return RangeResult::Ignore;
            };
            let e = if b.is_empty() {
                len.saturating_sub(1)
            } else {
                match num(b) {
                    Some(e) if e >= s => e.min(len.saturating_sub(1)),
                    _ => return RangeResult::Ignore,
                }
            };
            (s < len).then_some((s, e))
        };
        if let Some(r) = r {
            out.push(r);
        }
    }
    if count == 0 {
        RangeResult::Ignore
    } else if out.is_empty() {
        RangeResult::Unsatisfiable
    } else {
        RangeResult::Ranges(out)
    }
}

enum Seg {
    Bytes(Vec<u8>),
    File(u64, u64),
}

fn file_body(file: fs::File, segs: Vec<Seg>) -> Body {
    let len = segs
        .iter()
        .map(|s| match s {
            Seg::Bytes(b) => b.len() as u64,
            Seg::File(_, n) => *n,
        })
        .sum();
    Body::Stream {
        len: Some(len),
        source: Box::new(FileSource {
            file,
            segs: segs.into(),
        }),
    }
}

/// Reads the file a piece at a time as the connection asks.
struct FileSource {
    file: fs::File,
    segs: VecDeque<Seg>,
}

impl BodySource for FileSource {
    fn file_region(&self) -> Option<(&fs::File, u64, u64)> {
        match self.segs.front() {
            Some(Seg::File(off, rem)) if *rem > 0 => Some((&self.file, *off, *rem)),
            _ => None,
        }
    }

    fn file_region_sent(&mut self, n: u64) {
        if let Some(Seg::File(off, rem)) = self.segs.front_mut() {
            let n = n.min(*rem);
            *off += n;
            *rem -= n;
            if *rem == 0 {
                self.segs.pop_front();
            }
        }
    }

    fn next_chunk(&mut self, max: usize, _notify: &Notify) -> Chunk {
        loop {
            match self.segs.front_mut() {
                None => return Chunk::End,
                Some(Seg::Bytes(b)) => {
                    let b = std::mem::take(b);
                    self.segs.pop_front();
                    return Chunk::Data(b);
                }
                Some(Seg::File(_, 0)) => {
                    self.segs.pop_front();
                }
                Some(Seg::File(off, rem)) => {
                    let n = (*rem).min(max as u64) as usize;
                    let mut buf = Vec::with_capacity(n);
                    match read_at_uninit(&self.file, &mut buf, n, *off) {
                        Ok(0) => return Chunk::Error(Failure::msg("file shrank while being sent")),
                        Ok(k) => {
                            *off += k as u64;
                            *rem -= k as u64;
                            return Chunk::Data(buf);
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Chunk::Error(Failure::new(e)),
                    }
                }
            }
        }
    }
}

/// `pread` of up to `n` bytes at `off` into `buf`'s spare capacity, without
/// zeroing it first (for a 32 KiB chunk the memset was a measurable share of
/// serving a file); `buf`'s length becomes the bytes read.
fn read_at_uninit(file: &fs::File, buf: &mut Vec<u8>, n: usize, off: u64) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    buf.clear();
    buf.reserve(n);
    let off = libc::off_t::try_from(off)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    // SAFETY: the pointer and length describe `buf`'s spare capacity (at
    // least `n` bytes after `reserve`), which pread only writes to; the
    // length is set to what the kernel reports it wrote, never more than `n`.
    let k = unsafe {
        libc::pread(
            file.as_raw_fd(),
            buf.spare_capacity_mut().as_mut_ptr().cast(),
            n,
            off,
        )
    };
    if k < 0 {
        return Err(io::Error::last_os_error());
    }
    let k = (k as usize).min(n);
    // SAFETY: pread initialised the first `k` bytes of the spare capacity.
    unsafe { buf.set_len(k) };
    Ok(k)
}

/// True when `Accept-Encoding` lists gzip with a non-zero quality.
fn accepts_gzip(req: &crate::Request) -> bool {
    req.headers()
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim();
            let q = parts
                .find_map(|p| p.trim().strip_prefix("q="))
                .and_then(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && q > 0.0
        })
}

/// Compresses another source on the fly.
struct GzipSource {
    inner: FileSource,
    enc: Option<GzEncoder<Vec<u8>>>,
}

impl BodySource for GzipSource {
    fn next_chunk(&mut self, max: usize, notify: &Notify) -> Chunk {
        use std::io::Write;
        loop {
            let Some(enc) = self.enc.as_mut() else {
                return Chunk::End;
            };
            if !enc.get_ref().is_empty() {
                return Chunk::Data(std::mem::take(enc.get_mut()));
            }
            match self.inner.next_chunk(max, notify) {
                Chunk::Data(d) => {
                    if let Err(e) = enc.write_all(&d) {
                        return Chunk::Error(Failure::new(e));
                    }
                }
                Chunk::End => {
                    let Some(enc) = self.enc.take() else {
                        return Chunk::End;
                    };
                    return match enc.finish() {
                        Ok(tail) if tail.is_empty() => Chunk::End,
                        Ok(tail) => Chunk::Data(tail),
                        Err(e) => Chunk::Error(Failure::new(e)),
                    };
                }
                other => return other,
            }
        }
    }
}

fn human_size(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A clean, readable HTML listing of `dir`.
/// A name starting with a dot, other than `.well-known`.
fn is_hidden(name: &str) -> bool {
    name.starts_with('.') && name != ".well-known"
}

fn listing(dir: &Path, url_path: &str, is_root: bool, hidden: bool) -> io::Result<String> {
    let mut entries: Vec<(String, bool, u64, SystemTime)> = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !hidden && name.starts_with('.') {
            continue;
        }
        let meta = fs::metadata(e.path()).or_else(|_| e.metadata());
        let (is_dir, size, mtime) = match meta {
            Ok(m) => (m.is_dir(), m.len(), m.modified().unwrap_or(UNIX_EPOCH)),
            Err(_) => (false, 0, UNIX_EPOCH),
        };
        entries.push((name, is_dir, size, mtime));
    }
    entries.sort_by(|a, b| {
        b.1.cmp(&a.1)
            .then_with(|| a.0.to_lowercase().cmp(&b.0.to_lowercase()))
    });
    let title = html_escape(&String::from_utf8_lossy(&crate::util::percent_decode(
        url_path.as_bytes(),
    )));
    let mut h = String::with_capacity(1024 + entries.len() * 200);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    h.push_str(&format!("<title>Index of {title}</title>\n"));
    h.push_str(
        "<style>\nbody{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222;background:#fff}\n\
h1{font-size:1.4rem;font-weight:600;border-bottom:1px solid #ddd;padding-bottom:.5rem;word-break:break-all}\n\
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35rem .6rem}\n\
th{font-weight:600;color:#555;border-bottom:2px solid #ddd}tr:nth-child(even) td{background:#f7f7f9}\n\
td.size,th.size{text-align:right;white-space:nowrap}td.date{white-space:nowrap;color:#555}\n\
a{color:#0645ad;text-decoration:none}a:hover{text-decoration:underline}.dir a{font-weight:600}\n\
footer{margin-top:1rem;color:#888;font-size:.85rem}\n</style></head><body>\n",
    );
    h.push_str(&format!("<h1>Index of {title}</h1>\n<table>\n<thead><tr><th>Name</th><th class=\"size\">Size</th><th>Modified (UTC)</th></tr></thead>\n<tbody>\n"));
    if !is_root {
        h.push_str("<tr class=\"dir\"><td><a href=\"../\">../</a></td><td class=\"size\">—</td><td class=\"date\"></td></tr>\n");
    }
    for (name, is_dir, size, mtime) in &entries {
        let href = percent_encode_segment(name) + if *is_dir { "/" } else { "" };
        let shown = html_escape(name) + if *is_dir { "/" } else { "" };
        let size = if *is_dir {
            "—".to_string()
        } else {
            format!("<span title=\"{size} bytes\">{}</span>", human_size(*size))
        };
        h.push_str(&format!(
            "<tr class=\"{}\"><td><a href=\"{}\">{}</a></td><td class=\"size\">{}</td><td class=\"date\">{}</td></tr>\n",
            if *is_dir { "dir" } else { "file" },
            html_escape(&href),
            shown,
            size,
            listing_time(*mtime)
        ));
    }
    h.push_str(&format!(
        "</tbody></table>\n<footer>{} entries · Torsion</footer>\n</body></html>\n",
        entries.len()
    ));
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeResult::*;
        assert_eq!(parse_ranges("bytes=0-4", 10), Ranges(vec![(0, 4)]));
        assert_eq!(parse_ranges("bytes=5-", 10), Ranges(vec![(5, 9)]));
        assert_eq!(parse_ranges("bytes=-3", 10), Ranges(vec![(7, 9)]));
        assert_eq!(parse_ranges("bytes=-30", 10), Ranges(vec![(0, 9)]));
        assert_eq!(parse_ranges("bytes=0-99", 10), Ranges(vec![(0, 9)]));
        assert_eq!(
            parse_ranges("bytes=0-1, 4-5", 10),
            Ranges(vec![(0, 1), (4, 5)])
        );
        assert_eq!(parse_ranges("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_ranges("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse_ranges("bytes=5-1", 10), Ignore);
        assert_eq!(parse_ranges("items=0-1", 10), Ignore);
        assert_eq!(parse_ranges("bytes=a-b", 10), Ignore);
        let many = format!("bytes={}", vec!["0-0"; 17].join(","));
        assert_eq!(parse_ranges(&many, 10), Ignore);
    }

    #[test]
    fn sizes() {
        assert_eq!(human_size(10), "10 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 << 20), "3.0 MiB");
    }
}
